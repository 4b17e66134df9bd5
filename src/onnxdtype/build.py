"""The build pipe: find modules -> load and normalize once -> recipes in parallel -> load check -> manifest.

Every variant is written into a temp folder inside the output folder and renamed into place only when
complete and loadable, and the manifest is updated after each one, so a build killed at any point
leaves the folder as before or with complete variants that the manifest lists.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx

from onnxdtype import __version__
from onnxdtype.dtype import INFO, DType, parse_dtype_list, variant_filename
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import folder_lock, read_manifest, update_manifest
from onnxdtype.model import (TEMP_PREFIX, base_precision_problem, iter_graphs, load_model, op_counts, publish, save_model,
                             model_sha256, temp_dir_in, write_model)
from onnxdtype.normalize import keep_metadata, normalize
from onnxdtype.recipes import RECIPES, NotApplicable, default_options
from onnxdtype.verify.accuracy import (DEFAULT_ATOL, SYNTHESIZED_NOTE, Criteria, EvalData, evaluate,
                                       load_metric, min_cosine_for, synthesize)
from onnxdtype.verify.accuracy import session as accuracy_session
from onnxdtype.verify.latency import measure
from onnxdtype.verify.repair import RepairBudget, repair

VARIANT_NAME = re.compile(r"^(?P<stem>.+?)[_.-](?P<tag>[A-Za-z0-9]+)$")
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
    eval_fraction: float = 0.2


@dataclass
class Module:
    """One fp32 model to build variants of; its name is the file stem (det, visual, model...)."""
    name: str
    path: Path


@dataclass
class VariantResult:
    module: str
    dtype: str
    status: str  # ok | failed | not_applicable | skipped | kept
    reason: str | None = None
    file: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    seconds: float | None = None
    recipe: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    normalized: list[str] = field(default_factory=list)
    kept_in_float: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    op_changes: dict = field(default_factory=dict)
    verification: dict | None = None
    latency: dict | None = None
    base_bytes: int | None = None

    @property
    def size_ratio(self) -> float | None:
        return self.bytes / self.base_bytes if self.bytes and self.base_bytes else None

    @property
    def worst_cosine(self) -> float | None:
        """The lowest cosine to fp32 over outputs and their channels, when verified."""
        outputs = (self.verification or {}).get("outputs") or {}
        values = [f["cosine"] for f in outputs.values()]
        values += [f["worst_channel"]["cosine"] for f in outputs.values() if f.get("worst_channel")]
        return min(values) if values else None

    @property
    def speedup(self) -> float | None:
        return (self.latency or {}).get("threads_all", {}).get("speedup")

    @property
    def repaired(self) -> bool:
        return bool((self.verification or {}).get("repair")) and self.status == "ok"


@dataclass
class BuildResult:
    out_dir: Path
    results: list[VariantResult]
    requested_explicitly: bool

    def by(self, module: str, dtype: str | DType) -> VariantResult:
        return next(r for r in self.results if r.module == module and r.dtype == str(dtype))

    @property
    def problems(self) -> list[VariantResult]:
        """Results that make the command fail: failures, and non-applicable dtypes that were asked for by name."""
        bad = [r for r in self.results if r.status == "failed"]
        if self.requested_explicitly:
            bad += [r for r in self.results if r.status == "not_applicable"]
        return bad


def is_variant_stem(stem: str) -> bool:
    """True for names like model_fp16, det-q8, visual.q4f16, model_quantized: files a base is not."""
    match = VARIANT_NAME.match(stem)
    if not match:
        return False
    tag = match.group("tag").lower()
    return tag == "quantized" or any(tag == info.suffix for info in INFO.values() if info.suffix)


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


def quantize(
    model: str | Path,
    dtypes: str | list[str] | list[DType] = "all",
    out_dir: str | Path | None = None,
    *,
    force: bool = False,
    options: dict | None = None,
    workers: int | None = None,
    progress: Callable[[VariantResult], None] | None = None,
    eval_data: EvalData | dict[str, EvalData] | None = None,
    verify: bool = True,
    repair: bool = True,
    tolerances: dict[str, float] | None = None,
    keep_failed: bool = False,
    latency_runs: int = 20,
    repair_budget: RepairBudget | None = None,
    metric: str | None = None,
    calib: Calibration | None = None,
) -> BuildResult:
    """Build the requested dtype variants of a model (or of every module in a folder) into `out_dir`,
    verify each against fp32, repair those that miss their tolerance, and time them.

    `options` maps recipe names ("float16", "dynamic", "blockwise4", "bnb4") to their Options dataclass.
    `eval_data` is one EvalData or a data path (see Calibration), or one per module name; without it the
    held-out part of `calib` is used, else inputs are synthesized (which proves loading only).
    `tolerances` overrides minimum cosines by dtype name or "default" (and "atol"). `latency_runs=0` skips
    timing. `metric` is a user task metric "module:function" (see verify.accuracy.evaluate).
    """
    source = Path(model)
    modules = find_modules(source)
    explicit = not (isinstance(dtypes, str) and dtypes.strip().lower() == "all")
    wanted = parse_dtype_list(dtypes)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    _check_out_dir(out)
    recipe_options = {**default_options(), **(options or {})}
    if metric:
        load_metric(metric)  # a wrong --metric is a user error now, not a failure in every worker later
    uncalibrated = [d for d in wanted if INFO[d].needs_calibration and calib is None]
    if explicit and uncalibrated:
        raise OnnxDtypeError(f"{', '.join(map(str, uncalibrated))}: {NEEDS_CALIBRATION}")

    buildable = len(modules) * sum(d not in uncalibrated for d in wanted)
    largest_file = max(_size_with_data(m.path) for m in modules)
    try:
        with folder_lock(out), WorkerPool(_worker_count(workers, buildable, largest_file)) as pool:
            bases = {m.name: load_model(m.path) for m in modules}
            for m in modules:
                problem = base_precision_problem(bases[m.name]) or _load_error(m.path)
                if problem:
                    raise OnnxDtypeError(f"{m.path}: {problem}")
            _check_eval_data(modules, bases, eval_data)
            _remove_stale_temp(out)
            manifest = read_manifest(out)
            _refuse_clobber(out, modules, wanted, manifest, force)
            results: list[VariantResult] = []
            with temp_dir_in(out) as tmp:
                tasks: list[dict] = []
                checks: dict[str, EvalData | None] = {}
                all_normalized: dict[str, dict] = {}
                given_data: dict[str, EvalData | None] = {}
                for m in modules:  # every user error is found before the first write into the folder
                    all_normalized[m.name] = _normalize_once(m, bases[m.name], wanted, tmp)
                    _refuse_not_applicable(m, wanted, all_normalized[m.name], recipe_options, explicit)
                    given_data[m.name] = _module_eval_data(m, len(modules), eval_data, all_normalized[m.name], calib)
                    _check_calibration_data(m, len(modules), calib, wanted, all_normalized[m.name])
                for m in modules:
                    base_entry = _place_base(m, bases[m.name], out, force)
                    update_manifest(out, lambda data, m=m, e=base_entry: _set_base(data, m.name, e))
                    normalized = all_normalized[m.name]
                    module_options, held_out = _calibrate(m, len(modules), calib, wanted, normalized,
                                                          recipe_options, out)
                    data = given_data[m.name] or held_out
                    check = _check_spec(m, bases[m.name], data, tmp, wanted, tolerances, repair,
                                        repair_budget, metric) if verify else None
                    checks[m.name] = data
                    for dtype in wanted:
                        known = _known_outcome(m, dtype, out, manifest, force, normalized, module_options,
                                               calib is not None)
                        if known is not None:
                            known.base_bytes = base_entry["bytes"]
                            results.append(_record(out, known, progress))
                            continue
                        norm = normalized[_passes_for(dtype)]
                        tasks.append({"module": m.name, "dtype_name": dtype.value, "norm_path": str(norm.path),
                                      "normalized": norm.done, "recipe_options": _options_as_dicts(module_options),
                                      "tmp": str(tmp), "base_bytes": base_entry["bytes"], "check": check})
                finished = []
                for result in pool.run(tasks):
                    if result.file and (result.status == "ok" or keep_failed):
                        built, target = Path(result.file), out / variant_filename(result.module, DType(result.dtype))
                        data_file = built.with_name(built.name + ".data")
                        result.file, result.sha256 = target.name, model_sha256(built)
                        result.bytes = built.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0)
                        _record(out, result, None)  # the manifest vouches for these bytes before they take the name
                        publish(built, target)
                    else:
                        result.file = None
                    finished.append(result)
                for result in finished:  # timed one at a time, after the parallel builds, so they do not compete
                    feed = _latency_feed(result.module, checks.get(result.module), bases) \
                        if result.file and latency_runs > 0 else None
                    if feed is not None:
                        result.latency = measure(out / f"{result.module}.onnx", out / result.file, feed, latency_runs)
                    results.append(_record(out, result, progress))
    except OSError as exc:  # a full disk, a folder turned read-only, a file size limit: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        raise OnnxDtypeError(f"{out}: {exc.strerror or exc}{where}") from None
    order = {(m.name, d.value): i for i, (m, d) in enumerate((m, d) for m in modules for d in wanted)}
    results.sort(key=lambda r: order[(r.module, r.dtype)])
    return BuildResult(out, results, explicit)


def _module_path(path: str | Path | dict, module: Module, modules: int, what: str) -> Path:
    """The data path for one module: its entry in a dict, DATA/<module>/ when that folder exists, else DATA."""
    if isinstance(path, dict):
        if module.name not in path:
            raise OnnxDtypeError(f"{what}: no data given for module {module.name} (given: {', '.join(path)})")
        return Path(path[module.name])
    own = Path(path) / module.name
    if own.is_dir():
        return own
    if modules > 1:
        raise OnnxDtypeError(f"{what} {path}: with several modules it needs one subfolder per module ({module.name}/ missing)")
    return Path(path)


def _calibrate(m: Module, modules: int, calib: Calibration | None, wanted: list[DType], normalized: dict,
               recipe_options: dict, out: Path) -> tuple[dict, EvalData | None]:
    """One calibration pass per module serves every static dtype and int8; returns the module's recipe options
    (with the ranges file) and the held-out samples for verification."""
    static_dtypes = [d for d in wanted if {"static", "tensorrt"} & set(INFO[d].steps)]
    if calib is None or not static_dtypes:
        return recipe_options, None
    from onnxdtype.calibration import calibrate, load_samples

    norm = normalized[_passes_for(static_dtypes[0])]
    samples = load_samples(_module_path(calib.data, m, modules, "--calib"), norm.model, calib.image_spec)
    calib_part, held_out = samples.split(calib.eval_fraction)
    done = calibrate(norm.model, calib_part, calib.method, out)
    entry = {**samples.describe(), "method": done.method, "ranges_file": done.path.name,
             "samples_used": done.samples_used, "seconds": done.seconds, "cached": done.cached,
             "held_out_for_eval": len(held_out)}
    update_manifest(out, lambda data: data["modules"][m.name].__setitem__("calibration", entry))
    options = {**recipe_options, **{name: replace(recipe_options[name], ranges_file=str(done.path), method=done.method)
                                    for name in ("static", "tensorrt")}}
    eval_part = EvalData(list(held_out), f"held-out {len(held_out)} of the calibration samples ({samples.source})",
                         False) if len(held_out) else None
    return options, eval_part


def _module_eval_data(m: Module, modules: int, eval_data: EvalData | dict | str | Path | None, normalized: dict,
                      calib: Calibration | None) -> EvalData | None:
    """The module's evaluation data: given as EvalData, or read from a path like calibration data."""
    if isinstance(eval_data, dict) and all(isinstance(v, EvalData) for v in eval_data.values()):
        return eval_data.get(m.name)
    if eval_data is None or isinstance(eval_data, EvalData):
        return eval_data
    from onnxdtype.calibration import load_samples

    model = next(iter(normalized.values())).model if normalized else None
    samples = load_samples(_module_path(eval_data, m, modules, "--eval"), model, calib.image_spec if calib else None)
    return EvalData(list(samples), f"{len(samples)} samples from {samples.source}", False)


