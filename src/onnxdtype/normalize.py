"""Pre-passes shared by the recipes, each applied once per build and recorded in the manifest.

Why they exist: onnxruntime's quantizers only see weights that are initializers (paddle2onnx keeps
them in Constant nodes), the 4-bit quantizers only rewrite MatMul (not Gemm), and per-channel
quantization needs opset >= 13. The quantizers also drop metadata_props, which `keep_metadata` restores.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import iter_graphs, opset_version, readers
from onnxdtype.ops import CONV_OUTPUT_AXIS
from onnxdtype.weights import has_lazy, load_all, read_array

PASSES = ("constants", "gemm", "opset13", "batchnorm")


def normalize(model: onnx.ModelProto, passes: tuple[str, ...]) -> tuple[onnx.ModelProto, list[str]]:
    """Return a normalized copy of `model` and a list of what was actually done (empty when nothing)."""
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown normalize passes {sorted(unknown)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    done: list[str] = []
    if "constants" in passes and (moved := constants_to_initializers(out)):
        done.append(f"{moved} Constant nodes -> initializers")
    if "gemm" in passes and (rewritten := gemm_to_matmul(out)):
        done.append(f"{rewritten} Gemm -> MatMul+Add")
    if "opset13" in passes and opset_version(out) < 13:
        if has_lazy(out):
            load_all(out)  # onnx's version converter works on a whole in-memory model
        before = opset_version(out)
        out = raise_opset(out, 13)
        done.append(f"opset {before} -> 13")
    if "batchnorm" in passes and (folded := fold_batchnorm(out)):
        done.append(f"{folded} BatchNormalization folded into their Conv")
    if named := name_unnamed_nodes(out):  # last: the version converter drops some names
        done.append(f"{named} unnamed nodes named")
    return out, done


def name_unnamed_nodes(model: onnx.ModelProto) -> int:
    """Give every nameless node a unique name: exclusion lists, repair and reports refer to nodes by name."""
    taken = {n.name for g in iter_graphs(model.graph) for n in g.node if n.name}
    named = 0
    for graph_index, graph in enumerate(iter_graphs(model.graph)):
        for node_index, node in enumerate(graph.node):
            if not node.name:
                name = f"{node.op_type}_{graph_index}_{node_index}"
                while name in taken:
                    name += "_"
                node.name = name
                taken.add(name)
                named += 1
    return named


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn Constant nodes holding tensors into initializers of their graph, so quantizers see the weights."""
    moved = 0
    for graph in iter_graphs(model.graph):
        graph_outputs = {o.name for o in graph.output}
        kept: list[onnx.NodeProto] = []
        for node in graph.node:
            tensor = _constant_tensor(node) if node.output and node.output[0] not in graph_outputs else None
            if tensor is None:
                kept.append(node)
                continue
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        if moved:
            del graph.node[:]
            graph.node.extend(kept)
    return moved


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    scalar_or_list = {"value_float": np.float32, "value_floats": np.float32,
                      "value_int": np.int64, "value_ints": np.int64}
    if attr.name in scalar_or_list:
        return numpy_helper.from_array(np.array(helper.get_attribute_value(attr), dtype=scalar_or_list[attr.name]))
    return None


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold each BatchNormalization that alone reads a Conv's (or ungrouped ConvTranspose's) output into that op's
    weights and bias.

    onnxruntime folds them itself when it loads a float model, but not across the Q/DQ pair a static variant puts
    after the Conv: PP-OCR cls's 35 BatchNormalizations then ran as separate float ops (10 % of its s8u8 time). Not a
    calibration pass: TensorRT's tables name the unfolded model's tensors."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = readers(graph)
    outputs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    dropped: set[int] = set()
    for bn in graph.node:
        conv = producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or _output_axis(conv) is None or len(consumers.get(conv.output[0], [])) != 1 \
                or conv.output[0] in outputs or len(bn.output) != 1 \
                or any(name not in inits for name in [*conv.input[1:3], *bn.input[1:5]]):
            continue
        scale, bias, mean, var = (read_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + epsilon)
        weight = read_array(inits[conv.input[1]]).astype(np.float64)
        axis = _output_axis(conv)
        conv_bias = read_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 \
            else np.zeros(weight.shape[axis])
        weight_name, bias_name = f"{conv.input[1]}/bn_folded/{bn.name}", f"{conv.name}/bn_folded_bias"
        per_channel = factor.reshape([-1 if d == axis else 1 for d in range(weight.ndim)])
        graph.initializer.extend([
            numpy_helper.from_array((weight * per_channel).astype(np.float32), weight_name),
            numpy_helper.from_array(((conv_bias - mean) * factor + bias).astype(np.float32), bias_name)])
        conv.input[1] = weight_name
        _set_bias(conv, bias_name)
        conv.output[0] = bn.output[0]
        dropped.add(id(bn))
    _drop_nodes(graph, dropped)
    return len(dropped)


