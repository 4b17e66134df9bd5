"""Calibration data: every accepted format reads back what was written, every kind of bad data is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tinymodels
from PIL import Image

from onnxdtype.calibration import load_image_spec, load_samples
from onnxdtype.errors import OnnxDtypeError


def encoder_feed(rng: np.random.Generator, tokens: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((1, tokens, 16)).astype(np.float32), "mask": np.ones((1, tokens), np.int64)}


def write_npz_folder(folder: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, feed in enumerate(feeds):
        np.savez(folder / f"sample{i:02d}.npz", **feed)
    return folder


def write_images(folder: Path, colors: list[tuple[int, int, int]], size=(40, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        Image.new("RGB", size, color).save(folder / f"img{i}.png")
    return folder


def test_npz_folder_streams_one_feed_per_file_with_dynamic_shapes(tmp_path):
    rng = np.random.default_rng(0)
    feeds = [encoder_feed(rng, tokens) for tokens in (3, 7, 5)]  # T is dynamic: shapes may differ
    samples = load_samples(write_npz_folder(tmp_path / "npz", feeds), tinymodels.masked_encoder())
    assert len(samples) == 3 and samples.kind == "npz-files"
    for _ in range(2):  # iterable any number of times
        got = list(samples)
        assert [g["x"].shape[1] for g in got] == [3, 7, 5]
        np.testing.assert_array_equal(got[1]["x"], feeds[1]["x"])


def test_single_npz_with_a_sample_axis_streams_samples_and_subsets(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 4, 16)).astype(np.float32)
    mask = np.ones((6, 1, 4), np.int64)
    np.savez_compressed(tmp_path / "batch.npz", x=x, mask=mask)
    samples = load_samples(tmp_path / "batch.npz", tinymodels.masked_encoder())
    assert len(samples) == 6 and samples.kind == "npz-batch"
    np.testing.assert_array_equal(np.stack([s["x"] for s in samples]), x)
    calibration, held_out = samples.split(0.5)
    held = [int(item.key.split("#")[1]) for item in held_out.items]
    np.testing.assert_array_equal(np.stack([s["x"] for s in held_out]), x[held])
    assert len(calibration) + len(held_out) == 6


def test_npy_folder_feeds_a_single_input_model(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    arrays = [np.full((1, 3, 16, 16), i, np.float32) for i in range(3)]
    for i, array in enumerate(arrays):
        np.save(folder / f"{i}.npy", array)
    got = list(load_samples(folder, tinymodels.conv()))
    assert [float(g["x"][0, 0, 0, 0]) for g in got] == [0.0, 1.0, 2.0]


def test_images_with_a_preset_use_the_inputs_static_dims(tmp_path):
    folder = write_images(tmp_path / "img", [(255, 0, 0), (0, 128, 255)])
    samples = load_samples(folder, tinymodels.conv(), "imagenet")  # conv's input is [1, 3, 16, 16]
    assert samples.spec.size == (16, 16) and samples.spec.layout == "NCHW"
    first = next(iter(samples))["x"]
    assert first.shape == (1, 3, 16, 16) and first.dtype == np.float32
    expected = (np.array([1.0, 0.0, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(first[0, :, 8, 8], expected, rtol=1e-5)


def test_image_spec_file_bgr_nhwc_letterbox_and_short_side(tmp_path):
    folder = write_images(tmp_path / "img", [(10, 20, 30)], size=(40, 20))
    nhwc = tinymodels.conv()
    nhwc.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16
    nhwc.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 3
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"preset": "unit", "resize": "letterbox", "channels": "BGR", "pad": 255}))
    x = next(iter(load_samples(folder, nhwc, spec)))["x"]
    assert x.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(x[0, 8, 8], np.array([30, 20, 10]) / 255, rtol=1e-5)  # BGR
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 1.0, 1.0])  # letterbox padding: 40x20 -> 16x8 band, rest padded

    dynamic = tinymodels.conv()
    for axis in (2, 3):
        dynamic.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "side"
    spec = {"preset": "unit", "resize": "short-side", "short_side": 50, "multiple": 32}
    x = next(iter(load_samples(folder, dynamic, spec)))["x"]
    assert x.shape == (1, 3, 64, 128)  # 20x40 -> 50x100 -> padded to multiples of 32


def test_fingerprint_is_stable_and_follows_contents_and_spec(tmp_path):
    rng = np.random.default_rng(0)
    folder = write_npz_folder(tmp_path / "npz", [encoder_feed(rng, 4) for _ in range(4)])
    model = tinymodels.masked_encoder()
    first = load_samples(folder, model).fingerprint
    assert load_samples(folder, model).fingerprint == first
    np.savez(folder / "sample00.npz", **encoder_feed(rng, 4))
    assert load_samples(folder, model).fingerprint != first

    images = write_images(tmp_path / "img", [(1, 2, 3)])
    assert load_samples(images, tinymodels.conv(), "unit").fingerprint != \
        load_samples(images, tinymodels.conv(), "imagenet").fingerprint


def test_split_is_deterministic_disjoint_and_keeps_one_calibration_sample(tmp_path):
    rng = np.random.default_rng(0)
    samples = load_samples(write_npz_folder(tmp_path / "npz", [encoder_feed(rng, 2) for _ in range(10)]),
                           tinymodels.masked_encoder())
    calibration, held_out = samples.split(0.2)
    assert len(held_out) == 2 and len(calibration) == 8
    assert {i.key for i in calibration.items}.isdisjoint(i.key for i in held_out.items)
    assert [i.key for i in samples.split(0.2)[1].items] == [i.key for i in held_out.items]
    assert calibration.fingerprint != samples.fingerprint != held_out.fingerprint
    single = load_samples(write_npz_folder(tmp_path / "one", [encoder_feed(rng, 2)]), tinymodels.masked_encoder())
    assert [len(part) for part in single.split(0.5)] == [1, 0]


def _bad_npz(tmp_path: Path, **arrays) -> Path:
    return write_npz_folder(tmp_path / "bad", [arrays])


ENCODER_ERRORS = {
    "unknown name": (dict(x=np.zeros((1, 2, 16), np.float32), mask=np.ones((1, 2), np.int64),
                          extra=np.zeros(1, np.float32)), "'extra' is not an input of the model"),
    "missing input": (dict(x=np.zeros((1, 2, 16), np.float32)), "no array for input 'mask'"),
    "wrong dtype": (dict(x=np.zeros((1, 2, 16), np.float64), mask=np.ones((1, 2), np.int64)),
                    "input 'x' is float64, the model expects float32 [?, ?, 16]"),
    "wrong static dim": (dict(x=np.zeros((1, 2, 15), np.float32), mask=np.ones((1, 2), np.int64)),
                         "input 'x' has shape [1, 2, 15], the model expects float32 [?, ?, 16]"),
    "wrong rank": (dict(x=np.zeros((2, 16), np.float32), mask=np.ones((1, 2), np.int64)), "has shape [2, 16]"),
    "NaN": (dict(x=np.full((1, 2, 16), np.nan, np.float32), mask=np.ones((1, 2), np.int64)),
            "input 'x' contains NaN or Inf"),
}


@pytest.mark.parametrize("case", ENCODER_ERRORS)
def test_each_kind_of_bad_feed_is_one_line_naming_the_file_and_input(tmp_path, case):
    arrays, message = ENCODER_ERRORS[case]
    samples = load_samples(_bad_npz(tmp_path, **arrays), tinymodels.masked_encoder())
    with pytest.raises(OnnxDtypeError) as error:
        list(samples)
    assert message in str(error.value) and "sample00.npz" in str(error.value) and "\n" not in str(error.value)


def test_bad_sources_are_refused_before_reading(tmp_path):
    model = tinymodels.masked_encoder()
    (tmp_path / "empty").mkdir()
    cases = {
        tmp_path / "empty": "no .npz, .npy or image files",
        tmp_path / "missing": "no such calibration data",
    }
    mixed = write_npz_folder(tmp_path / "mixed", [encoder_feed(np.random.default_rng(0), 2)])
    np.save(mixed / "extra.npy", np.zeros(3))
    cases[mixed] = "mixes npz and npy files"
    np.savez(tmp_path / "counts.npz", x=np.zeros((3, 1, 2, 16), np.float32), mask=np.ones((2, 1, 2), np.int64))
    cases[tmp_path / "counts.npz"] = "different numbers of samples along axis 0 (x: 3, mask: 2)"
    np.savez(tmp_path / "noaxis.npz", x=np.zeros((1, 2, 16), np.float32), mask=np.ones((1, 2), np.int64))
    cases[tmp_path / "noaxis.npz"] = "holds samples along axis 0: expected [samples, ?, ?, 16]"
    for path, message in cases.items():
        with pytest.raises(OnnxDtypeError) as error:
            load_samples(path, model)
        assert message in str(error.value), (path, str(error.value))


def test_npy_and_images_need_a_single_input_model_and_images_a_spec(tmp_path):
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "a.npy", np.zeros((1, 2, 16), np.float32))
    with pytest.raises(OnnxDtypeError, match="feed single-input models, this one has inputs x, mask"):
        load_samples(npy, tinymodels.masked_encoder())
    images = write_images(tmp_path / "img", [(0, 0, 0)])
    with pytest.raises(OnnxDtypeError, match="images need a preprocessing spec"):
        load_samples(images, tinymodels.conv())
    with pytest.raises(OnnxDtypeError, match="unknown setting colour"):
        load_image_spec({"preset": "unit", "colour": "RGB"})
    with pytest.raises(OnnxDtypeError, match="resize 'crop' is not one of stretch, letterbox, short-side"):
        load_image_spec({"resize": "crop"})
    dynamic = tinymodels.conv()
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(OnnxDtypeError, match="no static height/width: give size"):
        load_samples(images, dynamic, "unit")


def test_unreadable_files_name_the_file(tmp_path):
    folder = tmp_path / "npz"
    folder.mkdir()
    (folder / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(OnnxDtypeError, match=r"broken.npz: not a readable .npz file"):
        list(load_samples(folder, tinymodels.masked_encoder()))
    images = tmp_path / "img"
    images.mkdir()
    (images / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(OnnxDtypeError, match=r"broken.png: not a readable image"):
        list(load_samples(images, tinymodels.conv(), "unit"))
