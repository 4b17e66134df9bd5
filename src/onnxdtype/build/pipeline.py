"""The build pipe: plan (modules, dtypes, checks) -> calibrate -> dispatch to workers -> publish -> time -> results.

Every user error is found before the first write into the output folder. Variants are written into a temp folder
inside it and renamed into place only when complete, loadable and listed in the manifest, so a build killed at any
point leaves the folder as before or with complete variants that the manifest vouches for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from onnxdtype.build import data as module_data
from onnxdtype.build.plan import (
    NEEDS_CALIBRATION,
    Calibration,
    ModulePlan,
    check_fixed_inputs,
    check_out_dir,
    check_task_keys,
    find_modules,
    known_outcome,
    module_tasks,
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
from onnxdtype.build.search import candidates_for
from onnxdtype.build.task import VariantTask
from onnxdtype.build.worker import load_error
from onnxdtype.dtype import INFO, DType, parse_dtype_list
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import folder_lock, read_manifest
from onnxdtype.model import base_precision_problem, load_model, temp_dir_in
from onnxdtype.results import BuildResult, VariantResult
from onnxdtype.verify.evaluate import EvalData, load_metric
from onnxdtype.verify.kernels import kernels
from onnxdtype.verify.latency import measure
from onnxdtype.verify.repair import RepairBudget


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
    the static dtypes' placements on the evaluation data and keeps the fastest that passes (build.search).
    """
    source = Path(model)
    modules = find_modules(source)
    explicit = not (isinstance(dtypes, str) and dtypes.strip().lower() == "all")
    wanted = parse_dtype_list(dtypes)
    out = Path(out_dir) if out_dir is not None else (source if source.is_dir() else source.parent)
    check_out_dir(out)
    check_task_keys(tasks, modules)
    overrides = resolve_options(options)
    if metric:
        load_metric(metric)  # a wrong --metric is a user error now, not a failure in every worker later
    uncalibrated = [d for d in wanted if INFO[d].needs_calibration and calib is None]
    if explicit and uncalibrated:
        raise OnnxDtypeError(f"{', '.join(map(str, uncalibrated))}: {NEEDS_CALIBRATION}")
    buildable = len(modules) * sum(d not in uncalibrated for d in wanted)
    largest_file = max(size_with_data(m.path) for m in modules)
    try:
        pool_size = worker_count(workers, buildable, largest_file, [d.value for d in wanted], verify)
        with folder_lock(out), WorkerPool(pool_size) as pool:
            bases = {m.name: load_model(m.path) for m in modules}
            for m in modules:
                problem = base_precision_problem(bases[m.name]) or load_error(m.path)
                if problem:
                    raise OnnxDtypeError(f"{m.path}: {problem}")
            check_fixed_inputs(fixed_inputs, bases)
            module_data.check_eval_data(modules, bases, eval_data)
            remove_stale_temp(out)
            manifest = read_manifest(out)
            refuse_clobber(out, modules, wanted, manifest, force)
            with temp_dir_in(out) as tmp:
                plans: list[ModulePlan] = []
                given_data: dict[str, EvalData | None] = {}
                for m in modules:  # every user error is found before the first write into the folder
                    plan = normalize_once(m, bases[m.name], wanted, tmp, fixed_inputs)
                    plan.tasks = module_tasks(plan, tasks)
                    refuse_not_applicable(plan, wanted, overrides, explicit)
                    given_data[m.name] = module_data.module_eval_data(plan, len(modules), eval_data, calib)
                    module_data.check_calibration_data(plan, len(modules), calib, wanted)
                    plans.append(plan)
                results: list[VariantResult] = []
                tasks: list[VariantTask] = []
                latency_data: dict[str, EvalData | None] = {}
                for plan in plans:
                    m = plan.module
                    base_entry = place_base(m, plan.base, out, force)
                    if plan.evaluation:
                        module_data.record_evaluation(out, m.name, plan.evaluation)
                    held_out = module_data.calibrate_module(plan, len(modules), calib, wanted, out)
                    data = latency_data[m.name] = given_data[m.name] or held_out
                    spec = module_data.verify_spec(plan, data, tmp, wanted, tolerances, repair, repair_budget,
                                                   metric) if verify else None
                    for dtype in wanted:
                        known = known_outcome(plan, dtype, out, manifest, force, overrides, calib is not None)
                        if known is not None:
                            known.base_bytes = base_entry["bytes"]
                            results.append(record(out, known, progress))
                            continue
                        norm = plan.for_dtype(dtype)
                        step_options = options_for(dtype, overrides, plan.calibrated)
                        given = {f for key in (*INFO[dtype].steps, dtype.value) for f in overrides.get(key, {})}
                        tasks.append(VariantTask(m.name, dtype.value, str(norm.path), norm.done,
                                                 {step: asdict(o) for step, o in step_options.items()}, str(tmp),
                                                 base_entry["bytes"], spec, plan.specialized,
                                                 candidates_for(INFO[dtype].steps, given) if search else []))
                finished = []
                for result in pool.run(tasks):
                    publish_variant(out, result, keep_failed)
                    finished.append(result)
                bases_by_name = {p.module.name: p.base for p in plans}
                for result in finished:  # timed one at a time, after the parallel builds, so they do not compete
                    feed = module_data.latency_feed(latency_data.get(result.module), bases_by_name[result.module]) \
                        if result.file and latency_runs > 0 else None
                    if feed is not None:
                        result.latency = measure(out / f"{result.module}.onnx", out / result.file, feed, latency_runs)
                    if result.file:
                        result.kernels = kernels(out / result.file)
                    results.append(record(out, result, progress))
    except OSError as exc:  # a full disk, a folder turned read-only, a file size limit: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        raise OnnxDtypeError(f"{out}: {exc.strerror or exc}{where}") from None
    order = {(m.name, d.value): i for i, (m, d) in enumerate((m, d) for m in modules for d in wanted)}
    results.sort(key=lambda r: order[(r.module, r.dtype)])
    return BuildResult(out, results, explicit)
