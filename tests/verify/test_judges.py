"""Task judges against hand-computed figures, the CLI task syntax, and the guesses on tiny and real models."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.verify.judges import (
    JUDGES,
    TaskSpec,
    guess_tasks,
    make_judge,
    parse_task,
    recurrent_pairs,
    required_agreement,
)
from onnxdtype.verify.judges.base import percent_below
from onnxdtype.verify.judges.ctc import edit_distance, format_alike, greedy_decode, width_twins
from onnxdtype.verify.judges.generic import cosine_for
from onnxdtype.verify.judges.guess import RULES, Output
from onnxdtype.verify.metrics import OutputStats

RNG = np.random.default_rng(0)


def judged(task: str, pairs, **params):
    judge = make_judge(TaskSpec(task, params))
    for ref, got in pairs:
        judge.add(np.asarray(ref, np.float32), np.asarray(got, np.float32))
    json.dumps(judge.figures())  # figures go to the manifest as they are
    return judge


# --- ctc ---------------------------------------------------------------------------------------------------

def one_hot(paths: list[list[int]], classes: int = 6) -> np.ndarray:
    """Per-step scores [b, T, C] whose argmax is `paths`."""
    return np.eye(classes, dtype=np.float32)[np.array(paths)] * 0.9 + 0.01


def test_greedy_decode_collapses_repeats_then_drops_blanks():
    assert greedy_decode(np.array([0, 3, 3, 0, 3, 5, 5]), blank=0) == [3, 3, 5]
    assert greedy_decode(np.array([5, 5, 1, 5]), blank=5) == [1]
    assert edit_distance([3, 3, 5], [3, 3, 4, 5]) == 1
    assert edit_distance([1, 2, 3], []) == 3


def test_ctc_one_flipped_step_makes_its_line_disagree():
    ref = one_hot([[0, 3, 3, 0, 3, 5, 5], [0, 1, 0, 2, 2, 0, 0]])
    got = one_hot([[0, 3, 3, 0, 3, 4, 5], [0, 1, 0, 2, 2, 0, 0]])  # line 0 reads [3, 3, 4, 5]
    judge = judged("ctc", [(ref, got)])
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unit"]) == (0.5, 2, "lines")
    assert (f["chars"], f["edits"], f["empty_lines"]) == (5, 1, 0) and f["char_agreement"] == pytest.approx(0.8)
    assert judge.failure(0.97) == "ctc: 1/2 lines decode identically (50.0 %) < 97 %; 2 lines: one is 50.0 %"
    assert judged("ctc", [(ref, ref)]).failure(0.999) is None


def test_ctc_flip_where_fp32_itself_is_undecided_counts_apart():
    """PP-OCRv4 rec in fp16 read 'markers are' where fp32 read 'markersare': fp32's blank 0.4955 vs space 0.5018."""
    ref = one_hot([[0, 3, 0, 4, 0]])
    ref[0, 2, [0, 1]] = [0.5018, 0.4955]  # fp32 barely prefers the blank over class 1 at step 2
    got = ref.copy()
    got[0, 2, [0, 1]] = [0.4984, 0.4989]  # the variant tips the other way: reads [3, 1, 4]
    f = judged("ctc", [(ref, got)]).figures()
    assert (f["agreement"], f["undecided_lines"], f["edits"]) == (1.0, 1, 1)
    assert judged("ctc", [(ref, got)], margin=0.001).figures()["agreement"] == 0.0  # a tighter margin: a misread
    decided = one_hot([[0, 3, 0, 4, 0]])
    assert judged("ctc", [(decided, got)]).figures()["agreement"] == 0.0  # fp32 sure of the blank: a misread


