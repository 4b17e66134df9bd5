"""Worker processes that build variants in parallel, and how many to start."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator

from onnxdtype.build.task import VariantTask
from onnxdtype.build.worker import build_variant
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.results import Status, VariantResult

# Peak resident memory of one worker building a dtype, x the model's size (bench/memory.py, --workers 1).
# Every build streams the weights (weights.py: the normalized base the workers read has its own .data file, whether
# the model came with external data or as one file): 0.75 GiB MLP, verification on (the fp32 session it needs is
# most of the peak), the process's own ~0.15 GiB included. q8 runs quantize_dynamic on stand-in weights
# (recipes/dynamic.py) and holds its int8 weights, a quarter of the model: 1.52x (1.60x the largest process).
# A single-file model's main process also holds it whole while loading and normalizing it: --dtype all peaked at
# 2.30x (1.85x with external data), before any worker started.
PEAK_PER_WORKER = {"fp16": 1.3, "q8": 1.7, "q4": 1.5, "bnb4": 1.5, "q4f16": 1.55}
# The static and int8 dtypes load the whole model (their recipes take no lazy weights): not measured yet, taken as the
# worst measured before streaming (q8, 9.5x).
UNMEASURED_PEAK = 9.5
GiB = 1 << 30


def worker_peak(model_bytes: int, dtypes: list[str]) -> int:
    """Bytes one worker is predicted to hold at its peak building `dtypes` of a model this size (the memory
    bench's factors, verification included)."""
    factor = max((PEAK_PER_WORKER.get(d, UNMEASURED_PEAK) for d in dtypes), default=UNMEASURED_PEAK)
    return int(model_bytes * factor)


def worker_count(workers: int | None, tasks: int, largest_file: int, dtypes: list[str]) -> int:
    """Parallel workers: as asked, else bounded by tasks, cores and the memory one worker is predicted to need.

    A plan that cannot fit even one worker in this machine's memory is refused before any work starts, with the
    figure and the way out, instead of the kernel killing a worker halfway."""
    per_worker = worker_peak(largest_file, dtypes)
    total = _memory("MemTotal")
    if total and per_worker > total:
        heavy = max(dtypes, key=lambda d: PEAK_PER_WORKER.get(d, UNMEASURED_PEAK))
        lightest = min(PEAK_PER_WORKER, key=PEAK_PER_WORKER.__getitem__)
        raise OnnxDtypeError(
            f"a {largest_file / GiB:.1f} GiB model needs about {per_worker / GiB:.1f} GiB in one worker for "
            f"{heavy} ({PEAK_PER_WORKER.get(heavy, UNMEASURED_PEAK):g}x its size); this machine has "
            f"{total / GiB:.1f} GiB: build fewer dtypes at a time ({lightest} needs the least, "
            f"{PEAK_PER_WORKER[lightest]:g}x)")
    if workers is not None:
        return max(1, workers)
    by_memory = max(1, int((_memory("MemAvailable") or 8 * GiB) // max(1.0, per_worker)))
    return max(1, min(tasks, os.cpu_count() or 1, by_memory))


def _memory(field: str) -> int | None:
    """A /proc/meminfo figure in bytes (MemAvailable counts reclaimable cache, unlike free pages), None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class WorkerPool:
    """`python -m onnxdtype.build.worker` processes, fed one JSON task per line; with size 1, tasks run inline.

    Plain subprocesses rather than multiprocessing: a user script calling quantize() needs no
    `if __name__ == "__main__"` guard, and a worker killed (say, by the OOM killer) fails only its
    own task. They start at once, so their imports overlap the main process's loading and normalizing.
    """

    def __init__(self, size: int) -> None:
        self.processes: list[subprocess.Popen] = [self._start() for _ in range(size)] if size > 1 else []

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "onnxdtype.build.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)

    def run(self, tasks: list[VariantTask]) -> Iterator[tuple[VariantTask, VariantResult]]:
        """Yield each task with its result as it finishes (a zoo's models may have modules of the same name)."""
        if not self.processes:
            for task in tasks:
                yield task, build_variant(task)
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
                task: VariantTask = pending.get_nowait()
            except queue.Empty:
                return
            process = self.processes[slot]
            if process.poll() is not None:
                process = self.processes[slot] = self._start()
            try:
                process.stdin.write(task.to_json() + "\n")  # type: ignore[union-attr]
                process.stdin.flush()  # type: ignore[union-attr]
                line = process.stdout.readline()  # type: ignore[union-attr]
            except BrokenPipeError:
                line = ""
            if line:
                done.put((task, VariantResult(**json.loads(line))))
            else:
                done.put((task, VariantResult(task.module, task.dtype, Status.FAILED,
                                              f"worker process died (exit code {process.wait()})",
                                              base_bytes=task.base_bytes)))

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
