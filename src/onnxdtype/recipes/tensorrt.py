"""int8 for TensorRT: static int8 QDQ laid out as TensorRT's explicit quantization wants it, from the cached calibration.

The layout is the one NVIDIA Model-Optimizer's ONNX PTQ emits for int8 (`backend="modelopt"` runs Model-Optimizer
itself when it is installed; it is never required):

* Q/DQ pairs only on the inputs of the ops TensorRT runs as int8 kernels (QDQ_OPS): Conv, ConvTranspose, Gemm and
  MatMul with a constant weight. The weight is int8, symmetric, per output channel (Conv axis 0, ConvTranspose
  axis 1, MatMul/Gemm the N axis), behind a DequantizeLinear; the activation gets a per-tensor symmetric int8
  QuantizeLinear -> DequantizeLinear pair (zero point 0, scale = max|x| / 127 from the calibration).
* No Q on outputs: TensorRT fuses DQ -> Conv/MatMul -> bias, Relu, Add... and runs the epilogue in float. Biases stay
  float (TensorRT takes no quantized bias); Relu/Clip stay explicit (QDQKeepRemovableActivations). Only the chosen
  ops read a pair's DQ output: a residual Add or a graph output reading the same tensor gets the float tensor
  (onnxruntime's quantizer hands the DQ output to every consumer).
* Nothing around data movement and shape ops (DATA_MOVEMENT_OPS: Reshape, Transpose, Concat, Gather, Slice, Pad,
  Resize, Flatten, Squeeze, Unsqueeze, Split, Expand, Tile...): TensorRT moves Q/DQ across them itself; pairs there
  would only add reformat layers. Normalizations, Softmax, elementwise ops and pooling stay float too.
* MatMul of two activations (attention's QK^T and PV) stays float unless `activation_matmuls=True` (Model-Optimizer
  quantizes them when the sequence is <= 512; MiniLM's worst held-out cosine 0.9954 -> 0.9951 with them).
* Everything else fp32, or fp16 with `float_type="fp16"` (Model-Optimizer's default high precision): onnxruntime's
  float16 converter after the quantizer, at opset 19 (the first whose Q/DQ take fp16 scales, so no Cast sits
  between a DequantizeLinear and its Conv), with the float16 recipe's guard (nodes fed by initializers beyond
  ±65504 stay fp32) and its fp32 -> fp16 -> fp32 round-trip removal.

It reuses the static recipe's calibration (`ranges_file`, one pass per module for every static dtype: same
normalize passes, same tensors) and its equalization: per-channel ranges of the inputs of quantized ops are
migrated into the weights (SmoothQuant factors, a float Mul before the Q; exact in float), so one per-tensor
scale fits every channel (held-out worst cosine without / with it: MiniLM 0.982 / 0.995, PP-OCRv4 det text map
0.863 / 0.947). Only the input side: Conv outputs are never quantized here. The static recipe's float-tail rule
is off by default: it exists so no graph output passes through one per-tensor scale, and no output of a quantized
op is quantized here (the tiny detector's box and score channels keep cosine > 0.995 without it); `float_tail=True`
brings it back. Equalized tensors take their range from the per-channel min/max statistics, so for them the
calibration method does not matter; for the rest it does (PP-OCRv4 det: minmax 0.947, entropy 0.983).

Two onnxruntime quirks are worked around: its QDQ Gemm resets beta to 1 even when the bias stays float (put
back), and it gives a quantized graph output's name to the DequantizeLinear (given back to the float tensor).

`precision="fp8"` (for a DType `fp8`, through `options_for`) writes the same layout in FLOAT8E4M3FN, as
Model-Optimizer's int8_to_fp8 does: scales * 127/448, FP8 zero points, weights re-quantized per channel from their
float values; opset 19 (21 with fp16). onnx and onnxruntime's CPU EP represent and run it (reference kernels,
no speed), but onnxruntime 1.32 at its default graph optimizations drops a Relu in front of an FP8
QuantizeLinear (a level-2 rewrite rule; disabling Level2_RuleBasedTransformer, or loading at ORT_ENABLE_BASIC,
gives the right values): MiniLM 0.9965 either way, PP-OCRv4 det 0.938 at basic but 0.718 at default. Whether
TensorRT builds FP8 kernels from it (Ada/Hopper GPUs) cannot be checked on a CPU-only machine.

QDQ runs on any EP, so the variant is verified here like every other; on this CPU the int8 file runs 0.6-0.8x
as fast as fp32 (symmetric int8 activations take onnxruntime's slower S8S8 kernels): the int8 speed is TensorRT's
to show.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import onnx

from onnxdtype.calibration.ranges import ORT_METHODS, CalibrationResult, weighted_nodes
from onnxdtype.model import needs_external_data, opset_version, write_model
from onnxdtype.ops import CONV_OUTPUT_AXIS, KERNEL_WEIGHT_INPUT
from onnxdtype.recipes import float16, static
from onnxdtype.recipes.base import NotApplicable, Variant, choice, flag, names, with_nodes
from onnxdtype.recipes.qdq import (
    NEEDS_CALIBRATION,
    cached_ranges,
    equalize,
    float_tail,
    named_copy,
    no_weights_reason,
    quantize_static_problem,
    quantize_with_ranges,
)

NAME = "tensorrt"
PASSES = static.PASSES  # so both are built from one normalized model and one calibration file
KIND = "quantize"
HIGHER_PRECISIONS = ("fp32",)
LAZY_WEIGHTS = False
QDQ_OPS = tuple(KERNEL_WEIGHT_INPUT)
FLOAT_TYPES = ("fp32", "fp16")
PRECISIONS = ("int8", "fp8")
FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN
BACKENDS = ("onnxruntime", "modelopt")
FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take fp16 scales, and FLOAT8 types, from opset 19
FP8_FP16_OPSET = 21  # FLOAT8 Q/DQ with fp16 scales: opset 21 (as Model-Optimizer raises it)
MODELOPT = "modelopt.onnx.quantization"
MODELOPT_MISSING = ("NVIDIA Model-Optimizer is not installed (the nvidia-modelopt package with its onnx extra); "
                    "the onnxruntime backend builds the same layout")
_IR_FOR_OPSET = {FP16_QDQ_OPSET: 9, FP8_FP16_OPSET: 10}  # the IR version each opset needs
_MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy", "percentile": "entropy", "mse": "entropy"}  # its own


@dataclass
class Options:
    ranges_file: str | None = None  # the cached calibration (calibration.calibrate's result.path), as static's
    method: str = "minmax"  # minmax | entropy | percentile | mse: how the ranges file was computed
    precision: str = "int8"  # int8 | fp8 (E4M3: the int8 layout, scales max|x|/448; TensorRT on Ada/Hopper GPUs)
    float_type: str = "fp32"  # fp32 | fp16: precision of everything not quantized
    backend: str = "onnxruntime"  # onnxruntime | modelopt (NVIDIA Model-Optimizer's ONNX PTQ, when installed)
    equalize: bool = True  # migrate per-channel input ranges into the weights (onnxruntime backend)
    float_tail: bool = False  # keep the last weighted op before each output, and what follows it, float
    activation_matmuls: bool = False  # Q/DQ on MatMuls of two activations (attention) too
    nodes_to_exclude: list[str] = field(default_factory=list)  # kept fp32 (not quantized, not fp16)

    def __post_init__(self) -> None:
        choice("TensorRT float_type", self.float_type, FLOAT_TYPES)
        choice("TensorRT precision", self.precision, PRECISIONS)
        choice("TensorRT backend", self.backend, BACKENDS)
        choice("calibration method", self.method, ORT_METHODS)
        for name in ("equalize", "float_tail", "activation_matmuls"):
            flag(f"TensorRT {name}", getattr(self, name))
        names("TensorRT nodes_to_exclude", self.nodes_to_exclude)


def options_for(dtype_name: str, options: Options) -> Options:
    """int8 -> int8 Q/DQ; fp8 (when the DType table has it) -> the same layout in FLOAT8E4M3FN."""
    return dataclasses.replace(options, precision="fp8" if dtype_name.startswith("fp8") else "int8")


def keep(options: Options, nodes: list[str], precision: str) -> Options:
    return with_nodes(options, "nodes_to_exclude", nodes)


def check(model: onnx.ModelProto, options: Options) -> str | None:
    chosen = selected_nodes(model, options)
    if not chosen:
        if not weighted_nodes(model):
            return no_weights_reason(model)
        return "its only weighted ops feed the outputs directly, and the float-tail rule keeps them float" \
            if options.float_tail else "every weighted op is excluded"
    if options.backend == "modelopt":
        if options.precision != "int8":
            return "the modelopt backend takes onnxdtype's calibration for int8 only (its fp8 mode calibrates itself)"
        missing = modelopt_problem()
        if missing:
            return missing
    elif quantize_static_problem():
        return quantize_static_problem()
    if not options.ranges_file:
        return NEEDS_CALIBRATION
    return None


def modelopt_problem() -> str | None:
    """Why Model-Optimizer's ONNX PTQ cannot be used here, or None when it can."""
    try:
        importlib.import_module(MODELOPT)
    except ImportError:
        return MODELOPT_MISSING
    except Exception as exc:  # installed but broken (a missing onnx_graphsurgeon, a CUDA-only import...)
        return f"NVIDIA Model-Optimizer does not import: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def selected_nodes(model: onnx.ModelProto, options: Options) -> list[str]:
    """Names of the nodes whose inputs get Q/DQ: weighted Conv/ConvTranspose/MatMul/Gemm (and activation
    MatMuls when asked), minus the excluded ones and, with float_tail, the tail."""
    excluded = set(options.nodes_to_exclude) | (set(float_tail(model)) if options.float_tail else set())
    chosen = [n.name or n.output[0] for n in weighted_nodes(model)]
    if options.activation_matmuls:
        chosen += [n.name or n.output[0] for n in model.graph.node
                   if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and (n.name or n.output[0]) not in chosen]
    return [name for name in chosen if name not in excluded]


