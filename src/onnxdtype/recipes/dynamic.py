"""q8: onnxruntime's quantize_dynamic, with the weight type chosen by SPEC.md's rule and per-channel weights.

uint8 weights when the graph (or a subgraph) has Conv, GroupQueryAttention or MultiHeadAttention:
int8-weight ConvInteger runs 4-12x slower than uint8 on Conv nets. Per-channel weights lift MiniLM's
cosine from 0.93 to 0.989. quantize_dynamic drops metadata_props; build.py puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxdtype.model import initializer_map, iter_graphs, needs_external_data
from onnxdtype.recipes import NotApplicable, Variant

NAME = "dynamic"
PASSES = ("constants", "gemm", "opset13")
UINT8_TRIGGER_OPS = frozenset({"Conv", "GroupQueryAttention", "MultiHeadAttention"})
WEIGHT_OPS = {"MatMul": 1, "Conv": 1, "Gather": 0}  # op -> index of the weight input quantize_dynamic needs constant


@dataclass
class Options:
    weight_type: str = "auto"  # auto | int8 | uint8
    per_channel: bool = True
    reduce_range: bool = False
    nodes_to_exclude: list[str] = field(default_factory=list)


def weight_type_for(model: onnx.ModelProto, options: Options) -> str:
    if options.weight_type != "auto":
        return options.weight_type
    ops = {n.op_type for g in iter_graphs(model.graph) for n in g.node}
    return "uint8" if ops & UINT8_TRIGGER_OPS else "int8"


def check(model: onnx.ModelProto, options: Options) -> str | None:
    for graph in iter_graphs(model.graph):
        inits = initializer_map(graph)
        for node in graph.node:
            index = WEIGHT_OPS.get(node.op_type)
            if index is not None and len(node.input) > index and node.input[index] in inits \
                    and node.name not in options.nodes_to_exclude:
                return None
    return "no MatMul, Conv or Gather with a constant weight"


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    weight_type = weight_type_for(model, options)
    params = {"weight_type": weight_type, "per_channel": options.per_channel, "reduce_range": options.reduce_range,
              "nodes_to_exclude": list(options.nodes_to_exclude), "quantizer": "onnxruntime.quantization.quantize_dynamic"}
    with TemporaryDirectory(prefix="onnxdtype-q8-") as tmp:
        out = Path(tmp) / "q8.onnx"
        quantize_dynamic(
            model, out,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            nodes_to_exclude=list(options.nodes_to_exclude),
            use_external_data_format=needs_external_data(model),
        )
        quantized = onnx.load(str(out), load_external_data=True)
    return Variant(quantized, params, kept_in_float=list(options.nodes_to_exclude))
