"""Loading and saving ONNX files safely, and walking graphs including If/Loop/Scan subgraphs.

Saving is atomic (temp folder inside the destination folder, then rename) so an interrupted build
never leaves a half-written variant, and models over the protobuf limit go to external data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import onnx.defs
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import first_line
from onnxdtype.ops import WEIGHT_OPS
from onnxdtype.weights import all_tensors, attach, data_file, has_lazy, is_lazy, load_all, read_array, write_streaming

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes; protobuf refuses to serialize a message over 2 GiB
TEMP_PREFIX = ".onnxdtype-tmp-"
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
# Ops whose presence means the file is already quantized or reduced: not an fp32 base.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "MatMulNBits", "MatMulBnb4", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "QLinearAdd", "QLinearMul", "GatherBlockQuantized",
})


def load_model(path: str | Path, lazy: bool = False) -> onnx.ModelProto:
    """Load an ONNX file with its external data, turning every way it can be broken into one clear error.

    `lazy`: external data stays in its file, each tensor a reference read when needed (weights.py); the model
    then holds the graph only (a 2.5 GiB model's weights were copied 9 times over by the build)."""
    path = Path(path)
    if not path.exists():
        raise OnnxDtypeError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxDtypeError(f"{path}: is a folder, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=not lazy)
        if lazy:
            attach(model, path.parent)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise OnnxDtypeError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    except FileNotFoundError as exc:
        raise OnnxDtypeError(f"{path}: external data file missing ({first_line(exc)})") from None
    except OSError as exc:
        raise OnnxDtypeError(f"{path}: cannot read ({first_line(exc)})") from None
    except onnx.checker.ValidationError as exc:  # external data missing, not a file, or outside the model's folder
        raise OnnxDtypeError(f"{path}: bad external data ({first_line(exc)})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxDtypeError(f"{path}: not an ONNX model (no graph nodes)")
    garbled = _non_text_name(model)
    if garbled:
        raise OnnxDtypeError(f"{path}: not a readable ONNX model ({garbled} is not UTF-8 text)")
    newest = onnx.defs.onnx_opset_version()
    if opset_version(model) > newest:
        raise OnnxDtypeError(f"{path}: opset {opset_version(model)} is newer than this onnx {onnx.__version__} "
                             f"supports (up to {newest}); upgrade onnx and onnxruntime, or export at opset {newest}")
    return model


def _non_text_name(model: onnx.ModelProto) -> str | None:
    """The first name that is not valid UTF-8 (protobuf hands such proto2 strings over as bytes; onnxruntime
    and JSON both choke on them), or None."""
    def named(kind: str, values) -> str | None:
        bad = next((v for v in values if isinstance(v, bytes)), None)
        return None if bad is None else f"{kind} {bad!r}"

    checks = [("opset domain", [o.domain for o in model.opset_import]),
              ("metadata", [t for p in model.metadata_props for t in (p.key, p.value)])]
    for graph in iter_graphs(model.graph):
        checks += [("graph name", [graph.name]),
                   ("tensor name", [v.name for v in (*graph.input, *graph.output, *graph.value_info)]),
                   ("initializer name", [t.name for t in graph.initializer])]
        for node in graph.node:
            checks += [("node name", [node.name, node.op_type, node.domain]),
                       ("tensor name", [*node.input, *node.output]), ("attribute name", [a.name for a in node.attribute])]
    return next((found for kind, values in checks if (found := named(kind, values))), None)


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If branches, Loop/Scan bodies) below it, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes of `graph` (not its subgraphs) that read it, in graph order."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def iter_scoped_nodes(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto] | None = None
                      ) -> Iterator[tuple[onnx.NodeProto, dict[str, onnx.TensorProto]]]:
    """Every node (subgraphs included) with the initializers visible to it: its graph's and the enclosing ones'."""
    visible = {**(outer or {}), **{t.name: t for t in graph.initializer}}
    for node in graph.node:
        yield node, visible
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                yield from iter_scoped_nodes(sub, visible)


def iter_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in iter_graphs(model.graph):
        yield from graph.node


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in iter_nodes(model))


