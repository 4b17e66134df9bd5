"""One naming module for the build and the runtime: what every file name means under each convention."""

from __future__ import annotations

import shutil

import pytest
import tinymodels

from onnxdtype.build import find_modules
from onnxdtype.dtype import DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.naming import candidate_names, is_variant_stem, layout_of, split_variant_name
from onnxdtype.runtime import Config


def test_names_under_each_convention():
    assert split_variant_name("det_fp16") == ("det", DType.FP16)
    assert split_variant_name("det-q8") == split_variant_name("det.q8") == ("det", DType.Q8)
    assert split_variant_name("model_quantized") == ("model", DType.Q8)
    assert split_variant_name("model_int8") == ("model", DType.INT8)  # onnxdtype's folder: the static int8
    assert split_variant_name("model_int8", "transformers.js") == ("model", DType.Q8)  # its dynamic int8
    assert split_variant_name("model_uint8", "transformers.js") == ("model", DType.Q8)
    assert split_variant_name("model") is None and split_variant_name("yolo_v8") is None
    assert all(is_variant_stem(s) for s in ("model_uint8", "model_int8", "model_quantized", "visual.q4f16"))
    assert not is_variant_stem("textual") and not is_variant_stem("yolo_v8")
    assert "model_int8.onnx" not in candidate_names("model", DType.INT8, "transformers.js")
    assert candidate_names("model", DType.Q8, "transformers.js")[0] == "model_quantized.onnx"


@pytest.fixture
def transformers_js(tmp_path):
    """A transformers.js layout: onnx/model.onnx and its variants (copies of one tiny model: names are the point)."""
    folder = tmp_path / "repo" / "onnx"
    folder.mkdir(parents=True)
    base = tinymodels.save(tinymodels.mlp(), folder / "model.onnx")
    for tag in ("quantized", "int8", "uint8", "fp16"):
        shutil.copyfile(base, folder / f"model_{tag}.onnx")
    return folder


def test_transformers_js_folder_resolves_every_name_to_the_right_file(transformers_js):
    assert layout_of(transformers_js, has_manifest=False) == "transformers.js"
    config = Config.from_dir(transformers_js.parent)
    assert config.modules == ["model"]
    assert config.with_dtype_all("q8")["model"].file.name == "model_quantized.onnx"
    assert config.with_dtype_all("fp16")["model"].file.name == "model_fp16.onnx"
    assert config.with_dtype_all("fp32")["model"].file.name == "model.onnx"
    with pytest.raises(OnnxDtypeError, match="dynamic int8 quantization"):
        config.with_dtype_all("int8")["model"]
    (transformers_js / "model_quantized.onnx").unlink()
    assert config.with_dtype_all("q8")["model"].file.name == "model_uint8.onnx"  # still the q8 family


def test_the_build_takes_no_variant_for_a_base(transformers_js):
    assert [m.name for m in find_modules(transformers_js)] == ["model"]
