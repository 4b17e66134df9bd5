"""Dense maps (text probability maps, segmentation masks): does the variant mark the same foreground as fp32?

Maps [b, k, H, W] or [b, H, W] are thresholded (`threshold`, default 0.5 for probabilities, 0 for logits,
decided on the first sample's fp32 values) and compared as foregrounds: the agreement is the IoU of the
foregrounds summed over all samples (intersection total / union total). Share of agreeing pixels would be too
lenient: on a page that is 98 % background, a map that loses all text still agrees on 98 % of pixels.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import TaskJudge, auto_threshold, register


@register
class DenseJudge(TaskJudge):
    name = "dense"
    unit = "pixels"
    PARAMS: ClassVar[dict[str, tuple]] = {"threshold": (float, None)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.threshold = self.params["threshold"]
        self.intersection = 0
        self.union = 0
        self.fp32_foreground = 0
        self.variant_foreground = 0

    def _add(self, ref: np.ndarray, got: np.ndarray) -> None:
        if self.threshold is None:
            self.threshold = auto_threshold(ref)
        fg_ref, fg_got = ref > self.threshold, got > self.threshold
        self.intersection += int((fg_ref & fg_got).sum())
        self.union += int((fg_ref | fg_got).sum())
        self.fp32_foreground += int(fg_ref.sum())
        self.variant_foreground += int(fg_got.sum())

    def agreement(self) -> float:
        return self.intersection / self.union if self.union else 1.0

    def compared(self) -> int:
        return self.fp32_foreground

    def summary(self) -> str:
        return (f"foreground IoU over {self.fp32_foreground} fp32 pixels "
                f"({self.variant_foreground} in the variant, {self.intersection} shared)")

    def details(self) -> dict:
        figures = {"threshold": self.threshold, "variant_foreground": self.variant_foreground,
                   "intersection": self.intersection, "union": self.union}
        if not self.union:
            figures["note"] = "no foreground in fp32 nor the variant"
        return figures
