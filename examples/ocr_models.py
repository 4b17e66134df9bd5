"""Copy the PP-OCRv4 det/cls/rec models that rapidocr-onnxruntime ships into DEST as det.onnx, cls.onnx, rec.onnx,
and write real data beside them, preprocessed as rapidocr does, in two parts that share no image or line:
DEST-calib/<module>/*.npz to calibrate on and DEST-eval/<module>/*.npz to verify on.

det: scikit-image photos and rendered pages of text (8 to calibrate, 8 to verify); cls/rec: text lines cropped
from scikit-image's page and rendered lines of words (8 to calibrate, 11 to verify).

--swap-page-lines calibrates cls/rec on the page's last 3 lines and holds out its first 4 instead: fp32 itself
does not hold its last 3 (verify.rounding, verify.weight_noise), so by default rec's held-out verdict rests on
its rendered lines; swapped, 4 photographed lines are judged.

Usage: python examples/ocr_models.py DEST [--swap-page-lines]
       then   onnxdtype quantize DEST --calib DEST-calib --eval DEST-eval
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402

CALIB_PHOTOS = ("page", "coffee", "astronaut", "chelsea", "rocket", "camera")
EVAL_PHOTOS = ("text", "coins", "clock", "logo", "horse")


def photos(names: tuple[str, ...]) -> list[np.ndarray]:
    from skimage import data

    return [realmodels.rgb(getattr(data, name)()) for name in names]


def det_images(part: str) -> list[np.ndarray]:
    if part == "calib":
        return photos(CALIB_PHOTOS) + [realmodels.rendered_text_page(seed) for seed in (1, 2)]
    return photos(EVAL_PHOTOS) + [realmodels.rendered_text_page(seed) for seed in (3, 4, 5)]


def text_lines(part: str, swap_page_lines: bool = False) -> list[np.ndarray]:
    page_lines = realmodels.page_line_images()
    first, last = page_lines[:4], page_lines[4:]
    if part == "calib":
        texts = realmodels.RENDERED_TEXTS[:2] + realmodels.word_lines(seed=10, count=2)
        return [realmodels.render_text_line(t) for t in texts] + (last if swap_page_lines else first)
    texts = realmodels.RENDERED_TEXTS[2:] + realmodels.word_lines(seed=11, count=6)
    return [realmodels.render_text_line(t) for t in texts] + (first if swap_page_lines else last)


def main(dest: Path, swap_page_lines: bool = False) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in realmodels.ocr_model_paths().items():
        target = dest / f"{name}.onnx"
        if not target.exists():
            shutil.copyfile(source, target)
        print(f"{target}  <-  {source.name}")
    for part in ("calib", "eval"):
        lines = text_lines(part, swap_page_lines)
        feeds = {"det": [realmodels.ocr_det_feed(image) for image in det_images(part)],
                 "cls": [realmodels.ocr_cls_feed(line) for line in lines],
                 "rec": [realmodels.ocr_rec_feed(line) for line in lines]}
        for module, module_feeds in feeds.items():
            folder = dest.with_name(f"{dest.name}-{part}") / module
            folder.mkdir(parents=True, exist_ok=True)
            for i, feed in enumerate(module_feeds):
                np.savez(folder / f"{i:03d}.npz", **feed)
            print(f"{folder}/  {len(module_feeds)} samples")


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if a != "--swap-page-lines"]
    main(Path(paths[0] if paths else "demo-out/ocr"), "--swap-page-lines" in sys.argv[1:])
