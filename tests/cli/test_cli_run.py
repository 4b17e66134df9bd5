"""`onnxdtype run` and `onnxdtype bench`: tables on success, one line and exit 2 on every user mistake."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import tinymodels
import typer
from typer.testing import CliRunner

from onnxdtype.build import quantize
from onnxdtype.cli.run import register

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


@pytest.fixture
def ocr_like(tmp_path) -> Path:
    """det.onnx (a Conv net on 1x3x16x16 images) and rec.onnx (an MLP), rec with an fp16 variant."""
    folder = tmp_path / "models"
    tinymodels.save(tinymodels.conv(), folder / "det.onnx")
    tinymodels.save(tinymodels.mlp(), folder / "rec.onnx")
    quantize(folder / "rec.onnx", ["fp16"], workers=1)
    return folder


def test_run_prints_outputs_shapes_and_timings(ocr_like):
    result = invoke("run", ocr_like, "--module", "rec=fp16", "--runs", "3")
    assert result.exit_code == 0, result.output
    assert "rec_fp16.onnx" in result.output and "det.onnx" in result.output
    assert "1x8x16x16" in result.output and "1x16" in result.output  # det's y, rec's y
    assert "x 1x64 (synthetic)" in result.output
    for column in ("load ms", "warm-up ms", "run ms", "CPU"):
        assert column in result.output


def test_run_feeds_npy_and_image_inputs(ocr_like, tmp_path):
    from PIL import Image

    np.save(tmp_path / "x.npy", np.ones((5, 64), np.float32))
    Image.new("RGB", (40, 30), "red").save(tmp_path / "photo.png")
    result = invoke("run", ocr_like / "rec.onnx", "--input", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output
    assert "5x16" in result.output and "synthetic" not in result.output
    result = invoke("run", ocr_like / "det.onnx", "-i", f"x={tmp_path / 'photo.png'}")
    assert result.exit_code == 0, result.output
    assert "x 1x3x16x16" in result.output and "1x8x16x16" in result.output  # resized to the fixed input size


def test_run_missing_policies_from_the_cli(ocr_like):
    result = invoke("run", ocr_like, "--dtype", "q4", "--missing", "fallback")
    assert result.exit_code == 0, result.output
    assert "warning: det: no q4 variant; using fp32 instead" in result.output
    built = invoke("run", ocr_like / "rec.onnx", "--dtype", "q8", "--missing", "build")
    assert built.exit_code == 0, built.output and (ocr_like / "rec_q8.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--dtype", "fp12"], "unknown dtype 'fp12'"),
    (["--dtype", "q4"], "det: no q4 variant; tried"),
    (["--module", "cls=fp16"], "unknown module 'cls'; known: det, rec"),
    (["--module", "rec"], "--module takes NAME=DTYPE"),
    (["--device", "cuda"], "CUDAExecutionProvider is not in this onnxruntime"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dim", "N=big"], "--dim takes NAME=SIZE or INPUT:AXIS=SIZE"),
    (["--input", "nothere.npy"], "no such file nothere.npy"),
    (["--missing", "ignore"], "missing must be one of error, fallback, build"),
])
def test_run_mistakes_are_one_line_errors(ocr_like, args, message):
    result = invoke("run", ocr_like, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bench_times_every_variant_against_fp32_in_the_same_run(ocr_like):
    shutil.copyfile(ocr_like / "det.onnx", ocr_like / "det-fp16.onnx")  # usls-named, not an fp16 model at all
    result = invoke("bench", ocr_like, "--runs", "3", "--dim", "N=4")
    assert result.exit_code == 0, result.output
    rows = {tuple(line.split()[1:4:2]) for line in result.output.splitlines() if line.startswith("│")}
    assert {("det", "fp32"), ("det", "fp16"), ("rec", "fp32"), ("rec", "fp16")} <= rows
    assert "1.00x" in result.output and "speedup vs fp32" in result.output
    only = invoke("bench", ocr_like, "--runs", "2", "--dtype", "fp16")
    assert only.exit_code == 0 and "rec_fp16.onnx" in only.output and "rec.onnx" in only.output  # fp32 stays


def test_bench_reports_a_variant_it_cannot_run(ocr_like):
    (ocr_like / "rec_q4.onnx").write_bytes(b"not a model")
    result = invoke("bench", ocr_like / "rec.onnx", "--runs", "1")
    assert result.exit_code == 0, result.output
    assert "not run here: model: onnxruntime cannot load" in result.output
