"""Static QDQ (s8s8, s8u8, u8u8) from one calibration: a detector keeps boxes and scores, real models keep their task.

The real-model figures (held-out data, MinMax calibration): MiniLM embeddings cosine >= 0.996 for all three
dtypes, nearest neighbours unchanged. PP-OCRv4 det stays below SPEC's 0.99 on some images: text-map cosine
0.975-0.984 (s8s8, s8u8) and 0.91-0.96 (u8u8), binarized text map >= 99.2% (s8) and >= 97.7% (u8u8)
identical; the thresholds below say so rather than pretend.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import realmodels
import tinymodels
from numerics import CountingSamples, cosine, session

from onnxdtype.calibration import calibrate, load_samples
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import op_counts
from onnxdtype.normalize import normalize
from onnxdtype.recipes import NotApplicable, qdq, static
from onnxdtype.verify.kernels import kernels

DTYPES = ("s8s8", "s8u8", "u8u8")


def images(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Blocky images with texture: regions the detector's boxes and classes respond to."""
    rng = np.random.default_rng(seed)
    return [{"x": np.kron(rng.random((1, 3, 8, 8)), np.ones((1, 1, 8, 8))).astype(np.float32)
             + 0.1 * rng.random((1, 3, 64, 64)).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The normalized tiny detector, its calibration (16 images) and 8 held-out images."""
    model = normalize(tinymodels.detector(), static.PASSES)[0]
    calibration = calibrate(model, CountingSamples(images(16, seed=1)), "minmax", tmp_path_factory.mktemp("calib"))
    return model, calibration, images(8, seed=2)


def build(model: onnx.ModelProto, calibration, dtype: str = "s8u8", **options):
    opts = static.options_for(dtype, static.Options(ranges_file=str(calibration.path), **options))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return static.build(copy, opts)


def calibrated(tiny: onnx.ModelProto, shape: tuple[int, ...], folder) -> tuple[onnx.ModelProto, object]:
    """A tiny model normalized for the static recipe and its MinMax calibration on 8 random inputs `x` of `shape`."""
    model = normalize(tiny, static.PASSES)[0]
    rng = np.random.default_rng(0)
    return model, calibrate(model, CountingSamples([{"x": rng.random(shape, np.float32)} for _ in range(8)]),
                            "minmax", folder)


def float_weights(variant) -> set[str]:
    return {t.name for t in variant.model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def integer_kernels(variant, folder) -> dict[str, int]:
    """The integer kernels onnxruntime's optimized graph of `variant` runs, by op."""
    path = folder / "variant.onnx"
    onnx.save(variant.model, path)
    return kernels(path)["integer"]


def channel_errors(model: onnx.ModelProto, variant: onnx.ModelProto, feeds) -> tuple[np.ndarray, np.ndarray, float]:
    """Per output channel: worst cosine and worst mean |error| / channel range; and the whole-tensor cosine."""
    ref, got = session(model), session(variant)
    a = np.concatenate([ref.run(None, f)[0] for f in feeds], axis=2)[0]  # [4+C, anchors]
    b = np.concatenate([got.run(None, f)[0] for f in feeds], axis=2)[0]
    cosines = np.array([cosine(a[c], b[c]) for c in range(a.shape[0])])
    relative = np.abs(a - b).mean(axis=1) / (a.max(axis=1) - a.min(axis=1))
    return cosines, relative, cosine(a, b)


def test_detector_s8u8_keeps_box_coordinates_and_scores_per_channel(detector):
    model, calibration, held_out = detector
    variant = build(model, calibration)
    cosines, relative, _ = channel_errors(model, variant.model, held_out)
    assert (cosines[:4] > 0.995).all() and (relative[:4] < 0.02).all()  # box coordinates, 0..~900 px
    assert (cosines[4:] > 0.999).all() and (relative[4:] < 0.02).all()  # class scores, 0..1
    assert op_counts(variant.model)["QuantizeLinear"] > 0 and variant.kept_in_float == ["head"]
    assert variant.params["ranges_file"] == calibration.path.name


def test_without_the_float_tail_one_scale_covers_boxes_and_scores_and_the_scores_collapse(detector):
    """onnxruntime's defaults (every op quantized) put boxes and scores through one Concat scale; the tail rule
    alone (other rules off) restores them, and a whole-tensor cosine would not have noticed the collapse."""
    model, calibration, held_out = detector
    ort_like = dict(kernel_ops_only=False, equalize=False)
    cosines, _, whole = channel_errors(model, build(model, calibration, float_tail=False, **ort_like).model, held_out)
    assert whole > 0.99 and cosines[4:].max() < 0.5
    cosines, _, _ = channel_errors(model, build(model, calibration, float_tail=True, **ort_like).model, held_out)
    assert cosines.min() > 0.995


def test_one_calibration_serves_three_dtypes(tmp_path):
    model = normalize(tinymodels.detector(), static.PASSES)[0]
    samples = CountingSamples(images(8, seed=3))
    calibration = calibrate(model, samples, "minmax", tmp_path)
    expected = {"s8s8": (np.int8, np.int8), "s8u8": (np.int8, np.uint8), "u8u8": (np.uint8, np.uint8)}
    for dtype in DTYPES:
        assert calibrate(model, samples, "minmax", tmp_path).cached
        variant = build(model, calibration, dtype)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in variant.model.graph.initializer}
        weights = {inits[n.input[0]].dtype for n in variant.model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4}
        activations = {inits[n.input[2]].dtype for n in variant.model.graph.node if n.op_type == "QuantizeLinear"}
        assert weights == {np.dtype(expected[dtype][0])} and activations == {np.dtype(expected[dtype][1])}
        assert session(variant.model).run(None, images(1, seed=4)[0])[0].shape == (1, 7, 64)
    assert samples.passes == 1


def test_reduce_range_puts_int8_weights_in_seven_bits_and_keeps_the_detections(detector):
    """7-bit weights: what onnxruntime's U8S8 kernels cannot saturate on x86 without VNNI (static.py)."""
    model, calibration, held_out = detector

    def widest_weight(variant) -> int:
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in variant.model.graph.initializer}
        return max(int(np.abs(inits[n.input[0]].astype(np.int32)).max()) for n in variant.model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4)

    full, reduced = build(model, calibration), build(model, calibration, reduce_range=True)
    assert widest_weight(full) == 127 and 32 < widest_weight(reduced) <= 64
    assert reduced.params["reduce_range"] is True and any("7 bits" in note for note in reduced.notes)
    cosines, relative, _ = channel_errors(model, reduced.model, held_out)
    assert (cosines > 0.995).all() and (relative < 0.02).all()


