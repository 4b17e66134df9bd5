"""Input specialization: fix some inputs to constant values and fold what they decide (`--fix-input NAME=VALUE`).

Why: a streaming model may keep every weight inside If branches, chosen by one of its inputs. onnxruntime's
static calibrator only sees the main graph, so none of those weights can be calibrated. Once the input that
picks the branch is fixed, the If's condition is a constant, the taken branch can be inlined, and its weights
reach the top level where the static recipes and our calibration find them.

The specialized model keeps its interface: the fixed input stays declared (callers keep passing it), the
manifest records the fixed values, and the runtime refuses another value (`fixed_value_problem`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.model import iter_graphs

FOLD_LIMIT = 1 << 16  # elements: fold only small tensors (conditions, shapes), never grow the model with big ones
NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                          "Bernoulli", "Constant"})
# weighted op -> index of its weight input (what static calibration and quantizers look for)
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "LSTM": 1, "GRU": 1}
CONTROL_FLOW = {"If": "If branches", "Loop": "Loop bodies", "Scan": "Scan bodies"}
# ops whose output depends on an input's shape only: fixing that input's value is not what decides the branch
SHAPE_ONLY = frozenset({"Shape", "Size"})
Value = onnx.TensorProto | np.ndarray  # known constants stay TensorProtos until a fold needs their values


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
    state = _State(out)
    overridable = {i.name for i in out.graph.input}  # initializers that are also inputs: the caller may replace them
    known: dict[str, Value] = {t.name: t for t in out.graph.initializer if t.name not in overridable}
    state.specialize_graph(out.graph, {**known, **values})
    # children before parents (reversed depth-first order), so what a dropped subgraph read is unused by then
    dropped = sum(_drop_unused(graph, keep=overridable if graph is out.graph else set())
                  for graph in reversed(list(iter_graphs(out.graph))))
    for graph in iter_graphs(out.graph):
        _prune_value_info(graph)
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
        if path and index is not None and _is_default(node) and len(node.input) > index \
                and node.input[index] in constants:
            self.ops.append(node.op_type)
            self.where.update(p.op_type for p in path if p.op_type in CONTROL_FLOW)
            self.conditions.update(p.input[0] for p in path if p.op_type == "If")
        for sub in _subgraphs(node):
            inner = (constants - {i.name for i in sub.input}) | _constant_names(sub)
            for sub_node in sub.node:
                self.visit(sub_node, inner, [*path, node])


class _State:
    """Specialization of one model: unique names, counters."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.opsets = {o.domain: o.version for o in model.opset_import}
        self.ir_version = model.ir_version
        self.tensor_names = _all_tensor_names(model)
        self.node_names = {n.name for g in iter_graphs(model.graph) for n in g.node if n.name}
        self.folded = 0
        self.inlined = 0

    def specialize_graph(self, graph: onnx.GraphProto, known: dict[str, Value]) -> None:
        """Fold and inline in `graph`, then in its subgraphs; `known`: the constants visible in `graph` (updated)."""
        outputs = {o.name for o in graph.output}
        pending = deque(graph.node)
        kept: list[onnx.NodeProto] = []
        while pending:
            node = pending.popleft()
            if node.op_type == "If" and _is_default(node) and node.input[0] in known:
                inlined = self.inline_if(graph, node, known)
                if inlined is not None:
                    pending.extendleft(reversed(inlined))
                    self.inlined += 1
                    continue
            if node.op_type == "Constant" and _is_default(node):
                value = _constant_value(node, self.opsets, self.ir_version)
                if value is not None:
                    known[node.output[0]] = value
                    kept.append(node)
                    continue
            folded = None if outputs & set(node.output) else self.fold(node, known)
            if folded is not None:
                for name, array in folded.items():
                    graph.initializer.append(numpy_helper.from_array(array, name))
                    known[name] = array
                self.folded += 1
                continue
            for sub in _subgraphs(node):
                state = {i.name for i in sub.input}  # Loop/Scan bodies' inputs hide outer tensors of the same name
                inner = {name: value for name, value in known.items() if name not in state}
                self.specialize_graph(sub, {**inner, **{t.name: t for t in sub.initializer}})
            for name in node.output:
                known.pop(name, None)  # a subgraph's own tensor may shadow an outer constant
            kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)

    def fold(self, node: onnx.NodeProto, known: dict[str, Value]) -> dict[str, np.ndarray] | None:
        """The outputs of a node whose inputs are all small constants, or None (not foldable or failed)."""
        inputs = [name for name in node.input if name]
        if not inputs or node.op_type in NOT_FOLDABLE or not _is_default(node) or _subgraphs(node) \
                or any(name not in known or _size(known[name]) > FOLD_LIMIT for name in inputs):
            return None
        try:
            return _evaluate(node, {name: _array(known[name]) for name in inputs}, self.opsets, self.ir_version)
        except Exception:  # folding is best effort: an op the reference evaluator lacks or rejects stays a node
            return None

    def inline_if(self, graph: onnx.GraphProto, node: onnx.NodeProto, known: dict[str, Value]
                  ) -> list[onnx.NodeProto] | None:
        """The nodes replacing `node` (its taken branch, renamed), or None when its condition is not one value;
        the branch's initializers move to `graph` and become known constants."""
        cond = _array(known[node.input[0]])
        if cond.size != 1:
            return None
        attrs = {a.name: a.g for a in node.attribute}
        branch = onnx.GraphProto()
        branch.CopyFrom(attrs["then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"])
        prefix = node.name or f"If_{node.output[0]}"
        produced = [name for n in branch.node for name in n.output if name]
        mapping: dict[str, str] = {}
        for inner, outer in zip(branch.output, node.output):
            if inner.name in produced and inner.name not in mapping and outer:
                mapping[inner.name] = outer  # the producing node writes the If's output directly
        for name in [*produced, *(t.name for t in branch.initializer),
                     *(s.values.name for s in branch.sparse_initializer)]:
            if name not in mapping:
                mapping[name] = self.unique_tensor(f"{prefix}/{name}")
        for sub_node in branch.node:
            sub_node.input[:] = [mapping.get(name, name) for name in sub_node.input]
            sub_node.output[:] = [mapping.get(name, name) for name in sub_node.output]
            sub_node.name = self.unique_node(f"{prefix}/{sub_node.name or sub_node.op_type}")
            for sub in _subgraphs(sub_node):
                _rename_references(sub, mapping)
        for tensor in branch.initializer:
            tensor.name = mapping[tensor.name]
        for sparse in branch.sparse_initializer:
            sparse.values.name = mapping[sparse.values.name]
        graph.initializer.extend(branch.initializer)
        known.update({t.name: t for t in branch.initializer})
        graph.sparse_initializer.extend(branch.sparse_initializer)
        for info in branch.value_info:
            if info.name in mapping:
                info.name = mapping[info.name]
                graph.value_info.append(info)
        nodes = list(branch.node)
        for inner, outer in zip(branch.output, node.output):
            source = mapping.get(inner.name, inner.name)
            if outer and source != outer:  # an outer tensor, an initializer, or a local given out twice
                name = self.unique_node(f"{prefix}/{outer}")
                nodes.append(helper.make_node("Identity", [source], [outer], name=name))
        return nodes

    def unique_tensor(self, name: str) -> str:
        return _unique(name, self.tensor_names)

    def unique_node(self, name: str) -> str:
        return _unique(name, self.node_names)


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        candidate, index = f"{name}_{index}", index + 1
    taken.add(candidate)
    return candidate


