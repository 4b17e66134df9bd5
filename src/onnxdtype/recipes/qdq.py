"""The Q/DQ machinery the static and TensorRT recipes share: cached ranges, onnxruntime's quantize_static fed those
ranges, the float tail, and channel equalization.

Equalization (with per-channel weights): per-tensor activation scales fail when channels differ in range
(PP-OCRv4 det's depthwise convs: x100; MiniLM's FFN inputs: x26). Conv outputs are rescaled per channel into the
weights (free under per-channel weights) and restored by a float Mul after the Q/DQ; inputs of weighted ops are
divided per channel by SmoothQuant factors max|x|^a / max|w|^(1-a) folded into the weights (a = 1 for depthwise
Conv, where it is free; 0.7 otherwise).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.calibration.ranges import (
    ORT_METHODS,
    CalibrationResult,
    ChannelRange,
    model_digest,
    read_ranges,
    weighted_nodes,
    write_ranges,
)
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.folding import drop_unused
from onnxdtype.model import needs_external_data, readers
from onnxdtype.normalize import name_unnamed_nodes
from onnxdtype.specialize import subgraph_weight_summary

NEEDS_CALIBRATION = "needs calibration data (--calib)"
SMOOTH_ALPHA = 0.7  # SmoothQuant migration strength for weights that mix channels (measured on MiniLM, PP-OCRv4 det)
EQUALIZE_SPREAD = 2.0  # equalize a tensor when its widest channel's range exceeds the median channel's by this


def no_weights_reason(model: onnx.ModelProto) -> str:
    """Why a static recipe finds nothing to quantize: weights it cannot reach inside If/Loop bodies (with the inputs
    that would specialize them), or none at all."""
    return subgraph_weight_summary(model) or "no Conv, ConvTranspose, MatMul or Gemm with a constant weight"


def quantize_static_problem() -> str | None:
    """Why this onnxruntime cannot be fed our ranges, or None."""
    if "calibration_cache_path" not in inspect.signature(_quantize_static()).parameters:
        return "needs onnxruntime whose quantize_static takes calibration_cache_path (1.32 has it)"
    return None


def cached_ranges(model: onnx.ModelProto, ranges_file: str, method: str) -> CalibrationResult:
    """The calibration this model's variant is built from, refused when it was made for another model or method."""
    calibration = read_ranges(ranges_file)
    if calibration.model_sha256 != model_digest(model):
        raise OnnxDtypeError(f"{ranges_file}: computed for another model (or before normalizing); recalibrate")
    if calibration.method != method:
        raise OnnxDtypeError(f"{ranges_file}: holds {calibration.method} ranges, {method} was asked")
    return calibration


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name_unnamed_nodes(copy)  # quantize_static cannot exclude nameless nodes
    return copy


