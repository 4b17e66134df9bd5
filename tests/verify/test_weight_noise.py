"""fp32's own noise floor under weight noise (verify.weight_noise): what is drawn, by how much, what is left out."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.verify import weight_noise
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, evaluate, session
from onnxdtype.verify.weight_noise import WEIGHT_NOISE_BITS, drawable, noisy_copies

RNG = np.random.default_rng(0)
STEPS = 2 ** (WEIGHT_NOISE_BITS - 1) - 1  # a symmetric grid's steps on either side of zero


def weighted_model() -> onnx.ModelProto:
    """A Conv whose channels differ 100x in size (with a bias), a MatMul, a Gemm with transB and a Constant-node
    weight: every kind of weight, each with its output channels on its own axis."""
    conv = RNG.standard_normal((4, 3, 3, 3)) * np.array([1, 100, 1, 0.01]).reshape(-1, 1, 1, 1)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in [
        ("conv_w", conv), ("conv_b", RNG.standard_normal(4)), ("mm_w", RNG.standard_normal((8, 5)) * [1, 1, 50, 1, 1]),
        ("gemm_w", RNG.standard_normal((5, 5)) * np.array([1, 1, 1, 1, 50]).reshape(-1, 1))]]
    const = numpy_helper.from_array(RNG.standard_normal((5, 3)).astype(np.float32), "const_w")
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["pooled"], axes=[1, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "mm_w"], ["m"]),
             helper.make_node("Gemm", ["m", "gemm_w"], ["g"], transB=1),
             helper.make_node("Constant", [], ["const_w"], value=const),
             helper.make_node("MatMul", ["g", "const_w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_each_weight_moves_within_half_a_10bit_step_of_its_own_output_channel():
    model = weighted_model()
    before = model.SerializeToString()
    first, second = list(noisy_copies(model, 2))
    assert model.SerializeToString() == before  # the model drawn from is untouched
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    original["const_w"] = numpy_helper.to_array(model.graph.node[4].attribute[0].t)
    drawn = {t.name: numpy_helper.to_array(t) for t in first.graph.initializer}
    for name, axis in [("conv_w", 0), ("mm_w", 1), ("gemm_w", 0), ("const_w", 1)]:
        w, moved = original[name], drawn[name] - original[name]
        others = tuple(i for i in range(w.ndim) if i != axis)
        half_step = np.abs(w).max(axis=others, keepdims=True) / STEPS / 2
        assert (np.abs(moved) <= half_step * (1 + 1e-5) + 1e-7).all(), name
        assert (np.abs(moved).max(axis=others) > 0.5 * half_step.squeeze()).all(), name  # every channel moved
    assert np.abs(drawn["conv_w"] - original["conv_w"])[3].max() < 1e-3 * np.abs(original["conv_w"][1]).max() / STEPS
    assert (drawn["conv_b"] == original["conv_b"]).all()  # a bias is not what a quantizer rounds to 8 bits
    assert not any(n.op_type == "Constant" for n in first.graph.node)
    again = next(noisy_copies(model, 1))
    assert again.SerializeToString() == first.SerializeToString()  # a fixed seed: the same floor every build
    assert second.SerializeToString() != first.SerializeToString()


def classifier(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_label_fp32_flips_under_weight_noise_is_not_judged():
    """Continuous inputs (no input floor): sample 0 is decided, sample 1 sits on fp32's boundary in weight space."""
    feeds = [{"x": RNG.standard_normal((1, 16)).astype(np.float32)} for _ in range(2)]
    x0, x1 = feeds[0]["x"].ravel().astype(np.float64), feeds[1]["x"].ravel().astype(np.float64)
    weight = RNG.standard_normal((16, 2))
    # column 1 = column 0 + d, with d . x0 = 10 (decided) and d . x1 = 1e-6 (a tie in fp32)
    basis = np.linalg.lstsq(np.stack([x0, x1]), np.array([10.0, 1e-6]), rcond=None)[0]
    weight[:, 1] = weight[:, 0] + basis
    fp32 = classifier(weight)
    task = {"logits": {"task": "classify", "params": {"margin": 0.0}}}  # no coin-flip margin: the floor alone
    criteria = Criteria(0.99, tasks=task)
    data = EvalData(feeds, "two vectors", False)
    reference = Reference(session(fp32), data, criteria, fp32)
    assert [m["logits"].tolist() for m in reference.unstable] == [[False], [True]]

    tipped = weight.copy()  # reads sample 1 the other way, sample 0 as fp32
    tipped[:, 1] -= x1 * 1e-2 / (x1 @ x1)
    figures, failure = evaluate(reference, session(classifier(tipped)), feeds, criteria)
    judge = figures["outputs"]["logits"]["judge"]
    assert failure is None and (judge["units"], judge["unstable_in_fp32"], judge["unstable_read_differently"]) == \
        (1, 1, 1)
    assert figures["weight_noise"] == {"bits": WEIGHT_NOISE_BITS, "draws": 8, "moved": {"logits": 1}}
    assert "rounding" not in figures  # nothing on an 8-bit grid to redraw

    off = Criteria(0.99, tasks=task, weight_draws=0)  # no weight floor: the flip counts
    _, failure = evaluate(Reference(session(fp32), data, off, fp32), session(classifier(tipped)), feeds, off)
    assert failure and "1/2 predictions" in failure
    without_model = Reference(session(fp32), data, criteria)  # nothing to draw from: no floor
    assert without_model.unstable == [] and without_model.floor == {}

    wrecked = weight[:, ::-1].copy()  # both samples flipped: the decided one still counts
    _, failure = evaluate(reference, session(classifier(wrecked)), feeds, criteria)
    assert failure and "0/1 predictions" in failure and "its weights' noise not judged" in failure


def test_weights_in_external_data_are_drawn_and_a_model_over_the_limit_is_not(tmp_path, monkeypatch):
    weight = RNG.standard_normal((16, 2))
    path = tmp_path / "external.onnx"
    onnx.save_model(classifier(weight), str(path), save_as_external_data=True, location="external.onnx.data",
                    size_threshold=0)
    drawn, _ = drawable(path)
    assert np.array_equal(numpy_helper.to_array(drawn.graph.initializer[0]), weight.astype(np.float32))
    feeds = [{"x": RNG.standard_normal((1, 16)).astype(np.float32)}]
    criteria = Criteria(0.99, tasks={"logits": {"task": "classify"}})
    reference = Reference(session(path), EvalData(feeds, "one", False), criteria, path)
    assert reference.floor["weight_noise"]["draws"] == 8
    monkeypatch.setattr(weight_noise, "DRAW_LIMIT", weight.size * 4 - 1)
    assert drawable(path)[0] is None and drawable(classifier(weight))[0] is None
    reference = Reference(session(path), EvalData(feeds, "one", False), criteria, path)
    assert reference.floor == {"weight_noise": {"skipped": "weights over 0 MiB: not copied per draw"}}
    figures, failure = evaluate(reference, session(path), feeds, criteria)
    assert failure is None and figures["outputs"]["logits"]["judge"]["unstable_in_fp32"] == 0


@pytest.mark.parametrize("judged", [False, True])
def test_outputs_without_decisions_get_no_draws(judged):
    """A generic (cosine) output has no units to leave out: no session is built for the floor."""
    model = weighted_model()
    feeds = [{"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}]
    tasks = {"y": {"task": "classify"}} if judged else None
    reference = Reference(session(model), EvalData(feeds, "one", False), Criteria(0.99, tasks=tasks), model)
    assert ("weight_noise" in reference.floor) == judged
