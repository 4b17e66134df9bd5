"""The one calibration pass: run the fp32 model over the samples once, keep each float tensor's range, cache it.

Every static dtype (s8s8, s8u8, u8u8, and the TensorRT int8 recipe) quantizes the same tensors of the same
normalized model, so their ranges come from one pass and one file, keyed by the model's hash, the data's
fingerprint and the method. The file is onnxruntime's own calibration cache format, so `quantize_static`
takes it as is (`calibration_cache_path`) and never calibrates again.

Memory stays bounded whatever the number of samples: MinMax adds ReduceMin/ReduceMax nodes to the graph, so
a run returns two scalars per tensor and onnxruntime frees intermediates as usual; Entropy and Percentile
fetch one sample's tensors at a time and fold them into per-tensor histograms at once (onnxruntime's own
calibrators hold every intermediate of every sample, and cannot stack samples of different shapes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import temp_dir_in, write_model

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
CACHE_PREFIX = "calibration-"
CACHE_FORMAT = 1  # bump when what is stored, or how it is computed, changes
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
# onnxruntime's CalibrationMethod names, as its cache file spells them
_ORT_METHOD = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class Samples(Protocol):
    """What calibration reads: feeds, iterable more than once, with a fingerprint of their contents."""

    @property
    def fingerprint(self) -> str: ...

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...


@dataclass
class CalibrationResult:
    """The ranges file and what the manifest says about it."""
    path: Path
    ranges: dict[str, tuple[float, float]]
    method: str
    samples_used: int
    seconds: float
    cached: bool


def calibrate(model: onnx.ModelProto, samples: Samples, method: str = "minmax", cache_dir: str | Path = ".",
              *, percentile: float = DEFAULT_PERCENTILE) -> CalibrationResult:
    """Ranges of every float tensor of `model` over `samples`, from `cache_dir` when this exact pass ran before.

    `model` must be the model the static recipes receive (the normalized one): the ranges are keyed by its
    tensor names and its hash.
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
        tensors = float_tensors(model, tmp)
        if method == "minmax":
            ranges, used = _minmax(model, tensors, samples, tmp)
        else:
            ranges, used = _histogram_ranges(model, tensors, samples, tmp, method, percentile)
    seconds = round(time.perf_counter() - start, 3)
    meta.update(samples=used, seconds=seconds)
    _write_cache(path, method, ranges, meta)
    return CalibrationResult(path, ranges, method, used, seconds, cached=False)


