"""Recurrent state outputs: outputs a caller feeds back as inputs on the next step (LSTM h/c, VAD state, KV cache).

Their values are intermediate: a state may drift while every decision built on it stays right, so SPEC.md
judges them through the task outputs of a step-by-step run. Their own judge, `state`, shows figures and never
decides.
"""

from __future__ import annotations

import re
from typing import ClassVar

import onnx

from onnxdtype.verify.judges.base import register
from onnxdtype.verify.judges.generic import GenericJudge

# output name (full match) -> input names it may feed, first present one wins
RENAMES: list[tuple[str, list[str]]] = [
    (r"state(?:N|_out)", [r"state"]),                                   # Silero VAD v5
    (r"hn", [r"h", r"h0"]),                                             # LSTM / GRU exports
    (r"cn", [r"c", r"c0"]),
    (r"present(?:_key_values)?\.(.+)", [r"past_key_values.\1"]),        # transformers KV cache
    (r"out_state", [r"in_state"]),
    (r"(.+)_out", [r"\1_in"]),
]


def recurrent_pairs(model: onnx.ModelProto) -> dict[str, str]:
    """Output name -> input name for outputs fed back as inputs, matched by name, element type, rank and the
    static dims both declare."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i.type for i in model.graph.input if i.name not in initializers}
    pairs = {}
    for output in model.graph.output:
        for pattern, templates in RENAMES:
            found = re.fullmatch(pattern, output.name)
            if not found:
                continue
            names = [found.expand(t) for t in templates]
            match = next((n for n in names if n in inputs and _compatible(output.type, inputs[n])), None)
            if match:
                pairs[output.name] = match
                break
    return pairs


def _compatible(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    ta, tb = a.tensor_type, b.tensor_type
    if ta.elem_type and tb.elem_type and ta.elem_type != tb.elem_type:
        return False
    if not (ta.HasField("shape") and tb.HasField("shape")):
        return True
    if len(ta.shape.dim) != len(tb.shape.dim):
        return False
    return all(not (x.dim_value > 0 and y.dim_value > 0) or x.dim_value == y.dim_value
               for x, y in zip(ta.shape.dim, tb.shape.dim))


@register
class StateJudge(GenericJudge):
    """OutputStats figures for a fed-back state; the verdict belongs to the task outputs."""
    name = "state"
    PARAMS: ClassVar[dict[str, tuple]] = {}

    def failure(self, required: float) -> str | None:
        return None