def quantize_with_ranges(model: onnx.ModelProto, calibration: CalibrationResult, **quantize_options
                         ) -> onnx.ModelProto:
    """onnxruntime's quantize_static (QDQ) given our cached ranges through its calibration cache file, so it
    runs no calibration of its own; `quantize_options` are quantize_static's other arguments. Its per-channel
    weights then get one zero point for every channel (even_weight_zero_points)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat

    with TemporaryDirectory(prefix="onnxdtype-qdq-") as tmp:
        ranges_file = Path(tmp) / "ranges.json"
        write_ranges(ranges_file, calibration)
        out = Path(tmp) / "qdq.onnx"
        _quantize_static()(
            model, out, None,
            quant_format=QuantFormat.QDQ,
            use_external_data_format=needs_external_data(model),
            calibrate_method=CalibrationMethod[ORT_METHODS[calibration.method]],
            calibration_cache_path=ranges_file,
            **quantize_options,
        )
        quantized = onnx.load(str(out), load_external_data=True)
    even_weight_zero_points(quantized)
    return quantized


def even_weight_zero_points(model: onnx.ModelProto) -> int:
    """Give each all-zero channel of a per-channel quantized weight the zero point its other channels share; returns
    how many weights changed. Exact: such a channel's values are its zero point, so they read as 0 under any.

    onnxruntime's quantizer gives an all-zero channel scale 1 and zero point 0, while symmetric uint8 weights have
    128 on every other channel, and its CPU QLinearConv needs one zero point for all channels: without it,
    PP-OCRv4 rec's u8u8 chain (its dead channels: 1 to 14 in 8 Convs) ran two strided depthwise 5x5 Convs in 40 ms
    each instead of 0.5 ms, the whole variant 0.42x fp32 (bench/static_speed.py --profile)."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not all(n in inits for n in node.input):
            continue
        points = numpy_helper.to_array(inits[node.input[2]])
        if points.ndim != 1 or np.unique(points).size < 2:
            continue
        values = numpy_helper.to_array(inits[node.input[0]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % values.ndim
        per_channel = np.moveaxis(values, axis, 0).reshape(len(points), -1)
        dead = (per_channel == points[:, None]).all(axis=1)
        live = np.unique(points[~dead])
        if live.size != 1 or not dead.any():
            continue
        per_channel = per_channel.copy()
        per_channel[dead] = live[0]
        points = points.copy()
        points[dead] = live[0]
        moved = np.moveaxis(per_channel.reshape(np.moveaxis(values, axis, 0).shape), 0, axis)
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(moved.astype(values.dtype), node.input[0]))
        inits[node.input[2]].CopyFrom(numpy_helper.from_array(points, node.input[2]))
        changed += 1
    return changed


# Single-reader ops onnxruntime's QDQPropagation moves a QuantizeLinear back across (qdq_propagation.cc).
Q_PROPAGATES_ACROSS = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice")


def float_for_real(model: onnx.ModelProto, kept: set[str]) -> list[str]:
    """Drop, in place, the QuantizeLinear/DequantizeLinear pair after each op of `kept` that onnxruntime would
    quantize anyway, so it runs in float as the variant says; its readers read its float output. Returns their names.

    onnxruntime's WeightBiasQuantization (graph optimization level 1, on by default) gives a Conv, ConvTranspose or
    Gemm with a float weight int8 weights of one per-tensor scale when it reads a per-tensor DequantizeLinear and its
    output goes only to a QuantizeLinear (through Relu/Clip, and the ops its QDQPropagation moves a QuantizeLinear
    back across): in a chain placement every op kept float sits so. Measured on PP-OCR cls's s8u8 chain with its 11
    depthwise Convs kept float: all 53 Convs ran as QLinearConv. The dropped pair is the one after those ops, which
    then run in float too."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    done = []
    for node in graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if node.name not in kept or node.op_type not in ("Conv", "ConvTranspose", "Gemm") or source is None \
                or source.op_type != "DequantizeLinear" or not _scalar(inits.get(source.input[1])):
            continue
        last = node  # the op, then the Relu/Clip it fuses, then the ops a QuantizeLinear is propagated back across
        for passes in (("Relu", "Clip"), Q_PROPAGATES_ACROSS):
            while len(consumers.get(last.output[0], [])) == 1 and last.output[0] not in outputs \
                    and consumers[last.output[0]][0].op_type in passes:
                last = consumers[last.output[0]][0]
        after = consumers.get(last.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or last.output[0] in outputs:
            continue
        dequantizers = consumers.get(after[0].output[0], [])
        if any(d.op_type != "DequantizeLinear" or d.output[0] in outputs for d in dequantizers) \
                or after[0].output[0] in outputs:
            continue
        renamed |= {d.output[0]: last.output[0] for d in dequantizers}
        done.append(node.name)
    if done:
        for reader in graph.node:
            reader.input[:] = [renamed.get(name, name) for name in reader.input]
        drop_unused(graph, set())  # the pairs nothing reads now, and their scales and zero points
    return done


def _scalar(tensor: onnx.TensorProto | None) -> bool:
    return tensor is not None and int(np.prod(tensor.dims)) == 1


def _quantize_static():
    from onnxruntime.quantization import quantize_static

    return quantize_static


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes no weighted op follows on any path (post-processing up to the outputs), plus the
    weighted ops that feed only those nodes or the outputs (the last layer before them)."""
    nodes = list(model.graph.node)
    weighted = {n.output[0] for n in weighted_nodes(model)}
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in _consumed(node):
            consumers.setdefault(name, []).append(index)
    feeds_weighted = [False] * len(nodes)
    for index in reversed(range(len(nodes))):  # graphs are topologically sorted: consumers come later
        after = [c for out in nodes[index].output for c in consumers.get(out, [])]
        feeds_weighted[index] = any(nodes[c].output[0] in weighted or feeds_weighted[c] for c in after)
    return [n.name or n.output[0] for n, feeds in zip(nodes, feeds_weighted) if not feeds]


def _consumed(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, including the outer tensors its subgraphs (If/Loop bodies) read."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
            for inner in sub.node:
                names |= _consumed(inner)
    return names


def equalize(model: onnx.ModelProto, calibration: CalibrationResult, quantized: set[str], grid: int | None = None
             ) -> tuple[onnx.ModelProto, CalibrationResult, tuple[int, int], dict[str, float]]:
    """Rescale channels so one per-tensor scale fits them all; exact in float, with the new tensors' ranges.

    Conv outputs: weights and bias of output channel o divided by max|y_o|, a Mul after the Q/DQ restores y.
    Weighted-op inputs: x divided per channel by SmoothQuant factors (a Mul before the Q/DQ), the weights' input
    channels multiplied by them.

    With `grid` (a chain placement, where those Muls are quantized too, their constants with one 8-bit scale),
    each Mul's constant is first moved onto the multiples k >= 1 of its largest value / grid, and that scale is
    returned by constant name, for the quantizer to use: the 8-bit constant is then exact. Quantized with a scale of
    onnxruntime's choosing, the small factors lost most of their digits (PP-OCRv4 rec's chain: no line read as fp32
    reads it; the SVTR neck's first MatMul at cosine 0.28 to fp32). Factors spreading wider than the grid are raised
    to its first step, so the widest channels are smoothed less: MiniLM's chain (outlier channels 100-240x the rest)
    keeps 62.5 % of neighbours instead of 87.5 % (bench/static_ablation.py), failing either way.
    """
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    inits = {t.name: t for t in graph.initializer}
    ranges, channels = dict(calibration.ranges), dict(calibration.channels)
    nodes = [n for n in graph.node if n.name in quantized and n.name]
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> Mul nodes to insert before it
    after: dict[str, list[onnx.NodeProto]] = {}

    def replace_weight(node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        name = f"{node.input[index]}/onnxdtype_equalized/{node.name}"
        inits[name] = numpy_helper.from_array(array.astype(np.float32), name)
        graph.initializer.append(inits[name])
        node.input[index] = name

    grid_scales: dict[str, float] = {}  # constant name -> the scale it is quantized with (a chain)
    outputs_done = 0
    for node in nodes:
        stats = calibration.channels.get(node.output[0])
        if node.op_type != "Conv" or stats is None or not _spread(stats):
            continue
        scale = _on_grid(_channel_amax(stats), grid)
        weight = numpy_helper.to_array(inits[node.input[1]])
        replace_weight(node, 1, weight / scale.reshape(-1, *[1] * (weight.ndim - 1)))
        if len(node.input) > 2 and node.input[2] in inits:
            replace_weight(node, 2, numpy_helper.to_array(inits[node.input[2]]) / scale)
        original = node.output[0]
        node.output[0] = f"{original}/onnxdtype_equalized"
        factor = f"{original}/onnxdtype_channel_factor"
        graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, *[1] * (weight.ndim - 2)), factor))
        if grid:
            grid_scales[factor] = float(scale.max()) / grid
        after.setdefault(node.name, []).append(helper.make_node("Mul", [node.output[0], factor], [original],
                                                                name=f"{original}/onnxdtype_restore"))
        ranges[node.output[0]] = _scaled_range(stats, scale)
        outputs_done += 1

    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.input[0] not in inits:
            by_input.setdefault(node.input[0], []).append(node)
    inputs_done = 0
    for tensor, users in by_input.items():
        stats = calibration.channels.get(tensor)
        views = [_input_channel_view(node, numpy_helper.to_array(inits[node.input[1]])) for node in users]
        if stats is None or not _spread(stats) or any(v is None for v in views) or len({v[0] for v in views}) > 1:
            continue
        kind = views[0][0]
        weight_amax = np.max([v[1] for v in views], axis=0)
        activation_amax = _channel_amax(stats)
        if weight_amax.shape != activation_amax.shape:
            continue
        alpha = 1.0 if kind == "depthwise" else SMOOTH_ALPHA
        factor = activation_amax ** alpha / np.maximum(weight_amax, 1e-12) ** (1 - alpha)
        factor = np.where((weight_amax > 0) & (factor > 0), factor, 1.0).astype(np.float32)
        multiplier = _on_grid(1 / factor, grid)  # the Mul's constant; the weights take its exact inverse
        factor = (1 / multiplier).astype(np.float32)
        smoothed = f"{tensor}/onnxdtype_smoothed"
        divisor = f"{tensor}/onnxdtype_smooth_factor"
        rank_tail = [1] * (numpy_helper.to_array(inits[users[0].input[1]]).ndim - 2) if kind != "matmul" else []
        graph.initializer.append(numpy_helper.from_array(multiplier.reshape(-1, *rank_tail), divisor))
        if grid:
            grid_scales[divisor] = float(multiplier.max()) / grid
        before.setdefault(users[0].name, []).append(helper.make_node("Mul", [tensor, divisor], [smoothed],
                                                                     name=f"{tensor}/onnxdtype_smooth"))
        for node, (_, _, axis) in zip(users, views):
            weight = numpy_helper.to_array(inits[node.input[1]])
            shape = [1] * weight.ndim
            shape[axis] = -1
            replace_weight(node, 1, weight * factor.reshape(shape))
            node.input[0] = smoothed
        ranges[smoothed] = _scaled_range(stats, factor)
        channels[smoothed] = ChannelRange(stats.axis, stats.lowest / factor, stats.highest / factor,
                                          None if stats.mean is None else stats.mean / factor)
        inputs_done += 1

    ordered = []
    for node in graph.node:
        ordered += before.get(node.name, []) + [node] + after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for n in graph.node for name in n.input}
    kept_inits = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return (model_out, dataclasses.replace(calibration, ranges=ranges, channels=channels), (outputs_done, inputs_done),
            grid_scales)


