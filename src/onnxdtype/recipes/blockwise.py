"""q4: weight-only blockwise 4-bit MatMul (MatMulNBits) via onnxruntime's MatMulNBitsQuantizer.

The quantizer only touches MatMul with a constant 2-D weight, so Gemm is rewritten first (the "gemm"
pass). Gather is left out of the op list: adding it bumped the opset to 21 and broke models.

`rounding="gptq"` rounds the 4-bit weights against their inputs on the calibration data first (gptq.py says why
and what it measured), then lets the same quantizer store them; the build computes the inputs' Gram matrices
when calibration data is given (`grams_file`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from onnxdtype.calibration.grams import read_grams
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import constant_2d_matmuls, missing_constant_matmul
from onnxdtype.recipes.base import NotApplicable, Variant, choice, flag, names, power_of_two, same_options, with_nodes
from onnxdtype.recipes.gptq import differing_levels, round_weights
from onnxdtype.weights import weight_loading

NAME = "blockwise4"
PASSES = ("constants", "gemm")
KIND = "quantize"
NEEDS_CALIBRATION = "rounding=gptq needs calibration data (--calib)"
ROUNDINGS = ("nearest", "gptq")
HIGHER_PRECISIONS = ("8-bit", "fp32")  # MatMulNBits at 8 bits keeps most of the size win (MiniLM: 0.62x vs 0.80x)
LAZY_WEIGHTS = True
ACCURACY_LEVELS = (None, 0, 1, 2, 3, 4)


@dataclass
class Options:
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int | None = None  # MatMulNBits compute type: 0/None default, 1 fp32, 2 fp16, 3 bf16, 4 int8
    bits: int = 4
    nodes_to_exclude: list[str] = field(default_factory=list)  # stay fp32
    nodes_in_8bit: list[str] = field(default_factory=list)  # MatMulNBits with 8 bits: where 4 bits lose too much
    rounding: str = "nearest"  # nearest | gptq (needs calibration data)
    grams_file: str | None = None  # the MatMul inputs' Gram matrices on the calibration data (set by the build)

    def __post_init__(self) -> None:
        power_of_two("q4 block_size", self.block_size)
        flag("q4 symmetric", self.symmetric)
        choice("q4 accuracy_level", self.accuracy_level, ACCURACY_LEVELS)
        choice("q4 bits", self.bits, (4, 8))
        names("q4 nodes_to_exclude", self.nodes_to_exclude)
        names("q4 nodes_in_8bit", self.nodes_in_8bit)
        choice("q4 rounding", self.rounding, ROUNDINGS)
        if self.rounding == "gptq" and (self.bits != 4 or not self.symmetric):
            raise OnnxDtypeError("q4 rounding=gptq rounds to symmetric 4-bit blocks: it needs bits=4, symmetric=true")
        if self.grams_file is not None and not isinstance(self.grams_file, str):
            raise OnnxDtypeError(f"q4 grams_file must be a path, not {self.grams_file!r}")


options_for = same_options  # every dtype of this family takes the same options


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    """8-bit: MatMulNBits with bits=8 for these nodes; fp32: left as MatMul."""
    return with_nodes(options, "nodes_in_8bit" if precision == "8-bit" else "nodes_to_exclude", nodes)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    reason = missing_constant_matmul(model, options.nodes_to_exclude)
    if reason is None and options.rounding == "gptq" and not options.grams_file:
        return NEEDS_CALIBRATION
    return reason


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    four_bit_exclude = [*options.nodes_to_exclude, *options.nodes_in_8bit]
    notes = []
    rounded: dict = {}
    nearest: list[str] = []
    samples = 0
    if options.rounding == "gptq":
        grams = read_grams(options.grams_file)
        samples = grams.samples
        four_bit = constant_2d_matmuls(model, four_bit_exclude)
        model, rounded, nearest = round_weights(model, grams, four_bit, options.block_size)
        notes.append(f"GPTQ rounding: {len(rounded)} MatMuls' 4-bit weights rounded against their inputs on "
                     f"{samples} calibration samples" + (f"; {len(nearest)} to nearest (fewer calibration rows "
                                                         "than input features)" if nearest else ""))
    model = _quantize(model, options, options.bits, four_bit_exclude)
    differ = differing_levels(model, rounded)
    if differ:  # onnxruntime re-rounded them: its blocks' scales are not the ones GPTQ kept
        raise OnnxDtypeError(f"q4 rounding=gptq: onnxruntime's quantizer stored other levels for {len(differ)} "
                             f"MatMuls (first: {differ[0]}); use rounding=nearest")
    if options.nodes_in_8bit:
        others = [n for n in constant_2d_matmuls(model, []) if n not in options.nodes_in_8bit]
        model = _quantize(model, options, 8, others + options.nodes_to_exclude)
        notes.append(f"{len(options.nodes_in_8bit)} MatMuls at 8 bits")
    params = {"bits": options.bits, "block_size": options.block_size, "symmetric": options.symmetric,
              "accuracy_level": options.accuracy_level, "nodes_to_exclude": list(options.nodes_to_exclude),
              "nodes_in_8bit": list(options.nodes_in_8bit), "rounding": options.rounding,
              "gptq_rounded": len(rounded), "gptq_left_nearest": nearest, "calibration_samples": samples,
              "quantizer": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"}
    return Variant(model, params, kept_in_float=list(options.nodes_to_exclude), notes=notes)


def _quantize(model: onnx.ModelProto, options: Options, bits: int, exclude: list[str]) -> onnx.ModelProto:
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=options.block_size, is_symmetric=options.symmetric,
        accuracy_level=options.accuracy_level, nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",))
    node_quantizer = quantizer.node_quantizer  # its per-node kernel call reads one weight: only that one is loaded
    node_quantizer.quantize = weight_loading(node_quantizer.quantize)
    quantizer.process()
    return quantizer.model.model