def test_ctc_space_at_either_end_of_a_line_is_margin_not_text():
    """PP-OCRv4 rec read ' ONNX Runtime on CPU' where an 8-bit variant read 'ONNX Runtime on CPU'."""
    ref = one_hot([[5, 0, 3, 0, 5, 0, 4, 0, 5]])  # class 5 the space: reads ' 3 4 '
    got = one_hot([[0, 0, 3, 0, 5, 0, 4, 0, 0]])  # reads '3 4'
    f = judged("ctc", [(ref, got)], space=5).figures()
    assert (f["agreement"], f["edge_space_lines"], f["edits"]) == (1.0, 1, 0)
    assert judged("ctc", [(ref, got)]).figures()["agreement"] == 0.0  # no space class named: every label is text
    inner = one_hot([[5, 0, 3, 0, 0, 0, 4, 0, 5]])  # reads ' 34 ': the space between words is text
    assert judged("ctc", [(ref, inner)], space=5).figures()["agreement"] == 0.0


def test_ctc_width_twins_read_as_one_character_and_are_counted_apart():
    """PP-OCRv4 rec: fp32 read 'markers np.zeros like（coins)', its 8-bit variants '...like（coins）' (')' vs '）')."""
    ref = one_hot([[0, 3, 0, 4, 4, 0, 1]])  # reads [3, 4, 1]
    got = one_hot([[0, 3, 0, 4, 5, 0, 2]])  # reads [3, 4, 5, 2]: class 5 is 4's width twin, 2 is 1's
    f = judged("ctc", [(ref, got)], alike="5=4 2=1").figures()  # 4,5 in a row: one character, as CTC reads it
    assert (f["agreement"], f["width_form_lines"], f["edits"]) == (1.0, 1, 0)
    assert judged("ctc", [(ref, got)]).figures()["agreement"] == 0.0  # no twins named: the codes decide
    other = one_hot([[0, 3, 0, 3, 4, 0, 1]])  # reads [3, 3, 4, 1]: a real misread stays one
    f = judged("ctc", [(ref, other)], alike="5=4 2=1").figures()
    assert (f["agreement"], f["width_form_lines"]) == (0.0, 0)
    judge = judged("ctc", [(ref, got)], alike="5=4 2=1")
    assert "1 only in characters' full/half-width forms" in judge.summary()


def test_width_twins_pair_full_and_half_width_forms_only():
    classes = ["", ")", "a", "）", "ａ", "②", "2", "\u3000", " ", "郎", "郎"]
    twins = width_twins(classes)
    assert twins[3] == 1 and twins[4] == 2  # full width -> ASCII
    assert twins[8] == 7  # ' ' after the ideographic space: the first of the pair stands for both
    assert twins[10] == 9  # a CJK compatibility ideograph is its canonical character (NFC)
    assert 5 not in twins and 6 not in twins  # a circled 2 is not a 2 (NFKC would say it is)
    assert format_alike({3: 1, 10: 9}) == "3=1 10=9"


def test_ctc_reads_time_first_batch_of_one_and_a_last_blank():
    ref = one_hot([[0, 3, 3, 0, 3, 5, 5]]).swapaxes(0, 1)  # [T, 1, C]
    got = one_hot([[0, 3, 0, 3, 3, 5, 5]]).swapaxes(0, 1)  # [3, 3, 5] too, by another path
    f = judged("ctc", [(ref, got)]).figures()
    assert (f["agreement"], f["units"]) == (1.0, 1)  # one line of 7 steps, not 7 lines of one
    ref = one_hot([[5, 3, 3, 5, 3, 0, 0]])  # blank last (class 5): reads [3, 3, 0]; blank 0: [5, 3, 5, 3]
    got = one_hot([[3, 3, 3, 5, 3, 0, 0]])  # blank last: [3, 3, 0] as well; blank 0: [3, 5, 3]
    assert judged("ctc", [(ref, got)], blank=-1).figures()["agreement"] == 1.0
    assert judged("ctc", [(ref, got)]).figures()["agreement"] == 0.0


# --- classify ----------------------------------------------------------------------------------------------

