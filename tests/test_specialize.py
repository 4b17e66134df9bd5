"""Input specialization: fixing the input that chooses an If branch brings the branch's weights to the top level,
where calibration and the static recipes reach them; the specialized model computes what the original does."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels
from numerics import CountingSamples, cosine
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.calibration import calibrate
from onnxdtype.calibration.ranges import weighted_nodes
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import iter_graphs, op_counts
from onnxdtype.normalize import constants_to_initializers, normalize
from onnxdtype.recipes import dynamic, static
from onnxdtype.specialize import fixed_value_problem, parse_fixed_inputs, specialize, subgraph_weight_summary

RNG = np.random.default_rng(0)


def _io(name: str, elem_type: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, dims)


def mode_value(mode: str, on: bool) -> np.ndarray:
    return np.array(on) if mode == "bool" else np.array([1 if on else 0], np.int64)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the same kernels on both sides
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def images(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("mode", ["bool", "int64"])
@pytest.mark.parametrize("on", [True, False])
def test_specialized_model_computes_what_the_original_does(mode, on):
    model = tinymodels.streaming_model(mode)
    before = model.SerializeToString()
    result = specialize(model, {"mode": mode_value(mode, on)})
    assert model.SerializeToString() == before  # the input model is left alone
    assert result.inlined_ifs == 1 and "If" not in op_counts(result.model)
    assert result.folded_nodes == 1  # Identity(mode) or Equal(mode, 1): a constant condition
    assert result.fixed == {"mode": on if mode == "bool" else [int(on)]}
    assert [i.name for i in result.model.graph.input] == ["x", "mode"]  # the interface is unchanged
    assert [p.key for p in result.model.metadata_props] == ["labels"]
    names = [n.name for g in iter_graphs(result.model.graph) for n in g.node]
    assert all(names) and len(names) == len(set(names))
    assert any(name.startswith("branch/") for name in names)
    for x in images(3, seed=1):
        feed = {"x": x, "mode": mode_value(mode, on)}
        np.testing.assert_allclose(run(result.model, feed), run(model, feed), rtol=1e-6, atol=1e-6)


def test_branch_weights_reach_the_top_level():
    model = tinymodels.streaming_model()
    assert weighted_nodes(normalize(model, ("constants",))[0]) == []  # inside the branches: out of reach
    specialized = specialize(model, {"mode": np.array(True)}).model
    assert constants_to_initializers(specialized) == 4  # scale, wt, bt, wm: nothing of the untaken branch
    assert sorted(n.name for n in weighted_nodes(specialized)) == ["branch/conv_then", "branch/matmul_then"]
    specialized = specialize(model, {"mode": np.array(False)}).model
    constants_to_initializers(specialized)
    assert [n.name for n in weighted_nodes(specialized)] == ["branch/conv_else"]


def test_summary_names_the_weights_in_branches_and_the_input_choosing_them():
    for mode in ("bool", "int64"):
        model = tinymodels.streaming_model(mode)
        assert subgraph_weight_summary(model) == (
            "3 Conv/MatMul inside If branches; static calibration cannot reach subgraphs; fix the inputs that "
            "choose the branch with --fix-input (candidates: mode)")
        assert subgraph_weight_summary(specialize(model, {"mode": mode_value(mode, True)}).model) is None
    assert "4 Conv/MatMul" in subgraph_weight_summary(tinymodels.streaming_model(nested=True))


def test_nested_if_on_the_same_input_folds_too():
    model = tinymodels.streaming_model("int64", nested=True)
    for on in (True, False):
        result = specialize(model, {"mode": mode_value("int64", on)})
        assert result.inlined_ifs == (2 if on else 1) and "If" not in op_counts(result.model)
        feed = {"x": images(1, seed=2)[0], "mode": mode_value("int64", on)}
        np.testing.assert_allclose(run(result.model, feed), run(model, feed), rtol=1e-6, atol=1e-6)
    names = [n.name for n in specialize(model, {"mode": np.array([1])}).model.graph.node]
    assert "branch/inner_if/conv_inner" in names


def test_branch_outputs_that_are_outer_tensors_or_branch_initializers_become_identities():
    """Both branches use the same local names as the outer graph; one passes an outer tensor out (onnxruntime
    refuses such a model: the Identity specializing adds makes it loadable), one its own initializer."""
    outer = np.arange(4, dtype=np.float32)
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["t"], name="add")], "then", [],
                                   [_io("t", TensorProto.FLOAT, [4]), _io("c", TensorProto.FLOAT, [4])])
    else_graph = helper.make_graph([helper.make_node("Sub", ["x", "k"], ["t"], name="add")], "else", [],
                                   [_io("t", TensorProto.FLOAT, [4]), _io("k", TensorProto.FLOAT, [4])],
                                   initializer=[numpy_helper.from_array(-outer, "k")])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y", "z"], then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Mul", ["y", "z"], ["t"], name="mul")],
        "g", [_io("x", TensorProto.FLOAT, [4]), _io("flag", TensorProto.BOOL, [1])],
        [_io("t", TensorProto.FLOAT, [4]), _io("z", TensorProto.FLOAT, [4])],
        initializer=[numpy_helper.from_array(outer, "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.ones(4, np.float32)
    for on, (y, z) in ((True, (x + outer, outer)), (False, (x + outer, -outer))):
        result = specialize(model, {"flag": [on]})  # a Python list the declared bool [1] holds exactly
        assert op_counts(result.model)["Identity"] == 1 and result.fixed == {"flag": [on]}
        session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
        t, z_got = session.run(None, {"x": x, "flag": np.array([on])})
        np.testing.assert_array_equal(t, y * z)
        np.testing.assert_array_equal(z_got, z)


def test_specialized_model_goes_through_calibration_and_static_s8u8(tmp_path):
    fp32 = normalize(specialize(tinymodels.streaming_model("int64"), {"mode": np.array([1])}).model, static.PASSES)[0]
    feeds = [{"x": x, "mode": np.array([1])} for x in images(8, seed=3)]
    calibration = calibrate(fp32, CountingSamples(feeds, f"specialize-{len(feeds)}"), "minmax", tmp_path)
    options = static.options_for("s8u8", static.Options(ranges_file=str(calibration.path)))
    unspecialized = normalize(tinymodels.streaming_model("int64"), static.PASSES)[0]
    assert static.check(unspecialized, options).startswith("3 Conv/MatMul inside If branches; static calibration "
                                                           "cannot reach subgraphs; fix the inputs that choose")
    variant = static.build(fp32, options)
    assert not isinstance(variant, static.NotApplicable), variant
    counts = op_counts(variant.model)
    assert counts["QuantizeLinear"] >= 1 and counts["DequantizeLinear"] >= 3 and counts["Conv"] == 1
    producers = {o: n for n in variant.model.graph.node for o in n.output}
    conv = next(n for n in variant.model.graph.node if n.op_type == "Conv")
    assert [producers[name].op_type for name in conv.input[:2]] == ["DequantizeLinear", "DequantizeLinear"]
    for x in images(4, seed=4):
        feed = {"x": x, "mode": np.array([1])}
        assert cosine(run(variant.model, feed), run(fp32, feed)) > 0.99


def test_dynamic_q8_quantizes_inside_the_unspecialized_branches():
    """quantize_dynamic's EnableSubgraph: ConvInteger / MatMulInteger inside the If branches, no specializing."""
    model = normalize(tinymodels.streaming_model("int64"), dynamic.PASSES)[0]
    variant = dynamic.build(model, dynamic.Options(quantize_conv=True))
    assert not isinstance(variant, dynamic.NotApplicable), variant
    branch_ops = {n.op_type for g in list(iter_graphs(variant.model.graph))[1:] for n in g.node}
    assert {"ConvInteger", "MatMulInteger"} <= branch_ops
    for on in (True, False):
        feed = {"x": images(1, seed=5)[0], "mode": mode_value("int64", on)}
        assert cosine(run(variant.model, feed), run(model, feed)) > 0.99


