import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tinymodels

from onnxdtype.model import op_counts
from onnxdtype.normalize import normalize
from onnxdtype.recipes import NotApplicable, blockwise, bnb4


def build(recipe, model: onnx.ModelProto, **options):
    return recipe.build(normalize(model, recipe.PASSES)[0], recipe.Options(**options))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("recipe, op", [(blockwise, "MatMulNBits"), (bnb4, "MatMulBnb4")])
def test_matmuls_become_4bit_and_stay_close(recipe, op):
    variant = build(recipe, tinymodels.mlp())
    assert op_counts(variant.model)[op] == 2 and op_counts(variant.model)["MatMul"] == 0
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    ref = ort.InferenceSession(tinymodels.mlp().SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(variant.model.SerializeToString()).run(None, {"x": x})[0]
    assert cosine(ref, got) > 0.98


def test_q4_options_are_recorded_and_used():
    variant = build(blockwise, tinymodels.mlp(), block_size=16, symmetric=False, accuracy_level=4)
    node = next(n for n in variant.model.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["block_size"] == 16 and attrs["accuracy_level"] == 4
    assert len(node.input) >= 4 and node.input[3]  # asymmetric: zero points present
    assert variant.params["block_size"] == 16 and variant.params["symmetric"] is False


def test_bnb4_fp4_codebook():
    variant = build(bnb4, tinymodels.mlp(), quant_type="fp4")
    node = next(n for n in variant.model.graph.node if n.op_type == "MatMulBnb4")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["quant_type"] == 0


@pytest.mark.parametrize("recipe", [blockwise, bnb4])
def test_gemm_is_quantized_after_rewrite(recipe):
    assert op_counts(build(recipe, tinymodels.gemm()).model)["Gemm"] == 0


@pytest.mark.parametrize("recipe", [blockwise, bnb4])
def test_conv_only_model_is_not_applicable(recipe):
    result = build(recipe, tinymodels.conv())
    assert isinstance(result, NotApplicable) and "no MatMul with a constant 2-D weight" in result.reason


def test_matmul_inside_if_branch_is_quantized():
    variant = build(blockwise, tinymodels.if_subgraph())
    assert op_counts(variant.model)["MatMulNBits"] == 2
    sess = ort.InferenceSession(variant.model.SerializeToString())
    assert sess.run(None, {"x": np.ones((2, 64), np.float32)})[0].shape == (2, 16)


def test_q4_can_keep_chosen_matmuls_at_8_bits():
    variant = build(blockwise, tinymodels.mlp(), nodes_in_8bit=["mm2"])
    bits = {n.name: onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in variant.model.graph.node if n.op_type == "MatMulNBits"}
    assert bits == {"mm1_Q4": 4, "mm2_Q8": 8}
    assert variant.params["nodes_in_8bit"] == ["mm2"] and variant.kept_in_float == []


@pytest.mark.parametrize("recipe, op", [(blockwise, "MatMulNBits"), (bnb4, "MatMulBnb4")])
def test_matmuls_inside_if_branches_become_4bit(recipe, op):
    variant = build(recipe, tinymodels.if_subgraph())
    assert op_counts(variant.model)[op] == 2 and op_counts(variant.model)["MatMul"] == 0  # counted in the branches
    x = np.ones((2, 64), np.float32)
    assert ort.InferenceSession(variant.model.SerializeToString()).run(None, {"x": x})[0].shape == (2, 16)
