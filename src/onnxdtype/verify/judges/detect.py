"""Object detection: does the variant find the same boxes as fp32, after the usual YOLO post-processing?

Raw heads are decoded the way their users decode them (confidence threshold, class-wise NMS), because a
wrecked score channel hides in a whole-tensor cosine dominated by box coordinates. Variant detections are
matched one-to-one to fp32 detections of the same class at IoU ≥ `match_iou`; the agreement is the F1 score
over all samples, with fp32's detections as the truth.

Layouts: `yolo`/`v8` is ultralytics v8+ [b, 4+nc, N] (cx, cy, w, h, class scores); `v5` is [b, N, 5+nc]
(cx, cy, w, h, objectness, class scores; `objectness=false` for a transposed v8 head [b, N, 4+nc]).
`auto` takes [b, d1, d2] with d1 < d2 as v8, else v5.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from onnxdtype.verify.judges.base import TaskJudge, register, require

MAX_DETECTIONS = 300  # per image, as ultralytics' max_det; also bounds NMS time on a wrecked variant's head


@register
class DetectJudge(TaskJudge):
    name = "detect"
    unit = "detections"
    PARAMS: ClassVar[dict[str, tuple]] = {
        "layout": (("auto", "yolo", "v8", "v5"), "auto"), "objectness": (bool, None),
        "conf": (float, 0.25), "iou": (float, 0.45), "match_iou": (float, 0.5)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        for key in ("conf", "iou"):
            require(0 <= self.params[key] <= 1, f"detect: {key}={self.params[key]} is not within [0, 1]")
        require(0 < self.params["match_iou"] <= 1, f"detect: match_iou={self.params['match_iou']} is not within (0, 1]")
        self.matched = 0
        self.fp32_boxes = 0
        self.variant_boxes = 0

    def _add(self, ref: np.ndarray, got: np.ndarray) -> None:
        if ref.ndim == 2:
            ref, got = ref[None], got[None]
        require(ref.ndim == 3, f"detect: expected a YOLO head [b, 4+nc, N] or [b, N, 5+nc], got shape {ref.shape}")
        ref, got, objectness = self._features_first(ref, got)
        require(ref.shape[1] >= 5 + objectness,
                f"detect: {ref.shape[1]} values per box leave no class scores (layout {self.params['layout']})")
        for r, g in zip(ref, got):
            boxes_ref, boxes_got = self._decode(r, objectness), self._decode(g, objectness)
            self.fp32_boxes += len(boxes_ref[0])
            self.variant_boxes += len(boxes_got[0])
            self.matched += match(boxes_ref, boxes_got, self.params["match_iou"])

    def _features_first(self, ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Both heads as [b, features, N], and whether the features hold an objectness score."""
        layout = self.params["layout"]
        if layout == "auto":
            layout = "v8" if ref.shape[1] < ref.shape[2] else "v5"
        v5 = layout == "v5"
        objectness = v5 if self.params["objectness"] is None else self.params["objectness"]
        if v5:
            ref, got = ref.swapaxes(1, 2), got.swapaxes(1, 2)
        return ref, got, objectness

    def _decode(self, head: np.ndarray, objectness: bool) -> tuple[np.ndarray, np.ndarray]:
        """One image's [features, N] head -> (boxes [n, 4] as x1 y1 x2 y2, classes [n]) kept after NMS."""
        head = head.astype(np.float64)
        scores = head[5:] * head[4] if objectness else head[4:]
        classes, confidence = scores.argmax(0), scores.max(0)
        keep = confidence > self.params["conf"]
        cx, cy, w, h = head[:4, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        classes, confidence = classes[keep], confidence[keep]
        kept = [i for c in np.unique(classes) for i in nms(boxes, confidence, classes == c, self.params["iou"])]
        kept = sorted(kept, key=lambda i: -confidence[i])[:MAX_DETECTIONS]
        return boxes[kept], classes[kept]

    def agreement(self) -> float:
        if self.fp32_boxes + self.variant_boxes == 0:
            return 1.0
        return 2 * self.matched / (self.fp32_boxes + self.variant_boxes)

    def compared(self) -> int:
        return self.fp32_boxes

    def summary(self) -> str:
        return (f"F1 over {self.fp32_boxes} fp32 detections: {self.matched} matched, "
                f"{self.fp32_boxes - self.matched} missed, {self.variant_boxes - self.matched} extra")

    def details(self) -> dict:
        figures = {"matched": self.matched, "missed": self.fp32_boxes - self.matched,
                   "extra": self.variant_boxes - self.matched, "variant_detections": self.variant_boxes}
        if self.fp32_boxes + self.variant_boxes == 0:
            figures["note"] = f"no detection above conf {self.params['conf']} in fp32 nor the variant"
        return figures


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1 y1 x2 y2 box with each of `boxes`."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, among: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression over the boxes selected by the mask `among`, best first, at most
    MAX_DETECTIONS; indices into `boxes`."""
    order = np.flatnonzero(among)
    order = order[np.argsort(-scores[order], kind="stable")]
    kept = []
    while order.size and len(kept) < MAX_DETECTIONS:
        kept.append(int(order[0]))
        order = order[1:][iou(boxes[order[0]], boxes[order[1:]]) <= threshold]
    return kept


def match(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], threshold: float) -> int:
    """How many variant detections pair one-to-one with fp32 detections of the same class at IoU ≥ threshold
    (greedy, best IoU first)."""
    (boxes_ref, classes_ref), (boxes_got, classes_got) = ref, got
    if not len(boxes_ref) or not len(boxes_got):
        return 0
    ious = np.stack([iou(box, boxes_got) for box in boxes_ref]) * (classes_ref[:, None] == classes_got[None, :])
    pairs = sorted(zip(*np.nonzero(ious >= threshold)), key=lambda p: -ious[p])
    used_ref, used_got = set(), set()
    for i, j in pairs:
        if i not in used_ref and j not in used_got:
            used_ref.add(i)
            used_got.add(j)
    return len(used_ref)