def test_classify_counts_top1_flips_and_top5_overlap():
    ref = np.tile(np.arange(6, 0, -1, dtype=np.float32), (4, 1))  # top-1 class 0, top-5 {0..4}
    got = ref.copy()
    got[3, 5] = 10  # row 3: top-1 becomes class 5, top-5 {5, 0, 1, 2, 3}: 4 of 5 shared
    judge = judged("classify", [(ref[:2], got[:2]), (ref[2:], got[2:])])
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unit"]) == (0.75, 4, "predictions")
    assert f["top5_overlap"] == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    assert judge.failure(0.9) == \
        "classify: 3/4 predictions keep their top-1 class (75.0 %) < 90 %; 4 predictions: one is 25.0 %"
    assert judge.failure(0.75) is None


def test_classify_leading_positions_and_a_class_axis_first():
    ref = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    got = ref.copy()
    got[1, 2] = -got[1, 2]  # one of 6 positions surely changes its argmax (4 classes, sign flipped)
    assert judged("classify", [(ref, got)]).figures()["units"] == 6
    assert judged("classify", [(ref, got)]).figures()["agreement"] == pytest.approx(5 / 6)
    assert judged("classify", [(ref.swapaxes(1, 2), got.swapaxes(1, 2))], axis=1).figures()["agreement"] == \
        pytest.approx(5 / 6)
    with pytest.raises(OnnxDtypeError, match="axis=3 is outside"):
        judged("classify", [(ref, got)], axis=3)


def test_classify_single_score_is_a_yes_no_decision():
    f = judged("classify", [([[0.9], [0.2]], [[0.6], [0.55]])]).figures()  # probabilities: threshold 0.5
    assert (f["agreement"], f["threshold"]) == (0.5, 0.5)
    f = judged("classify", [([[3.0], [-2.0]], [[0.4], [-0.1]])]).figures()  # logits: threshold 0
    assert (f["agreement"], f["threshold"]) == (1.0, 0.0)


def test_failure_percentages_read_below_the_requirement():
    assert percent_below(22 / 24, 0.97) == "91.7 %"
    assert percent_below(0.9985, 0.999) == "99.85 %"  # not "99.9 %" < 99.9 %


def test_a_nan_where_fp32_has_none_fails_whatever_the_agreement():
    got = np.array([[1.0, 0.0, np.nan]])
    assert judged("classify", [([[1.0, 0.0, 0.5]], got)]).failure(0.0) == \
        "classify: 1 NaN/Inf values where fp32 has 0"


# --- detect ------------------------------------------------------------------------------------------------

def yolo_head(boxes: list[tuple[float, float, float, float, int, float]], anchors: int = 10, nc: int = 3):
    """A v8 head [1, 4+nc, anchors] holding (cx, cy, w, h, class, score) boxes, every other anchor at score 0."""
    head = np.zeros((1, 4 + nc, anchors), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        head[0, :4, i] = cx, cy, w, h
        head[0, 4 + cls, i] = score
    return head


def test_detect_one_class_flip_of_two_boxes_is_f1_one_half():
    # box 2 overlaps box 0 at IoU 360/440 = 0.82 > 0.45: NMS keeps one box per object, 2 detections in all
    ref = yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 150, 30, 30, 1, 0.8), (52, 50, 20, 20, 0, 0.7)])
    got = yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 150, 30, 30, 2, 0.8), (52, 50, 20, 20, 0, 0.7)])
    judge = judged("detect", [(ref, got)])
    f = judge.figures()
    # 1 true positive, 1 miss (class 1), 1 extra (class 2): F1 = 2*1 / (2 + 2)
    assert (f["agreement"], f["units"], f["unit"], f["matched"], f["missed"], f["extra"]) == \
        (0.5, 2, "detections", 1, 1, 1)
    assert judge.failure(0.97) == \
        "detect: F1 over 2 fp32 detections: 1 matched, 1 missed, 1 extra (50.0 %) < 97 %; " \
        "2 detections: one is 50.0 %"


