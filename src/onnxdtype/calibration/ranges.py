"""The one calibration pass: run the fp32 model over the samples once, keep each float tensor's range, cache it.

Every static dtype (s8s8, s8u8, u8u8, and the TensorRT int8 recipe) quantizes the same tensors of the same
normalized model, so their ranges come from one pass and one file, keyed by the model's hash, the data's
fingerprint and the method. The file is onnxruntime's own calibration cache format, so `quantize_static`
takes it as is (`calibration_cache_path`) and never calibrates again. It also holds per-channel min/max and mean
of the tensors entering and leaving weighted ops, which the static recipe needs to equalize channels and to
correct biases.

Memory stays bounded whatever the number of samples: MinMax adds ReduceMin/ReduceMax nodes to the graph, so
a run returns a few numbers per tensor and onnxruntime frees intermediates as usual; Entropy and Percentile
fetch one sample's tensors at a time and fold them into per-tensor histograms at once (onnxruntime's own
calibrators hold every intermediate of every sample, and cannot stack samples of different shapes).

`mse` clips each tensor where its 8-bit rounding plus clipping error is least over the samples' histogram (no
clipping is one of the points tried, so no tensor errs more than under MinMax). Less error per tensor did not buy
the task: PP-OCRv4 u8u8 on held-out data, the search's four placements, MinMax vs mse: det kept every text region
in 4 vs 3 of them, cls every label in 4 vs 2, rec read 45.5/9.1/54.5/63.6 % vs 27.3/18.2/27.3/63.6 % of lines as
fp32 does. A choice (`--calib-method mse`), not the default; the search (build.search) retries failing placements
on it, where it did buy the task for PP-OCRv4 rec's chains.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import atomic_write_text
from onnxdtype.model import opset_version, temp_dir_in, write_model
from onnxdtype.ops import KERNEL_WEIGHT_INPUT
from onnxdtype.weights import is_lazy, loaded

METHODS = ("minmax", "entropy", "percentile", "mse")
DEFAULT_PERCENTILE = 99.999
# The normalize passes a model gets before calibration: the static and TensorRT recipes start from the same model,
# so one calibration serves them all.
CALIBRATION_PASSES = ("constants", "opset13")
CACHE_PREFIX = "calibration-"
CACHE_FORMAT = 2  # bump when what is stored, or how it is computed, changes
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
# onnxruntime's CalibrationMethod names, as its cache file spells them
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "Distribution"}
MSE_GRID = 48  # clipping points tried per side, geometrically from 2 % of the observed extreme to all of it
QUANTIZED_STEPS = 255  # 8-bit activations, signed or not


class Samples(Protocol):
    """What calibration reads: feeds, iterable more than once, with a fingerprint of their contents."""

    @property
    def fingerprint(self) -> str: ...

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...


@dataclass
class ChannelRange:
    """Per-channel min/max and mean of a tensor along `axis` (the axis a weighted op mixes or produces); the mean
    is the mean over samples of each sample's channel mean."""
    axis: int
    lowest: np.ndarray
    highest: np.ndarray
    mean: np.ndarray | None = None


@dataclass
class CalibrationResult:
    """The ranges file and what the manifest says about it."""
    path: Path
    ranges: dict[str, tuple[float, float]]
    method: str
    samples_used: int
    seconds: float
    cached: bool
    channels: dict[str, ChannelRange] = field(default_factory=dict)
    model_sha256: str = ""


