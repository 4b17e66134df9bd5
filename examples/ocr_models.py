"""Copy the PP-OCRv4 det/cls/rec models that rapidocr-onnxruntime ships into DEST as det.onnx, cls.onnx, rec.onnx,
and write real calibration/evaluation data beside them: DEST-data/<module>/*.npz, preprocessed as rapidocr does
(det: scikit-image photos and a page of text; cls/rec: text lines cropped from scikit-image's page and rendered).

Usage: python examples/ocr_models.py DEST   then   onnxdtype quantize DEST --calib DEST-data
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402


def main(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in realmodels.ocr_model_paths().items():
        target = dest / f"{name}.onnx"
        if not target.exists():
            shutil.copyfile(source, target)
        print(f"{target}  <-  {source.name}")
    data = dest.with_name(dest.name + "-data")
    lines = realmodels.text_line_images()
    feeds = {"det": [realmodels.ocr_det_feed(image) for image in realmodels.scene_images()],
             "cls": [realmodels.ocr_cls_feed(line) for line in lines],
             "rec": [realmodels.ocr_rec_feed(line) for line in lines]}
    for module, module_feeds in feeds.items():
        folder = data / module
        folder.mkdir(parents=True, exist_ok=True)
        for i, feed in enumerate(module_feeds):
            np.savez(folder / f"{i:03d}.npz", **feed)
        print(f"{folder}/  {len(module_feeds)} samples")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/ocr"))
