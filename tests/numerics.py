"""Small numeric helpers the tests share: cosine similarity and a CPU session of an in-memory model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0 when either side is all zeros (a collapsed channel)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else 0.0


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session with graph optimizations off, so Q/DQ pairs compute in float: the recipe's own numerics.

    Fused integer kernels depend on the CPU: on x86 without VNNI (AVX2 only) onnxruntime's U8S8 kernels saturate
    int16 sums, which cost the tiny detector's box channel 0.998 -> 0.993 with int8 weights (u8u8 unchanged).
    Recipe tests judge where Q/DQ go and which ranges they get; builds verify at default optimizations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class CountingSamples:
    """In-memory feeds for calibration, iterable more than once, counting the passes over them (how many times the
    fp32 model ran over the data); `fingerprint` stands for their contents in the calibration cache key."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], fingerprint: str | None = None) -> None:
        self.feeds, self.passes = feeds, 0
        self.fingerprint = fingerprint or f"feeds-{len(feeds)}"

    def __iter__(self):
        self.passes += 1
        return iter(self.feeds)
