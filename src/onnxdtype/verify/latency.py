"""Load time and latency of a variant against fp32, measured interleaved in one process so drift hits both.

Medians of N runs after warm-up, with one intra-op thread and with all threads; speedup = fp32 / variant.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxdtype.verify.evaluate import cast_feed, session


def _timed_session(path: Path, threads: int):
    start = time.perf_counter()
    sess = session(path, threads)
    return sess, time.perf_counter() - start


# speedups runs at least `runs` rounds and more until MIN_SECONDS have passed, up to MAX_ROUNDS_FACTOR x runs: PP-OCR
# cls (2 ms) timed in 20 rounds read its s8u8 chain at 0.87x in one call and 0.91x in the next of one build.
MIN_SECONDS, MAX_ROUNDS_FACTOR = 1.0, 20


def speedups(base: ort.InferenceSession, variants: list[ort.InferenceSession], feed: dict[str, np.ndarray],
             runs: int = 10, warmup: int = 2) -> list[float]:
    """fp32 median / each variant's median over rounds that run every session once (made with the thread count the
    caller wants), in turn and in reverse order every other round, so drift, other load and whatever the session
    before left in the caches hit every one alike."""
    sessions = [base, *variants]
    feeds = [cast_feed(sess, feed) for sess in sessions]
    for _ in range(warmup):
        for sess, sess_feed in zip(sessions, feeds):
            sess.run(None, sess_feed)
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    deadline = time.perf_counter() + MIN_SECONDS
    rounds = 0
    while rounds < runs or (time.perf_counter() < deadline and rounds < MAX_ROUNDS_FACTOR * runs):
        for index in (order if rounds % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            sessions[index].run(None, feeds[index])
            times[index].append(time.perf_counter() - start)
        rounds += 1
    medians = [statistics.median(t) for t in times]
    return [medians[0] / median for median in medians[1:]]


def measure(base_path: Path, variant_path: Path, feed: dict[str, np.ndarray], runs: int = 20, warmup: int = 3
            ) -> dict:
    """{'load_s': {...}, 'threads_1': {...}, 'threads_all': {...}} with medians in milliseconds and speedups."""
    figures: dict = {}
    for label, threads in (("threads_1", 1), ("threads_all", 0)):
        base, base_load = _timed_session(base_path, threads)
        variant, variant_load = _timed_session(variant_path, threads)
        if label == "threads_1":
            figures["load_s"] = {"fp32": round(base_load, 4), "variant": round(variant_load, 4)}
        base_feed, variant_feed = cast_feed(base, feed), cast_feed(variant, feed)
        for _ in range(warmup):
            base.run(None, base_feed)
            variant.run(None, variant_feed)
        base_times, variant_times = [], []
        for _ in range(runs):
            for sess, sess_feed, times in ((base, base_feed, base_times), (variant, variant_feed, variant_times)):
                start = time.perf_counter()
                sess.run(None, sess_feed)
                times.append(time.perf_counter() - start)
        base_ms, variant_ms = statistics.median(base_times) * 1e3, statistics.median(variant_times) * 1e3
        figures[label] = {"fp32_ms": round(base_ms, 3), "variant_ms": round(variant_ms, 3),
                          "speedup": round(base_ms / variant_ms, 3) if variant_ms else None, "runs": runs}
    return figures
