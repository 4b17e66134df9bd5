"""The onnxdtype.json schema: read (validated, paths confined to the folder) and write (atomic, locked).

Shared by the build side (which writes it) and the runtime (which trusts only files it vouches for).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from onnxdtype.dtype import DType
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.io import atomic_write_text

MANIFEST_NAME = "onnxdtype.json"
LOCK_NAME = ".onnxdtype.lock"
SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "not_applicable")
VARIANT_KEYS = frozenset(d.value for d in DType) - {"fp32"}  # fp32 is the base, never a variant


def empty_manifest() -> dict:
    return {"schema_version": SCHEMA_VERSION, "modules": {}}


def read_manifest(folder: Path) -> dict:
    """The folder's manifest (an empty one when absent), validated: a bad manifest is an error, never guessed at.

    What readers rely on is checked here, so they can index it without guarding: modules and variants are
    objects, every module has a base file, variant keys are dtypes, statuses are known, an ok variant has a
    file and a sha256, and every path stays inside the folder.
    """
    path = folder / MANIFEST_NAME
    if not path.exists():
        return empty_manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OnnxDtypeError(f"{path}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    except RecursionError:
        raise OnnxDtypeError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise OnnxDtypeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
        raise OnnxDtypeError(f"{path}: not an onnxdtype manifest (no 'modules' object)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise OnnxDtypeError(f"{path}: unknown schema_version {data.get('schema_version')!r} (this onnxdtype reads {SCHEMA_VERSION})")
    for module, entry in data["modules"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("variants", {}), dict):
            raise OnnxDtypeError(f"{path}: module {module!r} is not an object with a 'variants' object")
        base = entry.get("base")
        if not isinstance(base, dict) or base.get("file") is None:
            raise OnnxDtypeError(f"{path}: module {module!r} has no base file")
        _check_file_entry(folder, path, base, f"{module}/base")
        for key, variant in entry.get("variants", {}).items():
            if key not in VARIANT_KEYS:
                raise OnnxDtypeError(f"{path}: module {module!r} lists unknown dtype {key!r}")
            if not isinstance(variant, dict):
                raise OnnxDtypeError(f"{path}: {module}/{key} is not an object")
            if variant.get("status") not in STATUSES:
                raise OnnxDtypeError(f"{path}: {module}/{key} has unknown status {variant.get('status')!r}")
            if variant["status"] == "ok" and variant.get("file") is None:
                raise OnnxDtypeError(f"{path}: {module}/{key} is ok but names no file")
            if variant.get("file") is not None:
                _check_file_entry(folder, path, variant, f"{module}/{key}")
    return data


def _check_file_entry(folder: Path, path: Path, entry: dict, what: str) -> None:
    """A listed file: confined to the folder, with a sha256 to check it against and a byte count."""
    confined_path(folder, entry["file"], what)
    digest = entry.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise OnnxDtypeError(f"{path}: {what} has no valid sha256 (got {digest!r})")
    size = entry.get("bytes")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OnnxDtypeError(f"{path}: {what} has no valid byte count (got {size!r})")


def confined_path(folder: Path, relative: str, what: str) -> Path:
    """Resolve a manifest path, refusing absolute paths and anything (symlinks included) that leaves the folder."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\\" in relative \
            or "\0" in relative:
        raise OnnxDtypeError(f"manifest entry {what}: path {relative!r} must be relative to the manifest's folder")
    root = folder.resolve()
    resolved = (root / relative).resolve()
    if resolved != root and root not in resolved.parents:
        raise OnnxDtypeError(f"manifest entry {what}: path {relative!r} leaves the folder {folder}")
    return resolved


def write_manifest(folder: Path, data: dict) -> None:
    """Replace the manifest atomically: readers see the old or the new file, never half of one."""
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n", fsync=True)


_LOCKS: dict[str, FileLock] = {}


def folder_lock(folder: Path) -> FileLock:
    """The lock that serializes builds and manifest updates on one output folder, across processes.

    One object per folder per process, so nested use re-enters instead of deadlocking on flock.
    """
    key = str((folder / LOCK_NAME).resolve())
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key)
    return _LOCKS[key]


def update_manifest(folder: Path, change: Callable[[dict], None]) -> dict:
    """Read-modify-write under the folder lock (re-entrant within a process), then replace atomically."""
    with folder_lock(folder):
        data = read_manifest(folder)
        change(data)
        write_manifest(folder, data)
        return data