def _rename_references(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename the outer tensors a subgraph reads (and may pass out), except names it defines itself."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    local |= {name for n in graph.node for name in n.output}
    visible = {k: v for k, v in mapping.items() if k not in local}
    if not visible:
        return
    for node in graph.node:
        node.input[:] = [visible.get(name, name) for name in node.input]
        for sub in _subgraphs(node):
            _rename_references(sub, visible)
    for info in (*graph.output, *graph.value_info):
        info.name = visible.get(info.name, info.name)


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: dict[str, int], ir_version: int
              ) -> dict[str, np.ndarray] | None:
    """Run one node on constants with onnx's reference evaluator; None when an output is big or mistyped."""
    from onnx.reference import ReferenceEvaluator

    outputs = [name for name in node.output if name]
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for name, a in feeds.items()]
    graph = helper.make_graph([node], "fold", inputs, [helper.make_empty_tensor_value_info(n) for n in outputs])
    one = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                            ir_version=ir_version)
    inferred = onnx.shape_inference.infer_shapes(one)
    expected = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.output}
    results = ReferenceEvaluator(one).run(None, feeds)
    folded: dict[str, np.ndarray] = {}
    for name, result in zip(outputs, results):
        if not isinstance(result, (np.ndarray, np.generic)):
            return None  # sequences, optionals: not a tensor initializer
        array = np.asarray(result)
        if array.size > FOLD_LIMIT or array.dtype == object \
                or expected.get(name, 0) not in (0, helper.np_dtype_to_tensor_dtype(array.dtype)):
            return None
        folded[name] = array
    return folded


def _constant_value(node: onnx.NodeProto, opsets: dict[str, int], ir_version: int) -> Value | None:
    """A Constant node's tensor: its `value` as is (weights are not decoded), small other forms evaluated."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return attr.t
    if attr.name == "sparse_value":
        return None
    try:
        return (_evaluate(node, {}, opsets, ir_version) or {}).get(node.output[0])
    except Exception:  # an attribute form the reference evaluator rejects: not a known constant
        return None


def _array(value: Value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _size(value: Value) -> int:
    return int(np.prod(value.dims)) if isinstance(value, onnx.TensorProto) else value.size


def _is_default(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _all_tensor_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for graph in iter_graphs(model.graph):
        names |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        names |= {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
        names |= {name for n in graph.node for name in (*n.input, *n.output)}
    return names


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph's nodes read, its subgraphs' included, and its outputs (may be outer tensors)."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names |= set(node.input)
        for sub in _subgraphs(node):
            names |= _outer_reads(sub)
    return names


def _drop_unused(graph: onnx.GraphProto, keep: set[str]) -> int:
    """Remove nodes and initializers nothing reads (what only the untaken branches used); returns nodes removed."""
    used = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if _is_default(node) and not any(name in used for name in node.output if name):
            continue
        used |= set(node.input)
        for sub in _subgraphs(node):
            used |= _outer_reads(sub)
        kept.append(node)
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in used or t.name in keep]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    sparse = [s for s in graph.sparse_initializer if s.values.name in used]
    del graph.sparse_initializer[:]
    graph.sparse_initializer.extend(sparse)
    return dropped


def _prune_value_info(graph: onnx.GraphProto) -> None:
    """Keep value_info only for tensors nodes of this graph still produce (folded ones became initializers)."""
    produced = {name for n in graph.node for name in n.output}
    infos = list({vi.name: vi for vi in reversed(graph.value_info) if vi.name in produced}.values())[::-1]
    del graph.value_info[:]
    graph.value_info.extend(infos)


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
        for sub in _subgraphs(producer):
            stack.extend(_outer_reads(sub))
    return [name for name in _declared_inputs(model) if name in reached]
