"""fp32's own noise floor, its second source: the task units whose fp32 reading changes when its weights move by
far less than any integer variant rounds them.

verify.rounding redraws the input; a reading can also sit on an edge in weight space. Each draw moves every float
weight (an initializer of rank >= 2, Constant-node weights included) uniformly within half a step of a symmetric
WEIGHT_NOISE_BITS-bit grid per output channel — a quarter of the step of the 8-bit per-channel grid, the finest
grid onnxdtype's integer dtypes round to. A decision that moves under that is not one the variant can be held to.

Measured (PP-OCRv4 rec, the demo's 11 held-out lines, 12 draws per level; tests/test_real_models.py checks the
line below moves at 10 bits and no rendered line does): the photographed page line 'markers np.zeros like（coins)',
which every static 8-bit variant misreads and which fp32 reads alike under 8 redraws of its input's rounding, moved
in 5 of 12 draws at 10 bits, 8 at 9 bits, 11 at 8 bits, with its weights rounded to bfloat16, and in 2 of 12 under
relative Gaussian noise of 0.1 %; the two other page lines moved too (they already move under the input's
rounding); none of the 8 rendered lines moved at any level down to 8 bits. PP-OCR cls's 11 labels: none moved at
10 bits (two at 0.47/0.53 moved at 8 bits), so the labels its int8 variant changes are still judged. Not drawn:
weights inside If/Loop bodies, and models with more than DRAW_LIMIT of weights (a copy per draw of a model that
large is what its build avoids holding).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxdtype.model import inline_bytes, load_model
from onnxdtype.normalize import constants_to_initializers
from onnxdtype.ops import CONV_OUTPUT_AXIS
from onnxdtype.weights import has_lazy, load_all

WEIGHT_DRAWS = 8  # the line above moved in 5 of 12 draws; 8 miss it with probability (7/12)^8, 1.3 %
WEIGHT_NOISE_BITS = 10
WEIGHT_SEED = 0  # fixed: the same model gives the same floor in every build
DRAW_LIMIT = 256 << 20  # bytes of weights: a larger model is not copied per draw (its build streams its weights)
_OUTPUT_AXIS = {**CONV_OUTPUT_AXIS, "MatMul": -1}  # where each op keeps its output channels


def drawable(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """The model to draw from, its weights in memory (read from its file; lazy weights read into a copy, an
    in-memory model as it is: noisy_copies copies it anyway), or None and why not: more than DRAW_LIMIT of weights."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model, lazy=True)
    if inline_bytes(model) > DRAW_LIMIT:
        return None, f"weights over {DRAW_LIMIT >> 20} MiB: not copied per draw"
    if not has_lazy(model):
        return model, None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    load_all(copy)
    return copy, None


def noisy_copies(model: onnx.ModelProto, draws: int, seed: int = WEIGHT_SEED) -> Iterator[onnx.ModelProto]:
    """`draws` copies of `model`, one at a time, each with its float weights moved (see the module docstring)."""
    base = onnx.ModelProto()
    base.CopyFrom(model)
    constants_to_initializers(base)
    axes = _channel_axes(base.graph)
    weights = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}
    half_steps = {name: _half_step(w, axes.get(name, 0)) for name, w in weights.items()}
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        copy = onnx.ModelProto()
        copy.CopyFrom(base)
        for tensor in copy.graph.initializer:
            if tensor.name in weights:
                w = weights[tensor.name]
                moved = w + half_steps[tensor.name] * rng.uniform(-1.0, 1.0, w.shape)
                tensor.CopyFrom(numpy_helper.from_array(moved.astype(np.float32), tensor.name))
        yield copy


def _half_step(weight: np.ndarray, axis: int) -> np.ndarray:
    """Half the step of a symmetric WEIGHT_NOISE_BITS-bit grid per slice along `axis`, broadcastable to `weight`."""
    axis %= weight.ndim
    others = tuple(i for i in range(weight.ndim) if i != axis)
    largest = np.abs(weight).max(axis=others, keepdims=True)
    return largest / (2 ** (WEIGHT_NOISE_BITS - 1) - 1) / 2


def _channel_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """Per weight read by a weighted op, the axis of its output channels (Gemm by transB); others default to 0."""
    axes: dict[str, int] = {}
    for node in graph.node:
        if len(node.input) < 2:
            continue
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 0 if trans_b else 1
        elif node.op_type in _OUTPUT_AXIS:
            axes[node.input[1]] = _OUTPUT_AXIS[node.op_type]
    return axes
