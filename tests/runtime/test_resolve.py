"""Which file runs: naming conventions (onnxdtype, usls, transformers.js), explicit files, the manifest's word
(sha256, failed, not applicable, confined paths) and the three missing-variant policies, incl. concurrent builds."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import tinymodels

from onnxdtype import DType
from onnxdtype.build import quantize
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import MANIFEST_NAME
from onnxdtype.model import sha256_file
from onnxdtype.runtime import Config
from onnxdtype.runtime.resolve import fallback_chain


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder holding det.onnx (a tiny MLP) and nothing else."""
    tinymodels.save(tinymodels.mlp(), tmp_path / "models" / "det.onnx")
    return tmp_path / "models"


def copy_as(folder: Path, name: str) -> Path:
    """A variant file by name only: resolution goes by names and hashes, not by contents."""
    return Path(shutil.copyfile(folder / "det.onnx", folder / name))


def write_manifest(folder: Path, variants: dict) -> None:
    base = {"file": "det.onnx", "bytes": (folder / "det.onnx").stat().st_size, "sha256": sha256_file(folder / "det.onnx")}
    data = {"schema_version": 1, "modules": {"det": {"base": base, "variants": variants}}}
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def ok_entry(path: Path) -> dict:
    return {"status": "ok", "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@pytest.mark.parametrize("filename, dtype", [
    ("det_fp16.onnx", "fp16"), ("det-fp16.onnx", "fp16"), ("det.fp16.onnx", "fp16"),
    ("det_q8.onnx", "q8"), ("det-q4f16.onnx", "q4f16"), ("det.bnb4.onnx", "bnb4"), ("det_s8u8.onnx", "s8u8"),
    ("det_quantized.onnx", "q8"),
])
def test_every_naming_convention_resolves(folder, filename, dtype):
    copy_as(folder, filename)
    resolved = Config.from_dir(folder, dtype=dtype)["det"]
    assert (resolved.file, resolved.dtype, resolved.how) == (folder / filename, DType(dtype), "name")
    assert Config.from_dir(folder).modules == ["det"]  # a variant is never a module of its own


def test_onnxdtype_name_comes_before_usls_names(folder):
    for name in ("det.fp16.onnx", "det-fp16.onnx", "det_fp16.onnx"):
        copy_as(folder, name)
    assert Config.from_dir(folder, dtype="fp16")["det"].file.name == "det_fp16.onnx"


def test_transformers_js_layout_under_onnx(tmp_path):
    onnx_dir = tmp_path / "repo" / "onnx"
    tinymodels.save(tinymodels.mlp(), onnx_dir / "model.onnx")
    for name in ("model_quantized.onnx", "model_fp16.onnx", "model_uint8.onnx", "model_q4f16.onnx"):
        shutil.copyfile(onnx_dir / "model.onnx", onnx_dir / name)
    config = Config.from_dir(tmp_path / "repo")
    assert config.modules == ["model"]
    assert config["model"].file == onnx_dir / "model.onnx"
    assert config.with_dtype_all("q8")["model"].file == onnx_dir / "model_quantized.onnx"
    assert config.with_dtype_all("q4f16")["model"].file == onnx_dir / "model_q4f16.onnx"


def test_modules_come_from_bases_manifest_and_variant_only_stems(tmp_path):
    for name in ("visual.onnx", "textual.onnx", "textual_fp16.onnx", "audio_q4.onnx"):
        tinymodels.save(tinymodels.mlp(), tmp_path / name)
    assert Config.from_dir(tmp_path).modules == ["audio", "textual", "visual"]
    with pytest.raises(OnnxDtypeError, match="audio: no fp32 variant"):
        Config.from_dir(tmp_path).commit()
    assert Config.from_dir(tmp_path, dtype="q4", modules={"textual": {"dtype": "fp16"}, "visual": {"dtype": "fp32"}}) \
        .commit()["audio"].file.name == "audio_q4.onnx"


