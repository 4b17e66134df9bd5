"""Accuracy of a variant's outputs against fp32, accumulated over samples without keeping them.

A whole-tensor cosine can hide a collapsed part (a YOLO head kept cosine 0.9985 while its class channels
were wrecked, because the box coordinates dominate), so every output is also judged per channel along
its feature axis and the worst channel counts (SPEC.md, "Verification defaults").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_FEATURE_CHANNELS = 256  # a "modest" feature axis: above this, per-channel figures are not judged


def feature_axis(shape: tuple[int, ...]) -> int | None:
    """The first non-batch axis of modest size (2..256) of an output with more axes after it, or None.

    A rank-2 output [batch, features] has one value per sample and channel: a per-channel cosine over a
    few samples would be noise, so those are judged as a whole.
    """
    if len(shape) < 3:
        return None
    return 1 if 2 <= shape[1] <= MAX_FEATURE_CHANNELS else None


@dataclass
class OutputStats:
    """Running sums for one output over all samples; figures are derived at the end."""
    name: str
    dot: float = 0.0
    ref_sq: float = 0.0
    got_sq: float = 0.0
    diff_sq: float = 0.0
    max_abs: float = 0.0
    nan_ref: int = 0
    nan_got: int = 0
    inf_ref: int = 0
    inf_got: int = 0
    top1_same: int = 0
    top1_total: int = 0
    channels: dict[int, list[float]] = field(default_factory=dict)  # channel -> [dot, ref_sq, got_sq]

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"output {self.name}: shape {got.shape} differs from fp32's {ref.shape}")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        self.nan_ref += int(np.isnan(ref64).sum())
        self.nan_got += int(np.isnan(got64).sum())
        self.inf_ref += int(np.isinf(ref64).sum())
        self.inf_got += int(np.isinf(got64).sum())
        finite = np.isfinite(ref64) & np.isfinite(got64)
        r, g = np.where(finite, ref64, 0.0), np.where(finite, got64, 0.0)
        self.dot += float((r * g).sum())
        self.ref_sq += float((r * r).sum())
        self.got_sq += float((g * g).sum())
        self.diff_sq += float(((r - g) ** 2).sum())
        if r.size:
            self.max_abs = max(self.max_abs, float(np.abs(r - g).max()))
        if ref.ndim >= 2 and ref.shape[-1] >= 2:
            self.top1_same += int((r.argmax(-1) == g.argmax(-1)).sum())
            self.top1_total += int(np.prod(ref.shape[:-1]))
        axis = feature_axis(ref.shape)
        if axis is not None:
            rc, gc = np.moveaxis(r, axis, 0).reshape(r.shape[axis], -1), np.moveaxis(g, axis, 0).reshape(g.shape[axis], -1)
            sums = np.stack([(rc * gc).sum(1), (rc * rc).sum(1), (gc * gc).sum(1)], 1)
            for c, (d, rs, gs) in enumerate(sums):
                acc = self.channels.setdefault(c, [0.0, 0.0, 0.0])
                acc[0] += d
                acc[1] += rs
                acc[2] += gs

    def figures(self) -> dict:
        """Cosine, relative L2, max abs error, NaN/Inf counts, top-1 agreement and the worst channel."""
        worst = None
        if self.channels:
            largest = max(v[1] for v in self.channels.values())
            # channels that are ~0 in fp32 carry no signal a cosine could judge
            judged = {c: _cosine(*v) for c, v in self.channels.items() if v[1] > 1e-12 * max(largest, 1e-30)}
            if judged:
                channel = min(judged, key=judged.get)
                worst = {"channel": channel, "cosine": judged[channel]}
        return {
            "cosine": _cosine(self.dot, self.ref_sq, self.got_sq),
            "rel_l2": float(np.sqrt(self.diff_sq / self.ref_sq)) if self.ref_sq > 0 else (0.0 if self.diff_sq == 0 else float("inf")),
            "max_abs": self.max_abs,
            "nan": self.nan_got, "inf": self.inf_got, "nan_fp32": self.nan_ref, "inf_fp32": self.inf_ref,
            "top1_agreement": self.top1_same / self.top1_total if self.top1_total else None,
            "worst_channel": worst,
        }


def _cosine(dot: float, ref_sq: float, got_sq: float) -> float:
    if ref_sq == 0 and got_sq == 0:
        return 1.0
    if ref_sq == 0 or got_sq == 0:
        return 0.0
    return float(dot / np.sqrt(ref_sq * got_sq))


def judge(figures: dict[str, dict], min_cosine: float, atol: float = 0.0) -> str | None:
    """Why these per-output figures fail the tolerance, or None when they pass.

    An output whose largest absolute error is within `atol` passes: cosine is meaningless on outputs
    that are ~0 everywhere (a text map of a photo without text).
    """
    for name, f in figures.items():
        if f["nan"] > f["nan_fp32"] or f["inf"] > f["inf_fp32"]:
            return f"output {name}: {f['nan']} NaN / {f['inf']} Inf where fp32 has {f['nan_fp32']} / {f['inf_fp32']}"
        if f["max_abs"] <= atol:
            continue
        if f["cosine"] < min_cosine:
            return f"output {name}: cosine {f['cosine']:.5f} < {min_cosine}"
        worst = f["worst_channel"]
        if worst and worst["cosine"] < min_cosine:
            return f"output {name}: channel {worst['channel']} cosine {worst['cosine']:.5f} < {min_cosine}"
    return None
