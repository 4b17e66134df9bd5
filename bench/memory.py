"""Peak memory of `onnxdtype quantize --dtype all` on a synthetic ~2.5 GB model, and of calibration/verification
as the number of samples grows. A benchmark (minutes, ~15 GB of disk under --dir), not a CI test.

    python bench/memory.py                   # both parts
    python bench/memory.py build --gb 2.5    # the big build only (--workers N to force a worker count,
                                             # --no-verify to build without verification, through the API)
    python bench/memory.py build --gb 7 --model transformer --dtype fp16,q8,q4,q4f16,bnb4
    python bench/memory.py build --gb 0.75 --single-file   # the model as one .onnx file, no external data
    python bench/memory.py samples           # calibration and verification, 16 vs 256 samples

The models, their weights in external data (written straight to the .data file, so generating one needs no more
memory than its largest weight): `mlp` (default), x[N, 4096] -> (MatMul 4096x4096 -> Relu) x L -> y; `transformer`,
a decoder's shapes: token embedding, then per layer LayerNorm, fused QKV MatMul, attention, output MatMul, LayerNorm
and a 4x MLP, with residuals (--hidden sets the width, 4096 by default; the vocabulary is 32000). The build runs
as a child process; a sampler thread sums the resident set (VmRSS) of the child and all its descendants (worker
processes) every 0.1 s, and getrusage(RUSAGE_CHILDREN) gives the largest single process. Figures are printed as
multiples of the model's size on disk (.onnx + .data).

Measured here (24 GB RAM, 2 cores shared with other work, onnxruntime 1.32, --workers 1, MLP, 2026-11).
Before weights were streamed (weights.py), 2.50 GiB model, --no-verify:
  --dtype all    peak RSS 22.7 GiB = 9.1x the model (one process), 195 s; output folder peaked at 3.2x on disk
  one dtype      fp16 9.0x, q8 >= 9.5x (OOM-killed at 23.7 GiB in one of two runs), q4 6.5x, q4f16 7.2x, bnb4 6.5x
Streamed, verification on (the command line's default):
  0.75 GiB, --dtype all          1.77x the model (1.85x the largest process), 69 s; before q8's stand-ins
                                 (recipes/dynamic.py: quantize_dynamic given the whole model, which it holds three
                                 times) 3.25x (3.29x), 100 s, the peak q8's; before streaming 8.21x, 173 s
  0.75 GiB, one dtype            before -> now: fp16 8.22x 113 s -> 1.29x 45 s, q8 7.26x 86 s -> 3.20x 50 s
                                 (3.28x 48 s in the stand-ins' before run) -> 1.52x 32 s with stand-ins (1.60x the
                                 largest process), q4 5.82x 53 s -> 1.42x 31 s, q4f16 5.36x 46 s -> 1.45x 33 s, bnb4
                                 5.75x 48 s -> 1.39x 39 s; the fp32 session verification needs is most of each peak now
  2.50 GiB, fp16,q4,q4f16,bnb4   3.57 GiB = 1.43x the model, 400 s; output folder peaked at 2.9x on disk
  2.50 GiB, q8                   3.33 GiB = 1.33x (1.36x the largest process), 100 s; before stand-ins 7.69 GiB =
                                 3.07x, 211 s (the same day, the same load)
  calibration    minmax +51 MiB, entropy +58 MiB for 16 and for 256 one-MiB samples alike: it does not grow
  verification   +52 MiB with 16 samples, +292 MiB with 256 when each worker loaded every sample at once; read one
                 at a time (SavedFeeds), +50 MiB with 16 and with 256
  transformer    1 GiB (--hidden 2048), --dtype all: 3.26x (q8's, before its stand-ins), every variant verified
  transformer    7.24 GiB, fp16,q4,q4f16,bnb4: 9.59 GiB = 1.32x the model, 884 s, all four verified ok; output folder
                 peaked at 3.08x on disk. q8 of it, verified ok: 10.80 GiB = 1.49x, 383 s (load 2.7-4.3 from other
                 work); before its stand-ins the memory plan refused it before any work (3.3x: 23.9 GiB of 23.5 GiB)
  transformer    7.24 GiB, fp16,q8,q4,q4f16,bnb4 in one build: 10.80 GiB = 1.49x, 1268 s (fp16 245 s, q8 209 s,
                 q4 127 s, q4f16 129 s, bnb4 199 s), all five verified ok; output folder peaked at 3.33x on disk
One file without external data (--single-file; 2026-11-27, another job's tests sharing the 2 cores), 0.75 GiB MLP:
    PYTHONPATH=src python bench/memory.py build --gb 0.75 --workers 1 --dtype all --single-file
  before         6.17 GiB = 8.22x the model, 194 s: loaded whole, normalized in memory, each worker loading it whole
  normalized base streamed (its own .data file in the build's temp folder, workers read it lazily): 4.20x, 111 s
  now            2.08 GiB = 2.78x (3.06x the largest process, getrusage), 174 s (the test suite ran beside it); also
                 normalized from a streamed copy of the base, and the fp32 session that synthesizes evaluation inputs
                 made from the model's file rather than serialized from memory. The main process still holds the
                 base whole (1x), and loading it (file bytes and parsed model, ~2x) and its load check are the rest.
                 Published variants stay single files (0.50x, 0.25x, 0.16x, 0.14x, 0.14x of the model, as before)
  the same model with external data (the command without --single-file), same conditions: 1.71x before, 101 s;
                 1.72x (1.74x the largest process), 86 s now
  later that day (nothing else running, the largest process measured by a wrapper, see MEASURE_CHILD; the figure
  above came from getrusage in this process, which the single-file model's inlining had raised to 3.06x for every
  build): the same build 2.96x (2.95x the largest process), 86 s; with the main process holding only the base's
  graph once normalized (build/plan.normalize_once) 2.30x (2.28x), 84 s; with external data 1.86x (1.85x), 79 s.
  What is left above external data's figure is the main process loading the file (its bytes and the parsed model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

GB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------- measuring
def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> tuple[int, int]:
    """(sum of RSS bytes over `root` and its descendants, number of processes)."""
    tree, total, count, stack = _children_of(), 0, 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE
            count += 1
        except (OSError, ValueError):
            pass
        stack.extend(tree.get(pid, []))
    return total, count


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


# Runs the measured command as its own child and reports that child's tree's largest RSS: getrusage in this process
# would also count every earlier child, and a child forked from this process starts with this process's peak (Linux
# keeps a process's peak RSS across exec); the wrapper's children are forked from a fresh interpreter.
LARGEST_TAG = "onnxdtype-bench-largest-rss-kib"
MEASURE_CHILD = f"""
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("{LARGEST_TAG}", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_measured(args: list[str], watch: Path | None = None, env: dict | None = None) -> dict:
    """Run a child process; its peak process-tree RSS, largest single RSS, peak disk under `watch`, seconds."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", MEASURE_CHILD, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "processes": 0, "disk": 0}
    stop = threading.Event()

    def sample() -> None:
        last_disk = 0.0
        while not stop.is_set():
            rss, count = tree_rss(child.pid)
            if rss > peak["rss"]:
                peak["rss"], peak["processes"] = rss, count
            if watch is not None and time.monotonic() - last_disk > 1.0:
                peak["disk"] = max(peak["disk"], folder_bytes(watch))
                last_disk = time.monotonic()
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    stop.set()
    sampler.join()
    tagged = [line for line in err.splitlines() if line.startswith(f"{LARGEST_TAG} ")]
    err = "\n".join(line for line in err.splitlines() if not line.startswith(f"{LARGEST_TAG} "))
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({child.returncode}):\n{err[-4000:]}")
    largest = int(tagged[-1].split()[1]) * 1024 if tagged else None  # KiB on Linux
    return {"seconds": round(time.perf_counter() - start, 1), "tree_peak": peak["rss"], "processes": peak["processes"],
            "largest_single": largest, "disk_peak": peak["disk"], "stdout": out, "stderr": err}


# ---------------------------------------------------------------------------------------------- the big model
class _ExternalWeights:
    """Weights written straight to a .data file as they are made, so building a model of any size needs no more
    memory than its largest weight."""

    def __init__(self, data: Path, seed: int = 0) -> None:
        self.data, self.handle, self.rng, self.tensors = data, open(data, "wb"), np.random.default_rng(seed), []

    def add(self, name: str, *shape: int, scale: float | None = None, value: float | None = None) -> str:
        if value is not None:
            array = np.full(shape, value, np.float32)
        else:
            array = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale or 1 / np.sqrt(shape[0]))
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, entry in (("location", self.data.name), ("offset", str(self.handle.tell())),
                           ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=entry)
        self.handle.write(array.tobytes())
        self.tensors.append(tensor)
        return name


def _save(path: Path, weights: _ExternalWeights, nodes: list, inputs: list, outputs: list) -> tuple[Path, int]:
    weights.handle.close()
    graph = helper.make_graph(nodes, "big", inputs, outputs, weights.tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench-memory")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path, path.stat().st_size + weights.data.stat().st_size


def synthetic_model(folder: Path, gb: float, hidden: int = 4096) -> tuple[Path, int]:
    """An MLP of ~`gb` GiB of fp32 MatMul weights in external data; returns its path and size on disk."""
    layers = max(1, round(gb * GB / (hidden * hidden * 4)))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.onnx"
    weights = _ExternalWeights(folder / "big.onnx.data")
    nodes, x = [], "x"
    for i in range(layers):
        y = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [x, weights.add(f"w{i}", hidden, hidden)],
                                      [f"m{i}" if y != "y" else y], name=f"mm{i}"))
        if y != "y":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [y], name=f"relu{i}"))
        x = y
    return _save(path, weights, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])])


def synthetic_transformer(folder: Path, gb: float, hidden: int = 4096, vocab: int = 32000) -> tuple[Path, int]:
    """A decoder-shaped transformer of ~`gb` GiB in external data: token embedding (Gather), then per layer
    LayerNorm, a fused QKV MatMul, single-head attention, an output MatMul, LayerNorm and a 4x MLP, with residuals;
    returns its path and size on disk. The weight shapes and ops a few-billion-parameter decoder has, not its skill."""
    layer_bytes = 12 * hidden * hidden * 4
    layers = max(1, round((gb * GB - vocab * hidden * 4) / layer_bytes))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.onnx"
    w = _ExternalWeights(folder / "big.onnx.data")
    nodes = [helper.make_node("Gather", [w.add("embed", vocab, hidden, scale=0.02), "ids"], ["h0"], name="embed")]
    constants = [helper.make_tensor("split", TensorProto.INT64, [3], [hidden] * 3),
                 helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / np.sqrt(hidden)])]
    nodes += [helper.make_node("Constant", [], [c.name], name=c.name, value=c) for c in constants]

    def add(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def norm(x: str, name: str) -> str:
        return add("LayerNormalization", [x, w.add(f"{name}.g", hidden, value=1.0),
                                          w.add(f"{name}.b", hidden, value=0.0)], name, axis=-1)

    h = "h0"
    for i in range(layers):
        qkv = add("MatMul", [norm(h, f"ln{i}a"), w.add(f"wqkv{i}", hidden, 3 * hidden)], f"qkv{i}")
        nodes.append(helper.make_node("Split", [qkv, "split"], [f"q{i}", f"k{i}", f"v{i}"], name=f"split{i}", axis=-1))
        scores = add("Mul", [add("MatMul", [f"q{i}", add("Transpose", [f"k{i}"], f"kt{i}", perm=[0, 2, 1])],
                                 f"qk{i}"), "scale"], f"scores{i}")
        context = add("MatMul", [add("Softmax", [scores], f"attn{i}", axis=-1), f"v{i}"], f"ctx{i}")
        h = add("Add", [h, add("MatMul", [context, w.add(f"wo{i}", hidden, hidden)], f"o{i}")], f"h{i}a")
        up = add("Relu", [add("MatMul", [norm(h, f"ln{i}b"), w.add(f"wup{i}", hidden, 4 * hidden)], f"up{i}")],
                 f"act{i}")
        h = add("Add", [h, add("MatMul", [up, w.add(f"wdown{i}", 4 * hidden, hidden)], f"down{i}")], f"h{i + 1}")
    nodes.append(helper.make_node("LayerNormalization", [h, w.add("lnf.g", hidden, value=1.0),
                                                         w.add("lnf.b", hidden, value=0.0)], ["y"], name="lnf",
                                  axis=-1))
    return _save(path, w, nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", hidden])])


MODELS = {"mlp": synthetic_model, "transformer": synthetic_transformer}


INLINE_CHILD = """
import sys, onnx
path = sys.argv[1]
model = onnx.load(path)  # its external data read in
for tensor in model.graph.initializer:
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
open(path, "wb").write(model.SerializeToString())
"""


def inline_weights(path: Path) -> int:
    """Move a model's external data into its .onnx file (the single-file case: every model under 2 GB exported
    without external data); returns its size on disk. Done in a child process that holds the model twice for a
    moment: done here, this process's peak passed to the build's process through fork (Linux keeps a process's
    peak RSS across exec), and the build's largest process read 3.06x the model whatever it did."""
    subprocess.run([sys.executable, "-c", INLINE_CHILD, str(path)], check=True)
    path.with_name(path.name + ".data").unlink()
    return path.stat().st_size


