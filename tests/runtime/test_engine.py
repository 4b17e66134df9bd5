"""Engine: casts host arrays to what each input declares, fills dynamic dims for warm-up, times every stage."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels
from onnx import TensorProto, helper, numpy_helper

from onnxdtype.build import quantize
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.recipes import float16
from onnxdtype.runtime import Config


@pytest.fixture
def fp16_io(tmp_path) -> Path:
    """mlp.onnx with mlp_fp16.onnx built with fp16 graph inputs and outputs (--fp16-io)."""
    base = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    quantize(base, ["fp16"], workers=1, options={float16.NAME: float16.Options(keep_io_types=False)})
    return tmp_path


def embedding(tmp_path: Path) -> Path:
    """ids int64 [batch, seq] and mask bool [batch, seq] -> Gather(table) * mask: token ids and a boolean mask."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["vectors"]),
             helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mask_f", "axis"], ["mask_3d"]),
             helper.make_node("Mul", ["vectors", "mask_3d"], ["out"])]
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", 4])],
        [table, numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return tinymodels.save(model, tmp_path / "embedding.onnx")


def test_fp16_io_variant_takes_float32_and_gives_float32(fp16_io):
    config = Config.from_dir(fp16_io)
    fp32, fp16 = config.engine("mlp"), config.with_dtype_all("fp16").engine("mlp")
    assert fp16.module.file.name == "mlp_fp16.onnx" and fp16.inputs[0].dtype == np.float16
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    reference, converted = fp32.run({"x": x})["y"], fp16.run({"x": x})["y"]
    assert converted.dtype == np.float32 and converted.shape == (3, 16)
    assert np.allclose(converted, reference, atol=2e-2)
    assert fp16.prepare(x)["x"].dtype == np.float16  # what the session really got
    assert fp16.warmup_feeds()["x"].dtype == np.float16


def test_int_ids_and_masks_are_cast_floats_are_refused(tmp_path):
    engine = Config.from_file(embedding(tmp_path)).engine()
    ids32 = np.array([[1, 2, 3]], np.int32)
    out = engine.run({"ids": ids32, "mask": [[1, 1, 0]]})["out"]  # int32 ids, a Python list for the bool mask
    assert out.shape == (1, 3, 4) and out[0, 0].tolist() == [4, 5, 6, 7] and out[0, 2].tolist() == [0, 0, 0, 0]
    prepared = engine.prepare({"ids": ids32, "mask": [[1, 1, 0]]})
    assert prepared["ids"].dtype == np.int64 and prepared["mask"].dtype == np.bool_
    with pytest.raises(OnnxDtypeError, match="input ids takes int64; got float64 values, which a cast would truncate"):
        engine.run({"ids": [[1.5, 2.0]], "mask": [[1, 1]]})


def test_input_names_are_checked(tmp_path):
    engine = Config.from_file(embedding(tmp_path)).engine()
    with pytest.raises(OnnxDtypeError, match="model: takes 2 inputs \\(ids, mask\\); pass a dict"):
        engine.run(np.zeros((1, 3), np.int64))
    with pytest.raises(OnnxDtypeError, match="model: inputs are ids, mask; unknown: input_ids; missing: ids"):
        engine.run({"input_ids": np.zeros((1, 3), np.int64), "mask": np.ones((1, 3), bool)})


def test_warm_up_fills_dynamic_dims_from_settings_else_defaults(tmp_path):
    path = embedding(tmp_path)
    feeds = Config.from_file(path).engine().warmup_feeds()
    assert feeds["ids"].shape == feeds["mask"].shape == (1, 64)  # one value per symbolic name, in both inputs
    sized = Config.from_file(path, dims={"seq": (1, 16, 128), ("ids", 0): 2}).engine().warmup_feeds()
    assert sized["ids"].shape == (2, 16) and sized["mask"].shape == (2, 16)


def test_each_stage_is_timed_and_dry_runs_are_counted(tmp_path):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    cold = Config.from_file(model, num_dry_run=0).engine()
    assert cold.timings.load > 0 and cold.timings.warmup == 0 and cold.timings.runs == []
    warm = Config.from_file(model, num_dry_run=3).engine()
    assert warm.timings.warmup > 0
    for _ in range(3):
        warm.run(np.ones((1, 64), np.float32))
    assert len(warm.timings.runs) == 3 and warm.timings.median == sorted(warm.timings.runs)[1]
    assert "load" in str(warm.timings) and "(median of 3)" in str(warm.timings)


def test_session_options_follow_the_settings(tmp_path):
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    engine = Config.from_file(model, intra_threads=2, inter_threads=1, graph_optimization="basic").engine()
    options = engine.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.warns(UserWarning, match="DmlExecutionProvider is not in this onnxruntime"):
        directml = Config.from_file(model, device="directml", strict=False).engine()
    options = directml.session.get_session_options()  # DirectML's requirements are applied even on the CPU fallback
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and options.enable_mem_pattern is False


def test_a_failing_warm_up_says_how_to_fix_it(tmp_path):
    model = tinymodels.mlp()  # x: [N, 64] into a 64-row weight
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    path = tinymodels.save(model, tmp_path / "mlp.onnx")
    assert Config.from_file(path).engine().warmup_feeds()["x"].shape == (1, 64)
    with pytest.raises(OnnxDtypeError, match=r"model: warm-up \(num_dry_run=0 skips it; dims sets its shapes\) "
                                             r"failed on x=1x8: \[ONNXRuntimeError\]"):
        Config.from_file(path, dims={"features": 8}).engine()
    assert Config.from_file(path, dims={"features": 8}, num_dry_run=0).engine().timings.warmup == 0


def test_running_never_imports_the_build_side(tmp_path):
    """Only missing="build" reaches into onnxdtype.build; resolving and running a variant stays on the runtime side."""
    model = tinymodels.save(tinymodels.mlp(), tmp_path / "mlp.onnx")
    shutil.copyfile(model, tmp_path / "mlp_fp16.onnx")
    script = ("import sys, numpy as np; from onnxdtype.runtime import Config; "
              f"Config.from_file({str(model)!r}, dtype='fp16', missing='fallback').engine().run(np.ones((1, 64))); "
              "print(sorted(m for m in sys.modules if m.startswith(('onnxdtype.build', 'onnxdtype.recipes', "
              "'onnxdtype.verify', 'onnxruntime.quantization'))))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
