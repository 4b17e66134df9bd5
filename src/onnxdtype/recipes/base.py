"""The recipe protocol: what every recipe module declares, so the build, repair and the CLI never look inside one.

A recipe module (one file per family, registered in recipes/__init__.py) declares:
  NAME               its registry name (what DTypeInfo.steps lists)
  PASSES             the normalize passes it needs on its input
  KIND               "float" (changes the precision of every float node: fp16) or "quantize" (replaces weighted
                     nodes); repair keeps ranked nodes out of the quantize steps of a recipe chain (q4f16's error is
                     its 4-bit part) and out of a float step only when it is the whole recipe
  NEEDS_CALIBRATION  the reason `check` gives when only calibration data is missing, or None
  HIGHER_PRECISIONS  what `keep` can put a node back in, tried in order by repair ("8-bit" before "fp32" for q4)
  LAZY_WEIGHTS       True when `build` takes a model whose weights are lazy (weights.py: read one at a time from
                     disk); the build loads every weight into memory first for a recipe that says False
  Options            a dataclass of its parameters, defaults per SPEC.md, validated in __post_init__
  options_for(dtype_name, options) -> Options   the options for one dtype of the family (s8s8 vs u8u8)
  keep(options, nodes, precision) -> Options    the options that keep `nodes` in `precision`
  check(model, options) -> str | None           why it would change nothing (None: it applies)
  build(model, options) -> Variant | NotApplicable
A recipe takes a ModelProto and never calls another recipe's private parts; shared Q/DQ machinery lives in
qdq.py and the fp16 conversion in float16.convert. The build composes recipes (q4f16 = blockwise4 then float16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxdtype.errors import OnnxDtypeError


@dataclass
class Variant:
    """A recipe's output: the new model and what was done to make it."""
    model: onnx.ModelProto
    params: dict
    kept_in_float: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class NotApplicable:
    reason: str


REQUIRED = ("NAME", "PASSES", "KIND", "NEEDS_CALIBRATION", "HIGHER_PRECISIONS", "LAZY_WEIGHTS", "Options",
            "options_for", "keep", "check", "build")


def same_options(dtype_name: str, options: Any) -> Any:
    """`options_for` of a family whose dtypes all take the same options."""
    return options


def with_nodes(options: Any, field_name: str, nodes: Iterable[str]) -> Any:
    """A copy of `options` whose list `field_name` also holds `nodes` (order kept, no duplicates)."""
    current = list(getattr(options, field_name))
    return dataclasses.replace(options, **{field_name: current + [n for n in nodes if n not in current]})


# ---------------------------------------------------------------- option checks, shared by every Options class
def choice(what: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise OnnxDtypeError(f"{what} {value!r} is not valid; valid: {', '.join(map(str, choices))}")


def power_of_two(what: str, value: Any, minimum: int = 16) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value & (value - 1):
        raise OnnxDtypeError(f"{what} must be a power of two >= {minimum}, not {value!r}")


def count(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OnnxDtypeError(f"{what} must be a whole number >= 0, not {value!r}")


def flag(what: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OnnxDtypeError(f"{what} must be true or false, not {value!r}")


def names(what: str, value: Any) -> None:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise OnnxDtypeError(f"{what} must be a list of names, not {value!r}")
