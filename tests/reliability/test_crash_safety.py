"""SIGKILL during `onnxdtype quantize`: the folder stays trustworthy and a rerun finishes the job.

Each crash runs the real command line in a child process (crashrun.py) that SIGKILLs its process group, workers
included, at a chosen event of the main process: before or after a rename into the output folder (the base copy,
each variant, each manifest write, the report), or halfway through writing a model. After the kill:
  - the input is unchanged;
  - the folder is as before, or `check_folder` holds: the manifest parses, every model file there is complete,
    loads, and is vouched for by the manifest's sha256, and every file the manifest lists is there with that
    sha256 -- or absent, when the kill fell between writing a variant's entry and renaming the variant into place
    (no reader trusts a missing file; the rerun builds it);
then a rerun without --force finishes the job, keeping ("kept") what was complete and vouched, and leaves the
folder exactly listed. Leftover `.onnxdtype-tmp-*` entries must not get in the rerun's way.

Two schedules: named points, one per phase of the build (a variant is listed in the manifest before it takes its
name, so every point is finished by a rerun without --force); and a seeded random sample of all events plus a few
kills after seeded random delays (checks safety; counts any rerun that would need --force). For a long local
run: ONNXDTYPE_CRASH_POINTS=all (every event of the dry run) or a number (sample size; default 5), and
ONNXDTYPE_CRASH_SEED.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reliability_kit as kit
import tinymodels

from onnxdtype.build import quantize
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import sha256_file

DTYPES = "fp16,q8,q4"
VARIANTS = {"fp16": "mlp_fp16.onnx", "q8": "mlp_q8.onnx", "q4": "mlp_q4.onnx"}
SEED = int(os.environ.get("ONNXDTYPE_CRASH_SEED", "20240607"))
SAMPLE = os.environ.get("ONNXDTYPE_CRASH_POINTS", "5")
TALLY: dict[str, int] = {"crashes": 0, "reruns kept": 0, "reruns refused (known gap)": 0}



def run_crashing(model: Path, out: Path, kill_at: int = 0, *, match: str = "", workers: int = 1,
                 scope: str = "group", log: Path | None = None, kill_after: float | None = None) -> int:
    """quantize in a child session, SIGKILLed at event number `kill_at`, at the event matching `match` ("RE#K": the
    K-th match), or after `kill_after` seconds; its return code."""
    env = kit.env_for_children(ONNXDTYPE_CRASH_AT=str(kill_at), ONNXDTYPE_CRASH_MATCH=match,
                               ONNXDTYPE_CRASH_SCOPE=scope)
    if log is not None:
        env["ONNXDTYPE_CRASH_LOG"] = str(log)
    child = subprocess.Popen([sys.executable, str(kit.CRASHRUN), "quantize", str(model), "-d", DTYPES, "-o", str(out),
                              "--workers", str(workers), "--latency-runs", "0"], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after is not None:
            try:
                child.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        _, err = child.communicate(timeout=120)
    finally:
        if scope == "group":
            _kill_group(child.pid)
    if child.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"crash run ended {child.returncode}: {err[-2000:]}")
    return child.returncode


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tinymodels.save(tinymodels.mlp(), tmp_path_factory.mktemp("crash-src") / "mlp.onnx")


@pytest.fixture(scope="module")
def events(model, tmp_path_factory) -> tuple[list[str], float]:
    """The main process's events in one uninterrupted build (the same every run: workers=1), and its seconds."""
    folder = tmp_path_factory.mktemp("dry")
    log = folder / "events.txt"
    start = time.monotonic()
    assert run_crashing(model, folder / "out", log=log) == 0
    seconds = time.monotonic() - start
    kit.check_folder(folder / "out")
    return log.read_text().splitlines(), seconds


def after_crash(model: Path, out: Path, model_sha: str) -> kit.FolderState | None:
    """The crash invariant; None when the folder is as before (nothing but the lock file)."""
    TALLY["crashes"] += 1
    assert sha256_file(model) == model_sha, "the input changed"
    if not kit.names(out) - set(kit.leftovers(out)):
        return None
    # a listed file may be absent (killed between writing its manifest entry and renaming it into place): no
    # reader trusts a missing file, and the rerun builds it; a present file must match, an unlisted one is refused
    return kit.check_folder(out, base_sha={"mlp.onnx": model_sha}, allow_listed_missing=True)


def rerun_finishes(model: Path, out: Path, state: kit.FolderState | None) -> None:
    """A rerun without --force completes: what was vouched is kept, the rest built, the folder exactly listed."""
    vouched = {d for d, f in VARIANTS.items() if state and state.listed.get(f) == "ok" and f not in state.missing}
    result = quantize(model, DTYPES, out, workers=1, latency_runs=0)
    TALLY["reruns kept"] += len(vouched)
    assert {r.dtype: r.status for r in result.results} == {d: "kept" if d in vouched else "ok" for d in VARIANTS}
    final = kit.check_folder(out)
    assert final.listed == {"mlp.onnx": "base", **{f: "ok" for f in VARIANTS.values()}}


