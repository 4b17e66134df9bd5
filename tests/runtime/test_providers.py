"""Device strings -> the exact onnxruntime provider list and options, checked without the providers installed."""

from pathlib import Path

import numpy as np
import pytest
import tinymodels

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.runtime import Config, Settings
from onnxdtype.runtime.providers import parse_device, profile_shapes, provider_list, session_tweaks, usable_providers
from onnxdtype.runtime.settings import parse_dims

CACHE = Path("/cache")
CPU = ("CPUExecutionProvider", {})


def cuda(index: str = "0", **extra: str) -> tuple:
    return ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE", **extra})


def tensorrt(index: str = "0", **changes: str) -> tuple:
    options = {"device_id": index, "trt_fp16_enable": "True", "trt_int8_enable": "False",
               "trt_engine_cache_enable": "True", "trt_timing_cache_enable": "False",
               "trt_builder_optimization_level": "3", "trt_max_workspace_size": str(1 << 30),
               "trt_engine_cache_path": "/cache/tensorrt"}
    options.update(changes)
    return ("TensorrtExecutionProvider", {k: v for k, v in options.items() if v is not None})


def providers(device: str, **settings) -> list:
    return provider_list(parse_device(device), Settings(cache_dir=CACHE, **settings))


@pytest.mark.parametrize("device, expected", [
    ("cpu", [CPU]),
    ("cuda", [cuda(), CPU]),
    ("CUDA:1", [cuda("1"), CPU]),
    ("tensorrt", [tensorrt(), cuda(), CPU]),
    ("trt:2", [tensorrt("2"), cuda("2"), CPU]),
    ("tensorrt:1", [tensorrt("1"), cuda("1"), CPU]),
    ("coreml", [("CoreMLExecutionProvider", {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL",
                                             "RequireStaticInputShapes": "0", "ModelCacheDirectory": "/cache/coreml"}), CPU]),
    ("openvino", [("OpenVINOExecutionProvider", {"device_type": "CPU", "cache_dir": "/cache/openvino"}), CPU]),
    ("openvino:GPU", [("OpenVINOExecutionProvider", {"device_type": "GPU", "cache_dir": "/cache/openvino"}), CPU]),
    ("openvino:npu", [("OpenVINOExecutionProvider", {"device_type": "NPU", "cache_dir": "/cache/openvino"}), CPU]),
    ("directml", [("DmlExecutionProvider", {"device_id": "0"}), CPU]),
    ("directml:1", [("DmlExecutionProvider", {"device_id": "1"}), CPU]),
    ("rocm", [("MIGraphXExecutionProvider", {"device_id": "0"}), CPU]),
    ("rocm:3", [("MIGraphXExecutionProvider", {"device_id": "3"}), CPU]),
    ("xnnpack", [("XnnpackExecutionProvider", {"intra_op_num_threads": "1"}), CPU]),
    ("qnn", [("QNNExecutionProvider", {"backend_type": "htp"}), CPU]),
])
def test_every_device_string_gives_its_provider_list(device, expected):
    assert providers(device) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:1", "openvino:TPU", "coreml:0", "tensorrt:", ""])
def test_bad_device_strings_are_errors_listing_the_valid_ones(device):
    with pytest.raises(OnnxDtypeError, match=r"cpu, cuda\[:N\], tensorrt\[:N\] \(trt\)"):
        parse_device(device)


@pytest.mark.parametrize("settings, changes", [
    ({}, {}),
    ({"tensorrt_fp16": False}, {"trt_fp16_enable": "False"}),
    ({"tensorrt_int8": True}, {"trt_int8_enable": "True"}),
    ({"tensorrt_int8": True, "tensorrt_int8_calibration_table_name": "calib.flatbuffers",
      "tensorrt_int8_use_native_calibration_table": True},
     {"trt_int8_enable": "True", "trt_int8_calibration_table_name": "calib.flatbuffers",
      "trt_int8_use_native_calibration_table": "True"}),
    ({"tensorrt_int8": True, "tensorrt_int8_calibration_table_name": "calib.bin"},
     {"trt_int8_enable": "True", "trt_int8_calibration_table_name": "calib.bin",
      "trt_int8_use_native_calibration_table": "False"}),
    ({"tensorrt_engine_cache": False}, {"trt_engine_cache_enable": "False", "trt_engine_cache_path": None}),
    ({"tensorrt_engine_cache_path": Path("/engines")}, {"trt_engine_cache_path": "/engines"}),
    ({"tensorrt_timing_cache": True}, {"trt_timing_cache_enable": "True", "trt_timing_cache_path": "/cache/tensorrt"}),
    ({"tensorrt_timing_cache": True, "tensorrt_timing_cache_path": Path("/timing")},
     {"trt_timing_cache_enable": "True", "trt_timing_cache_path": "/timing"}),
    ({"tensorrt_builder_optimization_level": 5}, {"trt_builder_optimization_level": "5"}),
    ({"tensorrt_max_workspace_size": 4 << 30}, {"trt_max_workspace_size": str(4 << 30)}),
])
def test_each_tensorrt_setting_sets_its_option(settings, changes):
    assert providers("trt", **settings)[0] == tensorrt(**changes)


