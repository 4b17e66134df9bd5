"""What a build will do, decided before anything is written: the modules, the dtypes, the normalized models,
which variants are already vouched for or do not apply, and the options each recipe step gets."""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxdtype.calibration.data import HELD_OUT_FRACTION
from onnxdtype.dtype import INFO, DType, parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import TEMP_PREFIX, load_model, model_sha256, remove_model
from onnxdtype.naming import is_variant_stem, variant_filename
from onnxdtype.normalize import keep_metadata, normalize
from onnxdtype.recipes import RECIPES, blockwise
from onnxdtype.results import Status, VariantResult
from onnxdtype.specialize import parse_fixed_inputs, specialize
from onnxdtype.verify.evaluate import EvalData
from onnxdtype.verify.judges import guess_tasks, parse_task
from onnxdtype.weights import data_file, has_lazy, write_streaming

NEEDS_CALIBRATION = "needs calibration data (--calib DATA)"


@dataclass
class Calibration:
    """Calibration data for the static dtypes: a path (or one per module name), image preprocessing, method.

    A folder holding one subfolder per module name gives each module its own data. When no evaluation data
    is given, the held-out `eval_fraction` of the samples verifies the variants.
    """
    data: str | Path | dict[str, str | Path]
    image_spec: str | Path | dict | None = None
    method: str = "minmax"
    eval_fraction: float = HELD_OUT_FRACTION


@dataclass
class Module:
    """One fp32 model to build variants of; its name is the file stem (det, visual, model...)."""
    name: str
    path: Path


@dataclass
class Normalized:
    model: onnx.ModelProto
    path: Path
    done: list[str]


@dataclass
class ModulePlan:
    """One module's normalized models (one per distinct pass set) and, after calibration, the options it adds
    (recipe name -> fields: the ranges file and method)."""
    module: Module
    # the fp32 model as given; a single-file one keeps only its graph after normalize_once (weights: `normalized`)
    base: onnx.ModelProto
    single_file: bool = False  # the base came as one .onnx file (published byte for byte; so are its variants)
    normalized: dict[tuple[str, ...], Normalized] = field(default_factory=dict)
    calibrated: dict[str, dict[str, Any]] = field(default_factory=dict)
    specialized: dict[str, Any] | None = None  # what --fix-input did (specialize.Specialized, as recorded)
    tasks: dict[str, dict] = field(default_factory=dict)  # output -> the judge deciding it (TaskSpec fields)
    evaluation: dict[str, Any] | None = None  # where --eval data came from (recorded for `onnxdtype verify`)
    held_out_entry: dict[str, Any] | None = None  # the held-out calibration samples' place, when they verify
    latency_data: EvalData | None = None  # what variants are verified and timed on (after calibration)
    fixed: dict[str, np.ndarray] = field(default_factory=dict)  # the fixed input values
    search_ranges: dict[str, str] = field(default_factory=dict)  # method -> ranges file the search may retry on

    def for_dtype(self, dtype: DType) -> Normalized:
        return self.normalized[passes_for(dtype)]


def find_modules(path: Path) -> list[Module]:
    """The fp32 modules of a model file, or of a folder (variants and already-quantized files are skipped)."""
    path = Path(path)
    if not path.exists():
        raise OnnxDtypeError(f"{path}: no such file or folder")
    if path.is_file():
        return [Module(path.stem, path)]
    candidates = sorted(p for p in path.glob("*.onnx") if p.is_file() and not is_variant_stem(p.stem))
    if not candidates:
        raise OnnxDtypeError(f"{path}: no fp32 .onnx model in this folder")
    return [Module(p.stem, p) for p in candidates]


def passes_for(dtype: DType) -> tuple[str, ...]:
    passes = {p for step in INFO[dtype].steps for p in RECIPES[step].PASSES}
    return tuple(sorted(passes))


