"""Build a zoo: every model's variants, each task content-addressed, run locally or on Ray, indexed.

The driver alone writes manifests: it plans and checks every model first (a mistake writes nothing), then per
module writes the base and runs its calibration (the task its static dtypes depend on), hands every variant task
to the executor, publishes each result as it arrives (the build's atomic rename + manifest rules), times the new
variants, and writes the index. A task whose key has a vouched result in the output is not run again.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from onnxdtype.build.data import calibrated_dtypes
from onnxdtype.build.pipeline import (
    KEY_PARAM,
    Prepared,
    Request,
    make_request,
    out_error,
    planned,
    prepare,
    recorded_key,
    time_variant,
)
from onnxdtype.build.plan import ModulePlan, check_out_dir, size_with_data, vouched
from onnxdtype.build.publish import publish_variant, record
from onnxdtype.build.task import VariantTask
from onnxdtype.calibration.data import module_path
from onnxdtype.dtype import INFO, DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import folder_lock, read_manifest
from onnxdtype.results import Status, VariantResult
from onnxdtype.zoo.executors import (
    CalibrationGroup,
    CalibrationTask,
    LocalExecutor,
    RayExecutor,
    check_executor,
    make_executor,
)
from onnxdtype.zoo.index import write_index
from onnxdtype.zoo.keys import module_keys
from onnxdtype.zoo.spec import ZooModel, ZooSpec, load_spec


@dataclass
class ZooProgress:
    """What the zoo has done so far, handed to the progress callback on every change."""
    total: int  # tasks to run this time (calibrations and variants)
    skipped: int  # tasks whose key already has a vouched result
    done: int = 0
    running: int = 0
    failed: int = 0
    finished: VariantResult | None = None  # the variant just published, when that is the change
    model: str | None = None  # its model
    stage: str = "planning"


@dataclass
class ZooResult:
    """What build_zoo did: where the index and overview are, this run's results and counts."""
    out: Path
    index: Path  # zoo.json
    report: Path  # report.html
    results: dict[str, list[VariantResult]]  # model -> the results of this run (kept ones included)
    progress: ZooProgress
    seconds: float

    @property
    def failed(self) -> list[tuple[str, VariantResult]]:
        return [(m, r) for m, results in self.results.items() for r in results if r.status == Status.FAILED]


Progress = Callable[[ZooProgress], None]


def build_zoo(spec: str | Path | dict, out: str | Path, *, executor: str = "local", address: str | None = None,
              max_parallel: int | None = None, progress: Progress | None = None, root: str | Path | None = None,
              runner: LocalExecutor | RayExecutor | None = None) -> ZooResult:
    """Build, prove, time and index every (module, dtype) of the zoo `spec` (zoo.toml path or dict; dict paths
    relative to `root`) into `out`/<model>/, skipping tasks whose content key already has a vouched result.

    `executor` "local" runs tasks in this machine's worker pool (`max_parallel` workers, default by cores and
    memory), "ray" as Ray tasks (`address` "auto" or "ray://HOST:PORT" for a cluster; `out` must then be on a
    filesystem every node sees). `runner` replaces the executor (tests)."""
    start = time.monotonic()
    if runner is None:
        check_executor(executor, address, max_parallel)
    zoo = load_spec(spec, root)
    out = Path(out)
    cache: dict[Path, str] = {}
    keys = {m.name: _model_keys(zoo, m, cache) for m in zoo.models}
    requests = {m.name: _request(m, out / m.name, keys[m.name]) for m in zoo.models}
    work = {name: _work(request, keys[name]) for name, request in requests.items()}
    todo = {name: request for name, request in requests.items() if work[name]}
    every = sum(len(by_dtype) for by_module in keys.values() for by_dtype in by_module.values())
    state = ZooProgress(total=sum(len(work[m.name]) + _calibrations(m) * (m.name in todo) for m in zoo.models),
                        skipped=every - sum(map(len, work.values())))
    report = progress or (lambda _: None)
    results: dict[str, list[VariantResult]] = {name: [] for name in requests}
    if todo:  # an up-to-date zoo starts no executor (Ray takes seconds to start)
        with runner or make_executor(executor, address, max_parallel) as running:
            _build(zoo, todo, keys, running, out, state, report, results)
    elif runner is not None:
        runner.close()
    index, page = write_index(out, zoo, results, time.monotonic() - start)
    return ZooResult(out, index, page, results, state, time.monotonic() - start)


def _build(zoo: ZooSpec, todo: dict[str, Request], keys: dict[str, dict[str, dict[str, str]]],
           runner: LocalExecutor | RayExecutor, out: Path, state: ZooProgress, report: Progress,
           results: dict[str, list[VariantResult]]) -> None:
    """Plan every model with work, prepare each (calibration first), run the tasks, publish, time, record."""
    modules = [m for request in todo.values() for m in request.modules]
    largest = max(modules, key=lambda m: size_with_data(m.path))
    runner.admit(size_with_data(largest.path), sorted({d.value for request in todo.values() for d in request.wanted}))
    try:
        with ExitStack() as stack:
            plans = _plan_all(todo, stack, out)
            prepared: dict[str, Prepared] = {}
            owner: dict[int, str] = {}

            def prepare_model(model: ZooModel) -> list[VariantTask]:
                """Write the model's bases and calibration (cached when its calibration tasks ran), queue its tasks."""
                state.stage = f"preparing {model.name}"
                report(state)
                prepared[model.name] = done = prepare(todo[model.name], *plans[model.name])
                state.done += _calibrations(model)
                owner.update({id(task): model.name for task in done.work})
                for plan in done.plans.values():
                    plan.normalized.clear()  # the workers read the normalized files; the driver keeps the bases only
                state.stage = "building"
                report(state)
                return done.work

            ready, groups = [], []
            for model in (m for m in zoo.models if m.name in todo):
                calibrations = _calibration_tasks(todo[model.name], plans[model.name][0])
                if calibrations:
                    groups.append(CalibrationGroup(calibrations, functools.partial(prepare_model, model)))
                else:
                    ready += prepare_model(model)
            finished = _run(runner, ready, groups, owner, todo, keys, state, report)
            state.stage = "timing"
            report(state)
            for name, result in finished:  # after the builds, one at a time, so the timings do not compete
                time_variant(todo[name], prepared[name].plans[result.module], result)
                results[name].append(record(todo[name].out, result, None))
            for name, done in prepared.items():
                results[name] += done.decided
    except OSError as exc:
        raise out_error(out, exc) from None


