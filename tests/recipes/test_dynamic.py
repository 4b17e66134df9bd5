import numpy as np
import onnx
import onnxruntime as ort
import tinymodels

from onnxdtype.model import op_counts
from onnxdtype.normalize import normalize
from onnxdtype.recipes import NotApplicable, dynamic


def q8(model: onnx.ModelProto, **options):
    return dynamic.build(normalize(model, dynamic.PASSES)[0], dynamic.Options(**options))


def test_matmul_model_gets_int8_per_channel_weights_and_stays_close():
    variant = q8(tinymodels.mlp())
    assert variant.params["weight_type"] == "int8" and variant.params["per_channel"] is True
    counts = op_counts(variant.model)
    assert counts["MatMulInteger"] == 2 and counts["DynamicQuantizeLinear"] >= 1 and counts["MatMul"] == 0
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    ref = ort.InferenceSession(tinymodels.mlp().SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(variant.model.SerializeToString()).run(None, {"x": x})[0]
    cosine = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cosine > 0.99


def test_conv_graph_picks_uint8_and_leaves_conv_float_by_default():
    result = q8(tinymodels.conv())
    assert isinstance(result, NotApplicable) and "--q8-conv" in result.reason
    variant = q8(tinymodels.conv(), quantize_conv=True)
    assert variant.params["weight_type"] == "uint8"
    assert op_counts(variant.model)["ConvInteger"] == 1


def test_explicit_weight_type_and_gemm_rewrite_make_gemm_quantizable():
    variant = q8(tinymodels.gemm(), weight_type="uint8")
    assert variant.params["weight_type"] == "uint8"
    assert op_counts(variant.model)["MatMulInteger"] == 1


def test_weights_in_constant_nodes_are_quantized_after_normalize():
    assert op_counts(q8(tinymodels.constant_weights()).model)["MatMulInteger"] == 1


def test_no_weights_is_not_applicable():
    result = q8(tinymodels.no_weights())
    assert isinstance(result, NotApplicable) and "no MatMul" in result.reason


def test_matmul_inside_if_branch_is_quantized():
    variant = q8(tinymodels.if_subgraph())
    assert op_counts(variant.model)["MatMulInteger"] == 2
    sess = ort.InferenceSession(variant.model.SerializeToString())
    assert sess.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 16)
