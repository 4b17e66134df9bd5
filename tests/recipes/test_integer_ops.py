"""Ops without an integer kernel spelled with ops that have one: exact in float, ranges derived, chains kept."""

from __future__ import annotations

import numpy as np
import tinymodels
from numerics import session

from onnxdtype.calibration import calibrate
from onnxdtype.normalize import normalize
from onnxdtype.recipes import static
from onnxdtype.recipes.integer_ops import integer_spellings
from onnxdtype.verify.kernels import kernels


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((1, 3, 16, 16)) * 2).astype(np.float32)} for _ in range(count)]


class Samples(list):
    fingerprint = "hardswish-chain"


def test_spellings_are_exact_in_float_and_their_new_tensors_get_ranges(tmp_path):
    model = normalize(tinymodels.hardswish_chain(), static.PASSES)[0]
    calibration = calibrate(model, Samples(feeds(8, 1)), "minmax", tmp_path)
    spelled, ranges, counts = integer_spellings(model, calibration)
    assert counts == {"Div": 1, "HardSwish": 1, "HardSigmoid": 1}
    assert not {"HardSwish", "HardSigmoid", "Div"} & {n.op_type for n in spelled.graph.node}
    for feed in feeds(4, 2):
        expected = session(model).run(None, feed)[0]
        assert np.allclose(session(spelled).run(None, feed)[0], expected, rtol=1e-5, atol=1e-5)
    new = {o for n in spelled.graph.node for o in n.output} - {o for n in model.graph.node for o in n.output}
    assert new and new <= set(ranges.ranges)
    gate = next(name for name in new if name.endswith("_gate"))
    assert 0.0 <= ranges.ranges[gate][0] <= ranges.ranges[gate][1] <= 6.0
    assert ranges.ranges == {**calibration.ranges, **{name: ranges.ranges[name] for name in new}}  # old ones kept


def test_a_chain_placement_runs_in_integer_kernels_from_input_to_the_float_tail(tmp_path):
    """Without the spellings onnxruntime leaves a DequantizeLinear/QuantizeLinear pair around each of HardSwish,
    Div and HardSigmoid; with them only the graph input's Q and the DQ before the float head remain."""
    model = normalize(tinymodels.hardswish_chain(), static.PASSES)[0]
    calibration = calibrate(model, Samples(feeds(8, 1)), "minmax", tmp_path)
    options = static.options_for("u8u8", static.Options(ranges_file=str(calibration.path), kernel_ops_only=False,
                                                        equalize=False))
    variant = static.build(model, options)
    assert variant.params["integer_spellings"] == {"Div": 1, "HardSwish": 1, "HardSigmoid": 1}
    assert variant.params["folded_scales"] == 3  # HardSwish's 1/6, the Div's 1/2, HardSigmoid's alpha
    (tmp_path / "v.onnx").write_bytes(variant.model.SerializeToString())
    found = kernels(tmp_path / "v.onnx")
    assert found["integer"]["QLinearConv"] == 2 and found["integer"]["QLinearMul"] == 2  # x * gate, the SE gate
    assert sum(found["conversions"].values()) == 2, found
    held_out = feeds(4, 3)
    for feed in held_out:
        expected = session(model).run(None, feed)[0]
        got = session(variant.model).run(None, feed)[0]
        assert np.dot(expected.ravel(), got.ravel()) / np.linalg.norm(expected) / np.linalg.norm(got) > 0.99


def test_folding_constant_scales_drops_the_multiplications_and_their_requantization(tmp_path, monkeypatch):
    """Each Mul by a positive constant between Q/DQ pairs becomes one DequantizeLinear with a scaled scale: the
    graph loses those Muls and their QuantizeLinear, and the variant stays as close to fp32 as with them."""
    from onnxdtype.recipes import integer_ops

    model = normalize(tinymodels.hardswish_chain(), static.PASSES)[0]
    calibration = calibrate(model, Samples(feeds(8, 1)), "minmax", tmp_path)
    options = static.options_for("u8u8", static.Options(ranges_file=str(calibration.path), kernel_ops_only=False,
                                                        equalize=False))
    folded = static.build(model, options).model
    monkeypatch.setattr(static, "fold_constant_scales", lambda quantized, source: 0)
    unfolded = static.build(model, options).model
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(unfolded, "Mul") - count(folded, "Mul") == 3
    assert count(unfolded, "QuantizeLinear") - count(folded, "QuantizeLinear") == 3
    assert integer_ops.fold_constant_scales(folded, model) == 0  # nothing left to fold
    for feed in feeds(4, 3):
        expected = session(model).run(None, feed)[0]
        error = {name: np.abs(session(m).run(None, feed)[0] - expected).mean()
                 for name, m in (("folded", folded), ("unfolded", unfolded))}
        assert error["folded"] <= 1.1 * error["unfolded"], error
