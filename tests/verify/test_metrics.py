import numpy as np
import pytest

from onnxdtype.verify.metrics import OutputStats, feature_axis, judge

RNG = np.random.default_rng(0)


def figures(ref, got):
    stats = OutputStats("y")
    for r, g in zip(ref, got):
        stats.add(r, g)
    return stats.figures()


def test_figures_match_numpy_on_the_concatenated_samples():
    ref = [RNG.standard_normal((2, 8, 5)).astype(np.float32) for _ in range(3)]
    got = [r + RNG.standard_normal(r.shape).astype(np.float32) * 0.1 for r in ref]
    f = figures(ref, got)
    a = np.concatenate([r.ravel() for r in ref]).astype(np.float64)
    b = np.concatenate([g.ravel() for g in got]).astype(np.float64)
    assert f["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-9)
    assert f["rel_l2"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(a), rel=1e-9)
    assert f["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    top1 = np.mean(np.concatenate([(r.argmax(-1) == g.argmax(-1)).ravel() for r, g in zip(ref, got)]))
    assert f["top1_agreement"] == pytest.approx(top1)
    channel = f["worst_channel"]["channel"]
    ca = np.concatenate([r[:, channel].ravel() for r in ref]).astype(np.float64)
    cb = np.concatenate([g[:, channel].ravel() for g in got]).astype(np.float64)
    assert f["worst_channel"]["cosine"] == pytest.approx(ca @ cb / np.linalg.norm(ca) / np.linalg.norm(cb), rel=1e-9)


def test_a_collapsed_small_channel_is_caught_where_the_whole_tensor_looks_fine():
    """The YOLO case: large box channels dominate the whole-tensor cosine; a wrecked score channel does not show."""
    ref = RNG.uniform(0, 1, (1, 6, 400)).astype(np.float32)
    ref[:, :4] *= 640  # box coordinates
    got = ref.copy()
    got[:, 5] = RNG.uniform(0, 1, 400)  # class scores replaced by noise
    f = figures([ref], [got])
    assert f["cosine"] > 0.999
    assert f["worst_channel"]["channel"] == 5 and f["worst_channel"]["cosine"] < 0.9
    assert "channel 5" in judge({"y": f}, 0.99)


def test_nan_and_inf_fail_where_fp32_has_none():
    ref = np.ones((2, 3), np.float32)
    got = ref.copy()
    got[0, 0] = np.nan
    f = figures([ref], [got])
    assert f["nan"] == 1 and f["nan_fp32"] == 0
    assert "NaN" in judge({"y": f}, 0.5)


def test_near_zero_outputs_pass_on_absolute_error():
    ref = RNG.uniform(0, 1e-7, (1, 1, 8, 8)).astype(np.float32)
    got = RNG.uniform(0, 1e-7, (1, 1, 8, 8)).astype(np.float32)
    f = figures([ref], [got])
    assert f["cosine"] < 0.9
    assert judge({"y": f}, 0.9999, atol=1e-4) is None
    assert judge({"y": f}, 0.9999) is not None


def test_feature_axis():
    assert feature_axis((1, 22, 8400)) == 1
    assert feature_axis((8, 16)) is None  # one value per sample and channel: judged whole
    assert feature_axis((1, 1000, 7)) is None


def test_kernels_counts_what_onnxruntime_runs(tmp_path):
    """q8 of a MatMul net runs integer kernels after onnxruntime's fusions; the fp32 file runs none."""
    import tinymodels

    from onnxdtype.normalize import normalize
    from onnxdtype.recipes import dynamic
    from onnxdtype.verify.kernels import kernels

    fp32 = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    q8 = tinymodels.save(dynamic.build(normalize(tinymodels.mlp(), dynamic.PASSES)[0], dynamic.Options()).model,
                         tmp_path / "mlp_q8.onnx")
    assert kernels(fp32)["integer"] == {} and kernels(fp32)["float_nodes"] > 0
    found = kernels(q8)
    assert sum(found["integer"].values()) >= 2  # the two MatMuls, as MatMulIntegerToFloat or DynamicQuantizeMatMul
    assert set(found["integer"]) <= {"MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger"}


def test_a_quantized_variant_onnxruntime_runs_in_float_is_named(tmp_path):
    """Weight-only 8-bit Q/DQ on a Conv (a DequantizeLinear feeding a float Conv) forms no integer kernel: the build
    says so instead of letting the size suggest a speedup. (onnxruntime 1.32 turns the same on a MatMul into
    MatMulNBits.)"""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.build.pipeline import runs_no_integer_kernel
    from onnxdtype.verify.kernels import kernels

    weight = numpy_helper.from_array(np.arange(-36, 36, dtype=np.int8).reshape(8, 1, 3, 3), "w_q")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "w_scale")
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]), helper.make_node("Conv", ["x", "w"], ["y"])],
        "weight_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], [weight, scale])
    path = tmp_path / "weight_only.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    found = kernels(path)
    assert found["integer"] == {} and runs_no_integer_kernel("s8u8", found)
    assert not runs_no_integer_kernel("fp16", found) and not runs_no_integer_kernel("q8", None)
    assert not runs_no_integer_kernel("q8", {"integer": {"MatMulIntegerToFloat": 2}, "conversions": {}})
