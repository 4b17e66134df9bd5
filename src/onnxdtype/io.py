"""Small I/O helpers every layer uses: one-line error text, and files replaced atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (onnxruntime and protobuf errors run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    """Replace `path` with `text`: readers see the old or the new file, never half of one. World-readable."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".onnxdtype-tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
