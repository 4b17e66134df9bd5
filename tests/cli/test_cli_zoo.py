"""`onnxdtype zoo`: a line per finished variant and the index's place; a bad spec is one error line, exit 2,
and nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from onnxdtype.cli import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
import zookit  # noqa: E402


def test_zoo_prints_a_line_per_variant_and_a_rerun_is_up_to_date(tmp_path):
    spec, out = zookit.tiny_zoo(tmp_path), tmp_path / "out"
    run = CliRunner().invoke(app, ["zoo", str(spec), "--out", str(out), "--max-parallel", "1", "--json"])
    assert run.exit_code == 0, run.output
    assert "mlp/mlp s8u8: ok" in run.output and "pair/head q8: ok" in run.output
    assert '"models"' in run.output and (out / "zoo.json").exists()
    again = CliRunner().invoke(app, ["zoo", str(spec), "--out", str(out)])
    assert again.exit_code == 0 and "0 tasks run (0 failed), 7 up to date" in again.output, again.output


def test_a_bad_spec_is_one_error_line_and_writes_nothing(tmp_path):
    spec = zookit.tiny_zoo(tmp_path, '[[models]]\npath = "models/mlp.onnx"\ndtypes = ["q9"]\n')
    run = CliRunner().invoke(app, ["zoo", str(spec), "-o", str(tmp_path / "out")])
    assert run.exit_code == 2 and run.output.count("error:") == 1 and "models[0]: key 'dtypes'" in run.output
    assert not (tmp_path / "out").exists()
    run = CliRunner().invoke(app, ["zoo", str(spec), "-o", str(tmp_path / "out"), "--executor", "slurm"])
    assert run.exit_code == 2 and "--executor 'slurm'" in run.output
