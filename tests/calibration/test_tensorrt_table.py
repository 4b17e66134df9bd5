"""The TensorRT EP's own int8 calibration table: three files that parse as the EP (and Model-Optimizer) read them,
hold a range for every activation of the fp32 model under its own tensor names, match the cached calibration,
and are refused for QDQ models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import realmodels
import tinymodels
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.calibration import calibrate, read_ranges
from onnxdtype.calibration.tensorrt_table import (
    EMPTY_RANGE,
    FLATBUFFERS,
    JSON_TABLE,
    NATIVE_CACHE,
    TABLE_FILES,
    calibrate_for_tensorrt,
    read_flatbuffers_table,
    read_json_table,
    read_native_cache,
    write_tensorrt_table,
)
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import TEMP_PREFIX
from onnxdtype.normalize import normalize
from onnxdtype.recipes import static, tensorrt


def float_activations(model: onnx.ModelProto) -> set[str]:
    """Every float tensor a TensorRT network built from `model` has: graph inputs and node outputs (Constants
    aside: TensorRT holds them as weights), typed by onnx shape inference — computed here independently."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input,
                                                             *inferred.graph.output]}
    initializers = {t.name for t in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in initializers}
    names |= {o for n in model.graph.node if n.op_type != "Constant" for o in n.output}
    return {n for n in names if types.get(n) == TensorProto.FLOAT}


def npy_folder(folder: Path, shape: tuple[int, ...], count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.save(folder / f"{i:02d}.npy", rng.standard_normal(shape).astype(np.float32))
    return folder


class _Feeds:
    """A few random feeds for a model with one float input."""

    def __init__(self, model: onnx.ModelProto, count: int = 4) -> None:
        dims = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        rng = np.random.default_rng(0)
        self.feeds = [{model.graph.input[0].name: rng.standard_normal(dims).astype(np.float32)} for _ in range(count)]
        self.fingerprint = f"random-{count}"

    def __iter__(self):
        return iter(self.feeds)


def check_table(out: Path, model: onnx.ModelProto, ranges_file: Path) -> None:
    """The three files parse, hold exactly the model's float activations, and hold r = max|range| of the cache."""
    ranges = read_ranges(ranges_file).ranges
    expected = {name: max(abs(low), abs(high)) or EMPTY_RANGE for name, (low, high) in ranges.items()}
    wanted = float_activations(model)
    flat = read_flatbuffers_table(out / FLATBUFFERS)  # onnxruntime's own generated reader
    native = read_native_cache(out / NATIVE_CACHE)  # scale * 127, as the EP computes it
    table = read_json_table(out / JSON_TABLE)
    assert set(flat) == set(native) == set(table) == wanted
    for name in wanted:
        assert flat[name] == pytest.approx(expected[name], rel=1e-6)
        assert native[name] == pytest.approx(expected[name], rel=1e-6)
        assert table[name] == pytest.approx((-expected[name], expected[name]), rel=1e-6)


def test_detector_table_covers_every_activation_and_matches_the_cached_calibration(tmp_path):
    model_path = tinymodels.save(tinymodels.detector(), tmp_path / "det.onnx")
    data = npy_folder(tmp_path / "data", (1, 3, 64, 64), 6)
    result = calibrate_for_tensorrt(model_path, data, tmp_path / "out")
    out = tmp_path / "out"
    assert [Path(f).name for f in result["files"]] == list(TABLE_FILES)
    assert result["samples"] + result["held_out"] == 6 and result["held_out"] == 2  # the build's 20% held out
    assert result["method"] == "minmax" and not result["cached"]
    check_table(out, onnx.load(str(model_path)), out / result["ranges_file"])
    assert result["tensors"] == len(float_activations(onnx.load(str(model_path)))) == 14
    lines = (out / NATIVE_CACHE).read_text().splitlines()
    assert lines[0] == "TRT-8601-MinMaxCalibration"
    name, scale = lines[1].split(": ")  # TensorRT's format: hex of the big-endian float32 scale
    assert struct.unpack(">f", bytes.fromhex(scale))[0] == pytest.approx(
        json.loads((out / JSON_TABLE).read_text())[name]["highest"] / 127, rel=1e-6)
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]  # written via a temp folder, removed
    again = calibrate_for_tensorrt(model_path, data, out)
    assert again["cached"] and again["ranges_file"] == result["ranges_file"]


def test_names_are_the_original_models_after_normalization(tmp_path):
    """paddle2onnx-style Constant weights and opset 12: the calibration runs on the normalized model (initializers,
    opset 13, named nodes), the table speaks the original file's tensor names and leaves Constants out."""
    model = tinymodels.constant_weights(opset=12)
    model_path = tinymodels.save(model, tmp_path / "m.onnx")
    result = calibrate_for_tensorrt(model_path, npy_folder(tmp_path / "data", (2, 64), 4), tmp_path / "out")
    check_table(tmp_path / "out", model, tmp_path / "out" / result["ranges_file"])
    assert set(read_flatbuffers_table(tmp_path / "out" / FLATBUFFERS)) == {"x", "h", "y"}  # not w, s


def test_the_int8_build_and_the_table_share_one_calibration(tmp_path):
    """`quantize --dtype int8` and `calibrate` into one folder with the same data run the fp32 model over it once."""
    model = tinymodels.detector()
    model_path = tinymodels.save(model, tmp_path / "det.onnx")
    data = npy_folder(tmp_path / "data", (1, 3, 64, 64), 4)
    from onnxdtype.calibration import load_samples

    normalized = normalize(model, static.PASSES)[0]
    part, _ = load_samples(data, normalized).split(0.2)  # what build._calibrate does
    built = calibrate(normalized, part, "minmax", tmp_path / "out")
    variant = tensorrt.build(normalized, tensorrt.Options(ranges_file=str(built.path)))
    result = calibrate_for_tensorrt(model_path, data, tmp_path / "out")
    assert result["cached"] and result["ranges_file"] == built.path.name == variant.params["ranges_file"]


