"""Where a zoo's variant tasks run: this machine's worker pool (`local`), or Ray tasks on a cluster (`ray`).

Both take the build pipeline's VariantTasks and yield VariantResults as they finish; the driver publishes them.
Tasks read and write only the temp folders of the output, so with Ray the output must be on a filesystem every
node sees.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from onnxdtype.build.pool import UNMEASURED_PEAK, GiB, WorkerPool, worker_count, worker_peak
from onnxdtype.build.task import VariantTask
from onnxdtype.build.worker import build_variant, quiet_onnxruntime
from onnxdtype.calibration.run import calibrate_path
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import first_line
from onnxdtype.model import load_model
from onnxdtype.results import Status, VariantResult

EXECUTORS = ("local", "ray")
RAY_RETRIES = 3  # a task whose worker process died (OOM killer, lost node) runs again this many times
Running = Callable[[int], None]  # told how many tasks are in flight whenever that changes


@dataclass
class CalibrationTask:
    """One module's calibration pass. It leaves its ranges in the calibration cache of the model's output folder,
    where the driver finds them when it prepares the module's static tasks (build.data.calibrate_module)."""
    module: str
    norm_path: str  # the normalized model the static recipes receive
    data: str
    image_spec: str | dict | None
    method: str
    out: str
    eval_fraction: float
    base_bytes: int


@dataclass
class CalibrationGroup:
    """A model's calibration tasks, and what the driver does once all are done: prepare the model, which returns
    its variant tasks."""
    tasks: list[CalibrationTask]
    then: Callable[[], list[VariantTask]]


def calibrate(task: CalibrationTask) -> None:
    """Run a calibration task (in a Ray worker)."""
    quiet_onnxruntime()
    calibrate_path(load_model(task.norm_path), task.data, task.image_spec, task.method, Path(task.out),
                   task.eval_fraction)


def memory_estimate(task: VariantTask) -> int:
    """Bytes one worker is predicted to need for the task (bench/memory.py's figures, as the local pool's plan)."""
    return worker_peak(task.base_bytes, [task.dtype])


