"""The build side: `quantize` builds, verifies, repairs and times every requested dtype variant.

pipeline.py is the pipe; plan.py decides what to do before anything is written; data.py gives each module its
calibration and evaluation data; pool.py and worker.py build variants in parallel processes; publish.py writes
into the output folder and the manifest. Names load on first use, so a worker process (`python -m
onnxdtype.build.worker`) does not import the pipe before running.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"quantize": "pipeline", "Calibration": "plan", "Module": "plan", "applicability": "plan",
            "find_modules": "plan"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnxdtype.build' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"onnxdtype.build.{_EXPORTS[name]}"), name)


__all__ = list(_EXPORTS)
