"""q8: onnxruntime's quantize_dynamic, with the weight type chosen by SPEC.md's rule and per-channel weights.

uint8 weights when the graph (or a subgraph) has Conv, GroupQueryAttention or MultiHeadAttention:
int8-weight ConvInteger runs 4-12x slower than uint8 on Conv nets. Per-channel weights lift MiniLM's
cosine from 0.93 to 0.989. quantize_dynamic drops metadata_props; build.py puts them back.

Conv is not quantized unless asked (`quantize_conv`): ConvInteger has per-tensor weights only, and one
quantized Conv alone cut PP-OCRv4 det's output cosine to 0.0 and rec's to 0.91 on real images (all
Convs: rec 0.74-0.98, det 0.0-0.95), while MatMul-only q8 kept rec at >= 0.999. Conv nets want the
static dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxdtype.model import iter_graphs, iter_scoped_nodes, needs_external_data
from onnxdtype.ops import DYNAMIC_WEIGHT_INPUT, UINT8_WEIGHT_TRIGGERS
from onnxdtype.recipes.base import NotApplicable, Variant, choice, flag, names, with_nodes

NAME = "dynamic"
PASSES = ("constants", "gemm", "opset13")
KIND = "quantize"
NEEDS_CALIBRATION = None
HIGHER_PRECISIONS = ("fp32",)
WEIGHT_TYPES = ("auto", "int8", "uint8")


@dataclass
class Options:
    weight_type: str = "auto"  # auto | int8 | uint8
    per_channel: bool = True
    reduce_range: bool = False
    quantize_conv: bool = False
    nodes_to_exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice("q8 weight_type", self.weight_type, WEIGHT_TYPES)
        for name in ("per_channel", "reduce_range", "quantize_conv"):
            flag(f"q8 {name}", getattr(self, name))
        names("q8 nodes_to_exclude", self.nodes_to_exclude)


def options_for(dtype_name: str, options: Options) -> Options:
    return options


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    return with_nodes(options, "nodes_to_exclude", nodes)


def weight_type_for(model: onnx.ModelProto, options: Options) -> str:
    if options.weight_type != "auto":
        return options.weight_type
    ops = {n.op_type for g in iter_graphs(model.graph) for n in g.node}
    return "uint8" if ops & UINT8_WEIGHT_TRIGGERS else "int8"


def weight_inputs(options: Options) -> dict[str, int]:
    """The op types quantize_dynamic is asked to quantize, with the input that must be a constant weight."""
    return {op: index for op, index in DYNAMIC_WEIGHT_INPUT.items() if op != "Conv" or options.quantize_conv}


def op_types(options: Options) -> list[str]:
    return list(weight_inputs(options))


def check(model: onnx.ModelProto, options: Options) -> str | None:
    weight_ops = weight_inputs(options)
    has_conv = False
    for node, inits in iter_scoped_nodes(model.graph):
        has_conv |= node.op_type == "Conv"
        index = weight_ops.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in inits \
                and node.name not in options.nodes_to_exclude:
            return None
    if has_conv:
        return "no MatMul or Gather with a constant weight, and dynamic Conv quantization is off (--q8-conv) " \
               "because it loses most of the accuracy; use a static dtype for Conv nets"
    return "no MatMul, Gather or Conv with a constant weight"


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    weight_type = weight_type_for(model, options)
    params = {"weight_type": weight_type, "per_channel": options.per_channel, "reduce_range": options.reduce_range,
              "op_types": op_types(options),
              "nodes_to_exclude": list(options.nodes_to_exclude), "quantizer": "onnxruntime.quantization.quantize_dynamic"}
    with TemporaryDirectory(prefix="onnxdtype-q8-") as tmp:
        out = Path(tmp) / "q8.onnx"
        quantize_dynamic(
            model, out,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            op_types_to_quantize=op_types(options),
            nodes_to_exclude=list(options.nodes_to_exclude),
            use_external_data_format=needs_external_data(model),
            extra_options={"EnableSubgraph": True},  # off by default: If/Loop bodies would stay float
        )
        quantized = onnx.load(str(out), load_external_data=True)
    return Variant(quantized, params, kept_in_float=list(options.nodes_to_exclude))
