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


def test_an_add_of_a_per_channel_constant_after_a_conv_folds_into_its_bias():
    """paddle2onnx's form (Add of a Reshape of constants) and a plain initializer fold; an Add that varies over
    space, or one after a Conv read elsewhere, stays."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.normalize import fold_conv_bias_adds

    rng = np.random.default_rng(3)

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [const("w1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             const("w2", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
             const("b2", rng.standard_normal(4).astype(np.float32)),
             const("w3", rng.standard_normal((4, 4, 1, 1)).astype(np.float32)),
             const("offset", rng.standard_normal(4).astype(np.float32)),
             const("shape", np.array([1, 4, 1, 1], np.int64)),
             const("per_channel", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)),
             const("spatial", rng.standard_normal((1, 4, 6, 6)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["offset", "shape"], ["offset4"], name="reshape"),
             helper.make_node("Add", ["c1", "offset4"], ["a1"], name="add_reshaped"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["per_channel", "c2"], ["a2"], name="add_initializer"),
             helper.make_node("Conv", ["a2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Add", ["c3", "spatial"], ["a3"], name="add_spatial"),
             helper.make_node("Conv", ["a3", "w3"], ["c4"], name="conv4"),
             helper.make_node("Add", ["c4", "per_channel"], ["y"], name="add_after_shared_conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]),
                               helper.make_tensor_value_info("c4", TensorProto.FLOAT, [1, 4, 6, 6])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_conv_bias_adds(folded) == 2
    onnx.checker.check_model(folded)
    assert {n.name for n in folded.graph.node} == {"conv1", "conv2", "conv3", "add_spatial", "conv4",
                                                   "add_after_shared_conv"}
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for ref, got in zip(*(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x}) for m in (model, folded))):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    overridable = onnx.ModelProto()
    overridable.CopyFrom(model)  # an initializer that is also an input may be fed another value: not folded
    overridable.graph.input.append(helper.make_tensor_value_info("per_channel", TensorProto.FLOAT, [1, 4, 1, 1]))
    assert fold_conv_bias_adds(overridable) == 1


def test_an_ungrouped_conv_transpose_takes_its_bias_add_and_batchnorm_but_a_grouped_one_does_not():
    """det's DB head: ConvTranspose -> Add(bias) -> BatchNormalization; output channels sit on the weight's axis 1."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.normalize import fold_batchnorm, fold_conv_bias_adds

    rng = np.random.default_rng(5)

    def head(group: int) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(rng.standard_normal((4, 6 // group, 2, 2)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal((1, 6, 1, 1)).astype(np.float32), "b")]
        inits += [numpy_helper.from_array(value.astype(np.float32), name) for name, value in (
            ("scale", rng.random(6) + 0.5), ("shift", rng.standard_normal(6)), ("mean", rng.standard_normal(6)),
            ("var", rng.random(6) + 0.1))]
        nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="up", strides=[2, 2], group=group),
                 helper.make_node("Add", ["t", "b"], ["a"], name="bias"),
                 helper.make_node("BatchNormalization", ["a", "scale", "shift", "mean", "var"], ["y"], name="bn")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    for group, folds in ((1, (1, 1)), (2, (0, 0))):
        model = head(group)
        folded = onnx.ModelProto()
        folded.CopyFrom(model)
        assert (fold_conv_bias_adds(folded), fold_batchnorm(folded)) == folds
        assert len(folded.graph.node) == 3 - sum(folds)
        np.testing.assert_allclose(run(folded, x), run(model, x), rtol=1e-4, atol=1e-5)


def test_an_add_of_a_constant_before_unpadded_convs_folds_into_their_biases():
    """PP-OCRv4's affine blocks: Add(x, scalar) -> 1x1 Conv, and a per-channel Add before a depthwise and a strided
    Conv, fold; before a padded Conv (its border would read c), or when something else reads the sum, they stay."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.normalize import fold_adds_into_unpadded_convs

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in (
        ("scalar", rng.standard_normal(1)), ("per_channel", rng.standard_normal((4, 1, 1))),
        ("pointwise", rng.standard_normal((4, 4, 1, 1))), ("bias", rng.standard_normal(4)),
        ("depthwise", rng.standard_normal((4, 1, 3, 3))), ("dense", rng.standard_normal((4, 4, 3, 3))))]
    nodes = [helper.make_node("Add", ["x", "scalar"], ["a1"], name="add_scalar"),
             helper.make_node("Conv", ["a1", "pointwise", "bias"], ["c1"], name="pointwise_conv"),
             helper.make_node("Add", ["per_channel", "c1"], ["a2"], name="add_per_channel"),
             helper.make_node("Conv", ["a2", "depthwise"], ["c2"], name="depthwise_conv", group=4),
             helper.make_node("Conv", ["a2", "dense"], ["c3"], name="strided_conv", strides=[2, 2]),
             helper.make_node("Add", ["c2", "scalar"], ["a3"], name="add_before_padded"),
             helper.make_node("Conv", ["a3", "dense"], ["c4"], name="padded_conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c4", "scalar"], ["a4"], name="add_read_twice"),
             helper.make_node("Conv", ["a4", "pointwise"], ["c5"], name="last_conv"),
             helper.make_node("Relu", ["a4"], ["r"], name="relu")]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in (("c3", [1, 4, 4, 4]), ("c5", [1, 4, 7, 7]), ("r", [1, 4, 7, 7]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_adds_into_unpadded_convs(folded) == 2
    onnx.checker.check_model(folded)
    assert {"add_scalar", "add_per_channel"}.isdisjoint(n.name for n in folded.graph.node)
    assert {"add_before_padded", "add_read_twice"} <= {n.name for n in folded.graph.node}
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    for ref, got in zip(*(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x}) for m in (model, folded))):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_a_reshape_feeding_the_constants_of_two_folded_adds_goes_with_them():
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.normalize import fold_conv_bias_adds

    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "offset"),
             numpy_helper.from_array(np.array([1, 4, 1, 1], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["offset", "shape"], ["offset4"], name="reshape"),
             helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
             helper.make_node("Add", ["c1", "offset4"], ["a1"], name="add1"),
             helper.make_node("Conv", ["a1", "w"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "offset4"], ["y"], name="add2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_conv_bias_adds(folded) == 2
    assert [n.name for n in folded.graph.node] == ["conv1", "conv2"]
    assert {t.name for t in folded.graph.initializer} & {"offset", "shape"} == set()
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_an_add_a_subgraph_reads_stays_before_its_unpadded_conv():
    from onnx import TensorProto, helper, numpy_helper

    from onnxdtype.normalize import fold_adds_into_unpadded_convs

    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), "c"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")]
    branch = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "branch", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 3, 3])])
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="conv"),
             helper.make_node("If", ["flag"], ["z"], name="if", then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 3]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert fold_adds_into_unpadded_convs(model) == 0
    onnx.checker.check_model(model)