class LocalExecutor:
    """The build's own WorkerPool on this machine: `max_parallel` workers, else as many as cores and memory allow."""

    def __init__(self, max_parallel: int | None = None) -> None:
        self.max_parallel = max_parallel
        self.workers = 0

    def admit(self, largest_file: int, dtypes: list[str]) -> None:
        """Refuse, before any work, a zoo one worker of this machine cannot hold (build.pool.worker_count)."""
        worker_count(self.max_parallel, 1, largest_file, dtypes)

    def run(self, tasks: list[VariantTask], running: Running, groups: list[CalibrationGroup] = ()
            ) -> Iterator[tuple[VariantTask, VariantResult]]:
        """Yield each task with its result as it finishes. Calibrations run first, in the driver (they need no
        worker of their own on one machine), then every variant task in one pool."""
        tasks = list(tasks)
        for group in groups:
            tasks += group.then()
        if not tasks:
            return
        largest = max(tasks, key=lambda t: t.base_bytes)
        self.workers = worker_count(self.max_parallel, len(tasks), largest.base_bytes, sorted({t.dtype for t in tasks}))
        with WorkerPool(self.workers) as pool:
            left = len(tasks)
            running(min(self.workers, left))
            for done in pool.run(tasks):
                left -= 1
                running(min(self.workers, left))
                yield done

    def close(self) -> None:
        """The pool lives only while `run` does."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayExecutor:
    """Each task a Ray task asking for one CPU and its estimated memory, retried when its worker dies.

    Connects to `address` ("auto", "ray://HOST:PORT"), else starts Ray on this machine; Ray started here is shut
    down on close. `build` is what a Ray worker runs (build_variant; tests pass one that dies once)."""

    def __init__(self, address: str | None = None, max_parallel: int | None = None,
                 build: Callable[[VariantTask], VariantResult] = build_variant) -> None:
        if importlib.util.find_spec("ray") is None:
            raise OnnxDtypeError("--executor ray needs Ray: pip install 'onnxdtype[ray]'")
        import ray

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                client = " (ray:// addresses need Ray Client: pip install 'ray[client]')" \
                    if str(address).startswith("ray://") else ""
                raise OnnxDtypeError(f"--address {address}: cannot connect to Ray: {first_line(exc)}{client}") from None
        self.max_parallel = max_parallel
        self.workers = max_parallel or int(ray.cluster_resources().get("CPU", 1))
        self.remote = ray.remote(build)
        self.remote_calibrate = ray.remote(calibrate)

    def admit(self, largest_file: int, dtypes: list[str]) -> None:
        """Nothing to refuse up front: the cluster's nodes differ, so each task is checked as it is submitted."""

    def run(self, tasks: list[VariantTask], running: Running, groups: list[CalibrationGroup] = ()
            ) -> Iterator[tuple[VariantTask, VariantResult]]:
        """Yield each task with its result as it finishes. Calibrations run as Ray tasks beside the variant tasks
        that need none; a model's static tasks are submitted once its calibrations are done (one that failed is
        run again by the driver when it prepares the model). A task asking for more memory than the largest node
        has fails at once (Ray would keep it pending for ever)."""
        largest = max((n["Resources"].get("memory", 0) for n in self.ray.nodes() if n.get("Alive")), default=0)
        left = {i: len(group.tasks) for i, group in enumerate(groups)}
        calibrating = {self._submit(self.remote_calibrate, task, int(task.base_bytes * UNMEASURED_PEAK)): i
                       for i, group in enumerate(groups) for task in group.tasks}
        queued = list(reversed(tasks))
        pending: dict = {}
        while queued or pending or calibrating:
            while queued and (self.max_parallel is None or len(pending) + len(calibrating) < self.max_parallel):
                task = queued.pop()
                memory = memory_estimate(task)
                if largest and memory > largest:
                    yield task, VariantResult(task.module, task.dtype, Status.FAILED,
                                              f"needs about {memory / GiB:.1f} GiB in one worker; the largest Ray "
                                              f"node offers {largest / GiB:.1f} GiB", base_bytes=task.base_bytes)
                    continue
                pending[self._submit(self.remote, task, memory)] = task
            if not pending and not calibrating:
                break
            running(len(pending) + len(calibrating))
            ready, _ = self.ray.wait([*pending, *calibrating], num_returns=1)
            for ref in ready:
                if ref in calibrating:
                    group = calibrating.pop(ref)
                    try:
                        self.ray.get(ref)
                    except self.ray.exceptions.RayError:
                        pass  # the driver calibrates the module itself when it prepares the model
                    left[group] -= 1
                    if not left[group]:
                        queued[:0] = reversed(groups[group].then())
                    continue
                task = pending.pop(ref)
                try:
                    result = self.ray.get(ref)
                except self.ray.exceptions.RayError as exc:  # retries used up: this task fails, the zoo goes on
                    result = VariantResult(task.module, task.dtype, Status.FAILED,
                                           f"Ray task failed after {RAY_RETRIES} retries: {first_line(exc)}",
                                           base_bytes=task.base_bytes)
                yield task, result
        running(0)

    def _submit(self, remote, task: VariantTask | CalibrationTask, memory: int):
        options = {"num_cpus": 1, "max_retries": RAY_RETRIES, **({"memory": memory} if memory else {})}
        return remote.options(**options).remote(task)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_executor(name: str, address: str | None, max_parallel: int | None) -> None:
    """The executor settings, checked before the spec is read (the cheapest mistakes first)."""
    if name not in EXECUTORS:
        raise OnnxDtypeError(f"--executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    if max_parallel is not None and max_parallel < 1:
        raise OnnxDtypeError(f"--max-parallel must be >= 1, not {max_parallel}")
    if name == "local" and address is not None:
        raise OnnxDtypeError("--address is for --executor ray")


def make_executor(name: str, address: str | None = None, max_parallel: int | None = None
                  ) -> LocalExecutor | RayExecutor:
    check_executor(name, address, max_parallel)
    return LocalExecutor(max_parallel) if name == "local" else RayExecutor(address, max_parallel)

