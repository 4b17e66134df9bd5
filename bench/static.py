"""Time s8s8 + s8u8 + u8u8 from one calibration against three plain quantize_static calls that each calibrate.

Both sides start from the same normalized model file and the same samples (PP-OCRv4 det: scikit-image photos and
rendered text pages through an image spec; MiniLM: 24 sentences, one .npz each), write three QDQ models, and run
alternately in this process; the script prints the medians and their ratio. Usage: python bench/static.py [--runs N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402

from onnxdtype.calibration import calibrate, load_samples  # noqa: E402
from onnxdtype.normalize import normalize  # noqa: E402
from onnxdtype.recipes import static  # noqa: E402
from onnxdtype.recipes.static import DTYPE_TYPES  # noqa: E402

DET_SPEC = {"resize": "short-side", "short_side": 320, "multiple": 32, "channels": "BGR",
            "scale": 1 / 255, "mean": 0.5, "std": 0.5}


def ours(model_path: Path, data: Path, spec: dict | None, out: Path) -> None:
    """onnxdtype: normalize, calibrate once, build the three dtypes from the one ranges file."""
    model = normalize(onnx.load(str(model_path)), static.PASSES)[0]
    calibration = calibrate(model, load_samples(data, model, spec), "minmax", out)
    for dtype in DTYPE_TYPES:
        options = static.options_for(dtype, static.Options(ranges_file=str(calibration.path)))
        onnx.save(static.build(model, options).model, str(out / f"{dtype}.onnx"))


def plain(model_path: Path, data: Path, spec: dict | None, out: Path) -> None:
    """What a user script does today: one quantize_static per dtype, each running its own calibration."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(model_path))
    samples = load_samples(data, model, spec)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(samples)

        def get_next(self):
            return next(self.feeds, None)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    for dtype, (weight_type, activation_type) in DTYPE_TYPES.items():
        quantize_static(str(model_path), str(out / f"{dtype}.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=types[weight_type], activation_type=types[activation_type])


def det_data(folder: Path) -> tuple[Path, Path, dict]:
    from PIL import Image

    text_page = realmodels.rendered_text_page

    images = folder / "images"
    images.mkdir()
    for i, image in enumerate(realmodels.scene_images() + [text_page(seed) for seed in range(10)]):
        Image.fromarray(image).save(images / f"{i:02d}.png")
    return Path(realmodels.ocr_model_paths()["det"]), images, DET_SPEC


def minilm_data(folder: Path) -> tuple[Path, Path, None]:
    sentences = folder / "sentences"
    sentences.mkdir()
    for i, sentence in enumerate(realmodels.SENTENCES):
        np.savez(sentences / f"{i:02d}.npz", **realmodels.minilm_feeds([sentence]))
    cache = Path(__file__).resolve().parent.parent / ".cache" / "minilm" / "model.onnx"
    return realmodels.export_minilm(cache), sentences, None


def timed(fn, *args) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        fn(*args, Path(out))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs a pre-processing hint on every call
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    with tempfile.TemporaryDirectory() as work:
        for name, make in (("PP-OCRv4 det", det_data), ("MiniLM-L6", minilm_data)):
            folder = Path(work) / name.split()[0]
            folder.mkdir()
            source, data, spec = make(folder)
            model_path = folder / "normalized.onnx"  # both sides quantize the same graph
            onnx.save(normalize(onnx.load(str(source)), static.PASSES)[0], str(model_path))
            samples = len(load_samples(data, onnx.load(str(model_path)), spec))
            times = {"ours": [], "plain": []}
            for _ in range(args.runs):
                times["ours"].append(timed(ours, model_path, data, spec))
                times["plain"].append(timed(plain, model_path, data, spec))
            medians = {side: statistics.median(t) for side, t in times.items()}
            runs = {side: ", ".join(f"{t:.2f}" for t in ts) for side, ts in times.items()}
            print(f"{name}: s8s8+s8u8+u8u8 from {samples} calibration samples, {args.runs} runs each, interleaved")
            print(f"  3 plain quantize_static calls (3 calibrations): median {medians['plain']:.2f} s  ({runs['plain']})")
            print(f"  onnxdtype, one calibration:                    median {medians['ours']:.2f} s  ({runs['ours']})")
            print(f"  ratio onnxdtype / plain: {medians['ours'] / medians['plain']:.2f}  (below 1 = onnxdtype faster)")


if __name__ == "__main__":
    main()
