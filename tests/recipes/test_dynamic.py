from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels
from onnxruntime.quantization import QuantType, quantize_dynamic
from tinymodels import external

from onnxdtype.model import op_counts
from onnxdtype.normalize import normalize
from onnxdtype.recipes import NotApplicable, dynamic
from onnxdtype.weights import all_tensors, read_array


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


def whole_model_q8(model: onnx.ModelProto, options: dynamic.Options) -> onnx.ModelProto:
    """q8 as it was before stand-ins: the whole in-memory model to quantize_dynamic, then the Conv rewrite."""
    weight_type = dynamic.weight_type_for(model, options)
    with TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "source.onnx", Path(tmp) / "q8.onnx"
        onnx.save(model, str(source))
        quantize_dynamic(source, out, per_channel=options.per_channel, reduce_range=options.reduce_range,
                         weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
                         op_types_to_quantize=dynamic.op_types(options), nodes_to_exclude=options.nodes_to_exclude,
                         extra_options={"EnableSubgraph": True})
        quantized = onnx.load(str(out))
    if options.per_channel:
        dynamic.per_channel_conv_weights(model, quantized, 63 if options.reduce_range else 127)
    return quantized


def tensors_as_values(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose every tensor holds its values as raw bytes, wherever they were (lazy, float_data)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in all_tensors(copy):
        values = read_array(tensor)
        tensor.CopyFrom(onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                         raw_data=values.tobytes()))
    return copy


def assert_same_model(got: onnx.ModelProto, want: onnx.ModelProto) -> None:
    got, want = tensors_as_values(got), tensors_as_values(want)
    tensors = {t.name: (t.data_type, list(t.dims), t.raw_data) for t in all_tensors(got)}
    assert tensors == {t.name: (t.data_type, list(t.dims), t.raw_data) for t in all_tensors(want)}
    assert str(got) == str(want)  # nodes, value_info, opsets, in order, subgraphs included


SAME_AS_WHOLE_MODEL = [
    ("mlp", {}), ("mlp", {"per_channel": False}), ("mlp", {"weight_type": "uint8", "reduce_range": True}),
    ("mlp", {"nodes_to_exclude": ["mm2"]}), ("batched_matmul", {}),
    ("conv", {}), ("conv", {"per_channel": False}), ("conv", {"weight_type": "int8", "reduce_range": True}),
    ("hardswish_chain", {}), ("tied_embedding", {}), ("tied_embedding", {"weight_type": "uint8"}),
    ("if_subgraph", {}), ("nested_branches", {}), ("gemm_in_branch", {}),
    ("attention", {}), ("attention", {"per_channel": False}), ("lstm", {}), ("lstm", {"per_channel": False}),
]


def tiny(name: str) -> onnx.ModelProto:
    model = tinymodels.streaming_model(nested=True) if name == "nested_branches" else getattr(tinymodels, name)()
    return normalize(model, dynamic.PASSES)[0]


@pytest.mark.parametrize("name, options", SAME_AS_WHOLE_MODEL)
def test_stand_ins_give_the_variant_quantize_dynamic_makes_of_the_whole_model(monkeypatch, name, options):
    """quantize_dynamic runs on stand-ins (each weight's per-channel min and max) and the real weights are quantized
    with its scales afterwards: the same graph and the same bytes as quantize_dynamic given the whole model."""
    monkeypatch.setattr(dynamic, "QUANTIZE_BLOCK", 100)  # a few rows at a time, as a large weight is
    model, options = tiny(name), dynamic.Options(**options)
    assert dynamic.stand_in_names(model, options)
    assert_same_model(dynamic.build(model, options).model, whole_model_q8(model, options))


@pytest.mark.parametrize("name", ["mlp", "conv", "tied_embedding", "nested_branches", "lstm"])
def test_stand_ins_of_lazy_weights_give_the_in_memory_variant(tmp_path, name):
    model, options = tiny(name), dynamic.Options()
    lazy = external(model, tmp_path / "m.onnx")
    assert_same_model(dynamic.build(lazy, options).model, whole_model_q8(model, options))


def test_what_gets_a_stand_in():
    """Weights of MatMul, Gather, Conv (any rank from 2); not LSTM's or Gemm's, read in another layout, nor a bias."""
    options = dynamic.Options()
    assert dynamic.stand_in_names(tiny("mlp"), options) == {"w1", "w2"}
    assert dynamic.stand_in_names(tiny("lstm"), options) == {"wo"}
    assert dynamic.stand_in_names(tiny("gemm_in_branch"), options) == {"v"}  # w: a Gemm reads it transposed
    assert dynamic.stand_in_names(tiny("conv"), options) == {"k"}
    assert dynamic.stand_in_names(tiny("conv"), dynamic.Options(quantize_conv=False)) == set()
    values = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ranges = dynamic.channel_ranges(values)
    assert ranges.shape == (1, 2, 4) and ranges.dtype == np.float32
    assert np.array_equal(ranges[0], [values.reshape(-1, 4).min(axis=0), values.reshape(-1, 4).max(axis=0)])
