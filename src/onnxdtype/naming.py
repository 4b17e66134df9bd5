"""Every file-name convention for dtype variants, and what each name means — for the build and the runtime alike.

onnxdtype writes `<stem>_<suffix>.onnx` (suffix from the DType table). It reads that, usls's `<stem>-<suffix>.onnx`
and `<stem>.<suffix>.onnx`, and transformers.js folders (models under `onnx/`), whose tags mean other things:
`_quantized` is its dynamic 8-bit file, and `_int8` / `_uint8` are its dynamic quantizations with int8 / uint8
weights — the q8 family (SPEC.md), never the seed's int8 (static QDQ for TensorRT). A file named like a variant under
any convention is never taken for an fp32 base.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from onnxdtype.dtype import INFO, DType

Layout = Literal["onnxdtype", "transformers.js"]
SEPARATORS = ("_", "-", ".")  # onnxdtype's, then usls's two spellings
TRANSFORMERS_JS_FOLDER = "onnx"
# transformers.js tags that differ from onnxdtype's suffixes, in the order tried for q8: all dynamic 8-bit weights.
TRANSFORMERS_JS_Q8_TAGS = ("quantized", "uint8", "int8")
_TAGGED = re.compile(r"^(?P<stem>.+)[_.-](?P<tag>[A-Za-z0-9]+)$")
_SUFFIXES = {info.suffix: dtype for dtype, info in INFO.items() if info.suffix}


def file_suffix(dtype: DType) -> str:
    """'_fp16' for fp16, '' for fp32: the part onnxdtype adds to a module's stem."""
    suffix = INFO[dtype].suffix
    return f"_{suffix}" if suffix else ""


def variant_filename(stem: str, dtype: DType) -> str:
    """The name onnxdtype writes a module's variant under."""
    return f"{stem}{file_suffix(dtype)}.onnx"


def layout_of(home: Path, has_manifest: bool) -> Layout:
    """A folder named onnx/ without an onnxdtype manifest is a transformers.js layout; everything else is ours."""
    return "transformers.js" if Path(home).name == TRANSFORMERS_JS_FOLDER and not has_manifest else "onnxdtype"


def split_variant_name(stem: str, layout: Layout = "onnxdtype") -> tuple[str, DType] | None:
    """'det_fp16' -> ('det', fp16); 'model_quantized' -> ('model', q8); in a transformers.js layout 'model_int8'
    and 'model_uint8' -> ('model', q8). A base name, or a tag no convention knows, -> None."""
    match = _TAGGED.match(stem)
    if not match:
        return None
    tag = match.group("tag").lower()
    if tag == "quantized" or (layout == "transformers.js" and tag in TRANSFORMERS_JS_Q8_TAGS):
        return match.group("stem"), DType.Q8
    dtype = _SUFFIXES.get(tag)
    return (match.group("stem"), dtype) if dtype else None


def is_variant_stem(stem: str) -> bool:
    """True for a name that is a variant under any convention (model_fp16, det-q8, visual.q4f16, model_uint8...):
    a file that is never an fp32 module of its own."""
    match = _TAGGED.match(stem)
    return bool(match) and (match.group("tag").lower() in TRANSFORMERS_JS_Q8_TAGS
                            or match.group("tag").lower() in _SUFFIXES)


def module_stem(stem: str) -> str:
    """The module a file belongs to: its stem without a variant tag."""
    match = _TAGGED.match(stem)
    return match.group("stem") if match and is_variant_stem(stem) else stem


def candidate_names(stem: str, dtype: DType, layout: Layout = "onnxdtype") -> list[str]:
    """Every file name a module's variant may have, in the order tried."""
    if dtype is DType.FP32:
        return [f"{stem}.onnx"]
    if layout == "transformers.js":
        if dtype is DType.Q8:
            return [f"{stem}_{tag}.onnx" for tag in TRANSFORMERS_JS_Q8_TAGS] + [f"{stem}_{INFO[dtype].suffix}.onnx"]
        if dtype is DType.INT8:
            return []  # its _int8 is a dynamic quantization, not the seed's static int8
    names = [f"{stem}{sep}{INFO[dtype].suffix}.onnx" for sep in SEPARATORS]
    return names + ([f"{stem}_quantized.onnx"] if dtype is DType.Q8 else [])


def misread_note(stem: str, dtype: DType, layout: Layout) -> str | None:
    """Why a file that looks like `dtype` is not it in this layout (said in 'not found' errors), else None."""
    if layout == "transformers.js" and dtype is DType.INT8:
        return (f"{stem}_int8.onnx in a transformers.js folder is its dynamic int8 quantization (the q8 family), "
                f"not the static int8 QDQ variant for TensorRT")
    return None
