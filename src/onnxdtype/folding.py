"""Constant folding and If inlining for input specialization (specialize.py): the graph rewriting it needs.

Folding is best effort and small: nodes whose inputs are all constant are evaluated one at a time (onnx's
reference evaluator) when their outputs stay under FOLD_LIMIT elements; an If whose condition is constant is
replaced by its taken branch, with the branch's names made unique in the outer graph.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxdtype.model import iter_graphs
from onnxdtype.weights import read_array

FOLD_LIMIT = 1 << 16  # elements: fold only small tensors (conditions, shapes), never grow the model with big ones
NOT_FOLDABLE = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                          "Bernoulli", "Constant"})
Value = onnx.TensorProto | np.ndarray  # known constants stay TensorProtos until a fold needs their values


class Folder:
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
            if node.op_type == "If" and is_default(node) and node.input[0] in known:
                inlined = self.inline_if(graph, node, known)
                if inlined is not None:
                    pending.extendleft(reversed(inlined))
                    self.inlined += 1
                    continue
            if node.op_type == "Constant" and is_default(node):
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
            for sub in subgraphs(node):
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
        if not inputs or node.op_type in NOT_FOLDABLE or not is_default(node) or subgraphs(node) \
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
            for sub in subgraphs(sub_node):
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
        for sub in subgraphs(node):
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
    return read_array(value) if isinstance(value, onnx.TensorProto) else value


def _size(value: Value) -> int:
    return int(np.prod(value.dims)) if isinstance(value, onnx.TensorProto) else value.size


def is_default(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
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


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph's nodes read, its subgraphs' included, and its outputs (may be outer tensors)."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names |= set(node.input)
        for sub in subgraphs(node):
            names |= outer_reads(sub)
    return names


def drop_unused(graph: onnx.GraphProto, keep: set[str]) -> int:
    """Remove nodes and initializers nothing reads (what only the untaken branches used); returns nodes removed."""
    used = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if is_default(node) and not any(name in used for name in node.output if name):
            continue
        used |= set(node.input)
        for sub in subgraphs(node):
            used |= outer_reads(sub)
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


def prune_value_info(graph: onnx.GraphProto) -> None:
    """Keep value_info only for tensors nodes of this graph still produce (folded ones became initializers)."""
    produced = {name for n in graph.node for name in n.output}
    infos = list({vi.name: vi for vi in reversed(graph.value_info) if vi.name in produced}.values())[::-1]
    del graph.value_info[:]
    graph.value_info.extend(infos)
