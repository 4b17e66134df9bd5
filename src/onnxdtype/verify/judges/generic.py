"""Outputs with no recognised task: judged by closeness to fp32 (cosine, also per channel), as before tasks.

The figures are `verify.metrics.OutputStats`'s and the verdict is `verify.metrics.judge`'s, so a generic output
is judged exactly as the cosine-only verification judged it. `min_cosine` is normally given by the caller for the
variant's dtype; without it, the required agreement is read as a family level: the strictest family whose
agreement it meets gives the cosine (0.999 -> 0.9999, 0.97 -> 0.99, 0.90 -> 0.98, SPEC.md).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import DEFAULT_AGREEMENT, register, require
from onnxdtype.verify.metrics import OutputStats, judge

COSINE_BY_FAMILY = {"16": 0.9999, "8": 0.99, "4": 0.98}
DEFAULT_ATOL = 1e-4  # largest error below this passes whatever the cosine: cosine means nothing on ~0 outputs


def cosine_for(required: float) -> float:
    """The minimum cosine standing for a required agreement: a stricter agreement never loosens the cosine."""
    met = [family for family, level in DEFAULT_AGREEMENT.items() if required + 1e-12 >= level]
    return max(COSINE_BY_FAMILY[f] for f in met) if met else min(COSINE_BY_FAMILY.values())


@register
class GenericJudge:
    name = "generic"
    unit = "values"
    PARAMS: ClassVar[dict[str, tuple]] = {"min_cosine": (float, None), "atol": (float, DEFAULT_ATOL)}

    def __init__(self, **params) -> None:
        self.params = {key: default for key, (_, default) in self.PARAMS.items()} | params
        if self.params.get("min_cosine") is not None:
            require(0 <= self.params["min_cosine"] <= 1, f"{self.name}: min_cosine={self.params['min_cosine']} "
                    "is not within [0, 1]")
        require(self.params.get("atol", 0) >= 0, f"{self.name}: atol={self.params.get('atol')} is negative")
        self.stats = OutputStats(self.name)
        self.values = 0
        self.samples = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        self.stats.add(np.asarray(ref), np.asarray(got))
        self.values += int(np.size(ref))
        self.samples += 1

    @classmethod
    def has_decisions(cls) -> bool:
        return False  # values, not decisions: no noise floor (verify.rounding, verify.weight_noise)

    def figures(self) -> dict:
        """OutputStats's figures; no task agreement (None), units = values compared."""
        return {"agreement": None, "units": self.values, "unit": self.unit, "samples": self.samples,
                **self.stats.figures()}

    def failure(self, required: float) -> str | None:
        if self.samples == 0:
            return f"{self.name}: no samples compared"
        min_cosine = self.params["min_cosine"] if self.params["min_cosine"] is not None else cosine_for(required)
        verdict = judge({self.name: self.stats.figures()}, min_cosine, self.params["atol"])
        return None if verdict is None else f"{self.name}: {verdict.removeprefix(f'output {self.name}: ')}"
