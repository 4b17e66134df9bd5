"""What a judge is, how one is named and configured, and how much agreement a variant needs (SPEC.md).

A variant is judged on the task each output serves, not on raw closeness: a CRNN at cosine 0.998 read 11 % of
lines wrong while an SVTR refused at cosine 0.99905 read every line right. Each judge streams over evaluation
samples (one `add` per sample and output) and ends with figures and a one-line verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from onnxdtype.errors import OnnxDtypeError

DEFAULT_AGREEMENT = {"16": 0.999, "8": 0.97, "4": 0.90}  # by bit-width family, SPEC.md "Verification defaults"
FAMILY = {"16": "16", "8": "8", "4": "4", "4+16": "4"}  # DTypeInfo.bits -> family: q4f16 is judged as 4-bit


@dataclass
class TaskSpec:
    """Which judge an output gets, with its parameters and the reason (recorded in the manifest)."""
    task: str
    params: dict = field(default_factory=dict)
    why: str = ""


class Judge(Protocol):
    name: str

    def add(self, ref: np.ndarray, got: np.ndarray, unstable: np.ndarray | None = None) -> None: ...

    def has_decisions(self) -> bool: ...

    def unstable_units(self, ref: np.ndarray, redraws: list[np.ndarray]) -> np.ndarray | None: ...

    def figures(self) -> dict: ...

    def failure(self, required: float) -> str | None: ...


JUDGES: dict[str, type] = {}
"""Task name -> judge class; filled by `register` as the judge modules are imported by the package."""


def register(cls: type) -> type:
    JUDGES[cls.name] = cls
    return cls


def make_judge(spec: TaskSpec) -> Judge:
    """A fresh judge for one output of one variant; unknown tasks and bad parameters are user errors."""
    return _judge_class(spec.task)(**check_params(spec.task, spec.params))


def check_params(task: str, params: dict) -> dict:
    """`params` checked against the judge's PARAMS table, with ints widened to float where a float is expected."""
    table = _judge_class(task).PARAMS
    checked = {}
    for key, value in params.items():
        if key not in table:
            valid = ", ".join(table) or "none"
            raise OnnxDtypeError(f"task {task}: unknown parameter {key!r} (valid: {valid})")
        kind, default = table[key]
        if value is None and default is None:
            checked[key] = None
        elif isinstance(kind, tuple):
            if value not in kind:
                raise OnnxDtypeError(f"task {task}: {key}={value!r} is not one of {', '.join(kind)}")
            checked[key] = value
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            checked[key] = float(value)
        elif type(value) is kind:
            checked[key] = value
        else:
            raise OnnxDtypeError(f"task {task}: {key}={value!r} should be {kind.__name__}")
    return checked


def _judge_class(task: str) -> type:
    if task not in JUDGES:
        raise OnnxDtypeError(f"unknown task {task!r} (valid: {', '.join(sorted(JUDGES))})")
    return JUDGES[task]


def parse_task(text: str) -> TaskSpec:
    """'detect:layout=yolo,conf=0.25' -> TaskSpec('detect', {'layout': 'yolo', 'conf': 0.25}), checked as
    make_judge checks it, so a CLI mistake stops before any build."""
    task, _, rest = text.strip().partition(":")
    params: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise OnnxDtypeError(f"task {text!r}: expected key=value, got {item!r}")
        if key in params:
            raise OnnxDtypeError(f"task {text!r}: {key} given twice")
        params[key] = _parse_value(value)
    spec = TaskSpec(task.strip(), {}, f"asked: {text.strip()}")
    spec.params = check_params(spec.task, params)
    make_judge(spec)  # range checks live in the judges' constructors
    return spec


def _parse_value(text: str) -> int | float | bool | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def required_agreement(bits: str, overrides: dict | None = None) -> float:
    """The agreement a variant of this bit width needs: an override by bits ('8', '4+16', then its family) or
    'default', else SPEC.md's by family."""
    if bits not in FAMILY:
        raise OnnxDtypeError(f"no required agreement for bits {bits!r} (valid: {', '.join(FAMILY)})")
    overrides = overrides or {}
    for key in (bits, FAMILY[bits], "default"):
        if key in overrides:
            value = overrides[key]
            if not 0 <= value <= 1:
                raise OnnxDtypeError(f"required agreement {key}={value} is not within [0, 1]")
            return float(value)
    return DEFAULT_AGREEMENT[FAMILY[bits]]


def require(condition: bool, message: str) -> None:
    """A parameter out of range is the user's mistake: say which in one line."""
    if not condition:
        raise OnnxDtypeError(message)


def auto_threshold(ref: np.ndarray) -> float:
    """0.5 for probabilities (fp32 within [0, 1]), else 0 for logits."""
    finite = ref[np.isfinite(ref)]
    return 0.5 if finite.size and finite.min() >= 0 and finite.max() <= 1 else 0.0


UNDECIDED_MARGIN = 0.02  # fp32's top-2 scores within 2 % of each other: fp32 itself has not decided