def calibrate(model: onnx.ModelProto, samples: Samples, method: str, cache_dir: str | Path,
              *, percentile: float = DEFAULT_PERCENTILE) -> CalibrationResult:
    """Ranges of every float tensor of `model` over `samples`, read from `cache_dir` when this exact pass ran before.

    `model` must be the model the static recipes receive (the normalized one): ranges are keyed by its
    tensor names and the cache by its hash.
    """
    if method not in METHODS:
        raise OnnxDtypeError(f"unknown calibration method {method!r}; valid: {', '.join(METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise OnnxDtypeError(f"calibration percentile must be in (50, 100], got {percentile}")
    cache_dir = Path(cache_dir)
    meta = {"format": CACHE_FORMAT, "model_sha256": model_digest(model), "data_fingerprint": samples.fingerprint,
            "method": method, **({"percentile": percentile} if method == "percentile" else {})}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir / f"{CACHE_PREFIX}{key}.json"
    cached = _read_cache(path, meta)
    if cached is not None:
        return cached
    start = time.perf_counter()
    with temp_dir_in(cache_dir) as tmp:
        tensors, ranks = float_tensors(model, tmp)
        axes = {name: axis % ranks[name] for name, axis in channel_axes(model).items()
                if ranks.get(name) and name in tensors}
        pass_ = _MinMaxPass if method == "minmax" else _HistogramPass
        ranges, channels, used = pass_(model, tensors, ranks, axes, tmp, method, percentile).run(samples)
    seconds = round(time.perf_counter() - start, 3)
    meta.update(samples=used, seconds=seconds)
    _write_cache(path, method, ranges, channels, meta)
    return CalibrationResult(path, ranges, method, used, seconds, False, channels, meta["model_sha256"])


def read_ranges(path: str | Path) -> CalibrationResult:
    """A ranges file written by `calibrate`, as the result it recorded (cached=True)."""
    try:
        payload = json.loads(Path(path).read_text())
        meta = payload["onnxdtype"]
        ranges = {name: (float(td["lowest"]), float(td["highest"])) for name, td in payload["data"].items()}
        channels = {name: ChannelRange(int(c["axis"]), np.array(c["lowest"], np.float32),
                                       np.array(c["highest"], np.float32),
                                       None if c.get("mean") is None else np.array(c["mean"], np.float32))
                    for name, c in meta["channels"].items()}
        return CalibrationResult(Path(path), ranges, meta["method"], int(meta["samples"]), float(meta["seconds"]),
                                 True, channels, meta["model_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxDtypeError(f"{path}: not a calibration ranges file written by onnxdtype ({exc})") from None


def write_ranges(path: Path, result: CalibrationResult) -> None:
    """Write `result` (e.g. with ranges added for tensors a recipe created) in the cache format."""
    meta = {"format": CACHE_FORMAT, "model_sha256": result.model_sha256, "method": result.method,
            "samples": result.samples_used, "seconds": result.seconds}
    _write_cache(path, result.method, result.ranges, result.channels, meta)


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model's contents, piece by piece (a whole >2 GB model cannot be serialized at once)."""
    digest = hashlib.sha256()
    for opset in model.opset_import:
        digest.update(f"{opset.domain}:{opset.version};".encode())
    graph = model.graph
    for part in (*graph.input, *graph.output, *graph.initializer, *graph.node):
        # a lazy weight as the static recipes hold it, read in (load_all): the main process calibrates the lazy
        # normalized model, the worker builds from it read in; hashing the reference failed every static variant
        # of a model with external data ("computed for another model")
        part = loaded(part) if isinstance(part, onnx.TensorProto) and is_lazy(part) else part
        digest.update(part.SerializeToString(deterministic=True))
    return digest.hexdigest()


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Main-graph Conv/ConvTranspose/MatMul/Gemm nodes whose weight is a constant float tensor."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        index = KERNEL_WEIGHT_INPUT.get(node.op_type)
        if index is None or node.domain not in ("", "ai.onnx") or len(node.input) <= index:
            continue
        weight = inits.get(node.input[index])
        if weight is not None and weight.data_type in FLOAT_TYPES:
            found.append(node)
    return found


def channel_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Tensors worth per-channel statistics, with their channel axis (negative: from the end).

    The activation input of each weighted op along the axis it reduces over (Conv: 1, MatMul: last),
    and each Conv's output along its output channels: exactly what the static recipe can equalize.
    """
    axes: dict[str, int] = {}
    for node in weighted_nodes(model):
        if node.op_type in ("Conv", "ConvTranspose"):
            axes[node.input[0]] = 1
            if node.op_type == "Conv":
                axes[node.output[0]] = 1
        else:
            axes[node.input[0]] = -1
    return axes


def float_tensors(model: onnx.ModelProto, tmp: Path) -> tuple[list[str], dict[str, int]]:
    """Float activations of the main graph (inputs and node outputs) typed by onnx shape inference, i.e. every
    tensor onnxruntime's static quantizer could ask a range for (it runs the same inference); with ranks."""
    source, inferred = tmp / "source.onnx", tmp / "inferred.onnx"
    write_model(model, source)
    try:
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        typed = onnx.load(str(inferred), load_external_data=False).graph
    except Exception as exc:  # the C++ inference raises several unrelated types with long text
        raise OnnxDtypeError(f"calibration: onnx shape inference failed ({str(exc).splitlines()[0][:200]})") from None
    finally:
        source.unlink(missing_ok=True)
        inferred.unlink(missing_ok=True)
    infos = {vi.name: vi.type.tensor_type for vi in (*typed.value_info, *typed.output, *typed.input)}
    ranks = {name: len(t.shape.dim) for name, t in infos.items() if t.HasField("shape")}
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    names += [out for node in model.graph.node for out in node.output if out]
    floats = [n for n in dict.fromkeys(names) if n in infos and infos[n].elem_type in FLOAT_TYPES]
    return floats, ranks


def exact_session(model: onnx.ModelProto, path: Path):
    """An onnxruntime session on `model` (written to `path`) with graph optimizations off: exact fp32 values."""
    import onnxruntime as ort

    write_model(model, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_sample(session, outputs: list[str], feed: dict[str, np.ndarray], index: int) -> list[np.ndarray]:
    """`outputs` for one calibration sample; onnxruntime's failure as one line naming the sample."""
    try:
        return session.run(outputs, feed)
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise OnnxDtypeError(f"calibration sample {index}: onnxruntime failed "
                             f"({str(exc).strip().splitlines()[0][:200]})") from None


class _Pass:
    """One run of an augmented copy of the model over the samples, folding each sample into running stats."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str], ranks: dict[str, int], axes: dict[str, int],
                 tmp: Path, method: str, percentile: float) -> None:
        self.inputs = {i.name for i in model.graph.input}
        self.tensors, self.ranks, self.axes = tensors, ranks, axes
        self.method, self.percentile = method, percentile
        self.low = dict.fromkeys(tensors, np.inf)
        self.high = dict.fromkeys(tensors, -np.inf)
        self.channel_low: dict[str, np.ndarray] = {}
        self.channel_high: dict[str, np.ndarray] = {}
        self.channel_sum: dict[str, np.ndarray] = {}  # of per-sample channel means
        self.channel_count: dict[str, int] = {}
        augmented = onnx.ModelProto()
        augmented.CopyFrom(model)
        del augmented.graph.output[:]
        self.outputs = self.augment(augmented)
        for name in self.outputs:
            augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
        self.session = exact_session(augmented, tmp / "calibration.onnx")

    def augment(self, model: onnx.ModelProto) -> list[str]:
        raise NotImplementedError

    def fold(self, feed: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, tuple[float, float]]:
        return {t: (self.low[t], self.high[t]) for t in self.tensors
                if np.isfinite(self.low[t]) and np.isfinite(self.high[t])}

    def run(self, samples: Iterable[dict[str, np.ndarray]]
            ) -> tuple[dict[str, tuple[float, float]], dict[str, ChannelRange], int]:
        used = 0
        for used, feed in enumerate(samples, start=1):
            values = run_sample(self.session, self.outputs, feed, used - 1)
            self.fold(feed, dict(zip(self.outputs, values)))
            for name in self.axes.keys() & feed.keys():  # graph inputs feeding weighted ops
                self.fold_channels(name, feed[name])
        if not used:
            raise OnnxDtypeError("calibration data has no samples")
        channels = {name: ChannelRange(self.axes[name], self.channel_low[name], self.channel_high[name],
                                       (self.channel_sum[name] / self.channel_count[name]).astype(np.float32))
                    for name in self.channel_low}
        return self.finish(), channels, used

    def fold_range(self, name: str, low: float, high: float) -> None:
        self.low[name] = min(self.low[name], low)
        self.high[name] = max(self.high[name], high)

    def fold_channels(self, name: str, array: np.ndarray | tuple[np.ndarray, ...], reduced: bool = False) -> None:
        """Merge per-channel min/max/mean (`reduced`: already reduced to those three); a tensor whose channel count
        varies between samples gets none."""
        if reduced:
            low, high, mean = array
        else:
            axes = tuple(i for i in range(array.ndim) if i != self.axes[name])
            low, high, mean = array.min(axis=axes), array.max(axis=axes), array.mean(axis=axes, dtype=np.float64)
        total, count = mean.astype(np.float64), 1
        if name in self.channel_low:
            if self.channel_low[name].shape != low.shape:
                self.axes.pop(name)
                del self.channel_low[name], self.channel_high[name], self.channel_sum[name], self.channel_count[name]
                return
            low, high = np.minimum(self.channel_low[name], low), np.maximum(self.channel_high[name], high)
            total, count = self.channel_sum[name] + total, self.channel_count[name] + 1
        if name in self.axes:
            self.channel_low[name], self.channel_high[name] = low.astype(np.float32), high.astype(np.float32)
            self.channel_sum[name], self.channel_count[name] = total, count


class _MinMaxPass(_Pass):
    """ReduceMin/ReduceMax nodes in the graph: each run returns a few numbers per tensor, never the tensors."""

    def augment(self, model: onnx.ModelProto) -> list[str]:
        axes_as_input = opset_version(model) >= 18
        self.names = [t for t in self.tensors if t not in self.inputs]  # graph inputs are read off the feeds
        outputs = []
        for i, name in enumerate(self.names):
            reductions = [("", None)]
            if name in self.axes:
                reductions.append(("c", [a for a in range(self.ranks[name]) if a != self.axes[name]]))
            for tag, axes in reductions:
                for op in ("ReduceMin", "ReduceMax") + (("ReduceMean",) if axes else ()):
                    out = f"onnxdtype_calib_{i}_{tag}{op}"
                    inputs = [name]
                    # whole-tensor reductions keep dims: onnxruntime refuses keepdims=0 over a zero-sized axis
                    attrs: dict = {"keepdims": 0 if axes else 1}
                    if axes and axes_as_input:
                        axes_name = f"{out}_axes"
                        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
                        inputs.append(axes_name)
                    elif axes:
                        attrs["axes"] = axes
                    model.graph.node.append(helper.make_node(op, inputs, [out], **attrs))
                    outputs.append(out)
        return outputs

    def fold(self, feed: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
        for name in self.tensors:
            if name in self.inputs and feed[name].size:
                self.fold_range(name, float(np.min(feed[name])), float(np.max(feed[name])))
        for i, name in enumerate(self.names):
            low, high = values[f"onnxdtype_calib_{i}_ReduceMin"], values[f"onnxdtype_calib_{i}_ReduceMax"]
            if low.size:
                self.fold_range(name, float(np.min(low)), float(np.max(high)))
            if name in self.axes and f"onnxdtype_calib_{i}_cReduceMin" in values:
                self.fold_channels(name, tuple(values[f"onnxdtype_calib_{i}_c{op}"]
                                               for op in ("ReduceMin", "ReduceMax", "ReduceMean")), reduced=True)


class _HistogramPass(_Pass):
    """Entropy / Percentile thresholds by onnxruntime's own HistogramCollector, fed one sample at a time."""

    def augment(self, model: onnx.ModelProto) -> list[str]:
        from onnxruntime.quantization.calibrate import HistogramCollector

        bins = {"entropy": 128, "percentile": 2048, "mse": 2048}[self.method]
        method = "distribution" if self.method == "mse" else self.method  # mse: the histogram of values itself
        self.collector = HistogramCollector(method=method, symmetric=False, num_bins=bins, num_quantized_bins=128,
                                            percentile=self.percentile, scenario="same")
        return [t for t in self.tensors if t not in self.inputs]

    def fold(self, feed: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
        arrays = {**{name: feed[name] for name in self.tensors if name in self.inputs}, **values}
        for name, array in values.items():
            if name in self.axes:
                self.fold_channels(name, array)
        with contextlib.redirect_stdout(io.StringIO()):  # the collector prints progress on every call
            self.collector.collect({name: array for name, array in arrays.items() if array.size})

    def finish(self) -> dict[str, tuple[float, float]]:
        if self.method == "mse":
            return {name: least_error_range(hist, edges, float(low), float(high))
                    for name, (hist, edges, low, high, *_) in self.collector.histogram_dict.items()}
        with contextlib.redirect_stdout(io.StringIO()):
            thresholds = self.collector.compute_collection_result()
        # a constant tensor can come back with its upper threshold one bin below the lower one
        return {name: (float(value[0]), max(float(value[0]), float(value[1]))) for name, value in thresholds.items()}


def least_error_range(hist: np.ndarray, edges: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The [lo, hi] whose 8-bit quantization of the histogram's values errs least: rounding error step^2/12 for
    values inside, squared distance to the bound for values clipped. Steps span zero too, as onnxruntime's do; a
    bound on the far side of zero stays the observed one (onnxruntime widens it to zero itself)."""
    centers, counts = (edges[:-1] + edges[1:]) / 2, hist.astype(np.float64)
    fractions = np.geomspace(0.02, 1.0, MSE_GRID)
    his = np.maximum(high * fractions, 0.0) if high > 0 else np.array([0.0])
    los = np.minimum(low * fractions, 0.0) if low < 0 else np.array([0.0])
    above = np.clip(centers[None, :] - his[:, None], 0, None)  # [hi candidates, bins]
    below = np.clip(los[:, None] - centers[None, :], 0, None)
    clip_high, clip_low = (counts * above ** 2).sum(1), (counts * below ** 2).sum(1)
    inside = counts.sum() - (counts * (above > 0)).sum(1)[None, :] - (counts * (below > 0)).sum(1)[:, None]
    steps = (his[None, :] - los[:, None]) / QUANTIZED_STEPS
    error = inside * steps ** 2 / 12 + clip_high[None, :] + clip_low[:, None]  # [lo, hi]
    error = np.where(steps > 0, error, np.inf)
    if not np.isfinite(error).any():
        return low, max(low, high)
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return (float(los[i]) if low < 0 else low), (float(his[j]) if high > 0 else max(low, high))


def _write_cache(path: Path, method: str, ranges: dict[str, tuple[float, float]],
                 channels: dict[str, ChannelRange], meta: dict) -> None:
    """onnxruntime's TensorsData JSON (what `quantize_static(calibration_cache_path=...)` reads) plus our part."""
    meta = {**meta, "channels": {name: {"axis": c.axis, "lowest": c.lowest.tolist(), "highest": c.highest.tolist(),
                                        "mean": None if c.mean is None else c.mean.tolist()}
                                 for name, c in channels.items()}}
    payload = {
        "CLS": "TensorsData",
        "calibration_method": {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{ORT_METHODS[method]}"},
        "data": {name: {"lowest": low, "highest": high, "CLS": "TensorData"} for name, (low, high) in ranges.items()},
        "smooth_quant": False,
        "onnxdtype": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload))


def _read_cache(path: Path, meta: dict) -> CalibrationResult | None:
    """The cached result when `path` holds exactly this pass; None (recompute) when missing or not matching."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text()).get("onnxdtype", {})
        if any(stored.get(k) != v for k, v in meta.items()):
            return None
        return read_ranges(path)
    except (OSError, ValueError, AttributeError, OnnxDtypeError):
        return None
