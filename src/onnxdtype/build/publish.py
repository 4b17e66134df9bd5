"""Writes into the output folder: the fp32 base, each finished variant, and their manifest entries.

A variant is entered in the manifest with its sha256 before it takes its final name, so a build killed
between the two leaves a file the manifest vouches for, or none.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import onnx

from onnxdtype import __version__
from onnxdtype.build.plan import Module, size_with_data, streams_weights
from onnxdtype.dtype import DType
from onnxdtype.manifest import update_manifest
from onnxdtype.model import model_sha256, publish, save_model, stage, temp_dir_in
from onnxdtype.naming import variant_filename
from onnxdtype.results import RECORDED, Status, VariantResult


def place_base(m: Module, model: onnx.ModelProto, out: Path, force: bool, single_file: bool) -> dict:
    """Put the fp32 base into the output folder as <name>.onnx unless it is there, and list it: a single-file base
    as a byte-identical copy, one with external data written from `model` (its weights streamed)."""
    target = out / f"{m.name}.onnx"
    if target.resolve() != m.path.resolve():
        if streams_weights(m.path) or not single_file:
            save_model(model, target)
        elif not target.exists() or force or model_sha256(target) != model_sha256(m.path):
            with temp_dir_in(out) as tmp:
                shutil.copyfile(m.path, tmp / target.name)
                publish(tmp / target.name, target)
    entry = {"file": target.name, "bytes": size_with_data(target), "sha256": model_sha256(target)}
    update_manifest(out, lambda data: _set_base(data, m.name, entry))
    return entry


def publish_variant(out: Path, result: VariantResult, keep_failed: bool) -> None:
    """Give a built variant its final name (failed ones only with keep_failed), listed in the manifest first."""
    if not (result.file and (result.status == Status.OK or keep_failed)):
        result.file = None
        return
    built, target = Path(result.file), out / variant_filename(result.module, DType(result.dtype))
    staged = stage(built, target)
    result.file, result.sha256, result.bytes = target.name, staged.sha256, staged.bytes
    record(out, result, None)  # the manifest vouches for these bytes before they take the name
    publish(built, target, staged)


def record(out: Path, result: VariantResult, progress: Callable[[VariantResult], None] | None) -> VariantResult:
    """Write one finished result into the manifest (ok, failed, not_applicable), then report it."""
    if result.status in RECORDED:
        entry = {k: v for k, v in asdict(result).items() if k not in ("module", "dtype", "base_bytes")}
        if not result.file:
            entry.update(file=None, bytes=None, sha256=None)
        update_manifest(out, lambda data: _set_variant(data, result.module, result.dtype, entry))
    if progress:
        progress(result)
    return result


def _set_base(data: dict, name: str, base: dict) -> None:
    entry = data["modules"].setdefault(name, {"variants": {}})
    entry["base"] = base
    entry.setdefault("variants", {})
    data["versions"] = versions()


def _set_variant(data: dict, module: str, dtype: str, entry: dict) -> None:
    data["modules"].setdefault(module, {"variants": {}}).setdefault("variants", {})[dtype] = entry
    data["versions"] = versions()


def versions() -> dict[str, str]:
    import onnxruntime as ort

    return {"onnxdtype": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
