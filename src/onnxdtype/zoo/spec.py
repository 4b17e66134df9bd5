"""The zoo spec (zoo.toml or .json, or the same keys as a dict): models, their dtypes, data, judges, options.

Everything that can be checked from the spec is checked here, before any work starts, and a mistake is one
error naming the entry and the key. Paths are relative to the spec's folder.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxdtype.build.plan import Calibration, Module, find_modules, resolve_options
from onnxdtype.calibration.data import HELD_OUT_FRACTION
from onnxdtype.calibration.ranges import METHODS
from onnxdtype.dtype import INFO, DType, parse_dtype_list
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.verify.judges import parse_task

MODEL_KEYS = ("name", "path")
SETTING_KEYS = ("dtypes", "calib", "calib_spec", "calib_method", "eval_fraction", "eval", "tasks", "fixed_inputs",
                "options", "tolerances", "verify", "repair", "search", "latency_runs", "metric")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ZooModel:
    """One entry of the zoo: a model file or a folder of modules, and how to build and prove its variants."""
    name: str
    path: Path
    modules: list[Module]
    dtypes: list[DType]
    calib: Calibration | None = None
    eval: Path | None = None
    tasks: dict[str, str] = field(default_factory=dict)
    fixed_inputs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    verify: bool = True
    repair: bool = True
    search: bool = True
    latency_runs: int = 20
    metric: str | None = None


@dataclass
class ZooSpec:
    source: str  # the spec file, or "spec" for a dict: what errors name
    models: list[ZooModel]


def load_spec(spec: str | Path | dict, root: str | Path | None = None) -> ZooSpec:
    """Read and check a zoo spec: a zoo.toml path, or a dict of the same keys (paths relative to `root`, default
    the current folder). Raises one OnnxDtypeError naming the entry and key of the first mistake."""
    if isinstance(spec, dict):
        return parse_spec(spec, Path(root or "."), "spec")
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib  # Python >= 3.11

            data = tomllib.loads(text)
    except FileNotFoundError:
        raise OnnxDtypeError(f"{path}: no such zoo spec") from None
    except ImportError:
        raise OnnxDtypeError(f"{path}: TOML specs need Python >= 3.11; write the spec as JSON") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxDtypeError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise OnnxDtypeError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise OnnxDtypeError(f"{path}: a zoo spec is a table of [defaults] and [[models]]")
    return parse_spec(data, path.parent, str(path))


def parse_spec(data: dict, root: Path, source: str) -> ZooSpec:
    unknown = sorted(set(data) - {"defaults", "models"})
    if unknown:
        raise OnnxDtypeError(f"{source}: unknown top-level key {unknown[0]!r} (known: defaults, models)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise OnnxDtypeError(f"{source}: [defaults] must be a table")
    bad = sorted(set(defaults) - set(SETTING_KEYS))
    if bad:
        raise OnnxDtypeError(f"{source}: [defaults] has unknown key {bad[0]!r} (known: {', '.join(SETTING_KEYS)})")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise OnnxDtypeError(f"{source}: needs a non-empty list of [[models]] tables")
    models = [_model(i, entry, defaults, root, source) for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for index, model in enumerate(models):  # each model gets the folder DIR/<name>
        if model.name in seen:
            raise OnnxDtypeError(f"{source}: models[{index}] ({model.name}): key 'name': {model.name!r} is used "
                                 f"twice (name one of them)")
        seen.add(model.name)
    return ZooSpec(source, models)


def _model(index: int, entry: dict, defaults: dict, root: Path, source: str) -> ZooModel:
    where = f"{source}: models[{index}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else "")
    bad = sorted(set(entry) - set(MODEL_KEYS) - set(SETTING_KEYS))
    if bad:
        raise OnnxDtypeError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(MODEL_KEYS + SETTING_KEYS)})")
    settings = {**defaults, **entry}

    def fail(key: str, message: str) -> OnnxDtypeError:
        return OnnxDtypeError(f"{where}: key {key!r}: {message}")

    if not isinstance(settings.get("path"), str):
        raise fail("path", "needs a model file or a folder of module models (text)")
    path = (root / settings["path"]).resolve()
    try:
        modules = find_modules(path)
    except OnnxDtypeError as exc:
        raise fail("path", str(exc)) from None
    name = settings.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
        raise fail("name", f"{name!r} is not a folder name (letters, digits, _ . -)")
    model = ZooModel(name, path, modules, _dtypes(settings.get("dtypes", "all"), fail))
    model.calib = _calibration(settings, root, fail)
    if "eval" in settings:
        model.eval = _data_path(settings["eval"], root, "eval", fail)
    model.tasks = _text_table(settings, "tasks", fail)
    for key, text in model.tasks.items():
        try:
            parse_task(text)
        except OnnxDtypeError as exc:
            raise fail("tasks", f"{key} = {text!r}: {exc}") from None
    fixed = settings.get("fixed_inputs", {})
    if not isinstance(fixed, dict):
        raise fail("fixed_inputs", "must be a table of input name = value")
    model.fixed_inputs = fixed
    try:
        model.options = resolve_options(_table(settings, "options", fail))
    except OnnxDtypeError as exc:
        raise fail("options", str(exc)) from None
    model.tolerances = _tolerances(_table(settings, "tolerances", fail), fail)
    for key in ("verify", "repair", "search"):
        value = settings.get(key, True)
        if not isinstance(value, bool):
            raise fail(key, f"must be true or false, not {value!r}")
        setattr(model, key, value)
    runs = settings.get("latency_runs", 20)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 0:
        raise fail("latency_runs", f"must be a whole number >= 0, not {runs!r}")
    model.latency_runs = runs
    metric = settings.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise fail("metric", "must be module:function text")
    model.metric = metric
    uncalibrated = [d.value for d in model.dtypes if INFO[d].needs_calibration and model.calib is None]
    if uncalibrated and settings.get("dtypes", "all") != "all":
        raise fail("dtypes", f"{', '.join(uncalibrated)} need calibration data (key 'calib')")
    return model


def _dtypes(value: Any, fail) -> list[DType]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise fail("dtypes", "must be 'all' or a list of dtype names")
    try:
        return parse_dtype_list(value)
    except OnnxDtypeError as exc:
        raise fail("dtypes", str(exc)) from None


def _calibration(settings: dict, root: Path, fail) -> Calibration | None:
    if "calib" not in settings:
        for key in ("calib_spec", "calib_method", "eval_fraction"):
            if key in settings:
                raise fail(key, "is set but no calibration data is (key 'calib')")
        return None
    data = _data_path(settings["calib"], root, "calib", fail)
    spec = settings.get("calib_spec")
    if spec is not None and not isinstance(spec, (str, dict)):
        raise fail("calib_spec", "must be imagenet, unit, a .json/.toml file or a table")
    if isinstance(spec, str) and spec.endswith((".json", ".toml")):
        spec = str(_data_path(spec, root, "calib_spec", fail))
    method = settings.get("calib_method", "minmax")
    if method not in METHODS:
        raise fail("calib_method", f"{method!r} is not one of {', '.join(METHODS)}")
    fraction = settings.get("eval_fraction", HELD_OUT_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise fail("eval_fraction", f"must be a number in [0, 1), not {fraction!r}")
    return Calibration(data, spec, method, float(fraction))


def _data_path(value: Any, root: Path, key: str, fail) -> Path:
    if not isinstance(value, str):
        raise fail(key, "must be a path (text)")
    path = (root / value).resolve()
    if not path.exists():
        raise fail(key, f"{path}: no such file or folder")
    return path


def _table(settings: dict, key: str, fail) -> dict:
    value = settings.get(key, {})
    if not isinstance(value, dict):
        raise fail(key, "must be a table")
    return value


def _text_table(settings: dict, key: str, fail) -> dict[str, str]:
    value = _table(settings, key, fail)
    if not all(isinstance(v, str) for v in value.values()):
        raise fail(key, "values must be text")
    return value


def _tolerances(value: dict, fail) -> dict[str, float]:
    """Minimum cosines by dtype ('default', 'atol') and task agreements ('task', 'task.q8'), as --tolerance."""
    checked: dict[str, float] = {}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or number < 0 or (name != "atol" and number > 1):
            raise fail("tolerances", f"{name} = {number!r}: a cosine or an agreement is in [0, 1], atol >= 0")
        dtype = name.removeprefix("task.")
        if name not in ("default", "atol", "task") and dtype not in {d.value for d in DType}:
            raise fail("tolerances", f"{name!r} is not default, atol, task, a dtype or task.<dtype>")
        checked[name] = float(number)
    return checked
