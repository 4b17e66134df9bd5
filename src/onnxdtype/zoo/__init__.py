"""A model zoo in one call: `build_zoo(spec, out)` builds, proves, times and indexes every (module, dtype) of a
zoo spec, locally or on Ray, redoing only tasks whose content key has no vouched result yet.

spec.py reads and checks the spec; keys.py gives each task its content key; executors.py runs tasks (local
worker pool or Ray); driver.py plans, prepares, publishes and times; index.py writes zoo.json and report.html.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"build_zoo": "driver", "ZooResult": "driver", "ZooProgress": "driver", "load_spec": "spec"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnxdtype.zoo' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"onnxdtype.zoo.{_EXPORTS[name]}"), name)


__all__ = list(_EXPORTS)