def test_float_first_keeps_the_first_weighted_ops_and_what_feeds_them_float(detector):
    """float_first=N: the first N weighted ops in graph order and every node they depend on stay float (their
    weights unquantized, no Q/DQ between them), the rest is quantized as before; not a count: refused."""
    model, calibration, held_out = detector
    convs = {"k0", "k1", "k2"}

    def read_through_dq(variant) -> set[str]:  # node names whose inputs come from a DequantizeLinear
        dq = {n.output[0] for n in variant.model.graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in variant.model.graph.node if set(n.input) & dq}

    none, one = build(model, calibration), build(model, calibration, float_first=1)
    two = build(model, calibration, kernel_ops_only=False, float_first=2)
    assert float_weights(none) & convs == set() and float_weights(one) & convs == {"k0"} \
        and float_weights(two) & convs == {"k0", "k1"}
    assert {"conv0", "relu0", "conv1"}.isdisjoint(read_through_dq(two)) and "conv2" in read_through_dq(two)
    assert "conv0" in one.kept_in_float and {"conv0", "conv1"} <= set(two.kept_in_float)
    assert two.params["float_first"] == 2 and any("first 2 weighted ops" in note for note in two.notes)
    assert static.leading_nodes(model, 2) == ["conv0", "relu0", "conv1"] and static.leading_nodes(model, 0) == []
    cosines, _, _ = channel_errors(model, two.model, held_out)
    assert (cosines > 0.99).all()
    for bad in (-1, True, 1.5):
        with pytest.raises(OnnxDtypeError, match="float_first"):
            static.Options(float_first=bad)


