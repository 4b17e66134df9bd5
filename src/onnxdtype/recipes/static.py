"""s8s8 / s8u8 / u8u8: onnxruntime's quantize_static (QDQ, per-channel weights) fed the cached calibration ranges.

With onnxruntime's defaults static QDQ wrecks real models (held-out data, MinMax: PP-OCRv4 det text-map cosine
0.0 on one image in five, MiniLM embeddings 0.76; SPEC.md's YOLO kept 17% of its detections), so three general
rules are on by default, each switchable:

* kernel_ops_only: activations are quantized only where an integer kernel uses them, at Conv, ConvTranspose,
  Gemm and MatMul with a constant weight; MatMul/Gemm outputs stay float (onnxruntime still runs them as int8
  GEMMs, MatMulIntegerToFloat), since transformer FFN outputs carry single channels 100-240x wider than the
  rest. Elementwise ops, normalizations, Softmax, Concat... stay float.
* float_tail: the nodes after the last weighted op on every path to a graph output (decode, Concat of boxes
  and scores, Softmax/Sigmoid heads), and those last weighted ops themselves, stay float, so no graph output
  passes through one per-tensor scale. Under onnxruntime's op set, a detector whose [boxes 0..900 | scores
  0..1] meet in one Concat keeps whole-tensor cosine 0.9998 while its score channels fall to 0.0; the tail
  rule alone restores them to 0.9999 (tests/recipes/test_static.py).
* equalize (with per-channel weights): per-tensor activation scales fail when channels differ in range
  (PP-OCRv4 det's depthwise convs: x100; MiniLM's FFN inputs: x26). Conv outputs are rescaled per channel
  into the weights (free under per-channel weights) and restored by a float Mul after the Q/DQ; inputs of
  weighted ops are divided per channel by SmoothQuant factors max|x|^a / max|w|^(1-a) folded into the
  weights (a = 1 for depthwise Conv, where it is free; 0.7 otherwise).

Measured, s8u8, worst held-out sample: onnxruntime defaults det 0.00 / MiniLM 0.761; kernel_ops_only +
float_tail 0.23 / 0.984; all three rules 0.947 / 0.995 (float_tail alone changes neither model: their last
layers feed no heterogeneous Concat).
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.calibration.ranges import (
    ORT_METHODS,
    WEIGHTED_OPS,
    CalibrationResult,
    model_digest,
    read_ranges,
    weighted_nodes,
    write_ranges,
)
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import needs_external_data
from onnxdtype.normalize import name_unnamed_nodes
from onnxdtype.recipes import NotApplicable, Variant

NAME = "static"
PASSES = ("constants", "opset13")
DTYPE_TYPES = {"s8s8": ("int8", "int8"), "s8u8": ("int8", "uint8"), "u8u8": ("uint8", "uint8")}
SMOOTH_ALPHA = 0.7  # SmoothQuant migration strength for weights that mix channels (measured on MiniLM, PP-OCRv4 det)
EQUALIZE_SPREAD = 2.0  # equalize a tensor when its widest channel's range exceeds the median channel's by this
NEEDS_CALIBRATION = "needs calibration data (--calib)"


@dataclass
class Options:
    weight_type: str = "int8"  # int8 | uint8
    activation_type: str = "uint8"  # int8 | uint8
    per_channel: bool = True
    ranges_file: str | None = None  # the cached calibration (calibration.calibrate's result.path)
    method: str = "minmax"  # minmax | entropy | percentile: how the ranges file is computed
    kernel_ops_only: bool = True
    float_tail: bool = True
    equalize: bool = True
    nodes_to_exclude: list[str] = field(default_factory=list)


def options_for(dtype_name: str, options: Options) -> Options:
    """The options for one of the three static dtypes: its weight and activation types over `options`."""
    weight_type, activation_type = DTYPE_TYPES[dtype_name]
    return dataclasses.replace(options, weight_type=weight_type, activation_type=activation_type)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    weighted = [n.name or n.output[0] for n in weighted_nodes(model) if n.name not in options.nodes_to_exclude]
    if not weighted:
        return "no Conv, ConvTranspose, MatMul or Gemm with a constant weight"
    if options.float_tail and not set(weighted) - set(float_tail(model)):
        return "its only weighted ops feed the outputs directly, and the float-tail rule keeps them float"
    if "calibration_cache_path" not in inspect.signature(_quantize_static()).parameters:
        return "needs onnxruntime whose quantize_static takes calibration_cache_path (1.32 has it)"
    if not options.ranges_file:
        return NEEDS_CALIBRATION
    return None


def cached_ranges(model: onnx.ModelProto, ranges_file: str, method: str) -> CalibrationResult:
    """The calibration this model's variant is built from, refused when it was made for another model or method."""
    calibration = read_ranges(ranges_file)
    if calibration.model_sha256 != model_digest(model):
        raise OnnxDtypeError(f"{ranges_file}: computed for another model (or before normalizing); recalibrate")
    if calibration.method != method:
        raise OnnxDtypeError(f"{ranges_file}: holds {calibration.method} ranges, {method} was asked")
    return calibration


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    from onnxruntime.quantization import QuantType

    calibration = cached_ranges(model, options.ranges_file, options.method)
    model = _named_copy(model)  # quantize_static edits its input; nodes_to_exclude needs names
    excluded = set(options.nodes_to_exclude) | (set(float_tail(model)) if options.float_tail else set())
    quantized = {n.name for n in weighted_nodes(model)} - excluded
    notes: list[str] = []
    if options.equalize and options.per_channel:  # per-tensor weights would take on the channel spread instead
        model, calibration, counts = equalize(model, calibration, quantized)
        notes.append(f"equalized channels: {counts[0]} Conv outputs, {counts[1]} weighted-op inputs")
    op_types = list(WEIGHTED_OPS) if options.kernel_ops_only else None  # None: every op onnxruntime quantizes
    extra = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]} \
        if options.kernel_ops_only else {}
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    quantized_model = quantize_with_ranges(
        model, calibration,
        op_types_to_quantize=op_types,
        per_channel=options.per_channel,
        activation_type=types[options.activation_type],
        weight_type=types[options.weight_type],
        nodes_to_exclude=sorted(excluded),
        extra_options=extra,
    )
    kept = sorted(n.name for n in model.graph.node  # excluded nodes the quantizer would otherwise have touched
                  if n.name in excluded and (op_types is None or n.op_type in op_types))
    if options.float_tail:
        notes.append("float tail: nodes after the last weighted op on every path to an output stay float")
    if options.kernel_ops_only:
        notes.append("activations quantized only at Conv/ConvTranspose/MatMul/Gemm; MatMul/Gemm outputs stay float")
    params = {"weight_type": options.weight_type, "activation_type": options.activation_type,
              "per_channel": options.per_channel, "method": calibration.method,
              "ranges_file": Path(options.ranges_file).name, "calibration_samples": calibration.samples_used,
              "kernel_ops_only": options.kernel_ops_only, "float_tail": options.float_tail,
              "equalize": options.equalize, "nodes_to_exclude": list(options.nodes_to_exclude),
              "quantizer": "onnxruntime.quantization.quantize_static (QDQ)"}
    return Variant(quantized_model, params, kept_in_float=kept, notes=notes)