def test_detect_matches_by_iou_and_reads_the_v5_layout():
    ref = yolo_head([(50, 50, 20, 20, 0, 0.9), (150, 150, 30, 30, 1, 0.8)])
    got = yolo_head([(55, 50, 20, 20, 0, 0.9), (165, 150, 30, 30, 1, 0.8)])  # IoU 300/500 = 0.6 and 450/1350
    assert judged("detect", [(ref, got)]).figures()["agreement"] == 0.5
    assert judged("detect", [(ref, got)], match_iou=0.3).figures()["agreement"] == 1.0

    def v5(head):  # [1, N, 5+nc] with objectness 1
        return np.concatenate([head[:, :4], np.ones_like(head[:, :1]), head[:, 4:]], 1).swapaxes(1, 2)[:, :8]
    f = judged("detect", [(v5(ref), v5(got))]).figures()  # [1, 8, 8] read as v5 since 8 >= 8
    assert (f["agreement"], f["units"]) == (0.5, 2)


def test_detect_with_no_detections_anywhere_agrees_and_says_why():
    empty = yolo_head([])
    f = judged("detect", [(empty, empty)]).figures()
    assert f["agreement"] == 1.0 and f["units"] == 0 and "no detection" in f["note"]
    f = judged("detect", [(empty, yolo_head([(50, 50, 20, 20, 0, 0.9)]))]).figures()
    assert f["agreement"] == 0.0 and f["extra"] == 1


# --- embed -------------------------------------------------------------------------------------------------

EMBEDDINGS = np.array([[1, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 0.95, 0.05]], np.float32)


def test_embed_a_sample_whose_nearest_neighbour_changes_disagrees():
    got = EMBEDDINGS.copy()
    got[0] = [0.1, 0, 0.9, 0]  # now nearest to sample 2; samples 1..3 keep theirs
    judge = judged("embed", [(EMBEDDINGS[:2], got[:2]), (EMBEDDINGS[2:], got[2:])])
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unit"]) == (0.75, 4, "samples")
    assert f["cosine_min"] == pytest.approx(0.1 / np.hypot(0.1, 0.9), rel=1e-5)
    assert f["cosine_mean"] == pytest.approx((0.1 / np.hypot(0.1, 0.9) + 3) / 4, rel=1e-5)
    assert judge.failure(0.97) == \
        "embed: 3/4 samples keep their 1 nearest neighbour(s) (75.0 %) < 97 %; 4 samples: one is 25.0 %"


def test_embed_pools_tokens_and_falls_back_to_cosine_below_three_samples():
    tokens = np.repeat(EMBEDDINGS[:, None], 3, 1)  # [4, T=3, D]: the mean of identical tokens is the token
    got = tokens.copy()
    got[0, :] = [0.1, 0, 0.9, 0]
    assert judged("embed", [(tokens, got)]).figures()["agreement"] == 0.75
    assert judged("embed", [(tokens, got)], pool="cls", k=3).figures()["agreement"] == 1.0  # all 3 others
    f = judged("embed", [(EMBEDDINGS[:2], got[:2, 0])]).figures()
    assert f["agreement"] == 0.5 and "fewer than 3" in f["agreement_by"]


# --- dense -------------------------------------------------------------------------------------------------

