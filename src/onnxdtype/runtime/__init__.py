"""Run the right variant: Config (modules, dtypes, devices, settings) -> resolved files -> Engine sessions.

Imports nothing heavy: onnxruntime loads when the first Engine is made, the build side only for missing="build".
"""

from onnxdtype.runtime.config import Config
from onnxdtype.runtime.engine import Engine, Timings
from onnxdtype.runtime.settings import ResolvedModule, Settings

__all__ = ["Config", "Engine", "ResolvedModule", "Settings", "Timings"]