# Event names as regexes, so they hold whatever build.py names its temp files
NAMED_POINTS = [
    pytest.param(r"write mlp\.normalized0\.onnx", id="half-written-normalized-model"),
    pytest.param(r"after-replace mlp\.onnx", id="base-copied-not-listed"),
    pytest.param(r"before-replace onnxdtype\.json", id="first-manifest-not-renamed"),
    pytest.param(r"write mlp[._]fp16\.onnx", id="half-written-variant-in-temp"),
    pytest.param(r"before-replace mlp_fp16\.onnx", id="variant-complete-in-temp"),
    pytest.param(r"after-replace mlp_fp16\.onnx", id="variant-published"),
    pytest.param(r"write mlp[._]q4\.onnx", id="two-published-third-half-written"),
    pytest.param(r"after-replace onnxdtype\.json#2", id="second-manifest-write"),
    pytest.param(r"before-replace report\.html", id="all-listed-report-pending"),
]


@pytest.mark.parametrize("point", NAMED_POINTS)
def test_sigkill_at_each_phase_leaves_a_trustworthy_folder_and_a_rerun_finishes(model, tmp_path, point):
    out = tmp_path / "out"
    assert run_crashing(model, out, match=point) == -signal.SIGKILL, f"no event matched {point}"
    state = after_crash(model, out, sha256_file(model))
    rerun_finishes(model, out, state)


def test_main_process_killed_with_workers_running_orphans_exit_and_rerun_finishes(model, tmp_path):
    """The OOM killer's pick: only the main process dies, as the first worker result comes in; the workers see
    their pipes close and exit by themselves."""
    out = tmp_path / "out"
    log = tmp_path / "events.txt"
    env = kit.env_for_children(ONNXDTYPE_CRASH_MATCH=r"before-replace mlp_(fp16|q8|q4)\.onnx",
                               ONNXDTYPE_CRASH_SCOPE="process", ONNXDTYPE_CRASH_LOG=str(log))
    child = subprocess.Popen([sys.executable, str(kit.CRASHRUN), "quantize", str(model), "-d", DTYPES, "-o", str(out),
                              "--workers", "2", "--latency-runs", "0"], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=120) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(child.pid):
            time.sleep(0.1)
        assert not _group_alive(child.pid), "orphaned workers still running 30 s after the main process died"
    finally:
        _kill_group(child.pid)
    assert log.read_text().splitlines()[-1].startswith("before-replace mlp_"), log.read_text()
    rerun_finishes(model, out, after_crash(model, out, sha256_file(model)))


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _schedule(count: int, seconds: float) -> list[tuple[str, float]]:
    """('event', index) for a seeded sample of the dry run's events, one per stretch of the run, and ('delay', s)
    kills at seeded moments of the run's second half (the first is mostly imports)."""
    rng = random.Random(SEED)
    size = count if SAMPLE == "all" else min(int(SAMPLE), count)
    edges = [round(i * count / size) for i in range(size + 1)]
    chosen = [rng.randint(edges[i] + 1, edges[i + 1]) for i in range(size)]
    delays = [round(rng.uniform(0.5, 0.95) * seconds, 2) for _ in range(2)]
    return [("event", float(i)) for i in chosen] + [("delay", d) for d in delays]


def test_sigkill_at_seeded_random_points(model, events, tmp_path):
    events, seconds = events
    """Safety at every sampled point; a rerun finishes (counting any that would need --force)."""
    model_sha = sha256_file(model)
    schedule = _schedule(len(events), seconds)
    for n, (kind, value) in enumerate(schedule):
        out = tmp_path / f"out{n}"
        if kind == "event":
            code = run_crashing(model, out, int(value))
            assert code == -signal.SIGKILL, f"event {int(value)} ({events[int(value) - 1]}) never came"
        else:
            run_crashing(model, out, kill_after=value)
        assert sha256_file(model) == model_sha
        TALLY["crashes"] += 1
        if kit.names(out) - set(kit.leftovers(out)):
            state = kit.check_folder(out, base_sha={"mlp.onnx": model_sha}, allow_unlisted_complete=True,
                                     allow_listed_missing=True)
        else:
            state = None
        if state is not None and state.unlisted:
            with pytest.raises(OnnxDtypeError, match="exists and is not a verified onnxdtype output; use --force"):
                quantize(model, DTYPES, out, workers=1, latency_runs=0)
            TALLY["reruns refused (known gap)"] += 1
            quantize(model, DTYPES, out, workers=1, latency_runs=0, force=True)
            kit.check_folder(out)
        else:
            rerun_finishes(model, out, state)
    print(f"\ncrash schedule (seed {SEED}, {len(events)} events, dry run {seconds:.1f} s): "
          f"{[(k, v, events[int(v) - 1] if k == 'event' else '') for k, v in schedule]}; tally so far: {TALLY}")


LEFTOVER_POINTS = pytest.mark.parametrize("point", [r"before-replace mlp_fp16\.onnx", r"before-replace onnxdtype\.json"],
                                          ids=["temp-folder", "temp-manifest"])


@LEFTOVER_POINTS
def test_leftover_temp_entries_do_not_stop_a_rerun(model, tmp_path, point):
    out = tmp_path / "out"
    run_crashing(model, out, match=point)
    assert kit.leftovers(out), "the kill left no temp entry to test with"
    rerun_finishes(model, out, after_crash(model, out, sha256_file(model)))


@LEFTOVER_POINTS
def test_rerun_removes_leftover_temp_entries(model, tmp_path, point):
    out = tmp_path / "out"
    run_crashing(model, out, match=point)
    assert kit.leftovers(out)
    quantize(model, DTYPES, out, workers=1, latency_runs=0)
    assert kit.leftovers(out) == []
