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
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