def build(model: onnx.ModelProto, options: Options) -> Variant | NotApplicable:
    reason = check(model, options)
    if reason:
        return NotApplicable(reason)
    calibration = cached_ranges(model, options.ranges_file, options.method)
    model = named_copy(model)  # quantize_static edits its input; node selection needs names
    chosen = selected_nodes(model, options)
    unquantized = set(options.nodes_to_exclude) | {n.name for n in weighted_nodes(model) if n.name not in chosen}
    kept = [n.name for n in model.graph.node if n.name in unquantized]
    notes: list[str] = []
    if options.backend == "modelopt":
        quantized, quantizer = _modelopt(model, options, calibration, kept), _modelopt_version()
    else:
        if options.equalize:
            model, calibration, counts = _equalize_inputs(model, calibration, chosen)
            if counts:
                notes.append(f"equalized the inputs of {counts} quantized ops (per-channel ranges moved into weights)")
        quantized = _onnxruntime(model, options, calibration, chosen)
        if options.precision == "fp8":
            quantized, fp8_notes = to_fp8(model, quantized, options.float_type)
            notes += fp8_notes
        if restore_gemm_beta(model, quantized):
            notes.append("Gemm beta restored (onnxruntime's quantizer resets it to 1 even when the bias stays float)")
        restored = dequantized_only_for(quantized, set(chosen))
        if restored:
            notes.append(f"{restored} inputs of float ops fed the float tensor again, not its Q/DQ copy")
        quantizer = "onnxruntime.quantization.quantize_static (QDQ, TensorRT layout)"
        if options.float_type == "fp16":
            quantized, fp16_notes = to_fp16(quantized, kept)
            notes += fp16_notes
    notes.append("Q/DQ on the inputs of Conv/ConvTranspose/MatMul/Gemm only; outputs and every other op in "
                 f"{options.float_type}" + (" (MatMuls of two activations too)" if options.activation_matmuls else ""))
    params = {"backend": options.backend, "quantizer": quantizer, "float_type": options.float_type,
              "precision": options.precision, "activations": f"{options.precision} symmetric per-tensor",
              "weights": f"{options.precision} symmetric per-channel",
              "qdq_ops": list(QDQ_OPS), "activation_matmuls": options.activation_matmuls,
              "method": calibration.method, "ranges_file": Path(options.ranges_file).name,
              "calibration_samples": calibration.samples_used, "equalize": options.equalize and
              options.backend == "onnxruntime", "float_tail": options.float_tail,
              "nodes_to_exclude": list(options.nodes_to_exclude), "quantized_nodes": len(chosen)}
    return Variant(quantized, params, kept_in_float=kept, notes=notes)


