"""The DType table: every name, alias, bit width, calibration need and file suffix lives here.

Everything else (recipes, file naming, the CLI, the runtime resolver) reads this table, the way
transformers.js keeps one dtype -> suffix map, so adding or renaming a dtype is a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from onnxdtype.errors import OnnxDtypeError


@dataclass(frozen=True)
class DTypeInfo:
    name: str
    aliases: tuple[str, ...]
    bits: str
    needs_calibration: bool
    suffix: str
    steps: tuple[str, ...]  # recipe names applied in order to the fp32 model; () = the base itself
    fallback: tuple[str, ...]  # dtypes to try in order when this variant is missing (SPEC.md "Runtime")
    description: str


_TABLE: tuple[DTypeInfo, ...] = (
    DTypeInfo("fp32", ("f32", "float32", "float"), "32", False, "", (), (),
              "the original export"),
    DTypeInfo("fp16", ("f16", "float16", "half"), "16", False, "fp16", ("float16",), ("fp32",),
              "mixed fp16/fp32; graph inputs/outputs stay fp32; unsafe ops stay fp32"),
    DTypeInfo("q8", ("quantized",), "8", False, "q8", ("dynamic",), ("fp32",),
              "dynamic quantization: 8-bit weights, activations quantized at run time"),
    DTypeInfo("int8", ("i8",), "8", True, "int8", ("tensorrt",), ("q8", "fp32"),
              "static int8 QDQ for TensorRT"),
    DTypeInfo("s8s8", (), "8", True, "s8s8", ("static",), ("q8", "fp32"),
              "static QDQ: signed weights, signed activations"),
    DTypeInfo("s8u8", ("u8s8",), "8", True, "s8u8", ("static",), ("q8", "fp32"),
              "static QDQ: signed weights, unsigned activations"),
    DTypeInfo("u8u8", (), "8", True, "u8u8", ("static",), ("q8", "fp32"),
              "static QDQ: unsigned weights, unsigned activations"),
    DTypeInfo("q4", ("int4w", "4bit"), "4", False, "q4", ("blockwise4",), ("fp32",),
              "weight-only 4-bit blockwise (MatMulNBits)"),
    DTypeInfo("q4f16", (), "4+16", False, "q4f16", ("blockwise4", "float16"), ("q4", "fp16", "fp32"),
              "q4 with the rest of the graph in fp16"),
    DTypeInfo("bnb4", ("nf4",), "4", False, "bnb4", ("bnb4",), ("q4", "fp32"),
              "weight-only 4-bit with FP4/NF4 codebooks (MatMulBnb4)"),
)

DType = Enum("DType", {info.name.upper(): info.name for info in _TABLE}, type=str)  # type: ignore[misc]
DType.__doc__ = "A model precision by name; `DType('fp16')`, `DType.Q8`. Parse user text with `parse_dtype`."
DType.__str__ = lambda self: self.value  # type: ignore[method-assign]

INFO: dict[DType, DTypeInfo] = {DType(info.name): info for info in _TABLE}

# Tensor types users know that no recipe builds; asking for one says so instead of "unknown".
KNOWN_WITHOUT_RECIPE = ("bf16", "bfloat16", "fp8", "fp8e4m3", "fp8e5m2", "e4m3", "e5m2", "int4", "uint4",
                        "int2", "uint2", "fp4", "int16", "uint16", "q2", "q3", "q5", "q6")

_BY_NAME: dict[str, DType] = {}
for _info in _TABLE:
    for _name in (_info.name, *_info.aliases):
        _BY_NAME[_name] = DType(_info.name)


def parse_dtype(text: str | DType) -> DType:
    """Parse a dtype name or alias, case-insensitively; unknown names raise with the valid list."""
    if isinstance(text, DType):
        return text
    key = str(text).strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key in KNOWN_WITHOUT_RECIPE:
        hint = " (bnb4 --bnb4-type fp4 builds the FP4 codebook)" if key == "fp4" else ""
        raise OnnxDtypeError(f"no recipe builds {key}{hint}; onnxdtype builds: {', '.join(d.value for d in DType)}")
    raise OnnxDtypeError(f"unknown dtype {text!r}; valid: {', '.join(d.value for d in DType)} (or 'all')")


def parse_dtype_list(text: str | list[str] | list[DType]) -> list[DType]:
    """Parse 'all', 'fp16,q8' or a list; order is the table's, duplicates dropped. fp32 is the base, never built."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(i).strip() for i in items if str(i).strip()]
    if not names:
        raise OnnxDtypeError("no dtype given; use 'all' or a list such as fp16,q8")
    if any(n.lower() == "all" for n in names):
        if len(names) > 1:
            raise OnnxDtypeError(f"'all' cannot be combined with dtype names ({', '.join(names)})")
        return [d for d in DType if d is not DType.FP32]
    wanted = {parse_dtype(n) for n in names}
    if wanted == {DType.FP32}:
        raise OnnxDtypeError("fp32 is the base model itself, nothing to build; ask for fp16, q8, ... or all")
    return [d for d in DType if d in wanted and d is not DType.FP32]