def test_an_op_kept_float_in_a_chain_runs_in_float(detector, tmp_path):
    """In a chain a kept Conv reads a DequantizeLinear and feeds a QuantizeLinear, where onnxruntime would give it
    int8 weights of its own; its output's Q/DQ goes, so onnxruntime's optimized graph runs one QLinearConv fewer."""
    model, calibration, held_out = detector
    whole, kept = build(model, calibration, kernel_ops_only=False), \
        build(model, calibration, kernel_ops_only=False, nodes_to_exclude=["conv1"])
    assert "conv1" in kept.kept_in_float and kept.params["float_outputs"] == ["conv1"]
    assert integer_kernels(kept, tmp_path)["QLinearConv"] == integer_kernels(whole, tmp_path)["QLinearConv"] - 1
    assert any("1 ops kept float read float outputs" in note for note in kept.notes)
    assert build(model, calibration, kernel_ops_only=False, float_first=1).params["float_outputs"] == []
    cosines, _, _ = channel_errors(model, kept.model, held_out)
    assert (cosines > 0.99).all()


def test_float_kinds_keep_every_depthwise_conv_and_max_pool_float(tmp_path):
    """float_kinds: every op of the named kinds stays float (its weights unquantized, no integer kernel for it in
    onnxruntime's graph), the other Convs are quantized as before; an unknown kind is refused by name."""
    model, calibration = calibrated(tinymodels.depthwise_pool(), (1, 8, 16, 16), tmp_path)
    chain, kept = build(model, calibration, kernel_ops_only=False, float_tail=False), \
        build(model, calibration, kernel_ops_only=False, float_tail=False, float_kinds=["depthwise", "MaxPool"])
    assert integer_kernels(chain, tmp_path)["QLinearConv"] == 3 and integer_kernels(kept, tmp_path)["QLinearConv"] == 2
    assert "kd" in float_weights(kept) and {"depthwise", "pool"} <= set(kept.kept_in_float)
    assert kept.params["float_kinds"] == ["depthwise", "MaxPool"]
    assert static.kind_nodes(model, ["MaxPool"]) == ["pool"]
    assert static.kind_nodes(model, ["depthwise"]) == ["depthwise"]
    x = {"x": np.random.default_rng(1).random((1, 8, 16, 16), np.float32)}
    assert cosine(session(model).run(None, x)[0], session(kept.model).run(None, x)[0]) > 0.99
    with pytest.raises(OnnxDtypeError, match="float_kinds 'Resize'"):
        static.Options(float_kinds=["Resize"])


def test_conv_transpose_stays_float_since_onnxruntime_has_no_integer_kernel_for_it(tmp_path):
    """float_conv_transpose (default): the ConvTranspose keeps its float weight and no Q/DQ pair sits between it and
    its float reader; the Convs are quantized as before. Off, onnxruntime runs it on weights dequantized every run."""
    model, calibration = calibrated(tinymodels.conv_transpose_stack(), (1, 4, 8, 8), tmp_path)

    def weight_of(variant, name: str) -> str:  # what feeds `name`'s weight: an initializer or a DequantizeLinear
        producers = {o: n.op_type for n in variant.model.graph.node for o in n.output}
        node = next(n for n in variant.model.graph.node if n.name == name)
        return producers.get(node.input[1], "initializer")

    for placement in ({}, {"kernel_ops_only": False}):
        kept, quantized = build(model, calibration, **placement), \
            build(model, calibration, float_conv_transpose=False, **placement)
        assert weight_of(kept, "up") == "initializer" and weight_of(quantized, "up") == "DequantizeLinear"
        assert weight_of(kept, "conv1") == "DequantizeLinear" and "up" in kept.kept_in_float
        assert any("1 ConvTranspose stay float" in note for note in kept.notes)
        assert kept.params["float_conv_transpose"] is True
    x = {"x": np.random.default_rng(1).random((1, 4, 8, 8), np.float32)}
    assert cosine(session(model).run(None, x)[0], session(kept.model).run(None, x)[0]) > 0.99


