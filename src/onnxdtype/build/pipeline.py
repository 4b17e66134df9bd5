"""The build pipe: plan (modules, dtypes, checks) -> calibrate -> dispatch to workers -> publish -> time -> results.

Every user error is found before the first write into the output folder. Variants are written into a temp folder
inside it and renamed into place only when complete, loadable and listed in the manifest, so a build killed at any
point leaves the folder as before or with complete variants that the manifest vouches for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxdtype.build import data as module_data
from onnxdtype.build.plan import (
    NEEDS_CALIBRATION,
    Calibration,
    Module,
    ModulePlan,
    check_fixed_inputs,
    check_out_dir,
    check_task_keys,
    find_modules,
    known_outcome,
    module_tasks,
    needs_calibration,
    normalize_once,
    options_for,
    refuse_clobber,
    refuse_not_applicable,
    remove_stale_temp,
    resolve_options,
    size_with_data,
)
from onnxdtype.build.pool import WorkerPool, worker_count
from onnxdtype.build.publish import place_base, publish_variant, record
from onnxdtype.build.search import SearchBudget, candidates_for
from onnxdtype.build.task import VariantTask
from onnxdtype.build.worker import load_error
from onnxdtype.dtype import INFO, DType, parse_dtype_list
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import folder_lock, read_manifest
from onnxdtype.model import base_precision_problem, load_model, temp_dir_in
from onnxdtype.results import BuildResult, Status, VariantResult
from onnxdtype.verify.evaluate import EvalData, load_metric
from onnxdtype.verify.kernels import kernels
from onnxdtype.verify.latency import measure
from onnxdtype.verify.repair import RepairBudget

NO_INTEGER_KERNELS = ("onnxruntime's CPU EP runs no integer kernel for this variant: its 8-bit weights are "
                      "dequantized to float as it runs (a smaller file, no speed from integer arithmetic)")
KEY_PARAM = "zoo_key"  # a variant's params entry: the content key it was built under (zoo.keys)


def quantize(
    model: str | Path,
    dtypes: str | list[str] | list[DType] = "all",
    out_dir: str | Path | None = None,
    *,
    force: bool = False,
    options: dict | None = None,
    workers: int | None = None,
    progress: Callable[[VariantResult], None] | None = None,
    eval_data: EvalData | dict[str, EvalData] | str | Path | None = None,
    verify: bool = True,
    repair: bool = True,
    tolerances: dict[str, float] | None = None,
    keep_failed: bool = False,
    latency_runs: int = 20,
    repair_budget: RepairBudget | None = None,
    metric: str | None = None,
    calib: Calibration | None = None,
    fixed_inputs: dict[str, Any] | list[str] | None = None,
    tasks: dict[str, str] | None = None,
    search: bool = True,
    search_budget: SearchBudget | None = None,
) -> BuildResult:
    """Build the requested dtype variants of a model (or of every module in a folder) into `out_dir`,
    verify each against fp32, repair those that miss their tolerance, and time them.

    `options` maps a dtype name ("q4") or a recipe name ("blockwise4") to an Options instance or a dict of its
    fields; dtype keys win over recipe keys. `eval_data` is one EvalData or a data path (see Calibration), or one per
    module name; without it the held-out part of `calib` is used, else inputs are synthesized (which proves loading
    only). `tolerances` overrides minimum cosines by dtype name or "default" (and "atol"). `latency_runs=0` skips
    timing. `metric` is a user task metric "module:function" (see verify.evaluate.evaluate). `fixed_inputs`
    ({name: value} or ["NAME=VALUE"]) specializes every module declaring those inputs before its variants are built
    (If branches they choose are inlined, so static calibration reaches their weights); variants keep the interface
    and record the values, and onnxdtype's runtime refuses others. `tasks` overrides the guessed task judge of a
    module's outputs ({"rec": "ctc"}, {"det/out": "dense:threshold=0.3"}, "*" for every module). `search` tries
    the static dtypes' placements on the evaluation data and keeps the fastest that passes (build.search), within
    `search_budget` per variant (build.search.SearchBudget: seconds, and the speedup a kept variant must reach).
    """
    request = make_request(model, dtypes, out_dir, force=force, options=options, workers=workers, progress=progress,
                           eval_data=eval_data, verify=verify, repair=repair, tolerances=tolerances,
                           keep_failed=keep_failed, latency_runs=latency_runs, repair_budget=repair_budget,
                           metric=metric, calib=calib, fixed_inputs=fixed_inputs, tasks=tasks, search=search,
                           search_budget=search_budget)
    out, modules = request.out, request.modules
    check_out_dir(out)
    buildable = len(modules) * sum(d not in request.uncalibrated for d in request.wanted)
    largest = max(modules, key=lambda m: size_with_data(m.path))
    try:
        pool_size = worker_count(workers, buildable, size_with_data(largest.path), [d.value for d in request.wanted])
        with folder_lock(out), WorkerPool(pool_size) as pool:
            results = _build(request, pool)
    except OSError as exc:  # a full disk, a folder turned read-only, a file size limit: one line, not a traceback
        raise out_error(out, exc) from None
    order = {(m.name, d.value): i for i, (m, d) in enumerate((m, d) for m in modules for d in request.wanted)}
    results.sort(key=lambda r: order[(r.module, r.dtype)])
    return BuildResult(out, results, request.explicit)


def make_request(model: str | Path, dtypes: str | list[str] | list[DType] = "all", out_dir: str | Path | None = None,
                 **settings: Any) -> Request:
    """A checked Request (quantize's keyword arguments): every mistake found without reading a sample or writing."""
    source = Path(model)
    modules = find_modules(source)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    explicit = not (isinstance(dtypes, str) and dtypes.strip().lower() == "all")
    overrides = resolve_options(settings.pop("options", None))
    request = Request(modules, parse_dtype_list(dtypes), explicit, out, overrides, **settings)
    check_task_keys(request.tasks, modules)
    if request.metric:
        load_metric(request.metric)  # a wrong --metric is a user error now, not a failure in every worker later
    if request.explicit and request.uncalibrated:
        raise OnnxDtypeError(f"{', '.join(map(str, request.uncalibrated))}: {NEEDS_CALIBRATION}")
    return request


def out_error(out: Path, exc: OSError) -> OnnxDtypeError:
    where = f" ({exc.filename})" if exc.filename else ""
    return OnnxDtypeError(f"{out}: {exc.strerror or exc}{where}")


@dataclass
class Request:
    """One quantize() call: what to build, where, and how to prove it (see quantize for each field)."""
    modules: list[Module]
    wanted: list[DType]
    explicit: bool  # dtypes named by the user (a non-applicable one is an error), not "all"
    out: Path
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # checked recipe options (resolve_options)
    force: bool = False
    workers: int | None = None
    progress: Callable[[VariantResult], None] | None = None
    eval_data: EvalData | dict[str, EvalData] | str | Path | None = None
    verify: bool = True
    repair: bool = True
    tolerances: dict[str, float] | None = None
    keep_failed: bool = False
    latency_runs: int = 20
    repair_budget: RepairBudget | None = None
    metric: str | None = None
    calib: Calibration | None = None
    fixed_inputs: dict[str, Any] | list[str] | None = None
    tasks: dict[str, str] | None = None
    search: bool = True
    search_budget: SearchBudget | None = None
    # (module, dtype) -> the content key a vouched variant must have been built under to be kept (the zoo's);
    # None: any vouched variant is kept
    keys: dict[tuple[str, str], str] | None = None

    @property
    def uncalibrated(self) -> list[DType]:
        """The wanted dtypes that need calibration data none was given for."""
        return [d for d in self.wanted if needs_calibration(d, self.overrides) and self.calib is None]

    def candidates(self, dtype: DType) -> list[dict[str, dict]]:
        """The placements the search tries for `dtype` (build.search); none with the search off, or for an option
        the user set."""
        given = {f for key in (*INFO[dtype].steps, dtype.value) for f in self.overrides.get(key, {})}
        return candidates_for(INFO[dtype].steps, given) if self.search else []


@dataclass
class Prepared:
    """A request planned and written up to the builds: the modules' plans, the results decided without building,
    and the tasks to build (their files in `tmp`, inside the output folder)."""
    plans: dict[str, ModulePlan]
    decided: list[VariantResult]
    work: list[VariantTask]
    tmp: Path


def _build(request: Request, pool: WorkerPool) -> list[VariantResult]:
    """Under the folder lock: check everything, plan every module, then write the bases, calibrate, build in the
    pool, publish and time."""
    with planned(request) as (plans, tmp):
        prepared = prepare(request, plans, tmp)
        finished = []
        for _, result in pool.run(prepared.work):
            publish_variant(request.out, result, request.keep_failed)
            finished.append(result)
        for result in finished:  # timed one at a time, after the parallel builds, so they do not compete
            time_variant(request, prepared.plans[result.module], result)
            prepared.decided.append(record(request.out, result, request.progress))
    return prepared.decided


@contextmanager
def planned(request: Request) -> Iterator[tuple[list[tuple[ModulePlan, EvalData | None]], Path]]:
    """Check every module and plan it in a temp folder inside the output folder (removed on leaving); raises on
    anything the user got wrong before the first write beside that temp folder. Call under the folder lock."""
    out = request.out
    bases = {m.name: load_model(m.path, lazy=True) for m in request.modules}  # weights stay in their files
    for m in request.modules:
        problem = base_precision_problem(bases[m.name]) or load_error(m.path)
        if problem:
            raise OnnxDtypeError(f"{m.path}: {problem}")
    check_fixed_inputs(request.fixed_inputs, bases)
    module_data.check_eval_data(request.modules, bases, request.eval_data)
    remove_stale_temp(out)
    refuse_clobber(out, request.modules, request.wanted, read_manifest(out), request.force)
    with temp_dir_in(out) as tmp:
        # popped: a single-file base is released once its plan holds its graph alone (normalize_once)
        yield [_plan(request, m, bases.pop(m.name), tmp) for m in request.modules], tmp


def prepare(request: Request, plans: list[tuple[ModulePlan, EvalData | None]], tmp: Path) -> Prepared:
    """Write each module's base and calibration and queue its tasks (see _prepare)."""
    manifest = read_manifest(request.out)
    decided: list[VariantResult] = []
    work: list[VariantTask] = []
    for plan, given in plans:
        decided += _prepare(request, plan, given, manifest, tmp, work)
    return Prepared({plan.module.name: plan for plan, _ in plans}, decided, work, tmp)


def _plan(request: Request, m: Module, base: onnx.ModelProto, tmp: Path) -> tuple[ModulePlan, EvalData | None]:
    """A module's normalized models, judges and given evaluation data; raises on anything the user got wrong."""
    plan = normalize_once(m, base, request.wanted, tmp, request.fixed_inputs)
    plan.tasks = module_tasks(plan, request.tasks)
    refuse_not_applicable(plan, request.wanted, request.overrides, request.explicit)
    modules = len(request.modules)
    given = module_data.module_eval_data(plan, modules, request.eval_data, request.calib)
    module_data.check_calibration_data(plan, modules, request.calib, request.wanted, request.overrides)
    return plan, given


def _prepare(request: Request, plan: ModulePlan, given: EvalData | None, manifest: dict, tmp: Path,
             work: list[VariantTask]) -> list[VariantResult]:
    """Write the module's base and calibration, then queue a task per dtype to build (into `work`); returns the
    results decided without building (kept, skipped, not applicable)."""
    m, out = plan.module, request.out
    base_entry = place_base(m, plan.base, out, request.force, plan.single_file)
    held_out = module_data.calibrate_module(plan, len(request.modules), request.calib, request.wanted, out,
                                            any(request.candidates(d) for d in request.wanted))
    gram_held_out = module_data.gram_module(plan, len(request.modules), request.calib, request.wanted,
                                            request.overrides, tmp)
    held_out = held_out or gram_held_out  # the same split of the same samples when both ran
    plan.latency_data = given or held_out
    recorded = plan.evaluation or (plan.held_out_entry if given is None else None)
    module_data.record_evaluation(out, m.name, recorded or {"data": None, "image_spec": None, "held_out": None})
    spec = module_data.verify_spec(plan, plan.latency_data, tmp, request.wanted, request.tolerances, request.repair,
                                   request.repair_budget, request.metric) if request.verify else None
    decided = []
    for dtype in request.wanted:
        content_key = request.keys.get((m.name, dtype.value)) if request.keys is not None else None
        stale = request.keys is not None and recorded_key(manifest, m.name, dtype) != content_key
        known = known_outcome(plan, dtype, out, manifest, request.force or stale, request.overrides,
                              request.calib is not None)
        if known is not None:
            known.base_bytes = base_entry["bytes"]
            if content_key is not None and known.status == Status.NOT_APPLICABLE:
                known.params[KEY_PARAM] = content_key
            decided.append(record(out, known, request.progress))
            continue
        norm = plan.for_dtype(dtype)
        step_options = options_for(dtype, request.overrides, plan.calibrated)
        candidates = request.candidates(dtype)
        work.append(VariantTask(m.name, dtype.value, str(norm.path), norm.done,
                                {step: asdict(o) for step, o in step_options.items()}, str(tmp), base_entry["bytes"],
                                spec, plan.specialized, candidates, plan.search_ranges if candidates else {},
                                request.search_budget or SearchBudget(), single_file=plan.single_file))
    return decided


def recorded_key(manifest: dict, module: str, dtype: DType) -> str | None:
    """The content key the manifest's entry for the variant was built under (the zoo's), or None."""
    entry = manifest["modules"].get(module, {}).get("variants", {}).get(dtype.value) or {}
    return (entry.get("params") or {}).get(KEY_PARAM)


def time_variant(request: Request, plan: ModulePlan, result: VariantResult) -> None:
    """Latency against fp32 on the module's first evaluation sample, and the kernels onnxruntime runs."""
    if not result.file:
        return
    out = request.out
    feed = module_data.latency_feed(plan.latency_data, plan.base, plan.module.path) \
        if request.latency_runs > 0 else None
    if feed is not None:
        result.latency = measure(out / f"{result.module}.onnx", out / result.file, feed, request.latency_runs)
    result.kernels = kernels(out / result.file)
    if runs_no_integer_kernel(result.dtype, result.kernels):
        result.notes.append(NO_INTEGER_KERNELS)


def runs_no_integer_kernel(dtype: str, found: dict | None) -> bool:
    """A quantized dtype whose optimized graph holds no integer kernel (None: the graph could not be read)."""
    return INFO[DType(dtype)].bits not in ("32", "16") and found is not None and not found["integer"]