def test_provider_specific_settings_and_the_raw_escape_hatch():
    assert providers("cuda", cuda_mem_limit=2 << 30, cuda_graph=True, cuda_conv_algo_search="HEURISTIC")[0] == \
        ("CUDAExecutionProvider", {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC",
                                   "gpu_mem_limit": str(2 << 30), "enable_cuda_graph": "1"})
    assert providers("coreml", coreml_compute_units="CPUAndNeuralEngine", coreml_model_format="NeuralNetwork",
                     coreml_static_shapes=True)[0][1] == {
        "ModelFormat": "NeuralNetwork", "MLComputeUnits": "CPUAndNeuralEngine", "RequireStaticInputShapes": "1",
        "ModelCacheDirectory": "/cache/coreml"}
    assert providers("openvino:GPU", openvino_precision="FP16", openvino_threads=4)[0][1] == {
        "device_type": "GPU", "cache_dir": "/cache/openvino", "precision": "FP16", "num_of_threads": "4"}
    assert providers("xnnpack", intra_threads=4)[0][1] == {"intra_op_num_threads": "4"}
    raw = providers("trt", provider_options={"TensorrtExecutionProvider": {"trt_dla_enable": True},
                                             "CUDAExecutionProvider": {"gpu_mem_limit": 1024}})
    assert raw[0][1]["trt_dla_enable"] == "True" and raw[1][1]["gpu_mem_limit"] == "1024"


def test_tensorrt_profile_shapes_come_from_the_dims():
    inputs = [("x", ["batch", 3, "h", "w"]), ("scale", [1]), ("ids", ["batch", "seq"])]
    dims = parse_dims("dims", {"batch": (1, 2, 8), ("x", 2): (32, 64, 128), ("x", 3): 640, "seq": (1, 128, 512)})
    assert profile_shapes(inputs, dims) == {
        "trt_profile_min_shapes": "x:1x3x32x640,ids:1x1",
        "trt_profile_opt_shapes": "x:2x3x64x640,ids:2x128",
        "trt_profile_max_shapes": "x:8x3x128x640,ids:8x512",
    }
    assert profile_shapes(inputs, {}) == {}  # no dims: TensorRT builds for the shapes it meets
    with pytest.raises(OnnxDtypeError, match=r"input 'ids' axis 1 \(seq\) is dynamic and has no range"):
        profile_shapes(inputs, parse_dims("dims", {"batch": 1, ("x", 2): 64, ("x", 3): 64}))


def test_config_builds_tensorrt_profiles_from_the_model_inputs(tmp_path):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")  # x: [N, 64]
    resolved = Config.from_file(model, device="trt:1", dims={"N": (1, 4, 16)}, cache_dir=tmp_path)["model"]
    options = resolved.providers[0][1]
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) \
        == ("x:1x64", "x:4x64", "x:16x64")
    assert [name for name, _ in resolved.providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                        "CPUExecutionProvider"]


def test_session_tweaks_for_the_providers_that_need_them():
    assert session_tweaks(parse_device("directml")) == {"enable_mem_pattern": False, "execution_mode": "ORT_SEQUENTIAL"}
    assert session_tweaks(parse_device("xnnpack")) == {"intra_op_num_threads": 1, "session.intra_op.allow_spinning": "0"}
    assert session_tweaks(parse_device("cuda")) == {}


@pytest.mark.parametrize("device, package", [
    ("cuda", "onnxruntime-gpu"), ("tensorrt", "onnxruntime-gpu"), ("openvino", "onnxruntime-openvino"),
    ("directml", "onnxruntime-directml"), ("qnn", "onnxruntime-qnn"), ("rocm", "onnxruntime-migraphx"),
    ("coreml", "macOS"), ("xnnpack", "--use_xnnpack"),
])
def test_a_missing_provider_names_the_package_that_brings_it(device, package):
    requested = providers(device)
    with pytest.raises(OnnxDtypeError, match=f"is not in this onnxruntime .*install .*{package}.*strict=False"):
        usable_providers(requested, ["CPUExecutionProvider"], True, device)
    with pytest.warns(UserWarning, match="running on CPUExecutionProvider instead"):
        assert usable_providers(requested, ["CPUExecutionProvider"], False, device) == [CPU]


def test_non_strict_keeps_the_fallbacks_that_are_installed():
    with pytest.warns(UserWarning, match="TensorrtExecutionProvider is not in this onnxruntime.*running on CUDA"):
        usable = usable_providers(providers("trt"), ["CUDAExecutionProvider", "CPUExecutionProvider"], False, "m")
    assert usable == [cuda(), CPU]
    assert usable_providers(providers("trt"), ["TensorrtExecutionProvider", "CPUExecutionProvider"], True, "m") \
        == [tensorrt(), CPU]  # a fallback that is not installed is dropped quietly


def test_engine_on_a_missing_provider_errors_or_runs_on_cpu_with_a_warning(tmp_path):
    """This machine's onnxruntime is CPU-only: the real session path for both strict settings."""
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(OnnxDtypeError, match="model on cuda:0: CUDAExecutionProvider is not in this onnxruntime.*"
                                             "install onnxruntime-gpu"):
        Config.from_file(model, device="cuda").engine()
    with pytest.warns(UserWarning, match="running on CPUExecutionProvider instead"):
        engine = Config.from_file(model, device="cuda", strict=False).engine()
    assert engine.providers == ["CPUExecutionProvider"]
    assert engine.run(np.ones((2, 64), np.float32))["y"].shape == (2, 16)