def _check_spec(m: Module, model: onnx.ModelProto, data: EvalData | None, tmp: Path,
                wanted: list[DType], tolerances: dict | None, repair: bool, budget: RepairBudget | None,
                metric: str | None) -> dict:
    """What the workers need to verify a module's variants: evaluation data saved in `tmp`, tolerances, repair."""
    data = data or synthesize(model)
    return {"eval_dir": str(data.save(tmp / f"eval-{m.name}")), "source": data.source, "synthesized": data.synthesized,
            "min_cosine": {d.value: min_cosine_for(d, tolerances) for d in wanted}, "repair": repair,
            "atol": (tolerances or {}).get("atol", DEFAULT_ATOL), "metric": metric,
            "budget": asdict(budget or RepairBudget())}


def _latency_feed(name: str, data: EvalData | None, bases: dict[str, onnx.ModelProto]) -> dict | None:
    feeds = (data or synthesize(bases[name], samples=1)).feeds
    return feeds[0] if feeds else None


def applicability(model: onnx.ModelProto) -> dict[str, str | None]:
    """For `inspect`: each buildable dtype -> None when its recipe applies, else the reason it does not."""
    options = default_options()
    normalized: dict[tuple[str, ...], onnx.ModelProto] = {}
    verdicts: dict[str, str | None] = {}
    for dtype in DType:
        info = INFO[dtype]
        if not info.steps:
            continue
        passes = _passes_for(dtype)
        if passes not in normalized:
            normalized[passes] = normalize(model, passes)[0]
        reason = RECIPES[info.steps[0]].check(normalized[passes], options[info.steps[0]])
        if info.needs_calibration and reason in (None, getattr(RECIPES[info.steps[0]], "NEEDS_CALIBRATION", None)):
            reason = None  # it applies; building it takes calibration data (--calib DATA)
        verdicts[dtype.value] = reason
    return verdicts


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OnnxDtypeError(f"{out}: output exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OnnxDtypeError(f"{out}: cannot create output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OnnxDtypeError(f"{out}: output folder is not writable")


def _refuse_clobber(out: Path, modules: list[Module], wanted: list[DType], manifest: dict, force: bool) -> None:
    """Existing files the manifest does not vouch for are never overwritten without --force."""
    if force:
        return
    for m in modules:
        for dtype in wanted:
            target = out / variant_filename(m.name, dtype)
            if target.exists() and not _vouched(out, manifest, m.name, dtype):
                raise OnnxDtypeError(f"{target}: exists and is not a verified onnxdtype output; use --force to overwrite")
        base_target = out / f"{m.name}.onnx"
        if base_target.exists() and base_target.resolve() != m.path.resolve() \
                and model_sha256(base_target) != model_sha256(m.path):
            raise OnnxDtypeError(f"{base_target}: exists with other contents than {m.path}; use --force to overwrite")


def _vouched(out: Path, manifest: dict, module: str, dtype: DType) -> bool:
    entry = manifest["modules"].get(module, {}).get("variants", {}).get(dtype.value)
    target = out / variant_filename(module, dtype)
    return bool(entry and entry.get("status") == "ok" and entry.get("sha256") == model_sha256(target))


def _place_base(m: Module, model: onnx.ModelProto, out: Path, force: bool) -> dict:
    """Put the fp32 base into the output folder as <name>.onnx (byte-identical copy) unless it is there."""
    target = out / f"{m.name}.onnx"
    if target.resolve() != m.path.resolve():
        if m.path.with_name(m.path.name + ".data").exists() or any(
                t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            save_model(model, target)
        elif not target.exists() or force or model_sha256(target) != model_sha256(m.path):
            with temp_dir_in(out) as tmp:
                shutil.copyfile(m.path, tmp / target.name)
                publish(tmp / target.name, target)
    data = target.with_name(target.name + ".data")
    size = target.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return {"file": target.name, "bytes": size, "sha256": model_sha256(target)}


def _set_base(data: dict, name: str, base: dict) -> None:
    entry = data["modules"].setdefault(name, {"variants": {}})
    entry["base"] = base
    entry.setdefault("variants", {})
    data["versions"] = _versions()


def _passes_for(dtype: DType) -> tuple[str, ...]:
    passes = {p for step in INFO[dtype].steps for p in RECIPES[step].PASSES}
    return tuple(sorted(passes))


@dataclass
class Normalized:
    model: onnx.ModelProto
    path: Path
    done: list[str]


def _normalize_once(m: Module, model: onnx.ModelProto, wanted: list[DType], tmp: Path) -> dict[tuple, Normalized]:
    """Normalize the base once per distinct pass set the requested recipes need, saved once per distinct result."""
    by_passes: dict[tuple[str, ...], Normalized] = {}
    by_done: dict[tuple[str, ...], Normalized] = {}
    for dtype in wanted:
        passes = _passes_for(dtype)
        if not passes or passes in by_passes:
            continue
        norm, done = normalize(model, passes)
        if tuple(done) not in by_done:  # e.g. no Gemm to rewrite: the "constants" and "constants+gemm" models are one
            keep_metadata(model, norm)
            path = tmp / f"{m.name}.normalized{len(by_done)}.onnx"
            write_model(norm, path)
            by_done[tuple(done)] = Normalized(norm, path, done)
        by_passes[passes] = by_done[tuple(done)]
    return by_passes


def _known_outcome(m: Module, dtype: DType, out: Path, manifest: dict, force: bool,
                   normalized: dict, recipe_options: dict, calibrated: bool) -> VariantResult | None:
    """Results decided without building: needs calibration, vouched existing file, does not apply."""
    info = INFO[dtype]
    if info.needs_calibration and not calibrated:
        return VariantResult(m.name, dtype.value, "skipped", NEEDS_CALIBRATION)
    target = out / variant_filename(m.name, dtype)
    if not force and target.exists() and _vouched(out, manifest, m.name, dtype):
        entry = dict(manifest["modules"][m.name]["variants"][dtype.value])
        return VariantResult(m.name, dtype.value, "kept", "up to date (use --force to rebuild)",
                             file=entry.get("file"), bytes=entry.get("bytes"), sha256=entry.get("sha256"),
                             recipe=list(info.steps), params=entry.get("params", {}))
    reason = _not_applicable(dtype, normalized, recipe_options)
    if reason:
        return VariantResult(m.name, dtype.value, "not_applicable", reason, recipe=list(info.steps))
    return None


def _not_applicable(dtype: DType, normalized: dict, recipe_options: dict) -> str | None:
    first = INFO[dtype].steps[0]
    return RECIPES[first].check(normalized[_passes_for(dtype)].model, recipe_options[first])


def _refuse_not_applicable(m: Module, wanted: list[DType], normalized: dict, recipe_options: dict,
                           explicit: bool) -> None:
    """A dtype asked for by name that would change nothing is an error, raised before anything is written."""
    for dtype in wanted if explicit else []:
        reason = None if INFO[dtype].needs_calibration else _not_applicable(dtype, normalized, recipe_options)
        if reason:
            raise OnnxDtypeError(f"{m.name}: {dtype} is not applicable: {reason}")


def _check_calibration_data(m: Module, modules: int, calib: Calibration | None, wanted: list[DType],
                            normalized: dict) -> None:
    """Read every calibration sample once (each is checked as it is read) before anything is written."""
    static_dtypes = [d for d in wanted if {"static", "tensorrt"} & set(INFO[d].steps)]
    if calib is None or not static_dtypes:
        return
    from onnxdtype.calibration import load_samples

    norm = normalized[_passes_for(static_dtypes[0])]
    for _ in load_samples(_module_path(calib.data, m, modules, "--calib"), norm.model, calib.image_spec):
        pass


def _check_eval_data(modules: list[Module], bases: dict[str, onnx.ModelProto],
                     eval_data: EvalData | dict | str | Path | None) -> None:
    """EvalData given through the API meets the same checks as data read from files."""
    from onnxdtype.calibration.data import check_feed, model_inputs

    if isinstance(eval_data, dict) and all(isinstance(v, EvalData) for v in eval_data.values()):
        unknown = sorted(set(eval_data) - {m.name for m in modules})
        if unknown:
            raise OnnxDtypeError(f"eval_data names no module {', '.join(map(repr, unknown))} "
                                 f"(modules: {', '.join(m.name for m in modules)})")
    for m in modules:
        data = eval_data.get(m.name) if isinstance(eval_data, dict) else eval_data
        if not isinstance(data, EvalData):
            continue
        if not data.feeds:
            raise OnnxDtypeError(f"{m.name}: evaluation data {data.source!r} holds no samples")
        inputs = model_inputs(bases[m.name])
        for i, feed in enumerate(data.feeds):
            check_feed(feed, inputs, f"{m.name}: evaluation data {data.source!r} sample {i}")


def _remove_stale_temp(out: Path) -> None:
    """Temp entries a killed build left: no one else can be using them while this process holds the folder lock."""
    for entry in out.glob(TEMP_PREFIX + "*"):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _size_with_data(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _worker_count(workers: int | None, tasks: int, largest_file: int) -> int:
    """Parallel workers: as asked, else bounded by tasks, cores, and memory (~8x the largest model each)."""
    if workers is not None:
        return max(1, workers)
    by_memory = max(1, _available_memory() // max(1, 8 * largest_file))
    return max(1, min(tasks, os.cpu_count() or 1, by_memory))


class WorkerPool:
    """`python -m onnxdtype.worker` processes, fed one JSON task per line; with size 1, tasks run inline.

    Plain subprocesses rather than multiprocessing: a user script calling quantize() needs no
    `if __name__ == "__main__"` guard, and a worker killed (say, by the OOM killer) fails only its
    own task. They start at once, so their imports overlap the main process's loading and normalizing.
    """

    def __init__(self, size: int) -> None:
        self.processes: list[subprocess.Popen] = [self._start() for _ in range(size)] if size > 1 else []

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "onnxdtype.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def run(self, tasks: list[dict]) -> Iterator[VariantResult]:
        """Yield each task's result as it finishes."""
        if not self.processes:
            for task in tasks:
                yield build_variant(**task)
            return
        pending: queue.Queue = queue.Queue()
        for task in tasks:
            pending.put(task)
        done: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self._drive, args=(i, pending, done), daemon=True)
                   for i in range(len(self.processes))]
        for thread in threads:
            thread.start()
        for _ in tasks:
            yield done.get()
        for thread in threads:
            thread.join()

    def _drive(self, slot: int, pending: queue.Queue, done: queue.Queue) -> None:
        while True:
            try:
                task = pending.get_nowait()
            except queue.Empty:
                return
            process = self.processes[slot]
            if process.poll() is not None:
                process = self.processes[slot] = self._start()
            try:
                process.stdin.write(json.dumps(task) + "\n")  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
                line = process.stdout.readline()  # type: ignore[union-attr]
            except BrokenPipeError:
                line = ""
            if line:
                done.put(VariantResult(**json.loads(line)))
            else:
                done.put(VariantResult(task["module"], task["dtype_name"], "failed",
                                       f"worker process died (exit code {process.wait()})",
                                       base_bytes=task["base_bytes"]))

    def close(self) -> None:
        """Workers are idle here (every result was read), so they are killed rather than left to tear down
        onnxruntime, which took longer than some builds."""
        for process in self.processes:
            if process.poll() is None:
                process.stdin.close()  # type: ignore[union-attr]
                process.kill()
        for process in self.processes:
            process.wait()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _options_as_dicts(recipe_options: dict) -> dict[str, dict]:
    return {name: asdict(opts) for name, opts in recipe_options.items()}


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def build_variant(module: str, dtype_name: str, norm_path: str, normalized: list[str], recipe_options: dict,
                  tmp: str, base_bytes: int, check: dict | None = None) -> VariantResult:
    """Run one dtype's recipe steps on the normalized model, prove it loads, verify it against fp32 on the
    evaluation data in `check` and repair it when it misses the tolerance; write it to `tmp`.

    Takes and returns plain data so it can run in a worker process; a recipe that raises fails only
    this variant, with the error as its reason.
    """
    quiet_onnxruntime()
    info = INFO[DType(dtype_name)]
    result = VariantResult(module, dtype_name, "ok", recipe=list(info.steps), normalized=normalized, base_bytes=base_bytes)
    start = time.perf_counter()
    path = Path(tmp) / variant_filename(module, DType(dtype_name))
    try:
        source = load_model(norm_path)
        options = {step: _as_options(step, recipe_options[step], dtype_name) for step in info.steps}
        built = _run_steps(source, info.steps, options, result)
        if built is None:
            return result
        if check is not None:
            built = _verify_and_repair(source, Path(norm_path), built, info.steps, options, check, result)
        keep_metadata(source, built)
        result.op_changes = op_changes(source, built)
        write_model(built, path)
    except Exception as exc:  # a quantizer bug must not take the other variants down
        result.status, result.reason = "failed", f"{type(exc).__name__}: {_one_line(exc)}"
        return result
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
    load_error = _load_error(path)
    if load_error:
        result.status, result.reason = "failed", f"onnxruntime cannot load it: {load_error}"
        path.unlink(missing_ok=True)
        return result
    result.file = str(path)
    return result


def _as_options(step: str, options: object, dtype_name: str) -> object:
    recipe = RECIPES[step]
    options = recipe.Options(**options) if isinstance(options, dict) else options
    return recipe.options_for(dtype_name, options) if hasattr(recipe, "options_for") else options


def _run_steps(source: onnx.ModelProto, steps: tuple[str, ...], options: dict, result: VariantResult | None = None
               ) -> onnx.ModelProto | None:
    """Apply the recipe steps in order; None (with the reason in `result`) when one does not apply."""
    model = source
    for step in steps:
        step_input = onnx.ModelProto()
        step_input.CopyFrom(model)  # onnxruntime's quantizers edit their input in place
        outcome = RECIPES[step].build(step_input, options[step])
        reason = outcome.reason if isinstance(outcome, NotApplicable) else \
            (None if op_changes(model, outcome.model) else f"{step} changed no node")
        if reason:
            if result is not None:
                result.status, result.reason = "not_applicable", reason
            return None
        if result is not None:
            result.params[step] = outcome.params
            result.kept_in_float += [n for n in outcome.kept_in_float if n not in result.kept_in_float]
            result.notes += outcome.notes
        model = outcome.model
    return model


def _verify_and_repair(source: onnx.ModelProto, source_path: Path, built: onnx.ModelProto, steps: tuple[str, ...],
                       options: dict, check: dict, result: VariantResult) -> onnx.ModelProto:
    """Figures against fp32; on a miss, repair (unless disabled). A variant still missing is marked failed."""
    eval_data = EvalData.load(Path(check["eval_dir"]), check["source"], check["synthesized"])
    if not eval_data.feeds:
        result.verification = {"data": eval_data.source, "synthesized": True, "failure": None, "skipped": True}
        return built
    criteria = Criteria(check["min_cosine"][result.dtype], check["atol"], check["metric"])
    base = accuracy_session(source_path)  # from the file: no second in-memory copy of a large model
    figures, failure = evaluate(base, accuracy_session(built), eval_data.feeds, criteria)
    verification: dict = {"data": eval_data.source, "synthesized": eval_data.synthesized, **asdict(criteria),
                          **figures, "failure": failure}
    if eval_data.synthesized:  # random inputs prove loading, not accuracy: figures are shown, never judged
        verification.update(note=SYNTHESIZED_NOTE, failure=None, unjudged_failure=failure)
        failure = None
    if failure and check["repair"]:
        trial = VariantResult(result.module, result.dtype, "ok")

        def rebuild(trial_options: dict) -> onnx.ModelProto | None:
            nonlocal trial  # the last trial is the one repair returns when it succeeds
            trial = VariantResult(result.module, result.dtype, "ok")
            return _run_steps(source, steps, trial_options, trial)

        outcome = repair(source, list(steps), options, eval_data, criteria, rebuild, built,
                         RepairBudget(**check["budget"]))
        verification["before_repair"] = {**figures, "failure": failure}
        verification["repair"] = {"kept": outcome.kept, "kept_weight_fraction": round(outcome.kept_weight_fraction, 4),
                                  "attempts": outcome.attempts, "failure": outcome.reason}
        if outcome.model is not None:
            built, failure = outcome.model, None
            verification.update(**outcome.figures, failure=None)
            result.params, result.kept_in_float = trial.params, trial.kept_in_float
            result.notes = trial.notes + [f"repaired: {len(outcome.kept)} nodes kept in higher precision "
                                          f"({outcome.kept_weight_fraction:.1%} of weights)"]
    result.verification = verification
    if failure:
        result.status, result.reason = "failed", f"verification: {failure}" + (
            f"; repair: {verification['repair']['failure']}" if "repair" in verification else "")
    return built


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def op_changes(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Op types whose count changed (new quantized ops positive, replaced float ops negative), plus fp16 weights."""
    a, b = op_counts(before), op_counts(after)
    changes = {op: b[op] - a[op] for op in sorted(set(a) | set(b)) if b[op] != a[op]}
    fp16 = _fp16_initializers(after) - _fp16_initializers(before)
    if fp16:
        changes["fp16 initializers"] = fp16
    return changes


def _fp16_initializers(model: onnx.ModelProto) -> int:
    return sum(t.data_type == onnx.TensorProto.FLOAT16 for g in iter_graphs(model.graph) for t in g.initializer)


def _load_error(path: Path) -> str | None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:  # default graph optimizations, as users load it: some fusions reject graphs that load unoptimized
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types on bad graphs
        return _one_line(exc)
    return None


def quiet_onnxruntime() -> None:
    """onnxruntime floods stderr with warnings during quantization; the CLI's --verbose turns them back on."""
    if os.environ.get("ONNXDTYPE_VERBOSE"):
        return
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    logging.getLogger().setLevel(logging.ERROR)


def _record(out: Path, result: VariantResult, progress: Callable[[VariantResult], None] | None) -> VariantResult:
    """Write one finished result into the manifest (ok, failed, not_applicable), then report it."""
    if result.status in ("ok", "failed", "not_applicable"):
        entry = {k: v for k, v in asdict(result).items() if k not in ("module", "dtype", "base_bytes")}
        if not result.file:
            entry.update(file=None, bytes=None, sha256=None)
        update_manifest(out, lambda data: _set_variant(data, result.module, result.dtype, entry))
    if progress:
        progress(result)
    return result


def _set_variant(data: dict, module: str, dtype: str, entry: dict) -> None:
    data["modules"].setdefault(module, {"variants": {}}).setdefault("variants", {})[dtype] = entry
    data["versions"] = _versions()


def _versions() -> dict[str, str]:
    import onnxruntime as ort

    return {"onnxdtype": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}

