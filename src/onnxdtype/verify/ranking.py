"""Rank nodes for repair: the error each adds on the data (fp32 vs variant intermediates), each one's share of the
weights, and the fp32 activation peaks (for the fp16 range check).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxdtype.model import iter_scoped_nodes
from onnxdtype.ops import ORT_FLOAT_TYPES
from onnxdtype.verify.evaluate import run, session


def weight_shares(model: onnx.ModelProto) -> dict[str, float]:
    """Each node's share of the model's float weights (constant float inputs it consumes)."""
    sizes: dict[str, int] = {}
    for node, inits in iter_scoped_nodes(model.graph):
        sizes[node.name] = sum(int(np.prod(inits[i].dims)) for i in node.input
                               if i in inits and inits[i].data_type == onnx.TensorProto.FLOAT)
    total = sum(sizes.values()) or 1
    return {name: size / total for name, size in sizes.items()}


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return exposed


def activation_max(model: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    """Largest |value| of every top-level node output of the fp32 model on the data (for the fp16 range check)."""
    outputs = [o for n in model.graph.node for o in n.output if o]
    sess = session(_with_outputs(model, outputs))
    float_outputs = [o.name for o in sess.get_outputs() if o.type in ORT_FLOAT_TYPES]
    peaks = dict.fromkeys(float_outputs, 0.0)
    for feed in feeds:
        for name, value in zip(float_outputs, run(sess, feed, float_outputs)):
            finite = value[np.isfinite(value)]
            if finite.size:
                peaks[name] = max(peaks[name], float(np.abs(finite).max()))
    return peaks


def error_increase(base: onnx.ModelProto, variant: onnx.ModelProto, feeds: list[dict],
                   candidates: list[str]) -> dict[str, float]:
    """For each candidate node (by name, top-level graph), the relative L2 error it adds: error of its output
    minus the largest error among its inputs, comparing fp32 and variant intermediates by tensor name."""
    nodes = {n.name: n for n in base.graph.node if n.name in set(candidates)}
    variant_tensors = {o for n in variant.graph.node for o in n.output} | {i.name for i in variant.graph.input}
    wanted = sorted({t for n in nodes.values() for t in [*n.input, *n.output] if t in variant_tensors})
    if not wanted:
        return {}
    base_sess, var_sess = session(_with_outputs(base, wanted)), session(_with_outputs(variant, wanted))
    base_names = {o.name for o in base_sess.get_outputs()}
    wanted = [t for t in wanted if t in base_names and t in {o.name for o in var_sess.get_outputs()}]
    diff = dict.fromkeys(wanted, 0.0)
    norm = dict.fromkeys(wanted, 0.0)
    for feed in feeds:
        for name, ref, got in zip(wanted, run(base_sess, feed, wanted), run(var_sess, feed, wanted)):
            if ref.shape != got.shape or not np.issubdtype(ref.dtype, np.floating):
                continue
            r, g = ref.astype(np.float64), got.astype(np.float64)
            diff[name] += float(np.nan_to_num((r - g) ** 2, nan=1e30, posinf=1e30).sum())
            norm[name] += float((r * r).sum())
    rel = {t: np.sqrt(diff[t] / norm[t]) if norm[t] > 0 else 0.0 for t in wanted}
    added = {}
    for name, node in nodes.items():
        out_err = max((rel.get(o, 0.0) for o in node.output), default=0.0)
        in_err = max((rel.get(i, 0.0) for i in node.input), default=0.0)
        added[name] = float(out_err - in_err)
    return added
