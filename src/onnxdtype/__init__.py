"""onnxdtype: build, prove and run the precision variants (fp16, q8, q4, ...) of ONNX models."""

__version__ = "0.1.0"

from onnxdtype.dtype import DType, parse_dtype  # noqa: E402
from onnxdtype.errors import OnnxDtypeError  # noqa: E402


def quantize(*args, **kwargs):
    """Build dtype variants; see onnxdtype.build.quantize (imported lazily: it pulls in the quantizers)."""
    from onnxdtype.build import quantize as _quantize

    return _quantize(*args, **kwargs)


def __getattr__(name: str):
    """Config and Engine load the runtime on first use."""
    if name in ("Config", "Engine"):
        from onnxdtype import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'onnxdtype' has no attribute {name!r}")


__all__ = ["Config", "DType", "Engine", "OnnxDtypeError", "parse_dtype", "quantize", "__version__"]
