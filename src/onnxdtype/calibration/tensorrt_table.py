"""The TensorRT EP's own int8 calibration table, from onnxdtype's one cached calibration.

In its implicit-quantization mode (`trt_int8_enable=True`, `trt_int8_calibration_table_name=NAME`) the TensorRT EP
reads `<trt_engine_cache_path>/NAME` (the name is joined to the engine cache path) and sets the dynamic range
[-r, r] stored there on every network input and layer output of that name; a tensor without one makes TensorRT
fall back to a non-int8 kernel around it, and a model holding Q/DQ nodes is explicitly quantized, where TensorRT
refuses dynamic ranges. The EP reads two formats (onnxruntime's tensorrt_execution_provider_utils.h, ReadDynamicRange):

* `calibration.flatbuffers`, onnxruntime's own (`trt_int8_use_native_calibration_table=False`, the default): a
  flatbuffers TrtTable of (tensor name, r as text), written here by onnxruntime's
  `quant_utils.write_calibration_table`, which also writes `calibration.json` (the same ranges as TensorData).
* `calibration.cache`, TensorRT's native calibration cache (`trt_int8_use_native_calibration_table=True`): a
  `TRT-<version>-<calibrator>` line, then `<tensor>: <scale>` lines, scale = r/127 as big-endian IEEE-754 hex.
  onnxruntime's writer fills this file with `<tensor> <r>` lines, which the EP rejects ("This is not a TensorRT
  generated calibration table") and Model-Optimizer's `calibration_cache_path` reader cannot parse; onnxdtype
  writes the native format, which both read. A tensor name holding ':' cannot be written in it (both readers split
  on ':'); such tensors are in the other two files only, and the result says so.

r = max(|lowest|, |highest|) over the calibration data (onnxruntime's writer takes max(highest, lowest), right only
for ranges it symmetrized itself, so it is handed [-r, r]). A tensor that was 0 on every sample gets r = 127 (scale
1, onnxruntime's own choice for an empty range); one whose range is not finite gets no entry. The table holds one
entry per float activation of the model given (graph inputs and node outputs; Constant outputs are weights, whose
range TensorRT computes itself), under that model's tensor names: the calibration runs on the normalized model,
whose normalization (Constant -> initializer, opset raise, node naming) keeps every activation name.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np
import onnx

from onnxdtype.calibration.data import HELD_OUT_FRACTION
from onnxdtype.calibration.ranges import CALIBRATION_PASSES, CalibrationResult, float_tensors, model_digest, read_ranges
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import atomic_write_text
from onnxdtype.model import iter_nodes, temp_dir_in
from onnxdtype.ops import QDQ_OPS

FLATBUFFERS, NATIVE_CACHE, JSON_TABLE = "calibration.flatbuffers", "calibration.cache", "calibration.json"
TABLE_FILES = (FLATBUFFERS, NATIVE_CACHE, JSON_TABLE)
EMPTY_RANGE = 127.0  # r for a tensor that was 0 on every sample: scale 1, as onnxruntime's quantizers use
# The header TensorRT writes: its version (8.6.1 -> 8601) and the calibrator. Readers (the EP, Model-Optimizer)
# check only the "TRT-" prefix; the calibrator names what computed the ranges.
NATIVE_HEADER = "TRT-8601-{calibrator}"
_CALIBRATOR = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2", "percentile": "EntropyCalibration2",
               "mse": "EntropyCalibration2"}  # TensorRT has calibrators by these names only
QDQ_REFUSED = "TensorRT refuses dynamic ranges on QDQ models (they are explicitly quantized already); give the fp32 model"


def refuse_qdq(model: onnx.ModelProto, what: str = "model") -> None:
    """A model holding QuantizeLinear/DequantizeLinear (in any graph or domain) gets no table."""
    found = sorted({n.op_type for n in iter_nodes(model)} & QDQ_OPS)
    if found:
        raise OnnxDtypeError(f"{what} has {' and '.join(found)} nodes: {QDQ_REFUSED}")


def activation_tensors(model: onnx.ModelProto, tmp: Path) -> list[str]:
    """The float tensors TensorRT may ask a range for: main-graph float inputs and node outputs, Constants aside."""
    constants = {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    names, _ = float_tensors(model, tmp)
    return [name for name in names if name not in constants]


def dynamic_ranges(model: onnx.ModelProto, calibration: CalibrationResult, tmp: Path
                   ) -> tuple[dict[str, float], list[str]]:
    """r per activation of `model` (its tensor names), and the activations left without one.

    Ranges computed for another model (by hash: `model` itself or its normalized form) are refused; so are ranges
    of unknown origin that miss activations. Activations of the right model without a finite range on the data
    (empty or ±inf everywhere) are returned as left out: TensorRT keeps the layers around them out of int8.
    """
    wanted = activation_tensors(model, tmp)
    if calibration.model_sha256 and calibration.model_sha256 not in _digests(model):
        raise OnnxDtypeError(f"{calibration.path}: calibration ranges computed for another model; recalibrate")
    amax: dict[str, float] = {}
    missing: list[str] = []
    for name in wanted:
        low, high = calibration.ranges.get(name, (np.nan, np.nan))
        r = max(abs(low), abs(high))
        if not np.isfinite(r):
            missing.append(name)
            continue
        amax[name] = float(r) if r > 0 else EMPTY_RANGE
    if missing and not calibration.model_sha256:
        raise OnnxDtypeError(f"{calibration.path}: no range for {len(missing)} activations of the model "
                             f"(e.g. {', '.join(missing[:3])}); calibrate this model")
    return amax, missing


def _digests(model: onnx.ModelProto) -> set[str]:
    """Hashes of `model` and of the normalized model the build (and calibrate_for_tensorrt) calibrates."""
    from onnxdtype.normalize import normalize
    from onnxdtype.recipes.static import PASSES

    return {model_digest(model), model_digest(normalize(model, PASSES)[0])}


def write_tensorrt_table(model: onnx.ModelProto, ranges: CalibrationResult | str | Path, out_dir: str | Path
                         ) -> list[Path]:
    """Write calibration.flatbuffers, calibration.cache and calibration.json for the fp32 `model` into `out_dir`.

    `ranges`: a CalibrationResult or a ranges file written by `calibrate` (for `model` or its normalized form).
    Each file is written in a temp folder inside `out_dir` and renamed into place. Returns the three paths.
    """
    return _write(model, ranges, Path(out_dir))[0]


def _write(model: onnx.ModelProto, ranges: CalibrationResult | str | Path, out: Path
           ) -> tuple[list[Path], dict[str, float], list[str], list[str]]:
    refuse_qdq(model)
    calibration = ranges if isinstance(ranges, CalibrationResult) else read_ranges(ranges)
    with temp_dir_in(out) as tmp:
        amax, missing = dynamic_ranges(model, calibration, tmp)
        if not amax:
            raise OnnxDtypeError("no activation of the model has a calibrated range; nothing to write")
        _write_onnxruntime_files(amax, tmp)
        not_native = write_native_cache(tmp / NATIVE_CACHE, amax, calibration.method)
        paths = []
        for name in TABLE_FILES:
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, out / name)
            paths.append(out / name)
    return paths, amax, missing, not_native


def _write_onnxruntime_files(amax: dict[str, float], folder: Path) -> None:
    """calibration.flatbuffers and calibration.json by onnxruntime's own writer (its calibration.cache is replaced)."""
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    table = {name: TensorData(lowest=np.float32(-r), highest=np.float32(r)) for name, r in amax.items()}
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the writer logs the whole table at INFO
    try:
        write_calibration_table(table, dir=str(folder))
    finally:
        root.setLevel(level)


