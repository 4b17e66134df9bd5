"""s8s8 / s8u8 / u8u8: onnxruntime's quantize_static (QDQ, per-channel weights) fed the cached calibration ranges.

With onnxruntime's defaults static QDQ wrecks real models (held-out data, MinMax: PP-OCRv4 det text-map cosine
0.0 on one image in five, MiniLM embeddings 0.76; SPEC.md's YOLO kept 17% of its detections), so three general
rules are on by default, each switchable:

* kernel_ops_only: activations are quantized only where an integer kernel uses them, at Conv, ConvTranspose,
  Gemm and MatMul with a constant weight; MatMul/Gemm outputs stay float (onnxruntime still runs them as int8
  GEMMs, MatMulIntegerToFloat), since transformer FFN outputs carry single channels 100-240x wider than the
  rest. Elementwise ops, normalizations, Softmax, Concat... stay float. Off (the search's chain placements),
  every op onnxruntime quantizes gets Q/DQ, and HardSwish, HardSigmoid and Div by a constant are first spelled
  with ops that have integer kernels (integer_ops.py), so chains of QLinear ops are not cut by float islands.
* float_tail: the nodes after the last weighted op on every path to a graph output (decode, Concat of boxes
  and scores, Softmax/Sigmoid heads), and those last weighted ops themselves, stay float, so no graph output
  passes through one per-tensor scale. Under onnxruntime's op set, a detector whose [boxes 0..900 | scores
  0..1] meet in one Concat keeps whole-tensor cosine 0.9998 while its score channels fall to 0.0; the tail
  rule alone restores them to 0.9999 (tests/recipes/test_static.py).
* equalize (with per-channel weights): per-channel ranges moved into the weights so one per-tensor scale fits
  every channel (qdq.equalize says how).

Measured, s8u8, worst held-out sample: onnxruntime defaults det 0.00 / MiniLM 0.761; kernel_ops_only +
float_tail 0.23 / 0.984; all three rules 0.947 / 0.995 (float_tail alone changes neither model: their last
layers feed no heterogeneous Concat).

float_conv_transpose (on by default): ConvTranspose stays float, weights and activations. onnxruntime's CPU EP has
no integer ConvTranspose: quantized, it ran on weights and bias dequantized on every run, between a QuantizeLinear
and DequantizeLinear pair where its reader is float too (PP-OCRv4 det's head: 0.28 ms of conversions at one
thread); det's s8u8 chain 1.40-1.42x fp32 -> 1.43-1.45x with it float (interleaved, one thread, three runs).

float_first (0 by default; the search tries it): the first N weighted ops and every node they depend on stay
float. onnxruntime's CPU integer kernels lose on an image model's first layers, few channels at high resolution:
PP-OCRv4 det's 3-channel stem ran as a QLinearConv plus its input's QuantizeLinear and NHWC Transpose in 1.07 ms
against fp32's 0.43 ms Conv, its first depthwise Conv 0.38 against 0.15 ms (one thread, this AVX2 CPU).

float_kinds (none by default; the search tries each): every op of a kind in FLOAT_KINDS stays float, where
onnxruntime's 8-bit CPU kernels can lose to its float ones: depthwise Convs (PP-OCR cls's 5x5 ones as QLinearConv
51-68 us against 18-22 us float, medians of a per-node profile) and MaxPool (onnxruntime left cls's uint8 MaxPool
in NCHW: 0.14 ms). Measured on an AVX-512 VNNI CPU, s8u8 chains, interleaved with fp32 at one thread: cls
0.87-0.89x -> 1.00-1.01x with both float -> 1.15-1.17x with its first 2-4 weighted ops float too; but det
1.84-1.95x -> 1.66-1.74x and rec 2.12-2.19x -> 1.93-1.99x with their depthwise Convs float. So it is the search's
to try, not a default.

reduce_range (off by default; the search tries it): weights in 7 bits. onnxruntime's U8S8 kernels on x86 without
VNNI (AVX2, AVX-512) add pairs of uint8 x int8 products in int16 and saturate; 7-bit weights cannot. Measured on
this AVX2 CPU, s8u8 chains, held-out data (bench/static_ablation.py): PP-OCRv4 rec 9 % -> 55 % of lines read as
fp32 reads them, cls 91 % -> 100 % of labels; but MiniLM 88 % -> 62 % of neighbours, where the lost bit costs more
than saturation did.

bias_correction (off by default): each weighted op's bias takes back the mean shift its rounded weights cause on
the calibration data (bias_correction.py). It changed no verdict (s8u8, with and without): PP-OCRv4 rec's 7-bit
chain missed 1 stable line instead of 2 and still failed, its equalized kernel-input placement 88.9 % both
(bench/static_ablation.py); the search (bench/static_speed.py) kept MiniLM passing, cls passing but its 7-bit chain
lost a label with it and was repaired (4 nodes float, 0.86x vs 0.82x: timing noise), the YOLO-style detector
failing (76.6 % vs 73.7 % of detections).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxdtype.calibration.ranges import CALIBRATION_PASSES, ORT_METHODS, weighted_nodes
from onnxdtype.normalize import fold_adds_into_unpadded_convs, fold_batchnorm, fold_conv_bias_adds
from onnxdtype.ops import KERNEL_WEIGHT_INPUT
from onnxdtype.recipes.base import NotApplicable, Variant, choice, count, flag, names, with_nodes
from onnxdtype.recipes.bias_correction import corrected_biases
from onnxdtype.recipes.integer_ops import fold_constant_scales, integer_spellings
from onnxdtype.recipes.qdq import (
    NEEDS_CALIBRATION,
    cached_ranges,
    equalize,
    float_for_real,
    float_tail,
    named_copy,
    no_weights_reason,
    quantize_static_problem,
    quantize_with_ranges,
)

NAME = "static"
PASSES = CALIBRATION_PASSES  # the model the cached ranges were computed on
KIND = "quantize"
HIGHER_PRECISIONS = ("fp32",)
LAZY_WEIGHTS = False
DTYPE_TYPES = {"s8s8": ("int8", "int8"), "s8u8": ("int8", "uint8"), "u8u8": ("uint8", "uint8")}
INTEGER_TYPES = ("int8", "uint8")
# Kinds of ops float_kinds may keep float: what makes a node one of them ("depthwise": any grouped Conv, as every
# grouped Conv of the models measured here is depthwise).
FLOAT_KINDS: dict[str, Callable[[onnx.NodeProto], bool]] = {
    "depthwise": lambda node: node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute),
    "MaxPool": lambda node: node.op_type == "MaxPool",
}
# Positive constants with zero point 0, quantized as activations of that type: the levels above zero.
CONSTANT_LEVELS = {"int8": 127, "uint8": 255}


@dataclass
class Options:
    weight_type: str = "int8"  # int8 | uint8
    activation_type: str = "uint8"  # int8 | uint8
    per_channel: bool = True
    ranges_file: str | None = None  # the cached calibration (calibration.calibrate's result.path)
    method: str = "minmax"  # minmax | entropy | percentile | mse: how the ranges file is computed
    kernel_ops_only: bool = True
    float_tail: bool = True
    equalize: bool = True
    reduce_range: bool = False  # weights in 7 bits (see above)
    bias_correction: bool = False  # weight rounding's mean shift given back in the biases (see above)
    float_first: int = 0  # the first N weighted ops, and every node they depend on, stay float (see above)
    float_kinds: list[str] = field(default_factory=list)  # of FLOAT_KINDS (see above)
    float_conv_transpose: bool = True  # see above
    nodes_to_exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        choice("static weight_type", self.weight_type, INTEGER_TYPES)
        choice("static activation_type", self.activation_type, INTEGER_TYPES)
        choice("static method", self.method, ORT_METHODS)
        for name in ("per_channel", "kernel_ops_only", "float_tail", "equalize", "reduce_range", "bias_correction",
                     "float_conv_transpose"):
            flag(f"static {name}", getattr(self, name))
        count("static float_first", self.float_first)
        names("static float_kinds", self.float_kinds)
        for kind in self.float_kinds:
            choice("static float_kinds", kind, FLOAT_KINDS)
        names("static nodes_to_exclude", self.nodes_to_exclude)


def options_for(dtype_name: str, options: Options) -> Options:
    """The options for one of the three static dtypes: its weight and activation types over `options`."""
    weight_type, activation_type = DTYPE_TYPES[dtype_name]
    return dataclasses.replace(options, weight_type=weight_type, activation_type=activation_type)


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    return with_nodes(options, "nodes_to_exclude", nodes)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    excluded = kept_float(model, options)
    weighted = [n.name or n.output[0] for n in weighted_nodes(model) if n.name not in excluded]
    if not weighted:
        return no_weights_reason(model)
    if options.float_tail and not set(weighted) - set(float_tail(model)):
        return "its only weighted ops feed the outputs directly, and the float-tail rule keeps them float"
    problem = quantize_static_problem()
    if problem:
        return problem
    if not options.ranges_file:
        return NEEDS_CALIBRATION
    return None


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    from onnxruntime.quantization import QuantType

    calibration = cached_ranges(model, options.ranges_file, options.method)
    model = named_copy(model)  # quantize_static edits its input; nodes_to_exclude needs names
    biases = fold_conv_bias_adds(model)  # the folded Conv writes the Add's output, whose range is cached
    folded = fold_batchnorm(model)  # likewise the BatchNormalization's
    input_adds = fold_adds_into_unpadded_convs(model)  # the Convs read the Add's input, whose range is cached
    spelled: dict[str, int] = {}
    if not options.kernel_ops_only:  # a chain placement: ops without an integer kernel would break it
        model, calibration, spelled = integer_spellings(model, calibration)
    excluded = kept_float(model, options) | (set(float_tail(model)) if options.float_tail else set())
    quantized = {n.name for n in weighted_nodes(model)} - excluded
    notes: list[str] = []
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra: dict = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]} \
        if options.kernel_ops_only else {}
    if options.equalize and options.per_channel:  # per-tensor weights would take on the channel spread instead
        grid = None if options.kernel_ops_only else CONSTANT_LEVELS[options.activation_type]
        model, calibration, counts, grid_scales = equalize(model, calibration, quantized, grid)
        notes.append(f"equalized channels: {counts[0]} Conv outputs, {counts[1]} weighted-op inputs")
        if grid_scales:  # the chain quantizes the equalizing Muls' constants: with these scales, exactly
            extra["TensorQuantOverrides"] = {
                name: [{"scale": scale, "zero_point": 0, "quant_type": types[options.activation_type]}]
                for name, scale in grid_scales.items()}
    op_types = list(KERNEL_WEIGHT_INPUT) if options.kernel_ops_only else None  # None: every op onnxruntime quantizes
    quantize = functools.partial(
        quantize_with_ranges,
        op_types_to_quantize=op_types,
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        activation_type=types[options.activation_type],
        weight_type=types[options.weight_type],
        nodes_to_exclude=sorted(excluded),
        extra_options=extra,
    )
    quantized_model = quantize(model, calibration)
    corrected = 0
    if options.bias_correction:  # the weights onnxruntime chose are known now; biases do not change them
        model, calibration, corrected = corrected_biases(model, quantized_model, calibration, quantized)
        if corrected:
            quantized_model = quantize(model, calibration)
            notes.append(f"bias correction: {corrected} weighted ops' biases take back the mean shift of their "
                         "rounded weights on the calibration data")
    made_float = float_for_real(quantized_model, excluded)  # before a folded scale can land on a pair it drops
    folded_scales = fold_constant_scales(quantized_model, model)
    kept = sorted(n.name for n in model.graph.node  # excluded nodes the quantizer would otherwise have touched
                  if n.name in excluded and (op_types is None or n.op_type in op_types))
    kept_conv_transposes = sum(n.op_type == "ConvTranspose" and n.name in excluded for n in weighted_nodes(model))
    if folded:
        notes.append(f"{folded} BatchNormalization folded into their Conv (onnxruntime cannot across a Q/DQ pair)")
    if biases:
        notes.append(f"{biases} Adds of a per-channel constant folded into their Conv's bias (likewise)")
    if input_adds:
        notes.append(f"{input_adds} Adds of a per-channel constant before unpadded Convs folded into their biases")
    if spelled:
        notes.append("spelled with integer-kernel ops (Add/Mul/Clip): "
                     + ", ".join(f"{n} {op}" for op, n in spelled.items()))
    if options.float_tail:
        notes.append("float tail: nodes after the last weighted op on every path to an output stay float")
    if folded_scales:
        notes.append(f"{folded_scales} multiplications by a constant folded into their input's scale")
    if made_float:
        notes.append(f"{len(made_float)} ops kept float read float outputs (their output's Q/DQ dropped): onnxruntime "
                     "would otherwise run them on int8 weights of one scale")
    if options.float_conv_transpose and kept_conv_transposes:
        notes.append(f"{kept_conv_transposes} ConvTranspose stay float: onnxruntime's CPU EP has no integer kernel "
                     "for it")
    if options.float_first:
        notes.append(f"the first {options.float_first} weighted ops and the nodes before them stay float")
    if options.float_kinds:
        notes.append(f"every {' and every '.join(options.float_kinds)} op stays float")
    if options.reduce_range:
        notes.append("weights in 7 bits: onnxruntime's U8S8 kernels on x86 without VNNI saturate 8-bit ones")
    if options.kernel_ops_only:
        notes.append("activations quantized only at Conv/ConvTranspose/MatMul/Gemm; MatMul/Gemm outputs stay float")
    params = {"weight_type": options.weight_type, "activation_type": options.activation_type,
              "per_channel": options.per_channel, "method": calibration.method,
              "ranges_file": Path(options.ranges_file).name, "calibration_samples": calibration.samples_used,
              "kernel_ops_only": options.kernel_ops_only, "float_tail": options.float_tail,
              "equalize": options.equalize, "reduce_range": options.reduce_range,
              "bias_correction": options.bias_correction, "corrected_biases": corrected,
              "float_first": options.float_first, "float_kinds": list(options.float_kinds),
              "float_conv_transpose": options.float_conv_transpose,
              "integer_spellings": spelled, "folded_scales": folded_scales, "float_outputs": made_float,
              "nodes_to_exclude": list(options.nodes_to_exclude),
              "quantizer": "onnxruntime.quantization.quantize_static (QDQ)"}
    return Variant(quantized_model, params, kept_in_float=kept, notes=notes)


def kept_float(model: onnx.ModelProto, options: Options) -> set[str]:
    """The nodes `options` keep float whatever the placement: nodes_to_exclude, the first float_first weighted ops
    and what they depend on, the ops of float_kinds, and ConvTransposes under float_conv_transpose."""
    conv_transposes = {n.name for n in weighted_nodes(model) if n.op_type == "ConvTranspose"}
    return set(options.nodes_to_exclude) | set(leading_nodes(model, options.float_first)) \
        | set(kind_nodes(model, options.float_kinds)) | (conv_transposes if options.float_conv_transpose else set())


def kind_nodes(model: onnx.ModelProto, kinds: list[str]) -> list[str]:
    """Names of the main graph's nodes of `kinds` (FLOAT_KINDS), in graph order."""
    return [n.name for n in model.graph.node if any(FLOAT_KINDS[kind](n) for kind in kinds)]


def leading_nodes(model: onnx.ModelProto, first: int) -> list[str]:
    """Names of the first `first` weighted ops in graph order and of every node they depend on."""
    producers = {out: node for node in model.graph.node for out in node.output}
    pending, found = list(weighted_nodes(model)[:first]), set()
    while pending:
        node = pending.pop()
        if node.name not in found:
            found.add(node.name)
            pending += [producers[name] for name in node.input if name in producers]
    return [n.name for n in model.graph.node if n.name in found]
