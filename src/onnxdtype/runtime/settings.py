"""What one module runs with: the Settings fields, how each value is parsed and checked, and the resolved module.

Config (config.py) layers these per module and for all modules; resolve.py, providers.py and engine.py read them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxdtype.dtype import DType, parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.runtime.providers import Device, ProviderList, parse_device

MISSING_POLICIES = ("error", "fallback", "build")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DimRange = tuple[int, int, int]


def default_cache_dir() -> Path:
    """$ONNXDTYPE_CACHE, else $XDG_CACHE_HOME/onnxdtype, else ~/.cache/onnxdtype."""
    if os.environ.get("ONNXDTYPE_CACHE"):
        return Path(os.environ["ONNXDTYPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxdtype"


@dataclass(frozen=True)
class Settings:
    """Everything one module runs with. Defaults follow usls where it has one (TensorRT especially)."""
    file: Path | None = None  # an explicit model file (relative to the Config's folder); per module only
    dtype: DType = DType.FP32
    device: str = "cpu"
    strict: bool = True  # a provider missing from this onnxruntime is an error, not a silent CPU run
    missing: str = "error"  # error | fallback | build
    allow_failed: bool = False  # load a variant the manifest marks failed
    cache_dir: Path = field(default_factory=default_cache_dir)
    intra_threads: int = 0  # 0: onnxruntime decides
    inter_threads: int = 0
    graph_optimization: str = "all"
    num_dry_run: int = 1
    dims: dict[str | tuple[str, int], DimRange] = field(default_factory=dict)  # dim name or (input, axis)
    tensorrt_fp16: bool = True
    tensorrt_int8: bool = False
    tensorrt_int8_calibration_table_name: str | None = None
    tensorrt_int8_use_native_calibration_table: bool = False
    tensorrt_engine_cache: bool = True
    tensorrt_engine_cache_path: Path | None = None  # default: <cache_dir>/tensorrt
    tensorrt_timing_cache: bool = False
    tensorrt_timing_cache_path: Path | None = None
    tensorrt_builder_optimization_level: int = 3
    tensorrt_max_workspace_size: int = 1 << 30
    cuda_conv_algo_search: str = "EXHAUSTIVE"
    cuda_mem_limit: int | None = None
    cuda_graph: bool = False
    coreml_compute_units: str = "ALL"
    coreml_model_format: str = "MLProgram"
    coreml_static_shapes: bool = False
    openvino_precision: str | None = None
    openvino_threads: int | None = None
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # ORT provider name -> raw options


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))
MERGED_SETTINGS = ("dims", "provider_options")  # dict settings: the layers merge key by key


@dataclass(frozen=True)
class ResolvedModule:
    """One module after commit: the file that will run, the dtype that file is, and how to run it."""
    name: str
    file: Path
    dtype: DType
    requested: DType
    how: str  # explicit | manifest | name | cache | built
    device: Device
    providers: ProviderList
    settings: Settings
    fixed_inputs: dict | None = None  # values this variant was specialized for (--fix-input); others are refused

    @property
    def bytes(self) -> int:
        """Size on disk, external data included."""
        extra = [self.file.with_name(self.file.name + suffix) for suffix in (".data", "_data")]
        return self.file.stat().st_size + sum(p.stat().st_size for p in extra if p.is_file())


# ---------------------------------------------------------------------- parsing one setting value
def is_flag(setting: str) -> bool:
    return Settings.__dataclass_fields__[setting].type == "bool"


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OnnxDtypeError(f"{name} must be True or False, not {value!r}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OnnxDtypeError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def _positive(name: str, value: Any) -> int:
    if _count(name, value) == 0:
        raise OnnxDtypeError(f"{name} must be > 0")
    return value


def _optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else parse(name, value)


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise OnnxDtypeError(f"{name} must be a path, not {value!r}")
    return Path(value).expanduser()


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise OnnxDtypeError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _choice(*choices: str) -> Callable[[str, Any], str]:
    """Case-insensitive choice, stored in the spelling onnxruntime expects."""
    def parse(name: str, value: Any) -> str:
        for choice in choices:
            if isinstance(value, str) and value.lower() == choice.lower():
                return choice
        raise OnnxDtypeError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return parse


def _builder_level(name: str, value: Any) -> int:
    if _count(name, value) > 5:
        raise OnnxDtypeError(f"{name} must be 0..5 (TensorRT builder optimization level), not {value!r}")
    return value


def parse_dims(name: str, value: Any) -> dict[str | tuple[str, int], DimRange]:
    """{"batch": (1, 4, 16), ("x", 2): 640} -> (min, opt, max) per dim name or (input, axis); an int fixes a dim."""
    if not isinstance(value, dict):
        raise OnnxDtypeError(f"{name} must be a dict of dim name or (input, axis) -> value or (min, opt, max)")
    dims: dict[str | tuple[str, int], DimRange] = {}
    for key, span in value.items():
        if not (isinstance(key, str) or (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)
                                         and isinstance(key[1], int) and not isinstance(key[1], bool))):
            raise OnnxDtypeError(f"{name}: key {key!r} must be a dim name or an (input name, axis) pair")
        values = (span, span, span) if isinstance(span, int) and not isinstance(span, bool) else span
        if not (isinstance(values, (tuple, list)) and len(values) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
                and values[0] <= values[1] <= values[2]):
            raise OnnxDtypeError(f"{name}: {key!r} must be a size >= 1 or (min, opt, max) with min <= opt <= max, "
                                 f"not {span!r}")
        dims[key] = (values[0], values[1], values[2])
    return dims


def _provider_options(name: str, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
        raise OnnxDtypeError(f"{name} must map provider names (CUDAExecutionProvider...) to option dicts")
    return value


PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "file": _path,
    "dtype": lambda name, value: parse_dtype(value),
    "device": lambda name, value: str(parse_device(value)),
    "missing": _choice(*MISSING_POLICIES),
    "cache_dir": _path,
    "intra_threads": _count,
    "inter_threads": _count,
    "graph_optimization": _choice(*GRAPH_OPTIMIZATION_LEVELS),
    "num_dry_run": _count,
    "dims": parse_dims,
    "tensorrt_int8_calibration_table_name": _optional(_text),
    "tensorrt_engine_cache_path": _optional(_path),
    "tensorrt_timing_cache_path": _optional(_path),
    "tensorrt_builder_optimization_level": _builder_level,
    "tensorrt_max_workspace_size": _positive,
    "cuda_conv_algo_search": _choice("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "cuda_mem_limit": _optional(_positive),
    "coreml_compute_units": _choice("ALL", "CPUOnly", "CPUAndGPU", "CPUAndNeuralEngine"),
    "coreml_model_format": _choice("MLProgram", "NeuralNetwork"),
    "openvino_precision": _optional(_choice("FP32", "FP16", "ACCURACY")),
    "openvino_threads": _optional(_positive),
    "provider_options": _provider_options,
    **{name: _flag for name in SETTING_NAMES if Settings.__dataclass_fields__[name].type == "bool"},
}