def _model_keys(zoo: ZooSpec, model: ZooModel, cache: dict[Path, str]) -> dict[str, dict[str, str]]:
    """module -> dtype -> task key; data that cannot be keyed (no subfolder for a module) names the entry."""
    try:
        return {module.name: module_keys(model, module, cache) for module in model.modules}
    except OnnxDtypeError as exc:
        raise OnnxDtypeError(f"{zoo.source}: models[{zoo.models.index(model)}] ({model.name}): {exc}") from None


def _request(model: ZooModel, out: Path, keys: dict[str, dict[str, str]]) -> Request:
    """The build request of one model (its dtypes are not 'explicit': one that does not apply to a module is
    recorded as such, as zoos list dtypes per model, not per module)."""
    try:
        request = make_request(model.path, model.dtypes, out, options=model.options, eval_data=model.eval,
                               verify=model.verify, repair=model.repair, tolerances=model.tolerances,
                               latency_runs=model.latency_runs, metric=model.metric, calib=model.calib,
                               fixed_inputs=model.fixed_inputs or None, tasks=model.tasks or None,
                               search=model.search)
    except OnnxDtypeError as exc:
        raise OnnxDtypeError(f"{model.name}: {exc}") from None
    flat = {(module, dtype): key for module, by_dtype in keys.items() for dtype, key in by_dtype.items()}
    return dataclasses.replace(request, explicit=False, keys=flat)


def _work(request: Request, keys: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """The (module, dtype) tasks without a result under their key in the output: vouched ok or not applicable."""
    manifest = read_manifest(request.out) if request.out.is_dir() else {"modules": {}}
    uncalibrated = {d.value for d in request.uncalibrated}
    todo = []
    for module, by_dtype in keys.items():
        for dtype, key in by_dtype.items():
            entry = manifest["modules"].get(module, {}).get("variants", {}).get(dtype) or {}
            same = recorded_key(manifest, module, DType(dtype)) == key
            done = same and (entry.get("status") == "not_applicable" or vouched(request.out, manifest, module,
                                                                                  DType(dtype)))
            if not (done or dtype in uncalibrated):
                todo.append((module, dtype))
    return todo


def _calibrations(model: ZooModel) -> int:
    """One calibration task per module when any of the model's dtypes is static (its static tasks depend on it)."""
    static = model.calib is not None and any(INFO[d].needs_calibration for d in model.dtypes)
    return len(model.modules) if static else 0


def _plan_all(todo: dict[str, Request], stack: ExitStack, out: Path) -> dict[str, tuple[list, Path]]:
    """Lock and plan every model with work before anything is written beside the temp folders; on a mistake,
    remove the folders this run created and raise it naming the model."""
    created = [p for p in [out, *(r.out for r in todo.values())] if not p.exists()]
    try:
        for request in todo.values():
            check_out_dir(request.out)
        plans = {}
        for name, request in todo.items():
            stack.enter_context(folder_lock(request.out))
            try:
                plans[name] = stack.enter_context(planned(request))
            except OnnxDtypeError as exc:
                raise OnnxDtypeError(f"{name}: {exc}") from None
        return plans
    except BaseException:
        stack.close()
        for folder in reversed(created):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _calibration_tasks(request: Request, plans: list[tuple[ModulePlan, object]]) -> list[CalibrationTask]:
    """One per module when the model has static dtypes and calibration data: the pass its static tasks wait for."""
    static = calibrated_dtypes(request.wanted)
    if request.calib is None or not static:
        return []
    calib, count = request.calib, len(request.modules)
    return [CalibrationTask(plan.module.name, str(plan.for_dtype(static[0]).path),
                            str(module_path(calib.data, plan.module.name, count, "--calib")),
                            str(calib.image_spec) if isinstance(calib.image_spec, Path) else calib.image_spec,
                            calib.method, str(request.out), calib.eval_fraction, size_with_data(plan.module.path))
            for plan, _ in plans]


def _run(runner: LocalExecutor | RayExecutor, tasks: list[VariantTask], groups: list[CalibrationGroup],
         owner: dict[int, str], todo: dict[str, Request], keys: dict[str, dict[str, dict[str, str]]],
         state: ZooProgress, report: Progress) -> list[tuple[str, VariantResult]]:
    """Hand the tasks to the executor; publish each result as it arrives, stamped with its task's key."""
    finished = []

    def running(count: int) -> None:
        state.running = count
        report(state)

    for task, result in runner.run(tasks, running, groups):
        name = owner[id(task)]
        request = todo[name]
        result.params[KEY_PARAM] = keys[name][result.module][result.dtype]
        publish_variant(request.out, result, request.keep_failed)
        finished.append((name, result))
        state.done += 1
        state.failed += result.status == Status.FAILED
        state.finished, state.model = result, name
        report(state)
        state.finished = None
    return finished
