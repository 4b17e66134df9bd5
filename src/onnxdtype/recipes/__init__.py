"""Recipe families behind one small interface, and the registry the DType table's `steps` point into.

Each recipe module declares:
  NAME        its registry name (what DTypeInfo.steps lists)
  PASSES      the normalize passes it needs on its input
  Options     a dataclass of its parameters, defaults per SPEC.md
  check(model, options) -> str | None        why it would change nothing (None: it applies)
  build(model, options) -> Variant | NotApplicable
A recipe takes an fp32 ModelProto and never calls another recipe; build.py composes them (q4f16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import onnx


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


def _registry() -> dict[str, ModuleType]:
    from onnxdtype.recipes import blockwise, bnb4, dynamic, float16, static, tensorrt

    return {module.NAME: module for module in (float16, dynamic, static, tensorrt, blockwise, bnb4)}


RECIPES: dict[str, ModuleType] = _registry()


def default_options() -> dict[str, object]:
    """One Options instance per recipe, with SPEC.md defaults."""
    return {name: module.Options() for name, module in RECIPES.items()}
