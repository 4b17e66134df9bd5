"""Which file runs for a module at a dtype: explicit file, manifest, naming conventions, fallback or build.

Folders published for onnxdtype, usls (`det-q8.onnx`, `det.q8.onnx`) and transformers.js (`onnx/model_quantized.onnx`)
work unchanged. A file the manifest lists is loaded only when its sha256 still matches, so a truncated copy or a
swapped file is refused instead of silently giving other numbers. The one place the runtime reaches into the build
side is `missing="build"`, imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from onnxdtype.dtype import INFO, DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import MANIFEST_NAME, confined_path, folder_lock, read_manifest
from onnxdtype.model import model_sha256
from onnxdtype.naming import (
    Layout,
    candidate_names,
    layout_of,
    misread_note,
    module_stem,
    split_variant_name,
    variant_filename,
)

if TYPE_CHECKING:
    from onnxdtype.runtime.settings import Settings



@dataclass(frozen=True)
class ModuleSource:
    """Where a module's files live: the folder of its base, the stem its variants are named after, and the naming
    convention of that folder (naming.py)."""
    home: Path
    stem: str
    layout: Layout = "onnxdtype"


@dataclass(frozen=True)
class Resolution:
    """The file chosen for a module, the dtype that file is, and how it was found."""
    file: Path
    dtype: DType
    how: str  # explicit | manifest | name | cache | built
    fixed_inputs: dict | None = None  # input values the variant was specialized for (--fix-input), from the manifest


def discover_modules(folder: Path) -> dict[str, ModuleSource]:
    """Modules of a folder: its manifest's, its base models, and stems that only have variants; else those under onnx/."""
    folder = Path(folder)
    for home in (folder, folder / "onnx"):
        if not home.is_dir():
            continue
        stems = set(read_manifest(home)["modules"]) | {module_stem(path.stem) for path in home.glob("*.onnx")}
        layout = layout_of(home, (home / MANIFEST_NAME).is_file())
        if stems:
            return {stem: ModuleSource(home, stem, layout) for stem in sorted(stems)}
    raise OnnxDtypeError(f"{folder}: no .onnx model here or under onnx/")


def candidate_files(source: ModuleSource, dtype: DType) -> list[Path]:
    """Every name a variant may have in this folder's layout, in the order tried."""
    return [source.home / name for name in candidate_names(source.stem, dtype, source.layout)]


def fallback_chain(dtype: DType) -> list[DType]:
    """The dtypes tried after `dtype` under missing='fallback', in order (the DType table, SPEC.md "Runtime")."""
    return [DType(name) for name in INFO[dtype].fallback]


def available_dtypes(source: ModuleSource) -> list[DType]:
    """Dtypes with a file on disk for this module (manifest-listed ok, or found by name), in table order."""
    entries = read_manifest(source.home)["modules"].get(source.stem, {}).get("variants", {})
    found = []
    for dtype in DType:
        entry = entries.get(dtype.value, {})
        listed = entry.get("status") == "ok" and (source.home / entry["file"]).is_file()
        if listed or any(path.is_file() for path in candidate_files(source, dtype)):
            found.append(dtype)
    return found


def resolve(name: str, source: ModuleSource, settings: Settings, root: Path) -> Resolution:
    """The file to run for one module under its settings, following the missing-variant policy, with the input
    values it was specialized for when its manifest records them."""
    found = _resolve(name, source, settings, root)
    return dataclasses.replace(found, fixed_inputs=fixed_inputs_of(found.file))


def fixed_inputs_of(path: Path) -> dict | None:
    """The fixed input values the manifest beside `path` records for it (a variant built with --fix-input)."""
    manifest = read_manifest(path.parent)
    for module, entry in manifest["modules"].items():
        for dtype, item in entry.get("variants", {}).items():
            if item.get("file") and confined_path(path.parent, item["file"], f"{module}/{dtype}") == path.resolve():
                return (item.get("params") or {}).get("specialize", {}).get("fixed")
    return None


