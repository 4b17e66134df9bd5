"""Content-addressed task keys: a variant is rebuilt only when something that decides its bytes or its verdict
changed (the fp32 base, the recipe and its options, the data, the judges, the versions of the tools)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from onnxdtype.build.plan import Module, needs_calibration
from onnxdtype.build.publish import versions
from onnxdtype.calibration.data import module_path
from onnxdtype.dtype import INFO
from onnxdtype.model import model_sha256
from onnxdtype.zoo.spec import ZooModel


def data_digest(path: Path, cache: dict[Path, str]) -> str:
    """sha256 over a data file, or over a folder's files (relative names and bytes, in name order)."""
    if path not in cache:
        digest = hashlib.sha256()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        cache[path] = digest.hexdigest()
    return cache[path]


def module_keys(model: ZooModel, module: Module, cache: dict[Path, str]) -> dict[str, str]:
    """dtype name -> the key of building that variant of the module (sha256 hex)."""
    count = len(model.modules)
    calib = None
    if model.calib is not None:
        data = module_path(model.calib.data, module.name, count, "calib")
        calib = {"data": data_digest(Path(data), cache), "spec": _spec_text(model.calib.image_spec, cache),
                 "method": model.calib.method, "eval_fraction": model.calib.eval_fraction}
    evaluation = data_digest(Path(module_path(model.eval, module.name, count, "eval")), cache) if model.eval else None
    common = {"base": model_sha256(module.path), "eval": evaluation, "tasks": model.tasks,
              "fixed_inputs": model.fixed_inputs, "tolerances": model.tolerances, "verify": model.verify,
              "repair": model.repair, "search": model.search, "metric": model.metric, "versions": versions()}
    keys = {}
    for dtype in model.dtypes:
        steps = INFO[dtype].steps
        options = {k: v for k, v in model.options.items() if k in steps or k == dtype.value}
        # the held-out calibration samples verify every dtype when no evaluation data is given; q4's GPTQ reads them
        uses_calib = needs_calibration(dtype, model.options) or model.eval is None
        keys[dtype.value] = _digest({**common, "dtype": dtype.value, "recipe": list(steps), "options": options,
                                     "calib": calib if uses_calib else None})
    return keys


def _spec_text(spec: object, cache: dict[Path, str]) -> object:
    """An image spec by value: a spec file by its digest, so editing it re-keys the tasks."""
    if isinstance(spec, (str, Path)) and str(spec).endswith((".json", ".toml")):
        return data_digest(Path(spec), cache)
    return spec


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()

