"""Calibration and evaluation samples read from the user's files and checked against the model's inputs.

Static quantization is only as good as the data its ranges come from, and a wrong array (name, dtype,
layout) otherwise fails far from its cause, inside onnxruntime; so every sample is checked against the
model's declared inputs and every mistake is one line naming the file, the input and what was expected.

Accepted: a folder of .npz files (one feed each, arrays keyed by input name), one .npz whose arrays carry a
leading sample axis, a folder of .npy files (single-input models), or a folder of images with a
preprocessing spec. Samples are read lazily, one at a time, every time the set is iterated, so a large
calibration set never sits in memory; a set has a fingerprint of its contents for caching and a
deterministic split into calibration and held-out evaluation parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxdtype.errors import OnnxDtypeError
from onnxdtype.images import IMAGE_SUFFIXES, PRESETS, ImageSpec, load_image_spec, read_image

HELD_OUT_FRACTION = 0.2  # of the calibration samples, kept for verification when no evaluation data is given


@dataclass(frozen=True)
class ModelInput:
    """A graph input as the model declares it; None dims are dynamic, a None shape has unknown rank."""
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype} [{dims}]"


def model_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    """The inputs a feed must provide (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)) if tensor.elem_type else np.dtype("float32")
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in tensor.shape.dim) if tensor.HasField("shape") else None
        found.append(ModelInput(vi.name, dtype, shape))
    return found


@dataclass(frozen=True)
class _Item:
    """One sample: a file, or one index along the sample axis of a single .npz."""
    path: Path
    index: int | None = None

    @property
    def key(self) -> str:
        return self.path.name if self.index is None else f"{self.path.name}#{self.index}"