def test_parse_fixed_inputs_reads_the_declared_type_and_shape():
    model = tinymodels.streaming_model("int64")
    parsed = parse_fixed_inputs(["mode=1"], model)["mode"]
    assert parsed.dtype == np.int64 and parsed.shape == (1,) and parsed.tolist() == [1]
    parsed = parse_fixed_inputs(["mode = true"], tinymodels.streaming_model("bool"))["mode"]
    assert parsed.dtype == np.bool_ and parsed.shape == () and bool(parsed)
    vector = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["v"], ["w"])], "g",
        [_io("v", TensorProto.FLOAT, [3]), _io("n", TensorProto.FLOAT, ["N", 2])], [_io("w", TensorProto.FLOAT, [3])]))
    parsed = parse_fixed_inputs(["v=0.5,1,2", "n=1,2,3,4"], vector)
    assert parsed["v"].dtype == np.float32 and parsed["v"].tolist() == [0.5, 1, 2]
    assert parsed["n"].shape == (2, 2)


@pytest.mark.parametrize(("items", "message"), [
    (["speed=1"], "fixed input 'speed': no such input (the model's inputs: x, mode)"),
    (["mode"], "--fix-input 'mode': expected NAME=VALUE"),
    (["mode=fast"], "--fix-input mode: cannot read 'fast' as int64"),
    (["mode=1.5"], "--fix-input mode: cannot read '1.5' as int64"),
    (["mode=1,2"], "--fix-input mode: 2 value(s) do not fit its declared shape [1]"),
    (["mode=1", "mode=0"], "--fix-input mode: given twice"),
])
def test_bad_fix_input_items_are_one_line_errors(items, message):
    with pytest.raises(OnnxDtypeError) as error:
        parse_fixed_inputs(items, tinymodels.streaming_model("int64"))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(("fixed", "message"), [
    ({"speed": np.array([1])}, "fixed input 'speed': no such input (the model's inputs: x, mode)"),
    ({"mode": np.array([1], np.int32)}, "fixed input 'mode': given int32, the input is declared int64"),
    ({"mode": 0.5}, "fixed input 'mode': given float64, the input is declared int64"),
    ({"mode": np.array([[1]])}, "fixed input 'mode': given shape [1, 1], the input is declared [1]"),
])
def test_bad_fixed_values_are_one_line_errors(fixed, message):
    with pytest.raises(OnnxDtypeError, match=f"^{re.escape(message)}$"):
        specialize(tinymodels.streaming_model("int64"), fixed)


