"""Property-based tests (hypothesis): whatever a user or a file throws at the parsers, the answer is a value or an
OnnxDtypeError, never another exception. DType names, the manifest reader and path confinement, the Config
setters, and the ONNX loading path on byte-mutated small models (load_model, then quantize).

Bounded for CI: ONNXDTYPE_FUZZ_EXAMPLES (default 60) examples per pure-Python property, a fifth of that (at
least 8) for the ONNX properties, derandomized (same examples every run), no deadline. A longer local run:

    ONNXDTYPE_FUZZ_EXAMPLES=5000 /tmp/venv/bin/pytest -q tests/reliability/test_fuzz.py -p no:randomly

(a few minutes; add ONNXDTYPE_FUZZ_RANDOM=1 for fresh random examples on each run instead of the fixed ones).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import tinymodels
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from onnxdtype.dtype import INFO, DType, parse_dtype, parse_dtype_list
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import MANIFEST_NAME, confined_path, read_manifest

EXAMPLES = int(os.environ.get("ONNXDTYPE_FUZZ_EXAMPLES", "60"))
RANDOM = bool(os.environ.get("ONNXDTYPE_FUZZ_RANDOM"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(FUZZ, max_examples=max(8, EXAMPLES // 5))

NAMES = sorted({n for info in INFO.values() for n in (info.name, *info.aliases)})
# Text near the real names: mixed case, padding, separators, lookalikes, plus anything at all.
name_like = st.one_of(
    st.sampled_from(NAMES + ["all", "ALL", "bf16", "fp8", "int4", "fp4", "q2"]),
    st.builds(lambda n, pad, upper: (" " * pad) + (n.upper() if upper else n) + (" " * pad),
              st.sampled_from(NAMES), st.integers(0, 2), st.booleans()),
    st.text(alphabet=string.ascii_letters + string.digits + " _-.,;:/\\\t", max_size=12),
    st.text(max_size=12),
)


# ------------------------------------------------------------------------------------------- dtypes
@FUZZ
@given(text=st.one_of(name_like, st.integers(), st.floats(), st.none(), st.binary(max_size=8)))
def test_parse_dtype_answers_a_dtype_or_one_line_error(text):
    try:
        dtype = parse_dtype(text)
    except OnnxDtypeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(dtype, DType)
    assert parse_dtype(dtype.value) is dtype and parse_dtype(str(text).upper()) is dtype


@FUZZ
@given(text=st.one_of(st.lists(name_like, max_size=5).map(",".join), st.lists(name_like, max_size=5), name_like))
def test_parse_dtype_list_answers_table_ordered_unique_dtypes_or_one_line_error(text):
    try:
        dtypes = parse_dtype_list(text)
    except OnnxDtypeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert DType.FP32 not in dtypes and len(set(dtypes)) == len(dtypes)
    if not dtypes:  # only fp32 asked for: the base itself, nothing to build
        items = text.split(",") if isinstance(text, str) else text
        assert {parse_dtype(i) for i in items if str(i).strip()} == {DType.FP32}
    order = list(DType)
    assert [order.index(d) for d in dtypes] == sorted(order.index(d) for d in dtypes)


# ------------------------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def playground(tmp_path_factory) -> Path:
    """A folder with a real model, a symlink out of it, a symlink to a folder outside, and a neighbour outside."""
    root = tmp_path_factory.mktemp("manifest-fuzz")
    folder = root / "out"
    tinymodels.save(tinymodels.mlp(), folder / "mlp.onnx")
    (root / "outside.onnx").write_bytes((folder / "mlp.onnx").read_bytes())
    (folder / "escape.onnx").symlink_to(root / "outside.onnx")
    (folder / "up").symlink_to(root)
    (folder / "sub").mkdir()
    return folder


path_text = st.one_of(
    st.sampled_from(["mlp.onnx", "escape.onnx", "up/outside.onnx", "../outside.onnx", "/etc/passwd", "sub/../mlp.onnx",
                     "sub/../../outside.onnx", ".", "..", "", "a\\b.onnx", "mlp.onnx\0", "~/x.onnx", "./mlp.onnx",
                     "sub//x.onnx", "C:/x.onnx", "x" * 300, "\u00e9.onnx"]),
    st.lists(st.sampled_from(["..", ".", "sub", "up", "mlp.onnx", "escape.onnx", "x"]), min_size=1, max_size=5
             ).map("/".join),
    st.text(max_size=20),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
any_json = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=12)
sha = st.one_of(st.just("0" * 64), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), any_json)
file_entry = st.fixed_dictionaries({"file": st.one_of(path_text, any_json), "sha256": sha,
                                    "bytes": st.one_of(st.integers(-1, 10**6), any_json)})
variant = st.fixed_dictionaries(
    {"status": st.one_of(st.sampled_from(["ok", "failed", "not_applicable", "kept", ""]), any_json)},
    optional={"file": st.one_of(path_text, st.none()), "sha256": sha, "bytes": st.integers(0, 10),
              "reason": st.text(max_size=10)})
module = st.fixed_dictionaries({}, optional={"base": st.one_of(file_entry, any_json),
                                             "variants": st.one_of(st.dictionaries(
                                                 st.one_of(st.sampled_from([d.value for d in DType] + ["FP16", "x"]),
                                                           st.text(max_size=5)),
                                                 st.one_of(variant, any_json), max_size=3), any_json)})
manifest_like = st.fixed_dictionaries(
    {"schema_version": st.one_of(st.just(1), any_json),
     "modules": st.one_of(st.dictionaries(st.sampled_from(["mlp", "det", ""]), st.one_of(module, any_json),
                                          max_size=2), any_json)})


def _read(folder: Path, content: bytes) -> dict | None:
    (folder / MANIFEST_NAME).write_bytes(content)
    try:
        return read_manifest(folder)
    except OnnxDtypeError as exc:
        assert "\n" not in str(exc)
        return None


def _assert_confined(folder: Path, data: dict) -> None:
    root = os.path.realpath(folder)
    for entry in data["modules"].values():
        files = [entry["base"]["file"]] + [v["file"] for v in entry.get("variants", {}).values() if v.get("file")]
        for file in files:
            real = os.path.realpath(os.path.join(root, file))
            assert os.path.commonpath([root, real]) == root, file


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), any_json.map(lambda j: json.dumps(j).encode())))
def test_read_manifest_on_any_bytes_or_json(playground, content):
    data = _read(playground, content)
    assert data is None or isinstance(data["modules"], dict)


@FUZZ
@given(data=manifest_like)
@example(data={"schema_version": 1, "modules": {"mlp": {"base": {"file": "up/outside.onnx", "sha256": "0" * 64,
                                                                 "bytes": 1}, "variants": {}}}})
@example(data={"schema_version": 1, "modules": {"mlp": {"base": {"file": "mlp.onnx", "sha256": "0" * 64, "bytes": 1},
                                                        "variants": {"q8": {"status": "ok", "file": "escape.onnx",
                                                                            "sha256": "0" * 64, "bytes": 1}}}}})
def test_read_manifest_on_manifest_shaped_data_confines_every_path(playground, data):
    read = _read(playground, json.dumps(data).encode())
    if read is not None:
        _assert_confined(playground, read)


@FUZZ
@given(relative=st.one_of(path_text, any_json))
def test_confined_path_never_escapes(playground, relative):
    try:
        resolved = confined_path(playground, relative, "fuzz")
    except OnnxDtypeError:
        return
    root = os.path.realpath(playground)
    assert os.path.commonpath([root, str(resolved)]) == root


@FUZZ
@given(data=manifest_like, dtype=st.sampled_from(["fp32", "fp16", "q8", "q4"]),
       missing=st.sampled_from(["error", "fallback"]))
def test_runtime_on_manifest_shaped_data_resolves_or_one_line_error(playground, data, dtype, missing):
    """Config reads the same manifests: a file it takes from the manifest is inside the folder (symlinks resolved)
    and matched its sha256; one found by name is in the folder by name (symlinks there are the user's, as in
    Hugging Face cache snapshots, and are followed)."""
    from onnxdtype.runtime import Config

    (playground / MANIFEST_NAME).write_text(json.dumps(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            committed = Config.from_dir(playground, dtype=dtype, missing=missing).commit()
    except OnnxDtypeError as exc:
        assert "\n" not in str(exc)
        return
    root = os.path.realpath(playground)
    for resolved in committed:
        if resolved.how == "manifest":
            assert os.path.commonpath([root, os.path.realpath(resolved.file)]) == root
        else:
            assert resolved.file.parent == playground


# ------------------------------------------------------------------------------------------- Config setters
@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("config-fuzz")
    for name in ("visual", "textual"):
        tinymodels.save(tinymodels.mlp(), folder / f"{name}.onnx")
    return folder


def _setting_names() -> list[str]:
    from onnxdtype.runtime.settings import SETTING_NAMES

    return list(SETTING_NAMES)


any_value = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2**40), st.floats(), st.text(max_size=12),
    st.sampled_from(["cpu", "cuda:1", "trt", "openvino:NPU", "coreml", "fp16", "q4f16", "build", "fallback", "all",
                     "HEURISTIC", "MLProgram", "cuda:-1", "cuda:x", "openvino:TPU", "tensorrt : 2", "\u0663"]),
    st.lists(st.integers(-1, 5), max_size=4).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=5), st.tuples(st.text(max_size=3), st.integers(-1, 3))),
                    st.one_of(st.integers(-1, 9), st.tuples(st.integers(-1, 9), st.integers(-1, 9),
                                                            st.integers(-1, 9)), st.text(max_size=3),
                              st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)), max_size=3),
    st.builds(Path, st.text(max_size=10)),
)


@FUZZ
@given(setting=st.one_of(st.sampled_from(_setting_names()), st.text(max_size=15)), value=any_value,
       module=st.one_of(st.none(), st.sampled_from(["visual", "textual"]), st.text(max_size=8)))
def test_config_with_setting_configures_or_one_line_error(clip, setting, value, module):
    from onnxdtype.runtime import Config
    from onnxdtype.runtime.settings import Settings

    base = Config.from_dir(clip)
    try:
        config = base.with_setting(setting, value, module=module)
    except OnnxDtypeError as exc:
        assert "\n" not in str(exc)
        return
    for name in ("visual", "textual"):
        assert isinstance(config.settings(name), Settings)
    assert base.settings("visual") == Config.from_dir(clip).settings("visual")  # the original is untouched


@FUZZ
@given(module=st.text(max_size=10), dtype=st.one_of(name_like, any_value), device=st.one_of(any_value, name_like))
def test_config_setter_forms_configure_or_one_line_error(clip, module, dtype, device):
    from onnxdtype.runtime import Config

    base = Config.from_dir(clip)
    calls = [lambda: base.with_dtype_all(dtype), lambda: base.with_module_dtype(module, dtype),
             lambda: base.with_device_all(device), lambda: base.with_module_device(module, device),
             lambda: Config.from_dir(clip, dtype=dtype, device=device), lambda: getattr(base, f"with_{module}_dtype")(dtype),
             lambda: Config.from_dir(clip, modules={module: {"dtype": dtype}})]
    for call in calls:
        try:
            call().settings("visual")
        except OnnxDtypeError as exc:
            assert "\n" not in str(exc)
        except AttributeError:  # with_<name>_dtype for a name that is no module and no setting: Python's own answer
            pass


# ------------------------------------------------------------------------------------------- ONNX loading path
SEED_MODEL = tinymodels.mlp(hidden=2)  # small weights: most mutations land in the graph's structure
GOOD = SEED_MODEL.SerializeToString()
OP_TYPE_BYTE = GOOD.index(b"MatMul") + 5  # "MatMul" -> "MatMuX": parses, but no such op
NODE_NAME_BYTE = GOOD.index(b"mm1") + 1  # "mm1" -> b"m\xe31": parses, but not UTF-8


mutations = st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255), st.sampled_from(["set", "cut",
                                                                                                    "insert"])),
                     min_size=1, max_size=6)


def mutate(edits: list[tuple[int, int, str]]) -> bytes:
    data = bytearray(GOOD)
    for position, value, kind in edits:
        position %= max(1, len(data))
        if kind == "set":
            data[position] = value
        elif kind == "cut":
            del data[position:position + 1 + value % 8]
        else:
            data[position:position] = bytes([value])
    return bytes(data)


@SLOW
@given(edits=mutations)
@example(edits=[(OP_TYPE_BYTE, ord("X"), "set")])
@example(edits=[(NODE_NAME_BYTE, 0xE3, "set")])  # found by this fuzz: a non-UTF-8 name broke onnxruntime and JSON
def test_load_model_on_mutated_bytes(edits):
    from onnxdtype.model import load_model

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(mutate(edits))
        try:
            model = load_model(path)
        except OnnxDtypeError as exc:
            assert "\n" not in str(exc)
            return
        assert isinstance(model, onnx.ModelProto) and len(model.graph.node) > 0


@SLOW
@given(edits=mutations)
@example(edits=[(OP_TYPE_BYTE, ord("X"), "set")])
def test_quantize_on_mutated_models(edits):
    """Only an OnnxDtypeError or a finished build; a finished build leaves a folder check_folder accepts."""
    import reliability_kit as kit

    from onnxdtype.build import quantize

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(mutate(edits))
        out = Path(folder) / "out"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize(path, "all", out, workers=1, latency_runs=0)
        except OnnxDtypeError as exc:
            assert "\n" not in str(exc)
            assert kit.names(out) == set()
            return
        kit.check_folder(out)


def test_the_seed_model_builds():
    """The fuzz seed itself is sound: the mutations start from a model that quantizes."""
    from onnxdtype.build import quantize

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(GOOD)
        result = quantize(path, "fp16,q8", Path(folder) / "out", workers=1, latency_runs=0)
        assert {r.status for r in result.results} == {"ok"}
    assert np.isfinite(onnx.numpy_helper.to_array(SEED_MODEL.graph.initializer[0])).all()
    shutil.rmtree(folder, ignore_errors=True)
