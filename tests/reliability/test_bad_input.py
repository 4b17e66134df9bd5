"""Bad input, every kind the issue lists: each case asserts the exit code, one `error:` line naming the problem
(never a traceback), and exactly what the output folder holds afterwards (`.onnxdtype.lock`, the documented
lock file, may remain after any run).

The command line runs in process (typer's CliRunner) unless the kernel has to do the failing. Read-only and
full filesystems are real where `mount` is permitted (a read-only bind mount, a small tmpfs; skipped
elsewhere) and always also simulated: RLIMIT_FSIZE in a child process (every write past the limit fails
with EFBIG, in Python, numpy and onnx's C++ alike) and EROFS/ENOSPC raised from os.replace/fsync in process.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
import reliability_kit as kit
import tinymodels

from onnxdtype.build import quantize
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import MANIFEST_NAME
from onnxdtype.model import sha256_file
from onnxdtype.verify.evaluate import EvalData

FAST = ("--workers", "1", "--latency-runs", "0")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mlp_bytes() -> bytes:
    return tinymodels.mlp().SerializeToString()


def quantize_cli(model: Path, out: Path, *args: str) -> kit.Outcome:
    return kit.cli("quantize", model, "-o", out, *FAST, *args)


# ------------------------------------------------------------------------------------------- bad models
def _external_missing(folder: Path) -> Path:
    path = kit.save_external(tinymodels.mlp(), folder / "ext.onnx")
    (folder / "ext.onnx.data").unlink()
    return path


def _external_truncated(folder: Path) -> Path:
    path = kit.save_external(tinymodels.mlp(), folder / "ext.onnx")
    data = folder / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    return path


def _external_outside(folder: Path) -> Path:
    write(folder.parent / "secret.data", b"\0" * 100_000)
    return kit.save_external(tinymodels.mlp(), folder / "ext.onnx", location="../secret.data")


BAD_MODELS = [
    pytest.param(lambda d: write(d / "m.onnx", b"hello, not a protobuf\n"), ["not a readable ONNX model"], id="not-onnx"),
    pytest.param(lambda d: write(d / "m.onnx", mlp_bytes()[: len(mlp_bytes()) // 2]), ["not a readable ONNX model"],
                 id="truncated"),
    pytest.param(lambda d: write(d / "m.onnx", b""), ["not an ONNX model"], id="empty-file"),
    pytest.param(lambda d: kit.save(kit.unknown_op(), d / "m.onnx"), ["FrobnicateX"], id="unknown-op"),
    pytest.param(lambda d: kit.save(kit.unknown_domain(), d / "m.onnx"), ["com.example"], id="unknown-domain"),
    pytest.param(lambda d: kit.save(kit.already_quantized(), d / "m.onnx"), ["already quantized", "DequantizeLinear"],
                 id="already-quantized"),
    pytest.param(lambda d: kit.save(kit.fp16_base(), d / "m.onnx"), ["weights are stored in fp16"], id="fp16-base"),
    pytest.param(_external_missing, ["bad external data", "ext.onnx.data"], id="external-data-missing"),
    pytest.param(_external_truncated, ["not a readable ONNX model", "exceeds available data"],
                 id="external-data-truncated"),
    pytest.param(_external_outside, ["bad external data", "points outside"], id="external-data-outside-folder"),
    pytest.param(lambda d: kit.save(kit.nan_weight(), d / "m.onnx"), ["initializer 'w' holds NaN"], id="nan-weight"),
    pytest.param(lambda d: kit.save(kit.inf_weight(), d / "m.onnx"), ["weight 'w' of MatMul node 'mm' holds Inf"],
                 id="inf-weight"),
    pytest.param(lambda d: kit.save(kit.future_opset(), d / "m.onnx"),
                 [f"opset {onnx.defs.onnx_opset_version() + 1} is newer than this onnx"], id="opset-too-new"),
    pytest.param(lambda d: write(d / "m.onnx", mlp_bytes().replace(b"mm1", b"m\xe31")), ["node name", "not UTF-8"],
                 id="name-not-utf8"),
    pytest.param(lambda d: d / "absent.onnx", ["no such file"], id="missing-path"),
    pytest.param(lambda d: (d / "empty").mkdir(parents=True) or d / "empty", ["no fp32 .onnx model in this folder"],
                 id="folder-without-models"),
]


@pytest.mark.parametrize("make, fragments", BAD_MODELS)
def test_bad_model_is_one_line_exit_2_and_writes_nothing(tmp_path, make, fragments):
    model = make(tmp_path / "in")
    before = kit.snapshot(tmp_path / "in") if (tmp_path / "in").exists() else {}
    out = tmp_path / "out"
    kit.assert_one_line_error(quantize_cli(model, out, "-d", "all"), 2, *fragments)
    assert kit.names(out) == set()
    assert (kit.snapshot(tmp_path / "in") if (tmp_path / "in").exists() else {}) == before  # input untouched


@pytest.mark.parametrize("make, fragments", [p for p in BAD_MODELS if p.id in (
    "not-onnx", "truncated", "external-data-missing", "nan-weight", "opset-too-new")])
def test_bad_model_through_a_real_process(tmp_path, make, fragments):
    """The installed entry point in a child process: same one line, same exit code, same empty folder."""
    model = make(tmp_path / "in")
    out = tmp_path / "out"
    kit.assert_one_line_error(kit.cli_process("quantize", model, "-o", out, "-d", "all", *FAST), 2, *fragments)
    assert kit.names(out) == set()


@pytest.mark.parametrize("make, stem, built", [
    (kit.zero_sized, "zero", {"fp16", "q8", "q4", "q4f16", "bnb4"}),
    (kit.inf_mask, "mask", {"fp16", "q8", "q4", "q4f16", "bnb4"}),
    (tinymodels.no_weights, "plain", {"fp16"}),
], ids=["zero-sized-initializer", "minus-inf-mask", "no-float-weights"])
def test_odd_but_legitimate_models_build_what_applies(tmp_path, make, stem, built):
    model = kit.save(make(), tmp_path / "in" / f"{stem}.onnx")
    out = tmp_path / "out"
    outcome = quantize_cli(model, out, "-d", "all")
    assert outcome.code == 0, outcome.stderr + outcome.stdout
    assert kit.names(out) == {f"{stem}.onnx", MANIFEST_NAME, "report.html"} | {f"{stem}_{d}.onnx" for d in built}
    kit.check_folder(out)


def test_no_float_weights_with_a_dtype_asked_by_name_writes_nothing(tmp_path):
    model = kit.save(tinymodels.no_weights(), tmp_path / "in" / "plain.onnx")
    out = tmp_path / "out"
    kit.assert_one_line_error(quantize_cli(model, out, "-d", "q8"), 2, "plain: q8 is not applicable")
    assert kit.names(out) == set()


# ------------------------------------------------------------------------------------------- evaluation data
X = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
BAD_EVAL = {
    "wrong-name": ([{"z": X}], ["'z' is not an input of the model"]),
    "missing-input": ([{}], ["no array for input 'x'"]),
    "wrong-shape": ([{"x": np.zeros((2, 63), np.float32)}], ["input 'x' has shape [2, 63]"]),
    "wrong-rank": ([{"x": np.zeros(64, np.float32)}], ["input 'x' has shape [64]"]),
    "wrong-dtype": ([{"x": np.full((2, 64), "a")}], ["input 'x' is <U1"]),
    "nan": ([{"x": np.full((2, 64), np.nan, np.float32)}], ["input 'x' contains NaN or Inf"]),
    "no-samples": ([], ["no samples"]),
    "good-then-bad": ([{"x": X}, {"x": np.zeros((2, 3), np.float32)}], ["sample 1", "input 'x' has shape [2, 3]"]),
}


@pytest.mark.parametrize("case", BAD_EVAL)
def test_bad_eval_data_is_one_error_naming_sample_and_input_and_writes_nothing(tiny, tmp_path, case):
    feeds, fragments = BAD_EVAL[case]
    out = tmp_path / "out"
    with pytest.raises(OnnxDtypeError) as error:
        quantize(tiny("mlp"), "fp16,q8", out, workers=1, latency_runs=0, eval_data=EvalData(feeds, "my data", False))
    assert all(f in str(error.value) for f in fragments) and "\n" not in str(error.value), str(error.value)
    assert kit.names(out) == set()


def test_eval_data_for_an_unknown_module_is_refused(tiny, tmp_path):
    with pytest.raises(OnnxDtypeError, match="'textual'"):
        quantize(tiny("mlp"), "fp16", tmp_path / "out", workers=1, latency_runs=0,
                 eval_data={"textual": EvalData([{"x": X}], "my data", False)})
    assert kit.names(tmp_path / "out") == set()


def _data_folder(root: Path, case: str) -> Path:
    """A folder of .npz samples for mlp (input x: float32 [N, 64]) with one kind of mistake."""
    folder = root / case
    folder.mkdir(parents=True)
    samples = {
        "wrong-name": [{"z": X}], "wrong-shape": [{"x": np.zeros((2, 63), np.float32)}],
        "wrong-dtype": [{"x": X.astype(np.float64)}], "nan": [{"x": np.full((2, 64), np.nan, np.float32)}],
        "empty-folder": [], "good-and-bad": [{"x": X}, {"x": X}, {"x": np.zeros((2, 3), np.float32)}],
    }.get(case)
    for i, feed in enumerate(samples or []):
        np.savez(folder / f"{i:03d}.npz", **feed)
    if case == "corrupt-file":
        np.savez(folder / "000.npz", x=X)
        (folder / "001.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return folder


DATA_CASES = {
    "wrong-name": ["000.npz: 'z' is not an input of the model"],
    "wrong-shape": ["000.npz: input 'x' has shape [2, 63]"],
    "wrong-dtype": ["000.npz: input 'x' is float64"],
    "nan": ["000.npz: input 'x' contains NaN or Inf"],
    "empty-folder": ["no .npz, .npy or image files"],
    "good-and-bad": ["002.npz: input 'x' has shape [2, 3]"],
    "corrupt-file": ["001.npz: not a readable .npz file"],
}


@pytest.mark.parametrize("option", ["--eval", "--calib"])
@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_eval_or_calibration_folder_is_one_line_naming_file_and_input(tiny, tmp_path, case, option):
    data = _data_folder(tmp_path / "data", case)
    dtypes = "fp16,q8" if option == "--eval" else "s8s8"
    out = tmp_path / "out"
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), out, "-d", dtypes, option, data), 2, *DATA_CASES[case])
    # a calibration cache of the good samples may stay
    assert {n for n in kit.names(out) if not n.startswith("calibration-")} <= {"mlp.onnx", MANIFEST_NAME}
    kit.check_folder(out)


@pytest.mark.parametrize("option, case", [("--eval", "wrong-name"), ("--calib", "nan")])
def test_bad_eval_or_calibration_folder_writes_nothing(tiny, tmp_path, option, case):
    data = _data_folder(tmp_path / "data", case)
    out = tmp_path / "out"
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), out, "-d", "fp16" if option == "--eval" else "s8s8",
                                           option, data), 2)
    assert kit.names(out) == set()


@pytest.mark.parametrize("case", ["wrong-shape", "nan", "corrupt-file"])
def test_bad_calibration_for_q4_gptq_is_one_line_and_writes_nothing(tiny, tmp_path, case):
    """GPTQ rounding reads the calibration data too: checked before anything is written, as for the static dtypes."""
    data = _data_folder(tmp_path / "data", case)
    out = tmp_path / "out"
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), out, "-d", "q4", "--set", "q4.rounding=gptq", "--calib",
                                           data), 2, *DATA_CASES[case])
    assert kit.names(out) == set()


def test_calibration_folder_with_good_and_bad_files_names_the_bad_one(tmp_path):
    from onnxdtype.calibration.data import load_samples

    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a_good.npz", x=X)
    (folder / "b_broken.npz").write_bytes(b"PK\x03\x04 truncated zip")
    np.savez(folder / "c_nan.npz", x=np.full((2, 64), np.nan, np.float32))
    samples = iter(load_samples(folder, tinymodels.mlp()))
    assert next(samples)["x"].shape == (2, 64)
    with pytest.raises(OnnxDtypeError, match="b_broken.npz"):
        next(samples)
    (folder / "b_broken.npz").unlink()
    with pytest.raises(OnnxDtypeError, match="c_nan.npz: input 'x' contains NaN or Inf"):
        list(load_samples(folder, tinymodels.mlp()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxDtypeError, match="no .npz, .npy or image files"):
        load_samples(tmp_path / "empty", tinymodels.mlp())


# ------------------------------------------------------------------------------------------- dtypes and options
@pytest.mark.parametrize("dtype, fragment", [
    ("fp12", "unknown dtype 'fp12'"), ("bf16", "no recipe builds bf16"), ("", "no dtype given"),
    (",,", "no dtype given"), ("q4 f16", "unknown dtype 'q4 f16'"), ("fp16;q8", "unknown dtype 'fp16;q8'"),
    ("\u00e9t\u00e9", "unknown dtype"), ("int8", "int8: needs calibration data"), ("fp4", "no recipe builds fp4"),
])
def test_unknown_dtype_names(tiny, tmp_path, dtype, fragment):
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), tmp_path / "out", "-d", dtype), 2, fragment)
    assert kit.names(tmp_path / "out") == set()




@pytest.mark.parametrize("args, fragment", [
    pytest.param(("-d", "all,fp16"), "'all'", id="all-with-names"),
    pytest.param(("-d", "fp16", "--tolerance", "q8"), "expected NAME=NUMBER", id="tolerance-without-value"),
    pytest.param(("-d", "fp16", "--tolerance", "q9=0.9"), "unknown dtype 'q9'", id="tolerance-unknown-dtype"),
    pytest.param(("-d", "fp16", "--tolerance", "q8=1.5"), "--tolerance", id="tolerance-above-1"),
    pytest.param(("-d", "fp16", "--tolerance", "q8=nan"), "--tolerance", id="tolerance-nan"),
    pytest.param(("-d", "fp16", "--tolerance", "atol=-1"), "--tolerance", id="atol-negative"),
    pytest.param(("-d", "fp16", "--tolerance", "rounding_draws=2.5"), "whole number", id="rounding-draws-fraction"),
    pytest.param(("-d", "fp16", "--tolerance", "weight_draws=-1"), "whole number", id="weight-draws-negative"),
    pytest.param(("-d", "fp16", "--repair-max-weights", "1.5"), "--repair-max-weights", id="repair-share-above-1"),
    pytest.param(("-d", "fp16", "--workers", "-1"), "--workers", id="workers-negative"),
    pytest.param(("-d", "fp16", "--latency-runs", "-1"), "--latency-runs", id="latency-runs-negative"),
    pytest.param(("-d", "fp16", "--search-seconds", "0"), "the search's seconds must be a number > 0",
                 id="search-seconds-zero"),
    pytest.param(("-d", "fp16", "--min-speedup", "-1"), "the search's min_speedup must be a number >= 0",
                 id="min-speedup-negative"),
    pytest.param(("-d", "s8u8", "--set", "static.float_first=-2"), "static float_first must be a whole number",
                 id="float-first-negative"),
    pytest.param(("-d", "q4", "--q4-block-size", "48"), "power of two", id="block-size"),
    pytest.param(("-d", "bnb4", "--bnb4-type", "fp8"), "bnb4 quant_type 'fp8' is not valid; valid: fp4, nf4", id="bnb4-type"),
    pytest.param(("-d", "fp16", "--metric", "no_such_module:f"), "cannot import no_such_module", id="metric-import"),
    pytest.param(("-d", "fp16", "--metric", "plain"), "expected module:function", id="metric-form"),
])
def test_conflicting_and_out_of_range_options(tiny, tmp_path, args, fragment):
    outcome = kit.cli("quantize", tiny("mlp"), "-o", tmp_path / "out", *FAST, *args)  # the case's own value wins
    kit.assert_one_line_error(outcome, 2, fragment)
    assert kit.names(tmp_path / "out") == set()


# ------------------------------------------------------------------------------------------- output folder
def test_output_folder_that_is_a_file_or_below_one(tiny, tmp_path):
    blocker = write(tmp_path / "blocker", b"keep me")
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), blocker, "-d", "fp16"), 2, "exists and is not a folder")
    kit.assert_one_line_error(quantize_cli(tiny("mlp"), blocker / "sub", "-d", "fp16"), 2,
                              "cannot create output folder")
    assert blocker.read_bytes() == b"keep me" and sorted(os.listdir(tmp_path)) == ["blocker", "models"]


def test_read_only_output_folder_real_mount(tiny, tmp_path):
    model = tiny("mlp")
    with kit.mounted("ro", tmp_path / "ro") as ro:
        kit.assert_one_line_error(quantize_cli(model, ro, "-d", "fp16"), 2, "output folder is not writable")
        kit.assert_one_line_error(quantize_cli(model, ro / "sub", "-d", "fp16"), 2,
                                  "cannot create output folder (Read-only file system)")
        assert kit.names(ro) == set()


def test_folder_turning_read_only_mid_build_fault_injection(tiny, tmp_path, monkeypatch):
    """EROFS from every rename into the folder once the first variant is to be renamed into place (the base copy
    and the first manifest went in): one line, exit 2, nothing but complete files the manifest vouches for."""
    real_replace = os.replace
    failed = []

    def replace(src, dst, *args, **kwargs):
        if failed or Path(dst).name in ("mlp_fp16.onnx", "mlp_q8.onnx"):
            failed.append(Path(dst).name)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    outcome = quantize_cli(tiny("mlp"), out, "-d", "fp16,q8")
    monkeypatch.setattr(os, "replace", real_replace)
    assert failed[0] in ("mlp_fp16.onnx", "mlp_q8.onnx")
    kit.assert_one_line_error(outcome, 2, "Read-only file system")
    assert kit.names(out) == {"mlp.onnx", MANIFEST_NAME}
    kit.check_folder(out, allow_listed_missing=True)  # an entry written before its failed rename names no file there


def test_disk_full_on_a_manifest_write_fault_injection(tiny, tmp_path, monkeypatch):
    """ENOSPC from fsync of the first manifest write: the manifest stays as it was (absent), the only file
    is the base copy, byte-identical to the input."""
    from onnxdtype import manifest

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest.os, "fsync", full)
    model = tiny("mlp")
    out = tmp_path / "out"
    outcome = quantize_cli(model, out, "-d", "fp16")
    monkeypatch.undo()
    kit.assert_one_line_error(outcome, 2, "No space left on device")
    assert kit.names(out) <= {"mlp.onnx"} and kit.leftovers(out) == []
    assert not (out / "mlp.onnx").exists() or sha256_file(out / "mlp.onnx") == sha256_file(model)


def test_disk_full_inside_a_variant_build_fails_that_variant_cleanly(tiny, tmp_path, monkeypatch):
    """ENOSPC while a recipe's output is written (in the builder, as a worker would): that variant fails, with
    the reason, one line each, exit 1; no partial file; the other variant and the manifest are complete."""
    from onnxdtype.build import worker as build

    real_write = build.write_model

    def write_model(model, path, *how):
        if Path(path).name in ("mlp.q8.onnx", "mlp_q8.onnx"):  # the q8 variant's temp file, whatever its name
            with open(path, "wb") as handle:
                handle.write(model.SerializeToString()[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(model, path, *how)

    monkeypatch.setattr(build, "write_model", write_model)
    out = tmp_path / "out"
    outcome = quantize_cli(tiny("mlp"), out, "-d", "fp16,q8")
    assert outcome.code == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.stderr.count("error: ") == 1  # one message
    assert outcome.stderr.startswith("error: mlp q8: failed: OSError: [Errno 28] No space left on device")
    assert kit.names(out) == {"mlp.onnx", "mlp_fp16.onnx", MANIFEST_NAME, "report.html"}
    assert kit.check_folder(out).listed == {"mlp.onnx": "base", "mlp_fp16.onnx": "ok"}


def _clean_failure(outcome: kit.Outcome, *fragments: str) -> None:
    """A resource failure: exit 1 or 2, only `error:` lines (one per failed variant at most), no traceback."""
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr[-3000:]
    assert outcome.code in (1, 2), outcome.stderr
    assert outcome.error_lines and all(line.startswith("error: ") for line in outcome.error_lines), outcome.stderr
    assert any(all(f in line for f in fragments) for line in outcome.error_lines), outcome.stderr


def test_full_disk_real_tmpfs(tmp_path):
    model = tinymodels.save(tinymodels.mlp(hidden=256), tmp_path / "in" / "mlp.onnx")
    with kit.mounted("tmpfs", tmp_path / "full", size="160k") as full:
        outcome = kit.cli_process("quantize", model, "-o", full, "-d", "all", *FAST)
        _clean_failure(outcome, "No space left on device")
        kit.check_folder(full, allow_listed_missing=False)
        assert kit.leftovers(full) == []


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    return apply


@pytest.mark.parametrize("hidden, limit", [(64, 4096), (8, 6000)], ids=["base-copy", "manifest-write"])
def test_full_disk_rlimit_fsize(tmp_path, hidden, limit):
    """Works anywhere, root or not: the child process may not write any file past `limit` bytes."""
    model = tinymodels.save(tinymodels.mlp(hidden=hidden), tmp_path / "in" / "mlp.onnx")
    out = tmp_path / "out"
    outcome = kit.cli_process("quantize", model, "-o", out, "-d", "all", *FAST, preexec_fn=_file_size_limit(limit))
    _clean_failure(outcome, "File too large")
    kit.check_folder(out, base_sha={"mlp.onnx": sha256_file(model)})
    assert kit.leftovers(out) == []


# ------------------------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """mlp with fp16 and q8 built and verified once; each test copies it."""
    folder = tmp_path_factory.mktemp("built")
    model = tinymodels.save(tinymodels.mlp(), folder / "src" / "mlp.onnx")
    quantize(model, "fp16,q8", folder / "out", workers=1, latency_runs=0)
    return folder


def _edit(field_path: tuple, value):
    def change(folder: Path) -> None:
        data = json.loads((folder / MANIFEST_NAME).read_text())
        target = data
        for key in field_path[:-1]:
            target = target[key]
        target[field_path[-1]] = value
        (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return change


def _text(content: str | bytes):
    def change(folder: Path) -> None:
        (folder / MANIFEST_NAME).unlink()
        data = content if isinstance(content, bytes) else content.encode()
        (folder / MANIFEST_NAME).write_bytes(data)
    return change


def _symlink_leaving(folder: Path) -> None:
    outside = folder.parent / "elsewhere_q8.onnx"
    shutil.copyfile(folder / "mlp_q8.onnx", outside)
    (folder / "mlp_q8.onnx").unlink()
    (folder / "mlp_q8.onnx").symlink_to(outside)


def _manifest_folder(folder: Path) -> None:
    (folder / MANIFEST_NAME).unlink()
    (folder / MANIFEST_NAME).mkdir()


Q8 = ("modules", "mlp", "variants", "q8")
BAD_MANIFESTS = {
    "not-json": (_text("{not json"), "not valid JSON"),
    "binary": (_text(b"\xff\xfe\x00\x01garbage"), "not valid JSON"),
    "json-list": (_text("[1, 2]"), "not an onnxdtype manifest"),
    "nested-too-deep": (_text('{"schema_version": 1, "modules": ' + "[" * 200_000 + "]" * 200_000 + "}"),
                        "not valid JSON"),
    "unknown-schema": (_edit(("schema_version",), 2), "unknown schema_version 2"),
    "absolute-path": (_edit(Q8 + ("file",), "/etc/passwd"), "must be relative to the manifest's folder"),
    "dotdot-path": (_edit(Q8 + ("file",), "../src/mlp.onnx"), "leaves the folder"),
    "nul-in-path": (_edit(Q8 + ("file",), "mlp_q8.onnx\u0000"), "must be relative"),
    "symlink-leaving": (_symlink_leaving, "leaves the folder"),
    "module-not-object": (_edit(("modules", "mlp"), [1, 2]), "module 'mlp' is not an object"),
    "no-base": (_edit(("modules", "mlp", "base"), None), "module 'mlp' has no base file"),
    "unknown-status": (_edit(Q8 + ("status",), "great"), "unknown status 'great'"),
    "unknown-dtype-key": (_edit(("modules", "mlp", "variants", "fp12"), {"status": "ok"}), "unknown dtype 'fp12'"),
    "ok-without-sha256": (_edit(Q8 + ("sha256",), None), "mlp/q8 has no valid sha256"),
    "manifest-is-a-folder": (_manifest_folder, "cannot read"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_bad_manifest_is_refused_by_verify_quantize_and_the_runtime(built, tmp_path, case):
    mutate, fragment = BAD_MANIFESTS[case]
    folder = tmp_path / "out"
    shutil.copytree(built / "out", folder, symlinks=True)
    mutate(folder)
    before = kit.snapshot(folder)
    kit.assert_one_line_error(kit.cli("verify", folder, "--latency-runs", "0"), 2, fragment)
    assert kit.snapshot(folder) == before
    kit.assert_one_line_error(quantize_cli(built / "src" / "mlp.onnx", folder, "-d", "fp16,q8"), 2, fragment)
    assert kit.snapshot(folder) == before
    from onnxdtype.runtime import Config

    with pytest.raises(OnnxDtypeError) as error:
        Config.from_dir(folder, dtype="q8").commit()
    assert fragment in str(error.value)
    assert kit.snapshot(folder) == before


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every model onnxruntime is asked to load in this process (paths; '<bytes>' for in-memory models)."""
    import onnxruntime

    seen: list[str] = []
    real = onnxruntime.InferenceSession

    def spy(source, *args, **kwargs):
        seen.append(str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return seen


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_sha256_mismatch_verify_fails_that_variant_and_never_loads_it(built, tmp_path, loads):
    folder = tmp_path / "out"
    shutil.copytree(built / "out", folder)
    _flip_last_byte(folder / "mlp_q8.onnx")
    tampered = sha256_file(folder / "mlp_q8.onnx")
    outcome = kit.cli_process("verify", folder, "--latency-runs", "0")
    assert outcome.code == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert str(folder / "mlp_q8.onnx") not in loads
    manifest = json.loads((folder / MANIFEST_NAME).read_text())["modules"]["mlp"]["variants"]
    assert manifest["q8"]["status"] == "failed" and "does not match the manifest" in manifest["q8"]["reason"]
    assert manifest["fp16"]["status"] == "ok" and sha256_file(folder / "mlp_q8.onnx") == tampered
    kit.assert_one_line_error(outcome, 1, "mlp q8: failed", "does not match the manifest")


def test_sha256_mismatch_in_process_never_loads_the_file(built, tmp_path, loads):
    folder = tmp_path / "out"
    shutil.copytree(built / "out", folder)
    _flip_last_byte(folder / "mlp_q8.onnx")
    outcome = kit.cli("verify", folder, "--latency-runs", "0")
    text = " ".join(outcome.stderr.split())
    assert outcome.code == 1 and "Traceback" not in text and text.count("error: ") == 1, text
    assert "does not match the manifest" in text and "mlp q8: failed" in text
    assert not any(path.endswith("mlp_q8.onnx") for path in loads), loads


def test_sha256_mismatch_is_refused_by_the_runtime_and_by_a_rerun(built, tmp_path):
    from onnxdtype.runtime import Config

    folder = tmp_path / "out"
    shutil.copytree(built / "out", folder)
    _flip_last_byte(folder / "mlp_q8.onnx")
    before = kit.snapshot(folder)
    for config in (Config.from_dir(folder, dtype="q8"), Config.from_dir(folder, dtype="q8", missing="fallback"),
                   Config.from_dir(folder, dtype="q8", missing="build"), Config.from_file(folder / "mlp_q8.onnx")):
        with pytest.raises(OnnxDtypeError, match="mlp_q8.onnx: sha256 differs from onnxdtype.json"):
            config.commit()
    kit.assert_one_line_error(quantize_cli(built / "src" / "mlp.onnx", folder, "-d", "q8"), 2,
                              "mlp_q8.onnx: exists and is not a verified onnxdtype output; use --force")
    assert kit.snapshot(folder) == before


@pytest.fixture
def external_built(tmp_path, monkeypatch) -> Path:
    """fp16 of mlp written with external data (the >2 GB path, forced by a low threshold)."""
    from onnxdtype import model

    monkeypatch.setattr(model, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = tmp_path / "ext"
    quantize(tinymodels.save(tinymodels.mlp(), tmp_path / "src" / "mlp.onnx"), "fp16", out, workers=1, latency_runs=0)
    assert (out / "mlp_fp16.onnx.data").exists()
    monkeypatch.undo()
    return out


def test_external_data_variant_is_complete_and_listed(external_built):
    state = kit.check_folder(external_built)
    assert state.listed == {"mlp.onnx": "base", "mlp_fp16.onnx": "ok"}
    from onnxdtype.runtime import Config

    assert Config.from_dir(external_built, dtype="fp16").commit()["mlp"].file.name == "mlp_fp16.onnx"


def test_tampered_external_data_is_refused(external_built):
    from onnxdtype.runtime import Config

    _flip_last_byte(external_built / "mlp_fp16.onnx.data")
    with pytest.raises(OnnxDtypeError, match="sha256"):
        Config.from_dir(external_built, dtype="fp16").commit()


def test_the_over_2gb_path_external_data_input_builds_verified_variants(tmp_path, monkeypatch):
    """What a >2 GB model goes through (weights in external data on the way in and out), forced on a tiny model by
    a low threshold: the base copy must not strip the weights from the in-memory model (it did: every later
    step then saw references to a data file relative to nowhere), and each variant's .data keeps its name."""
    import onnxdtype.model as model_module

    monkeypatch.setattr(model_module, "EXTERNAL_DATA_THRESHOLD", 1000)
    source = kit.save_external(tinymodels.mlp(), tmp_path / "in" / "mlp.onnx")
    out = tmp_path / "out"
    result = quantize(source, "fp16,q8,q4", out, workers=1, latency_runs=0)
    assert {r.dtype: r.status for r in result.results} == {"fp16": "ok", "q8": "ok", "q4": "ok"}
    assert {p.name for p in out.glob("*.data")} == {"mlp.onnx.data", "mlp_fp16.onnx.data", "mlp_q8.onnx.data",
                                                    "mlp_q4.onnx.data"}
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in out.glob("*.data"))  # readable on shared folders
    kit.check_folder(out)


def test_write_model_leaves_the_callers_model_whole(tmp_path, monkeypatch):
    import onnxdtype.model as model_module

    monkeypatch.setattr(model_module, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = tinymodels.mlp()
    before = [(t.name, t.raw_data) for t in model.graph.initializer]
    model_module.write_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").exists()
    assert [(t.name, t.raw_data) for t in model.graph.initializer] == before
    assert not any(t.external_data or t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
