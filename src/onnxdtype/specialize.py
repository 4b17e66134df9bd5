"""Input specialization: fix some inputs to constant values and fold what they decide (`--fix-input NAME=VALUE`).

Why: a streaming model may keep every weight inside If branches, chosen by one of its inputs. onnxruntime's
static calibrator only sees the main graph, so none of those weights can be calibrated. Once the input that
picks the branch is fixed, the If's condition is a constant, the taken branch can be inlined, and its weights
reach the top level where the static recipes and our calibration find them.

The specialized model keeps its interface: the fixed input stays declared (callers keep passing it), the
manifest records the fixed values, and the runtime refuses another value (`fixed_value_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.folding import Folder, Value, drop_unused, is_default, outer_reads, prune_value_info, subgraphs
from onnxdtype.model import iter_graphs

# weighted op -> index of its weight input (what static calibration and quantizers look for)
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "LSTM": 1, "GRU": 1}
CONTROL_FLOW = {"If": "If branches", "Loop": "Loop bodies", "Scan": "Scan bodies"}
# ops whose output depends on an input's shape only: fixing that input's value is not what decides the branch
SHAPE_ONLY = frozenset({"Shape", "Size"})


@dataclass
class Specialized:
    """The specialized model and what specializing did (recorded in the manifest)."""
    model: onnx.ModelProto
    folded_nodes: int
    inlined_ifs: int
    fixed: dict[str, list | bool | int | float]  # JSON-able fixed values, as `fixed_value_problem` reads them
    dropped_nodes: int = 0  # nodes left unused (the branches not taken read them), removed


def specialize(model: onnx.ModelProto, fixed: dict[str, np.ndarray]) -> Specialized:
    """A copy of `model` with `fixed` inputs treated as constants: small constant subgraphs folded, Ifs with a
    constant condition replaced by their taken branch (nested ones too), unused nodes dropped."""
    values = {name: _checked_value(model, name, value) for name, value in fixed.items()}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    state = Folder(out)
    overridable = {i.name for i in out.graph.input}  # initializers that are also inputs: the caller may replace them
    known: dict[str, Value] = {t.name: t for t in out.graph.initializer if t.name not in overridable}
    state.specialize_graph(out.graph, {**known, **values})
    # children before parents (reversed depth-first order), so what a dropped subgraph read is unused by then
    dropped = sum(drop_unused(graph, keep=overridable if graph is out.graph else set())
                  for graph in reversed(list(iter_graphs(out.graph))))
    for graph in iter_graphs(out.graph):
        prune_value_info(graph)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise OnnxDtypeError(f"specializing produced an invalid model ({str(exc).strip().splitlines()[0]})") from None
    record = {name: value.tolist() for name, value in values.items()}
    return Specialized(out, state.folded, state.inlined, record, dropped)


def parse_fixed_inputs(items: list[str], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """`--fix-input NAME=VALUE` strings as arrays of the input's declared type and (static) shape.

    VALUE is a scalar or a comma list: `1`, `true`, `0.5`, `1,2,3`.
    """
    declared = _declared_inputs(model)
    parsed: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise OnnxDtypeError(f"--fix-input {item!r}: expected NAME=VALUE "
                                 "(VALUE a number, true/false or a comma list)")
        if name in parsed:
            raise OnnxDtypeError(f"--fix-input {name}: given twice")
        info = _input_info(declared, name)
        dtype = helper.tensor_dtype_to_np_dtype(info.elem_type)
        tokens = [t.strip() for t in text.split(",")]
        try:
            flat = np.array([_parse_token(t, dtype) for t in tokens], dtype=dtype)
        except (ValueError, OverflowError):
            raise OnnxDtypeError(f"--fix-input {name}: cannot read {text!r} as {_type_name(info.elem_type)}") from None
        parsed[name] = _shaped(name, flat, info)
    return parsed


def fixed_value_problem(fixed_record: dict, feed: dict[str, np.ndarray]) -> str | None:
    """Why `feed` cannot run a variant specialized for `fixed_record` (a fixed input given another value), or None."""
    for name, recorded in fixed_record.items():
        if name not in feed:
            continue  # onnxruntime reports the missing input itself: it is still declared
        given = np.asarray(feed[name])
        expected = np.asarray(recorded)
        if given.shape != expected.shape or not np.array_equal(given, expected):
            return (f"input '{name}' was fixed to {_short(recorded)} when this variant was built (--fix-input), "
                    f"got {_short(given.tolist())}; use the fp32 model or build a variant for that value")
    return None


def subgraph_weight_summary(model: onnx.ModelProto) -> str | None:
    """Why static calibration misses weights here (weighted ops with constant weights inside If/Loop/Scan bodies)
    and which inputs choose the branches, or None when no such weights exist."""
    found = _SubgraphWeights()
    constants = _constant_names(model.graph)
    for node in model.graph.node:
        found.visit(node, constants, [])
    if not found.ops:
        return None
    ops = "/".join(sorted(set(found.ops)))
    places = " and ".join(CONTROL_FLOW[op] for op in CONTROL_FLOW if op in found.where)
    reason = f"{len(found.ops)} {ops} inside {places}; static calibration cannot reach subgraphs"
    if not found.conditions:
        return reason
    candidates = _inputs_deciding(model, found.conditions)
    if not candidates:
        return f"{reason}, and no graph input value chooses the If branches"
    return f"{reason}; fix the inputs that choose the branch with --fix-input (candidates: {', '.join(candidates)})"


class _SubgraphWeights:
    """Weighted ops with a constant weight (initializer or Constant node, outer scopes included) inside subgraphs."""

    def __init__(self) -> None:
        self.ops: list[str] = []  # op type of each one found
        self.where: set[str] = set()  # control flow op types holding them
        self.conditions: set[str] = set()  # cond inputs of the Ifs holding them: what chooses whether they run

    def visit(self, node: onnx.NodeProto, constants: set[str], path: list[onnx.NodeProto]) -> None:
        index = WEIGHT_INPUT.get(node.op_type)
        if path and index is not None and is_default(node) and len(node.input) > index \
                and node.input[index] in constants:
            self.ops.append(node.op_type)
            self.where.update(p.op_type for p in path if p.op_type in CONTROL_FLOW)
            self.conditions.update(p.input[0] for p in path if p.op_type == "If")
        for sub in subgraphs(node):
            inner = (constants - {i.name for i in sub.input}) | _constant_names(sub)
            for sub_node in sub.node:
                self.visit(sub_node, inner, [*path, node])


def _declared_inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in initializers}


def _input_info(declared: dict[str, onnx.ValueInfoProto], name: str) -> onnx.TypeProto.Tensor:
    info = declared.get(name)
    if info is None:
        raise OnnxDtypeError(f"fixed input '{name}': no such input (the model's inputs: {', '.join(declared)})")
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.elem_type:
        raise OnnxDtypeError(f"fixed input '{name}': not a tensor input; only tensor inputs can be fixed")
    return info.type.tensor_type


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _declared_dims(info: onnx.TypeProto.Tensor) -> list[int | None] | None:
    """The declared shape, None per dynamic dimension; None when no shape is declared."""
    if not info.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in info.shape.dim]


def _checked_value(model: onnx.ModelProto, name: str, value) -> np.ndarray:
    """`value` as an array of the input's declared type and shape, or a one-line error saying how it differs."""
    info = _input_info(_declared_inputs(model), name)
    dtype = helper.tensor_dtype_to_np_dtype(info.elem_type)
    array = np.asarray(value)
    if array.dtype != dtype:
        cast = None if isinstance(value, (np.ndarray, np.generic)) else _exact_cast(array, dtype)
        if cast is None:
            raise OnnxDtypeError(f"fixed input '{name}': given {array.dtype}, the input is declared "
                                 f"{_type_name(info.elem_type)}")
        array = cast
    dims = _declared_dims(info)
    if dims is not None and (array.ndim != len(dims)
                             or any(d is not None and d != s for d, s in zip(dims, array.shape, strict=True))):
        shown = [d if d is not None else "?" for d in dims]
        raise OnnxDtypeError(f"fixed input '{name}': given shape {list(array.shape)}, the input is declared {shown}")
    return array