def _named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    name_unnamed_nodes(copy)  # quantize_static cannot exclude nameless nodes
    return copy


def quantize_with_ranges(model: onnx.ModelProto, calibration: CalibrationResult, **quantize_options
                         ) -> onnx.ModelProto:
    """onnxruntime's quantize_static (QDQ) given our cached ranges through its calibration cache file, so it
    runs no calibration of its own; `quantize_options` are quantize_static's other arguments."""
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
        return onnx.load(str(out), load_external_data=True)


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


def equalize(model: onnx.ModelProto, calibration: CalibrationResult, quantized: set[str]
             ) -> tuple[onnx.ModelProto, CalibrationResult, tuple[int, int]]:
    """Rescale channels so one per-tensor scale fits them all; exact in float, with the new tensors' ranges.

    Conv outputs: weights and bias of output channel o divided by max|y_o|, a float Mul after the Q/DQ
    restores y. Weighted-op inputs: x divided per channel by SmoothQuant factors (a float Mul before the
    Q/DQ), the weights' input channels multiplied by them.
    """
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    inits = {t.name: t for t in graph.initializer}
    ranges = dict(calibration.ranges)
    nodes = [n for n in graph.node if n.name in quantized and n.name]
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> Mul nodes to insert before it
    after: dict[str, list[onnx.NodeProto]] = {}

    def replace_weight(node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        name = f"{node.input[index]}/onnxdtype_equalized/{node.name}"
        inits[name] = numpy_helper.from_array(array.astype(np.float32), name)
        graph.initializer.append(inits[name])
        node.input[index] = name

    outputs_done = 0
    for node in nodes:
        stats = calibration.channels.get(node.output[0])
        if node.op_type != "Conv" or stats is None or not _spread(stats):
            continue
        scale = _channel_amax(stats)
        weight = numpy_helper.to_array(inits[node.input[1]])
        replace_weight(node, 1, weight / scale.reshape(-1, *[1] * (weight.ndim - 1)))
        if len(node.input) > 2 and node.input[2] in inits:
            replace_weight(node, 2, numpy_helper.to_array(inits[node.input[2]]) / scale)
        original = node.output[0]
        node.output[0] = f"{original}/onnxdtype_equalized"
        factor = f"{original}/onnxdtype_channel_factor"
        graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, *[1] * (weight.ndim - 2)), factor))
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
        smoothed = f"{tensor}/onnxdtype_smoothed"
        divisor = f"{tensor}/onnxdtype_smooth_factor"
        rank_tail = [1] * (numpy_helper.to_array(inits[users[0].input[1]]).ndim - 2) if kind != "matmul" else []
        graph.initializer.append(numpy_helper.from_array((1 / factor).reshape(-1, *rank_tail), divisor))
        before.setdefault(users[0].name, []).append(helper.make_node("Mul", [tensor, divisor], [smoothed],
                                                                     name=f"{tensor}/onnxdtype_smooth"))
        for node, (_, _, axis) in zip(users, views):
            weight = numpy_helper.to_array(inits[node.input[1]])
            shape = [1] * weight.ndim
            shape[axis] = -1
            replace_weight(node, 1, weight * factor.reshape(shape))
            node.input[0] = smoothed
        ranges[smoothed] = _scaled_range(stats, factor)
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
    return model_out, dataclasses.replace(calibration, ranges=ranges), (outputs_done, inputs_done)


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