def test_from_file_with_a_variant_name_makes_it_the_explicit_file(folder):
    copy_as(folder, "det_q8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = Config.from_file(folder / "det_q8.onnx")["model"]
    assert (resolved.file, resolved.dtype, resolved.how) == (folder / "det_q8.onnx", DType.Q8, "explicit")


def test_explicit_file_wins_and_warns_when_its_name_says_another_dtype(folder):
    copy_as(folder, "det_fp16.onnx")
    (folder / "mine").mkdir()
    copy_as(folder, "mine/custom.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = Config.from_dir(folder, dtype="fp16", modules={"det": {"file": "mine/custom.onnx"}})["det"]
    assert (resolved.file, resolved.how) == (folder / "mine" / "custom.onnx", "explicit")
    with pytest.warns(UserWarning, match="det: det_fp16.onnx looks like fp16, but dtype is q8"):
        resolved = Config.from_dir(folder, dtype="q8").with_det_file("det_fp16.onnx")["det"]
    assert (resolved.file, resolved.dtype) == (folder / "det_fp16.onnx", DType.Q8)
    with pytest.raises(OnnxDtypeError, match="det: file .*nothere.onnx does not exist"):
        Config.from_dir(folder).with_det_file("nothere.onnx").commit()


def test_missing_error_lists_every_path_tried_and_the_dtypes_there(folder):
    copy_as(folder, "det_fp16.onnx")
    with pytest.raises(OnnxDtypeError) as error:
        Config.from_dir(folder, dtype="q4").commit()
    assert str(error.value) == (
        f"det: no q4 variant; tried {folder / 'det_q4.onnx'}, {folder / 'det-q4.onnx'}, {folder / 'det.q4.onnx'}; "
        "available: fp32, fp16 (missing='fallback' follows q4 → fp32; missing='build' builds it)")


def test_fallback_chains_are_spec_s():
    chains = {d.value: [c.value for c in fallback_chain(d)] for d in DType}
    assert chains == {"fp32": [], "fp16": ["fp32"], "q8": ["fp32"], "int8": ["q8", "fp32"], "s8s8": ["q8", "fp32"],
                      "s8u8": ["q8", "fp32"], "u8u8": ["q8", "fp32"], "q4": ["fp32"],
                      "q4f16": ["q4", "fp16", "fp32"], "bnb4": ["q4", "fp32"]}


@pytest.mark.parametrize("present, asked, used", [
    ([], "fp16", "fp32"),
    (["fp16"], "q4f16", "fp16"),
    (["q4", "fp16"], "q4f16", "q4"),
    (["fp16"], "bnb4", "fp32"),  # bnb4 -> q4 -> fp32: fp16 is not on its chain
    (["q8"], "s8u8", "q8"),
    ([], "int8", "fp32"),
])
def test_missing_fallback_follows_the_chain_and_says_what_it_used(folder, present, asked, used):
    for dtype in present:
        copy_as(folder, f"det_{dtype}.onnx")
    with pytest.warns(UserWarning, match=f"det: no {asked} variant; using {used} instead \\(missing='fallback'\\)"):
        resolved = Config.from_dir(folder, dtype=asked, missing="fallback")["det"]
    assert (resolved.dtype, resolved.requested) == (DType(used), DType(asked))


def test_fallback_with_nothing_on_the_chain_is_an_error(tmp_path):
    tinymodels.save(tinymodels.mlp(), tmp_path / "det_fp16.onnx")
    with pytest.raises(OnnxDtypeError, match=r"det: no q8 variant, nor any of its fallbacks fp32; tried .*det_q8.onnx"):
        Config.from_dir(tmp_path, dtype="q8", missing="fallback").commit()


def test_missing_build_builds_beside_the_base_once(folder):
    resolved = Config.from_dir(folder, dtype="fp16", missing="build")["det"]
    assert (resolved.file, resolved.how) == (folder / "det_fp16.onnx", "built")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["modules"]["det"]["variants"]["fp16"]["sha256"] == sha256_file(resolved.file)
    ort.InferenceSession(str(resolved.file), providers=["CPUExecutionProvider"])
    again = Config.from_dir(folder, dtype="fp16", missing="build")["det"]
    assert (again.file, again.how) == (resolved.file, "manifest")


def test_missing_build_goes_to_the_cache_when_the_folder_is_read_only(folder, tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != folder and real_access(path, mode))
    cache = tmp_path / "cache"
    resolved = Config.from_dir(folder, dtype="q8", missing="build", cache_dir=cache)["det"]
    assert resolved.how == "built" and cache / "builds" in resolved.file.parents
    assert resolved.file.parent.name == f"det-{sha256_file(folder / 'det.onnx')[:16]}"
    assert not (folder / "det_q8.onnx").exists()
    found = Config.from_dir(folder, dtype="q8", cache_dir=cache)["det"]  # missing="error" finds it there too
    assert (found.file, found.how) == (resolved.file, "cache")


def test_missing_build_of_a_dtype_that_does_not_apply_says_why(tmp_path):
    tinymodels.save(tinymodels.conv(), tmp_path / "det.onnx")
    with pytest.raises(OnnxDtypeError, match=r"det: cannot build q4 \(missing='build'\): .*not applicable"):
        Config.from_dir(tmp_path, dtype="q4", missing="build").commit()


def test_sha_mismatch_is_refused_and_never_loaded(folder):
    quantize(folder / "det.onnx", ["fp16"], workers=1)
    with open(folder / "det_fp16.onnx", "ab") as handle:
        handle.write(b"\0")
    message = "det_fp16.onnx: sha256 differs from onnxdtype.json"
    for config in (Config.from_dir(folder, dtype="fp16"), Config.from_dir(folder, dtype="fp16", missing="fallback"),
                   Config.from_dir(folder, dtype="fp16").with_det_file("det_fp16.onnx")):
        with pytest.raises(OnnxDtypeError, match=message):
            config.commit()


def test_a_listed_file_found_by_another_name_is_checked_too(folder):
    """det-fp16.onnx (usls name) is what the manifest lists: its hash is checked though the lookup went by name."""
    good = copy_as(folder, "det-fp16.onnx")
    write_manifest(folder, {"q4": ok_entry(good) | {"sha256": "0" * 64}})
    with pytest.raises(OnnxDtypeError, match="det-fp16.onnx: sha256 differs"):
        Config.from_dir(folder, dtype="fp16").commit()


@pytest.mark.parametrize("path, message", [
    ("../outside.onnx", "leaves the folder"),
    ("/etc/passwd", "must be relative to the manifest's folder"),
])
def test_manifest_paths_leaving_the_folder_are_refused(folder, path, message):
    shutil.copyfile(folder / "det.onnx", folder.parent / "outside.onnx")
    write_manifest(folder, {"fp16": {"status": "ok", "file": path, "bytes": 1, "sha256": "0" * 64}})
    with pytest.raises(OnnxDtypeError, match=message):
        Config.from_dir(folder, dtype="fp16").commit()


def test_failed_variant_is_refused_unless_allowed(folder):
    copy_as(folder, "det_fp16.onnx")
    write_manifest(folder, {"fp16": {"status": "failed", "reason": "cosine 0.55 < 0.9999", "file": None}})
    with pytest.raises(OnnxDtypeError, match=r"det: fp16 is marked failed in onnxdtype.json \(cosine 0.55 < 0.9999\); "
                                             r"allow_failed=True loads a file of that name anyway; tried"):
        Config.from_dir(folder, dtype="fp16").commit()
    with pytest.raises(OnnxDtypeError, match="marked failed"):  # build does not retry what failed
        Config.from_dir(folder, dtype="fp16", missing="build").commit()
    with pytest.warns(UserWarning, match="fp16 is marked failed"):
        assert Config.from_dir(folder, dtype="fp16", allow_failed=True)["det"].file == folder / "det_fp16.onnx"
    with pytest.warns(UserWarning, match="using fp32 instead"):
        assert Config.from_dir(folder, dtype="fp16", missing="fallback")["det"].dtype is DType.FP32


def test_not_applicable_variant_is_reported_with_its_reason(folder):
    write_manifest(folder, {"q4": {"status": "not_applicable", "reason": "no MatMul", "file": None}})
    with pytest.raises(OnnxDtypeError, match="det: q4 is not applicable: no MatMul; tried"):
        Config.from_dir(folder, dtype="q4").commit()


CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import onnxdtype.build
    folder, me, other, counter = map(Path, sys.argv[1:5])
    real_quantize = onnxdtype.build.quantize
    def counting_quantize(*args, **kwargs):
        with open(counter, "a") as handle:
            handle.write("build\\n")
        time.sleep(0.5)  # keep the lock held long enough for the other process to queue on it
        return real_quantize(*args, **kwargs)
    onnxdtype.build.quantize = counting_quantize
    from onnxdtype.runtime import Config
    me.touch()
    while not other.exists():  # start together
        time.sleep(0.01)
    resolved = Config.from_dir(folder, dtype="fp16", missing="build")["det"]
    stat = resolved.file.stat()
    print(json.dumps({"how": resolved.how, "file": str(resolved.file), "inode": stat.st_ino,
                      "mtime": stat.st_mtime_ns}))
""")


def test_concurrent_on_demand_builds_build_once_and_both_get_the_file(folder, tmp_path):
    counter = tmp_path / "builds.txt"
    ready = [tmp_path / "ready-a", tmp_path / "ready-b"]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(me), str(other), str(counter)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for me, other in (ready, ready[::-1])]
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        answers.append(json.loads(out))
    assert counter.read_text().splitlines() == ["build"]
    assert sorted(a["how"] for a in answers) == ["built", "manifest"]
    assert len({(a["file"], a["inode"], a["mtime"]) for a in answers}) == 1  # one file, written once
    variant = Path(answers[0]["file"])
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["modules"]["det"]["variants"]["fp16"]["sha256"] == sha256_file(variant)
    ort.InferenceSession(str(variant), providers=["CPUExecutionProvider"])
