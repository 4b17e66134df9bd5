"""The recipe registry: the DType table's `steps` name these; the protocol every recipe follows is in base.py."""

from __future__ import annotations

from types import ModuleType

from onnxdtype.recipes import blockwise, bnb4, dynamic, float16, static, tensorrt
from onnxdtype.recipes.base import REQUIRED, NotApplicable, Variant

RECIPES: dict[str, ModuleType] = {module.NAME: module for module in (float16, dynamic, static, tensorrt, blockwise, bnb4)}
for _recipe in RECIPES.values():
    _missing = [name for name in REQUIRED if not hasattr(_recipe, name)]
    assert not _missing, f"recipe {_recipe.__name__} lacks {_missing} (recipes/base.py)"


def default_options() -> dict[str, object]:
    """One Options instance per recipe, with SPEC.md defaults."""
    return {name: module.Options() for name, module in RECIPES.items()}


__all__ = ["RECIPES", "NotApplicable", "Variant", "default_options"]
