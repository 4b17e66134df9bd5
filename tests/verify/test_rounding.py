"""fp32's own noise floor (verify.rounding): which inputs are redrawn, by how much, and what the judges leave out."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, evaluate, session
from onnxdtype.verify.judges import TaskSpec, make_judge
from onnxdtype.verify.rounding import redrawn, rounding_steps

RNG = np.random.default_rng(0)


def image_feed(std=(0.5, 0.5, 0.5), shape=(1, 3, 8, 8)) -> dict[str, np.ndarray]:
    """An 8-bit image normalized as detectors do: (k/255 - mean) / std per channel."""
    pixels = RNG.integers(0, 256, shape)
    return {"x": ((pixels / 255 - 0.5) / np.asarray(std).reshape(1, -1, 1, 1)).astype(np.float32)}


def test_an_8bit_image_is_redrawn_within_half_its_step_and_nothing_else_is():
    feeds = [image_feed() for _ in range(3)]
    step = rounding_steps(feeds)["x"]
    assert step == pytest.approx(2 / 255, rel=1e-4)
    moved = redrawn(feeds[0], {"x": step}, np.random.default_rng(1))["x"] - feeds[0]["x"]
    assert 0 < np.abs(moved).max() <= step / 2 + 1e-7
    per_channel = rounding_steps([image_feed(std=(0.229, 0.224, 0.225)) for _ in range(3)])["x"]
    assert per_channel.ravel() == pytest.approx([1 / 255 / s for s in (0.229, 0.224, 0.225)], rel=1e-3)
    others = [{"ids": RNG.integers(0, 1000, (1, 16)), "mask": (RNG.random((1, 64)) > 0.5).astype(np.float32),
               "audio": RNG.standard_normal((1, 400)).astype(np.float32)} for _ in range(3)]
    assert rounding_steps(others) == {}  # token ids, a 0/1 mask, continuous values: no floor


def classifier(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_label_fp32_flips_under_its_own_rounding_is_not_judged():
    """Sample 0 is decided; sample 1 sits on fp32's decision boundary (its two logits equal)."""
    feeds = [image_feed() for _ in range(2)]
    weight = RNG.standard_normal((192, 2))
    flat = feeds[1]["x"].reshape(-1)
    weight[:, 1] = weight[:, 0] - flat * 1e-5 / (flat @ flat)  # logit 1 = logit 0 + 1e-5 on sample 1
    flat0 = feeds[0]["x"].reshape(-1)
    weight[:, 1] += flat0 * 10 / (flat0 @ flat0) - flat * (flat0 @ flat) * 10 / (flat0 @ flat0) / (flat @ flat)
    fp32 = classifier(weight)
    logits = [session(fp32).run(None, f)[0] for f in feeds]
    assert logits[0][0, 1] - logits[0][0, 0] > 5 and abs(logits[1][0, 1] - logits[1][0, 0]) < 1e-3
    data = EvalData(feeds, "two images", False)
    task = {"logits": {"task": "classify", "params": {"margin": 0.0}}}  # no coin-flip margin: the floor alone
    criteria = Criteria(0.99, tasks=task)
    reference = Reference(session(fp32), data, criteria)
    assert [m["logits"].tolist() for m in reference.unstable] == [[False], [True]]

    tipped = weight.copy()  # a variant that reads sample 1 the other way, sample 0 as fp32
    tipped[:, 1] += flat * 1e-2 / (flat @ flat) * np.sign(logits[1][0, 0] - logits[1][0, 1])
    figures, failure = evaluate(reference, session(classifier(tipped)), feeds, criteria)
    judge = figures["outputs"]["logits"]["judge"]
    assert failure is None and (judge["units"], judge["unstable_in_fp32"], judge["unstable_read_differently"]) == \
        (1, 1, 1)
    assert figures["rounding"] == {"inputs": ["x"], "draws": 8, "moved": {"logits": 1}}

    off = Criteria(0.99, tasks=task, rounding_draws=0)  # no floor: the flip counts
    _, failure = evaluate(Reference(session(fp32), data, off), session(classifier(tipped)), feeds, off)
    assert failure and "1/2 predictions" in failure

    wrecked = weight.copy()
    wrecked[:, [0, 1]] = wrecked[:, [1, 0]]  # both samples flipped: the decided one counts
    _, failure = evaluate(reference, session(classifier(wrecked)), feeds, criteria)
    assert failure == ("output logits: classify: 0/1 predictions keep their top-1 class (0.0 %) < 97 %; "
                       "1 predictions: one is 100.0 %; 1 more that fp32 itself decides differently under its "
                       "input's rounding or its weights' noise not judged")


def test_ctc_leaves_out_unstable_lines_and_refuses_when_nothing_is_left():
    ref = np.eye(6, dtype=np.float32)[np.array([[0, 3, 0, 4, 0], [0, 1, 0, 2, 0]])]
    got = ref.copy()
    got[1, 3] = np.eye(6)[5]  # line 1 reads [1, 5] instead of [1, 2]
    judge = make_judge(TaskSpec("ctc"))
    redraw = got.copy()  # fp32 itself, redrawn, reads line 1 as the variant does
    unstable = judge.unstable_units(ref, [ref, redraw])
    assert unstable.tolist() == [False, True]
    judge.add(ref, got, unstable)
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unstable_in_fp32"], f["unstable_read_differently"]) == (1.0, 1, 1, 1)
    assert judge.failure(0.97) is None
    every = make_judge(TaskSpec("ctc"))
    every.add(ref, got, np.array([True, True]))
    assert "fp32 itself decides every one of its 2 lines differently" in every.failure(0.97)


def test_a_yes_no_score_near_its_threshold_is_unstable_at_that_threshold():
    """A single probability per prediction: the decision is the threshold (0.5 for probabilities), on every redraw."""
    judge = make_judge(TaskSpec("classify"))
    ref = np.array([[0.9], [0.501], [0.1]], np.float32)
    redraw = np.array([[0.88], [0.499], [0.12]], np.float32)
    assert judge.unstable_units(ref, [redraw]).tolist() == [False, True, False]
    got = np.array([[0.9], [0.2], [0.1]], np.float32)  # the variant says no where fp32 barely said yes
    judge.add(ref, got, judge.unstable_units(ref, [redraw]))
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unstable_in_fp32"], f["unstable_read_differently"]) == (1.0, 2, 1, 1)
