"""The command line: `onnxdtype quantize | verify | calibrate | run | bench | dtypes | inspect`."""

from onnxdtype.cli.main import app, main

__all__ = ["app", "main"]
