"""Device strings -> onnxruntime execution providers, their options and the fallbacks behind them.

Pure functions of the settings (no onnxruntime import), so the exact provider list for a GPU, NPU or
Apple device can be built and checked on a CPU-only machine; only `usable_providers` looks at what
the installed onnxruntime offers.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxdtype.errors import OnnxDtypeError

if TYPE_CHECKING:
    from onnxdtype.runtime.settings import Settings

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
COREML = "CoreMLExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
DIRECTML = "DmlExecutionProvider"
MIGRAPHX = "MIGraphXExecutionProvider"  # AMD's provider; onnxruntime 1.23 removed the older ROCm one
XNNPACK = "XnnpackExecutionProvider"
QNN = "QNNExecutionProvider"

# kind -> (primary provider, takes ":N" device index, valid ":TARGET" names)
DEVICES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "cpu": (CPU, False, ()),
    "cuda": (CUDA, True, ()),
    "tensorrt": (TENSORRT, True, ()),
    "coreml": (COREML, False, ()),
    "openvino": (OPENVINO, False, ("CPU", "GPU", "NPU")),
    "directml": (DIRECTML, True, ()),
    "rocm": (MIGRAPHX, True, ()),
    "xnnpack": (XNNPACK, False, ()),
    "qnn": (QNN, False, ()),
}
DEVICE_ALIASES = {"trt": "tensorrt"}

# Where a provider comes from, for the error when the installed onnxruntime lacks it.
PACKAGES = {
    CUDA: "onnxruntime-gpu",
    TENSORRT: "onnxruntime-gpu (with TensorRT installed)",
    COREML: "onnxruntime (the macOS wheel)",
    OPENVINO: "onnxruntime-openvino",
    DIRECTML: "onnxruntime-directml",
    MIGRAPHX: "onnxruntime-migraphx",
    XNNPACK: "an onnxruntime built with --use_xnnpack (no PyPI wheel has it)",
    QNN: "onnxruntime-qnn",
}

ProviderList = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class Device:
    """A parsed device string: kind, optional index (cuda:1) or target (openvino:NPU)."""
    kind: str
    index: int = 0
    target: str | None = None

    def __str__(self) -> str:
        if self.target:
            return f"{self.kind}:{self.target}"
        return f"{self.kind}:{self.index}" if DEVICES[self.kind][1] else self.kind


def parse_device(text: str | Device) -> Device:
    """'cuda:1', 'trt', 'openvino:NPU' -> Device; anything else is an error listing the valid forms."""
    if isinstance(text, Device):
        return text
    match = re.fullmatch(r"\s*([A-Za-z]+)\s*(?::\s*([A-Za-z0-9]+)\s*)?", str(text))
    valid = "cpu, cuda[:N], tensorrt[:N] (trt), coreml, openvino[:CPU|GPU|NPU], directml[:N], rocm[:N], xnnpack, qnn"
    if not match:
        raise OnnxDtypeError(f"unknown device {text!r}; valid: {valid}")
    kind = DEVICE_ALIASES.get(match.group(1).lower(), match.group(1).lower())
    suffix = match.group(2)
    if kind not in DEVICES:
        raise OnnxDtypeError(f"unknown device {text!r}; valid: {valid}")
    _, indexed, targets = DEVICES[kind]
    if suffix is None:
        return Device(kind, 0, targets[0] if targets else None)
    if indexed and suffix.isdigit():
        return Device(kind, int(suffix))
    if suffix.upper() in targets:
        return Device(kind, 0, suffix.upper())
    raise OnnxDtypeError(f"device {text!r}: {kind} takes no {suffix!r}; valid: {valid}")


def provider_list(device: Device, settings: Settings, inputs: list[tuple[str, list]] | None = None) -> ProviderList:
    """The providers to pass to onnxruntime, most preferred first, each with its options (strings, as ORT wants).

    `inputs` (name, shape) are needed only for TensorRT profile shapes, built from the dims settings.
    """
    cache = Path(settings.cache_dir)
    cuda = (CUDA, _cuda_options(device, settings))
    if device.kind == "cpu":
        chain: ProviderList = []
    elif device.kind == "cuda":
        chain = [cuda]
    elif device.kind == "tensorrt":
        chain = [(TENSORRT, _tensorrt_options(device, settings, inputs or [])), cuda]
    elif device.kind == "coreml":
        chain = [(COREML, {"ModelFormat": settings.coreml_model_format,
                           "MLComputeUnits": settings.coreml_compute_units,
                           "RequireStaticInputShapes": _flag(settings.coreml_static_shapes),
                           "ModelCacheDirectory": str(cache / "coreml")})]
    elif device.kind == "openvino":
        options = {"device_type": device.target or "CPU", "cache_dir": str(cache / "openvino")}
        if settings.openvino_precision:
            options["precision"] = settings.openvino_precision
        if settings.openvino_threads:
            options["num_of_threads"] = str(settings.openvino_threads)
        chain = [(OPENVINO, options)]
    elif device.kind == "xnnpack":
        chain = [(XNNPACK, {"intra_op_num_threads": str(settings.intra_threads or 1)})]
    elif device.kind == "qnn":
        chain = [(QNN, {"backend_type": "htp"})]
    else:  # directml, rocm: a device index and nothing else
        chain = [(DEVICES[device.kind][0], {"device_id": str(device.index)})]
    chain.append((CPU, {}))
    for name, extra in settings.provider_options.items():  # the escape hatch wins over everything above
        for provider, options in chain:
            if provider == name:
                options.update({key: str(value) for key, value in extra.items()})
    return chain


def session_tweaks(device: Device) -> dict[str, object]:
    """SessionOptions some providers require: DirectML runs without memory patterns, sequentially;
    XNNPACK brings its own thread pool, so onnxruntime's spins down (their docs' advice)."""
    if device.kind == "directml":
        return {"enable_mem_pattern": False, "execution_mode": "ORT_SEQUENTIAL"}
    if device.kind == "xnnpack":
        return {"intra_op_num_threads": 1, "session.intra_op.allow_spinning": "0"}
    return {}


def usable_providers(requested: ProviderList, available: list[str], strict: bool, what: str) -> ProviderList:
    """Drop providers the installed onnxruntime lacks. The first one missing is an error naming the package
    that brings it, or with strict=False a warning and whatever is left (ending on CPU)."""
    primary = requested[0][0]
    if primary not in available:
        message = f"{what}: {primary} is not in this onnxruntime (available: {', '.join(available)}); install {PACKAGES[primary]}"
        if strict:
            raise OnnxDtypeError(message + ", or pass strict=False to run on what is available")
        usable = [(name, options) for name, options in requested if name in available]
        warnings.warn(f"{message}; running on {usable[0][0]} instead", stacklevel=3)
        return usable
    return [(name, options) for name, options in requested if name in available]


def _cuda_options(device: Device, settings: Settings) -> dict[str, str]:
    options = {"device_id": str(device.index), "cudnn_conv_algo_search": settings.cuda_conv_algo_search}
    if settings.cuda_mem_limit:
        options["gpu_mem_limit"] = str(settings.cuda_mem_limit)
    if settings.cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def _tensorrt_options(device: Device, settings: Settings, inputs: list[tuple[str, list]]) -> dict[str, str]:
    """usls's defaults: fp16 on, int8 off, engine cache on under the cache dir, timing cache off, level 3, 1 GiB."""
    cache = Path(settings.cache_dir) / "tensorrt"
    options = {
        "device_id": str(device.index),
        "trt_fp16_enable": _bool(settings.tensorrt_fp16),
        "trt_int8_enable": _bool(settings.tensorrt_int8),
        "trt_engine_cache_enable": _bool(settings.tensorrt_engine_cache),
        "trt_timing_cache_enable": _bool(settings.tensorrt_timing_cache),
        "trt_builder_optimization_level": str(settings.tensorrt_builder_optimization_level),
        "trt_max_workspace_size": str(settings.tensorrt_max_workspace_size),
    }
    if settings.tensorrt_engine_cache:
        options["trt_engine_cache_path"] = str(settings.tensorrt_engine_cache_path or cache)
    if settings.tensorrt_timing_cache:
        options["trt_timing_cache_path"] = str(settings.tensorrt_timing_cache_path or cache)
    if settings.tensorrt_int8 and settings.tensorrt_int8_calibration_table_name:
        options["trt_int8_calibration_table_name"] = settings.tensorrt_int8_calibration_table_name
        options["trt_int8_use_native_calibration_table"] = _bool(settings.tensorrt_int8_use_native_calibration_table)
    options.update(profile_shapes(inputs, settings.dims))
    return options


