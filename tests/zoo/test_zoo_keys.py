"""Task keys change with what decides a variant's bytes or verdict, and only with that."""

from __future__ import annotations

import numpy as np
import zookit

from onnxdtype.zoo.keys import module_keys
from onnxdtype.zoo.spec import load_spec


def _keys(spec) -> dict[str, str]:
    model = load_spec(spec).models[0]
    return module_keys(model, model.modules[0], {})


def test_calibration_data_keys_the_static_dtypes_and_what_its_held_out_part_verifies(tmp_path):
    spec = zookit.tiny_zoo(tmp_path)
    before = _keys(spec)
    assert before == _keys(spec) and len(set(before.values())) == 3
    np.savez(tmp_path / "calib" / "0.npz", x=np.ones((4, 64), np.float32))
    after = _keys(spec)
    assert all(after[d] != before[d] for d in ("fp16", "q8", "s8u8"))  # no eval data: the held-out part judges all

    (tmp_path / "eval").mkdir()
    np.savez(tmp_path / "eval" / "0.npz", x=np.zeros((4, 64), np.float32))
    spec.write_text(zookit.TINY_SPEC.replace('calib = "calib"', 'calib = "calib"\neval = "eval"'))
    judged = _keys(spec)
    np.savez(tmp_path / "calib" / "0.npz", x=np.full((4, 64), 2, np.float32))
    again = _keys(spec)
    assert again["s8u8"] != judged["s8u8"] and again["fp16"] == judged["fp16"] and again["q8"] == judged["q8"]


def test_an_option_keys_only_its_dtype_and_the_base_keys_all(tmp_path):
    import tinymodels

    spec = zookit.tiny_zoo(tmp_path)
    before = _keys(spec)
    option = 'calib = "calib"\noptions = {q8 = {per_channel = false}}'
    spec.write_text(zookit.TINY_SPEC.replace('calib = "calib"', option))
    edited = _keys(spec)
    assert edited["q8"] != before["q8"] and edited["fp16"] == before["fp16"] and edited["s8u8"] == before["s8u8"]
    tinymodels.save(tinymodels.mlp(hidden=48), tmp_path / "models" / "mlp.onnx")
    assert not set(_keys(spec).values()) & set(edited.values())


def test_q4_keys_on_the_calibration_data_only_when_gptq_rounds_it(tmp_path):
    spec = zookit.tiny_zoo(tmp_path)
    with_eval = 'dtypes = ["q4"]\ncalib = "calib"\neval = "eval"'
    (tmp_path / "eval").mkdir()
    np.savez(tmp_path / "eval" / "0.npz", x=np.zeros((4, 64), np.float32))
    keys = {}
    for rounding in ("nearest", "gptq"):
        text = with_eval + f'\noptions = {{q4 = {{rounding = "{rounding}"}}}}'
        spec.write_text(zookit.TINY_SPEC.replace('dtypes = ["fp16", "q8", "s8u8"]\ncalib = "calib"', text))
        before = _keys(spec)["q4"]
        np.savez(tmp_path / "calib" / "0.npz", x=np.full((4, 64), 3 if rounding == "gptq" else 2, np.float32))
        keys[rounding] = (before, _keys(spec)["q4"])
    assert keys["nearest"][0] == keys["nearest"][1]  # nearest rounding never reads the calibration data
    assert keys["gptq"][0] != keys["gptq"][1]  # GPTQ rounds against it
