"""What each of the static recipe's later additions buys, one placement at a time: the variant as built, then with
the constant-scale folding off (integer_ops.fold_constant_scales), with 7-bit weights (reduce_range), with bias
correction (off by default), and for an
equalized chain with its equalizing Muls' constants quantized at onnxruntime's own scale ("ort constants") — task
agreement on held-out data, 1-thread speed against fp32 (every variant timed interleaved with the others and fp32
in one loop, medians, so drift hits all alike) and the integer kernels / Q-DQ conversions onnxruntime runs. The demo's calibration/evaluation folders for PP-OCRv4
(examples/ocr_models.py), MiniLM's sentences split 16 / 8 (as bench/static_speed.py).

    python bench/static_ablation.py --model det --placement chain --dtype s8u8
    python bench/static_ablation.py --model rec --placement kernel --dtype s8u8 --equalize
    python bench/static_ablation.py --model rec --placement chain --dtype s8u8 --equalize --seven-bit

Measured here (2026-11-27, AMD EPYC AVX2 without VNNI, onnxruntime 1.32; held-out task agreement, 1-thread speed,
int kernels / Q-DQ; a second run of each moved the speeds by up to 0.15 and kept the order):
  det s8u8 chain                as built 100 % 1.28x 205/9    no folding 100 % 1.04x 291/9    7-bit 100 % 1.26x
  rec s8u8 chain                as built 9.1 % 1.61x 213/32   no folding 9.1 % 1.28x 308/32   7-bit 54.5 % 1.61x
  rec s8u8 kernel, equalized    as built 72.7 % 0.92x 50/97   no folding 72.7 % 0.92x 50/97   7-bit 72.7 % 0.90x
  cls s8u8 chain                as built 90.9 % 0.97x 143/2   no folding 100 % 0.98x 169/2    7-bit 100 % 0.93x
  MiniLM s8u8 chain, equalized  as built 87.5 % 1.44x 142/75  no folding 87.5 % 1.46x 160/75  7-bit 62.5 % 1.45x
Equalized chains, as built (equalizing constants on the grid of the scale the recipe gives them) vs "ort constants"
(2026-11-27, later, with fp32's noise floor: rec judged on 9 lines; one run each):
  rec s8u8 chain, equalized, 7-bit   as built 77.8 % 1.30x   ort constants 0.0 % 1.29x    (274/32 both)
  rec s8u8 chain, equalized          as built 11.1 % 1.30x   ort constants 0.0 % 1.38x    (8-bit weights saturate)
  det s8u8 chain, equalized          as built 100 % 0.89x    ort constants 100 % 0.93x    (298/9 both)
  cls s8u8 chain, equalized          as built 90.9 % 0.71x   ort constants 90.9 % 0.71x   (190/2 both)
  MiniLM s8u8 chain, equalized       as built 62.5 % 1.54x   ort constants 87.5 % 1.57x   (142/75 both)
MiniLM's smoothing factors spread wider than one 8-bit constant holds (its outlier channels are 100-240x the rest),
so on the grid the widest are smoothed less; that placement fails either way and the search keeps kernel inputs there.
Bias correction (2026-11-27, one run, 10 timing runs): rec s8u8 kernel, equalized: 88.9 % with and without (same line).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "bench")]
from static_speed import kernel_text, minilm_case, ocr_case, task_text  # noqa: E402

from onnxdtype.calibration import calibrate, load_samples  # noqa: E402
from onnxdtype.normalize import normalize  # noqa: E402
from onnxdtype.recipes import static  # noqa: E402
from onnxdtype.verify.evaluate import session  # noqa: E402
from onnxdtype.verify.latency import speedups  # noqa: E402


def variants(model: onnx.ModelProto, options: static.Options) -> dict[str, onnx.ModelProto]:
    """The variant as built, without the folding, with 7-bit weights, with bias correction, and (an equalized chain)
    with the equalizing constants quantized at the scale onnxruntime picks instead of the one the recipe gives it."""
    built = {"as built": static.build(model, options).model,
             "7-bit weights": static.build(model, static.Options(**{**vars(options), "reduce_range": True})).model,
             "bias corr.": static.build(model, static.Options(**{**vars(options), "bias_correction": True})).model}
    fold, static.fold_constant_scales = static.fold_constant_scales, lambda quantized, source: 0
    try:
        built["no folding"] = static.build(model, options).model
    finally:
        static.fold_constant_scales = fold
    if options.equalize and not options.kernel_ops_only:
        levels, static.CONSTANT_LEVELS = static.CONSTANT_LEVELS, dict.fromkeys(static.CONSTANT_LEVELS)
        try:
            built["ort constants"] = static.build(model, options).model
        finally:
            static.CONSTANT_LEVELS = levels
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("det", "cls", "rec", "minilm"), default="det")
    parser.add_argument("--placement", choices=("chain", "kernel"), default="chain")
    parser.add_argument("--dtype", choices=sorted(static.DTYPE_TYPES), default="s8u8")
    parser.add_argument("--equalize", action="store_true", help="channel equalization on (off by default)")
    parser.add_argument("--seven-bit", action="store_true", help="7-bit weights in every row (reduce_range)")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="onnxdtype-ablation-") as scratch:
        work = Path(scratch)
        path, calib, eval_dir = minilm_case(work) if args.model == "minilm" else ocr_case(args.model, work)
        model = normalize(onnx.load(str(path)), static.PASSES)[0]
        calibration = calibrate(model, load_samples(calib, model), "minmax", work / "cache")
        options = static.options_for(args.dtype, static.Options(
            ranges_file=str(calibration.path), kernel_ops_only=args.placement == "kernel", equalize=args.equalize,
            reduce_range=args.seven_bit))
        fp32 = work / "fp32.onnx"
        fp32.write_bytes(model.SerializeToString())
        paths = {}
        for index, (name, variant) in enumerate(variants(model, options).items()):
            paths[name] = work / f"variant{index}.onnx"
            paths[name].write_bytes(variant.SerializeToString())
        feeds = list(load_samples(eval_dir, model))
        timed = speedups(session(fp32, threads=1), [session(p, threads=1) for p in paths.values()], feeds[0],
                         args.runs)
        print(f"{args.model} {args.dtype} {args.placement}{' equalized' if args.equalize else ''}{' 7-bit' if args.seven_bit else ''}: "
              f"{'variant':14} {'task':>16} {'1 thread':>9} int/qdq")
        for (name, variant_path), speed in zip(paths.items(), timed):
            print(f"  {name:14} {task_text(fp32, variant_path, feeds):>16} {speed:9.2f} {kernel_text(variant_path)}")


if __name__ == "__main__":
    main()