def _output_axis(node: onnx.NodeProto) -> int | None:
    """The weight axis of a Conv's output channels, or of an ungrouped ConvTranspose's (a grouped one's axis holds
    only one group's); None for others."""
    return CONV_OUTPUT_AXIS.get(node.op_type) if node.op_type == "Conv" or _group(node) == 1 else None


def fold_conv_bias_adds(model: onnx.ModelProto) -> int:
    """Fold each Add of a per-channel constant that alone reads a Conv's (or ungrouped ConvTranspose's) output into
    that op's bias.

    paddle2onnx writes the bias of PP-OCR's squeeze-excite Convs as Add(Conv, Reshape(const, const)), and of det's
    ConvTransposes as Add(ConvTranspose, const). In fp32 onnxruntime runs those Adds as separate ops; in a static
    chain each became a QLinearAdd after its QLinearConv (18 of cls's 155 integer-graph nodes), and det's kept a
    BatchNormalization apart from its ConvTranspose. The folded op writes the Add's output, whose range is cached.
    Initializers that are also graph inputs may be fed other values at run time: those are left alone."""
    graph = model.graph
    inits, consumers, outputs, producers = _lookups(graph)
    dropped: set[int] = set()
    folded = 0
    for add in graph.node:
        for conv_side in (0, 1) if add.op_type == "Add" and len(add.input) == 2 else ():
            conv = producers.get(add.input[conv_side])
            if conv is None or _output_axis(conv) is None or len(consumers.get(conv.output[0], [])) != 1 \
                    or conv.output[0] in outputs or any(name not in inits for name in conv.input[1:3]):
                continue
            weight = read_array(inits[conv.input[1]])
            channels = weight.shape[_output_axis(conv)]
            constant = add.input[1 - conv_side]
            bias = _per_channel_constant(constant, inits, producers, weight.ndim, channels)
            if bias is None:
                continue
            _add_to_bias(graph, conv, inits, bias, "add_folded_bias")
            conv.output[0] = add.output[0]
            dropped.add(id(add))
            folded += 1
            break
    _drop_nodes(graph, dropped)
    return folded


