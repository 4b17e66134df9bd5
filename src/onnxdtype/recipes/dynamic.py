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

quantize_dynamic loads the whole model it is given and held it about three times (q8 peak 3.07-3.28x the model,
bench/memory.py). It is given stand-ins instead: each weight it may quantize replaced by a tensor of the same rank
holding, for each index along its last axis, that channel's min and max. From these it computes the real weight's
parameters (per tensor: global min and max, for Gather and Conv; per channel along the last axis, for MatMul and
Attention), and each real weight is then quantized, one at a time, with its quantize_nparray and those parameters:
the whole model's variant byte for byte (tests/recipes/test_dynamic.py), at 1.33x (2.5 GiB, 211 s -> 100 s). LSTM's
and Gemm's weights, which its quantizers read in another layout, go to it as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX, quantize_nparray

from onnxdtype.model import iter_graphs, iter_scoped_nodes
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
# Ops whose quantization reads a weight in another layout than by its last axis: onnxruntime's LSTM quantizer
# reshapes and transposes W and R, and quantize_dynamic turns Gemm(transB=1) into MatMul over a transposed copy of B.
# Their weights go to onnxruntime as they are.
LAYOUT_CHANGING_OPS = frozenset({"LSTM", "Gemm"})
QUANTIZE_BLOCK = 1 << 22  # weight elements quantized at a time


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
    stand_in, real = with_stand_ins(model, options)
    with TemporaryDirectory(prefix="onnxdtype-q8-") as tmp:
        source, out = Path(tmp) / "source.onnx", Path(tmp) / "q8.onnx"
        write_streaming(stand_in, source)
        del stand_in  # onnxruntime loads its own copy
        quantize_dynamic(
            source, out,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            op_types_to_quantize=op_types(options),
            nodes_to_exclude=list(options.nodes_to_exclude),
            use_external_data_format=True,  # the weights stand-ins do not replace (LSTM's, Gemm's) may be large
            extra_options={"EnableSubgraph": True},  # off by default: If/Loop bodies would stay float
        )
        quantized = onnx.load(str(out), load_external_data=True)
    with_real_weights(quantized, real)
    notes = []
    if options.per_channel:
        rewritten = per_channel_conv_weights(model, quantized, 63 if options.reduce_range else 127)
        params["conv_weights"] = "per output channel, symmetric (onnxdtype rewrite)" if rewritten else None
        if rewritten:
            notes.append(f"{rewritten} ConvInteger weights per output channel (onnxruntime quantizes them per tensor)")
    return Variant(quantized, params, kept_in_float=list(options.nodes_to_exclude), notes=notes)


def channel_ranges(values: np.ndarray) -> np.ndarray:
    """A weight's stand-in: for each index along its last axis, that channel's min and max, shaped [1, ..., 1, 2, N]
    (the weight's rank). Its global range and its ranges per last-axis channel are the weight's own."""
    rows = values.reshape(-1, values.shape[-1])
    ranges = np.stack([rows.min(axis=0), rows.max(axis=0)])
    return ranges.reshape((1,) * (values.ndim - 2) + ranges.shape)


def stand_in_names(model: onnx.ModelProto, options: Options) -> set[str]:
    """The float initializers (rank 2 or more) that quantize_dynamic may quantize, inputs of the op types it is asked
    to quantize, and that a stand-in can replace: none read by LAYOUT_CHANGING_OPS, none named twice across
    subgraphs or declared as a graph input (its declared shape would contradict the stand-in's)."""
    quantizable = set(op_types(options)) - LAYOUT_CHANGING_OPS
    candidates: set[str] = set()
    kept: set[str] = set()
    seen: set[str] = set()
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.op_type in LAYOUT_CHANGING_OPS:
                kept.update(node.input)
            elif node.op_type in quantizable:
                candidates.update(node.input)
        kept.update(i.name for i in graph.input)
        for tensor in graph.initializer:
            if tensor.name in seen or tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) \
                    or len(tensor.dims) < 2 or 0 in tensor.dims:
                kept.add(tensor.name)
            seen.add(tensor.name)
    return (candidates & seen) - kept


def with_stand_ins(model: onnx.ModelProto, options: Options) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of `model` whose weights quantize_dynamic may quantize are stand-ins (channel_ranges), with the shapes
    onnx infers from the real weights as value_info, and those real weights by name (the tensors of `model`).

    onnxruntime infers shapes again on what it is given: where a stand-in's dims contradict the value_info, onnx's
    non-strict inference keeps what is there, so every tensor type and shape is the real model's."""
    names = stand_in_names(model, options)
    real = {t.name: t for g in iter_graphs(model.graph) for t in g.initializer if t.name in names}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in (t for g in iter_graphs(copy.graph) for t in g.initializer if t.name in names):
        dims_only = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                     data_location=onnx.TensorProto.EXTERNAL)
        dims_only.external_data.add(key="location", value="stand-in")  # never read: shape inference needs dims only
        tensor.CopyFrom(dims_only)
    stand_in = onnx.shape_inference.infer_shapes(copy)
    del copy
    for tensor in (t for g in iter_graphs(stand_in.graph) for t in g.initializer if t.name in names):
        tensor.CopyFrom(numpy_helper.from_array(channel_ranges(read_array(real[tensor.name])), tensor.name))
    return stand_in, real


def with_real_weights(quantized: onnx.ModelProto, real: dict[str, onnx.TensorProto]) -> None:
    """Give the model quantize_dynamic made from stand-ins the real weights, in place: each W it quantized
    (W_quantized, W_scale, W_zero_point) quantized from W's values with onnxruntime's own quantize_nparray and the
    scale and zero point it computed (per tensor, or per channel along the last axis), each W still read in float
    (a consumer left float) the real tensor again (a lazy one stays lazy)."""
    for graph in iter_graphs(quantized.graph):
        tensors = {t.name: t for t in graph.initializer}
        for name, weight in real.items():
            if name in tensors:
                tensors[name].CopyFrom(weight)
            packed = tensors.get(name + TENSOR_NAME_QUANT_SUFFIX)
            if packed is None:
                continue
            scale = numpy_helper.to_array(tensors[f"{name}_scale"])
            zero_point = numpy_helper.to_array(tensors[f"{name}_zero_point"])
            values = read_array(weight)
            rows = values.reshape(-1, values.shape[-1])
            levels = np.empty(rows.shape, helper.tensor_dtype_to_np_dtype(packed.data_type))
            step = max(1, QUANTIZE_BLOCK // rows.shape[1])
            for start in range(0, rows.shape[0], step):  # in blocks of rows: a few copies of a block, not the weight
                levels[start:start + step] = quantize_nparray(packed.data_type, rows[start:start + step], scale,
                                                              zero_point)
            del values, rows
            packed.CopyFrom(numpy_helper.from_array(levels.reshape(weight.dims), packed.name))


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