class SampleSet:
    """Samples of one source, read lazily and checked as they are read; iterable any number of times."""

    def __init__(self, source: Path, kind: str, items: list[_Item], inputs: list[ModelInput],
                 spec: ImageSpec | None = None, digests: dict[Path, str] | None = None) -> None:
        self.source, self.kind, self.items, self.inputs, self.spec = source, kind, items, inputs, spec
        self._digests = digests if digests is not None else {}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.kind == "npz-batch":
            yield from _stream_npz_batch(self.source, self.inputs, [item.index for item in self.items])
            return
        for item in self.items:
            if self.kind == "npz-files":
                feed = _read_npz(item.path)
            elif self.kind == "npy-files":
                feed = {self.inputs[0].name: _read_npy(item.path)}
            else:
                feed = {self.inputs[0].name: read_image(item.path, self.spec, self.inputs[0].dtype)}
            check_feed(feed, self.inputs, str(item.path))
            yield feed

    @property
    def fingerprint(self) -> str:
        """sha256 of the files' bytes, the sample keys and the resolved preprocessing spec."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.kind.encode())
            digest.update(json.dumps(dataclasses.asdict(self.spec) if self.spec else None, sort_keys=True).encode())
            for item in self.items:
                if item.path not in self._digests:
                    self._digests[item.path] = _file_digest(item.path)
                digest.update(f"{item.key}:{self._digests[item.path]};".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def split(self, eval_fraction: float = HELD_OUT_FRACTION) -> tuple[SampleSet, SampleSet]:
        """(calibration, held-out evaluation) parts, the same for the same file names whatever the order
        files were listed in: samples are ranked by a hash of their key and the last `eval_fraction` held out.

        Fewer than two samples leave the held-out part empty (calibration needs at least one).
        """
        if not 0.0 <= eval_fraction < 1.0:
            raise OnnxDtypeError(f"eval fraction must be in [0, 1), got {eval_fraction}")
        held_count = min(len(self.items) - 1, math.ceil(len(self.items) * eval_fraction)) if len(self.items) > 1 else 0
        ranked = sorted(self.items, key=lambda item: hashlib.sha256(item.key.encode()).hexdigest())
        held = set(ranked[len(ranked) - held_count:]) if held_count else set()
        return (self._subset([i for i in self.items if i not in held]),
                self._subset([i for i in self.items if i in held]))

    def _subset(self, items: list[_Item]) -> SampleSet:
        return SampleSet(self.source, self.kind, items, self.inputs, self.spec, self._digests)

    def describe(self) -> dict:
        """What the manifest records about the data."""
        return {"source": str(self.source), "format": self.kind, "samples": len(self.items),
                "spec": dataclasses.asdict(self.spec) if self.spec else None, "fingerprint": self.fingerprint}


def module_path(path: str | Path | dict, module: str, modules: int, what: str) -> Path:
    """The data path for one module: its entry in a dict, DATA/<module>/ when that folder exists, else DATA."""
    if isinstance(path, dict):
        if module not in path:
            raise OnnxDtypeError(f"{what}: no data given for module {module} (given: {', '.join(path)})")
        return Path(path[module])
    own = Path(path) / module
    if own.is_dir():
        return own
    if modules > 1:
        raise OnnxDtypeError(f"{what} {path}: with several modules it needs one subfolder per module "
                             f"({module}/ missing)")
    return Path(path)


def load_samples(path: str | Path, model: onnx.ModelProto, spec: str | Path | dict | ImageSpec | None = None
                 ) -> SampleSet:
    """The samples at `path` for `model`: a folder of .npz / .npy / images, or one .npz with a sample axis.

    `spec` (images only): a preset name, a .json/.toml file, a dict or an ImageSpec; see ImageSpec.
    """
    path = Path(path)
    inputs = model_inputs(model)
    if not inputs:
        raise OnnxDtypeError("the model has no inputs to feed calibration data to")
    if not path.exists():
        raise OnnxDtypeError(f"{path}: no such calibration data file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise OnnxDtypeError(f"{path}: a single calibration file must be .npz with a leading sample axis; "
                                 "otherwise give a folder of .npz, .npy or image files")
        _refuse_spec(spec, path)
        return SampleSet(path, "npz-batch", [_Item(path, i) for i in range(_npz_batch_size(path, inputs))], inputs)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    by_kind = {
        "npz-files": [p for p in files if p.suffix.lower() == ".npz"],
        "npy-files": [p for p in files if p.suffix.lower() == ".npy"],
        "images": [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
    }
    present = [kind for kind, found in by_kind.items() if found]
    if not present:
        raise OnnxDtypeError(f"{path}: no .npz, .npy or image files in this folder")
    if len(present) > 1:
        raise OnnxDtypeError(f"{path}: mixes {' and '.join(k.split('-')[0] for k in present)} files; "
                             "keep one kind per folder")
    kind = present[0]
    items = [_Item(p) for p in by_kind[kind]]
    if kind == "npz-files":
        _refuse_spec(spec, path)
        return SampleSet(path, kind, items, inputs)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise OnnxDtypeError(f"{path}: {kind.split('-')[0]} files feed single-input models, this one has inputs "
                             f"{names}; give .npz files with one array per input")
    if kind == "npy-files":
        _refuse_spec(spec, path)
        return SampleSet(path, kind, items, inputs)
    if spec is None:
        raise OnnxDtypeError(f"{path}: images need a preprocessing spec (--calib-spec {'|'.join(PRESETS)}|FILE)")
    return SampleSet(path, kind, items, inputs, resolve_image_spec(load_image_spec(spec), inputs[0]))


def _refuse_spec(spec: object, path: Path) -> None:
    if spec is not None:
        raise OnnxDtypeError(f"{path}: a preprocessing spec applies to image folders only")


def resolve_image_spec(spec: ImageSpec, model_input: ModelInput) -> ImageSpec:
    """Fill layout, size and dtype from the input's own declaration; refuse what contradicts it."""
    name, shape = model_input.name, model_input.shape
    if shape is not None and len(shape) != 4:
        raise OnnxDtypeError(f"input '{name}' is {model_input.describe()}; images feed 4-D NCHW or NHWC inputs")
    layout = spec.layout
    if layout == "auto":
        if shape is not None and shape[1] == 3:
            layout = "NCHW"
        elif shape is not None and shape[3] == 3:
            layout = "NHWC"
        else:
            raise OnnxDtypeError(f"input '{name}' is {model_input.describe()}: set layout NCHW or NHWC in the spec")
    height_width = None if shape is None else (shape[2:4] if layout == "NCHW" else shape[1:3])
    size = spec.size
    if spec.resize != "short-side" and size is None:
        if height_width is None or None in height_width:
            raise OnnxDtypeError(f"input '{name}' is {model_input.describe()} with no static height/width: "
                                 "give size [height, width] in the spec (or resize 'short-side')")
        size = (int(height_width[0]), int(height_width[1]))
    dtype = str(model_input.dtype)
    if spec.dtype is not None and np.dtype(spec.dtype) != model_input.dtype:
        raise OnnxDtypeError(f"spec dtype {spec.dtype} contradicts input '{name}', which is {model_input.describe()}")
    return dataclasses.replace(spec, layout=layout, size=size, dtype=dtype)


