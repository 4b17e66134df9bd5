"""bnb4: weight-only 4-bit with the NF4 (default) or FP4 codebook, via onnxruntime's MatMulBnb4Quantizer.

Like q4 it needs MatMul with a constant 2-D weight, so it shares the "gemm" pass and the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnxruntime.quantization.matmul_bnb4_quantizer import MatMulBnb4Quantizer

from onnxdtype.model import missing_constant_matmul
from onnxdtype.recipes.base import NotApplicable, Variant, choice, names, power_of_two, same_options, with_nodes
from onnxdtype.weights import weight_loading

NAME = "bnb4"
PASSES = ("constants", "gemm")
KIND = "quantize"
NEEDS_CALIBRATION = None
HIGHER_PRECISIONS = ("fp32",)
LAZY_WEIGHTS = True
CODEBOOKS = {"fp4": MatMulBnb4Quantizer.FP4, "nf4": MatMulBnb4Quantizer.NF4}


@dataclass
class Options:
    quant_type: str = "nf4"  # nf4 | fp4
    block_size: int = 64
    nodes_to_exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice("bnb4 quant_type", self.quant_type, CODEBOOKS)
        power_of_two("bnb4 block_size", self.block_size)
        names("bnb4 nodes_to_exclude", self.nodes_to_exclude)


options_for = same_options  # every dtype of this family takes the same options


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    return with_nodes(options, "nodes_to_exclude", nodes)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    return missing_constant_matmul(model, options.nodes_to_exclude)


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    quantizer = MatMulBnb4Quantizer(model, CODEBOOKS[options.quant_type], options.block_size,
                                    nodes_to_exclude=list(options.nodes_to_exclude))
    # its per-node method reads one weight: only that one is loaded (the model's weights may be lazy)
    quantizer._bnb4_matmul_node_weight = weight_loading(quantizer._bnb4_matmul_node_weight)
    quantizer.process()
    params = {"quant_type": options.quant_type, "block_size": options.block_size,
              "nodes_to_exclude": list(options.nodes_to_exclude),
              "quantizer": "onnxruntime.quantization.matmul_bnb4_quantizer.MatMulBnb4Quantizer"}
    return Variant(quantizer.model.model, params, kept_in_float=list(options.nodes_to_exclude))
