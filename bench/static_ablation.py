"""What each of the static recipe's later additions buys, one placement at a time: the variant as built, then with
the constant-scale folding off (integer_ops.fold_constant_scales), and with 7-bit weights (reduce_range) — task
agreement on held-out data and 1-thread speed against fp32, every variant timed interleaved with the others and
fp32 in one loop (medians), so drift hits all alike. The demo's calibration/evaluation folders for PP-OCRv4
(examples/ocr_models.py), MiniLM's sentences split 16 / 8 (as bench/static_speed.py).

    python bench/static_ablation.py --model det --placement chain --dtype s8u8
    python bench/static_ablation.py --model rec --placement kernel --dtype s8u8 --equalize

Measured here (2026-11-27, AMD EPYC AVX2 without VNNI, onnxruntime 1.32; held-out task agreement, 1-thread speed):
  det s8u8 chain                 as built 100 % 1.38x   no folding 100 % 1.14x   7-bit weights 100 % 1.37x
  rec s8u8 chain                 as built 9.1 % 1.78x   no folding 9.1 % 1.41x   7-bit weights 54.5 % 1.68x
  rec s8u8 kernel, equalized     as built 72.7 % 0.96x  no folding 72.7 % 0.94x  7-bit weights 72.7 % 0.92x
  cls s8u8 chain                 as built 90.9 % 0.85x  no folding 100 % 0.81x   7-bit weights 100 % 0.88x
  MiniLM s8u8 chain, equalized   as built 87.5 % 1.46x  no folding 87.5 % 1.47x  7-bit weights 62.5 % 1.48x
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "bench")]
from static_speed import minilm_case, ocr_case  # noqa: E402

from onnxdtype.calibration import calibrate, load_samples  # noqa: E402
from onnxdtype.normalize import normalize  # noqa: E402
from onnxdtype.recipes import static  # noqa: E402
from onnxdtype.verify.evaluate import session  # noqa: E402
from onnxdtype.verify.judges import guess_tasks, make_judge  # noqa: E402


def variants(model: onnx.ModelProto, options: static.Options) -> dict[str, onnx.ModelProto]:
    """The variant as built, without the folding, and with 7-bit weights."""
    built = {"as built": static.build(model, options).model,
             "7-bit weights": static.build(model, static.Options(**{**vars(options), "reduce_range": True})).model}
    fold, static.fold_constant_scales = static.fold_constant_scales, lambda quantized, source: 0
    try:
        built["no folding"] = static.build(model, options).model
    finally:
        static.fold_constant_scales = fold
    return built


def agreement(model: onnx.ModelProto, variant: onnx.ModelProto, feeds: list[dict]) -> float:
    """The worst task agreement over the outputs (the judges onnxdtype guesses)."""
    base, quantized = session(model), session(variant)
    reference = [base.run(None, feed) for feed in feeds]
    got = [quantized.run(None, feed) for feed in feeds]
    worst = 1.0
    for index, spec in enumerate(guess_tasks(model).values()):
        judge = make_judge(spec)
        for ref, out in zip(reference, got):
            judge.add(ref[index], out[index])
        worst = min(worst, judge.figures()["agreement"])
    return worst


def speedups(model: onnx.ModelProto, built: dict[str, onnx.ModelProto], feed: dict, runs: int) -> dict[str, float]:
    sessions = {"fp32": session(model, threads=1), **{name: session(m, threads=1) for name, m in built.items()}}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        sess.run(None, feed)
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["fp32"])
    return {name: base / statistics.median(times[name]) for name in built}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("det", "cls", "rec", "minilm"), default="det")
    parser.add_argument("--placement", choices=("chain", "kernel"), default="chain")
    parser.add_argument("--dtype", choices=sorted(static.DTYPE_TYPES), default="s8u8")
    parser.add_argument("--equalize", action="store_true", help="channel equalization on (off by default)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="onnxdtype-ablation-") as scratch:
        work = Path(scratch)
        path, calib, eval_dir = minilm_case(work) if args.model == "minilm" else ocr_case(args.model, work)
        model = normalize(onnx.load(str(path)), static.PASSES)[0]
        calibration = calibrate(model, load_samples(calib, model), "minmax", work / "cache")
        options = static.options_for(args.dtype, static.Options(
            ranges_file=str(calibration.path), kernel_ops_only=args.placement == "kernel", equalize=args.equalize))
        feeds = list(load_samples(eval_dir, model))
        built = variants(model, options)
        speed = speedups(model, built, feeds[0], args.runs)
        print(f"{args.model} {args.dtype} {args.placement}{' equalized' if args.equalize else ''}: "
              f"{'variant':14} {'task':>7} {'1 thread':>9}")
        for name, variant in built.items():
            print(f"  {name:14} {agreement(model, variant, feeds):7.1%} {speed[name]:9.2f}")


if __name__ == "__main__":
    main()
