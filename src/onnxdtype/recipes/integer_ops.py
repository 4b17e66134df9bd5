"""Rewrites that keep a Q/DQ chain integer: ops onnxruntime's CPU EP has no integer kernel for, spelled with ops
it has (QLinearAdd, QLinearMul, and Clip, which it folds into the QuantizeLinear before it).

Where a static variant quantizes every op onnxruntime can (the search's chain placements), one float op between
two quantized ones costs a DequantizeLinear and a QuantizeLinear around it. PP-OCRv4 det writes its 24 HardSwish
as x * Clip(x + 3, 0, 6) / 6 and its Div stays float: its s8u8 chain placement had 77 Q/DQ left in onnxruntime's
optimized graph, 29 once the Div became a Mul by 1/6. Each rewrite is exact in float; the new tensors get ranges
derived from the calibrated ones, so no calibration is rerun. The search judges and times the result against the
placements without it (a chain costs requantizations: on this CPU QLinearMul was not faster than a float Mul).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.calibration.ranges import CalibrationResult

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