def normalize_once(m: Module, base: onnx.ModelProto, wanted: list[DType], tmp: Path,
                   fixed_inputs: dict[str, Any] | list[str] | None = None) -> ModulePlan:
    """Specialize the base for the module's fixed inputs (if any), then normalize it once per distinct pass set
    the requested recipes need, saved once per distinct result.

    Each is saved with its weights in its own .data file and kept lazily, whatever its size: the workers then
    stream a single-file model's weights as they do an external-data model's. A model held whole is normalized
    from a lazy copy its weights are moved to: normalizing it in memory copied its weights (bench/memory.py, 0.75 GiB
    single-file MLP, --dtype all: 8.22x its size). That copy's graph then stands in for the base (the build reads
    only the base's graph after this; weights come from the normalized files), so the main process no longer holds
    the weights while the workers run: 2.96x -> 2.30x. The caller must drop its own reference to `base`, whose
    weights now point at the removed copy."""
    plan = ModulePlan(m, base, single_file=not has_lazy(base))
    model = _specialized(plan, fixed_inputs) if fixed_inputs else base
    lazy_copy = None if has_lazy(model) else tmp / f"{m.name}.whole.onnx"
    if lazy_copy is not None:
        write_streaming(model, lazy_copy, restore=False)  # the model's own: a copy would hold the weights twice
        model = load_model(lazy_copy, lazy=True)
        if not plan.fixed:
            plan.base = model
    by_done: dict[tuple[str, ...], Normalized] = {}
    for dtype in wanted:
        passes = passes_for(dtype)
        if not passes or passes in plan.normalized:
            continue
        norm, done = normalize(model, passes)
        done = ([f"specialize ({_fixed_text(plan.fixed)})"] if plan.fixed else []) + done
        if tuple(done) not in by_done:  # e.g. no Gemm to rewrite: the "constants" and "constants+gemm" models are one
            keep_metadata(model, norm)
            path = tmp / f"{m.name}.normalized{len(by_done)}.onnx"
            write_streaming(norm, path)
            by_done[tuple(done)] = Normalized(load_model(path, lazy=True), path, done)
        plan.normalized[passes] = by_done[tuple(done)]
    if lazy_copy is not None:
        remove_model(lazy_copy)
    return plan


def _specialized(plan: ModulePlan, fixed_inputs: dict[str, Any] | list[str]) -> onnx.ModelProto:
    """The module's base with the fixed inputs it declares folded in (`--fix-input`); other names are ignored here
    (a folder's modules have different inputs) and checked across modules by `check_fixed_inputs`."""
    declared = {i.name for i in plan.base.graph.input}
    if isinstance(fixed_inputs, dict):
        values = {k: v for k, v in fixed_inputs.items() if k in declared}
    else:
        values = parse_fixed_inputs([i for i in fixed_inputs if i.partition("=")[0].strip() in declared], plan.base)
    if not values:
        return plan.base
    done = specialize(plan.base, values)
    plan.fixed = {name: np.asarray(value) for name, value in values.items()}
    plan.specialized = {"fixed": done.fixed, "folded_nodes": done.folded_nodes, "inlined_ifs": done.inlined_ifs,
                        "dropped_nodes": done.dropped_nodes}
    return done.model


def module_tasks(plan: ModulePlan, tasks: dict[str, str] | None) -> dict[str, dict]:
    """The judge of each output of the module: guessed (shape, producing op, metadata), then the user's `tasks`
    ({"rec": "ctc", "det/sigmoid_0.tmp_0": "dense:threshold=0.3", "*": "classify"}); recurrent states keep theirs."""
    guessed = guess_tasks(plan.base)
    for key, text in (tasks or {}).items():
        module, _, output = key.partition("/")
        if module not in ("*", plan.module.name):
            continue
        if output and output not in guessed:
            raise OnnxDtypeError(f"--task {key}: {plan.module.name} has no output {output!r} "
                                 f"(outputs: {', '.join(guessed)})")
        spec = parse_task(text)
        for name in [output] if output else [n for n, s in guessed.items() if s.task != "state"]:
            guessed[name] = spec
    return {name: dataclasses.asdict(spec) for name, spec in guessed.items()}


def check_task_keys(tasks: dict[str, str] | None, modules: list[Module]) -> None:
    """Every --task key names a module (or '*'); tasks parse."""
    names = {m.name for m in modules}
    for key, text in (tasks or {}).items():
        module = key.partition("/")[0]
        if module != "*" and module not in names:
            raise OnnxDtypeError(f"--task {key}={text}: no module {module!r} (modules: {', '.join(sorted(names))})")
        try:
            parse_task(text)
        except OnnxDtypeError as exc:
            raise OnnxDtypeError(f"--task {key}={text}: {exc}") from None


