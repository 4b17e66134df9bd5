"""fp16: onnxruntime's own float16 converter, plus the guards it lacks.

onnxruntime.transformers.float16 loads where onnxconverter-common's converter fails (Cast-to-float
in converted regions, If/Loop subgraphs). What it still gets wrong is silent: initializers outside
the fp16 range are clamped (PP-OCRv4 det has BatchNormalization variances of 1e7 -> cosine 0.55),
so nodes that consume such initializers stay fp32 here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnxruntime.transformers import float16 as ort_float16

from onnxdtype.model import iter_graphs, too_large_to_serialize
from onnxdtype.ops import FP16_MAX
from onnxdtype.recipes.base import NotApplicable, Variant, flag, names, same_options, with_nodes
from onnxdtype.weights import is_lazy, read_array, stored_as

NAME = "float16"
PASSES = ("constants",)
KIND = "float"
NEEDS_CALIBRATION = None
HIGHER_PRECISIONS = ("fp32",)
LAZY_WEIGHTS = True
# Ops kept in fp32 on top of onnxruntime's DEFAULT_OP_BLOCK_LIST: no fp16 kernel or unsafe range.
EXTRA_BLOCKED_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "Multinomial", "NonZero")


@dataclass
class Options:
    keep_io_types: bool = True  # graph inputs/outputs stay fp32 (--fp16-io turns this off)
    block_ops: tuple[str, ...] = ()  # extra op types kept in fp32
    block_nodes: list[str] = field(default_factory=list)  # node names kept in fp32 (repair adds here)

    def __post_init__(self) -> None:
        flag("fp16 keep_io_types", self.keep_io_types)
        names("fp16 block_ops", self.block_ops)
        names("fp16 block_nodes", self.block_nodes)


options_for = same_options  # every dtype of this family takes the same options


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    return with_nodes(options, "block_nodes", nodes)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    for graph in iter_graphs(model.graph):
        if any(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer):
            return None
        if any(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in graph.input):
            return None
    return "no float32 tensors to convert"


def out_of_range_consumers(model: onnx.ModelProto) -> list[str]:
    """Names of nodes fed by a float initializer with a finite value beyond the fp16 range."""
    found: list[str] = []
    for graph in iter_graphs(model.graph):
        too_big = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and _exceeds_fp16(t)}
        found += [n.name for n in graph.node if too_big.intersection(n.input)]
    return found


def _exceeds_fp16(tensor: onnx.TensorProto) -> bool:
    values = np.frombuffer(tensor.raw_data, np.float32) if tensor.raw_data else read_array(tensor)
    if values.size == 0 or (values.max() <= FP16_MAX and values.min() >= -FP16_MAX):
        return False  # the common case, decided without copies
    finite = values[np.isfinite(values)]
    return bool(finite.size) and float(np.abs(finite).max()) > FP16_MAX


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    block_ops = sorted({*ort_float16.DEFAULT_OP_BLOCK_LIST, *EXTRA_BLOCKED_OPS, *options.block_ops})
    converted, kept, notes = convert(model, options.keep_io_types, options.block_nodes, tuple(options.block_ops))
    params = {"keep_io_types": options.keep_io_types, "op_block_list": block_ops, "converter": "onnxruntime.transformers.float16"}
    return Variant(converted, params, kept_in_float=kept, notes=notes)


def convert(model: onnx.ModelProto, keep_io_types: bool = True, keep_fp32: list[str] | None = None,
            block_ops: tuple[str, ...] = (), sort: bool = False) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """onnxruntime's converter with this recipe's guards: nodes fed by initializers beyond the fp16 range and the
    nodes in `keep_fp32` stay fp32, fp32 -> fp16 -> fp32 round trips between kept nodes are removed, and (`sort`)
    nodes come out in topological order (the converter appends its Casts; TensorRT's parser reads in order).
    Returns the model, the nodes kept fp32 and notes saying what the guards did."""
    keep_fp32 = list(keep_fp32 or [])
    guarded = [n for n in out_of_range_consumers(model) if n not in keep_fp32]
    block_nodes = [*keep_fp32, *guarded]
    block_ops = sorted({*ort_float16.DEFAULT_OP_BLOCK_LIST, *EXTRA_BLOCKED_OPS, *block_ops})
    if block_nodes or any(n.op_type in block_ops for g in iter_graphs(model.graph) for n in g.node):
        model = _with_contrib_op_types(model)  # only fp32-kept nodes need the converter to know types
    if not too_large_to_serialize(model):  # what the converter does first, done before the stand-ins (their shapes)
        model = onnx.shape_inference.infer_shapes(model)
    with lazy_weights_stood_in(model):
        converted = ort_float16.convert_float_to_float16(
            model, keep_io_types=keep_io_types, op_block_list=block_ops, node_block_list=block_nodes,
            disable_shape_infer=True)
    removed = skip_fp16_round_trips(converted)
    if sort:
        for graph in iter_graphs(converted.graph):
            _sort_topologically(graph)
    notes = [f"{len(guarded)} nodes kept fp32: initializers beyond the fp16 range"] if guarded else []
    if removed:
        notes.append(f"{removed} fp32->fp16->fp32 cast round trips between fp32 nodes removed")
    return converted, block_nodes, notes


@contextmanager
def lazy_weights_stood_in(model: onnx.ModelProto) -> Iterator[None]:
    """Inside the block each lazy float initializer is an empty stand-in of its name, so onnxruntime's converter
    (which converts the values it holds and reads each converted initializer whole for a value_info it uses by
    name only) reads nothing; after it the lazy tensors are back, typed as the converter left their stand-ins and
    converted to fp16 when written (weights.stored_as). The model must be converted in place (the converter's shape
    inference off: it would return a new model, inferred from the stand-ins' empty shapes)."""
    real: dict[tuple[int, str], onnx.TensorProto] = {}
    for index, graph in enumerate(iter_graphs(model.graph)):
        for tensor in graph.initializer:
            if is_lazy(tensor) and tensor.data_type == onnx.TensorProto.FLOAT:
                kept = real[index, tensor.name] = onnx.TensorProto()
                kept.CopyFrom(tensor)
                tensor.Clear()
                tensor.name, tensor.data_type = kept.name, onnx.TensorProto.FLOAT
                tensor.dims.append(0)
    try:
        yield
    finally:
        for index, graph in enumerate(iter_graphs(model.graph)):
            for tensor in graph.initializer:
                if (index, tensor.name) in real:
                    converted_type = tensor.data_type
                    tensor.CopyFrom(real[index, tensor.name])
                    tensor.data_type = converted_type
                    stored_as(tensor, onnx.TensorProto.FLOAT)


def _with_contrib_op_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the converter the tensor types below contrib ops (MatMulNBits after q4), which onnx's shape
    inference cannot see: without them it left a kept-fp32 MatMul fed by an fp16 tensor in PP-OCRv4 rec's
    q4f16 ("Type parameter (T) bound to different types"). onnxruntime's symbolic inference knows them."""
    if too_large_to_serialize(model) or all(n.domain in ("", "ai.onnx")
                                            for g in iter_graphs(model.graph) for n in g.node):
        return model
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it gives up on some graphs; the converter then works as before
        return model


def skip_fp16_round_trips(model: onnx.ModelProto) -> int:
    """Rewire Cast(to=fp32)(Cast(to=fp16)(t)) to t when t is fp32.

    The converter routes every tensor between two fp32-kept nodes (and from an fp32 graph input into
    one) through an fp16 Cast pair, so a kept node still receives fp16-rounded values: keeping
    `(x + 1000.0123) - 1000` in fp32 still returned 0. Consumers of the pair get the fp32 tensor instead.
    """
    if too_large_to_serialize(model):
        return 0  # shape inference (for the types) refuses > 2 GiB protos; the converter's casts stay
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    for graph in iter_graphs(bare.graph):
        del graph.value_info[:]  # the converter leaves stale fp32 entries: infer every type afresh from the nodes
        _sort_topologically(graph)  # the converter appends its Casts at the end; inference reads nodes in order
    inferred = onnx.shape_inference.infer_shapes(bare)
    float32 = {v.name for g in iter_graphs(inferred.graph) for v in [*g.value_info, *g.input, *g.output]
               if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    float32 |= {t.name for g in iter_graphs(model.graph) for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT}
    rewired = 0
    for graph in iter_graphs(model.graph):
        to_fp16 = {n.output[0]: n.input[0] for n in graph.node
                   if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT16 and n.input[0] in float32}
        fp32_sources = {n.output[0]: to_fp16[n.input[0]] for n in graph.node
                        if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT and n.input[0] in to_fp16}
        if not fp32_sources:
            continue
        graph_outputs = {o.name for o in graph.output}
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in fp32_sources:
                    node.input[i] = fp32_sources[name]
                    rewired += 1
        used = {i for g in iter_graphs(graph) for n in g.node for i in n.input} | graph_outputs
        kept = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in used]
        while len(kept) != len(graph.node):  # dropping a dead Cast can make the Cast before it dead too
            del graph.node[:]
            graph.node.extend(kept)
            used = {i for g in iter_graphs(graph) for n in g.node for i in n.input} | graph_outputs
            kept = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in used]
    return rewired


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_here = {o for n in graph.node for o in n.output}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available or i not in produced_here for i in n.input)]
        if not ready:  # a cycle or dangling input: keep the rest as it was
            ordered += pending
            break
        for node in ready:
            available.update(node.output)
        ordered += ready
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    del graph.node[:]
    graph.node.extend(ordered)


def _cast_to(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "to"), 0)
