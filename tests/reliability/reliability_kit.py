"""What the reliability suite shares: running the command line, bad tiny models, and the folder invariants.

The folder invariant every test here checks after a run, a crash or a race (`check_folder`):
  - the manifest, when present, passes `read_manifest` (valid JSON, schema, paths confined);
  - every model file at the top of the folder is one the manifest vouches for (its sha256 is recorded there)
    and onnxruntime loads it: no partial, unlisted or foreign file under a final name;
  - every file the manifest lists (base, ok or kept-failed variant) is there with that sha256.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnxdtype.manifest import LOCK_NAME, read_manifest
from onnxdtype.model import TEMP_PREFIX, model_sha256, sha256_file

SRC = Path(__file__).resolve().parents[2] / "src"
CRASHRUN = Path(__file__).resolve().parent / "crashrun.py"


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.strip().splitlines() if line.strip()]


def cli(*args) -> Outcome:
    """`onnxdtype ARGS` in this process (typer's CliRunner); stdout and stderr apart."""
    from onnxdtype.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "80"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text = "".join(traceback.format_exception(result.exception))
        return Outcome(99, result.stdout, result.stderr + "\nTraceback (in process):\n" + text)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def env_for_children(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def cli_process(*args, timeout: float = 120, **popen) -> Outcome:
    """`python -m onnxdtype.cli ARGS` in a child process (80-column stderr, as in a CI log)."""
    proc = subprocess.run([sys.executable, "-m", "onnxdtype.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=popen.pop("env", env_for_children()), **popen)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(outcome: Outcome, code: int, *fragments: str) -> str:
    """Exit `code`, no traceback anywhere, stderr exactly one line `error: ...` holding every fragment."""
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    assert outcome.code == code, (outcome.code, outcome.stderr, outcome.stdout[-2000:])
    lines = outcome.error_lines
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- folders
def names(folder: Path) -> set[str]:
    """The folder's entries, without the documented lock file (it may remain after any run)."""
    return {p.name for p in folder.iterdir()} - {LOCK_NAME} if folder.exists() else set()


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 (or 'dir'/'link'), to show a folder untouched."""
    state = {}
    for p in sorted(folder.iterdir()):
        if p.name == LOCK_NAME:
            continue
        state[p.name] = "link:" + os.readlink(p) if p.is_symlink() else ("dir" if p.is_dir() else sha256_file(p))
    return state


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)) if folder.exists() else []


@dataclass
class FolderState:
    listed: dict[str, str]  # file -> status ("base", "ok", "failed")
    missing: list[str]  # listed but absent
    leftovers: list[str]
    unlisted: list[str]  # complete model files the manifest does not list (only with allow_unlisted_complete)


def check_folder(folder: Path, *, allow_listed_missing: bool = False, base_sha: dict[str, str] | None = None,
                 allow_unlisted_complete: bool = False) -> FolderState:
    """Assert the folder invariant (module docstring); return what the manifest lists.

    `base_sha` names base copies that may be there unlisted when byte-identical to the input (the base is
    placed before the manifest first lists it: such a copy is the input itself, not an untrusted variant).
    """
    import onnxruntime as ort

    manifest = read_manifest(folder)  # raises on a corrupt manifest
    listed: dict[str, tuple[str, str]] = {}
    for entry in manifest["modules"].values():
        if entry.get("base"):
            listed[entry["base"]["file"]] = ("base", entry["base"]["sha256"])
        for variant in entry.get("variants", {}).values():
            if variant.get("file"):
                listed[variant["file"]] = (variant["status"], variant["sha256"])
    missing = []
    for file, (status, digest) in listed.items():
        path = folder / file
        if not path.exists():
            missing.append(file)
            continue
        assert model_sha256(path) == digest, f"{file}: sha256 differs from the manifest"
    assert allow_listed_missing or not missing, f"listed but missing: {missing}"
    models = sorted(p.name for p in folder.glob("*.onnx"))
    unlisted = [m for m in models if m not in listed
                and not (base_sha and m in base_sha and sha256_file(folder / m) == base_sha[m])]
    assert allow_unlisted_complete or not unlisted, f"model files the manifest does not vouch for: {unlisted}"
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for name in models:
        ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
    return FolderState({f: s for f, (s, _) in listed.items()}, missing, leftovers(folder), unlisted)


# ---------------------------------------------------------------------------------------------- mounts
def _mount(*args: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def mounted(kind: str, where: Path, size: str = "256k") -> Iterator[Path]:
    """A real read-only bind mount ("ro") or a small tmpfs ("tmpfs") at `where`; skips when mount is not
    permitted here (no root or no CAP_SYS_ADMIN, as on many CI runners: the fault-injection tests cover those)."""
    where.mkdir(parents=True, exist_ok=True)
    if kind == "ro":
        ok = _mount("--bind", "-o", "ro", str(where), str(where))
        ok = ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(where)], capture_output=True).returncode == 0
    else:
        ok = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if not ok:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        pytest.skip(f"mount ({kind}) is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ---------------------------------------------------------------------------------------------- bad models
def _io(name: str, *dims, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(dims))


def _weight(seed: int = 0, *shape: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape or (64, 16)) * 0.1).astype(np.float32)


def raw_model(nodes, initializers, opsets=(("", 17),), inputs=None, outputs=None) -> onnx.ModelProto:
    """A model put together without onnx.checker, so it can be wrong on purpose."""
    graph = helper.make_graph(nodes, "bad", inputs or [_io("x", "N", 64)], outputs or [_io("y", "N", 16)],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              producer_name="onnxdtype-reliability")
    model.ir_version = 8
    return model


def unknown_op() -> onnx.ModelProto:
    w = numpy_helper.from_array(_weight(), "w")
    return raw_model([helper.make_node("FrobnicateX", ["x", "w"], ["y"], name="frob")], [w])


def unknown_domain() -> onnx.ModelProto:
    w = numpy_helper.from_array(_weight(), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Frob", ["h"], ["y"], name="frob", domain="com.example")]
    return raw_model(nodes, [w], opsets=(("", 17), ("com.example", 1)))


def already_quantized() -> onnx.ModelProto:
    """A QDQ export: int8 weight -> DequantizeLinear -> MatMul."""
    q = numpy_helper.from_array(np.clip(_weight() * 500, -127, 127).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.002, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], name="dq"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return raw_model(nodes, [q, scale, zero])


def fp16_base() -> onnx.ModelProto:
    """An fp16 export with fp32 graph inputs/outputs: Cast -> MatMul(fp16 weight) -> Cast."""
    w = numpy_helper.from_array(_weight().astype(np.float16), "w")
    nodes = [helper.make_node("Cast", ["x"], ["x16"], name="in", to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["x16", "w"], ["y16"], name="mm"),
             helper.make_node("Cast", ["y16"], ["y"], name="out", to=TensorProto.FLOAT)]
    return raw_model(nodes, [w])


def matmul_with(weight: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    return raw_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                     [numpy_helper.from_array(weight, "w")], opsets=(("", opset),))


def nan_weight() -> onnx.ModelProto:
    w = _weight()
    w[3, 5] = np.nan
    return matmul_with(w)


def inf_weight() -> onnx.ModelProto:
    w = _weight()
    w[1, 1] = np.inf
    return matmul_with(w)


def inf_mask() -> onnx.ModelProto:
    """-inf in an additive mask (as attention exports have): legitimate, the model must build."""
    mask = np.zeros(16, np.float32)
    mask[3] = -np.inf
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "mask"], ["y"], name="mask_add")]
    return raw_model(nodes, [numpy_helper.from_array(_weight(), "w"), numpy_helper.from_array(mask, "mask")])


def zero_sized() -> onnx.ModelProto:
    """A zero-sized initializer (as Resize's empty roi is): legitimate, the model must build."""
    empty = numpy_helper.from_array(np.zeros((0, 16), np.float32), "empty")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Concat", ["h", "empty"], ["y"], name="cat", axis=0)]
    return raw_model(nodes, [numpy_helper.from_array(_weight(), "w"), empty])


def future_opset() -> onnx.ModelProto:
    return matmul_with(_weight(), opset=onnx.defs.onnx_opset_version() + 1)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str | None = None) -> Path:
    """Save with every initializer in `<name>.data`; `location` rewrites where the model says the data is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)
    if location is not None:
        stub = onnx.load(str(path), load_external_data=False)
        for tensor in stub.graph.initializer:
            for item in tensor.external_data:
                if item.key == "location":
                    item.value = location
        path.write_bytes(stub.SerializeToString())
    return path