def check_fixed_inputs(fixed_inputs: dict[str, Any] | list[str] | None, bases: dict[str, onnx.ModelProto]) -> None:
    """Every fixed input names an input of at least one module."""
    names = list(fixed_inputs) if isinstance(fixed_inputs, dict) else \
        [item.partition("=")[0].strip() for item in fixed_inputs or []]
    declared = {i.name for base in bases.values() for i in base.graph.input}
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise OnnxDtypeError(f"--fix-input {', '.join(unknown)}: no module has such an input "
                             f"(inputs: {', '.join(sorted(declared))})")


def _fixed_text(fixed: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name}={value.tolist()}" for name, value in fixed.items())


# ---------------------------------------------------------------- options: recipe defaults <- by recipe <- by dtype
def resolve_options(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Check user option overrides, keyed by recipe name ("blockwise4") or dtype name ("q4"); values are an Options
    instance (recipe keys) or a dict of fields. Returns {key: {field: value}} with keys as given, every field known.
    Bad keys, fields and values are one error, raised before anything is built."""
    checked: dict[str, dict[str, Any]] = {}
    for key, value in (overrides or {}).items():
        steps = [key] if key in RECIPES else list(INFO[parse_dtype(key)].steps) if _is_dtype(key) else None
        if not steps:
            raise OnnxDtypeError(f"options: {key!r} is neither a dtype nor a recipe "
                                 f"(recipes: {', '.join(RECIPES)}; dtypes: {', '.join(d.value for d in DType)})")
        fields = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _listed(dict(value), steps)
        known = {f.name for step in steps for f in dataclasses.fields(RECIPES[step].Options)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise OnnxDtypeError(f"options for {key}: no option {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))})")
        for step in steps:  # each step's Options validates its own fields
            RECIPES[step].Options(**{k: v for k, v in fields.items() if k in _field_names(step)})
        checked[parse_dtype(key).value if _is_dtype(key) else key] = fields
    return checked


def options_for(dtype: DType, overrides: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Each recipe step's Options for one dtype: SPEC defaults, then recipe-keyed, then dtype-keyed overrides, then
    `extra` (what the build adds, such as the calibration's ranges file), then the recipe's own per-dtype settings."""
    resolved = {}
    for step in INFO[dtype].steps:
        recipe = RECIPES[step]
        fields: dict[str, Any] = {}
        for layer in (overrides.get(step), overrides.get(dtype.value), (extra or {}).get(step)):
            fields.update({k: v for k, v in (layer or {}).items() if k in _field_names(step)})
        resolved[step] = recipe.options_for(dtype.value, recipe.Options(**fields))
    return resolved


def wants_grams(dtype: DType, overrides: dict[str, dict[str, Any]]) -> bool:
    """The dtype's 4-bit step rounds by GPTQ (`--set q4.rounding=gptq`): it needs the calibration's Gram matrices."""
    return blockwise.NAME in INFO[dtype].steps and options_for(dtype, overrides)[blockwise.NAME].rounding == "gptq"


def needs_calibration(dtype: DType, overrides: dict[str, dict[str, Any]]) -> bool:
    """A static dtype, or one whose options ask for calibration data."""
    return INFO[dtype].needs_calibration or wants_grams(dtype, overrides)


def _listed(fields: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """A single name given for a list option (`--set q8.nodes_to_exclude=conv1`) is a list of one."""
    lists = {f.name for step in steps for f in dataclasses.fields(RECIPES[step].Options) if f.default_factory is list}
    return {k: [v] if k in lists and isinstance(v, str) else v for k, v in fields.items()}


def _field_names(step: str) -> set[str]:
    return {f.name for f in dataclasses.fields(RECIPES[step].Options)}


def _is_dtype(key: str) -> bool:
    try:
        parse_dtype(key)
    except OnnxDtypeError:
        return False
    return True


# ---------------------------------------------------------------- what needs no build
def not_applicable(dtype: DType, plan: ModulePlan, overrides: dict) -> str | None:
    first = INFO[dtype].steps[0]
    return RECIPES[first].check(plan.for_dtype(dtype).model, options_for(dtype, overrides, plan.calibrated)[first])


def applies_once_calibrated(dtype: DType, plan: ModulePlan, overrides: dict) -> str | None:
    """Why the dtype would change nothing even with calibration data, or None (it applies)."""
    reason = not_applicable(dtype, plan, overrides)
    return None if reason == RECIPES[INFO[dtype].steps[0]].NEEDS_CALIBRATION else reason


def refuse_not_applicable(plan: ModulePlan, wanted: list[DType], overrides: dict, explicit: bool) -> None:
    """A dtype asked for by name that would change nothing is an error, raised before anything is written."""
    for dtype in wanted if explicit else []:
        reason = applies_once_calibrated(dtype, plan, overrides)
        if reason:
            raise OnnxDtypeError(f"{plan.module.name}: {dtype} is not applicable: {reason}")


def known_outcome(plan: ModulePlan, dtype: DType, out: Path, manifest: dict, force: bool, overrides: dict,
                  calibrated: bool) -> VariantResult | None:
    """Results decided without building: needs calibration, vouched existing file, does not apply."""
    name, info = plan.module.name, INFO[dtype]
    if needs_calibration(dtype, overrides) and not calibrated:
        return VariantResult(name, dtype.value, Status.SKIPPED, NEEDS_CALIBRATION)
    target = out / variant_filename(name, dtype)
    if not force and target.exists() and vouched(out, manifest, name, dtype):
        entry = dict(manifest["modules"][name]["variants"][dtype.value])
        return VariantResult(name, dtype.value, Status.KEPT, "up to date (use --force to rebuild)",
                             file=entry.get("file"), bytes=entry.get("bytes"), sha256=entry.get("sha256"),
                             recipe=list(info.steps), params=entry.get("params", {}))
    reason = not_applicable(dtype, plan, overrides)
    if reason:
        return VariantResult(name, dtype.value, Status.NOT_APPLICABLE, reason, recipe=list(info.steps))
    return None


def applicability(model: onnx.ModelProto) -> dict[str, str | None]:
    """For `inspect`: each buildable dtype -> None when its recipe applies, else the reason it does not."""
    plan = ModulePlan(Module("model", Path("model.onnx")), model)
    verdicts: dict[str, str | None] = {}
    for dtype in DType:
        info = INFO[dtype]
        if not info.steps:
            continue
        passes = passes_for(dtype)
        if passes not in plan.normalized:
            plan.normalized[passes] = Normalized(normalize(model, passes)[0], Path(), [])
        verdicts[dtype.value] = applies_once_calibrated(dtype, plan, {})  # building it may take --calib DATA
    return verdicts


# ---------------------------------------------------------------- the output folder
def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OnnxDtypeError(f"{out}: output exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxDtypeError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OnnxDtypeError(f"{out}: output folder is not writable")


def refuse_clobber(out: Path, modules: list[Module], wanted: list[DType], manifest: dict, force: bool) -> None:
    """Existing files the manifest does not vouch for are never overwritten without --force."""
    if force:
        return
    for m in modules:
        for dtype in wanted:
            target = out / variant_filename(m.name, dtype)
            if target.exists() and not vouched(out, manifest, m.name, dtype):
                raise OnnxDtypeError(f"{target}: exists and is not a verified onnxdtype output; "
                                     f"use --force to overwrite")
        base_target = out / f"{m.name}.onnx"
        if base_target.exists() and base_target.resolve() != m.path.resolve() \
                and model_sha256(base_target) != model_sha256(m.path):
            raise OnnxDtypeError(f"{base_target}: exists with other contents than {m.path}; use --force to overwrite")


def vouched(out: Path, manifest: dict, module: str, dtype: DType) -> bool:
    entry = manifest["modules"].get(module, {}).get("variants", {}).get(dtype.value)
    target = out / variant_filename(module, dtype)
    return bool(entry and entry.get("status") == "ok" and entry.get("sha256") == model_sha256(target))


def remove_stale_temp(out: Path) -> None:
    """Temp entries a killed build left: no one else can be using them while this process holds the folder lock."""
    for entry in out.glob(TEMP_PREFIX + "*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def size_with_data(path: Path) -> int:
    data = data_file(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def streams_weights(path: Path) -> bool:
    """Whether the model's weights are in its own .data file (weights.py streams them from it): then its published
    base is written from the model, not copied byte for byte."""
    return data_file(path).exists()
