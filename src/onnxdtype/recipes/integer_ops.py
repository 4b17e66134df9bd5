"""Rewrites that keep a Q/DQ chain integer: ops onnxruntime's CPU EP has no integer kernel for, spelled with ops
it has (QLinearAdd, QLinearMul, and Clip, which it folds into the QuantizeLinear before it).

Where a static variant quantizes every op onnxruntime can (the search's chain placements), one float op between
two quantized ones costs a DequantizeLinear and a QuantizeLinear around it. PP-OCRv4 det writes its 24 HardSwish
as x * Clip(x + 3, 0, 6) / 6 and its Div stays float: its s8u8 chain placement had 77 Q/DQ left in onnxruntime's
optimized graph, 29 once the Div became a Mul by 1/6. Each rewrite is exact in float; the new tensors get ranges
derived from the calibrated ones, so no calibration is rerun. The search judges and times the result against the
placements without it (a chain costs requantizations: on this CPU QLinearMul was not faster than a float Mul).

Once quantized, a multiplication by a positive scalar constant (the spelled 1/6, HardSigmoid's alpha, a model's
own scalings) needs no kernel at all: its input's 8-bit values, read with their scale times the constant, are its
output. fold_constant_scales drops those QLinearMuls (PP-OCRv4 det: 86 of its equalized chain's 213) and the
requantization each cost: det's s8u8 chain ran 1.04-1.14x -> 1.28-1.38x fp32 at one thread (291 -> 205 integer
kernels), rec's 1.28-1.41x -> 1.61-1.78x, tasks unchanged (bench/static_ablation.py, two runs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.calibration.ranges import CalibrationResult
from onnxdtype.folding import drop_unused
from onnxdtype.model import readers
from onnxdtype.ops import DATA_MOVEMENT_OPS

# Ops onnxruntime runs on 8-bit values only when the Q/DQ around them share one scale: a DequantizeLinear with a
# folded scale before one left cls's MaxPool in float, with a conversion each side.
SAME_SCALE_OPS = frozenset({*DATA_MOVEMENT_OPS, "MaxPool", "Clip", "Relu"})
HARDSWISH_SHIFT, HARDSWISH_CEILING = 3.0, 6.0  # HardSwish(x) = x * Clip(x + 3, 0, 6) / 6 (ONNX's definition)


def integer_spellings(model: onnx.ModelProto, calibration: CalibrationResult
                      ) -> tuple[onnx.ModelProto, CalibrationResult, dict[str, int]]:
    """Division by a scalar constant becomes a multiplication by its reciprocal; HardSwish and HardSigmoid become
    Add/Mul/Clip. Returns the rewritten copy, the ranges of its new tensors, and how many of each were rewritten."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    ranges = dict(calibration.ranges)
    counts = {"Div": 0, "HardSwish": 0, "HardSigmoid": 0}
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: float) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.array(value, np.float32), name)
            graph.initializer.append(inits[name])
        return name

    for node in graph.node:
        rewritten = None
        if node.op_type == "Div" and node.input[1] in inits:
            divisor = numpy_helper.to_array(inits[node.input[1]])
            if divisor.size == 1 and divisor.dtype == np.float32 and divisor.item() != 0.0:
                reciprocal = constant(f"{node.input[1]}/onnxdtype_reciprocal", 1.0 / divisor.item())
                rewritten = [helper.make_node("Mul", [node.input[0], reciprocal], list(node.output), name=node.name)]
        elif node.op_type in ("HardSwish", "HardSigmoid") and node.input[0] in ranges and node.output[0] in ranges:
            rewritten = _spelled(node, ranges, constant)
        if rewritten is None:
            nodes.append(node)
        else:
            counts[node.op_type] += 1
            nodes += rewritten
    del graph.node[:]
    graph.node.extend(nodes)
    return out, dataclasses.replace(calibration, ranges=ranges), {op: n for op, n in counts.items() if n}


