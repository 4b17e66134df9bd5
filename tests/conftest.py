"""Shared fixtures: tiny models (tests/tinymodels.py) saved to tmp, and the real models PyPI packages ship."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import realmodels
import tinymodels


@pytest.fixture
def tiny(tmp_path: Path):
    """tiny("mlp", **kwargs) -> path of that tiny model saved in a fresh folder."""
    def make(name: str, filename: str | None = None, **kwargs) -> Path:
        model = getattr(tinymodels, name)(**kwargs)
        return tinymodels.save(model, tmp_path / "models" / (filename or f"{name}.onnx"))
    return make


@pytest.fixture(scope="session")
def ocr_dir(tmp_path_factory) -> Path:
    """PP-OCRv4 det/cls/rec from rapidocr-onnxruntime, copied as det.onnx, cls.onnx, rec.onnx."""
    folder = tmp_path_factory.mktemp("ocr")
    for name, path in realmodels.ocr_model_paths().items():
        shutil.copyfile(path, folder / f"{name}.onnx")
    return folder


@pytest.fixture(scope="session")
def minilm_path(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX once per session (cached across runs in .cache/ when present)."""
    cache = Path(__file__).resolve().parent.parent / ".cache" / "minilm" / "model.onnx"
    return realmodels.export_minilm(cache)
