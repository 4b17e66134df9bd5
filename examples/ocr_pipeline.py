"""PP-OCR (det -> cls -> rec) through onnxdtype's Config, each module at its own dtype.

The three PP-OCR models that rapidocr-onnxruntime ships are copied into a folder; every dtype mix below is a
Config over that folder with per-module dtypes, and any variant not there yet is built on the spot
(missing="build"). rapidocr's own pipeline does the pre/post-processing (resize, DB boxes, crops, 180° turn,
CTC decode); only its three inference calls go through onnxdtype Engines. For each mix it prints the text
read, whether it equals fp32's, and each module's time.

Usage:
    python examples/ocr_pipeline.py [--models DIR] [--image PATH | --image page]

DIR defaults to a temp folder; the image defaults to lines rendered with Pillow (exact ground truth);
`page` is scikit-image's photographed book page. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxdtype import DType
from onnxdtype.runtime import Config, Engine

MODULES = ("det", "cls", "rec")
# det is a pure Conv net: the 4-bit dtypes do not apply to it. rec's q8 (Conv included) and 4-bit variants fail
# verification on real text lines (3 of 11 read differently): rec runs fp16 or fp32 here.
MIXES: dict[str, dict[str, str]] = {
    "fp32": {"det": "fp32", "cls": "fp32", "rec": "fp32"},
    "fp16": {"det": "fp16", "cls": "fp16", "rec": "fp16"},
    "det q8, cls q8, rec fp16": {"det": "q8", "cls": "q8", "rec": "fp16"},
    "det fp32, cls q4, rec fp32": {"det": "fp32", "cls": "q4", "rec": "fp32"},
}
LINES = ["Hello onnxdtype 2026", "The quick brown fox jumps over the lazy dog", "ONNX Runtime on CPU"]
# Warm-up shapes: cls always sees 48x192 crops, rec 48 x (width of the line, 320 at least).
DIMS = {"cls": {("x", 2): 48, ("x", 3): 192}, "rec": {("x", 2): 48, ("x", 3): 320}}


@dataclass
class Reading:
    mix: str
    lines: list[str]
    dtypes: dict[str, DType]
    seconds: dict[str, float]  # inference time per module for this image (second pass)


class EngineSession:
    """Stands in for rapidocr's OrtInferSession: called with one array, returns the list of outputs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __call__(self, array: np.ndarray) -> list[np.ndarray]:
        return list(self.engine.run(array).values())


def copy_models(folder: Path) -> Path:
    """det.onnx, cls.onnx, rec.onnx from the rapidocr-onnxruntime package (never downloaded)."""
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH, root_dir
    from rapidocr_onnxruntime.utils import read_yaml

    config = read_yaml(DEFAULT_CFG_PATH)
    folder.mkdir(parents=True, exist_ok=True)
    for name, section in zip(MODULES, ("Det", "Cls", "Rec")):
        target = folder / f"{name}.onnx"
        if not target.exists():
            shutil.copyfile(root_dir / config[section]["model_path"], target)
    return folder


def rendered_lines(lines: list[str] = LINES, size: int = 48) -> np.ndarray:
    """Black lines of text on white (RGB uint8) in Pillow's bundled font: a page whose text is known exactly.

    At 48 px the font's spaces are wide enough for rec to read them (at 32 px "Hello onnxdtype" reads as one word).
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    width = max(int(font.getlength(line)) for line in lines) + 4 * size
    image = Image.new("RGB", (width, (len(lines) + 1) * 2 * size), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((2 * size, size + row * 2 * size), line, fill="black", font=font)
    return np.array(image)


def load_image(spec: str | None) -> np.ndarray:
    """RGB uint8: rendered lines (default), skimage's page, or a file."""
    if spec is None:
        return rendered_lines()
    if spec == "page":
        from skimage import data

        return np.stack([data.page()] * 3, axis=-1)
    from PIL import Image

    with Image.open(spec) as image:
        return np.array(image.convert("RGB"))


def mix_config(models: Path, mix: dict[str, str]) -> Config:
    """One Config for the folder: the mix's dtype per module, CPU, variants built when missing."""
    config = Config.from_dir(models, device="cpu", missing="build",
                             modules={name: {"dims": DIMS.get(name, {})} for name in MODULES})
    for module, dtype in mix.items():
        config = config.with_module_dtype(module, dtype)
    return config.commit()


def read_text(models: Path, image: np.ndarray, mix_name: str) -> Reading:
    """Run rapidocr's pipeline with the mix's Engines in place of its sessions; the text, top to bottom."""
    from rapidocr_onnxruntime import RapidOCR

    config = mix_config(models, MIXES[mix_name])
    engines = {name: config.engine(name) for name in MODULES}
    # Its own fp32 sessions load from the package and are replaced below. Its default scales the short side up to
    # 736 px for small photos; the long side down to 960 px suits pages of clear print and is 3x faster here.
    ocr = RapidOCR(det_limit_type="max", det_limit_side_len=960)
    ocr.text_det.infer = EngineSession(engines["det"])
    ocr.text_cls.infer = EngineSession(engines["cls"])
    ocr.text_rec.session = EngineSession(engines["rec"])
    bgr = image[..., ::-1].copy()  # rapidocr takes BGR, like cv2.imread
    ocr(bgr)  # a first pass on this image's shapes, so the timed one below measures inference, not allocation
    first = {name: len(engine.timings.runs) for name, engine in engines.items()}
    result, _ = ocr(bgr)
    return Reading(mix_name, [text.strip() for _box, text, _score in result or []],
                   {name: config[name].dtype for name in MODULES},
                   {name: sum(engine.timings.runs[first[name]:]) for name, engine in engines.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="Folder for det/cls/rec and their variants (default: a temp folder)")
    parser.add_argument("--image", help="An image file, or 'page' (scikit-image); default: rendered lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnxdtype-ocr-") as scratch:
        models = copy_models(args.models or Path(scratch))
        image = load_image(args.image)
        start = time.perf_counter()
        readings = [read_text(models, image, mix) for mix in MIXES]
        baseline = readings[0]
        for reading in readings:
            same = "same text as fp32" if reading.lines == baseline.lines else "DIFFERS from fp32"
            times = "  ".join(f"{m} {reading.dtypes[m]} {reading.seconds[m] * 1e3:6.1f} ms" for m in MODULES)
            print(f"{reading.mix:28s} {times}   {same}")
            if reading is baseline or reading.lines != baseline.lines:
                for line in reading.lines:
                    print(f"    {line}")
        where = f"in {models}" if args.models else "in a temp folder, now removed"
        print(f"{len(readings)} mixes in {time.perf_counter() - start:.1f} s, variants built on first use {where}")


if __name__ == "__main__":
    main()
