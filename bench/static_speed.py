"""The 8-bit table: is a static variant faster than fp32 and does it keep the task? In one run per model, on data
it was not calibrated on (the demo's calibration and evaluation folders, examples/ocr_models.py; MiniLM's sentences
split 16 / 8; the tests' YOLO-style detector with SiLU, its boxes and scores meeting in one Concat, on 64x64 crops of
three scikit-image photos for calibration and three others for evaluation):

  plain      onnxruntime's quantize_static (QDQ, per-channel, its own MinMax calibration, every op it quantizes)
  default    onnxdtype with the search off (activations at weighted ops only, equalization, float tail)
  search     onnxdtype as built by default (the fastest placement that passes, build/search.py; [what it chose])

Columns: task agreement (the judge onnxdtype guesses for the output), 1-thread and all-thread speedup against fp32
(medians of interleaved runs), size, and the integer kernels / Q-DQ conversions in onnxruntime's optimized graph.
--profile adds, per model, where the time goes at 1 thread: onnxruntime's own per-node profile (enable_profiling)
summed by op type (convolutions by kind), fp32 beside the searched variant, with node counts.
--swap-page-lines gives cls/rec the other split of scikit-image's photographed page (examples/ocr_models.py).
Usage: python bench/static_speed.py [--models det,cls,rec,minilm,yolo] [--dtypes s8u8,u8u8] [--runs N] [--profile]
       [--bias-correction] [--swap-page-lines]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples")]
import ocr_models  # noqa: E402
import realmodels  # noqa: E402
import tinymodels  # noqa: E402

from onnxdtype.build import Calibration, quantize  # noqa: E402
from onnxdtype.calibration import load_samples  # noqa: E402
from onnxdtype.recipes.static import DTYPE_TYPES  # noqa: E402
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, evaluate, session  # noqa: E402
from onnxdtype.verify.judges import guess_tasks  # noqa: E402
from onnxdtype.verify.kernels import kernels  # noqa: E402
from onnxdtype.verify.latency import measure  # noqa: E402


def ocr_case(kind: str, work: Path, swap_page_lines: bool) -> tuple[Path, Path, Path]:
    ocr_models.main(work / "ocr", swap_page_lines)
    return work / "ocr" / f"{kind}.onnx", work / "ocr-calib" / kind, work / "ocr-eval" / kind


def minilm_case(work: Path) -> tuple[Path, Path, Path]:
    model = realmodels.export_minilm(ROOT / ".cache" / "minilm" / "model.onnx")
    for name, sentences in (("calib", realmodels.SENTENCES[:16]), ("eval", realmodels.SENTENCES[16:])):
        (work / name).mkdir(parents=True, exist_ok=True)
        for i, sentence in enumerate(sentences):
            np.savez(work / name / f"{i:02d}.npz", **realmodels.minilm_feeds([sentence]))
    return model, work / "calib", work / "eval"


def yolo_case(work: Path) -> tuple[Path, Path, Path]:
    from PIL import Image

    detector = tinymodels.detector(activation="silu")
    onnx.helper.set_model_props(detector, {"names": "{0: 'person', 1: 'car', 2: 'dog'}"})  # as ultralytics: detect
    model = tinymodels.save(detector, work / "yolo.onnx")
    images = realmodels.scene_images()
    for name, chosen in (("calib", images[:3]), ("eval", images[3:])):
        (work / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(chosen):
            height, width = image.shape[:2]
            for j, (top, left) in enumerate(((0, 0), (height // 3, width // 3), (height // 2, width // 2))):
                crop = Image.fromarray(image[top:top + height // 2, left:left + width // 2]).resize((64, 64))
                x = (np.asarray(crop, np.float32) / 255).transpose(2, 0, 1)[None]
                np.savez(work / name / f"{i}{j}.npz", x=x)
    return model, work / "calib", work / "eval"


def op_profile(path: Path, feed: dict, runs: int) -> dict[str, tuple[float, int]]:
    """Milliseconds per run and node count of each op type at 1 thread, from onnxruntime's profiler (after a
    warm-up); convolutions apart by kind (depthwise 5x5, 1x1, 3x3), whose integer kernels differ in speed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 4
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    warm_up = max(10, runs)
    for _ in range(warm_up + runs):
        session.run(None, feed)
    trace = session.end_profiling()
    with open(trace) as handle:
        events = json.load(handle)
    os.remove(trace)
    starts = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    events = [event for event in events if event.get("ts", 0) >= starts[warm_up]]  # the warm-up's runs left out
    kinds = conv_kinds(onnx.load(str(path), load_external_data=False))
    times: dict[str, tuple[float, int]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            if "Conv" in op and "Transpose" not in op:
                node = event["name"][: -len("_kernel_time")].split("_token_")[0]
                op += " " + kinds.get(node, _kind_from_shapes(event["args"].get("input_type_shape", [])))
            ms, count = times.get(op, (0.0, 0))
            times[op] = (ms + event["dur"] / 1000 / runs, count + 1)
    return {op: (ms, count // runs) for op, (ms, count) in times.items()}


def _kind(dims: list[int], group: int) -> str:
    spatial = "x".join(str(d) for d in dims[2:])
    if group > 1 and dims[1] == 1:
        return f"depthwise {spatial}"
    return spatial + (" grouped" if group > 1 else "")


def conv_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """Each Conv's kind by node name, from its weight initializer (through a DequantizeLinear in a QDQ model)."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    kinds = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = node.input[1]
            if weight in producers and producers[weight].op_type == "DequantizeLinear":
                weight = producers[weight].input[0]
            if weight in inits:
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                kinds[node.name] = _kind(inits[weight], group)
    return kinds


def _kind_from_shapes(shapes: list[dict]) -> str:
    """onnxruntime renames fp32 Convs it moves to its blocked layout; their weight shape is in the profile (one input
    channel per group: depthwise, as no other Conv of these models has)."""
    dims = list(shapes[1].values())[0] if len(shapes) > 1 and shapes[1] else []
    return _kind(dims, 2 if len(dims) == 4 and dims[1] == 1 and dims[0] > 1 else 1) if len(dims) == 4 else "?"


def profile_rows(fp32: Path, variant: Path, feed: dict, runs: int, top: int = 10) -> list[str]:
    sides = {"fp32": op_profile(fp32, feed, runs), "variant": op_profile(variant, feed, runs)}
    lines = []
    for side, times in sides.items():
        total = sum(ms for ms, _ in times.values())
        ranked = sorted(times.items(), key=lambda item: -item[1][0])[:top]
        lines.append(f"    {side:8} {total:7.2f} ms: " + ", ".join(f"{op} {ms:.2f} ({n})" for op, (ms, n) in ranked))
    return lines


def plain(model: Path, calib: Path, dtype: str, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    samples = iter(load_samples(calib, onnx.load(str(model))))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    weight, activation = DTYPE_TYPES[dtype]
    path = out / f"plain_{dtype}.onnx"
    quantize_static(str(model), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=types[weight], activation_type=types[activation])
    return path


def task_text(fp32: Path, variant: Path, feeds: list[dict]) -> str:
    """The worst task agreement over the outputs, by the judges onnxdtype guesses ('ctc 72.7%'), or the worst
    cosine when no output has a task judge."""
    tasks = {name: dataclasses.asdict(spec) for name, spec in guess_tasks(onnx.load(str(fp32))).items()}
    criteria = Criteria(0.99, tasks=tasks)  # fp32's noise floor as the build judges it: inputs and weights
    figures, _ = evaluate(Reference(session(fp32), EvalData(feeds, "eval", False), criteria, fp32), session(variant),
                          feeds, criteria)
    judged = [f["judge"] for f in figures["outputs"].values() if f.get("judge")]
    task = min(judged, key=lambda j: j["agreement"]) if judged else None
    worst_cosine = min(f["cosine"] for f in figures["outputs"].values())
    return f"{task['task']} {task['agreement']:.1%}" if task else f"cosine {worst_cosine:.4f}"


def kernel_text(variant: Path) -> str:
    """Integer kernels / Q-DQ conversions in the graph onnxruntime runs for the variant."""
    found = kernels(variant) or {"integer": {}, "conversions": {}}
    return f"{sum(found['integer'].values()):>5}/{sum(found['conversions'].values()):<5}"


def row(label: str, fp32: Path, variant: Path, eval_dir: Path, runs: int) -> str:
    feeds = list(load_samples(eval_dir, onnx.load(str(fp32))))
    speed = measure(fp32, variant, feeds[0], runs)
    size = variant.stat().st_size / fp32.stat().st_size
    return (f"  {label:16} {task_text(fp32, variant, feeds):>16} {speed['threads_1']['speedup']:>8.2f}"
            f" {speed['threads_all']['speedup']:>8.2f} {size:6.2f} {kernel_text(variant)}")


def placement(result) -> str:
    """What the search chose: chain (Q/DQ on every op with an integer kernel) or kernel inputs only, equalized,
    7-bit weights, ranges, kinds of ops and first layers float, repaired (nodes kept in float)."""
    trail = result.params.get("search")
    if not trail or trail.get("chosen") is None:
        return ""
    chosen = trail["candidates"][trail["chosen"]]
    options = chosen["options"]["static"]
    words = ["kernel inputs" if options["kernel_ops_only"] else "chain"] + ["equalized"] * options["equalize"] \
        + ["7-bit weights"] * bool(options.get("reduce_range")) \
        + [f"{options.get('method')} ranges"] * ("method" in options) \
        + [f"{' and '.join(options.get('float_kinds', []))} float"] * bool(options.get("float_kinds")) \
        + [f"first {options.get('float_first')} weighted float"] * bool(options.get("float_first"))
    if "repaired" in chosen:
        words.append(f"{len(chosen['repaired']['kept'])} nodes float")
    return "   [" + ", ".join(words) + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls,rec,minilm")
    parser.add_argument("--dtypes", default="s8u8,u8u8")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="per-op-type time of fp32 and the searched variant")
    parser.add_argument("--bias-correction", action="store_true", help="onnxdtype's rows with static.bias_correction")
    parser.add_argument("--swap-page-lines", action="store_true",
                        help="cls/rec: calibrate on the page's last 3 lines, judge on its first 4 (ocr_models.py)")
    args = parser.parse_args()
    options = {"static": {"bias_correction": True}} if args.bias_correction else None
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="onnxdtype-bench-") as scratch:
        work = Path(scratch)
        for name in args.models.split(","):
            cases = {"minilm": lambda: minilm_case(work / name), "yolo": lambda: yolo_case(work / name)}
            model, calib, eval_dir = cases.get(name, lambda: ocr_case(name, work, args.swap_page_lines))()
            print(f"{name}: {'variant':16} {'task':>16} {'1 thread':>8} {'all':>8} {'size':>6} int/qdq")
            for dtype in args.dtypes.split(","):
                print(f"  {dtype}: {row('plain', model, plain(model, calib, dtype, work), eval_dir, args.runs)[2:]}")
                for label, search in (("default", False), ("search", True)):
                    out = work / f"{name}-{dtype}-{label}"
                    result = quantize(model, dtype, out, calib=Calibration(calib), eval_data=eval_dir, search=search,
                                      latency_runs=0, workers=1, keep_failed=True, options=options).results[0]
                    status = "" if result.status == "ok" else f"   ({result.status})"
                    print(row(label, model, out / result.file, eval_dir, args.runs) + status + placement(result))
                if args.profile:
                    feed = list(load_samples(eval_dir, onnx.load(str(model))))[0]
                    print("\n".join(profile_rows(model, out / result.file, feed, args.runs)))


if __name__ == "__main__":
    main()
