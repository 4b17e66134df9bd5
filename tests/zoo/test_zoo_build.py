"""A zoo on this machine (the local executor): it builds and indexes, a rerun does nothing, and an edit or a new
dtype redoes only the tasks whose content key changed."""

from __future__ import annotations

import pytest
import zookit

from onnxdtype.manifest import read_manifest
from onnxdtype.zoo import build_zoo


def test_a_zoo_builds_indexes_and_a_rerun_skips_every_task(tmp_path):
    spec, out = zookit.tiny_zoo(tmp_path), tmp_path / "out"
    finished = []
    first = build_zoo(spec, out, max_parallel=2, progress=lambda s: s.finished and finished.append(
        (s.model, s.finished.module, s.finished.dtype)))
    cells = zookit.cells(out)
    assert sorted(cells) == sorted([("mlp", "mlp", d) for d in ("fp16", "q8", "s8u8")]
                                   + [("pair", m, d) for m in ("conv", "head") for d in ("fp16", "q8")])
    assert sorted(finished) == sorted(cells)  # a line per finished variant
    assert {c["status"] for c in cells.values()} == {"ok"} and all(c["built_this_run"] for c in cells.values())
    assert first.progress.total == len(cells) + 1 and first.progress.done == first.progress.total  # + mlp's calibration
    assert all(c["size_ratio"] and c["speedup"] and len(c["key"]) == 64 for c in cells.values())
    zookit.assert_vouched(out)
    assert not read_manifest(out / "mlp")["modules"]["mlp"]["calibration"]["cached"]  # calibrated by the driver
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 1 + 2 and 'href="mlp/report.html"' in page and 'href="pair/report.html"' in page
    assert (out / "mlp" / "report.html").exists() and (out / "pair" / "report.html").exists()

    before = zookit.mtimes(out)
    again = build_zoo(spec, out)
    assert again.progress.total == 0 and again.progress.skipped == len(cells)
    assert zookit.mtimes(out) == before
    assert zookit.cells(out).keys() == cells.keys()
    assert not any(c["built_this_run"] for c in zookit.cells(out).values())


def test_a_new_dtype_or_an_option_edit_runs_only_its_tasks(tmp_path):
    spec, out = zookit.tiny_zoo(tmp_path), tmp_path / "out"
    spec.write_text(zookit.TINY_SPEC.replace('dtypes = ["fp16", "q8"]\n', 'dtypes = ["fp16"]\n', 1)
                    .replace('dtypes = ["fp16", "q8", "s8u8"]', 'dtypes = ["fp16"]'))
    build_zoo(spec, out, max_parallel=1)
    fp16 = zookit.mtimes(out)
    spec.write_text(zookit.TINY_SPEC.replace('dtypes = ["fp16", "q8", "s8u8"]', 'dtypes = ["fp16", "q8"]'))
    added = build_zoo(spec, out, max_parallel=1)
    built = {k for k, c in zookit.cells(out).items() if c["built_this_run"]}
    assert built == {("mlp", "mlp", "q8"), ("pair", "conv", "q8"), ("pair", "head", "q8")}
    assert added.progress.skipped == 3 and added.progress.total == 3
    assert all(zookit.mtimes(out)[p] == t for p, t in fp16.items())  # the fp16 files were not touched

    spec.write_text(spec.read_text().replace('name = "pair"', 'name = "pair"\noptions = {q8 = {per_channel = false}}'))
    edited = build_zoo(spec, out, max_parallel=1)
    built = {k for k, c in zookit.cells(out).items() if c["built_this_run"]}
    assert built == {("pair", "conv", "q8"), ("pair", "head", "q8")} and edited.progress.total == 2
    zookit.assert_vouched(out)


def test_models_with_modules_of_one_name_keep_their_own_folders(tmp_path):
    import tinymodels

    tinymodels.save(tinymodels.mlp(), tmp_path / "a" / "model.onnx")
    tinymodels.save(tinymodels.mlp(hidden=16), tmp_path / "b" / "model.onnx")
    spec = {"defaults": {"dtypes": ["fp16", "q4"], "latency_runs": 0},
            "models": [{"name": "a", "path": "a/model.onnx"}, {"name": "b", "path": "b"}]}
    build_zoo(spec, tmp_path / "out", root=tmp_path, max_parallel=1)
    cells = zookit.cells(tmp_path / "out")
    assert cells[("a", "model", "fp16")]["sha256"] != cells[("b", "model", "fp16")]["sha256"]
    assert cells[("a", "model", "q4")]["status"] in ("ok", "not_applicable")
    zookit.assert_vouched(tmp_path / "out")


def test_a_rerun_after_the_driver_is_killed_does_only_what_is_missing(tmp_path):
    import os
    import subprocess
    import sys

    spec, out = zookit.tiny_zoo(tmp_path), tmp_path / "out"
    killed_after_first = ("import os, sys\nfrom onnxdtype.zoo import build_zoo\n"
                          "build_zoo(sys.argv[1], sys.argv[2], max_parallel=1, progress=lambda s: s.finished and "
                          "os.kill(os.getpid(), 9))\n")
    run = subprocess.run([sys.executable, "-c", killed_after_first, str(spec), str(out)], env=os.environ.copy(),
                         capture_output=True, timeout=300)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    survived = zookit.mtimes(out)
    variants = [p for p in survived if p.stem.endswith(("_fp16", "_q8", "_s8u8"))]
    assert len(variants) == 1  # published (vouched) before the kill
    resumed = build_zoo(spec, out, max_parallel=1)
    cells = zookit.cells(out)
    assert resumed.progress.skipped == 1 and sum(c["built_this_run"] for c in cells.values()) == len(cells) - 1
    assert zookit.mtimes(out)[variants[0]] == survived[variants[0]]
    zookit.assert_vouched(out)


def test_a_zoo_one_local_worker_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    import onnxdtype.build.pool as pool
    from onnxdtype.errors import OnnxDtypeError

    spec = zookit.tiny_zoo(tmp_path)
    size = (tmp_path / "models" / "mlp.onnx").stat().st_size
    monkeypatch.setattr(pool, "_memory", lambda field: size * 2)
    with pytest.raises(OnnxDtypeError, match=r"needs about .* GiB in one worker"):
        build_zoo(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_memory_estimate_takes_the_local_plans_factors(tmp_path):
    """Ray's memory request is the local plan's: the streamed factor for a dtype whose recipe streams the weights
    (every normalized base has its own .data file), the unmeasured one for the static dtypes."""
    from onnxdtype.build.pool import PEAK_PER_WORKER, UNMEASURED_PEAK
    from onnxdtype.build.task import VariantTask
    from onnxdtype.zoo.executors import memory_estimate

    for dtype, factor in (("fp16", PEAK_PER_WORKER["fp16"]), ("s8u8", UNMEASURED_PEAK)):
        task = VariantTask("m", dtype, str(tmp_path / "m.onnx"), [], {}, str(tmp_path), base_bytes=1 << 30)
        assert memory_estimate(task) == int((1 << 30) * factor)
