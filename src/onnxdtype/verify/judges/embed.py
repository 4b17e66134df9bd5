"""Embeddings: does the variant keep each sample's nearest neighbours within the evaluation set?

Embeddings are used for search, so what must survive is who is closest to whom, not the vectors themselves.
Pooled [b, D] vectors are taken as they are; token embeddings [b, T, D] are pooled (`pool=mean`, over all
tokens since no attention mask is at hand, or `cls`, the first token). A sample agrees when its top-`k`
neighbours (cosine, itself excluded) are the same under the variant; neighbours tied in fp32 count as either.
With fewer than 3 samples there are no neighbours to rank, so a per-sample cosine ≥ 0.99 decides instead.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import TaskJudge, register, require

MIN_NEIGHBOUR_SAMPLES = 3
FALLBACK_COSINE = 0.99
TIE = 1e-6  # fp32 similarities this close are ties: either order is right


@register
class EmbedJudge(TaskJudge):
    name = "embed"
    unit = "samples"
    PARAMS: ClassVar[dict[str, tuple]] = {"pool": (("mean", "cls"), "mean"), "k": (int, 1)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        require(self.params["k"] >= 1, f"embed: k={self.params['k']} should be at least 1")
        self.ref: list[np.ndarray] = []
        self.got: list[np.ndarray] = []

    def _add(self, ref: np.ndarray, got: np.ndarray) -> None:
        require(ref.ndim in (2, 3), f"embed: expected [b, D] or [b, T, D] embeddings, got shape {ref.shape}")
        self.ref.extend(self._pooled(ref))
        self.got.extend(self._pooled(got))

    def _pooled(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if x.ndim == 3:
            x = x[:, 0] if self.params["pool"] == "cls" else x.mean(1)
        return _normalized(x)

    def _cosines(self) -> np.ndarray:
        return np.einsum("nd,nd->n", np.array(self.ref), np.array(self.got))

    def _neighbours_kept(self) -> np.ndarray:
        """Per sample: are the variant's top-k neighbours all among fp32's top-k (ties included)?"""
        ref, got = np.array(self.ref), np.array(self.got)
        k = min(self.params["k"], len(ref) - 1)
        sim_ref, sim_got = ref @ ref.T, got @ got.T
        np.fill_diagonal(sim_ref, -np.inf)
        np.fill_diagonal(sim_got, -np.inf)
        kth_ref = -np.sort(-sim_ref, axis=1)[:, k - 1]
        top_got = np.argsort(-sim_got, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(sim_ref, top_got, 1) >= kth_ref[:, None] - TIE).all(1)

    def _by_neighbours(self) -> bool:
        return len(self.ref) >= MIN_NEIGHBOUR_SAMPLES

    def _kept(self) -> np.ndarray:
        return self._neighbours_kept() if self._by_neighbours() else self._cosines() >= FALLBACK_COSINE

    def agreement(self) -> float:
        return float(self._kept().mean()) if self.ref else 1.0

    def compared(self) -> int:
        return len(self.ref)

    def summary(self) -> str:
        kept, n = int(self._kept().sum()), len(self.ref)
        if self._by_neighbours():
            return f"{kept}/{n} samples keep their {min(self.params['k'], n - 1)} nearest neighbour(s)"
        return f"{kept}/{n} samples at cosine ≥ {FALLBACK_COSINE}"

    def details(self) -> dict:
        if not self.ref:
            return {}
        cosines = self._cosines()
        basis = (f"top-{min(self.params['k'], len(self.ref) - 1)} nearest neighbours" if self._by_neighbours()
                 else f"cosine ≥ {FALLBACK_COSINE} per sample (fewer than {MIN_NEIGHBOUR_SAMPLES} samples)")
        return {"agreement_by": basis, "cosine_min": float(cosines.min()), "cosine_mean": float(cosines.mean())}


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
