"""Verification and repair inside the build: broken variants caught, fp16 overflow and outlier MatMuls repaired."""

import json

import numpy as np
import onnx
import pytest
import tinymodels

from onnxdtype.build import quantize
from onnxdtype.manifest import MANIFEST_NAME
from onnxdtype.verify.evaluate import Criteria, EvalData, evaluate, session
from onnxdtype.verify.repair import RepairBudget


def eval_data(shape, scale=1.0, samples=6, seed=1):
    rng = np.random.default_rng(seed)
    return EvalData([{"x": (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(samples)],
                    "test data", False)


def test_fp16_precision_loss_fails_raw_and_passes_after_repair_with_the_node_named(tiny, tmp_path):
    model = tiny("fp16_precision_loss")
    data = eval_data((4, 8), scale=0.01)
    raw = quantize(model, "fp16", tmp_path / "raw", eval_data=data, repair=False, latency_runs=0)
    assert raw.by("fp16_precision_loss", "fp16").status == "failed"
    assert "cosine" in raw.by("fp16_precision_loss", "fp16").reason
    assert not (tmp_path / "raw" / "fp16_precision_loss_fp16.onnx").exists()
    fixed = quantize(model, "fp16", tmp_path / "fixed", eval_data=data, latency_runs=0,
                     repair_budget=RepairBudget(max_weight_fraction=1.0))  # all its weights sit in two nodes
    result = fixed.by("fp16_precision_loss", "fp16")
    assert result.status == "ok", result.reason
    assert "shift" in result.verification["repair"]["kept"]
    assert result.verification["before_repair"]["failure"] and result.verification["failure"] is None
    entry = json.loads((tmp_path / "fixed" / MANIFEST_NAME).read_text())["modules"]["fp16_precision_loss"]
    assert "shift" in entry["variants"]["fp16"]["kept_in_float"]


def test_fp16_range_check_keeps_producers_and_consumers_of_out_of_range_activations(tiny):
    """What protects GPU users: activations beyond 65504 on the data keep their nodes fp32 (the CPU EP itself
    computes these ops in fp32, so the overflow cannot be shown failing here)."""
    from onnxdtype.normalize import normalize
    from onnxdtype.recipes import float16
    from onnxdtype.verify.repair import RepairPlan, repair

    source = normalize(tinymodels.mlp(), ("constants",))[0]
    data = eval_data((4, 64), scale=1e6)
    built = float16.build(onnx.load(str(tiny("mlp"))), float16.Options()).model

    def rebuild(in_float: list[str], ranked: list[str], precision: str) -> onnx.ModelProto:
        options = float16.keep(float16.Options(), in_float + ranked, precision)
        return float16.build(onnx.load(str(tiny("mlp"))), options).model

    plan = RepairPlan(rebuild, has_float_step=True, float_only=True)
    outcome = repair(source, plan, data, Criteria(0.9999), built)
    assert {"mm1", "add1", "relu", "mm2"} <= set(outcome.kept)


@pytest.mark.parametrize("dtype", ["q8", "q4", "bnb4"])
def test_outlier_matmul_fails_raw_and_passes_after_keeping_it_in_fp32(tiny, tmp_path, dtype):
    model = tiny("outlier_matmul")
    data = eval_data((8, 64))
    raw = quantize(model, dtype, tmp_path / "raw", eval_data=data, repair=False, latency_runs=0)
    assert raw.by("outlier_matmul", dtype).status == "failed"
    fixed = quantize(model, dtype, tmp_path / "fixed", eval_data=data, latency_runs=0)
    result = fixed.by("outlier_matmul", dtype)
    assert result.status == "ok", result.reason
    assert result.verification["repair"]["kept"] == ["mm2"]
    assert 0.15 < result.verification["repair"]["kept_weight_fraction"] < 0.25
    assert result.verification["outputs"]["y"]["cosine"] >= result.verification["min_cosine"]
    if dtype == "q4":  # 8 bits tried first for MatMulNBits; this outlier needs fp32
        assert [a["precision"] for a in result.verification["repair"]["attempts"]] == ["8-bit", "fp32"]
    assert result.kept_in_float == ["mm2"]


def test_keep_failed_keeps_the_file_marked_failed(tiny, tmp_path):
    out = tmp_path / "out"
    result = quantize(tiny("outlier_matmul"), "q4", out, eval_data=eval_data((8, 64)), repair=False,
                      keep_failed=True, latency_runs=0)
    assert result.by("outlier_matmul", "q4").status == "failed"
    assert (out / "outlier_matmul_q4.onnx").exists()
    assert json.loads((out / MANIFEST_NAME).read_text())["modules"]["outlier_matmul"]["variants"]["q4"]["file"]


def test_tolerance_overrides(tiny, tmp_path):
    data = eval_data((8, 64))
    loose = quantize(tiny("outlier_matmul"), "q8", tmp_path / "a", eval_data=data, repair=False,
                     tolerances={"q8": 0.0}, latency_runs=0)
    assert loose.by("outlier_matmul", "q8").status == "ok"
    criteria = quantize(tiny("outlier_matmul"), "q8", tmp_path / "b", eval_data=data, repair=False,
                        tolerances={"rounding_draws": 0}, latency_runs=0).by("outlier_matmul", "q8").verification
    assert criteria["rounding_draws"] == 0  # the noise floor off, recorded with the criteria


def test_synthesized_inputs_are_reported_not_judged(tiny, tmp_path):
    result = quantize(tiny("outlier_matmul"), "q4", tmp_path / "out", latency_runs=2).by("outlier_matmul", "q4")
    assert result.status == "ok"
    assert result.verification["synthesized"] and "not accuracy" in result.verification["note"]
    assert result.verification["unjudged_failure"]  # it would fail on real data: the figures show it
    assert result.latency["threads_1"]["runs"] == 2 and result.latency["threads_1"]["speedup"] > 0


def test_a_model_with_external_data_is_re_verified_from_its_files(tmp_path):
    """`onnxdtype verify` keeps the base's weights in their file (its sessions read the file) and synthesizes inputs
    from a session on it, as the build does."""
    from onnxdtype.verify.recheck import verify_folder

    path = tmp_path / "model" / "outlier_matmul.onnx"
    tinymodels.external(tinymodels.outlier_matmul(), path)
    out = tmp_path / "out"
    assert quantize(path, "q4", out, latency_runs=0).by("outlier_matmul", "q4").status == "ok"
    again = verify_folder(out, latency_runs=0).by("outlier_matmul", "q4")
    assert again.status == "ok" and again.verification["synthesized"]
    assert again.verification["outputs"] == quantize(path, "q4", tmp_path / "again", latency_runs=0).by(
        "outlier_matmul", "q4").verification["outputs"]  # the same figures as a fresh build's


def test_planted_broken_variants_are_caught(tiny, tmp_path):
    """Scrambled weights and a swapped op: evaluate() must see both."""
    base = tinymodels.mlp()
    scrambled = onnx.ModelProto()
    scrambled.CopyFrom(base)
    w = onnx.numpy_helper.to_array(scrambled.graph.initializer[0]).copy()
    np.random.default_rng(0).shuffle(w.reshape(-1))
    scrambled.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    swapped = onnx.ModelProto()
    swapped.CopyFrom(base)
    next(n for n in swapped.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    data = eval_data((4, 64)).feeds
    for broken in (scrambled, swapped):
        _, failure = evaluate(session(base), session(broken), data,
                              Criteria(0.99))
        assert failure is not None


METRIC_FILE = """
import numpy as np

def argmax_agreement(fp32, variant):
    same = np.mean([np.array_equal(a["y"].argmax(-1), b["y"].argmax(-1)) for a, b in zip(fp32, variant)])
    return {"argmax_agreement": float(same), "ok": bool(same >= THRESHOLD)}
"""


@pytest.mark.parametrize("threshold, status", [(0.0, "ok"), (1.01, "failed")])
def test_user_task_metric_decides(tiny, tmp_path, threshold, status):
    metric = tmp_path / "mymetric.py"
    metric.write_text(METRIC_FILE.replace("THRESHOLD", str(threshold)))
    result = quantize(tiny("mlp"), "q8", tmp_path / "out", eval_data=eval_data((4, 64)), repair=False,
                      metric=f"{metric}:argmax_agreement", latency_runs=0).by("mlp", "q8")
    assert result.status == status
    assert 0.0 <= result.verification["task"]["argmax_agreement"] <= 1.0
    if status == "failed":
        assert "task metric" in result.reason and "argmax_agreement=" in result.reason


def test_bad_metric_spec_is_a_user_error(tiny, tmp_path):
    from onnxdtype.errors import OnnxDtypeError

    with pytest.raises(OnnxDtypeError, match="no such file"):
        quantize(tiny("mlp"), "q8", tmp_path / "out", metric="missing.py:f")
    with pytest.raises(OnnxDtypeError, match="has no function"):
        quantize(tiny("mlp"), "q8", tmp_path / "out", metric="json:nope")


def test_a_generic_outputs_own_cosine_from_task_is_used(tiny):
    """--task MODULE=generic:min_cosine=0.5 loosens that output's cosine (and only when asked)."""
    base = tinymodels.mlp()
    noisy = onnx.ModelProto()
    noisy.CopyFrom(base)
    w = onnx.numpy_helper.to_array(noisy.graph.initializer[0]) * 1.3
    noisy.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w.astype(np.float32), "w1"))
    data = eval_data((4, 64)).feeds
    assert evaluate(session(base), session(noisy), data, Criteria(0.99999))[1] is not None
    loose = {"y": {"task": "generic", "params": {"min_cosine": 0.5}, "why": "asked"}}
    assert evaluate(session(base), session(noisy), data, Criteria(0.99999, tasks=loose))[1] is None


def test_repair_ranks_the_convs_of_a_static_variant_not_the_batchnorms_folded_into_them(tmp_path):
    """A static variant keeps its Convs' names: they, not the folded BatchNormalization alone, are what repair may
    keep in float (PP-OCRv4 rec's repair once ranked just its six folded BatchNormalizations)."""
    from onnxdtype.build import Calibration
    from onnxdtype.verify.repair import quantized_nodes

    model = tinymodels.conv_batchnorm()
    path = tinymodels.save(model, tmp_path / "cbn.onnx")
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.savez(data / f"{i}.npz", x=rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    result = quantize(path, "u8u8", tmp_path / "out", calib=Calibration(data), search=False, verify=False,
                      latency_runs=0, workers=1, options={"static": {"float_tail": False}}).by("cbn", "u8u8")
    assert result.status == "ok", result.reason
    variant = onnx.load(str(tmp_path / "out" / "cbn_u8u8.onnx"))
    touched = quantized_nodes(model, variant)
    assert touched == ["conv1", "conv2"]  # not bn1, folded into conv1: keeping it float changes nothing