def opset_version(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def is_float_initializer(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in FLOAT_TYPES


def float_weight_count(model: onnx.ModelProto) -> int:
    """Number of float parameters, in initializers and Constant nodes, subgraphs included."""
    total = 0
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if is_float_initializer(init):
                total += int(np.prod(init.dims)) if init.dims else 1
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                        total += int(np.prod(attr.t.dims)) if attr.t.dims else 1
    return total


def base_precision_problem(model: onnx.ModelProto) -> str | None:
    """Why this model is not an fp32 base (already quantized, or stored in fp16), or None when it is one."""
    quantized = sorted({n.op_type for n in iter_nodes(model)} & QUANTIZED_OPS)
    if quantized:
        return f"already quantized (has {', '.join(quantized)}); give the fp32 export"
    counts: Counter[int] = Counter()
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_type in FLOAT_TYPES:
                counts[init.data_type] += int(np.prod(init.dims)) if init.dims else 1
    if counts and counts.most_common(1)[0][0] == onnx.TensorProto.FLOAT16:
        return "weights are stored in fp16; give the fp32 export"
    return nonfinite_weight_problem(model)


def nonfinite_weight_problem(model: onnx.ModelProto) -> str | None:
    """NaN in any float initializer, or ±Inf in one feeding a weight op: the fp32 model computes NaN from it,
    so no variant can be verified against it. (-Inf elsewhere, as in attention masks, is legitimate.)"""
    consumers: dict[str, onnx.NodeProto] = {}
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.op_type in WEIGHT_OPS:
                for name in node.input:
                    consumers.setdefault(name, node)
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                continue
            try:
                values = _float_values(init)
            except ValueError as exc:  # raw bytes that do not fit the declared type or shape
                return f"initializer '{init.name}' is corrupt ({first_line(exc)})"
            if values.size == 0:
                continue
            low, high = values.min(), values.max()  # NaN propagates: two reductions, no copy
            if np.isnan(low) or np.isnan(high):
                return f"initializer '{init.name}' holds NaN; the fp32 model itself computes NaN (fix the export)"
            node = consumers.get(init.name)
            if node is not None and (np.isinf(low) or np.isinf(high)):
                return (f"weight '{init.name}' of {node.op_type} node '{node.name or node.output[0]}' holds Inf; "
                        f"the fp32 model itself computes Inf/NaN (fix the export)")
    return None


def _float_values(tensor: onnx.TensorProto) -> np.ndarray:
    if is_lazy(tensor):
        return read_array(tensor).ravel()
    if tensor.raw_data:
        dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                 onnx.TensorProto.DOUBLE: np.float64}[tensor.data_type]
        return np.frombuffer(tensor.raw_data, dtype)  # no copy, large weights included
    return numpy_helper.to_array(tensor).ravel()




def constant_2d_matmuls(model: onnx.ModelProto, exclude: list[str]) -> list[str]:
    """Names (or output names) of MatMul nodes whose second input is a constant 2-D float weight."""
    found: list[str] = []
    for node, inits in iter_scoped_nodes(model.graph):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT \
                and node.name not in exclude:
            found.append(node.name or node.output[0])
    return found


def missing_constant_matmul(model: onnx.ModelProto, exclude: list[str]) -> str | None:
    """Why the 4-bit weight-only quantizers would change nothing here, or None when they have work."""
    if constant_2d_matmuls(model, exclude):
        return None
    return "no MatMul with a constant 2-D weight (Gemm included, after rewriting); 4-bit weight-only recipes need one"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: str | Path) -> str:
    """The digest the manifest records for a model: its .onnx bytes followed by its .data file's, when it has one,
    so a swapped or corrupted external data file is caught like a changed model."""
    path = Path(path)
    digest = hashlib.sha256()
    for part in (path, data_file(path)):
        if part == path or part.exists():
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@dataclass
class SavedFile:
    """A model file written to its final place: what the manifest records about it."""
    path: Path
    bytes: int
    sha256: str
    data_file: Path | None = None