def check_feed(feed: dict[str, np.ndarray], inputs: list[ModelInput], where: str) -> None:
    """Refuse, in one line naming `where` and the input, a feed the model would not take."""
    by_name = {i.name: i for i in inputs}
    names = ", ".join(by_name)
    for key in feed:
        if key not in by_name:
            raise OnnxDtypeError(f"{where}: '{key}' is not an input of the model (its inputs: {names})")
    for model_input in inputs:
        if model_input.name not in feed:
            raise OnnxDtypeError(f"{where}: no array for input '{model_input.name}' (the model's inputs: {names})")
        array = feed[model_input.name]
        shape = model_input.shape
        if array.dtype != model_input.dtype:
            raise OnnxDtypeError(f"{where}: input '{model_input.name}' is {array.dtype}, "
                                 f"the model expects {model_input.describe()}")
        if shape is not None and (array.ndim != len(shape) or any(d is not None and d != a
                                                                  for d, a in zip(shape, array.shape))):
            raise OnnxDtypeError(f"{where}: input '{model_input.name}' has shape {list(array.shape)}, "
                                 f"the model expects {model_input.describe()}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise OnnxDtypeError(f"{where}: input '{model_input.name}' contains NaN or Inf")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unreadable(path: Path, what: str, exc: BaseException) -> OnnxDtypeError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return OnnxDtypeError(f"{path}: not a readable {what} ({reason})")


_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except _READ_ERRORS as exc:
        raise _unreadable(path, ".npz file", exc) from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, ".npy file", exc) from None


def _npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(stream)


def _npz_batch_size(path: Path, inputs: list[ModelInput]) -> int:
    """Samples in a single .npz: its arrays' shared leading axis, after checking names, ranks, dims, dtypes."""
    sizes: dict[str, int] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {m[:-4]: m for m in archive.namelist() if m.endswith(".npy")}
            for name in arrays:
                if name not in {i.name for i in inputs}:
                    raise OnnxDtypeError(f"{path}: '{name}' is not an input of the model "
                                         f"(its inputs: {', '.join(i.name for i in inputs)})")
            for model_input in inputs:
                if model_input.name not in arrays:
                    raise OnnxDtypeError(f"{path}: no array for input '{model_input.name}' "
                                         f"(the model's inputs: {', '.join(i.name for i in inputs)})")
                with archive.open(arrays[model_input.name]) as stream:
                    shape, _, dtype = _npy_header(stream)
                _check_batch_header(path, model_input, shape, dtype)
                sizes[model_input.name] = shape[0]
    except _READ_ERRORS as exc:
        raise _unreadable(path, ".npz file", exc) from None
    if len(set(sizes.values())) > 1:
        counts = ", ".join(f"{name}: {n}" for name, n in sizes.items())
        raise OnnxDtypeError(f"{path}: arrays hold different numbers of samples along axis 0 ({counts})")
    count = next(iter(sizes.values()))
    if count == 0:
        raise OnnxDtypeError(f"{path}: holds no samples (axis 0 has length 0)")
    return count


def _check_batch_header(path: Path, model_input: ModelInput, shape: tuple[int, ...], dtype: np.dtype) -> None:
    expected = model_input.shape
    if dtype.hasobject:
        raise OnnxDtypeError(f"{path}: array '{model_input.name}' holds Python objects, not numbers")
    if dtype != model_input.dtype:
        raise OnnxDtypeError(f"{path}: input '{model_input.name}' is {dtype}, the model expects {model_input.describe()}")
    if expected is not None and (len(shape) != len(expected) + 1 or any(
            d is not None and d != a for d, a in zip(expected, shape[1:]))):
        raise OnnxDtypeError(f"{path}: array '{model_input.name}' has shape {list(shape)}; a single .npz holds "
                             f"samples along axis 0: expected [samples, {model_input.describe().split('[')[1]}")


def _stream_npz_batch(path: Path, inputs: list[ModelInput], indices: list[int]) -> Iterator[dict[str, np.ndarray]]:
    """The samples at `indices` (ascending) of a single .npz, reading each array's member one sample at a time."""
    wanted = set(indices)
    try:
        with zipfile.ZipFile(path) as archive, contextlib.ExitStack() as members:
            readers = {i.name: _sample_reader(archive, members, path, i.name) for i in inputs}
            for index in range(max(indices, default=-1) + 1):
                feed = {name: read(index) for name, read in readers.items()}  # in order: skipped samples too
                if index in wanted:
                    check_feed(feed, inputs, f"{path} (sample {index})")
                    yield feed
    except _READ_ERRORS as exc:
        raise _unreadable(path, ".npz file", exc) from None


def _sample_reader(archive: zipfile.ZipFile, members: contextlib.ExitStack, path: Path, name: str):
    """index -> that sample of array `name`; called with ascending indices, it reads the member sequentially."""
    stream = members.enter_context(archive.open(f"{name}.npy"))
    shape, fortran, dtype = _npy_header(stream)
    if fortran:  # column-major: one sample is not contiguous, so the array is read whole
        whole = np.load(path, allow_pickle=False)[name]
        return lambda index: np.ascontiguousarray(whole[index])
    nbytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    return lambda index: np.frombuffer(stream.read(nbytes), dtype=dtype).reshape(shape[1:]).copy()
