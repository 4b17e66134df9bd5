"""A small zoo for the zoo tests: tiny models (one with static calibration data, one folder of two modules)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tinymodels

from onnxdtype.build.plan import vouched
from onnxdtype.dtype import DType
from onnxdtype.manifest import read_manifest

TINY_SPEC = """
[defaults]
dtypes = ["fp16", "q8"]
latency_runs = 2

[[models]]
path = "models/mlp.onnx"
dtypes = ["fp16", "q8", "s8u8"]
calib = "calib"

[[models]]
name = "pair"
path = "models/pair"
"""


def tiny_zoo(root: Path, spec: str = TINY_SPEC) -> Path:
    """Write the tiny models, calibration data and zoo.toml under `root`; returns the spec's path."""
    tinymodels.save(tinymodels.mlp(), root / "models" / "mlp.onnx")
    tinymodels.save(tinymodels.conv(), root / "models" / "pair" / "conv.onnx")
    tinymodels.save(tinymodels.mlp(hidden=32), root / "models" / "pair" / "head.onnx")
    calib = root / "calib"
    calib.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        np.savez(calib / f"{i}.npz", x=rng.standard_normal((4, 64)).astype(np.float32))
    (root / "zoo.toml").write_text(spec)
    return root / "zoo.toml"


def index(out: Path) -> dict:
    return json.loads((out / "zoo.json").read_text())


def cells(out: Path) -> dict[tuple[str, str, str], dict]:
    """(model, module, dtype) -> its zoo.json entry."""
    return {(model, module, dtype): cell for model, entry in index(out)["models"].items()
            for module, m in entry["modules"].items() for dtype, cell in m["dtypes"].items()}


def assert_vouched(out: Path) -> None:
    """Every ok entry of zoo.json is a file its model's manifest vouches for (sha256 checked), and no temp
    file is left anywhere in the output."""
    ok = [(model, module, dtype) for (model, module, dtype), cell in cells(out).items() if cell["status"] == "ok"]
    assert ok
    for model, module, dtype in ok:
        assert vouched(out / model, read_manifest(out / model), module, DType(dtype)), (model, module, dtype)
    assert not [p for p in out.rglob(".onnxdtype-tmp-*")]


def mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")}
