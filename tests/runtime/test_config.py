"""Config settings: `_all` versus per module in either order, the setter forms, keyword construction, validation."""

import shutil
from pathlib import Path

import pytest
import tinymodels

from onnxdtype import DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.runtime import Config


@pytest.fixture
def clip(tmp_path) -> Path:
    """visual.onnx and textual.onnx (tiny MLPs) with fp16 and q8 files beside them."""
    folder = tmp_path / "clip"
    for module in ("visual", "textual"):
        base = tinymodels.save(tinymodels.mlp(), folder / f"{module}.onnx")
        for dtype in ("fp16", "q8"):
            shutil.copyfile(base, folder / f"{module}_{dtype}.onnx")
    return folder


def test_modules_are_the_bases_of_the_folder(clip):
    assert Config.from_dir(clip).modules == ["textual", "visual"]


@pytest.mark.parametrize("order", ["all first", "module first"])
def test_per_module_setting_beats_all_whatever_the_order(clip, order):
    config = Config.from_dir(clip)
    calls = [lambda c: c.with_dtype_all("fp16"), lambda c: c.with_module_dtype("textual", "q8"),
             lambda c: c.with_intra_threads_all(4), lambda c: c.with_textual_intra_threads(1)]
    for call in calls if order == "all first" else calls[::-1]:
        config = call(config)
    committed = config.commit()
    assert committed["visual"].dtype is DType.FP16 and committed["visual"].file == clip / "visual_fp16.onnx"
    assert committed["textual"].dtype is DType.Q8 and committed["textual"].file == clip / "textual_q8.onnx"
    assert config.settings("visual").intra_threads == 4 and config.settings("textual").intra_threads == 1


def test_setter_forms_reach_the_same_setting(clip):
    base = Config.from_dir(clip)
    forms = [base.with_textual_num_dry_run(3), base.with_module_num_dry_run("textual", 3),
             base.with_num_dry_run(3, module="textual"), base.with_setting("num_dry_run", 3, module="textual")]
    for config in forms:
        assert config.settings("textual").num_dry_run == 3 and config.settings("visual").num_dry_run == 1
    assert base.with_num_dry_run_all(0).settings("visual").num_dry_run == 0
    assert base.with_tensorrt_int8().settings("visual").tensorrt_int8 is True  # flags default to True
    assert base.with_visual_tensorrt_fp16(False).settings("visual").tensorrt_fp16 is False


def test_with_returns_a_new_config_so_mixes_can_branch(clip):
    base = Config.from_dir(clip)
    fp16 = base.with_dtype_all("fp16")
    assert base.settings("visual").dtype is DType.FP32 and fp16.settings("visual").dtype is DType.FP16
    assert not fp16.committed and fp16.commit().committed


def test_keyword_construction(clip):
    config = Config.from_dir(clip, dtype="q8", device="cpu", num_dry_run=0,
                             modules={"textual": {"dtype": "f16", "dims": {"N": (1, 2, 4)}}})
    assert config.settings("visual").dtype is DType.Q8 and config.settings("textual").dtype is DType.FP16
    assert config.settings("textual").dims == {"N": (1, 2, 4)} and config.settings("visual").dims == {}


def test_dims_merge_key_by_key_across_layers(clip):
    config = Config.from_dir(clip).with_dims_all({"N": 2, ("x", 1): 64}).with_visual_dims({"N": (1, 4, 8)})
    assert config.settings("visual").dims == {"N": (1, 4, 8), ("x", 1): (64, 64, 64)}
    assert config.settings("textual").dims == {"N": (2, 2, 2), ("x", 1): (64, 64, 64)}


@pytest.mark.parametrize("make", [
    lambda folder: Config.from_dir(folder).with_module_dtype("audio", "fp16"),
    lambda folder: Config.from_dir(folder).with_audio_dtype("fp16"),
    lambda folder: Config.from_dir(folder)["audio"],
    lambda folder: Config.from_dir(folder).engine("audio"),
    lambda folder: Config.from_dir(folder, modules={"audio": {"dtype": "fp16"}}),
])
def test_unknown_module_is_an_error_listing_the_known_ones(clip, make):
    with pytest.raises(OnnxDtypeError, match="unknown module 'audio'; known: textual, visual"):
        make(clip)


@pytest.mark.parametrize("setting, value, message", [
    ("dtype", "fp12", "unknown dtype 'fp12'"),
    ("device", "tpu", "unknown device 'tpu'"),
    ("missing", "ignore", "missing must be one of error, fallback, build"),
    ("num_dry_run", -1, "num_dry_run must be a whole number >= 0"),
    ("strict", "yes", "strict must be True or False"),
    ("graph_optimization", "max", "graph_optimization must be one of disable, basic, extended, all"),
    ("tensorrt_builder_optimization_level", 6, "must be 0..5"),
    ("dims", {"N": (4, 2, 8)}, "min <= opt <= max"),
    ("dims", {("x", "1"): 3}, "must be a dim name or an (input name, axis) pair"),
    ("colour", "red", "unknown setting 'colour'"),
    ("file", "x.onnx", "file is set per module"),
])
def test_bad_values_are_one_line_errors(clip, setting, value, message):
    with pytest.raises(OnnxDtypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_dir(clip).with_setting(setting, value)


def test_unknown_attribute_is_an_attribute_error(clip):
    with pytest.raises(AttributeError):
        Config.from_dir(clip).colour  # noqa: B018


def test_choices_are_case_insensitive_and_stored_as_onnxruntime_spells_them(clip):
    config = Config.from_dir(clip).with_coreml_compute_units("cpuandneuralengine").with_device_all("TRT")
    settings = config.settings("visual")
    assert settings.coreml_compute_units == "CPUAndNeuralEngine" and settings.device == "tensorrt:0"


def test_from_file_is_one_module_named_model(clip):
    config = Config.from_file(clip / "visual.onnx", dtype="q8")
    assert config.modules == ["model"] and config["model"].file == clip / "visual_q8.onnx"
    assert Config.from_file(clip / "visual.onnx", name="vision").modules == ["vision"]


def test_engine_needs_a_name_when_there_are_several_modules(clip):
    with pytest.raises(OnnxDtypeError, match="this config has 2 modules; name one: textual, visual"):
        Config.from_dir(clip).engine()