def profile_shapes(inputs: list[tuple[str, list]], dims: dict) -> dict[str, str]:
    """TensorRT min/opt/max profile strings ('x:1x3x32x32,...') from the dims settings.

    No dims set: no profile (TensorRT then builds for the shapes it sees). Once any is set, every dynamic
    axis of every input needs a range, because TensorRT rejects a profile that leaves one out.
    """
    if not dims:
        return {}
    shapes: dict[str, list[str]] = {"min": [], "opt": [], "max": []}
    for name, shape in inputs:
        if all(isinstance(d, int) for d in shape):
            continue
        per_axis = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int):
                per_axis.append((dim, dim, dim))
                continue
            span = dim_range(dims, name, axis, dim)
            if span is None:
                raise OnnxDtypeError(f"tensorrt profile: input {name!r} axis {axis} ({dim or 'unnamed'}) is dynamic "
                                     f"and has no range; add it to dims, e.g. {{({name!r}, {axis}): (1, 8, 32)}}")
            per_axis.append(span)
        for i, key in enumerate(("min", "opt", "max")):
            shapes[key].append(f"{name}:" + "x".join(str(span[i]) for span in per_axis))
    return {f"trt_profile_{key}_shapes": ",".join(values) for key, values in shapes.items() if values}


def dim_range(dims: dict, input_name: str, axis: int, dim_name: str | None) -> tuple[int, int, int] | None:
    """The (min, opt, max) set for one axis: by (input, axis) first, then by the axis' symbolic name."""
    if (input_name, axis) in dims:
        return dims[(input_name, axis)]
    if dim_name and dim_name in dims:
        return dims[dim_name]
    return None


def _bool(value: bool) -> str:
    return "True" if value else "False"  # onnxruntime's Python binding refuses "1"/"0" for TensorRT flags


def _flag(value: bool) -> str:
    return "1" if value else "0"
