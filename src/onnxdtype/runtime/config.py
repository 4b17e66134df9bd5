"""Config: which dtype, device and session settings each module of a model runs with.

Settings live in two layers: `_all` (every module) and per module. A per-module value beats the `_all` one
whatever the order of the calls, and `_all` reaches every module, including ones no call named yet (usls's
`_all` only touches modules that already exist: an easy trap). Every `with_*` call returns a new Config, so a
base config can be branched into several mixes. `commit()` resolves every module's file now.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxdtype.dtype import DType, parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.runtime.providers import Device, ProviderList, parse_device, provider_list
from onnxdtype.runtime.resolve import (MISSING_POLICIES, ModuleSource, available_dtypes, discover_modules,
                                       split_variant_name)
from onnxdtype.runtime.resolve import resolve as resolve_file

if TYPE_CHECKING:
    from onnxdtype.runtime.engine import Engine

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
_MERGED = ("dims", "provider_options")  # dict settings: the layers merge key by key


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

    @property
    def bytes(self) -> int:
        """Size on disk, external data included."""
        extra = [self.file.with_name(self.file.name + suffix) for suffix in (".data", "_data")]
        return self.file.stat().st_size + sum(p.stat().st_size for p in extra if p.is_file())


class Config:
    """Modules of one model and how each runs. Build with `from_dir` / `from_file`, refine with `with_*`, `commit()`.

    Setters: `with_<setting>(value, module=None)`, `with_<setting>_all(value)`, `with_module_<setting>(module, value)`
    and `with_<module>_<setting>(value)`, for every field of `Settings`; boolean ones default to True.
    """

    def __init__(self, root: Path, sources: dict[str, ModuleSource], common: dict[str, Any],
                 per_module: dict[str, dict[str, Any]], resolved: dict[str, ResolvedModule] | None = None) -> None:
        self._root = root
        self._sources = sources
        self._common = common
        self._per_module = per_module
        self._resolved = resolved

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dir(cls, folder: str | Path, *, modules: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Config:
        """Every module of a folder (its fp32 bases, its manifest's, or transformers.js's under onnx/).

        Keyword settings apply to all modules; `modules={"textual": {"dtype": "fp32"}}` sets some per module.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise OnnxDtypeError(f"{folder}: no such folder")
        config = cls(folder, discover_modules(folder), {}, {})
        return config._with_keywords(settings, modules)

    @classmethod
    def from_file(cls, path: str | Path, *, name: str = "model", modules: dict[str, dict[str, Any]] | None = None,
                  **settings: Any) -> Config:
        """A single model file as one module (named "model" unless told). A variant's name (yolo_q8.onnx) makes it
        the explicit file, with that dtype unless another is given; yolo.onnx finds yolo_q8.onnx beside it."""
        path = Path(path)
        if not path.is_file():
            raise OnnxDtypeError(f"{path}: no such file")
        tagged = split_variant_name(path.stem)
        config = cls(path.parent, {name: ModuleSource(path.parent, tagged[0] if tagged else path.stem)}, {}, {})
        if tagged:
            config = config.with_setting("file", path.resolve(), module=name)
            settings.setdefault("dtype", tagged[1])
        return config._with_keywords(settings, modules)

    def _with_keywords(self, settings: dict[str, Any], modules: dict[str, dict[str, Any]] | None) -> Config:
        config = self
        for key, value in settings.items():
            config = config.with_setting(key, value)
        for module, values in (modules or {}).items():
            for key, value in values.items():
                config = config.with_setting(key, value, module=module)
        return config

    # ------------------------------------------------------------------ settings
    @property
    def modules(self) -> list[str]:
        return list(self._sources)

    def with_setting(self, setting: str, value: Any, *, module: str | None = None) -> Config:
        """Set one setting for every module (module=None) or one module; returns a new Config."""
        if setting not in SETTING_NAMES:
            raise OnnxDtypeError(f"unknown setting {setting!r}; settings: {', '.join(SETTING_NAMES)}")
        if module is None and setting == "file":
            raise OnnxDtypeError("file is set per module: with_module_file(module, path)")
        parsed = _PARSERS[setting](setting, value)
        common, per_module = dict(self._common), {m: dict(v) for m, v in self._per_module.items()}
        layer = common if module is None else per_module.setdefault(self._known(module), {})
        layer[setting] = {**layer.get(setting, {}), **parsed} if setting in _MERGED else parsed
        return Config(self._root, self._sources, common, per_module)

    def with_dtype_all(self, dtype: str | DType) -> Config:
        return self.with_setting("dtype", dtype)

    def with_module_dtype(self, module: str, dtype: str | DType) -> Config:
        return self.with_setting("dtype", dtype, module=module)

    def with_device_all(self, device: str) -> Config:
        return self.with_setting("device", device)

    def with_module_device(self, module: str, device: str) -> Config:
        return self.with_setting("device", device, module=module)

    def settings(self, module: str) -> Settings:
        """The effective settings of one module: its own values, then `_all`'s, then the defaults."""
        own = self._per_module.get(self._known(module), {})
        merged = {**self._common, **own}
        for key in _MERGED:
            merged[key] = {**self._common.get(key, {}), **own.get(key, {})}
        return Settings(**merged)

    def __getattr__(self, attribute: str) -> Callable[..., Config]:
        """with_<setting>[_all], with_module_<setting>(module, v) and with_<module>_<setting>(v)."""
        if not attribute.startswith("with_") or attribute.startswith("with__"):
            raise AttributeError(attribute)
        rest = attribute[len("with_"):]
        if rest.endswith("_all") and rest[:-len("_all")] in SETTING_NAMES:
            return self._setter(rest[:-len("_all")], None)
        if rest.startswith("module_") and rest[len("module_"):] in SETTING_NAMES:
            setting = rest[len("module_"):]
            return lambda module, *value: self._setter(setting, module)(*value)
        if rest in SETTING_NAMES:
            return lambda *value, module=None: self._setter(rest, module)(*value)
        for module in sorted(self._sources, key=len, reverse=True):
            if rest.startswith(module + "_") and rest[len(module) + 1:] in SETTING_NAMES:
                return self._setter(rest[len(module) + 1:], module)
        setting = next((s for s in SETTING_NAMES if rest.endswith("_" + s)), None)
        if setting:
            self._known(rest[:-len(setting) - 1])  # raises: an unknown module, with the known ones listed
        raise AttributeError(f"{type(self).__name__} has no {attribute}; settings: {', '.join(SETTING_NAMES)}")

    def _setter(self, setting: str, module: str | None) -> Callable[..., Config]:
        def set_value(*value: Any) -> Config:
            if not value and _is_flag(setting):
                value = (True,)
            if len(value) != 1:
                raise OnnxDtypeError(f"with_{setting} takes one value")
            return self.with_setting(setting, value[0], module=module)
        return set_value

    def __dir__(self) -> list[str]:
        names = [f"with_{s}" for s in SETTING_NAMES] + [f"with_{s}_all" for s in SETTING_NAMES]
        names += [f"with_{m}_{s}" for m in self._sources for s in SETTING_NAMES]
        return sorted(set(super().__dir__()) | set(names))

    def _known(self, module: str) -> str:
        if module not in self._sources:
            raise OnnxDtypeError(f"unknown module {module!r}; known: {', '.join(self._sources)}")
        return module

    # ------------------------------------------------------------------ resolution
    def available_dtypes(self, module: str) -> list[DType]:
        """Dtypes of this module with a file on disk (manifest-listed or found by name), in table order."""
        return available_dtypes(self._sources[self._known(module)])

    def resolve(self, module: str) -> ResolvedModule:
        """Find (or fall back, or build) one module's file now and work out its providers."""
        settings = self.settings(module)
        found = resolve_file(module, self._sources[module], settings, self._root)
        device = parse_device(settings.device)
        inputs = graph_inputs(found.file) if device.kind == "tensorrt" and settings.dims else None
        return ResolvedModule(module, found.file, found.dtype, settings.dtype, found.how, device,
                              provider_list(device, settings, inputs), settings)

    def commit(self) -> Config:
        """Resolve every module now, so a missing variant fails here, not at the first inference."""
        resolved = {module: self.resolve(module) for module in self._sources}
        return Config(self._root, self._sources, self._common, self._per_module, resolved)

    @property
    def committed(self) -> bool:
        return self._resolved is not None

    def __getitem__(self, module: str) -> ResolvedModule:
        """A committed module; on an uncommitted Config, that one module resolved now."""
        self._known(module)
        return self._resolved[module] if self._resolved is not None else self.resolve(module)

    def __iter__(self) -> Iterator[ResolvedModule]:
        return iter((self._resolved or self.commit()._resolved).values())  # type: ignore[union-attr]

    def engine(self, module: str | None = None) -> Engine:
        """An Engine (onnxruntime session + casts + timings) for one module; the only one when there is one."""
        from onnxdtype.runtime.engine import Engine

        if module is None:
            if len(self._sources) != 1:
                raise OnnxDtypeError(f"this config has {len(self._sources)} modules; name one: {', '.join(self._sources)}")
            module = next(iter(self._sources))
        return Engine(self[module])

    def __repr__(self) -> str:
        state = "committed" if self.committed else "not committed"
        return f"Config({self._root}, modules={self.modules}, {state})"


def graph_inputs(path: Path) -> list[tuple[str, list]]:
    """(name, shape) of the graph inputs, dims as int or symbolic name (None when unnamed); weights not loaded."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return [(vi.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                       for d in vi.type.tensor_type.shape.dim])
            for vi in model.graph.input if vi.name not in initializers]


# ---------------------------------------------------------------------- parsing one setting value
def _is_flag(setting: str) -> bool:
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


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
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
