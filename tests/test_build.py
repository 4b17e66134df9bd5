"""The build pipe on tiny models: files, manifest, applicability, and nothing lost on the way."""

import json
import math
import os
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from onnxdtype.build import find_modules, quantize
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import LOCK_NAME, MANIFEST_NAME, read_manifest
from onnxdtype.model import sha256_file


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_all_builds_applicable_dtypes_and_lists_the_rest(tiny, tmp_path):
    model = tiny("mlp", metadata={"labels": "a,b,c"})
    before = sha256_file(model)
    out = tmp_path / "out"
    result = quantize(model, "all", out, workers=1)
    status = {r.dtype: r.status for r in result.results}
    assert status == {"fp16": "ok", "q8": "ok", "q4": "ok", "q4f16": "ok", "bnb4": "ok",
                      "int8": "skipped", "s8s8": "skipped", "s8u8": "skipped", "u8u8": "skipped"}
    assert listing(out) == {"mlp.onnx", "mlp_fp16.onnx", "mlp_q8.onnx", "mlp_q4.onnx", "mlp_q4f16.onnx",
                            "mlp_bnb4.onnx", MANIFEST_NAME, LOCK_NAME}
    assert sha256_file(model) == before and sha256_file(out / "mlp.onnx") == before
    for r in result.results:
        if r.status == "ok":
            variant = onnx.load(str(out / r.file))
            assert {p.key: p.value for p in variant.metadata_props}["labels"] == "a,b,c"
            ort.InferenceSession(str(out / r.file), providers=["CPUExecutionProvider"])
    assert result.problems == []


def test_manifest_records_files_hashes_recipes_and_versions(tiny, tmp_path):
    out = tmp_path / "out"
    quantize(tiny("constant_weights"), "q4,fp16", out, workers=1)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == 1
    assert set(manifest["versions"]) == {"onnxdtype", "onnx", "onnxruntime"}
    module = manifest["modules"]["constant_weights"]
    assert module["base"]["file"] == "constant_weights.onnx"
    q4 = module["variants"]["q4"]
    assert q4["status"] == "ok" and q4["file"] == "constant_weights_q4.onnx"
    assert q4["sha256"] == sha256_file(out / q4["file"]) and q4["bytes"] == (out / q4["file"]).stat().st_size
    assert q4["params"]["blockwise4"]["block_size"] == 32 and q4["params"]["blockwise4"]["symmetric"] is True
    assert q4["normalized"] == ["2 Constant nodes -> initializers"]
    assert q4["op_changes"]["MatMulNBits"] == 1 and q4["op_changes"]["MatMul"] == -1
    assert not any(os.path.isabs(v["file"]) for v in module["variants"].values() if v["file"])


def test_q4f16_is_not_applicable_where_q4_is_not(tiny, tmp_path):
    result = quantize(tiny("conv"), "all", tmp_path / "out", workers=1)
    for dtype in ("q4", "q4f16", "bnb4"):
        assert result.by("conv", dtype).status == "not_applicable"
    assert result.by("conv", "q8").status == "ok"  # q8 quantizes Conv (SPEC.md)
    assert result.by("conv", "fp16").status == "ok"
    assert not (tmp_path / "out" / "conv_q4f16.onnx").exists()
    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["modules"]["conv"]["variants"]["q4f16"]["status"] == "not_applicable"
    assert manifest["modules"]["conv"]["variants"]["q4f16"]["file"] is None


def test_explicit_not_applicable_dtype_is_an_error_and_writes_no_variant(tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OnnxDtypeError, match="q4 is not applicable: no MatMul"):
        quantize(tiny("conv"), "q4", out, workers=1)
    assert not any(p.name.endswith("_q4.onnx") for p in out.iterdir())


def test_static_dtypes_need_calibration(tiny, tmp_path):
    with pytest.raises(OnnxDtypeError, match="s8u8: needs calibration data"):
        quantize(tiny("mlp"), "s8u8", tmp_path / "out")


