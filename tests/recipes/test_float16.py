import numpy as np
import onnx
import onnxruntime as ort
import tinymodels

from onnxdtype.model import op_counts
from onnxdtype.normalize import normalize
from onnxdtype.recipes import NotApplicable, float16


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def fp16_of(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    variant = float16.build(normalize(model, float16.PASSES)[0], float16.Options(**options))
    assert not isinstance(variant, NotApplicable)
    return variant.model


def test_weights_become_fp16_and_io_stays_fp32():
    out = fp16_of(tinymodels.mlp())
    assert {t.data_type for t in out.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref, got = session(tinymodels.mlp()).run(None, {"x": x})[0], session(out).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-3)


def test_fp16_io_option_makes_io_fp16():
    out = fp16_of(tinymodels.mlp(), keep_io_types=False)
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    got = session(out).run(None, {"x": np.ones((2, 64), np.float16)})[0]
    assert got.dtype == np.float16


def test_cast_to_float_inside_converted_region_loads_and_runs():
    out = fp16_of(tinymodels.cast_to_float())
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    ref = session(tinymodels.cast_to_float()).run(None, {"x": x})[0]
    np.testing.assert_allclose(session(out).run(None, {"x": x})[0], ref, rtol=2e-2, atol=2e-3)


def test_if_subgraph_model_loads_and_runs_both_branches():
    out = fp16_of(tinymodels.if_subgraph())
    sess, ref = session(out), session(tinymodels.if_subgraph())
    for sign in (1.0, -1.0):
        x = np.full((2, 64), sign * 0.5, np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=2e-2, atol=2e-3)


def test_initializers_beyond_fp16_range_keep_their_node_fp32():
    model = tinymodels.fp16_overflow()
    variant = float16.build(normalize(model, float16.PASSES)[0], float16.Options())
    assert variant.kept_in_float == ["bn"]
    x = np.full((1, 4, 8, 8), 5000.0, np.float32)
    ref = session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(session(variant.model).run(None, {"x": x})[0], ref, rtol=1e-2)


def test_unguarded_conversion_really_breaks_that_model():
    """The guard above matters: blocking nothing clamps the 4e7 variance to 65504 and the output is wrong."""
    model = normalize(tinymodels.fp16_overflow(), float16.PASSES)[0]
    from onnxruntime.transformers.float16 import convert_float_to_float16
    raw = convert_float_to_float16(model, keep_io_types=True)
    x = np.full((1, 4, 8, 8), 5000.0, np.float32)
    ref = session(model).run(None, {"x": x})[0]
    assert not np.allclose(session(raw).run(None, {"x": x})[0], ref, rtol=1e-2)


def test_model_without_float_tensors_is_not_applicable():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["x"], ["y"])], "ints",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [2])])
    result = float16.build(onnx.helper.make_model(graph), float16.Options())
    assert isinstance(result, NotApplicable) and "no float32" in result.reason
    assert op_counts(onnx.helper.make_model(graph))["Neg"] == 1
