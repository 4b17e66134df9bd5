"""What a build (or a re-verification) reports: one VariantResult per module and dtype, gathered in a BuildResult.

Results cross process boundaries as JSON (workers) and land in the manifest, so they hold plain data;
`Status` is a str enum, equal to its manifest spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypedDict

from onnxdtype.dtype import DType


class Status(str, Enum):
    OK = "ok"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"  # the recipe would change no node (SPEC.md "Applicability")
    SKIPPED = "skipped"  # not built this time (a static dtype without calibration data under `all`)
    KEPT = "kept"  # a vouched file from an earlier build, left as it is

    def __str__(self) -> str:
        return self.value


RECORDED = (Status.OK, Status.FAILED, Status.NOT_APPLICABLE)  # the statuses the manifest stores


class Verification(TypedDict, total=False):
    """A variant's verification record (manifest `verification`), built by verify.record."""
    data: str  # what the figures were measured on
    synthesized: bool  # inputs made up from shapes: figures shown, never judged
    skipped: bool
    min_cosine: float
    atol: float
    metric: str | None
    outputs: dict[str, dict]  # per output figures (verify.metrics)
    task: dict | None  # the user task metric's figures
    failure: str | None
    unjudged_failure: str | None
    note: str
    before_repair: dict
    repair: dict


@dataclass
class VariantResult:
    module: str
    dtype: str
    status: Status
    reason: str | None = None
    file: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    seconds: float | None = None
    recipe: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    normalized: list[str] = field(default_factory=list)
    kept_in_float: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    op_changes: dict = field(default_factory=dict)
    verification: Verification | None = None
    latency: dict | None = None
    kernels: dict | None = None  # integer kernels and Q/DQ in onnxruntime's optimized graph (verify.kernels)
    base_bytes: int | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def fail(self, reason: str) -> None:
        self.status, self.reason = Status.FAILED, reason

    @property
    def size_ratio(self) -> float | None:
        return self.bytes / self.base_bytes if self.bytes and self.base_bytes else None

    @property
    def worst_cosine(self) -> float | None:
        """The lowest cosine to fp32 over outputs and their channels, when verified."""
        outputs = (self.verification or {}).get("outputs") or {}
        values = [f["cosine"] for f in outputs.values()]
        values += [f["worst_channel"]["cosine"] for f in outputs.values() if f.get("worst_channel")]
        return min(values) if values else None

    @property
    def task_agreement(self) -> tuple[str, float] | None:
        """The task judge with the lowest agreement to fp32 and that agreement (0..1), when any output has one."""
        outputs = (self.verification or {}).get("outputs") or {}
        judged = [(f["judge"]["task"], f["judge"]["agreement"]) for f in outputs.values()
                  if (f.get("judge") or {}).get("agreement") is not None]
        return min(judged, key=lambda item: item[1]) if judged else None

    @property
    def kernel_summary(self) -> str | None:
        """'QLinearConv 32, Q/DQ 4': the integer kernels onnxruntime ran, and the conversions around them."""
        if not self.kernels:
            return None
        parts = [f"{op} {n}" for op, n in self.kernels["integer"].items()]
        conversions = sum(self.kernels["conversions"].values())
        return ", ".join(parts + ([f"Q/DQ {conversions}"] if conversions else [])) or "none"

    @property
    def speedup(self) -> float | None:
        return (self.latency or {}).get("threads_all", {}).get("speedup")

    @property
    def repaired(self) -> bool:
        return bool((self.verification or {}).get("repair")) and self.status == Status.OK


@dataclass
class BuildResult:
    out_dir: Path
    results: list[VariantResult]
    requested_explicitly: bool

    def by(self, module: str, dtype: str | DType) -> VariantResult:
        return next(r for r in self.results if r.module == module and r.dtype == str(dtype))

    @property
    def problems(self) -> list[VariantResult]:
        """Results that make the command fail: failures, and non-applicable dtypes that were asked for by name."""
        bad = [r for r in self.results if r.status == Status.FAILED]
        if self.requested_explicitly:
            bad += [r for r in self.results if r.status == Status.NOT_APPLICABLE]
        return bad