def _resolve(name: str, source: ModuleSource, settings: Settings, root: Path) -> Resolution:
    if settings.file is not None:
        return _explicit(name, source, settings, root)
    dtype = settings.dtype
    search = _Search(source, settings)
    found = search.find(dtype)
    if found:
        return found
    if settings.missing == "fallback":
        for other in fallback_chain(dtype):
            found = search.find(other)
            if found:
                warnings.warn(f"{name}: {search.why_missing(dtype)}; using {other} instead (missing='fallback')")
                return found
        raise OnnxDtypeError(f"{name}: {search.why_missing(dtype)}, nor any of its fallbacks "
                             f"{' → '.join(map(str, fallback_chain(dtype)))}; tried {search.tried_text()}; "
                             f"available: {_listing(source)}")
    if settings.missing == "build" and not search.refusals:
        return _build(name, source, dtype, search)
    chain = " → ".join(map(str, [dtype, *fallback_chain(dtype)]))
    raise OnnxDtypeError(f"{name}: {search.why_missing(dtype)}; tried {search.tried_text()}; available: "
                         f"{_listing(source)} (missing='fallback' follows {chain}; missing='build' builds it)")


class _Search:
    """Looks up one module's variants, remembering every path tried and why a listed variant was refused."""

    def __init__(self, source: ModuleSource, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.manifest = read_manifest(source.home)
        self.tried: list[Path] = []
        self.refusals: dict[DType, str] = {}

    def find(self, dtype: DType) -> Resolution | None:
        listed = self._from_manifest(dtype)
        if listed or dtype in self.refusals:
            return listed
        for path in candidate_files(self.source, dtype):
            self.tried.append(path)
            if path.is_file():
                check_against_manifest(self.source.home, self.manifest, path)
                return Resolution(path, dtype, "name")
        return self._from_cache(dtype)

    def why_missing(self, dtype: DType) -> str:
        note = misread_note(self.source.stem, dtype, self.source.layout)
        return self.refusals.get(dtype, f"no {dtype} variant" + (f" ({note})" if note else ""))

    def tried_text(self) -> str:
        return ", ".join(str(p) for p in dict.fromkeys(self.tried))

    def _from_manifest(self, dtype: DType) -> Resolution | None:
        entry = self.manifest["modules"].get(self.source.stem, {})
        item = entry.get("base") if dtype is DType.FP32 else entry.get("variants", {}).get(dtype.value)
        if not item:
            return None
        status = item.get("status", "ok")
        if status == "not_applicable":
            self.refusals[dtype] = f"{dtype} is not applicable: {item.get('reason')}"
            return None
        if status == "failed":
            if not self.settings.allow_failed:
                self.refusals[dtype] = (f"{dtype} is marked failed in {MANIFEST_NAME} ({item.get('reason')}); "
                                        f"allow_failed=True loads a file of that name anyway")
                return None
            warnings.warn(f"{self.source.stem}: {dtype} is marked failed in {MANIFEST_NAME} ({item.get('reason')}); "
                          f"looking for a file anyway (allow_failed=True)")
            return None
        path = confined_path(self.source.home, item["file"], f"{self.source.stem}/{dtype}")
        self.tried.append(path)
        if not path.is_file():
            return None
        _check_sha(path, item.get("sha256"))
        return Resolution(path, dtype, "manifest")

    def _from_cache(self, dtype: DType) -> Resolution | None:
        """Variants built on demand for a read-only folder live in the cache, keyed by the base's sha256."""
        base = self.source.home / f"{self.source.stem}.onnx"
        if dtype is DType.FP32 or not base.is_file():
            return None
        folder = cache_folder(self.settings, base)
        if not folder.is_dir():
            return None
        self.tried.append(folder / variant_filename(self.source.stem, dtype))
        path = vouched_variant(folder, self.source.stem, dtype)
        return Resolution(path, dtype, "cache") if path else None


def _explicit(name: str, source: ModuleSource, settings: Settings, root: Path) -> Resolution:
    """An explicit file wins; a name that says another dtype is probably a mistake, so say so."""
    path = settings.file if settings.file.is_absolute() else root / settings.file
    if not path.is_file():
        raise OnnxDtypeError(f"{name}: file {path} does not exist")
    tagged = split_variant_name(path.stem, layout_of(path.parent, (path.parent / MANIFEST_NAME).is_file()))
    if tagged and tagged[1] is not settings.dtype:
        warnings.warn(f"{name}: {path.name} looks like {tagged[1]}, but dtype is {settings.dtype}; "
                      f"using it as {settings.dtype} because it was given explicitly")
    check_against_manifest(path.parent, read_manifest(path.parent), path)
    return Resolution(path, settings.dtype, "explicit")


def _build(name: str, source: ModuleSource, dtype: DType, search: _Search) -> Resolution:
    """Build the variant from the fp32 base beside it (or in the cache when the folder is read-only).

    Check and build happen under the folder lock, so concurrent processes build it once and all get it.
    """
    base = search.find(DType.FP32)
    if base is None:
        raise OnnxDtypeError(f"{name}: cannot build {dtype}: no fp32 base (tried {search.tried_text()})")
    out = base.file.parent if os.access(base.file.parent, os.W_OK) else cache_folder(search.settings, base.file)
    out.mkdir(parents=True, exist_ok=True)
    from onnxdtype.build import quantize

    with folder_lock(out):
        ready = vouched_variant(out, base.file.stem, dtype)  # another process may have built it while we waited
        if ready:
            return Resolution(ready, dtype, "manifest" if out == base.file.parent else "cache")
        try:
            result = quantize(base.file, [dtype], out_dir=out, workers=1, latency_runs=0)
        except OnnxDtypeError as exc:
            raise OnnxDtypeError(f"{name}: cannot build {dtype} (missing='build'): {exc}") from None
        built = vouched_variant(out, base.file.stem, dtype)
    if built is None:
        outcome = result.by(base.file.stem, dtype)
        raise OnnxDtypeError(f"{name}: building {dtype} ended {outcome.status}: {outcome.reason}")
    return Resolution(built, dtype, "built")


def cache_folder(settings: Settings, base: Path) -> Path:
    """Per-base build folder in the cache: the base's sha256 keys it, so an edited base never meets stale variants."""
    return Path(settings.cache_dir) / "builds" / f"{base.stem}-{file_sha256(base)[:16]}"


def vouched_variant(folder: Path, stem: str, dtype: DType) -> Path | None:
    """The variant file the folder's manifest lists as ok, when it exists and its sha256 matches."""
    entry = read_manifest(folder)["modules"].get(stem, {}).get("variants", {}).get(dtype.value)
    if not entry or entry.get("status") != "ok":
        return None
    path = confined_path(folder, entry["file"], f"{stem}/{dtype}")
    if not path.is_file():
        return None
    _check_sha(path, entry.get("sha256"))
    return path


def check_against_manifest(folder: Path, manifest: dict, path: Path) -> None:
    """A file the manifest lists under any module or dtype must still have the sha256 recorded there."""
    target = path.resolve()
    for module, entry in manifest["modules"].items():
        items = [("base", entry.get("base") or {})] + list(entry.get("variants", {}).items())
        for key, item in items:
            if item.get("file") and confined_path(folder, item["file"], f"{module}/{key}") == target:
                _check_sha(path, item.get("sha256"))


def _check_sha(path: Path, expected: str | None) -> None:
    if expected and file_sha256(path) != expected:
        raise OnnxDtypeError(f"{path}: sha256 differs from {MANIFEST_NAME} (changed or truncated since it was "
                             f"built); refusing to load it")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so repeated commits do not re-read large models."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = model_sha256(path)
    return _SHA_CACHE[key]


def _listing(source: ModuleSource) -> str:
    return ", ".join(map(str, available_dtypes(source))) or "none"

