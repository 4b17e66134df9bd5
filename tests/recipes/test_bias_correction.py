"""Bias correction: the mean shift of rounded weights goes back into the biases, exactly for the weights onnxruntime
made, whichever form the bias takes (a Conv's input, the Add after a MatMul, none)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import tinymodels
from numerics import CountingSamples, session
from onnx import numpy_helper

from onnxdtype.calibration import calibrate
from onnxdtype.normalize import normalize
from onnxdtype.recipes import static
from onnxdtype.recipes.bias_correction import corrected_biases, dequantized_weights


def positive(shape: tuple[int, ...], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs with a non-zero mean per channel, as post-activation features are: where rounding shifts outputs."""
    rng = np.random.default_rng(seed)
    return [{"x": (rng.random(shape) * 2).astype(np.float32)} for _ in range(count)]


def prepared(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tmp_path):
    """The normalized model, its calibration, and its s8u8 QDQ variant built without correction."""
    model = normalize(model, static.PASSES)[0]
    calibration = calibrate(model, CountingSamples(feeds), "minmax", tmp_path)
    options = static.options_for("s8u8", static.Options(ranges_file=str(calibration.path), float_tail=False,
                                                        equalize=False, bias_correction=False))
    return model, calibration, static.build(model, options).model


def rounded(model: onnx.ModelProto, quantized: onnx.ModelProto, only: set[str] | None = None) -> onnx.ModelProto:
    """`model` with each weight (of `only` these nodes) replaced by the one `quantized` dequantizes: weight rounding
    alone, in float."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {t.name: t for t in copy.graph.initializer}
    for node in copy.graph.node:
        weight = dequantized_weights(quantized).get(node.name)
        if weight is not None and (only is None or node.name in only):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), node.input[1]))
    return copy


def mean_output(model: onnx.ModelProto, feeds, output: str) -> np.ndarray:
    """Per-channel mean of `output` (channels on axis 1 for 4-D, last otherwise), averaged over the feeds."""
    if output not in {o.name for o in model.graph.output}:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    run = session(model)
    values = [run.run([output], feed)[0] for feed in feeds]
    return np.mean([v.mean(axis=(0, 2, 3)) if v.ndim == 4 else v.reshape(-1, v.shape[-1]).mean(axis=0)
                    for v in values], axis=0)


def test_a_matmul_shift_goes_into_its_add_and_is_given_back_exactly(tmp_path):
    feeds = positive((4, 64), 8, seed=0)
    model, calibration, quantized = prepared(tinymodels.mlp(), feeds, tmp_path)
    fixed, _, count = corrected_biases(model, quantized, calibration, {"mm1"})
    assert count == 1 and len(fixed.graph.node) == len(model.graph.node)  # no new node: the Add's bias took it
    assert next(n for n in fixed.graph.node if n.name == "add1").input[1] == "mm1/onnxdtype_corrected_bias"
    want = mean_output(model, feeds, "hb")
    lost = np.abs(mean_output(rounded(model, quantized), feeds, "hb") - want).max()
    kept = np.abs(mean_output(rounded(fixed, quantized), feeds, "hb") - want).max()
    assert lost > 1e-3 and kept < 1e-5 * max(1.0, float(np.abs(want).max()))


def test_a_matmul_without_an_add_gets_one_and_its_output_keeps_its_name(tmp_path):
    feeds = positive((4, 64), 8, seed=0)
    model, calibration, quantized = prepared(tinymodels.mlp(), feeds, tmp_path)
    fixed, ranges, count = corrected_biases(model, quantized, calibration, {"mm2"})
    added = [n for n in fixed.graph.node if n.name == "mm2/onnxdtype_bias_correction"]
    assert count == 1 and len(added) == 1 and added[0].output[0] == "y"
    assert ranges.ranges[added[0].input[0]] == calibration.ranges["y"]  # the renamed MatMul output has a range
    onnx.checker.check_model(fixed)
    want = mean_output(model, feeds, "y")
    lost = np.abs(mean_output(rounded(model, quantized, {"mm2"}), feeds, "y") - want).max()
    kept = np.abs(mean_output(rounded(fixed, quantized, {"mm2"}), feeds, "y") - want).max()
    assert lost > 1e-3 and kept < 1e-5 * max(1.0, float(np.abs(want).max()))


def test_a_conv_without_a_bias_gets_one_and_the_padded_borders_stay_close(tmp_path):
    feeds = positive((1, 8, 16, 16), 8, seed=1)
    model, calibration, quantized = prepared(tinymodels.conv_stack(), feeds, tmp_path)
    nodes = {n.name for n in model.graph.node if n.op_type == "Conv"}
    fixed, _, count = corrected_biases(model, quantized, calibration, nodes)
    assert count == len(nodes) == 2
    for output in ("c1", "y"):  # a full conv without bias, then a depthwise one with
        want = mean_output(model, feeds, output)
        lost = np.abs(mean_output(rounded(model, quantized), feeds, output) - want).max()
        kept = np.abs(mean_output(rounded(fixed, quantized), feeds, output) - want).max()
        assert kept < 0.3 * lost, output  # the inner positions exactly; the padded border ring only nearly


def test_static_corrects_when_asked_and_records_it(tmp_path):
    feeds = positive((1, 8, 16, 16), 8, seed=1)
    model, calibration, _ = prepared(tinymodels.conv_stack(), feeds, tmp_path)
    options = static.options_for("s8u8", static.Options(ranges_file=str(calibration.path), float_tail=False))
    off = static.build(model, options)
    assert not off.params["bias_correction"] and off.params["corrected_biases"] == 0  # the default
    variant = static.build(model, dataclasses.replace(options, bias_correction=True))
    assert variant.params["bias_correction"] and variant.params["corrected_biases"] == 2
    assert any(note.startswith("bias correction: 2") for note in variant.notes)
    held_out = positive((1, 8, 16, 16), 4, seed=2)
    want = mean_output(model, held_out, "y")
    assert np.abs(mean_output(variant.model, held_out, "y") - want).mean() \
        < np.abs(mean_output(off.model, held_out, "y") - want).mean()
