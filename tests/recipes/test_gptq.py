"""GPTQ rounding of q4 weights: it lands on onnxruntime's own 4-bit levels and moves the outputs less than nearest
rounding on data like the calibration data; too few calibration rows leave a MatMul to nearest rounding."""

import numpy as np
import onnxruntime as ort
import pytest
import tinymodels

from onnxdtype.calibration.grams import Grams, input_grams, read_grams, write_grams
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.normalize import normalize
from onnxdtype.recipes import blockwise
from onnxdtype.recipes.gptq import _block_scales, differing_levels, round_weights, rounded_weight

RNG = np.random.default_rng(0)
MIXING = RNG.standard_normal((64, 64))  # correlated input features, as real activations are


def rows(count: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, 64)) @ MIXING * 0.3).astype(np.float32)


def fresh_mlp():
    return normalize(tinymodels.mlp(), blockwise.PASSES)[0]


def output_error(model, x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean((ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0] - ref) ** 2))


def test_rounded_weight_is_on_the_blocks_levels_and_beats_nearest_on_its_data():
    x = rows(512, 1).astype(np.float64)
    weight = (RNG.standard_normal((64, 24)) * 0.1).astype(np.float32)
    rounded = rounded_weight(weight, x.T @ x, 16)
    scales, _ = _block_scales(weight, 16)
    steps = rounded.reshape(4, 16, 24) / scales.T[:, None, :]
    assert np.allclose(steps, np.round(steps), atol=1e-4) and -8 - 1e-4 <= steps.min() and steps.max() <= 7 + 1e-4
    blocks = np.abs(weight.reshape(4, 16, 24)).max(axis=1)
    assert np.array_equal(np.abs(rounded.reshape(4, 16, 24)).max(axis=1), blocks)  # each block's scale unchanged
    nearest = np.clip(np.round(weight.reshape(4, 16, 24) / scales.T[:, None, :]), -8, 7) * scales.T[:, None, :]
    gptq_error = np.sum((x @ (weight - rounded)) ** 2)
    nearest_error = np.sum((x @ (weight - nearest.reshape(64, 24))) ** 2)
    assert gptq_error < 0.7 * nearest_error


def test_a_feature_never_seen_in_calibration_keeps_its_nearest_rounding():
    x = rows(512, 2).astype(np.float64)
    x[:, 5] = 0.0  # input feature 5 is always zero on the calibration data, not necessarily later
    weight = (RNG.standard_normal((64, 8)) * 0.1).astype(np.float32)
    rounded = rounded_weight(weight, x.T @ x, 16)
    scales, _ = _block_scales(weight, 16)
    assert np.allclose(rounded[5], np.clip(np.round(weight[5] / scales[:, 0]), -8, 7) * scales[:, 0])


def test_q4_gptq_variant_holds_exactly_the_rounded_levels_and_is_closer_on_held_out_rows(tmp_path):
    model = normalize(tinymodels.mlp(), blockwise.PASSES)[0]
    samples = [{"x": rows(128, seed)} for seed in range(4)]
    write_grams(tmp_path / "grams.npz", input_grams(model, samples, ["x", "r"], tmp_path))
    stored = read_grams(tmp_path / "grams.npz")

    _, rounded, _ = round_weights(model, stored, ["mm1", "mm2"], 16)
    assert set(rounded) == {"h", "y"}
    assert differing_levels(model, rounded) == ["h", "y"]  # still float MatMuls: not what GPTQ rounded for
    options = blockwise.Options(block_size=16, rounding="gptq", grams_file=str(tmp_path / "grams.npz"))
    gptq = blockwise.build(fresh_mlp(), options)  # a fresh model each: onnxruntime's quantizer edits its input
    nearest = blockwise.build(fresh_mlp(), blockwise.Options(block_size=16))
    assert gptq.params["gptq_rounded"] == 2 and gptq.params["calibration_samples"] == 4
    assert differing_levels(gptq.model, rounded) == []  # onnxruntime stored exactly GPTQ's levels
    assert differing_levels(nearest.model, rounded) == ["h", "y"]  # and they are not nearest rounding's
    held_out = rows(256, 99)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": held_out})[0]
    assert output_error(gptq.model, held_out, ref) < 0.8 * output_error(nearest.model, held_out, ref)


def test_too_few_calibration_rows_leave_a_matmul_to_nearest_rounding():
    model = normalize(tinymodels.mlp(), blockwise.PASSES)[0]
    x = rows(40, 3).astype(np.float64)  # 40 rows against 64 input features: an under-determined fit
    grams = Grams({"x": x.T @ x}, {"x": 40}, 1)
    _, rounded, nearest = round_weights(model, grams, ["mm1", "mm2"], 16)
    assert rounded == {} and nearest == ["mm1", "mm2"]  # mm2's input has no Gram matrix at all


def test_matmuls_inside_if_branches_stay_nearest(tmp_path):
    model = normalize(tinymodels.if_subgraph(), blockwise.PASSES)[0]
    write_grams(tmp_path / "grams.npz", input_grams(model, [{"x": rows(4, 0)}], [], tmp_path))  # no main MatMul
    variant = blockwise.build(model, blockwise.Options(rounding="gptq", grams_file=str(tmp_path / "grams.npz")))
    assert variant.params["gptq_rounded"] == 0 and len(variant.params["gptq_left_nearest"]) == 2


def test_gptq_needs_calibration_and_symmetric_4bit_blocks():
    model = normalize(tinymodels.mlp(), blockwise.PASSES)[0]
    assert blockwise.check(model, blockwise.Options(rounding="gptq")) == blockwise.NEEDS_CALIBRATION
    assert blockwise.check(model, blockwise.Options()) is None
    with pytest.raises(OnnxDtypeError, match="symmetric"):
        blockwise.Options(rounding="gptq", symmetric=False)
    with pytest.raises(OnnxDtypeError, match="rounding 'best' is not valid"):
        blockwise.Options(rounding="best")
