"""Lazy weights (weights.py): a model with external data built from its files gives the variant the whole in-memory
model gives, tensor for tensor, and writing one never reads or changes more than it must."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels
from tinymodels import external

from onnxdtype.model import write_model
from onnxdtype.normalize import normalize
from onnxdtype.recipes import blockwise, bnb4, dynamic, float16
from onnxdtype.verify.evaluate import Criteria, EvalData, Reference, evaluate, session
from onnxdtype.weights import INLINE_BELOW, all_tensors, has_lazy, is_lazy, read_array, to_float16


def values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: read_array(t) for g in [model.graph] for t in g.initializer}


def test_a_lazy_model_holds_no_weight_bytes_and_reads_each_on_demand(tmp_path):
    model = tinymodels.mlp()
    lazy = external(model, tmp_path / "m.onnx")
    small = {t.name for t in model.graph.initializer if len(t.raw_data) < INLINE_BELOW}
    assert small and small != {t.name for t in model.graph.initializer}
    assert all(is_lazy(t) and not t.raw_data for t in lazy.graph.initializer if t.name not in small)
    assert not any(is_lazy(t) for t in lazy.graph.initializer if t.name in small)  # shapes, biases: in memory
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {k: v.tolist() for k, v in values(lazy).items()} == {k: v.tolist() for k, v in expected.items()}


def test_writing_a_lazy_model_streams_its_weights_and_leaves_it_lazy(tmp_path):
    lazy = external(tinymodels.mlp(), tmp_path / "in" / "m.onnx")
    before = lazy.SerializeToString()
    write_model(lazy, tmp_path / "out.onnx")
    assert lazy.SerializeToString() == before
    written = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    assert not has_lazy(written)  # references to its own .data only, readable by anyone
    assert all(e.key != "basepath" for t in all_tensors(written) for e in t.external_data)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref = ort.InferenceSession(tinymodels.mlp().SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(ort.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x})[0], ref)


def test_writing_over_the_data_a_model_reads_is_refused(tmp_path):
    lazy = external(tinymodels.mlp(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="would overwrite"):
        write_model(lazy, tmp_path / "m.onnx")


@pytest.mark.parametrize("recipe, options", [
    (blockwise, {}), (blockwise, {"nodes_in_8bit": ["mm2"]}), (bnb4, {}), (float16, {}), (dynamic, {}),
    (float16, {"block_nodes": ["mm1"]}),
])
def test_a_recipe_on_lazy_weights_gives_the_in_memory_variant(tmp_path, recipe, options):
    model = normalize(tinymodels.mlp(), recipe.PASSES)[0]
    lazy = external(model, tmp_path / "m.onnx")
    in_memory = recipe.build(model, recipe.Options(**options)).model
    streamed = recipe.build(lazy, recipe.Options(**options)).model
    assert [n.op_type for n in streamed.graph.node] == [n.op_type for n in in_memory.graph.node]
    write_model(streamed, tmp_path / "v.onnx")
    written = onnx.load(str(tmp_path / "v.onnx"))
    got, want = values(written), values(in_memory)
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name


def test_a_recorded_reference_judges_as_the_fp32_session_does(tmp_path):
    base, variant = tinymodels.mlp(), float16.build(tinymodels.mlp(), float16.Options()).model
    rng = np.random.default_rng(1)
    data = EvalData([{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(3)], "3 samples", False)
    criteria = Criteria(0.9999)
    direct = evaluate(session(base), session(variant), data.feeds, criteria)
    replayed = evaluate(Reference(session(base), data, criteria), session(variant), data.feeds, criteria)
    assert replayed == direct


def test_the_streamed_fp16_cast_is_onnxruntimes():
    from onnxruntime.transformers.float16 import convert_np_to_float16

    edges = [0.0, -0.0, 1e-9, -1e-9, 5.96e-08, 6e-08, -3e-08, 65504.0, 65520.0, -7e4, 1e38, np.inf, -np.inf, np.nan]
    values = np.concatenate([np.array(edges, np.float32),
                             np.random.default_rng(2).standard_normal(10_000).astype(np.float32) * 1e3])
    assert to_float16(values).tobytes() == convert_np_to_float16(values).tobytes()