def test_existing_unvouched_output_is_not_clobbered_without_force(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlp_q8.onnx").write_bytes(b"precious")
    with pytest.raises(OnnxDtypeError, match="exists and is not a verified onnxdtype output; use --force"):
        quantize(tiny("mlp"), "q8", out, workers=1)
    assert (out / "mlp_q8.onnx").read_bytes() == b"precious"
    assert listing(out) == {"mlp_q8.onnx", LOCK_NAME}
    quantize(tiny("mlp"), "q8", out, force=True, workers=1)
    assert (out / "mlp_q8.onnx").read_bytes() != b"precious"


def test_rerun_keeps_vouched_variants_and_rebuilds_tampered_ones_only_with_force(tiny, tmp_path):
    out = tmp_path / "out"
    model = tiny("mlp")
    quantize(model, "fp16,q8", out, workers=1)
    mtime = (out / "mlp_q8.onnx").stat().st_mtime_ns
    again = quantize(model, "fp16,q8", out, workers=1)
    assert {r.status for r in again.results} == {"kept"}
    assert (out / "mlp_q8.onnx").stat().st_mtime_ns == mtime
    (out / "mlp_q8.onnx").write_bytes(b"tampered")
    with pytest.raises(OnnxDtypeError, match="mlp_q8.onnx: exists"):
        quantize(model, "q8", out, workers=1)


def test_folder_input_builds_every_module_and_skips_variants(tiny, tmp_path):
    tiny("mlp", filename="textual.onnx")
    folder = tiny("conv", filename="visual.onnx").parent
    (folder / "visual_fp16.onnx").write_bytes(b"not a base")
    assert [m.name for m in find_modules(folder)] == ["textual", "visual"]
    result = quantize(folder, "fp16", force=True, workers=1)
    assert {(r.module, r.status) for r in result.results} == {("textual", "ok"), ("visual", "ok")}
    onnx.load(str(folder / "visual_fp16.onnx"))


@pytest.mark.parametrize("content, message", [
    (b"this is not onnx", "not a readable ONNX model"),
    (b"", "not an ONNX model"),
])
def test_bad_model_files_give_one_clear_error_and_write_nothing(tmp_path, content, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(OnnxDtypeError, match=message):
        quantize(bad, "all", out)
    assert not out.exists() or listing(out) <= {LOCK_NAME}


def test_truncated_model_is_refused(tiny, tmp_path):
    good = tiny("mlp").read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(OnnxDtypeError, match="truncated.onnx"):
        quantize(bad, "fp16", tmp_path / "out")


def test_already_quantized_model_is_refused_as_base(tiny, tmp_path):
    out = tmp_path / "out"
    quantize(tiny("mlp"), "q8", out, workers=1)
    with pytest.raises(OnnxDtypeError, match="already quantized"):
        quantize(out / "mlp_q8.onnx", "fp16", tmp_path / "again")


def test_folder_without_models_and_missing_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxDtypeError, match="no fp32 .onnx model"):
        quantize(tmp_path / "empty")
    with pytest.raises(OnnxDtypeError, match="no such file"):
        quantize(tmp_path / "missing.onnx")


def test_output_folder_that_is_a_file_or_cannot_be_created(tiny, tmp_path):
    model = tiny("mlp")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OnnxDtypeError, match="exists and is not a folder"):
        quantize(model, "fp16", blocker)
    with pytest.raises(OnnxDtypeError, match="cannot create output folder"):
        quantize(model, "fp16", blocker / "sub")
    assert blocker.read_text() == "x"


def test_parallel_workers_give_the_same_files_as_inline(tiny, tmp_path):
    model = tiny("mlp")
    inline = quantize(model, "fp16,q8,q4", tmp_path / "a", workers=1)
    parallel = quantize(model, "fp16,q8,q4", tmp_path / "b", workers=2)
    assert [(r.dtype, r.sha256) for r in inline.results] == [(r.dtype, r.sha256) for r in parallel.results]


def test_failure_inside_a_recipe_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    from onnxdtype.recipes import RECIPES

    def explode(model, options):
        raise RuntimeError("simulated crash in the quantizer")

    monkeypatch.setattr(RECIPES["blockwise4"], "build", explode)
    out = tmp_path / "out"
    result = quantize(tiny("mlp"), "fp16,q4", out, workers=1)
    assert result.by("mlp", "q4").status == "failed"
    assert result.by("mlp", "q4").reason == "RuntimeError: simulated crash in the quantizer"
    assert result.by("mlp", "fp16").status == "ok" and result.problems == [result.by("mlp", "q4")]
    assert listing(out) == {"mlp.onnx", "mlp_fp16.onnx", MANIFEST_NAME, LOCK_NAME}