def bench_build(gb: float, workdir: Path, workers: int | None, keep: bool, verify: bool = True,
                dtype: str = "all", kind: str = "mlp", hidden: int = 4096, single_file: bool = False) -> dict:
    print(f"building a synthetic {gb} GiB model in {workdir} ...", flush=True)
    started = time.perf_counter()
    model, size = MODELS[kind](workdir / "model", gb, hidden)
    if single_file:
        size = inline_weights(model)
    print(f"  {size / GB:.2f} GiB on disk{', one file' if single_file else ''} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    out = workdir / "variants"
    if verify:
        args = [sys.executable, "-m", "onnxdtype.cli", "quantize", str(model), "--dtype", dtype, "--out", str(out),
                "--latency-runs", "0", "--json"] + (["--workers", str(workers)] if workers is not None else [])
        print(f"  {' '.join(args[2:])}", flush=True)
    else:  # the API: the command line has no switch to skip verification
        call = f"quantize({str(model)!r}, {dtype!r}, {str(out)!r}, workers={workers}, latency_runs=0, verify=False)"
        script = ("import json, dataclasses; from onnxdtype.build import quantize; "
                  f"r = {call}; print(json.dumps({{'results': [dataclasses.asdict(x) for x in r.results]}}, default=str))")
        args = [sys.executable, "-c", script]
        print(f"  {call}", flush=True)
    figures = run_measured(args, watch=out)
    stdout, stderr = figures.pop("stdout"), figures.pop("stderr")
    if not stdout.strip():
        raise SystemExit(f"the build printed nothing (exit {figures.get('returncode')}): {stderr.strip()[-500:]}")
    results = json.loads(stdout[stdout.index("{"):])["results"]  # the CLI's --json is one indented document
    report = {"model_bytes": size, **figures,
              "variants": {r["dtype"]: {"status": r["status"], "bytes": r["bytes"], "seconds": r["seconds"],
                                        "reason": r["reason"]} for r in results}}
    print(f"  quantize --dtype {dtype}: {figures['seconds']:.0f} s")
    print(f"  peak RSS, process tree: {figures['tree_peak'] / GB:.2f} GiB = {figures['tree_peak'] / size:.2f} x model "
          f"({figures['processes']} processes at the peak)")
    if figures["largest_single"]:
        print(f"  peak RSS, largest single process: {figures['largest_single'] / GB:.2f} GiB = "
              f"{figures['largest_single'] / size:.2f} x model")
    print(f"  peak disk in the output folder: {figures['disk_peak'] / GB:.2f} GiB = {figures['disk_peak'] / size:.2f} x model")
    for name, r in report["variants"].items():
        extra = f"{r['bytes'] / size:.2f} x, {r['seconds']} s" if r["bytes"] else (r["reason"] or "")
        print(f"    {name:6} {r['status']:14} {extra}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------- samples
SAMPLES_CHILD = textwrap.dedent("""
    import sys, resource, tempfile
    from pathlib import Path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    what, count, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((2048, 512)) * 0.02).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((512, 64)) * 0.05).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # 1 MiB per sample
        np.savez(data / f"{i:05d}.npz", x=rng.standard_normal((128, 2048)).astype(np.float32))
    def rss():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    if what in ("minmax", "entropy"):
        base = rss()
        from onnxdtype.calibration import calibrate, load_samples
        result = calibrate(model, load_samples(data, model), what, folder / "cache")
        assert result.samples_used == count
    else:  # verification: quantize q8 with these samples as evaluation data (loaded by the caller, as the API takes them)
        from onnxdtype.build import quantize
        from onnxdtype.verify.evaluate import EvalData
        onnx.save(model, str(folder / "m.onnx"))
        feeds = [dict(np.load(p)) for p in sorted(data.glob("*.npz"))]
        base = rss()  # the caller's own list of samples is not counted
        quantize(folder / "m.onnx", "q8", folder / "out", workers=1, latency_runs=0,
                 eval_data=EvalData(feeds, f"{count} samples", False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(base, peak)
""")


def bench_samples(workdir: Path, counts: tuple[int, ...] = (16, 256)) -> dict:
    """Peak RSS of calibration (minmax, entropy) and verification with few vs many 1 MiB samples."""
    report: dict = {}
    print("calibration / verification memory vs number of samples (1 MiB each):", flush=True)
    for what in ("minmax", "entropy", "verification"):
        row = {}
        for count in counts:
            folder = Path(tempfile.mkdtemp(prefix=f"{what}-{count}-", dir=workdir))
            proc = subprocess.run([sys.executable, "-c", SAMPLES_CHILD, what, str(count), str(folder)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-4000:])
            base, peak = map(int, proc.stdout.split()[-2:])
            row[count] = {"before": base, "peak": peak, "growth": peak - base}
            shutil.rmtree(folder, ignore_errors=True)
        report[what] = row
        cells = ", ".join(f"{c} samples: peak {r['peak'] / 2**20:.0f} MiB (+{r['growth'] / 2**20:.0f} MiB during the "
                          f"call)" for c, r in row.items())
        print(f"  {what:12} {cells}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=("all", "build", "samples"), default="all")
    parser.add_argument("--gb", type=float, default=2.5, help="model size in GiB (default 2.5)")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp",
                        help="the synthetic model: an MLP of square MatMuls, or a decoder-shaped transformer")
    parser.add_argument("--hidden", type=int, default=4096, help="its hidden size (default 4096)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "onnxdtype-memory-bench")
    parser.add_argument("--workers", type=int, default=None, help="quantize --workers (default: onnxdtype decides)")
    parser.add_argument("--keep", action="store_true", help="keep the model and variants")
    parser.add_argument("--dtype", default="all", help="what to build (default all; e.g. q8 to see one recipe's peak)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="build without verification (through the API: the command line always verifies)")
    parser.add_argument("--single-file", action="store_true",
                        help="write the model as one .onnx file, without external data (under 2 GB: --gb 1.5 at most)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.single_file and args.gb > 1.5:
        raise SystemExit("--single-file: one protobuf holds under 2 GB; use --gb 1.5 or less")
    free = shutil.disk_usage(args.dir.parent if not args.dir.exists() else args.dir).free
    if args.part in ("all", "build") and free < 7 * args.gb * GB:
        raise SystemExit(f"need ~{7 * args.gb:.0f} GiB free under {args.dir}, have {free / GB:.0f} GiB")
    args.dir.mkdir(parents=True, exist_ok=True)
    report = {}
    try:
        if args.part in ("all", "samples"):
            report["samples"] = bench_samples(args.dir)
        if args.part in ("all", "build"):
            report["build"] = bench_build(args.gb, args.dir / "build", args.workers, args.keep, args.verify, args.dtype,
                                          args.model, args.hidden, args.single_file)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