def _equalize_inputs(model: onnx.ModelProto, calibration: CalibrationResult, chosen: list[str]
                     ) -> tuple[onnx.ModelProto, CalibrationResult, int]:
    """The static recipe's equalization restricted to the inputs of the quantized ops: only their channel
    statistics are handed over, so Conv outputs (never quantized here) are not rescaled for nothing."""
    weighted = {n.name for n in weighted_nodes(model)} & set(chosen)
    inputs = {n.input[0] for n in model.graph.node if n.name in weighted}
    channels = {name: stats for name, stats in calibration.channels.items() if name in inputs}
    equalized, result, (_, inputs_done), _ = equalize(model, dataclasses.replace(calibration, channels=channels),
                                                   weighted)
    return equalized, dataclasses.replace(result, channels=calibration.channels), inputs_done


def _onnxruntime(model: onnx.ModelProto, options: Options, calibration: CalibrationResult, chosen: list[str]
                 ) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType

    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(QDQ_OPS),  # Q/DQ on inputs only
        "QuantizeBias": False,  # TensorRT wants float biases
        "QDQKeepRemovableActivations": True,  # Relu/Clip stay in the graph for TensorRT to fuse
        "QDQDisableWeightAdjustForInt32Bias": True,  # no int32 bias, so no weight scale adjustment for it
        "QDQOpTypePerChannelSupportToAxis": dict(CONV_OUTPUT_AXIS),  # output channels
        "MatMulConstBOnly": not options.activation_matmuls,
    }
    return quantize_with_ranges(
        model, calibration,
        op_types_to_quantize=list(QDQ_OPS),
        nodes_to_quantize=chosen,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options=extra,
    )


