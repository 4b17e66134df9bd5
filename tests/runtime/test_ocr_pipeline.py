"""examples/ocr_pipeline.py on CPU: every per-module dtype mix reads the text fp32 reads, and fp32 reads it right."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ocr_pipeline.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ocr_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory, ocr_dir) -> Path:
    """A private copy of det/cls/rec: the example builds its variants into it."""
    return Path(shutil.copytree(ocr_dir, tmp_path_factory.mktemp("ocr-example") / "models"))


def test_every_mix_reads_what_fp32_reads(models):
    example = load_example()
    image = example.rendered_lines()
    readings = {mix: example.read_text(models, image, mix) for mix in example.MIXES}
    assert readings["fp32"].lines == example.LINES
    for mix, reading in readings.items():
        assert reading.lines == readings["fp32"].lines, mix
        assert {m: d.value for m, d in reading.dtypes.items()} == example.MIXES[mix]
        assert all(seconds > 0 for seconds in reading.seconds.values())
    assert {p.name for p in models.glob("*_*.onnx")} >= {"det_fp16.onnx", "det_q8.onnx", "cls_q8.onnx", "cls_q4.onnx"}


def test_the_script_runs_from_the_command_line(models):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--models", str(models)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Hello onnxdtype 2026" in proc.stdout and "DIFFERS" not in proc.stdout
    assert proc.stdout.count("same text as fp32") == 4