def write_native_cache(path: Path, amax: dict[str, float], method: str = "minmax") -> list[str]:
    """TensorRT's native calibration cache (scale = r/127, big-endian float32 hex); returns the names left out
    because they hold ':' (the format's separator)."""
    lines = [NATIVE_HEADER.format(calibrator=_CALIBRATOR.get(method, "EntropyCalibration2"))]
    skipped = []
    for name in sorted(amax):
        if ":" in name or "\n" in name:
            skipped.append(name)
            continue
        lines.append(f"{name}: {struct.pack('>f', np.float32(amax[name] / 127.0)).hex()}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return skipped


def read_native_cache(path: str | Path) -> dict[str, float]:
    """r per tensor from a native cache, computed as the TensorRT EP does (scale * 127)."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise OnnxDtypeError(f"{path}: not a TensorRT calibration cache (no TRT- header)")
    table = {}
    for line in lines[1:]:
        if line.strip():
            name, _, scale = line.partition(":")
            table[name] = struct.unpack(">f", bytes.fromhex(scale.strip()))[0] * 127.0
    return table


def read_flatbuffers_table(path: str | Path) -> dict[str, float]:
    """r per tensor from calibration.flatbuffers, through onnxruntime's own generated reader."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    table = TrtTable.GetRootAsTrtTable(Path(path).read_bytes(), 0)
    entries = (table.Dict(i) for i in range(table.DictLength()))
    return {e.Key().decode(): float(e.Value().decode()) for e in entries}


def read_json_table(path: str | Path) -> dict[str, tuple[float, float]]:
    """(lowest, highest) per tensor from calibration.json."""
    return {name: (float(v["lowest"]), float(v["highest"])) for name, v in json.loads(Path(path).read_text()).items()}


def calibrate_for_tensorrt(model_path: str | Path, data: str | Path, out_dir: str | Path, *,
                           spec: str | Path | dict | None = None, method: str = "minmax",
                           held_out: float | None = None) -> dict:
    """`onnxdtype calibrate MODEL --calib DATA --out DIR`: one calibration of MODEL over DATA, cached in DIR as the
    int8/static builds cache it, then the three table files in DIR. Returns what was written.

    The model is normalized and the samples split as `quantize --calib` does (it holds out `held_out`, by default
    its own 20%, for verification and calibrates on the rest), so `onnxdtype quantize MODEL --dtype int8 --calib
    DATA --out DIR` and this share one calibration file: the QDQ model and the table get the same ranges, computed
    once. `held_out=0` calibrates on every sample.
    """
    from onnxdtype.calibration.run import calibrate_path
    from onnxdtype.manifest import folder_lock
    from onnxdtype.model import base_precision_problem, load_model
    from onnxdtype.normalize import normalize

    model_path, out = Path(model_path), Path(out_dir)
    model = load_model(model_path)
    refuse_qdq(model, str(model_path))
    problem = base_precision_problem(model)
    if problem:
        raise OnnxDtypeError(f"{model_path}: {problem}")
    if out.exists() and not out.is_dir():
        raise OnnxDtypeError(f"{out}: output exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    normalized = normalize(model, CALIBRATION_PASSES)[0]
    with folder_lock(out):
        done = calibrate_path(normalized, data, spec, method, out, HELD_OUT_FRACTION if held_out is None else held_out)
        calibration, left_out = done.result, done.held_out
        paths, amax, missing, not_native = _write(model, calibration, out)
    return {"model": str(model_path), "out_dir": str(out), "files": [str(p) for p in paths],
            "tensors": len(amax), "without_range": missing, "not_in_native_cache": not_native,
            "method": calibration.method, "samples": calibration.samples_used, "held_out": len(left_out),
            "data": str(data),
            "ranges_file": calibration.path.name, "cached": calibration.cached, "seconds": calibration.seconds,
            "config": {"tensorrt_int8": True, "tensorrt_int8_calibration_table_name": FLATBUFFERS,
                       "tensorrt_int8_use_native_calibration_table": False,
                       "tensorrt_engine_cache_path": str(out.resolve())}}
