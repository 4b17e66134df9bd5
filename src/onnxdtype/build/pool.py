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
from onnxdtype.results import Status, VariantResult

MEMORY_PER_WORKER = 8  # x the largest model: what one worker held at peak in bench/memory.py


def worker_count(workers: int | None, tasks: int, largest_file: int) -> int:
    """Parallel workers: as asked, else bounded by tasks, cores, and memory."""
    if workers is not None:
        return max(1, workers)
    by_memory = max(1, _available_memory() // max(1, MEMORY_PER_WORKER * largest_file))
    return max(1, min(tasks, os.cpu_count() or 1, by_memory))


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


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

    def run(self, tasks: list[VariantTask]) -> Iterator[VariantResult]:
        """Yield each task's result as it finishes."""
        if not self.processes:
            for task in tasks:
                yield build_variant(task)
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
                done.put(VariantResult(**json.loads(line)))
            else:
                done.put(VariantResult(task.module, task.dtype, Status.FAILED,
                                       f"worker process died (exit code {process.wait()})", base_bytes=task.base_bytes))

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
