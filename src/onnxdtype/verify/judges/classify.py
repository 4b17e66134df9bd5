"""Classification: does the variant pick the same top-1 class as fp32?

Scores or logits [b, C] or [b, ..., C], classes on `axis` (last by default); every position before the class axis
is one prediction. A single score per prediction (C == 1, a sigmoid head) is judged as a yes/no decision at
`threshold` (default: 0.5 for probabilities, 0 for logits). A flip to a class fp32 scored within `margin` of its
own top-1 is a coin flip fp32 had not decided (base.undecided): counted as agreeing and reported apart. Top-5
overlap is shown, not judged: it tells a near-tie flip from a wrecked head. Predictions fp32 itself makes
differently when its input is redrawn within its rounding (verify.rounding) or its weights carry a quarter of an
8-bit step of noise (verify.weight_noise) are not judged, but counted apart.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import UNDECIDED_MARGIN, TaskJudge, auto_threshold, register, require, undecided

TOP_K = 5


@register
class ClassifyJudge(TaskJudge):
    name = "classify"
    unit = "predictions"
    PARAMS: ClassVar[dict[str, tuple]] = {"axis": (int, -1), "threshold": (float, None),
                                          "margin": (float, UNDECIDED_MARGIN)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.same = 0
        self.total = 0
        self.ranked = 0  # predictions with several classes, the ones a top-k overlap means something for
        self.overlap = 0.0  # sum over those of |top-k(fp32) ∩ top-k(variant)| / k
        self.threshold = self.params["threshold"]
        self.undecided = 0

    def decisions(self, output: np.ndarray, ref: np.ndarray) -> list:
        """Each prediction's top-1 class, or its yes/no at the threshold for a single score."""
        rows, ref_rows = self._rows(output), self._rows(ref)
        if rows.shape[1] == 1:
            return (rows[:, 0] > (self.threshold if self.threshold is not None else auto_threshold(ref_rows))).tolist()
        return rows.argmax(1).tolist()

    def _rows(self, output: np.ndarray) -> np.ndarray:
        axis = self.params["axis"]
        require(-output.ndim <= axis < output.ndim,
                f"classify: axis={axis} is outside an output of shape {output.shape}")
        return np.moveaxis(output, axis, -1).reshape(-1, output.shape[axis])

    def _add(self, ref: np.ndarray, got: np.ndarray, unstable: np.ndarray | None) -> None:
        if self.threshold is None and self._rows(ref).shape[1] == 1:
            self.threshold = auto_threshold(ref)
        if unstable is not None and unstable.any():
            moved = [a != b for a, b, u in zip(self.decisions(ref, ref), self.decisions(got, ref), unstable) if u]
            self.unstable += len(moved)
            self.unstable_differ += sum(moved)
        ref, got = (self._rows(a) for a in (ref, got))
        if unstable is not None:
            ref, got = ref[~unstable], got[~unstable]
        if ref.shape[1] == 1:
            self.same += int(((ref > self.threshold) == (got > self.threshold)).sum())
            self.total += ref.shape[0]
            return
        flipped = ref.argmax(1) != got.argmax(1)
        coin_flips = int(undecided(ref[flipped], got.argmax(1)[flipped], self.params["margin"]).sum())
        self.same += int((~flipped).sum()) + coin_flips
        self.undecided += coin_flips
        self.total += ref.shape[0]
        self.ranked += ref.shape[0]
        k = min(TOP_K, ref.shape[1])
        top_ref, top_got = (np.argsort(-a, axis=1, kind="stable")[:, :k] for a in (ref, got))
        self.overlap += sum(len(set(r) & set(g)) for r, g in zip(top_ref.tolist(), top_got.tolist())) / k

    def agreement(self) -> float:
        return self.same / self.total if self.total else 1.0

    def compared(self) -> int:
        return self.total

    def summary(self) -> str:
        return f"{self.same}/{self.total} predictions keep their top-1 class"

    def details(self) -> dict:
        figures = {f"top{TOP_K}_overlap": self.overlap / self.ranked} if self.ranked else {}
        if self.total > self.ranked:
            figures["threshold"] = self.threshold
        return {**figures, "undecided": self.undecided}
