import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels

from onnxdtype.model import op_counts, opset_version
from onnxdtype.normalize import normalize

X64 = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_constants_become_initializers_and_output_is_unchanged():
    model = tinymodels.constant_weights()
    out, done = normalize(model, ("constants",))
    assert op_counts(out)["Constant"] == 0 and op_counts(model)["Constant"] == 2
    assert {t.name for t in out.graph.initializer} == {"w", "s"}
    assert done == ["2 Constant nodes -> initializers"]
    np.testing.assert_array_equal(run(out, X64), run(model, X64))


@pytest.mark.parametrize("trans_b, alpha, beta", [(1, 0.5, 2.0), (0, 1.0, 1.0), (1, 1.0, 1.0)])
def test_gemm_becomes_matmul_add_with_same_result(trans_b, alpha, beta):
    model = tinymodels.gemm(trans_b=trans_b, alpha=alpha, beta=beta)
    out, done = normalize(model, ("gemm",))
    counts = op_counts(out)
    assert counts["Gemm"] == 0 and counts["MatMul"] == 1 and counts["Add"] == 1
    assert done == ["1 Gemm -> MatMul+Add"]
    np.testing.assert_allclose(run(out, X64), run(model, X64), rtol=1e-5, atol=1e-5)


def test_opset_raised_to_13_keeps_results_and_metadata():
    model = tinymodels.mlp(opset=11, metadata={"labels": "cat,dog"})
    out, done = normalize(model, ("opset13",))
    assert opset_version(out) == 13 and done == ["opset 11 -> 13"]
    assert {p.key: p.value for p in out.metadata_props} == {"labels": "cat,dog"}
    np.testing.assert_allclose(run(out, X64), run(model, X64), rtol=1e-6)


def test_nothing_to_do_reports_nothing_and_input_is_untouched():
    model = tinymodels.mlp()
    before = model.SerializeToString()
    out, done = normalize(model, ("constants", "gemm", "opset13"))
    assert done == []
    assert model.SerializeToString() == before


def test_batchnorm_after_a_conv_folds_into_it_unless_the_conv_output_is_read_elsewhere():
    model = tinymodels.conv_batchnorm()
    out, done = normalize(model, ("batchnorm",))
    assert done[0] == "1 BatchNormalization folded into their Conv"
    assert op_counts(out)["BatchNormalization"] == 1  # bn2: conv2's output is also a graph output
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for ref, got in zip(*(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x}) for m in (model, out))):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