def fold_adds_into_unpadded_convs(model: onnx.ModelProto) -> int:
    """Fold each Add of a per-channel (or scalar) constant whose output only unpadded Convs read into their biases.

    Conv(x + c) = Conv(x) + the sum of each output channel's weights times c, exactly, when no padding reads the
    border (padded zeros would stand where c should). PP-OCRv4 det's learnable affine blocks end in such an Add
    before 13 pointwise Convs; in a static chain each ran as a QLinearAdd of its own. The Convs then read the Add's
    input, whose range is cached like every other tensor's."""
    graph = model.graph
    inits, consumers, outputs, producers = _lookups(graph)
    outputs |= {name for sub in list(iter_graphs(graph))[1:] for n in sub.node for name in n.input}  # outer-scope reads
    dropped: set[int] = set()
    folded = 0
    for add in graph.node:
        convs = consumers.get(add.output[0], []) if add.op_type == "Add" and len(add.input) == 2 else []
        if not convs or add.output[0] in outputs or not all(_unpadded_conv(c, add.output[0], inits) for c in convs):
            continue
        weights = [read_array(inits[c.input[1]]) for c in convs]
        groups = [_group(c) for c in convs]
        for constant_side in (0, 1):
            constant, data = add.input[constant_side], add.input[1 - constant_side]
            values = [_per_channel_constant(constant, inits, producers, w.ndim, w.shape[1] * g)
                      for w, g in zip(weights, groups)]
            if data in inits or any(v is None for v in values):
                continue
            for conv, weight, group, value in zip(convs, weights, groups, values):
                per_output = np.repeat(value.reshape(group, -1), weight.shape[0] // group, axis=0)
                shift = (weight.astype(np.float64).sum(axis=tuple(range(2, weight.ndim))) * per_output).sum(axis=1)
                _add_to_bias(graph, conv, inits, shift, "input_add_folded_bias")
                conv.input[0] = data
            dropped.add(id(add))
            folded += 1
            break
    _drop_nodes(graph, dropped)
    return folded


def _group(conv: onnx.NodeProto) -> int:
    return next((a.i for a in conv.attribute if a.name == "group"), 1)


def _unpadded_conv(node: onnx.NodeProto, tensor: str, inits: dict) -> bool:
    """Whether `node` is a Conv that reads `tensor` as its data input only, with constant weights and no padding."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return node.op_type == "Conv" and node.input[0] == tensor and tensor not in node.input[1:] \
        and all(name in inits for name in node.input[1:3] if name) and not any(attrs.get("pads", [])) \
        and auto_pad in (b"NOTSET", b"VALID")


def _lookups(graph: onnx.GraphProto) -> tuple[dict, dict, set[str], dict]:
    """What the Add folds look up: the initializers (not those also graph inputs: they may be fed other values at run
    time), each tensor's readers, the graph outputs, and each tensor's producer."""
    fed = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in fed}
    return inits, readers(graph), {o.name for o in graph.output}, {o: n for n in graph.node for o in n.output}


def _add_to_bias(graph: onnx.GraphProto, conv: onnx.NodeProto, inits: dict, shift: np.ndarray, suffix: str) -> None:
    """Give `conv` a new bias initializer: its old bias (zeros without one) plus `shift`, one per output channel."""
    old = read_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else np.zeros(len(shift))
    name = f"{conv.name or conv.output[0]}/{suffix}"
    graph.initializer.append(numpy_helper.from_array((old + shift).astype(np.float32), name))
    _set_bias(conv, name)


def _set_bias(conv: onnx.NodeProto, name: str) -> None:
    if len(conv.input) > 2:
        conv.input[2] = name
    else:
        conv.input.append(name)


def _drop_nodes(graph: onnx.GraphProto, dropped: set[int]) -> None:
    """Remove the nodes whose id() is in `dropped`, then the reshapes of constants and the initializers nothing
    reads any more (a Reshape that fed the constants of two folded Adds included)."""
    if not dropped:
        return
    kept = [n for n in graph.node if id(n) not in dropped]
    inits = {t.name for t in graph.initializer}
    used = {name for g in iter_graphs(graph) for n in g.node if id(n) not in dropped for name in n.input}
    used |= {o.name for o in graph.output}
    kept = [n for n in kept if not (n.op_type in _SHAPE_ONLY and all(i in inits for i in n.input if i)
                                    and not any(o in used for o in n.output))]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)


_SHAPE_ONLY = ("Reshape", "Unsqueeze", "Squeeze", "Identity", "Flatten")


def _per_channel_constant(name: str, inits: dict, producers: dict, rank: int, channels: int) -> np.ndarray | None:
    """The float32 values of tensor `name` as one bias per output channel of a rank-`rank` Conv, when it is an
    initializer, or one reshaped by a node of constant inputs, that broadcasts along the channel axis only."""
    if name in inits:
        value = read_array(inits[name])
    else:
        node = producers.get(name)
        if node is None or node.op_type not in _SHAPE_ONLY or len(node.output) != 1 \
                or not all(i in inits for i in node.input if i):
            return None
        from onnx.reference import ReferenceEvaluator

        value = ReferenceEvaluator(node).run(None, {i: read_array(inits[i]) for i in node.input if i})[0]
    if value.dtype != np.float32 or value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,))


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm(A, const B, C) as MatMul(A, B') [+ Add(beta*C)] with alpha and transB folded into B'.

    Gemm's A is 2-D, so MatMul computes the same thing; transA=1 Gemms are left alone.
    """
    rewritten = 0
    for graph in iter_graphs(model.graph):
        inits = {t.name: t for t in graph.initializer}
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0):
                new_nodes.append(node)
                continue
            weight = read_array(inits[node.input[1]])
            has_bias = len(node.input) > 2 and bool(node.input[2])
            beta = np.float32(attrs.get("beta", 1.0))
            if weight.ndim != 2 or weight.dtype != np.float32 or (has_bias and beta != 1 and node.input[2] not in inits):
                new_nodes.append(node)  # not a plain constant-weight Gemm: leave it as it is
                continue
            weight = weight.T if attrs.get("transB", 0) else weight
            weight = np.ascontiguousarray(weight * np.float32(attrs.get("alpha", 1.0)), dtype=np.float32)
            base = node.name or node.output[0]
            w_name = f"{base}/matmul_weight"
            graph.initializer.append(numpy_helper.from_array(weight, w_name))
            mm_out = f"{base}/matmul_out" if has_bias else node.output[0]
            new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{base}/MatMul"))
            if has_bias:
                bias_name = node.input[2]
                if beta != 1:
                    bias_name = f"{base}/bias"
                    scaled = read_array(inits[node.input[2]]).astype(np.float32) * beta
                    graph.initializer.append(numpy_helper.from_array(scaled, bias_name))
                new_nodes.append(helper.make_node("Add", [mm_out, bias_name], [node.output[0]], name=f"{base}/Add"))
            rewritten += 1
        if rewritten:
            del graph.node[:]
            graph.node.extend(new_nodes)
            _drop_unused_initializers(graph)
    return rewritten


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for g in iter_graphs(graph) for n in g.node for name in n.input}
    used |= {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def raise_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Convert the default-domain opset with onnx's version converter, keeping metadata."""
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises bare RuntimeErrors with C++ text
        raise OnnxDtypeError(f"cannot raise opset {opset_version(model)} -> {target}: {str(exc).splitlines()[0]}") from None
    keep_metadata(model, converted)
    return converted


def keep_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Copy metadata_props (labels, vocabularies) and doc string that quantizers drop."""
    existing = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in existing:
            target.metadata_props.add(key=prop.key, value=prop.value)
    if source.doc_string and not target.doc_string:
        target.doc_string = source.doc_string