def restore_gemm_beta(source: onnx.ModelProto, quantized: onnx.ModelProto) -> int:
    """onnxruntime's QDQ Gemm sets beta to 1 assuming it folds beta into a quantized bias; with QuantizeBias off the
    float bias stays as it was, so C would lose its factor. Put each Gemm's beta back; returns how many."""
    betas = {n.name: next((a.f for a in n.attribute if a.name == "beta"), 1.0)
             for n in source.graph.node if n.op_type == "Gemm"}
    restored = 0
    for node in quantized.graph.node:
        if node.op_type == "Gemm" and node.name in betas:
            attr = next((a for a in node.attribute if a.name == "beta"), None)
            if (attr.f if attr is not None else 1.0) != betas[node.name]:
                if attr is None:
                    node.attribute.append(onnx.helper.make_attribute("beta", betas[node.name]))
                else:
                    attr.f = betas[node.name]
                restored += 1
    return restored


def dequantized_only_for(model: onnx.ModelProto, chosen: set[str]) -> int:
    """Give the float tensor back to the consumers of an activation's Q/DQ pair that are not `chosen`.

    onnxruntime's quantizer hands the DequantizeLinear output to every consumer of a quantized tensor (a residual
    Add, a Shape...) and, when the tensor is a graph output, renames its producer's output so the DQ output takes
    the graph output's name. Here only the chosen compute ops read the DQ output; everything else, graph outputs
    included, reads the float tensor as before. Returns how many inputs (and outputs) were given back.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    changed = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight's DequantizeLinear
        original, dequantized = q.input[0], dq.output[0]
        if dequantized in graph_outputs:  # swap the names back: the producer writes the graph output again
            renamed = f"{dequantized}/onnxdtype_dequantized"
            for node in graph.node:
                if node is dq:
                    continue
                node.output[:] = [dequantized if name == original else name for name in node.output]
                if node.name in chosen:
                    node.input[:] = [renamed if name == dequantized else name for name in node.input]
                node.input[:] = [dequantized if name == original else name for name in node.input]
            dq.output[0] = renamed
            changed += 1
            continue
        for node in graph.node:
            if node is not q and node.name not in chosen and dequantized in node.input:
                node.input[:] = [original if name == dequantized else name for name in node.input]
                changed += 1
    return changed


def to_fp8(source: onnx.ModelProto, model: onnx.ModelProto, float_type: str) -> tuple[onnx.ModelProto, list[str]]:
    """The int8 layout in FLOAT8E4M3FN, as Model-Optimizer's int8_to_fp8: every scale * 127/448 (max|x| maps to 448),
    zero points FP8 zeros; weights re-quantized from their float values in `source` (per output channel)."""
    import ml_dtypes
    import numpy as np
    from onnx import numpy_helper

    from onnxdtype.normalize import raise_opset

    target = FP8_FP16_OPSET if float_type == "fp16" else FP16_QDQ_OPSET  # FP8 Q/DQ from 19; with fp16 scales, 21
    notes = []
    if opset_version(model) < target:
        notes.append(f"opset {opset_version(model)} -> {target} (FLOAT8E4M3FN Q/DQ)")
        model = raise_opset(model, target)
    model.ir_version = max(model.ir_version, _IR_FOR_OPSET[target])
    floats = {t.name: t for t in source.graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()

    def replace(name: str, tensor: onnx.TensorProto) -> None:
        inits[name].CopyFrom(tensor)

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_name, zero_name, data = node.input[1], node.input[2], node.input[0]
        int8_scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        scale = (int8_scale * 127.0 / FP8_MAX).astype(np.float32)
        if node.op_type == "DequantizeLinear" and data in inits and data not in done:  # a weight
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            weight_int8 = numpy_helper.to_array(inits[data])
            shape = [1] * weight_int8.ndim
            if scale.ndim:
                shape[axis] = -1
            original = floats.get(data.removesuffix("_quantized"))
            weight = numpy_helper.to_array(original).astype(np.float32) if original is not None and \
                tuple(original.dims) == weight_int8.shape else weight_int8.astype(np.float32) * int8_scale.reshape(shape)
            fp8 = np.clip(weight / scale.reshape(shape), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
            replace(data, numpy_helper.from_array(fp8, data))
            done.add(data)
        if scale_name not in done:
            replace(scale_name, numpy_helper.from_array(scale, scale_name))
            done.add(scale_name)
        if zero_name not in done:
            zeros = np.zeros(tuple(inits[zero_name].dims), ml_dtypes.float8_e4m3fn)
            replace(zero_name, numpy_helper.from_array(zeros, zero_name))
            done.add(zero_name)
    del model.graph.value_info[:]  # Q outputs / DQ inputs changed type; inference redoes them
    notes.append("FLOAT8E4M3FN Q/DQ: the int8 layout with max|x| mapped to 448")
    return model, notes


def to_fp16(model: onnx.ModelProto, keep_fp32: list[str]) -> tuple[onnx.ModelProto, list[str]]:
    """Everything float of a QDQ model in fp16 (graph inputs/outputs stay fp32), Q/DQ scales included."""
    from onnxdtype.normalize import raise_opset

    notes = []
    fp8 = any(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in model.graph.initializer)
    target = FP8_FP16_OPSET if fp8 else FP16_QDQ_OPSET
    if opset_version(model) < target:
        notes.append(f"opset {opset_version(model)} -> {target} (fp16 Q/DQ scales)")
        model = raise_opset(model, target)
    model.ir_version = max(model.ir_version, _IR_FOR_OPSET[target])
    converted, _, fp16_notes = float16.convert(model, keep_io_types=True, keep_fp32=keep_fp32, sort=True)
    return converted, notes + ["the rest in fp16 (onnxruntime.transformers.float16)"] + fp16_notes


def _modelopt(model: onnx.ModelProto, options: Options, calibration: CalibrationResult, kept: list[str]
              ) -> onnx.ModelProto:
    """Model-Optimizer's int8 ONNX PTQ on the normalized model: it places the Q/DQ (its own TensorRT-guided rules)
    and converts the rest to `float_type`; our calibration decides every scale, handed over as TensorRT's native
    calibration cache (its calibration_cache_path), which replaces the scales of its own calibration pass."""
    from onnxdtype.calibration.tensorrt_table import EMPTY_RANGE, write_native_cache

    quantize = importlib.import_module(MODELOPT).quantize
    amax = {name: max(abs(low), abs(high)) for name, (low, high) in calibration.ranges.items()}
    amax = {name: (r if r > 0 else EMPTY_RANGE) for name, r in amax.items() if math.isfinite(r)}
    with TemporaryDirectory(prefix="onnxdtype-modelopt-") as tmp:
        source, out, cache = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx", Path(tmp) / "calibration.cache"
        write_model(model, source)
        write_native_cache(cache, amax, calibration.method)
        quantize(onnx_path=str(source), quantize_mode="int8", calibration_cache_path=str(cache),
                 calibration_method=_MODELOPT_METHODS[calibration.method], calibration_eps=["cpu"],
                 high_precision_dtype=options.float_type,
                 nodes_to_exclude=[f"^{re.escape(name)}$" for name in kept],  # it reads them as patterns
                 use_external_data_format=needs_external_data(model), output_path=str(out), log_level="WARNING")
        return onnx.load(str(out), load_external_data=True)


def _modelopt_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"modelopt.onnx.quantization.quantize (int8), nvidia-modelopt {version('nvidia-modelopt')}"
    except PackageNotFoundError:  # a source checkout
        return "modelopt.onnx.quantization.quantize (int8)"
