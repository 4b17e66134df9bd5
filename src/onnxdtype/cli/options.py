"""Parsing the CLI's option values: tolerances and generic recipe options (`--set q4.block_size=64`).

Recipe options validate themselves (their Options classes); this only turns text into values.
"""

from __future__ import annotations

import json
import math
from typing import Any

from onnxdtype.dtype import parse_dtype
from onnxdtype.errors import OnnxDtypeError


def tolerances(items: list[str] | None) -> dict[str, float]:
    """'q8=0.98' items -> {'q8': 0.98}; keys are dtype names, 'default' or 'atol' (cosines and the absolute floor),
    'task' or 'task.<dtype>' (the share of task units that must agree), 'rounding_draws' and 'weight_draws' (draws
    for fp32's own noise floor, verify.rounding and verify.weight_noise; 0 turns one off)."""
    parsed: dict[str, float] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise OnnxDtypeError(f"--tolerance {item!r}: expected NAME=NUMBER, e.g. q8=0.98") from None
        name = key.strip().lower()
        if name in ("rounding_draws", "weight_draws"):
            if not number.is_integer() or number < 0:
                raise OnnxDtypeError(f"--tolerance {item!r}: {name} is a whole number >= 0 (0: no noise floor)")
            parsed[name] = int(number)
            continue
        if not math.isfinite(number) or number < 0 or (name != "atol" and number > 1):
            raise OnnxDtypeError(f"--tolerance {item!r}: a cosine or an agreement is in [0, 1], atol >= 0")
        if name in ("default", "atol", "task"):
            parsed[name] = number
        elif name.startswith("task."):
            parsed["task." + parse_dtype(name.removeprefix("task.")).value] = number
        else:
            parsed[parse_dtype(name).value] = number
    return parsed


def tasks(items: list[str] | None) -> dict[str, str]:
    """'rec=ctc', 'det/out=dense:threshold=0.3', 'classify' -> {'rec': 'ctc', 'det/out': ..., '*': 'classify'}.
    A task's own parameters follow a colon, so the first '=' before any colon separates the key."""
    parsed: dict[str, str] = {}
    for item in items or []:
        head = item.partition(":")[0]
        key, sep, _ = head.partition("=")
        parsed[key.strip() if sep else "*"] = item[len(key) + 1:].strip() if sep else item.strip()
    return parsed


def recipe_settings(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """'q4.block_size=64', 'static.float_tail=false', 'q8.nodes_to_exclude=a,b' -> {'q4': {'block_size': 64}, ...}.

    Keys are dtype or recipe names (checked by the build with the option names); values are JSON scalars (true,
    64, 0.5, null) or text; a comma makes a list."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, _, value = item.partition("=")
        key, _, field = target.strip().partition(".")
        if not key or not field or not _:
            raise OnnxDtypeError(f"--set {item!r}: expected DTYPE_OR_RECIPE.OPTION=VALUE, e.g. q4.block_size=64")
        settings.setdefault(key.strip().lower(), {})[field.strip()] = _value(value.strip())
    return settings


def _value(text: str) -> Any:
    if "," in text:
        return [part.strip() for part in text.split(",") if part.strip()]
    try:
        return json.loads(text)
    except ValueError:
        return text