def _spelled(node: onnx.NodeProto, ranges: dict[str, tuple[float, float]], constant) -> list[onnx.NodeProto]:
    """HardSwish(x) = x * Clip(x + 3, 0, 6) * (1/6); HardSigmoid(x) = Clip(alpha * x + beta, 0, 1). Ranges of the
    intermediate tensors follow from x's calibrated range (each step is monotonic, or bounded by the output's)."""
    x, y, stem = node.input[0], node.output[0], f"{node.output[0]}/onnxdtype"
    low, high = ranges[x]
    zero = constant("onnxdtype_zero", 0.0)
    if node.op_type == "HardSwish":
        shifted, gate, product = f"{stem}_shifted", f"{stem}_gate", f"{stem}_product"
        ranges[shifted] = (low + HARDSWISH_SHIFT, high + HARDSWISH_SHIFT)
        ranges[gate] = tuple(float(np.clip(v, 0.0, HARDSWISH_CEILING)) for v in ranges[shifted])
        ranges[product] = (ranges[y][0] * HARDSWISH_CEILING, ranges[y][1] * HARDSWISH_CEILING)
        return [helper.make_node("Add", [x, constant("onnxdtype_three", HARDSWISH_SHIFT)], [shifted],
                                 name=f"{node.name}/shift"),
                helper.make_node("Clip", [shifted, zero, constant("onnxdtype_six", HARDSWISH_CEILING)], [gate],
                                 name=f"{node.name}/gate"),
                helper.make_node("Mul", [x, gate], [product], name=f"{node.name}/product"),
                helper.make_node("Mul", [product, constant("onnxdtype_sixth", 1 / HARDSWISH_CEILING)], [y],
                                 name=node.name)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    scaled, shifted = f"{stem}_scaled", f"{stem}_shifted"
    ranges[scaled] = tuple(sorted((low * alpha, high * alpha)))
    ranges[shifted] = (ranges[scaled][0] + beta, ranges[scaled][1] + beta)
    return [helper.make_node("Mul", [x, constant(f"onnxdtype_alpha_{alpha:g}", alpha)], [scaled],
                             name=f"{node.name}/scale"),
            helper.make_node("Add", [scaled, constant(f"onnxdtype_beta_{beta:g}", beta)], [shifted],
                             name=f"{node.name}/shift"),
            helper.make_node("Clip", [shifted, zero, constant("onnxdtype_one", 1.0)], [y], name=node.name)]


def fold_constant_scales(quantized: onnx.ModelProto, source: onnx.ModelProto) -> int:
    """Remove, in place, each Mul of `quantized` by a positive scalar constant that sits between a DequantizeLinear
    and a QuantizeLinear: its consumers read the input's quantized values through one DequantizeLinear with the
    scale times the constant (exact; the Mul's own requantization goes). The constants are read from `source`, the
    float model handed to the quantizer (its weights' quantized copies are rounded). Returns how many."""
    graph = quantized.graph
    factors = _scalar_factors(source)
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)
    outputs = {o.name for o in graph.output}
    dropped: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    renamed: dict[str, str] = {}
    for mul in graph.node:
        if mul.op_type != "Mul" or mul.name not in factors:
            continue
        index, factor = factors[mul.name]
        source_dq = producers.get(renamed.get(mul.input[1 - index], mul.input[1 - index]))  # maybe folded itself
        users = consumers.get(mul.output[0], [])
        if source_dq is None or source_dq.op_type != "DequantizeLinear" or source_dq.input[0] in inits \
                or source_dq.input[1] not in inits or numpy_helper.to_array(inits[source_dq.input[1]]).size != 1 \
                or len(users) != 1 or users[0].op_type != "QuantizeLinear" or mul.output[0] in outputs:
            continue
        requantize = users[0]
        dequantizers = consumers.get(requantize.output[0], [])
        if not dequantizers or any(r.op_type != "DequantizeLinear" or r.output[0] in outputs for r in dequantizers) \
                or any(c.op_type in SAME_SCALE_OPS for r in dequantizers for c in consumers.get(r.output[0], [])):
            continue
        scale_name = f"{mul.name}/onnxdtype_folded_scale"
        scale = numpy_helper.to_array(inits[source_dq.input[1]]) * np.float32(factor)
        inits[scale_name] = numpy_helper.from_array(scale.astype(np.float32), scale_name)
        graph.initializer.append(inits[scale_name])
        inputs = [source_dq.input[0], scale_name, *source_dq.input[2:3]]
        replacements[id(mul)] = producers[dequantizers[0].output[0]] = helper.make_node(
            "DequantizeLinear", inputs, [dequantizers[0].output[0]], name=f"{mul.name}/onnxdtype_folded")
        for dequantizer in dequantizers[1:]:
            renamed[dequantizer.output[0]] = dequantizers[0].output[0]
        dropped |= {id(requantize), *map(id, dequantizers)}
    if not replacements:
        return 0
    kept = [replacements.get(id(n), n) for n in graph.node if id(n) not in dropped]
    for node in kept:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused(graph, set())  # the DequantizeLinears only the folded Muls read, and what only they read
    return len(replacements)


def _scalar_factors(model: onnx.ModelProto) -> dict[str, tuple[int, float]]:
    """Mul node name -> (the input index of its positive finite scalar constant, the constant)."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, tuple[int, float]] = {}
    for node in model.graph.node:
        if node.op_type != "Mul" or not node.name or len(node.input) != 2:
            continue
        for index, name in enumerate(node.input):
            value = numpy_helper.to_array(inits[name]) if name in inits else None
            if value is not None and value.size == 1 and value.dtype == np.float32 and np.isfinite(value).all() \
                    and value.item() > 0 and node.input[1 - index] not in inits:
                found[node.name] = (index, float(value.item()))
    return found