def test_dense_agreement_is_the_f1_of_regions_matched_by_iou():
    ref = np.zeros((1, 1, 12, 12), np.float32)
    got = ref.copy()
    ref[0, 0, :2, :2] = 0.9  # region A: 4 pixels
    got[0, 0, :2, 1:3] = 0.8  # overlaps A by 2 of 6 pixels: IoU 1/3, no match
    ref[0, 0, 6:10, 6:10] = got[0, 0, 6:10, 6:10] = 0.9  # region B: 16 pixels, found again
    got[0, 0, 9, 6] = 0.2  # one boundary pixel lost: B still matches (IoU 15/16)
    empty = np.zeros_like(ref)
    judge = judged("dense", [(ref, got), (empty, empty)], min_area=1)
    f = judge.figures()
    assert (f["agreement"], f["units"], f["unit"], f["threshold"]) == (0.5, 2, "regions", 0.5)  # 2*1 / (2 + 2)
    assert f["pixel_iou"] == pytest.approx(17 / 22)
    assert judge.failure(0.9).startswith("dense: 1 of 2 fp32 regions found again (2 in the variant), F1")
    assert judged("dense", [(ref, got)]).figures()["units"] == 1  # min_area 16 drops the 4-pixel region
    logits = np.where(ref > 0, 4.0, -4.0)
    f = judged("dense", [(logits, logits - 3.0)], min_area=1).figures()  # threshold 0: 4 -> 1 stays foreground
    assert (f["threshold"], f["agreement"]) == (0.0, 1.0)
    assert judged("dense", [(empty, empty)]).figures()["agreement"] == 1.0


# --- generic and state -------------------------------------------------------------------------------------

def test_generic_reproduces_output_stats_and_judges_by_cosine():
    ref = [RNG.standard_normal((2, 8, 5)).astype(np.float32) for _ in range(3)]
    got = [r + RNG.standard_normal(r.shape).astype(np.float32) * 0.05 for r in ref]
    stats = OutputStats("y")
    for r, g in zip(ref, got):
        stats.add(r, g)
    judge = judged("generic", zip(ref, got))
    f = judge.figures()
    assert {k: f[k] for k in stats.figures()} == stats.figures()
    assert (f["agreement"], f["units"], f["unit"]) == (None, 240, "values")
    assert 0.99 < f["cosine"] < 0.9999
    assert judge.failure(0.97) is None  # 8-bit: cosine 0.99
    assert judge.failure(0.999).startswith("generic: cosine 0.99")  # fp16: cosine 0.9999
    assert judged("generic", zip(ref, got), min_cosine=0.5).failure(0.999) is None
    assert judged("generic", [(ref[0], ref[0] + 5e-5)]).failure(0.999) is None  # below atol


def test_cosine_for_maps_required_agreement_to_the_family_cosine():
    assert [cosine_for(r) for r in (1.0, 0.999, 0.98, 0.97, 0.95, 0.9, 0.5)] == \
        [0.9999, 0.9999, 0.99, 0.99, 0.98, 0.98, 0.98]


def test_state_outputs_show_figures_but_never_fail():
    judge = judged("state", [(np.ones((1, 8)), -np.ones((1, 8)))])
    assert judge.figures()["cosine"] == -1.0 and judge.failure(0.999) is None


# --- required agreement, parsing ---------------------------------------------------------------------------

def test_required_agreement_by_family_with_overrides():
    assert [required_agreement(b) for b in ("16", "8", "4", "4+16")] == [0.999, 0.97, 0.90, 0.90]
    assert required_agreement("4+16", {"4": 0.8}) == 0.8
    assert required_agreement("4+16", {"4+16": 0.85, "4": 0.8}) == 0.85
    assert required_agreement("8", {"default": 0.5, "16": 1.0}) == 0.5
    with pytest.raises(OnnxDtypeError, match="valid: 16, 8, 4, 4"):
        required_agreement("32")


