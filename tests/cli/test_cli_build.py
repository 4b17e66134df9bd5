"""The command line: tables on success, one line and a non-zero exit on every user mistake."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from onnxdtype.cli import app
from onnxdtype.manifest import LOCK_NAME

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_quantize_prints_the_table_and_writes_variants(tiny, tmp_path):
    result = invoke("quantize", tiny("mlp"), "--dtype", "fp16,q4", "--out", tmp_path / "out", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "mlp_fp16.onnx" in result.output and "mlp_q4.onnx" in result.output
    assert (tmp_path / "out" / "mlp_q4.onnx").exists()


def test_recipe_options_reach_the_manifest(tiny, tmp_path):
    import json

    result = invoke("quantize", tiny("mlp"), "-d", "q4,bnb4,q8", "-o", tmp_path / "out", "--workers", "1",
                    "--q4-block-size", "64", "--bnb4-type", "fp4", "--q8-weight-type", "uint8")
    assert result.exit_code == 0, result.output
    variants = json.loads((tmp_path / "out" / "onnxdtype.json").read_text())["modules"]["mlp"]["variants"]
    assert variants["q4"]["params"]["blockwise4"]["block_size"] == 64
    assert variants["bnb4"]["params"]["bnb4"]["quant_type"] == "fp4"
    assert variants["q8"]["params"]["dynamic"]["weight_type"] == "uint8"


@pytest.mark.parametrize("args, message", [
    (["--dtype", "fp12"], "unknown dtype 'fp12'"),
    (["--dtype", "bf16"], "no recipe builds bf16"),
    (["--dtype", "q4", "--q4-block-size", "30"], "q4 block_size must be a power of two >= 16, not 30"),
    (["--dtype", "bnb4", "--bnb4-type", "nf3"], "bnb4 quant_type 'nf3' is not valid; valid: fp4, nf4"),
    (["--dtype", "u8u8"], "u8u8: needs calibration data"),
    (["--dtype", "q4", "--set", "q4.rounding=gptq"], "q4: needs calibration data"),
    (["--dtype", "q4", "--set", "q4.rounding=best"], "q4 rounding 'best' is not valid; valid: nearest, gptq"),
])
def test_user_mistakes_are_one_line_errors(tiny, tmp_path, args, message):
    result = invoke("quantize", tiny("mlp"), "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or {p.name for p in (tmp_path / "out").iterdir()} <= {LOCK_NAME}


def test_not_applicable_by_name_exits_non_zero(tiny, tmp_path):
    result = invoke("quantize", tiny("conv"), "--dtype", "q4", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "not applicable" in result.output


def test_dtypes_and_inspect(tiny):
    table = invoke("dtypes")
    assert table.exit_code == 0 and "q4f16" in table.output and "<stem>_bnb4.onnx" in table.output
    facts = invoke("inspect", tiny("conv"))
    assert facts.exit_code == 0, facts.output
    assert "Conv" in facts.output and "q4" in facts.output and "no MatMul with a constant 2-D weight" in facts.output


def test_inspect_bad_file(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    result = invoke("inspect", bad)
    assert result.exit_code == 2 and "not a readable ONNX model" in result.output


def test_console_script_runs_without_traceback_and_keeps_onnxruntime_quiet(tiny, tmp_path):
    """A real process: the installed entry point, stderr free of onnxruntime's log flood."""
    proc = subprocess.run([sys.executable, "-m", "onnxdtype.cli", "quantize", str(tiny("mlp")), "-d", "q8",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mlp_q8.onnx" in proc.stdout
    assert "WARNING" not in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out"]  # no temp files in the working dir


@pytest.mark.parametrize("args, message", [
    (["--task", "mlp=nope"], "--task mlp=nope: unknown task 'nope' (valid: classify"),
    (["--task", "other=ctc"], "no module 'other' (modules: mlp)"),
    (["--task", "mlp/zz=ctc"], "mlp has no output 'zz' (outputs: y)"),
    (["--fix-input", "mood=1"], "--fix-input mood: no module has such an input (inputs: x)"),
    (["--set", "q4.block_size=abc"], "q4 block_size must be a power of two >= 16, not 'abc'"),
    (["--set", "nodot"], "expected DTYPE_OR_RECIPE.OPTION=VALUE"),
    (["--tolerance", "task.q8=2"], "a cosine or an agreement is in [0, 1]"),
])
def test_task_fix_input_and_set_mistakes_are_one_line_errors(tiny, tmp_path, args, message):
    result = invoke("quantize", tiny("mlp"), "--out", tmp_path / "out", "--dtype", "q8", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or {p.name for p in (tmp_path / "out").iterdir()} <= {LOCK_NAME}


def test_q4_gptq_rounding_uses_the_calibration_data_and_leaves_no_scratch(tiny, tmp_path):
    import json

    import numpy as np

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # 512 rows against the MatMuls' 64 input features: GPTQ rounds both
        np.savez(calib / f"{i}.npz", x=(rng.standard_normal((128, 64)) @ rng.standard_normal((64, 64))).astype("f4"))
    result = invoke("quantize", tiny("mlp"), "-d", "q4,q4f16", "-o", tmp_path / "out", "--workers", "1",
                    "--calib", calib, "--set", "blockwise4.rounding=gptq")
    assert result.exit_code == 0, result.output
    variants = json.loads((tmp_path / "out" / "onnxdtype.json").read_text())["modules"]["mlp"]["variants"]
    for dtype in ("q4", "q4f16"):
        params = variants[dtype]["params"]["blockwise4"]
        assert (params["rounding"], params["gptq_rounded"], params["gptq_left_nearest"]) == ("gptq", 2, [])
        assert params["calibration_samples"] == 3  # one of the 4 held out to verify, as for the static dtypes
        assert variants[dtype]["verification"]["data"].startswith("held-out 1 of the calibration samples")
    assert not list((tmp_path / "out").rglob("*.npz"))  # the Gram matrices stayed in the build's scratch folder