def test_runtime_refuses_another_value_for_a_fixed_input():
    record = specialize(tinymodels.streaming_model("int64"), {"mode": np.array([1])}).fixed
    x = images(1, seed=6)[0]
    assert fixed_value_problem(record, {"x": x, "mode": np.array([1])}) is None
    assert fixed_value_problem(record, {"x": x}) is None  # onnxruntime names a missing input itself
    assert fixed_value_problem(record, {"x": x, "mode": np.array([0])}) == (
        "input 'mode' was fixed to [1] when this variant was built (--fix-input), got [0]; "
        "use the fp32 model or build a variant for that value")


def test_if_inside_a_loop_body_is_inlined_there():
    """The condition comes from the fixed input through the outer scope; the Loop's own state is never folded."""
    then_graph = helper.make_graph([helper.make_node("Add", ["acc", "step"], ["a1"], name="add")], "then", [],
                                   [_io("a1", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Sub", ["acc", "step"], ["a2"], name="sub")], "else", [],
                                   [_io("a2", TensorProto.FLOAT, [2])])
    body = helper.make_graph(
        [helper.make_node("If", ["up"], ["acc_next"], name="inner", then_branch=then_graph, else_branch=else_graph),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "body", [_io("i", TensorProto.INT64, []), _io("cond_in", TensorProto.BOOL, []),
                 _io("acc", TensorProto.FLOAT, [2])],
        [_io("cond_out", TensorProto.BOOL, []), _io("acc_next", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Greater", ["direction", "zero"], ["up"], name="is_up"),
         helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)],
        "g", [_io("x", TensorProto.FLOAT, [2]), _io("direction", TensorProto.FLOAT, [1])],
        [_io("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array(0, np.float32), "zero"),
                     numpy_helper.from_array(np.array(3, np.int64), "trips"),
                     numpy_helper.from_array(np.array([1, 2], np.float32), "step")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for direction in (1.0, -1.0):
        result = specialize(model, {"direction": np.array([direction], np.float32)})
        assert result.inlined_ifs == 1 and op_counts(result.model)["If"] == 0 and op_counts(result.model)["Loop"] == 1
        feed = {"x": np.zeros(2, np.float32), "direction": np.array([direction], np.float32)}
        np.testing.assert_array_equal(run(result.model, feed), np.array([3, 6], np.float32) * direction)


def test_initializers_that_are_also_inputs_stay_overridable():
    """An initializer declared as an input is a default the caller may replace: never folded, never dropped."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["k"], ["nk"], name="neg"), helper.make_node("Add", ["x", "nk"], ["y"], name="add")],
        "g", [_io("x", TensorProto.FLOAT, [2]), _io("k", TensorProto.FLOAT, [2])], [_io("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = specialize(model, {"x": np.zeros(2, np.float32)})
    assert result.folded_nodes == 0 and [t.name for t in result.model.graph.initializer] == ["k"]
    k = np.array([3, 4], np.float32)
    np.testing.assert_array_equal(run(result.model, {"x": np.zeros(2, np.float32), "k": k}), -k)
