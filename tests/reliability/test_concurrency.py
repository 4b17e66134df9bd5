"""Processes racing on one output folder: never a corrupt file or manifest, every process succeeds (one waits).

Each round starts two child processes that import everything, wait at a start line, and then run at the same
moment: two `onnxdtype quantize` on one folder (the same or overlapping dtypes), two runtime on-demand builds
(`Config.from_file(model, dtype="q4", missing="build")`), or one of each. Meanwhile this process reads the
manifest in a loop: it must always parse, and every file it lists that is there must match its sha256.
Afterwards `check_folder` holds and each variant was built once: one process reports it built ("ok"/"built"),
the other found it ("kept"/"manifest"). ONNXDTYPE_RACE_ROUNDS sets the rounds per test (default 3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import reliability_kit as kit
import tinymodels

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import read_manifest
from onnxdtype.model import sha256_file

ROUNDS = int(os.environ.get("ONNXDTYPE_RACE_ROUNDS", "3"))
RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import onnxdtype.build, onnxdtype.cli, onnxdtype.runtime
    ready, go, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ready.touch()
    while not go.exists():
        time.sleep(0.002)
    if mode == "cli":
        sys.argv = ["onnxdtype", *sys.argv[4:]]
        onnxdtype.cli.main()
    else:
        model, dtype = sys.argv[4:6]
        resolved = onnxdtype.runtime.Config.from_file(model, dtype=dtype, missing="build").commit()["model"]
        print(json.dumps({"how": resolved.how, "file": str(resolved.file), "sha256": onnxdtype.model.sha256_file(resolved.file)}))
""")


class ManifestWatcher(threading.Thread):
    """Reads the folder's manifest in a loop while the racers run; records anything it could not trust."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.reads, self.problems, self.stop = folder, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                manifest = read_manifest(self.folder)
                for entry in manifest["modules"].values():
                    for variant in entry.get("variants", {}).values():
                        path = self.folder / (variant.get("file") or "")
                        if variant["status"] == "ok" and path.is_file() and sha256_file(path) != variant["sha256"]:
                            self.problems.append(f"{variant['file']}: sha256 differs while listed ok")
                self.reads += 1
            except OnnxDtypeError as exc:
                self.problems.append(str(exc))
            time.sleep(0.005)


def race(tmp_path: Path, *jobs: tuple[str, ...], watch: Path) -> list[subprocess.CompletedProcess]:
    """Start every job (mode, args...) at the same moment; return their completed processes in order."""
    go = tmp_path / "go"
    go.unlink(missing_ok=True)
    children, readies = [], []
    for i, (mode, *args) in enumerate(jobs):
        ready = tmp_path / f"ready{i}"
        ready.unlink(missing_ok=True)
        readies.append(ready)
        children.append(subprocess.Popen([sys.executable, "-c", RACER, str(ready), str(go), mode, *map(str, args)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env=kit.env_for_children()))
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a racer died early"
        time.sleep(0.005)
    watcher = ManifestWatcher(watch)
    watcher.start()
    go.touch()
    done = []
    try:
        for child in children:
            out, err = child.communicate(timeout=180)
            done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    finally:
        watcher.stop.set()
        watcher.join()
        for child in children:
            if child.poll() is None:
                child.kill()
    assert watcher.problems == [], watcher.problems
    assert watcher.reads > 0
    return done


def statuses(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["dtype"]: r["status"] for r in json.loads(proc.stdout)["results"]}


FAST = ("--workers", "1", "--latency-runs", "0", "--json")
PAIRS = [("fp16,q8,q4", "fp16,q8,q4"), ("fp16,q8", "q8,q4"), ("q4,bnb4", "fp16,q4")]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_quantize_processes_on_one_folder(tmp_path, round_):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "src" / "mlp.onnx")
    out = tmp_path / "out"
    first, second = PAIRS[round_ % len(PAIRS)]
    a, b = race(tmp_path, ("cli", "quantize", model, "-d", first, "-o", out, *FAST),
                ("cli", "quantize", model, "-d", second, "-o", out, *FAST), watch=out)
    sa, sb = statuses(a), statuses(b)
    for dtype in set(sa) & set(sb):  # built once: one process built it, the other waited and kept it
        assert sorted([sa[dtype], sb[dtype]]) == ["kept", "ok"], (dtype, sa, sb)
    wanted = set(first.split(",")) | set(second.split(","))
    assert kit.check_folder(out).listed == {"mlp.onnx": "base", **{f"mlp_{d}.onnx": "ok" for d in wanted}}
    assert kit.leftovers(out) == []


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_runtime_on_demand_builds_of_one_variant(tmp_path, round_):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "models" / "mlp.onnx")
    dtype = ("q4", "fp16", "q8")[round_ % 3]
    procs = race(tmp_path, ("config", model, dtype), ("config", model, dtype), watch=model.parent)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr[-3000:] for p in procs]
    answers = [json.loads(p.stdout) for p in procs]
    # the waiter finds the built file through the manifest (or, in the instant between the rename and the manifest
    # update that today's build.py has, by its name: the file is complete either way, and its sha256 checked below)
    assert sorted(a["how"] for a in answers) in (["built", "manifest"], ["built", "name"]), answers
    assert len({(a["file"], a["sha256"]) for a in answers}) == 1
    assert kit.check_folder(model.parent).listed == {"mlp.onnx": "base", f"mlp_{dtype}.onnx": "ok"}


def test_a_quantize_and_a_runtime_build_at_once(tmp_path):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "models" / "mlp.onnx")
    cli_run, runtime = race(tmp_path, ("cli", "quantize", model, "-d", "q4,q8", *FAST), ("config", model, "q4"),
                            watch=model.parent)
    built_by_cli = statuses(cli_run)["q4"] == "ok"
    assert runtime.returncode == 0, runtime.stderr
    assert json.loads(runtime.stdout)["how"] in (("manifest", "name") if built_by_cli else ("built",))
    assert statuses(cli_run)["q4"] in ("ok", "kept")
    assert kit.check_folder(model.parent).listed == {"mlp.onnx": "base", "mlp_q4.onnx": "ok", "mlp_q8.onnx": "ok"}
