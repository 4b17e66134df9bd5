"""The calibration pass: exact MinMax ranges, histogram methods over samples of different shapes, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tinymodels
from numerics import CountingSamples

from onnxdtype.calibration import calibrate, read_ranges
from onnxdtype.errors import OnnxDtypeError


def encoder_feeds(lengths=(3, 9, 5, 2)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, t, 16)).astype(np.float32) * (i + 1), "mask": np.ones((1, t), np.int64)}
            for i, t in enumerate(lengths)]


def test_minmax_ranges_are_exact_per_tensor_and_per_channel(tmp_path):
    model = tinymodels.masked_encoder()
    feeds = encoder_feeds()
    result = calibrate(model, CountingSamples(feeds), "minmax", tmp_path)
    w = next(t for t in model.graph.initializer if t.name == "w")
    weight = np.frombuffer(w.raw_data, np.float32).reshape(16, 8)
    h = np.concatenate([(f["x"] @ weight).reshape(-1, 8) for f in feeds])
    x = np.concatenate([f["x"].reshape(-1, 16) for f in feeds])
    assert result.ranges["h"] == pytest.approx((h.min(), h.max()), rel=1e-5)
    assert result.ranges["x"] == pytest.approx((x.min(), x.max()))
    assert "mask" not in result.ranges  # int64: nothing to quantize
    masked = result.channels["masked"]  # MatMul input: per channel along its last axis
    assert masked.axis == 2
    np.testing.assert_allclose(masked.highest, x.max(axis=0), rtol=1e-6)
    per_sample = [f["x"].reshape(-1, 16).mean(axis=0) for f in feeds]  # the mean of each sample's channel means
    np.testing.assert_allclose(masked.mean, np.mean(per_sample, axis=0), rtol=1e-5, atol=1e-6)
    assert result.samples_used == 4 and not result.cached


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_histogram_methods_merge_samples_of_different_shapes(tmp_path, method):
    model = tinymodels.masked_encoder()
    feeds = encoder_feeds()
    minmax_result = calibrate(model, CountingSamples(feeds), "minmax", tmp_path)
    minmax = minmax_result.ranges
    result = calibrate(model, CountingSamples(feeds), method, tmp_path)
    assert result.method == method and set(result.ranges) == set(minmax)
    # channel means come from the tensors themselves here, from ReduceMean nodes under MinMax: the same numbers
    np.testing.assert_allclose(result.channels["masked"].mean, minmax_result.channels["masked"].mean, rtol=1e-5)
    for name, (low, high) in result.ranges.items():  # clipped ranges lie within the extremes
        assert minmax[name][0] - 1e-4 <= low <= high <= minmax[name][1] + 1e-4
    if method != "mse":  # mse may keep a range whole when clipping would err more
        assert result.ranges["x"][1] - result.ranges["x"][0] < minmax["x"][1] - minmax["x"][0]


def test_second_calibration_is_a_cache_hit_and_the_model_ran_over_the_data_once(tmp_path):
    model = tinymodels.masked_encoder()
    samples = CountingSamples(encoder_feeds())
    first = calibrate(model, samples, "minmax", tmp_path)
    second = calibrate(model, samples, "minmax", tmp_path)
    assert samples.passes == 1 and second.cached and second.path == first.path
    assert second.ranges == first.ranges and second.samples_used == 4
    np.testing.assert_array_equal(second.channels["masked"].lowest, first.channels["masked"].lowest)
    np.testing.assert_array_equal(second.channels["masked"].mean, first.channels["masked"].mean)
    payload = json.loads(first.path.read_text())  # onnxruntime's own calibration cache format
    assert payload["calibration_method"]["value"] == "CalibrationMethod.MinMax" and "h" in payload["data"]


def test_cache_key_follows_model_data_and_method(tmp_path):
    model = tinymodels.masked_encoder()
    samples = CountingSamples(encoder_feeds())
    base = calibrate(model, samples, "minmax", tmp_path).path
    other_data = calibrate(model, CountingSamples(encoder_feeds((4, 4)), "feeds-v2"), "minmax", tmp_path).path
    other_method = calibrate(model, samples, "percentile", tmp_path).path
    other_model = tinymodels.masked_encoder()
    other_model.graph.initializer[0].raw_data = bytes(len(other_model.graph.initializer[0].raw_data))
    other = calibrate(other_model, samples, "minmax", tmp_path).path
    assert len({base, other_data, other_method, other}) == 4 and samples.passes == 3
    base.write_text("{ truncated")  # a damaged cache is recomputed, not trusted
    assert not calibrate(model, samples, "minmax", tmp_path).cached and read_ranges(base).samples_used == 4


def test_bad_method_and_empty_data_are_clear_errors(tmp_path):
    model = tinymodels.masked_encoder()
    with pytest.raises(OnnxDtypeError, match="unknown calibration method 'kl'"):
        calibrate(model, CountingSamples(encoder_feeds()), "kl", tmp_path)
    with pytest.raises(OnnxDtypeError, match="calibration data has no samples"):
        calibrate(model, CountingSamples([]), "minmax", tmp_path)


def test_mse_clips_a_long_tail_and_keeps_a_compact_range():
    """Laplace-distributed values: the 8-bit optimum clips near 10 scales (as ACIQ derives for 8 bits), closer in
    than the extremes; a uniform spread is kept whole. Either choice errs no more than MinMax's range."""
    from onnxdtype.calibration.ranges import QUANTIZED_STEPS, least_error_range

    def error(values: np.ndarray, low: float, high: float) -> float:
        step = (high - low) / QUANTIZED_STEPS
        clipped = np.clip(values, low, high)
        return float(np.mean((np.round((clipped - low) / step) * step + low - values) ** 2))

    rng = np.random.default_rng(0)
    for values, clips in ((rng.laplace(size=200_000), True), (rng.uniform(-1, 3, 200_000), False)):
        threshold = np.abs(values).max()
        hist, edges = np.histogram(values, 2048, range=(-threshold, threshold))
        low, high = least_error_range(hist, edges, float(values.min()), float(values.max()))
        assert values.min() <= low <= 0.0 <= high <= values.max()
        assert (high < 0.9 * values.max() and low > 0.9 * values.min()) == clips
        if clips:
            assert 7.0 < high < 14.0 and -14.0 < low < -7.0
        assert error(values, low, high) <= error(values, float(values.min()), float(values.max())) * 1.001
