"""Dense maps (text probability maps, segmentation masks): does the variant find the same regions as fp32?

Maps [b, k, H, W] or [b, H, W] are thresholded (`threshold`, default 0.5 for probabilities, 0 for logits,
decided on the first sample's fp32 values) and split into connected regions (8-connectivity, regions under
`min_area` pixels dropped), as text detectors' post-processing does before it draws boxes. Regions of fp32 and
the variant are matched one to one by IoU >= `match_iou`; the agreement is the F1 of the matches over all samples.

Why regions, not pixels: PP-OCRv4 det in fp16 flips 71 of 27176 boundary pixels over 6 photos (pixel IoU 99.74 %,
below fp16's 99.9 %) while every text region, and so every box, stays the same. The pixel IoU is recorded too:
a share of agreeing pixels would be too lenient (98 % background), an IoU of foregrounds too strict at the edges.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy import ndimage

from onnxdtype.verify.judges.base import TaskJudge, auto_threshold, register, require

EIGHT_CONNECTED = np.ones((3, 3), bool)


@register
class DenseJudge(TaskJudge):
    name = "dense"
    unit = "regions"
    PARAMS: ClassVar[dict[str, tuple]] = {"threshold": (float, None), "min_area": (int, 16),
                                          "match_iou": (float, 0.5)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        require(self.params["min_area"] >= 1, f"{self.name}: min_area={self.params['min_area']} must be >= 1")
        require(0 < self.params["match_iou"] <= 1, f"{self.name}: match_iou={self.params['match_iou']} "
                "is not within (0, 1]")
        self.threshold = self.params["threshold"]
        self.matched = self.fp32_regions = self.variant_regions = 0
        self.intersection = self.union = 0

    def _add(self, ref: np.ndarray, got: np.ndarray) -> None:
        if self.threshold is None:
            self.threshold = auto_threshold(ref)
        fg_ref, fg_got = ref > self.threshold, got > self.threshold
        self.intersection += int((fg_ref & fg_got).sum())
        self.union += int((fg_ref | fg_got).sum())
        maps_ref = fg_ref.reshape(-1, *fg_ref.shape[-2:])
        maps_got = fg_got.reshape(-1, *fg_got.shape[-2:])
        for a, b in zip(maps_ref, maps_got):
            matched, count_a, count_b = self._match(a, b)
            self.matched += matched
            self.fp32_regions += count_a
            self.variant_regions += count_b

    def _match(self, a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
        """Regions of `a` and `b` matched one to one by IoU, greedily from the best overlap."""
        labels_a, areas_a = self._regions(a)
        labels_b, areas_b = self._regions(b)
        if not len(areas_a) or not len(areas_b):
            return 0, len(areas_a), len(areas_b)
        both = (labels_a > 0) & (labels_b > 0)
        pairs = np.bincount(labels_a[both] * (len(areas_b) + 1) + labels_b[both],
                            minlength=(len(areas_a) + 1) * (len(areas_b) + 1)).reshape(len(areas_a) + 1, -1)[1:, 1:]
        iou = pairs / (areas_a[:, None] + areas_b[None, :] - pairs)
        taken_a, taken_b, matched = set(), set(), 0
        for i, j in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
            if iou[i, j] < self.params["match_iou"]:
                break
            if i not in taken_a and j not in taken_b:
                taken_a.add(i)
                taken_b.add(j)
                matched += 1
        return matched, len(areas_a), len(areas_b)

    def _regions(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels 1..n of the regions of at least min_area pixels (0 elsewhere), and their areas."""
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        keep = np.flatnonzero(areas >= self.params["min_area"])
        relabel = np.zeros(count + 1, np.int64)
        relabel[keep + 1] = np.arange(1, len(keep) + 1)
        return relabel[labels], areas[keep]

    def agreement(self) -> float:
        total = self.fp32_regions + self.variant_regions
        return 2 * self.matched / total if total else 1.0

    def compared(self) -> int:
        return self.fp32_regions

    def summary(self) -> str:
        return (f"{self.matched} of {self.fp32_regions} fp32 regions found again ({self.variant_regions} in the "
                f"variant), F1")

    def details(self) -> dict:
        figures = {"threshold": self.threshold, "variant_regions": self.variant_regions, "matched": self.matched,
                   "pixel_iou": self.intersection / self.union if self.union else 1.0}
        if not self.fp32_regions + self.variant_regions:
            figures["note"] = "no region in fp32 nor the variant"
        return figures