def undecided(scores: np.ndarray, chosen: np.ndarray, margin: float) -> np.ndarray:
    """Per row of fp32 `scores` [n, C]: True where the variant's `chosen` class scores within `margin` (relative)
    of fp32's own top-1 — a coin flip in fp32 (PP-OCRv4 rec: blank 0.4955 vs space 0.5018), which another CPU, thread
    count or BLAS flips as readily as a dtype does. Such flips are counted apart, not as disagreements."""
    top = scores.max(axis=1)
    picked = np.take_along_axis(scores, chosen[:, None], axis=1)[:, 0]
    return (top - picked) <= margin * np.maximum(np.abs(top), 1e-12)


def percent_below(fraction: float, required: float) -> str:
    """`fraction` as a percentage with one decimal, or as many more as it takes to read below `required`
    (99.89 %, not a puzzling 99.9 % < 99.9 %)."""
    for decimals in range(1, 7):
        text = f"{fraction * 100:.{decimals}f}"
        if float(text) < required * 100:
            break
    return f"{text} %"


class TaskJudge:
    """Shared bookkeeping of the task judges: shape check, NaN/Inf counts, and the verdict 'agreement ≥ required'.

    A subclass sets `name`, `unit` (what one compared item is), `PARAMS` (name -> (type or choices, default)) and
    implements `_add`, `agreement`, `compared` (how many units), `summary` (counts in words) and `details`.

    A judge whose units are discrete decisions (a line's text, a label) also implements `decisions`: then fp32's own
    noise floor applies (verify.rounding, verify.weight_noise) — `unstable` marks the units whose fp32 decision moved
    when the input was redrawn within its rounding or its weights carried noise; `_add` gets it, leaves those units
    out of the verdict and counts them in `unstable` (and in `unstable_differ` the ones the variant reads
    differently).
    """
    name: ClassVar[str]
    unit: ClassVar[str]
    PARAMS: ClassVar[dict[str, tuple]] = {}

    def __init__(self, **params) -> None:
        self.params = {key: default for key, (_, default) in self.PARAMS.items()} | params
        self.samples = 0
        self.nonfinite = 0
        self.nonfinite_fp32 = 0
        self.unstable = 0  # units left out: fp32's own decision moved under its input's rounding or weight noise
        self.unstable_differ = 0  # of those, the ones the variant decides differently from fp32

    def add(self, ref: np.ndarray, got: np.ndarray, unstable: np.ndarray | None = None) -> None:
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            raise ValueError(f"{self.name}: variant shape {got.shape} differs from fp32's {ref.shape}")
        self.samples += 1
        self.nonfinite_fp32 += int((~np.isfinite(ref)).sum())
        self.nonfinite += int((~np.isfinite(got)).sum())
        if self.has_decisions():
            self._add(ref, got, unstable)
        else:
            self._add(ref, got)

    def decisions(self, output: np.ndarray, ref: np.ndarray) -> list | None:
        """Per unit of `output` (fp32's on the same sample, or on a redraw of it), the decision the judge compares;
        `ref` is fp32's output on the sample itself, for what the decision depends on (an automatic threshold)."""
        return None

    @classmethod
    def has_decisions(cls) -> bool:
        return cls.decisions is not TaskJudge.decisions

    def unstable_units(self, ref: np.ndarray, redraws: list[np.ndarray]) -> np.ndarray | None:
        """Per unit, whether fp32's decision on any redraw differs from its decision on the sample; None when the
        judge has no per-unit decisions."""
        if not self.has_decisions():
            return None
        mine = self.decisions(ref, ref)
        moved = np.zeros(len(mine), bool)
        for other in redraws:
            moved |= np.array([a != b for a, b in zip(mine, self.decisions(np.asarray(other), ref))], bool)
        return moved

    def figures(self) -> dict:
        floor = {"unstable_in_fp32": self.unstable, "unstable_read_differently": self.unstable_differ} \
            if self.has_decisions() else {}
        return {"agreement": self.agreement(), "units": self.compared(), "unit": self.unit, "samples": self.samples,
                "nonfinite": self.nonfinite, "nonfinite_fp32": self.nonfinite_fp32, **floor, **self.details()}

    def failure(self, required: float) -> str | None:
        if self.samples == 0:
            return f"{self.name}: no samples compared"
        if self.compared() == 0 and self.unstable:
            return (f"{self.name}: fp32 itself decides every one of its {self.unstable} {self.unit} differently "
                    "under its input's rounding or its weights' noise: the data cannot judge a variant")
        if self.nonfinite > self.nonfinite_fp32:
            return f"{self.name}: {self.nonfinite} NaN/Inf values where fp32 has {self.nonfinite_fp32}"
        agreement = self.agreement()
        if agreement + 1e-12 >= required:
            return None
        units = self.compared()
        grain = f"; {units} {self.unit}: one is {100 / units:.1f} %" if units else ""
        if self.unstable:
            grain += (f"; {self.unstable} more that fp32 itself decides differently under its input's rounding or "
                      "its weights' noise not judged")
        return f"{self.name}: {self.summary()} ({percent_below(agreement, required)}) < {required * 100:g} %{grain}"

    def _add(self, ref: np.ndarray, got: np.ndarray) -> None:
        raise NotImplementedError

    def agreement(self) -> float:
        raise NotImplementedError

    def compared(self) -> int:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def details(self) -> dict:
        return {}