def _exact_cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """A Python scalar or list in the declared type when that type holds it exactly (1 for int64, True for bool)."""
    try:
        cast = array.astype(dtype)
        return cast if np.array_equal(cast, array) else None
    except (ValueError, TypeError, OverflowError):
        return None


def _parse_token(token: str, dtype: np.dtype):
    """One comma-separated item of a --fix-input value, as the declared element type reads it."""
    if dtype == np.bool_:
        lowered = token.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ValueError(token)
        return lowered in ("true", "1")
    if np.issubdtype(dtype, np.integer):
        return int(token)
    if np.issubdtype(dtype, np.floating):
        return float(token)
    raise ValueError(token)  # strings and other types cannot be given on a command line


def _shaped(name: str, flat: np.ndarray, info: onnx.TypeProto.Tensor) -> np.ndarray:
    """Values in the declared shape: a lone value for a [1] input becomes [1]; one dynamic dimension takes the rest."""
    dims = _declared_dims(info)
    if dims is None:
        return flat.reshape(()) if flat.size == 1 else flat
    fixed = [d if d is not None else 1 for d in dims]
    dynamic = [i for i, d in enumerate(dims) if d is None]
    if dynamic:
        fixed[dynamic[0]] = -1
    known = int(np.prod([d for d in fixed if d != -1]))
    if known == 0 or (flat.size % known if dynamic else flat.size != known):
        shown = [d if d is not None else "?" for d in dims]
        raise OnnxDtypeError(f"--fix-input {name}: {flat.size} value(s) do not fit its declared shape {shown}")
    return flat.reshape(fixed)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors of `graph` holding constants: its initializers and its Constant nodes' outputs."""
    names = {t.name for t in graph.initializer}
    return names | {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}


def _inputs_deciding(model: onnx.ModelProto, conditions: set[str]) -> list[str]:
    """Graph inputs whose values the `conditions` depend on (through values, not shapes), in input order."""
    producers: dict[str, onnx.NodeProto] = {}
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            producers.update({name: node for name in node.output if name})
    inputs = set(_declared_inputs(model))
    reached: set[str] = set()
    seen: set[str] = set()
    stack = list(conditions)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            reached.add(name)
        producer = producers.get(name)
        if producer is None or producer.op_type in SHAPE_ONLY:
            continue
        stack.extend(producer.input)
        for sub in subgraphs(producer):
            stack.extend(outer_reads(sub))
    return [name for name in _declared_inputs(model) if name in reached]
