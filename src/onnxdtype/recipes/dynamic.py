"""q8: onnxruntime's quantize_dynamic over the graph and its subgraphs, Conv included (SPEC.md), with the weight
type chosen by the seed's rule and per-channel weights — for Conv too, which onnxruntime does not do.

uint8 weights when the graph (or a subgraph) has Conv, GroupQueryAttention or MultiHeadAttention:
int8-weight ConvInteger runs 4-12x slower than uint8 on Conv nets. Per-channel weights lift MiniLM's
cosine from 0.93 to 0.989. quantize_dynamic drops metadata_props; the build puts them back.

onnxruntime 1.32 quantizes ConvInteger weights per tensor whatever `per_channel` says (one scale for a depthwise
Conv whose channels differ 273x). Measured on PP-OCRv4 det over 12 held-out images: 16 of its 62 Convs alone push
the text map below cosine 0.99, and for 8 of the 10 worst the weight scale is the cause. So with per-channel
weights each ConvInteger is rewritten after the quantizer: symmetric weights per output channel (zero point 128
for uint8, 0 for int8, so ConvInteger keeps one zero point) and the per-channel scales moved into the float Mul
that already follows it. det: cosine 0.877 -> 0.980, binarized-map IoU 0.90 -> 0.95; rec: 6/18 -> 15/18 lines read
as fp32 reads them; cls 0.999. Conv nets still lose more in q8 than in the static dtypes, and ConvInteger ran
slower than fp32 on an AVX2 CPU (det 0.7x): verification and repair decide, `--no-q8-conv` leaves Conv float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxdtype.model import iter_graphs, iter_scoped_nodes, needs_external_data
from onnxdtype.ops import DYNAMIC_WEIGHT_INPUT, UINT8_WEIGHT_TRIGGERS
from onnxdtype.recipes.base import NotApplicable, Variant, choice, flag, names, same_options, with_nodes
from onnxdtype.weights import read_array, write_streaming

NAME = "dynamic"
PASSES = ("constants", "gemm", "opset13")
KIND = "quantize"
NEEDS_CALIBRATION = None
HIGHER_PRECISIONS = ("fp32",)
LAZY_WEIGHTS = True
WEIGHT_TYPES = ("auto", "int8", "uint8")


@dataclass
class Options:
    weight_type: str = "auto"  # auto | int8 | uint8
    per_channel: bool = True
    reduce_range: bool = False
    quantize_conv: bool = True
    nodes_to_exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice("q8 weight_type", self.weight_type, WEIGHT_TYPES)
        for name in ("per_channel", "reduce_range", "quantize_conv"):
            flag(f"q8 {name}", getattr(self, name))
        names("q8 nodes_to_exclude", self.nodes_to_exclude)


options_for = same_options  # every dtype of this family takes the same options


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
    if has_conv and not options.quantize_conv:
        return "no MatMul or Gather with a constant weight, and Conv is left float (--no-q8-conv)"
    return "no MatMul, Gather or Conv with a constant weight"


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    weight_type = weight_type_for(model, options)
    params = {"weight_type": weight_type, "per_channel": options.per_channel, "reduce_range": options.reduce_range,
              "op_types": op_types(options), "nodes_to_exclude": list(options.nodes_to_exclude),
              "quantizer": "onnxruntime.quantization.quantize_dynamic"}
    with TemporaryDirectory(prefix="onnxdtype-q8-") as tmp:
        # quantize_dynamic given a model deep-copies it, saves it with external data and loads it back: given that
        # file instead (its weights streamed from their files), this process holds no copy of its own beside
        # onnxruntime's (0.75 GiB model, q8 recipe peak 4.2x the model's size before)
        source, out = Path(tmp) / "source.onnx", Path(tmp) / "q8.onnx"
        write_streaming(model, source)
        quantize_dynamic(
            source, out,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            op_types_to_quantize=op_types(options),
            nodes_to_exclude=list(options.nodes_to_exclude),
            use_external_data_format=needs_external_data(model),
            extra_options={"EnableSubgraph": True},  # off by default: If/Loop bodies would stay float
        )
        quantized = onnx.load(str(out), load_external_data=True)
    notes = []
    if options.per_channel:
        rewritten = per_channel_conv_weights(model, quantized, 63 if options.reduce_range else 127)
        params["conv_weights"] = "per output channel, symmetric (onnxdtype rewrite)" if rewritten else None
        if rewritten:
            notes.append(f"{rewritten} ConvInteger weights per output channel (onnxruntime quantizes them per tensor)")
    return Variant(quantized, params, kept_in_float=list(options.nodes_to_exclude), notes=notes)


def per_channel_conv_weights(source: onnx.ModelProto, quantized: onnx.ModelProto, limit: int = 127) -> int:
    """Re-quantize each ConvInteger's weight per output channel from its float values in `source`, in place.

    quantize_dynamic names a Conv weight W's parts W_quantized, W_scale and W_zero_point and multiplies the
    ConvInteger output by x_scale * W_scale in float; a W_scale of shape [C, 1, ...] broadcasts over the output's
    channels, so only the weight, its scale and a symmetric zero point change (levels within ±`limit`: 63 under
    reduce_range). Returns how many weights changed."""
    floats = {t.name: t for g in iter_graphs(source.graph) for t in g.initializer}
    tensors = {t.name: t for g in iter_graphs(quantized.graph) for t in g.initializer}
    done: set[str] = set()
    for node in (n for g in iter_graphs(quantized.graph) for n in g.node if n.op_type == "ConvInteger"):
        name = node.input[1]
        base = name.removesuffix("_quantized")
        scale, zero = tensors.get(f"{base}_scale"), tensors.get(f"{base}_zero_point")
        if name in done or base not in floats or name not in tensors or scale is None or zero is None:
            continue
        weight = read_array(floats[base]).astype(np.float32)
        unsigned = tensors[name].data_type == onnx.TensorProto.UINT8
        amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        channel_scale = np.where(amax > 0, amax / limit, 1.0).astype(np.float32)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        offset = 128 if unsigned else 0
        values = np.clip(np.rint(weight / channel_scale.reshape(shape)), -limit, limit) + offset
        tensors[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8 if unsigned else np.int8), name))
        zero.CopyFrom(numpy_helper.from_array(np.array(offset, np.uint8 if unsigned else np.int8), zero.name))
        scale.CopyFrom(numpy_helper.from_array(channel_scale.reshape((-1,) + (1,) * (weight.ndim - 2)), scale.name))
        done.add(name)
    return len(done)
