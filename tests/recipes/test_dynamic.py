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


def test_conv_graph_picks_uint8_and_quantizes_conv_with_per_channel_weights():
    variant = q8(tinymodels.conv())
    assert variant.params["weight_type"] == "uint8" and op_counts(variant.model)["ConvInteger"] == 1
    scale = next(t for t in variant.model.graph.initializer if t.name == "k_scale")
    assert list(scale.dims) == [8, 1, 1]  # one scale per output channel, broadcast over the ConvInteger output
    result = q8(tinymodels.conv(), quantize_conv=False)
    assert isinstance(result, NotApplicable) and "--no-q8-conv" in result.reason


def test_per_channel_conv_weights_keep_channels_of_different_ranges():
    """onnxruntime's ConvInteger weights are per tensor: a channel 100x wider than the others sets the one scale
    and rounds the rest to a few levels. Per output channel, every channel keeps its 8 bits."""
    model = tinymodels.conv()
    weight = next(t for t in model.graph.initializer if t.name == "k")
    wide = onnx.numpy_helper.to_array(weight).copy()
    wide[0] *= 100.0
    weight.CopyFrom(onnx.numpy_helper.from_array(wide, "k"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    def worst_channel(variant) -> float:
        got = ort.InferenceSession(variant.model.SerializeToString()).run(None, {"x": x})[0]
        return min(float((r * g).sum() / (np.linalg.norm(r) * np.linalg.norm(g) or 1.0))
                   for r, g in zip(ref[0], got[0]))

    per_channel, per_tensor = worst_channel(q8(model)), worst_channel(q8(model, per_channel=False))
    assert per_channel > 0.999 and per_tensor < 0.99


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
