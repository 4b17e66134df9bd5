"""q8 on Conv nets: onnxruntime's quantize_dynamic (ConvInteger weights per tensor) against onnxdtype's q8 (the same
call, then every ConvInteger's weights per output channel), on PP-OCRv4 det, cls and rec and the demo's held-out
data (examples/ocr_models.py: 8 photos and rendered pages, 11 text lines). Both sides are built in this run from the
same normalized model; the task figures are what a user notices: the share of rec lines decoded exactly as fp32
decodes them, cls labels kept, det text-map pixels (threshold 0.3, rapidocr's) agreeing as IoU, and the median
1-thread latency ratio fp32 / variant. Usage: python bench/q8_conv.py [--runs N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]
import ocr_models  # noqa: E402
import realmodels  # noqa: E402

from onnxdtype.normalize import normalize  # noqa: E402
from onnxdtype.recipes import dynamic  # noqa: E402


def session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds(kind: str) -> list[dict[str, np.ndarray]]:
    if kind == "det":
        return [realmodels.ocr_det_feed(image) for image in ocr_models.det_images("eval")]
    make = realmodels.ocr_cls_feed if kind == "cls" else realmodels.ocr_rec_feed
    return [make(line) for line in ocr_models.text_lines("eval")]


def task_figure(kind: str, ref: list[np.ndarray], got: list[np.ndarray]) -> str:
    if kind == "rec":
        same = sum(realmodels.ctc_decode(a) == realmodels.ctc_decode(b) for a, b in zip(ref, got))
        return f"{same}/{len(ref)} lines"
    if kind == "cls":
        same = sum(int((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(ref, got))
        return f"{same}/{len(ref)} labels"
    inter = sum(int(((a > 0.3) & (b > 0.3)).sum()) for a, b in zip(ref, got))
    union = sum(int(((a > 0.3) | (b > 0.3)).sum()) for a, b in zip(ref, got))
    return f"map IoU {inter / max(union, 1):.3f}"


def latency(model: onnx.ModelProto, feed: dict, runs: int) -> float:
    sess = session(model, threads=1)
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"{'model':5} {'variant':34} {'task':>16} {'size x':>7} {'speed x (1 thread)':>19}")
    for kind, path in realmodels.ocr_model_paths().items():
        model = normalize(onnx.load(str(path)), dynamic.PASSES)[0]
        data = feeds(kind)
        fp32 = session(model)
        ref = [fp32.run(None, f)[0] for f in data]
        base_time = latency(model, data[0], args.runs)
        variants = {"onnxruntime quantize_dynamic (per tensor)": dynamic.Options(per_channel=False),
                    "onnxdtype q8 (per-channel ConvInteger)": dynamic.Options()}
        for name, options in variants.items():
            built = dynamic.build(model, options).model
            got_session = session(built)
            got = [got_session.run(None, f)[0] for f in data]
            size = built.ByteSize() / model.ByteSize()
            speed = base_time / latency(built, data[0], args.runs)
            print(f"{kind:5} {name:34} {task_figure(kind, ref, got):>16} {size:7.2f} {speed:19.2f}")


if __name__ == "__main__":
    main()
