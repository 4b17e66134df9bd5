"""Config: which dtype, device and session settings each module of a model runs with.

Settings live in two layers: `_all` (every module) and per module. A per-module value beats the `_all` one
whatever the order of the calls, and `_all` reaches every module, including ones no call named yet (usls's
`_all` only touches modules that already exist: an easy trap). Every `with_*` call returns a new Config, so a
base config can be branched into several mixes. `commit()` resolves every module's file now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from onnxdtype.dtype import DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.naming import split_variant_name
from onnxdtype.runtime.engine import Engine
from onnxdtype.runtime.providers import parse_device, provider_list
from onnxdtype.runtime.resolve import ModuleSource, available_dtypes, discover_modules
from onnxdtype.runtime.resolve import resolve as resolve_file
from onnxdtype.runtime.settings import MERGED_SETTINGS, PARSERS, SETTING_NAMES, ResolvedModule, Settings, is_flag


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
        parsed = PARSERS[setting](setting, value)
        common, per_module = dict(self._common), {m: dict(v) for m, v in self._per_module.items()}
        layer = common if module is None else per_module.setdefault(self._known(module), {})
        layer[setting] = {**layer.get(setting, {}), **parsed} if setting in MERGED_SETTINGS else parsed
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
        for key in MERGED_SETTINGS:
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
            if not value and is_flag(setting):
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
                              provider_list(device, settings, inputs), settings, found.fixed_inputs)

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