def test_qdq_model_is_refused(tmp_path):
    model = normalize(tinymodels.conv(), static.PASSES)[0]
    calibration = calibrate(model, _Feeds(model), "minmax", tmp_path)
    variant = tensorrt.build(model, tensorrt.Options(ranges_file=str(calibration.path)))
    path = tinymodels.save(variant.model, tmp_path / "conv_int8.onnx")
    with pytest.raises(OnnxDtypeError, match="TensorRT refuses dynamic ranges on QDQ models"):
        calibrate_for_tensorrt(path, npy_folder(tmp_path / "data", (1, 3, 16, 16), 2), tmp_path / "out")
    with pytest.raises(OnnxDtypeError, match="TensorRT refuses dynamic ranges on QDQ models"):
        write_tensorrt_table(variant.model, calibration, tmp_path / "out2")
    assert not (tmp_path / "out" / FLATBUFFERS).exists()


def test_ranges_of_another_model_are_refused(tmp_path):
    calibration = calibrate(normalize(tinymodels.mlp(), static.PASSES)[0], _Feeds(tinymodels.mlp()), "minmax", tmp_path)
    with pytest.raises(OnnxDtypeError, match="another model"):
        write_tensorrt_table(tinymodels.detector(), calibration.path, tmp_path / "out")


def test_native_cache_leaves_out_names_with_colons_and_zero_ranges_get_scale_one(tmp_path):
    """tf2onnx names tensors 'x:0': both readers of the native format split on ':', so those stay in the other two
    files; a tensor that was 0 on every sample gets scale 1 (r = 127), as onnxruntime's quantizers do."""
    w = numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w")
    zero = numpy_helper.from_array(np.zeros(4, np.float32), "zero")
    nodes = [helper.make_node("MatMul", ["x:0", "w"], ["h:0"], name="mm"),
             helper.make_node("Mul", ["h:0", "zero"], ["y"], name="zeroed")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("x:0", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [io[0]], [io[1]], [w, zero]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    calibration = calibrate(model, _Feeds(model), "minmax", tmp_path)
    write_tensorrt_table(model, calibration, tmp_path / "out")
    assert set(read_flatbuffers_table(tmp_path / "out" / FLATBUFFERS)) == {"x:0", "h:0", "y"}
    assert read_native_cache(tmp_path / "out" / NATIVE_CACHE) == {"y": pytest.approx(EMPTY_RANGE)}


def test_config_settings_give_the_tensorrt_ep_the_table(tmp_path):
    """What calibrate_for_tensorrt returns as Config settings becomes the exact TensorRT provider options."""
    from onnxdtype.runtime.providers import TENSORRT, parse_device, provider_list
    from onnxdtype.runtime.settings import Settings

    model_path = tinymodels.save(tinymodels.conv(), tmp_path / "conv.onnx")
    result = calibrate_for_tensorrt(model_path, npy_folder(tmp_path / "data", (1, 3, 16, 16), 2), tmp_path / "out")
    settings = Settings(**{**result["config"], "tensorrt_engine_cache_path": Path(result["config"][
        "tensorrt_engine_cache_path"])})
    name, options = provider_list(parse_device("tensorrt:0"), settings)[0]
    assert name == TENSORRT
    assert options["trt_int8_enable"] == "True" and options["trt_int8_calibration_table_name"] == FLATBUFFERS
    assert options["trt_int8_use_native_calibration_table"] == "False"
    assert Path(options["trt_engine_cache_path"]) / options["trt_int8_calibration_table_name"] \
        == (tmp_path / "out" / FLATBUFFERS).resolve()  # where the EP looks: engine cache path / table name


# ------------------------------------------------------------------------------------------------------ real models
@pytest.mark.real
def test_minilm_table(minilm_path, tmp_path):
    folder = tmp_path / "sentences"
    folder.mkdir()
    for i, sentence in enumerate(realmodels.SENTENCES[:8]):
        np.savez(folder / f"{i:02d}.npz", **realmodels.minilm_feeds([sentence]))
    result = calibrate_for_tensorrt(minilm_path, folder, tmp_path / "out", held_out=0)
    model = onnx.load(str(minilm_path))
    assert result["samples"] == 8
    assert not result["without_range"] and result["tensors"] == len(float_activations(model))
    check_table(tmp_path / "out", model, tmp_path / "out" / result["ranges_file"])


@pytest.mark.real
def test_ppocr_det_table(ocr_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(realmodels.scene_images()[:3]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    spec = {"resize": "short-side", "short_side": 160, "multiple": 32, "channels": "BGR", "scale": 1 / 255,
            "mean": 0.5, "std": 0.5}
    result = calibrate_for_tensorrt(ocr_dir / "det.onnx", folder, tmp_path / "out", spec=spec, method="entropy")
    model = onnx.load(str(ocr_dir / "det.onnx"))  # opset 12, weights in 342 Constant nodes
    assert result["method"] == "entropy" and not result["without_range"]
    check_table(tmp_path / "out", model, tmp_path / "out" / result["ranges_file"])
    assert (tmp_path / "out" / NATIVE_CACHE).read_text().startswith("TRT-8601-EntropyCalibration2\n")