def test_equalization_is_exact_in_float(detector, monkeypatch):
    model, calibration, held_out = detector
    monkeypatch.setattr(qdq, "EQUALIZE_SPREAD", 1.0)  # equalize every channel, however even
    equalized, ranges, counts, _ = qdq.equalize(model, calibration, {"conv0", "conv1", "conv2"})
    assert counts == (3, 3) and set(ranges.ranges) > set(calibration.ranges)
    for feed in held_out:
        np.testing.assert_allclose(session(equalized).run(None, feed)[0], session(model).run(None, feed)[0],
                                   rtol=1e-4, atol=1e-2)


def test_a_chain_quantizes_the_equalizing_constants_exactly(detector, monkeypatch):
    """In a chain the equalizing Muls are quantized too; their constants sit on the grid of the scale they get, so
    the 8-bit constant is the float one (PP-OCRv4 rec's chain read no line as fp32 did before)."""
    model, calibration, held_out = detector
    monkeypatch.setattr(qdq, "EQUALIZE_SPREAD", 1.0)  # equalize every channel, however even
    for dtype in ("s8u8", "u8u8"):
        variant = build(model, calibration, dtype, kernel_ops_only=False, equalize=True)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in variant.model.graph.initializer}
        factors = [n for n in variant.model.graph.node if n.op_type == "DequantizeLinear"
                   and "onnxdtype_" in n.input[0] and "_factor" in n.input[0]]
        assert len(factors) >= 4  # restore and smoothing constants of the three convs, quantized
        grid = static.CONSTANT_LEVELS[static.DTYPE_TYPES[dtype][1]]
        plain, _, _, scales = qdq.equalize(model, calibration, {"conv0", "conv1", "conv2"}, grid)
        floats = {t.name: onnx.numpy_helper.to_array(t) for t in plain.graph.initializer}
        for dq in factors:
            quantized, scale, zero = (inits[name] for name in dq.input)
            name = next(n for n in scales if dq.input[0].startswith(n))
            assert zero == 0 and scale == pytest.approx(scales[name], rel=1e-6)
            np.testing.assert_allclose((quantized.astype(np.float32) * scale), floats[name], rtol=1e-6)
        cosines, _, _ = channel_errors(model, variant.model, held_out)
        assert cosines.min() > 0.99


def test_not_applicable_reasons():
    assert static.check(tinymodels.no_weights(), static.Options(ranges_file="x")).startswith("no Conv")
    assert "float-tail" in static.check(tinymodels.conv(), static.Options(ranges_file="x"))  # one layer: the tail
    assert static.check(tinymodels.detector(), static.Options()) == static.NEEDS_CALIBRATION
    result = static.build(tinymodels.detector(), static.Options())
    assert isinstance(result, NotApplicable)


def test_ranges_of_another_model_are_refused(detector):
    _, calibration, _ = detector
    other = normalize(tinymodels.mlp(), static.PASSES)[0]
    with pytest.raises(OnnxDtypeError, match="computed for another model"):
        build(other, calibration)


def test_options_for_sets_the_three_dtypes_types():
    base = static.Options(ranges_file="r.json", method="entropy")
    assert [(o.weight_type, o.activation_type) for o in (static.options_for(d, base) for d in DTYPES)] == \
        [("int8", "int8"), ("int8", "uint8"), ("uint8", "uint8")]
    assert static.options_for("u8u8", base).ranges_file == "r.json"
    assert dataclasses.asdict(static.options_for("s8u8", base))["method"] == "entropy"  # JSON-ready for workers


# ---------------------------------------------------------------------------------------------- real models


DET_SPEC = {"resize": "short-side", "short_side": 320, "multiple": 32, "channels": "BGR",
            "scale": 1 / 255, "mean": 0.5, "std": 0.5}  # rapidocr's det preprocessing