@pytest.mark.parametrize("text, task, params", [
    ("ctc", "ctc", {}),
    ("dense:threshold=0.3", "dense", {"threshold": 0.3}),
    ("ctc:blank=0", "ctc", {"blank": 0}),
    ("detect:layout=yolo,conf=0.25,iou=0.5", "detect", {"layout": "yolo", "conf": 0.25, "iou": 0.5}),
    (" detect : objectness=false, conf=1 ", "detect", {"objectness": False, "conf": 1.0}),
    ("embed:pool=cls,k=2", "embed", {"pool": "cls", "k": 2}),
    ("generic:min_cosine=0.995,atol=1e-3", "generic", {"min_cosine": 0.995, "atol": 0.001}),
])
def test_parse_task(text, task, params):
    spec = parse_task(text)
    assert (spec.task, spec.params) == (task, params)
    assert all(type(v) is type(params[k]) for k, v in spec.params.items())


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown task 'nope' (valid: classify, ctc, dense, detect, embed, generic, state)"),
    ("ctc:blank", "expected key=value"),
    ("ctc:beam=3", "unknown parameter 'beam' (valid: blank, layout, margin, space, alike)"),
    ("ctc:alike=5:1", "alike expects 'class=class' pairs, got '5:1'"),
    ("ctc:blank=0,blank=1", "blank given twice"),
    ("detect:conf=high", "conf='high' should be float"),
    ("detect:layout=v9", "layout='v9' is not one of auto, yolo, v8, v5"),
    ("detect:conf=1.5", "conf=1.5 is not within [0, 1]"),
    ("embed:k=0", "k=0 should be at least 1"),
    ("embed:k=1.5", "k=1.5 should be int"),
    ("state:atol=1", "unknown parameter 'atol' (valid: none)"),
])
def test_parse_task_errors_are_one_line(text, message):
    with pytest.raises(OnnxDtypeError) as error:
        parse_task(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_every_guess_rule_makes_a_valid_judge():
    recogniser = Output("y", (1, 10, 6), "Softmax", characters=("a", "ａ", ")", "）"), labels=None, fed_back=None)
    for task, _, params, _ in RULES:
        make_judge(TaskSpec(task, params(recogniser) if callable(params) else params))
    assert {task for task, *_ in RULES} | {"generic"} == set(JUDGES)


# --- guess_tasks and recurrent_pairs on tiny models --------------------------------------------------------

def tiny(nodes, inputs, outputs, metadata: dict | None = None) -> onnx.ModelProto:
    """A graph over float tensors; an output given shape None declares no type at all."""
    declared = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    graph = helper.make_graph(nodes, "tiny", declared,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) if s is not None
                               else helper.make_value_info(n, onnx.TypeProto()) for n, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def node(op: str, x: str, y: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, [x], [y], **attrs)


def test_guess_ctc_from_the_alphabet_in_metadata():
    model = tiny([node("Softmax", "x", "y", axis=-1)], [("x", ["b", "T", 5])], [("y", ["b", "T", 5])],
                 {"character": "a\nb\nc"})  # 3 characters + blank + space
    spec = guess_tasks(model)["y"]
    assert (spec.task, spec.params) == ("ctc", {"blank": 0, "space": 4}) and "3 characters" in spec.why
    assert "a space (trimmed at line ends)" in spec.why
    model = tiny([node("Softmax", "x", "y", axis=-1)], [("x", ["b", "T", 5])], [("y", ["b", "T", 5])],
                 {"character": "a\n）\n)\n\u3000"})  # ')' after its full-width twin, an ideographic space
    spec = guess_tasks(model)["y"]
    assert spec.params == {"blank": 0, "alike": "3=2"} and "1 full/half-width twins" in spec.why
    model = tiny([node("Softmax", "x", "y", axis=-1)], [("x", ["b", "T", 6])], [("y", ["b", "T", 6])],
                 {"character": "a\n）\n)\n\u3000"})  # and the space class PaddleOCR appends
    assert guess_tasks(model)["y"].params == {"blank": 0, "space": 5, "alike": "3=2 4=5"}
    model = tiny([node("Softmax", "x", "y", axis=-1)], [("x", ["b", "T", 4])], [("y", ["b", "T", 4])],
                 {"character": "a\nb\nc"})  # 3 characters + blank: no space class
    assert guess_tasks(model)["y"].params == {"blank": 0}


def test_guess_classify_dense_detect_and_generic():
    model = tiny([node("Transpose", "s", "t", perm=[0, 1]), node("Softmax", "x", "s", axis=-1),
                  node("Sigmoid", "m", "map"), node("Identity", "h", "head"), node("Identity", "o", "odd"),
                  node("Softmax", "x", "inferred", axis=-1)],
                 [("x", [1, 2]), ("m", [1, 1, 8, 8]), ("h", [1, 84, 100]), ("o", [1, 2, 3, 4, 5])],
                 [("t", [1, 2]), ("map", [1, 1, 8, 8]), ("head", [1, 84, 100]), ("odd", [1, 2, 3, 4, 5]),
                  ("inferred", None)],
                 {"names": str({i: f"class{i}" for i in range(80)})})
    specs = guess_tasks(model)
    assert {name: s.task for name, s in specs.items()} == \
        {"t": "classify", "map": "dense", "head": "detect", "odd": "generic", "inferred": "classify"}
    assert specs["t"].why == "[1, 2] from Softmax: class scores"  # looked through the Transpose
    assert specs["head"].params == {"layout": "yolo"} and "80 classes" in specs["head"].why
    assert specs["odd"].why == "[1, 2, 3, 4, 5] from an input or constant: no task rule fits: closeness to fp32"


def test_guess_never_raises_on_odd_models():
    model = tiny([helper.make_node("Custom", ["x"], ["y"], domain="nowhere")], [("x", [1])], [("y", None)],
                 {"names": "{{{", "character": ""})
    assert guess_tasks(model)["y"].task == "generic"


def test_recurrent_pairs_and_state_guesses():
    model = tiny([node("Identity", "x", "y"), node("Identity", "h", "hn"), node("Identity", "c", "cn"),
                  node("Identity", "s", "out_state"), node("Identity", "k", "present.0.key")],
                 [("x", [1, 8]), ("h", [1, 1, 8]), ("c", ["n", 1, 8]), ("in_state", [1, 8]), ("s", [1, 16]),
                  ("past_key_values.0.key", ["b", 2, "t", 4]), ("k", ["b", 2, "t", 4])],
                 [("y", [1, 8]), ("hn", [1, 1, 8]), ("cn", [1, 1, 8]), ("out_state", [1, 16]),
                  ("present.0.key", ["b", 2, "t1", 4])])
    pairs = recurrent_pairs(model)
    assert pairs == {"hn": "h", "cn": "c", "present.0.key": "past_key_values.0.key"}  # out_state: 16 vs 8
    specs = guess_tasks(model)
    assert specs["hn"].task == "state" and "fed back as input h" in specs["hn"].why
    assert specs["y"].task == "generic"  # [1, 8] from an Identity: nothing says it is a classifier


# --- real models -------------------------------------------------------------------------------------------

def ocr_models() -> dict[str, Path]:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr_onnxruntime is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    found = {kind: path for path in folder.glob("*.onnx") for kind in ("det", "cls", "rec") if f"_{kind}_" in path.name}
    if len(found) < 3:
        pytest.skip(f"PP-OCR det/cls/rec not all in {folder}")
    return found


@pytest.mark.real
def test_guess_on_pp_ocr():
    guesses = {kind: guess_tasks(onnx.load(path)) for kind, path in ocr_models().items()}
    tasks = {kind: [(s.task, s.params) for s in specs.values()] for kind, specs in guesses.items()}
    alike = dict(pair.split("=") for pair in tasks["rec"][0][1].pop("alike").split())
    assert tasks == {"det": [("dense", {})], "cls": [("classify", {})], "rec": [("ctc", {"blank": 0, "space": 6624})]}
    assert alike["5535"] == "965" and alike["5534"] == "721"  # '）' reads as ')', '（' as '('
    assert alike["5710"] == "6624" and "6624" not in alike  # the ideographic space as the trimmed space class
    assert len(alike) < 150  # width twins only: PP-OCR's 6623 characters are not folded wholesale
