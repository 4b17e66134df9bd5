"""The MatMul inputs' X^T X on the calibration data, as GPTQ rounding reads them."""

import numpy as np
import tinymodels
from onnx import numpy_helper

from onnxdtype.calibration.grams import input_grams, matmul_inputs, read_grams, write_grams
from onnxdtype.normalize import normalize
from onnxdtype.recipes import blockwise


def test_grams_sum_every_row_of_every_sample_and_survive_their_file(tmp_path):
    model = normalize(tinymodels.mlp(), blockwise.PASSES)[0]
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((n, 64)).astype(np.float32)} for n in (3, 5, 8)]  # rows differ per sample
    assert matmul_inputs(model) == ["x", "r"]
    grams = input_grams(model, samples, ["x", "r"], tmp_path)
    x = np.concatenate([s["x"] for s in samples]).astype(np.float64)
    assert grams.samples == 3 and grams.rows == {"x": 16, "r": 16}
    assert np.allclose(grams.matrices["x"], x.T @ x, rtol=1e-4, atol=1e-3)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    r = np.maximum(x @ weights["w1"] + weights["b1"], 0)  # the second MatMul's input, an intermediate tensor
    assert np.allclose(grams.matrices["r"], r.T @ r, rtol=1e-4, atol=1e-3)
    write_grams(tmp_path / "grams.npz", grams)
    stored = read_grams(tmp_path / "grams.npz")
    assert (stored.rows, stored.samples) == (grams.rows, 3)
    assert all(np.array_equal(stored.matrices[k], grams.matrices[k].astype(np.float32)) for k in grams.matrices)
    assert [p.name for p in tmp_path.iterdir()] == ["grams.npz"]  # the augmented model was scratch


def test_a_model_without_main_graph_matmuls_needs_no_pass(tmp_path):
    model = normalize(tinymodels.if_subgraph(), blockwise.PASSES)[0]
    assert matmul_inputs(model) == []
    grams = input_grams(model, [{"x": np.ones((2, 64), np.float32)}], [], tmp_path)
    assert (grams.matrices, grams.rows, grams.samples) == ({}, {}, 0)