def _on_grid(values: np.ndarray, grid: int | None) -> np.ndarray:
    """Positive `values` moved to the nearest multiple k >= 1 of max / grid (unchanged without a grid)."""
    if not grid:
        return values.astype(np.float32)
    step = float(values.max()) / grid
    return (np.maximum(np.round(values / step), 1) * step).astype(np.float32)


def _channel_amax(stats) -> np.ndarray:
    amax = np.maximum(np.abs(stats.lowest), np.abs(stats.highest)).astype(np.float32)
    return np.where(amax > 0, amax, 1.0).astype(np.float32)


def _spread(stats) -> bool:
    amax = np.maximum(np.abs(stats.lowest), np.abs(stats.highest))
    live = amax[amax > 0]
    return live.size > 1 and float(live.max()) > EQUALIZE_SPREAD * float(np.median(live))


def _scaled_range(stats, divisor: np.ndarray) -> tuple[float, float]:
    return float(np.min(stats.lowest / divisor)), float(np.max(stats.highest / divisor))


def _input_channel_view(node: onnx.NodeProto, weight: np.ndarray) -> tuple[str, np.ndarray, int] | None:
    """(kind, max |w| per input channel, the weight axis of input channels), or None when not equalizable."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    group = attrs.get("group", 1)
    if node.op_type == "MatMul" and weight.ndim == 2:
        return "matmul", np.abs(weight).max(axis=1), 0
    if node.op_type == "Gemm" and weight.ndim == 2 and not attrs.get("transA", 0):
        axis = 1 if attrs.get("transB", 0) else 0
        return "matmul", np.abs(weight).max(axis=1 - axis), axis
    if node.op_type == "Conv" and group == 1:
        return "conv", np.abs(weight).max(axis=tuple(i for i in range(weight.ndim) if i != 1)), 1
    if node.op_type == "Conv" and weight.shape[1] == 1 and group == weight.shape[0]:
        return "depthwise", np.abs(weight).max(axis=tuple(range(1, weight.ndim))), 0
    if node.op_type == "ConvTranspose" and group == 1:
        return "conv", np.abs(weight).max(axis=tuple(range(1, weight.ndim))), 0
    return None
