"""The zoo spec: defaults the entries override, paths relative to the spec, and a mistake is one error naming the
entry and the key, raised before anything is written."""

from __future__ import annotations

import pytest
import zookit

from onnxdtype.dtype import DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.zoo import build_zoo, load_spec


def test_entries_override_the_defaults_and_paths_are_relative_to_the_spec(tmp_path):
    spec = load_spec(zookit.tiny_zoo(tmp_path / "here"))
    mlp, pair = spec.models
    assert (mlp.name, pair.name) == ("mlp", "pair")
    assert mlp.dtypes == [DType.FP16, DType.Q8, DType.S8U8] and pair.dtypes == [DType.FP16, DType.Q8]
    assert mlp.calib.data == tmp_path / "here" / "calib" and pair.calib is None
    assert [m.name for m in pair.modules] == ["conv", "head"]
    assert mlp.latency_runs == pair.latency_runs == 2


def test_a_dict_spec_reads_like_the_toml_one(tmp_path):
    import tomllib

    path = zookit.tiny_zoo(tmp_path)
    from_dict = load_spec(tomllib.loads(path.read_text()), root=tmp_path)
    from_toml = load_spec(path)
    assert [(m.name, m.path, m.dtypes) for m in from_dict.models] == [(m.name, m.path, m.dtypes)
                                                                     for m in from_toml.models]


BAD = [
    ('dtype = ["fp16"]', "models[0] (mlp): unknown key 'dtype'"),
    ('dtypes = ["fp17"]', "models[0] (mlp): key 'dtypes'"),
    ('dtypes = ["s8u8"]', "models[0] (mlp): key 'dtypes': s8u8 need calibration data"),
    ('options = {q4 = {block_size = 48}}', "models[0] (mlp): key 'options': q4 block_size must be a power of two"),
    ('tolerances = {q8 = 2.0}', "models[0] (mlp): key 'tolerances'"),
    ('tasks = {"*" = "nonsense"}', "models[0] (mlp): key 'tasks'"),
    ('latency_runs = -1', "models[0] (mlp): key 'latency_runs'"),
    ('calib = "nowhere"', "models[0] (mlp): key 'calib'"),
    ('calib_method = "median"', "models[0] (mlp): key 'calib_method'"),
]


@pytest.mark.parametrize("line, message", BAD)
def test_a_bad_entry_is_one_error_naming_entry_and_key_and_writes_nothing(tmp_path, line, message):
    spec = zookit.tiny_zoo(tmp_path, f'[[models]]\nname = "mlp"\npath = "models/mlp.onnx"\n{line}\n')
    with pytest.raises(OnnxDtypeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build_zoo(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_second_model_of_a_name_and_a_missing_path_name_their_entry(tmp_path):
    spec = zookit.tiny_zoo(tmp_path, '[[models]]\npath = "models/mlp.onnx"\n[[models]]\npath = "models/pair"\n'
                                     'name = "mlp"\n')
    with pytest.raises(OnnxDtypeError, match=r"models\[1\] \(mlp\): key 'name': 'mlp' is used twice"):
        load_spec(spec)
    spec.write_text('[[models]]\npath = "models/gone.onnx"\n')
    with pytest.raises(OnnxDtypeError, match=r"models\[0\]: key 'path': .*gone.onnx: no such file"):
        load_spec(spec)
    spec.write_text('[defaults]\nverify = "yes"\n[[models]]\npath = "models/mlp.onnx"\n')
    with pytest.raises(OnnxDtypeError, match=r"models\[0\]: key 'verify': must be true or false"):
        load_spec(spec)
    spec.write_text('[[models]\npath = 1\n')
    with pytest.raises(OnnxDtypeError, match="zoo.toml: not valid TOML"):
        load_spec(spec)


def test_a_mistake_found_while_planning_names_the_model_and_leaves_no_folder(tmp_path):
    spec = zookit.tiny_zoo(tmp_path, zookit.TINY_SPEC + 'fixed_inputs = {nothing = 1}\n')
    with pytest.raises(OnnxDtypeError, match="pair: --fix-input nothing: no module has such an input"):
        build_zoo(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