def test_a_worker_process_that_dies_fails_only_its_variant(tiny, tmp_path, monkeypatch):
    """SIGKILL-like death of a worker (simulated by a worker command that exits at once)."""
    import onnxdtype.build.pool as build

    real_popen = build.subprocess.Popen

    def popen(args, **kwargs):
        return real_popen([build.sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit(9)"], **kwargs)

    monkeypatch.setattr(build.subprocess, "Popen", popen)
    out = tmp_path / "out"
    result = quantize(tiny("mlp"), "fp16,q8", out, workers=2)
    assert {r.status for r in result.results} == {"failed"}
    assert all("worker process died (exit code 9)" in r.reason for r in result.results)
    assert listing(out) == {"mlp.onnx", MANIFEST_NAME, LOCK_NAME}


def test_static_dtypes_share_one_calibration_and_verify_on_held_out_samples(tiny, tmp_path, monkeypatch):

    import onnxdtype.calibration.ranges as ranges
    from onnxdtype.build import Calibration

    data = random_samples(tmp_path / "calib", (4, 64))
    passes = []
    real_run = ranges._MinMaxPass.run
    monkeypatch.setattr(ranges._MinMaxPass, "run", lambda self, samples: passes.append(1) or real_run(self, samples))
    out = tmp_path / "out"
    result = quantize(tiny("mlp"), "s8s8,s8u8,u8u8", out, calib=Calibration(data), latency_runs=0, workers=1)
    assert [r.status for r in result.results] == ["ok", "ok", "ok"]
    assert passes == [1]  # one pass of the fp32 model over the data for three dtypes
    manifest = json.loads((out / MANIFEST_NAME).read_text())["modules"]["mlp"]
    calibration = manifest["calibration"]
    assert calibration["samples_used"] == 8 and calibration["held_out_for_eval"] == 2
    assert (out / calibration["ranges_file"]).exists()
    assert result.by("mlp", "s8u8").verification["data"].startswith("held-out 2 of the calibration samples")
    assert not result.by("mlp", "s8u8").verification["synthesized"]
    again = quantize(tiny("mlp"), "s8s8", tmp_path / "again", calib=Calibration(data), latency_runs=0, workers=1)
    assert again.by("mlp", "s8s8").status == "ok" and passes == [1, 1]  # another folder: its own cache


def test_static_dtypes_of_a_model_with_external_data_use_their_calibration(tmp_path):
    """The main process calibrates the normalized model with its weights lazy, the worker's static recipe checks the
    ranges against it read in: the digest is the same (it was not: every static variant failed, "computed for
    another model")."""
    import tinymodels

    from onnxdtype.build import Calibration

    model = tmp_path / "in" / "mlp.onnx"
    model.parent.mkdir()
    onnx.save(tinymodels.mlp(), str(model), save_as_external_data=True, location="mlp.onnx.data", size_threshold=0)
    result = quantize(model, "s8s8", tmp_path / "out", calib=Calibration(random_samples(tmp_path / "calib", (4, 64))),
                      latency_runs=0, workers=1)
    assert result.by("mlp", "s8s8").status == "ok", result.by("mlp", "s8s8").reason


def test_calibration_data_for_a_folder_of_modules_needs_one_subfolder_each(tiny, tmp_path):
    from onnxdtype.build import Calibration

    tiny("mlp", filename="a.onnx")
    folder = tiny("mlp", filename="b.onnx").parent
    (tmp_path / "calib").mkdir()
    with pytest.raises(OnnxDtypeError, match="one subfolder per module"):
        quantize(folder, "s8u8", tmp_path / "out", calib=Calibration(tmp_path / "calib"))


def test_weights_inside_if_branches_get_q8_and_with_fix_input_the_static_dtypes(tmp_path):
    """A streaming model whose weights live in Constant nodes inside If branches, chosen by an input."""
    import numpy as np
    import tinymodels

    from onnxdtype.build import Calibration
    from onnxdtype.runtime import Config

    model = tinymodels.save(tinymodels.streaming_model("int"), tmp_path / "stream.onnx")
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        np.savez(data / f"{i}.npz", x=rng.random((1, 3, 8, 8), np.float32), mode=np.array([1], np.int64))
    q8 = quantize(model, "q8", tmp_path / "q8", latency_runs=0, workers=1).by("stream", "q8")
    assert q8.status == "ok" and q8.op_changes.get("MatMulInteger", 0) > 0  # inside the branches
    with pytest.raises(OnnxDtypeError, match=r"inside If branches.*--fix-input \(candidates: mode\)"):
        quantize(model, "s8u8", tmp_path / "refused", calib=Calibration(data), workers=1)
    out = tmp_path / "fixed"
    s8u8 = quantize(model, "s8u8", out, calib=Calibration(data), fixed_inputs=["mode=1"], latency_runs=0,
                    workers=1, tasks={"stream": "generic"}).by("stream", "s8u8")  # random weights: no real task
    assert s8u8.status == "ok", s8u8.reason
    assert s8u8.op_changes["QuantizeLinear"] > 0 and s8u8.op_changes["DequantizeLinear"] > 0
    assert s8u8.params["specialize"]["fixed"] == {"mode": [1]} and s8u8.normalized[0] == "specialize (mode=[1])"
    built = onnx.load(str(out / "stream_s8u8.onnx"))
    assert built.graph.input[1].name == "mode"  # the interface is kept
    assert "If" not in {n.op_type for n in built.graph.node} and s8u8.params["specialize"]["inlined_ifs"] == 1
    engine = Config.from_dir(out, dtype="s8u8").engine("stream")
    x = rng.random((1, 3, 8, 8), np.float32)
    assert engine.run({"x": x, "mode": np.array([1])})["out"].shape == (1, 8, 8, 8)
    with pytest.raises(OnnxDtypeError, match="'mode' was fixed to \\[1\\]"):
        engine.run({"x": x, "mode": np.array([0])})
    from onnxdtype.verify.recheck import verify_folder

    assert verify_folder(out, latency_runs=0).by("stream", "s8u8").status == "ok"  # re-verified at mode=1
    with pytest.raises(OnnxDtypeError, match="no module has such an input"):
        quantize(model, "q8", tmp_path / "typo", fixed_inputs=["mood=1"], workers=1)


def random_samples(folder, shape: tuple[int, ...], count: int = 10):
    """`count` .npz feeds of standard-normal `x` in `folder` (calibration data for the tiny MLPs)."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        np.savez(folder / f"{i}.npz", x=rng.standard_normal(shape).astype(np.float32))
    return folder


def test_static_search_keeps_the_fastest_placement_that_passes_and_records_the_trail(tiny, tmp_path):
    from onnxdtype.build import Calibration
    from onnxdtype.build.search import CANDIDATES

    data = random_samples(tmp_path / "calib", (4, 64))
    result = quantize(tiny("mlp"), "u8u8", tmp_path / "out", calib=Calibration(data), latency_runs=0,
                      workers=1).by("mlp", "u8u8")
    assert result.status == "ok", result.reason
    trail = result.params["search"]
    placements = [c["options"]["static"] for c in trail["candidates"] if "repaired" not in c]
    assert placements == [dict(c) for c in CANDIDATES] and trail["chosen"] is not None
    chosen = trail["candidates"][trail["chosen"]]
    passed = [c for c in trail["candidates"] if c["failure"] is None]
    originals = [c for c in trail["candidates"] if "repaired" not in c]
    fastest_passing = max(c["speedup_1thread"] for c in originals if c["failure"] is None)
    for repaired in (c for c in trail["candidates"] if "repaired" in c):  # only a faster failing placement
        before = next(c for c in originals if c["options"] == repaired["options"])
        assert before["failure"] and before["speedup_1thread"] > fastest_passing
    fastest = max(c["speedup_1thread"] for c in passed)
    three = sorted(passed, key=lambda c: -c["speedup_1thread"])[:3]
    within = [c for c in passed if c["speedup_1thread"] >= 0.9 * fastest or c in three]
    runoff = [c for c in passed if "runoff_speedup_1thread" in c]  # the 3 fastest and any within 10 %, timed again
    assert runoff == within
    speed = chosen.get("runoff_speedup_1thread", chosen["speedup_1thread"])
    assert speed == max((c["runoff_speedup_1thread"] for c in runoff), default=fastest)
    assert result.params["static"]["kernel_ops_only"] == chosen["options"]["static"]["kernel_ops_only"]
    slower = "no passing placement is faster than fp32" in " ".join(result.notes)
    assert slower == (speed < 1.0)  # a variant slower than fp32 says so
    plain = quantize(tiny("mlp"), "u8u8", tmp_path / "plain", calib=Calibration(data), latency_runs=0, workers=1,
                     search=False).by("mlp", "u8u8")
    assert "search" not in plain.params and plain.params["static"]["kernel_ops_only"] is True
    fixed = quantize(tiny("mlp"), "u8u8", tmp_path / "fixed", calib=Calibration(data), latency_runs=0, workers=1,
                     options={"static": {"equalize": False}}).by("mlp", "u8u8")
    assert "search" not in fixed.params  # an option the search varies was set by the user: their choice stands


def test_static_search_repairs_the_closest_placement_when_none_passes_and_reports_it_failed(tiny, tmp_path):
    """No placement survives mm2's outlier weights: the search repairs the one closest to passing (not the default
    placement once more) and, with nothing left within the repair budget, the variant fails with both trails."""
    from onnxdtype.build import Calibration

    data = random_samples(tmp_path / "calib", (8, 64))
    result = quantize(tiny("outlier_matmul"), "u8u8", tmp_path / "out", calib=Calibration(data), latency_runs=0,
                      workers=1).by("outlier_matmul", "u8u8")
    assert result.status == "failed" and "repair budget" in result.reason
    trail = result.params["search"]
    repaired = [c for c in trail["candidates"] if "repaired" in c]
    assert len(repaired) == 1 and trail["chosen"] == trail["candidates"].index(repaired[0])
    assert repaired[0]["repaired"]["kept"] and "budget" in result.verification["repair"]["failure"]
    assert all(c["failure"] for c in trail["candidates"])


def test_static_search_retries_failing_int8_weight_placements_with_seven_bit_weights(tiny, tmp_path):
    """s8u8 (int8 weights): each failing placement faster than every passing one is tried again with 7-bit weights
    (onnxruntime's U8S8 kernels saturate on x86 without VNNI); u8u8's uint8 weights are never retried."""
    from onnxdtype.build import Calibration
    from onnxdtype.build.search import CANDIDATES

    data = random_samples(tmp_path / "calib", (8, 64))
    result = quantize(tiny("outlier_matmul"), "s8u8", tmp_path / "out", calib=Calibration(data), latency_runs=0,
                      workers=1).by("outlier_matmul", "s8u8")
    candidates = [c for c in result.params["search"]["candidates"] if "repaired" not in c
                  and "method" not in c["options"]["static"]]  # the retries on other ranges: the next test
    placements = [c for c in candidates if "reduce_range" not in c["options"]["static"]]
    retries = [c for c in candidates if c["options"]["static"].get("reduce_range")]
    assert [c["options"]["static"] for c in placements] == [dict(c) for c in CANDIDATES]
    fastest_passing = max((c["speedup_1thread"] for c in placements if c["failure"] is None), default=0.0)
    worth = sorted((c for c in placements if c["failure"] and c["speedup_1thread"] > fastest_passing),
                   key=lambda c: -c["speedup_1thread"])  # fastest first; a passing retry rules out slower ones
    assert retries and [{**c["options"]["static"], "reduce_range": True} for c in worth][:len(retries)] == \
        [c["options"]["static"] for c in retries]
    if all(c["failure"] for c in retries):  # no retry passed, so none was left out
        assert len(retries) == len(worth)


def test_static_search_retries_failing_placements_on_mse_clipped_ranges(tiny, tmp_path):
    """After the 7-bit retries, each failing placement faster than every passing one is built again on MSE-clipped
    ranges of the same calibration samples (a second pass, its file beside the first and named in the manifest),
    fastest first, until a retry that passes leaves only slower ones; a method the user chose (--calib-method) is
    searched alone."""
    from onnxdtype.build import Calibration

    data = random_samples(tmp_path / "calib", (8, 64))
    out = tmp_path / "out"
    result = quantize(tiny("outlier_matmul"), "s8u8", out, calib=Calibration(data), latency_runs=0,
                      workers=1).by("outlier_matmul", "s8u8")
    candidates = [c for c in result.params["search"]["candidates"] if "repaired" not in c]
    first = [c for c in candidates if "method" not in c["options"]["static"]]
    on_mse = [c for c in candidates if c["options"]["static"].get("method") == "mse"]
    calibration = read_manifest(out)["modules"]["outlier_matmul"]["calibration"]
    mse_file = calibration["search_ranges"]["mse"]["ranges_file"]
    original = {json.dumps({**c["options"]["static"], "method": "mse", "ranges_file": mse_file}, sort_keys=True): c
                for c in first}
    retried = [original[json.dumps(c["options"]["static"], sort_keys=True)] for c in on_mse]
    assert retried and [c["speedup_1thread"] for c in retried] == sorted((c["speedup_1thread"] for c in retried),
                                                                         reverse=True)  # fastest first

    def fastest_passing(entries):
        return max((c["speedup_1thread"] for c in entries if c["failure"] is None), default=0.0)

    for i, c in enumerate(retried):  # each failed, and ran faster than all that passed before its retry
        assert c["failure"] and c["speedup_1thread"] > fastest_passing(first + on_mse[:i])
    for c in first:  # the failing ones left out were slower than a retry that passed
        if c["failure"] and c not in retried:
            assert c["speedup_1thread"] <= fastest_passing(first + on_mse)
    assert (out / mse_file).exists() and mse_file != calibration["ranges_file"]
    assert json.loads((out / mse_file).read_text())["onnxdtype"]["method"] == "mse"
    chosen = Calibration(data, method="percentile")
    again = quantize(tiny("outlier_matmul"), "s8u8", tmp_path / "percentile", calib=chosen, latency_runs=0,
                     workers=1).by("outlier_matmul", "s8u8")
    assert not any("method" in c["options"]["static"] for c in again.params["search"]["candidates"])
    assert "search_ranges" not in read_manifest(tmp_path / "percentile")["modules"]["outlier_matmul"]["calibration"]


def test_yolo_like_detector_gets_a_verified_q8_with_conv_quantized(tmp_path):
    """The seed's q8 on a pure Conv net: ConvInteger for every Conv (per-channel weights), judged per channel of the
    [boxes | scores] head on inputs it was not built from."""
    import numpy as np
    import tinymodels

    from onnxdtype.verify.evaluate import EvalData

    model = tinymodels.save(tinymodels.detector(), tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    data = EvalData([{"x": rng.random((1, 3, 64, 64), np.float32)} for _ in range(8)], "random images", False)
    result = quantize(model, "q8", tmp_path / "out", eval_data=data, latency_runs=0, workers=1).by("det", "q8")
    assert result.status == "ok", result.reason
    assert result.op_changes["ConvInteger"] == 4 and result.op_changes["Conv"] == -4
    assert result.verification["outputs"]["y"]["worst_channel"]["cosine"] >= 0.99
    assert "4 ConvInteger weights per output channel" in " ".join(result.notes)


def test_a_single_file_model_is_streamed_to_the_workers_and_published_as_single_files(tiny, tmp_path, monkeypatch):
    """The workers read a normalized base with its weights in its own .data file (so they stream them, as for an
    external-data model), yet every variant of a base given as one file is published as one file."""
    import onnxdtype.build.pool as pool
    from onnxdtype.weights import data_file

    handed: list[tuple[Path, bool]] = []

    def recording(task):
        handed.append((Path(task.norm_path), data_file(Path(task.norm_path)).exists()))
        return build_variant(task)

    build_variant = pool.build_variant
    monkeypatch.setattr(pool, "build_variant", recording)
    out = tmp_path / "out"
    model = tiny("mlp")
    result = quantize(model, "fp16,q8,q4", out, workers=1)
    assert {r.status for r in result.results} == {"ok"}
    assert handed and all(has_data for _, has_data in handed)
    assert listing(out) == {"mlp.onnx", "mlp_fp16.onnx", "mlp_q8.onnx", "mlp_q4.onnx", MANIFEST_NAME, LOCK_NAME}
    for r in result.results:
        variant = onnx.load(str(out / r.file), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in variant.graph.initializer)
    assert not any(path.parent.exists() for path, _ in handed)  # the build's temp folder is gone
    assert (out / "mlp.onnx").read_bytes() == model.read_bytes()  # the base: byte for byte


def test_a_single_file_base_is_held_as_its_graph_once_normalized(tiny, tmp_path):
    """The build's main process no longer holds a single-file base's weights while the workers run (bench/memory.py
    --single-file: 2.96x the model at the peak before, 2.21x after): normalize_once moves them out, keeps the graph."""
    from onnxdtype.build.plan import Module, normalize_once
    from onnxdtype.dtype import DType
    from onnxdtype.model import load_model, model_bytes

    path = tiny("mlp")
    base = load_model(path)
    held, nodes = model_bytes(base), [n.name for n in base.graph.node]
    work = tmp_path / "work"
    work.mkdir()
    plan = normalize_once(Module("mlp", path), base, [DType("fp16"), DType("q4")], work)
    assert plan.single_file and held > 10_000 and model_bytes(plan.base) < 1024
    assert [n.name for n in plan.base.graph.node] == nodes
    assert not list(work.glob("*.whole.onnx*"))  # the copy the weights moved to is gone
    assert all(model_bytes(onnx.load(str(n.path))) == held for n in plan.normalized.values())  # weights all there


def test_a_plan_that_cannot_fit_in_memory_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    import onnxdtype.build.pool as pool

    model = tiny("mlp")  # one file: streamed like a model with external data (its normalized base has a .data file)
    size = model.stat().st_size
    factors = pool.PEAK_PER_WORKER
    room = (factors["q4"] + factors["q8"]) / 2
    monkeypatch.setattr(pool, "_memory", lambda field: int(size * room))  # room for q4, not for q8
    with pytest.raises(OnnxDtypeError, match=rf"needs about .* GiB in one worker for q8 \({factors['q8']:g}x its"):
        quantize(model, "q8,q4", tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert quantize(model, "q4", tmp_path / "out", verify=False, latency_runs=0).by("mlp", "q4").status == "ok"
    assert pool.worker_count(None, 4, size, ["q4"]) == 1  # MemAvailable fits one worker


def test_a_model_with_external_data_is_planned_with_the_streamed_factors(tmp_path, monkeypatch):
    import onnx
    import tinymodels

    import onnxdtype.build.pool as pool

    model = tmp_path / "in" / "mlp.onnx"
    model.parent.mkdir()
    onnx.save(tinymodels.mlp(), str(model), save_as_external_data=True, location="mlp.onnx.data", size_threshold=0)
    size = model.stat().st_size + (tmp_path / "in" / "mlp.onnx.data").stat().st_size
    factors = pool.PEAK_PER_WORKER
    room = (factors["q4"] + factors["q8"]) / 2
    monkeypatch.setattr(pool, "_memory", lambda field: int(size * room))  # room for streamed q4, not for q8
    with pytest.raises(OnnxDtypeError, match=rf"for q8 \({factors['q8']:g}x its size"):
        quantize(model, "q8,q4", tmp_path / "out")
    assert quantize(model, "q4", tmp_path / "out", latency_runs=0).by("mlp", "q4").status == "ok"


def test_verify_reuses_the_evaluation_data_the_build_used(tiny, tmp_path):
    """--eval DATA is what the manifest records (not the held-out calibration samples), and what `verify` reads."""
    import numpy as np

    from onnxdtype.build import Calibration
    from onnxdtype.verify.recheck import verify_folder

    rng = np.random.default_rng(0)
    for name, count in (("calib", 10), ("eval", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            np.savez(tmp_path / name / f"{i}.npz", x=rng.standard_normal((4, 64)).astype(np.float32))
    out = tmp_path / "out"
    quantize(tiny("mlp"), "u8u8", out, calib=Calibration(tmp_path / "calib"), eval_data=tmp_path / "eval",
             latency_runs=0, workers=1, search=False)
    recorded = json.loads((out / MANIFEST_NAME).read_text())["modules"]["mlp"]["evaluation"]
    assert recorded == {"data": str((tmp_path / "eval").resolve()), "image_spec": None, "held_out": None}
    again = verify_folder(out, latency_runs=0).by("mlp", "u8u8")
    assert again.status == "ok" and again.verification["data"].startswith("3 samples") and \
        not again.verification["synthesized"]
    quantize(tiny("mlp"), "u8u8", out, calib=Calibration(tmp_path / "calib"), latency_runs=0, workers=1,
             search=False, force=True)  # no --eval: the held-out part of the calibration data verifies
    recorded = json.loads((out / MANIFEST_NAME).read_text())["modules"]["mlp"]["evaluation"]
    assert recorded["data"] == str((tmp_path / "calib").resolve()) and recorded["held_out"] == 0.2
    assert verify_folder(out, latency_runs=0).by("mlp", "u8u8").verification["data"].startswith("held-out 2")


def _outlier_search(tmp_path: Path, dtype: str, model: onnx.ModelProto | None = None,
                    shape: tuple[int, ...] = (8, 64), min_cosine: float = 0.999) -> tuple:
    """What build.search takes for `model` (default: the outlier MLP, where no placement passes): model, its path,
    options, data, criteria and fp32's reference."""
    from tinymodels import outlier_matmul

    from onnxdtype.calibration import calibrate, load_samples
    from onnxdtype.normalize import normalize
    from onnxdtype.recipes import static
    from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, session

    model = normalize(model or outlier_matmul(), static.PASSES)[0]
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    calibration = calibrate(model, load_samples(random_samples(tmp_path / "calib", shape), model), "minmax",
                            tmp_path / "cache")
    options = {"static": static.options_for(dtype, static.Options(ranges_file=str(calibration.path)))}
    data = EvalData(list(load_samples(random_samples(tmp_path / "eval", shape, 4), model)), "eval", False)
    criteria = Criteria(min_cosine)
    return model, path, options, data, criteria, Reference(session(path), data, criteria, model)


def test_static_search_hands_its_repair_the_fp32_outputs_it_already_holds(tmp_path):
    """The search judges against the fp32 outputs its caller ran once (verify.Reference); the repair of its failing
    candidate judges against the same ones instead of running fp32 over the data again."""
    from onnxdtype.build import search as search_module
    from onnxdtype.build.worker import run_steps
    from onnxdtype.results import Status, VariantResult

    model, path, options, data, criteria, base = _outlier_search(tmp_path, "u8u8")
    handed = []

    def repair(built, trial_options, trial, base):
        handed.append(base)
        trial.verification = {"failure": "not repaired in this test"}
        return built

    search_module.search(model, str(path), ("static",), options, search_module.candidates_for(("static",), set()),
                         data, criteria, base, VariantResult("m", "u8u8", Status.OK), run_steps, repair)
    assert handed == [base]


@pytest.mark.parametrize("keeps_up", [0.0, math.inf])
def test_static_search_tries_the_fastest_passing_placement_with_its_first_weighted_ops_float(tmp_path, monkeypatch,
                                                                                            keeps_up):
    """Last, the runoff's winner is built again with its first 1, 2, 4... weighted ops float, while they hold at most
    FLOAT_FIRST_WEIGHTS of the weights and each keeps up with the fastest so far (FLOAT_FIRST_KEEPS_UP of it, timed
    beside it); the fastest of them is kept. The tiny detector's first conv holds 5.7 % of its weights: allowed
    here."""
    from tinymodels import detector

    from onnxdtype.build import search as search_module
    from onnxdtype.build.worker import run_steps
    from onnxdtype.results import Status, VariantResult

    model, path, options, data, criteria, base = _outlier_search(tmp_path, "u8u8", detector(), (1, 3, 64, 64), 0.9)
    assert search_module._float_first_counts(model) == []  # 5.7 % > FLOAT_FIRST_WEIGHTS
    monkeypatch.setattr(search_module, "FLOAT_FIRST_WEIGHTS", 1.0)
    monkeypatch.setattr(search_module, "FLOAT_FIRST_KEEPS_UP", keeps_up)
    assert search_module._float_first_counts(model) == [1, 2]  # fewer than its 4 weighted ops
    result = VariantResult("m", "u8u8", Status.OK)
    candidates = search_module.candidates_for(("static",), set())
    search_module.search(model, str(path), ("static",), options, candidates, data, criteria, base, result,
                         run_steps, None)
    trail = result.params["search"]["candidates"]
    runoff = [c for c in trail if "runoff_speedup_1thread" in c]
    tried = [c for c in trail if "float_first" in c["options"]["static"]]
    top = max(c["runoff_speedup_1thread"] for c in runoff)  # its winner (equal figures: the one the trials start from)
    start = next(c for c in runoff if c["runoff_speedup_1thread"] == top
                 and {**c["options"]["static"], "float_first": 1} == tried[0]["options"]["static"])
    assert "float_first" not in start["options"]["static"] and not any("runoff_speedup_1thread" in c for c in tried)
    expected = [1, 2] if keeps_up == 0.0 else [1]  # math.inf: the first one never keeps up, so the second is not tried
    assert [c["options"]["static"] for c in tried] == [{**start["options"]["static"], "float_first": first}
                                                        for first in expected]
    assert all(c["failure"] is None for c in tried)  # float layers only bring fp32 closer
    chosen = trail[result.params["search"]["chosen"]]
    assert chosen is start or chosen in tried
    for c in tried:  # timed beside the fastest before it; kept only when it beat it
        assert c["paired"]["this"] > 0 and c["paired"]["fastest_before"] > 0
    if chosen is not start:
        assert chosen["paired"]["this"] > chosen["paired"]["fastest_before"] and keeps_up == 0.0
    assert result.params["static"]["float_first"] == chosen["options"]["static"].get("float_first", 0)


@pytest.mark.parametrize("faster", [True, False])
def test_static_search_tries_each_kind_of_op_float_and_keeps_those_that_run_faster(tmp_path, monkeypatch, faster):
    """After the runoff its winner is built with each kind of static.FLOAT_KINDS the model has in float, on top of
    the kinds kept so far, timed beside the fastest so far; a kind is kept only when its trial ran faster. The
    timings are fixed here (the last session timed reads faster, or slower), so each decision is known."""
    from tinymodels import depthwise_pool

    from onnxdtype.build import search as search_module
    from onnxdtype.build.worker import run_steps
    from onnxdtype.results import Status, VariantResult

    model, path, options, data, criteria, base = _outlier_search(tmp_path, "s8u8", depthwise_pool(),
                                                                 (1, 8, 16, 16), 0.9)
    monkeypatch.setattr(search_module, "_float_first_counts", lambda source: [])
    step = 0.1 if faster else -0.1
    monkeypatch.setattr(search_module, "speedups",
                        lambda base_timed, sessions, feed, runs: [1.0 + step * i for i in range(len(sessions))])
    result = VariantResult("m", "s8u8", Status.OK)
    search_module.search(model, str(path), ("static",), options, search_module.candidates_for(("static",), set()),
                         data, criteria, base, result, run_steps, None)
    trail = result.params["search"]["candidates"]
    tried = [c["options"]["static"].get("float_kinds") for c in trail if "float_kinds" in c["options"]["static"]]
    assert tried == ([["depthwise"], ["depthwise", "MaxPool"]] if faster else [["depthwise"], ["MaxPool"]])
    chosen = trail[result.params["search"]["chosen"]]
    assert chosen["options"]["static"].get("float_kinds") == (["depthwise", "MaxPool"] if faster else None)
    assert result.params["static"]["float_kinds"] == (["depthwise", "MaxPool"] if faster else [])
    assert all("paired" in c for c in trail if "float_kinds" in c["options"]["static"] and c["failure"] is None)


def test_static_search_skips_the_candidates_after_its_budget_of_seconds(tmp_path):
    """The first candidate is always built; with the budget spent every later one, retries included, is recorded
    as skipped and never built."""
    from onnxdtype.build import search as search_module
    from onnxdtype.build.worker import run_steps
    from onnxdtype.results import Status, VariantResult

    model, path, options, data, criteria, base = _outlier_search(tmp_path, "s8u8")
    built = []

    def counting_steps(*args):
        built.append(args[2]["static"])
        return run_steps(*args)

    result = VariantResult("m", "s8u8", Status.OK)
    candidates = search_module.candidates_for(("static",), set())
    search_module.search(model, str(path), ("static",), options, candidates, data, criteria, base, result,
                         counting_steps, None, budget=search_module.SearchBudget(seconds=1e-9))
    trail = result.params["search"]["candidates"]
    assert len(built) == 1 and "task" in trail[0] and "skipped" not in trail[0]
    assert len(trail) >= len(candidates) and all("budget of 1e-09 s" in c["skipped"] for c in trail[1:])
    assert [c["options"] for c in trail[:len(candidates)]] == candidates


def test_quantize_hands_its_search_budget_to_the_search_and_refuses_a_bad_one(tiny, tmp_path):
    """quantize(search_budget=...) (the CLI's --search-seconds) reaches every variant's search; 0 s is refused."""
    from onnxdtype.build import Calibration
    from onnxdtype.build.search import SearchBudget

    data = random_samples(tmp_path / "calib", (8, 64))
    result = quantize(tiny("outlier_matmul"), "s8u8", tmp_path / "out", calib=Calibration(data), latency_runs=0,
                      workers=1, search_budget=SearchBudget(seconds=1e-6)).by("outlier_matmul", "s8u8")
    trail = result.params["search"]["candidates"]
    later = [c for c in trail[1:] if "repaired" not in c]  # the repair has its own budget (RepairBudget)
    assert "skipped" not in trail[0] and later and all("budget of 1e-06 s" in c["skipped"] for c in later)
    assert result.params["search"]["budget"] == {"seconds": 1e-6, "min_speedup": 0.0}
    for bad in ({"seconds": 0}, {"seconds": float("nan")}, {"min_speedup": -1.0}):
        with pytest.raises(OnnxDtypeError, match="the search's"):
            SearchBudget(**bad)


def test_a_searched_variant_below_the_latency_budget_fails_and_is_not_repaired(tiny, tmp_path):
    """--min-speedup: the fastest passing placement still slower than the budget fails the variant, said with its
    speed; failing candidates below it are not repaired (keeping nodes in float only slows them)."""
    from onnxdtype.build import Calibration
    from onnxdtype.build.search import SearchBudget

    data = random_samples(tmp_path / "calib", (8, 64))
    result = quantize(tiny("mlp"), "u8u8", tmp_path / "out", calib=Calibration(data), latency_runs=0, workers=1,
                      search_budget=SearchBudget(min_speedup=1000.0)).by("mlp", "u8u8")
    trail = result.params["search"]["candidates"]
    assert any(c.get("failure") is None and "speedup_1thread" in c for c in trail)  # one passed, but too slowly
    assert result.status == "failed" and "1000x fp32 at 1 thread" in result.reason and "latency budget" in result.reason
    assert not any("repaired" in c for c in trail)
    assert not (tmp_path / "out" / "mlp_u8u8.onnx").exists()


def test_a_worker_makes_fp32_s_reference_once_for_every_dtype_of_a_module(tmp_path):
    """fp32's runs and noise floor depend on the module, its data, judges and draws, not on a dtype's thresholds:
    the worker reuses them across dtypes and makes them again when any of those changes."""
    import numpy as np
    from tinymodels import mlp

    from onnxdtype.build import worker
    from onnxdtype.build.task import VerifySpec
    from onnxdtype.verify.evaluate import Criteria, EvalData

    model = mlp()
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    data = EvalData([{"x": x} for x in np.random.default_rng(0).standard_normal((3, 1, 64)).astype(np.float32)],
                    "eval", False)
    spec = VerifySpec("eval", "", False, {}, {}, {}, {}, 1e-4, None, True)
    first = worker._reference(model, path, spec, data, Criteria(0.99))
    assert worker._reference(model, path, spec, data, Criteria(0.9, agreement=0.5)) is first
    assert worker._reference(model, path, spec, data, Criteria(0.99, weight_draws=0)) is not first