@pytest.mark.real
def test_ppocr_det_static_dtypes_on_held_out_images(ocr_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    scenes = realmodels.scene_images()
    for i, image in enumerate(scenes + [realmodels.rendered_text_page(seed) for seed in range(6)]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    model = normalize(onnx.load(str(ocr_dir / "det.onnx")), static.PASSES)[0]
    samples = load_samples(folder, model, DET_SPEC)
    calibration_part, held_out = samples.split(0.25)
    calibration = calibrate(model, calibration_part, "minmax", tmp_path)
    feeds = list(held_out)
    ref = [session(model).run(None, f)[0] for f in feeds]
    assert sum(r.max() > 0.5 for r in ref) >= 2  # held-out images with text to judge on
    for dtype in DTYPES:
        variant = build(model, calibration, dtype)
        got = [session(variant.model).run(None, f)[0] for f in feeds]
        text_cosines = [cosine(a, b) for a, b in zip(ref, got) if a.max() > 0.5]  # text-free maps are ~0
        agreement = [np.mean((a > 0.3) == (b > 0.3)) for a, b in zip(ref, got)]
        assert min(text_cosines) > 0.9 and min(agreement) > 0.97, (dtype, text_cosines, agreement)


@pytest.mark.real
def test_minilm_static_dtypes_on_held_out_sentences(minilm_path, tmp_path):
    folder = realmodels.save_sentence_feeds(tmp_path / "sentences")
    model = normalize(onnx.load(str(minilm_path)), static.PASSES)[0]
    calibration_part, held_out = load_samples(folder, model).split(1 / 3)
    calibration = calibrate(model, calibration_part, "minmax", tmp_path)
    batch = realmodels.minilm_feeds(realmodels.SENTENCES)
    reference = session(model)
    ref_held = [reference.run(["sentence_embedding"], f)[0] for f in held_out]
    ref_batch = reference.run(["sentence_embedding"], batch)[0]

    def neighbours(embeddings: np.ndarray) -> np.ndarray:
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -1)
        return similarity.argmax(axis=1)

    for dtype in DTYPES:
        variant = session(build(model, calibration, dtype).model)
        cosines = [cosine(r, variant.run(["sentence_embedding"], f)[0]) for r, f in zip(ref_held, held_out)]
        got_batch = variant.run(["sentence_embedding"], batch)[0]
        assert min(cosines) >= 0.99, (dtype, cosines)
        assert np.mean(neighbours(got_batch) == neighbours(ref_batch)) >= 22 / 24, dtype


def test_a_dead_weight_channel_takes_the_zero_point_of_the_others(detector, monkeypatch, tmp_path):
    """onnxruntime's quantizer gives an all-zero channel zero point 0 beside the 128 of symmetric uint8 weights, and
    its CPU QLinearConv needs one for all channels (qdq.even_weight_zero_points): u8u8 weights come out even, and
    the variant computes exactly what the uneven one did."""
    model, _, feeds = detector
    dead = onnx.ModelProto()
    dead.CopyFrom(model)
    conv = next(n for n in dead.graph.node if n.op_type == "Conv")
    weight = next(t for t in dead.graph.initializer if t.name == conv.input[1])
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0] = 0.0  # the first output channel is dead
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    calibration = calibrate(dead, CountingSamples(images(8, seed=1)), "minmax", tmp_path)
    even = build(dead, calibration, "u8u8").model
    monkeypatch.setattr(qdq, "even_weight_zero_points", lambda quantized: 0)
    uneven = build(dead, calibration, "u8u8").model

    def zero_points(variant):
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in variant.graph.initializer}
        return [inits[n.input[2]] for n in variant.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]

    assert any(np.unique(points).size > 1 for points in zero_points(uneven))  # what onnxruntime writes
    assert all(np.unique(points).tolist() == [128] for points in zero_points(even))
    for feed in feeds[:2]:
        np.testing.assert_array_equal(session(even).run(None, feed)[0], session(uneven).run(None, feed)[0])
