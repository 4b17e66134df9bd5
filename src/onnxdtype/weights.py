"""Weights that stay on disk: a model with external data is loaded without it, each weight read when a recipe
needs that one weight, and a model is written one tensor at a time into its own .data file.

Why: `quantize --dtype all` on a 2.5 GiB model with external data peaked at 9.1x the model's size (bench/memory.py)
because every stage held whole copies of the weights (the loaded base, each normalized model, the recipe's copy,
protobuf serializing it). Streamed, a stage holds the graph and the weight it is working on.

A lazy tensor is an ordinary external-data TensorProto whose entries also give `basepath` (the absolute folder of
its data file, a key onnx itself defines) and, when a recipe changed its type without touching its bytes (fp16),
`onnxdtype_stored_type` (the type its bytes are in: they are converted when read or written). Nothing outside
this process sees one: `write_streaming` points every tensor it writes at the written model's own .data file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

STORED_TYPE = "onnxdtype_stored_type"
INLINE_BELOW = 1024  # bytes: smaller in-memory tensors stay in the .onnx file (onnx's own size_threshold)
ALIGN_ABOVE = 1 << 20  # tensors this large start on an ALIGNMENT boundary, so onnxruntime can map them (onnx does too)
ALIGNMENT = 1 << 16
FP16_SMALLEST, FP16_LARGEST = 5.96e-08, 65504.0  # onnxruntime's converter's min_positive_val and max_finite_val
T = TypeVar("T")


def data_file(path: Path) -> Path:
    """Where a model's external data lives: `<name>.onnx.data` beside `<name>.onnx` (every file this tool writes)."""
    return path.with_name(path.name + ".data")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """model.iter_graphs, which this module cannot import (model.py imports it)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield from _graphs(sub)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor that can hold weights: initializers and node attribute tensors, subgraphs included."""
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def is_lazy(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(e.key == "basepath" for e in tensor.external_data)


def has_lazy(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in all_tensors(model))


def attach(model: onnx.ModelProto, folder: Path) -> None:
    """Make the external tensors of a model loaded from `folder` (without its data) lazy, after checking each points
    at data that exists inside the folder: the errors onnx's own loader gives (ValidationError, ValueError)."""
    from onnx.external_data_helper import ExternalDataInfo, _open_external_data_fd

    folder = folder.resolve()
    sizes: dict[str, int] = {}
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(tensor)
        if info.location not in sizes:  # onnx's check: present, a file, inside the model's folder
            with os.fdopen(_open_external_data_fd(str(folder), info.location, tensor.name, True), "rb") as handle:
                sizes[info.location] = os.fstat(handle.fileno()).st_size
        offset, length = int(info.offset or 0), info.length
        length = int(length) if length is not None else sizes[info.location] - offset
        if offset + length > sizes[info.location]:
            raise ValueError(f"tensor {tensor.name!r}: offset {offset} + length {length} exceeds available data "
                             f"({sizes[info.location]} bytes in {info.location})")
        _set_entries(tensor, {"location": info.location, "offset": str(offset), "length": str(length),
                              "basepath": str(folder)})
        if length < INLINE_BELOW:  # shapes, axes, scalars: in memory, as write_streaming leaves them
            _load(tensor)


def _set_entries(tensor: onnx.TensorProto, entries: dict[str, str]) -> None:
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _read_bytes(entries: dict[str, str]) -> bytes:
    with open(Path(entries["basepath"]) / entries["location"], "rb") as handle:
        handle.seek(int(entries.get("offset", 0)))
        return handle.read(int(entries["length"]))


def to_float16(values: np.ndarray) -> np.ndarray:
    """What onnxruntime's fp16 converter makes of fp32 values (convert_np_to_float16 at its defaults: magnitudes
    below its smallest positive raised to it, finite ones beyond the fp16 range clamped), so a streamed fp16 variant
    has the bytes the in-memory conversion gives; in a few passes, where its eight took 30 s for 0.75 GiB."""
    values = np.asarray(values, np.float32)
    with np.errstate(over="ignore"):  # overflows to inf are clamped below
        converted = values.astype(np.float16)
    magnitude = np.abs(values)
    for wrong, replacement in (((magnitude > 0) & (magnitude < FP16_SMALLEST), FP16_SMALLEST),
                               ((magnitude > FP16_LARGEST) & (magnitude < np.inf), FP16_LARGEST)):
        if wrong.any():
            converted[wrong] = np.copysign(np.float32(replacement), values[wrong]).astype(np.float16)
    return converted


def read_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values, read from its data file when it is lazy (the tensor itself is left as it is)."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    entries = _entries(tensor)
    stored = int(entries.get(STORED_TYPE, tensor.data_type))
    held = onnx.TensorProto(name=tensor.name, data_type=stored, dims=tensor.dims, raw_data=_read_bytes(entries))
    values = numpy_helper.to_array(held)
    if stored != tensor.data_type:
        if (stored, tensor.data_type) != (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise ValueError(f"tensor {tensor.name!r}: no conversion from type {stored} to {tensor.data_type}")
        values = to_float16(values)
    return values


def _tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    entries = _entries(tensor)
    if STORED_TYPE not in entries:
        return _read_bytes(entries)
    return read_array(tensor).tobytes()


def weight_loading(quantize_node: Callable[[onnx.NodeProto, list[onnx.GraphProto]], T]
                   ) -> Callable[[onnx.NodeProto, list[onnx.GraphProto]], T]:
    """Wrap an onnxruntime per-node quantizer method (node, graph stack) so that a lazy weight (input 1) is in
    memory while it runs, and only then.

    The weight is read into a scratch graph pushed innermost on the stack, where onnxruntime looks first; the
    tensors it adds there (packed weights, scales) move to the weight's own graph. Reading it into the model itself
    would not do: protobuf keeps every byte ever set in a message's arena until the whole model is freed (measured:
    the 4-bit recipe then held all the weights, 1.4x the model, after it had quantized the last one)."""
    def quantize(node: onnx.NodeProto, graph_stack: list[onnx.GraphProto]) -> T:
        found = next(((g, t) for g in reversed(graph_stack) for t in g.initializer
                      if len(node.input) > 1 and t.name == node.input[1]), None)
        if found is None or not is_lazy(found[1]):
            return quantize_node(node, graph_stack)
        owner, lazy = found
        scratch = onnx.GraphProto()
        weight = scratch.initializer.add()
        weight.CopyFrom(lazy)
        weight.raw_data = _tensor_bytes(lazy)
        weight.data_location = onnx.TensorProto.DEFAULT
        del weight.external_data[:]
        replaced = quantize_node(node, [*graph_stack, scratch])
        added = scratch.initializer[1:]
        if added:  # quantized: onnxruntime drops a quantized weight from its graph's inputs (old IR versions)
            owner.initializer.extend(added)
            kept_inputs = [i for i in owner.input if i.name != lazy.name]
            if len(kept_inputs) != len(owner.input):
                del owner.input[:]
                owner.input.extend(kept_inputs)
        return replaced
    return quantize


def load_all(model: onnx.ModelProto) -> None:
    """Read every lazy tensor into memory, in place: for the recipes that need a whole in-memory model."""
    for tensor in all_tensors(model):
        if is_lazy(tensor):
            _load(tensor)


def loaded(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a lazy tensor with its values read in, as `load_all` leaves it (the tensor itself stays lazy)."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    _load(copy)
    return copy


def _load(tensor: onnx.TensorProto) -> None:
    raw = _tensor_bytes(tensor)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = raw


def stored_as(tensor: onnx.TensorProto, stored_type: int) -> None:
    """Mark a lazy tensor whose type a converter changed (its bytes still of `stored_type`)."""
    entries = _entries(tensor)
    if stored_type != tensor.data_type:
        entries[STORED_TYPE] = str(stored_type)
    _set_entries(tensor, entries)


def write_streaming(model: onnx.ModelProto, path: Path, restore: bool = True) -> None:
    """Write `model` to `path` with its weights in `path`.data, one tensor at a time: lazy tensors are copied (or
    converted) from their files, in-memory ones over INLINE_BELOW bytes moved out. The caller's model is left as
    it was (in-memory tensors in memory, lazy ones lazy), unless `restore` is False: a copy about to be dropped
    keeps its in-memory tensors pointing at the written file (putting them back held a 0.25 GiB model's weights
    three times over at once: the moved bytes, the arena protobuf keeps until the message is freed, the restored)."""
    data_path = data_file(path)
    sources = {Path(e["basepath"]) / e["location"] for e in map(_entries, filter(is_lazy, all_tensors(model)))}
    if any(source.resolve() == data_path.resolve() for source in sources if source.exists()):
        raise ValueError(f"{path}: would overwrite the data file its own weights are read from")
    moved: list[tuple[onnx.TensorProto, bytes | dict[str, str]]] = []
    try:
        with open(data_path, "wb") as out:
            for tensor in all_tensors(model):
                lazy = is_lazy(tensor)
                if not lazy and len(tensor.raw_data) < INLINE_BELOW:
                    continue
                content = _tensor_bytes(tensor) if lazy else tensor.raw_data
                if len(content) > ALIGN_ABOVE and out.tell() % ALIGNMENT:
                    out.write(b"\0" * (ALIGNMENT - out.tell() % ALIGNMENT))
                offset = out.tell()
                out.write(content)
                if lazy or restore:
                    moved.append((tensor, _entries(tensor) if lazy else content))
                if not lazy:
                    tensor.ClearField("raw_data")
                _set_entries(tensor, {"location": data_path.name, "offset": str(offset),
                                      "length": str(len(content))})
                del content
        os.chmod(data_path, 0o644)
        with open(path, "wb") as handle:
            handle.write(model.SerializeToString())
    finally:
        for tensor, before in moved:
            if isinstance(before, dict):
                _set_entries(tensor, before)
            else:
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.DEFAULT
                tensor.raw_data = before