def read_ranges(path: str | Path) -> tuple[str, dict[str, tuple[float, float]], dict]:
    """(method, ranges, meta) of a ranges file written by `calibrate`."""
    try:
        payload = json.loads(Path(path).read_text())
        meta = payload["onnxdtype"]
        ranges = {name: (float(td["lowest"]), float(td["highest"])) for name, td in payload["data"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxDtypeError(f"{path}: not a calibration ranges file written by onnxdtype ({exc})") from None
    return meta["method"], ranges, meta


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model's contents, piece by piece (a whole >2 GB model cannot be serialized at once)."""
    digest = hashlib.sha256()
    for opset in model.opset_import:
        digest.update(f"{opset.domain}:{opset.version};".encode())
    graph = model.graph
    for part in (*graph.input, *graph.output, *graph.initializer, *graph.node):
        digest.update(part.SerializeToString(deterministic=True))
    return digest.hexdigest()


def float_tensors(model: onnx.ModelProto, tmp: Path) -> list[str]:
    """Float activations of the main graph (inputs and node outputs) that onnx shape inference types,
    i.e. every tensor onnxruntime's static quantizer could ask a range for (it runs the same inference)."""
    source, inferred = tmp / "source.onnx", tmp / "inferred.onnx"
    write_model(model, source)
    try:
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        typed = onnx.load(str(inferred), load_external_data=False).graph
    except Exception as exc:  # the C++ inference raises several unrelated types with long text
        raise OnnxDtypeError(f"calibration: onnx shape inference failed ({str(exc).splitlines()[0][:200]})") from None
    finally:
        source.unlink(missing_ok=True)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in (*typed.value_info, *typed.output, *typed.input)}
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    names += [out for node in model.graph.node for out in node.output if out]
    return list(dict.fromkeys(n for n in names if elem.get(n) in _FLOAT_TYPES))


def _session(model: onnx.ModelProto, path: Path):
    import onnxruntime as ort

    write_model(model, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # exact fp32 values, as quantized
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_all(session, outputs: list[str], samples: Iterable[dict[str, np.ndarray]]
             ) -> Iterator[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
    """(feed, outputs) for every sample; an onnxruntime failure becomes one line naming the sample."""
    for index, feed in enumerate(samples):
        try:
            yield feed, session.run(outputs, feed)
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise OnnxDtypeError(f"calibration sample {index}: onnxruntime failed "
                                 f"({str(exc).strip().splitlines()[0][:200]})") from None


def _minmax(model: onnx.ModelProto, tensors: list[str], samples: Samples, tmp: Path
            ) -> tuple[dict[str, tuple[float, float]], int]:
    inputs = {i.name for i in model.graph.input}
    reduced = [t for t in tensors if t not in inputs]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.graph.output[:]
    outputs: list[str] = []
    for i, name in enumerate(reduced):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"onnxdtype_calib_{i}_{op}"
            # keepdims=1: onnxruntime refuses keepdims=0 reductions over a zero-sized axis
            augmented.graph.node.append(helper.make_node(op, [name], [out], keepdims=1))
            augmented.graph.output.append(helper.make_empty_tensor_value_info(out))
            outputs.append(out)
    session = _session(augmented, tmp / "minmax.onnx")
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    used = 0
    for feed, values in _run_all(session, outputs, samples):
        used += 1
        for name in tensors:
            if name in inputs and feed[name].size:
                low[name] = min(low[name], float(np.min(feed[name])))
                high[name] = max(high[name], float(np.max(feed[name])))
        for i, name in enumerate(reduced):
            low[name] = min(low[name], float(np.min(values[2 * i])))
            high[name] = max(high[name], float(np.max(values[2 * i + 1])))
    _require_samples(used)
    return {t: (low[t], high[t]) for t in tensors if np.isfinite(low[t]) and np.isfinite(high[t])}, used


def _histogram_ranges(model: onnx.ModelProto, tensors: list[str], samples: Samples, tmp: Path, method: str,
                      percentile: float) -> tuple[dict[str, tuple[float, float]], int]:
    """Entropy / Percentile thresholds by onnxruntime's own HistogramCollector, fed one sample at a time."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    inputs = {i.name for i in model.graph.input}
    fetched = [t for t in tensors if t not in inputs]
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.graph.output[:]
    for name in fetched:
        augmented.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = _session(augmented, tmp / "histogram.onnx")
    bins = {"entropy": 128, "percentile": 2048}[method]
    collector = HistogramCollector(method=method, symmetric=False, num_bins=bins, num_quantized_bins=128,
                                   percentile=percentile, scenario="same")
    used = 0
    with contextlib.redirect_stdout(io.StringIO()):  # the collector prints progress lines on every call
        for feed, values in _run_all(session, fetched, samples):
            used += 1
            batch = {name: feed[name] for name in tensors if name in inputs}
            batch.update(zip(fetched, values))
            collector.collect({name: array for name, array in batch.items() if array.size})
        _require_samples(used)
        thresholds = collector.compute_collection_result()
    return {name: (float(value[0]), float(value[1])) for name, value in thresholds.items()}, used


def _require_samples(used: int) -> None:
    if not used:
        raise OnnxDtypeError("calibration data has no samples")


def _write_cache(path: Path, method: str, ranges: dict[str, tuple[float, float]], meta: dict) -> None:
    """onnxruntime's TensorsData JSON (what `quantize_static(calibration_cache_path=...)` reads) plus our key."""
    payload = {
        "CLS": "TensorsData",
        "calibration_method": {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{_ORT_METHOD[method]}"},
        "data": {name: {"lowest": low, "highest": high, "CLS": "TensorData"} for name, (low, high) in ranges.items()},
        "smooth_quant": False,
        "onnxdtype": meta,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _read_cache(path: Path, meta: dict) -> CalibrationResult | None:
    """The cached result when `path` holds exactly this pass; None (recompute) when missing or not matching."""
    if not path.is_file():
        return None
    try:
        method, ranges, stored = read_ranges(path)
    except OnnxDtypeError:
        return None
    if any(stored.get(k) != v for k, v in meta.items()):
        return None
    return CalibrationResult(path, ranges, method, int(stored.get("samples", 0)), float(stored.get("seconds", 0.0)),
                             cached=True)