@contextlib.contextmanager
def temp_dir_in(folder: Path) -> Iterator[Path]:
    """A temp folder inside `folder` (same filesystem, so renames are atomic), always removed."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model(model: onnx.ModelProto, path: Path, single_file: bool = False) -> None:
    """Serialize to `path` (not atomic: callers write into a temp folder); with external data when too large or
    when its weights are lazy, streamed into the .data file one tensor at a time (onnx.save_model moved every
    weight out of the model and back: two copies of a large model at once).

    `single_file`: lazy weights are read into the one .onnx file when they fit one protobuf, so a variant of a base
    given as one file is one file too though the build streamed it; a copy holds them, freed on return (the model
    stays lazy)."""
    if single_file and has_lazy(model) and inline_bytes(model) <= EXTERNAL_DATA_THRESHOLD:
        model = _loaded_copy(model)
    if needs_external_data(model):
        write_streaming(model, path)
    else:
        with open(path, "wb") as handle:
            handle.write(model.SerializeToString())


def remove_model(path: Path) -> None:
    """Delete a model file and its external data file, whichever exist."""
    for part in (path, data_file(path)):
        part.unlink(missing_ok=True)


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers (subgraphs included): a cheap stand-in for ByteSize(), which walks everything."""
    total = 0
    for graph in iter_graphs(model.graph):
        for t in graph.initializer:
            total += len(t.raw_data) or 8 * (len(t.float_data) + len(t.int64_data) + len(t.double_data)) \
                + 4 * len(t.int32_data)
    return total


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of weights one .onnx file of the model would hold: those in memory and its lazy ones at their type's
    size (a streamed fp16 weight's bytes on disk are still fp32's)."""
    lazy = sum(int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in all_tensors(model) if is_lazy(t))
    return model_bytes(model) + lazy


def _loaded_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its lazy weights read in, as a copy: protobuf keeps bytes set on a message until the whole
    message is freed (weights.weight_loading), so reading them into the caller's model would keep them."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    load_all(copy)
    return copy


def too_large_to_serialize(model: onnx.ModelProto) -> bool:
    """The weights it holds in memory exceed one protobuf (lazy weights are references: they do not count), so onnx's
    shape inference, which takes a serialized model, refuses it."""
    return model_bytes(model) > EXTERNAL_DATA_THRESHOLD


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Too large for one protobuf, or its weights are lazy: either way its file needs a .data file beside it."""
    return too_large_to_serialize(model) or has_lazy(model)


def stage(tmp_file: Path, dest: Path) -> SavedFile:
    """What a finished model in a temp folder will be at `dest`: its external data named for `dest`, its size and
    sha256 (with the data file). The manifest records these before `publish` gives the file its name."""
    data = data_file(tmp_file)
    dest_data = data_file(dest)
    if data.exists() and data.name != dest_data.name:  # the model names its data file: name the one it will have
        _rename_external_data(tmp_file, data.name, dest_data.name)
    size = tmp_file.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return SavedFile(dest, size, model_sha256(tmp_file), dest_data if data.exists() else None)


def publish(tmp_file: Path, dest: Path, staged: SavedFile | None = None) -> SavedFile:
    """Move a finished model (and its .data file) from a temp folder to `dest` atomically, data first."""
    staged = staged or stage(tmp_file, dest)
    data = data_file(tmp_file)
    dest_data = data_file(dest)
    if data.exists():
        os.replace(data, dest_data)
    elif dest_data.exists():
        dest_data.unlink()  # a stale .data from an earlier, larger build would mislead readers
    os.replace(tmp_file, dest)
    return staged


def _rename_external_data(path: Path, old: str, new: str) -> None:
    """Point every tensor of the model file at `path` whose external data is in `old` to `new` (weights not read)."""
    model = onnx.load(str(path), load_external_data=False)
    tensors = [t for g in iter_graphs(model.graph) for t in g.initializer]
    tensors += [a.t for n in iter_nodes(model) for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())


def save_model(model: onnx.ModelProto, dest: Path) -> SavedFile:
    """Write a model to `dest` atomically."""
    with temp_dir_in(dest.parent) as tmp:
        tmp_file = tmp / dest.name
        write_model(model, tmp_file)
        return publish(tmp_file, dest)


@dataclass
class ModelFacts:
    """What `inspect` shows: the model's interface and contents."""
    path: Path
    opset: int
    ir_version: int
    producer: str
    inputs: list[tuple[str, str, list[str | int]]]
    outputs: list[tuple[str, str, list[str | int]]]
    op_counts: Counter
    float_params: int
    file_bytes: int
    base_problem: str | None


def _value_info_row(vi: onnx.ValueInfoProto) -> tuple[str, str, list[str | int]]:
    tt = vi.type.tensor_type
    dims: list[str | int] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim]
    return vi.name, onnx.TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "?", dims


def model_facts(path: Path, model: onnx.ModelProto) -> ModelFacts:
    inits = {i.name for i in model.graph.initializer}
    return ModelFacts(
        path=path,
        opset=opset_version(model),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_value_info_row(v) for v in model.graph.input if v.name not in inits],
        outputs=[_value_info_row(v) for v in model.graph.output],
        op_counts=op_counts(model),
        float_params=float_weight_count(model),
        file_bytes=path.stat().st_size,
        base_problem=base_precision_problem(model),
    )
