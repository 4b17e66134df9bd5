"""`onnxdtype verify DIR`: re-verify a variants folder from its manifest.

Each file's sha256 is checked against the manifest first: a mismatch fails the variant and the file is
never loaded. Then the figures are measured again against the fp32 base — on the evaluation data given, else on
the data the build recorded (its --eval folder, or the held-out part of its calibration data), else on inputs
synthesized from shapes (which proves loading only, and says so) — each output judged by the task the build
recorded for it, and the manifest is updated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from onnxdtype.calibration.data import module_path
from onnxdtype.dtype import parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import confined_path, read_manifest, update_manifest
from onnxdtype.model import load_model, model_sha256
from onnxdtype.results import BuildResult, Status, VariantResult
from onnxdtype.verify.evaluate import (
    DEFAULT_ATOL,
    Criteria,
    EvalData,
    Reference,
    agreement_for,
    floor_draws,
    load_metric,
    min_cosine_for,
    read_eval_data,
    session,
    synthesize,
)
from onnxdtype.verify.judges import guess_tasks, recurrent_pairs
from onnxdtype.verify.kernels import kernels
from onnxdtype.verify.latency import measure
from onnxdtype.verify.record import skipped, verify_variant


def verify_folder(folder: str | Path, eval_data: EvalData | dict[str, EvalData] | str | Path | None = None,
                  tolerances: dict[str, float] | None = None, metric: str | None = None, latency_runs: int = 20
                  ) -> BuildResult:
    """Re-verify every built variant the manifest lists; returns a BuildResult like quantize() does."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OnnxDtypeError(f"{folder}: not a folder")
    manifest = read_manifest(folder)
    if not manifest["modules"]:
        raise OnnxDtypeError(f"{folder}: no onnxdtype.json manifest with modules here")
    if metric:
        load_metric(metric)
    results = []
    for module, entry in manifest["modules"].items():
        base_path = confined_path(folder, entry["base"]["file"], f"{module}/base")
        base_problem = _integrity_problem(base_path, entry["base"])
        base = load_model(base_path, lazy=True) if not base_problem else None  # the graph; sessions read the file
        data = _module_data(module, entry, base, base_path, eval_data, len(manifest["modules"])) if base else None
        guessed = {name: dataclasses.asdict(spec) for name, spec in guess_tasks(base).items()} if base else {}
        states = recurrent_pairs(base) if base else {}
        for dtype_name, variant in entry.get("variants", {}).items():
            result = VariantResult(module, dtype_name, variant["status"], variant.get("reason"), variant.get("file"),
                                   variant.get("bytes"), variant.get("sha256"), base_bytes=entry["base"]["bytes"],
                                   recipe=variant.get("recipe", []), params=variant.get("params", {}),
                                   kept_in_float=variant.get("kept_in_float", []))
            if not variant.get("file"):
                results.append(result)
                continue
            path = confined_path(folder, variant["file"], f"{module}/{dtype_name}")
            problem = base_problem or _integrity_problem(path, variant)
            if problem:
                result.fail(problem)
            else:
                fixed = ((variant.get("params") or {}).get("specialize") or {}).get("fixed")
                _measure(result, base_path, path, data.with_inputs(fixed) if fixed else data, tolerances, metric,
                         latency_runs, (variant.get("verification") or {}).get("tasks") or guessed, states)
            update_manifest(folder, lambda m, r=result: _store(m, r))
            results.append(result)
    return BuildResult(folder, results, requested_explicitly=False)


def _integrity_problem(path: Path, entry: dict) -> str | None:
    if not path.exists():
        return f"{path.name} is missing"
    digest = model_sha256(path)
    if digest != entry.get("sha256"):
        return (f"{path.name}: sha256 {digest[:12]}… does not match the manifest's {str(entry.get('sha256'))[:12]}…; "
                f"not loaded")
    return None


def _module_data(module: str, entry: dict, base: onnx.ModelProto, base_path: Path,
                 given: EvalData | dict | str | Path | None, modules: int) -> EvalData:
    """The evaluation data for one module: given (EvalData, one per module, or a path), else what the build recorded
    (read again with the same image spec and held-out split), else synthesized."""
    if isinstance(given, dict):
        given = given.get(module)
    if isinstance(given, EvalData):
        return given
    recorded = entry.get("evaluation") or {}
    if given is not None:
        return read_eval_data(module_path(given, module, modules, "--eval"), base, recorded.get("image_spec"))
    if recorded.get("data") and Path(recorded["data"]).exists():
        return read_eval_data(Path(recorded["data"]), base, recorded.get("image_spec"), recorded.get("held_out"))
    return synthesize(base, path=base_path)


def _measure(result: VariantResult, base_path: Path, path: Path, data: EvalData, tolerances: dict | None,
             metric: str | None, latency_runs: int, tasks: dict[str, dict], states: dict[str, str]) -> None:
    dtype = parse_dtype(result.dtype)
    criteria = Criteria(min_cosine_for(dtype, tolerances), (tolerances or {}).get("atol", DEFAULT_ATOL), metric,
                        agreement_for(dtype, tolerances), tasks, states,
                        **floor_draws(tolerances))
    if not data.feeds:
        result.verification = skipped(data)
        return
    reference = Reference(session(base_path), data, criteria, base_path)
    result.verification, _, failure = verify_variant(reference, session(path), data, criteria)
    result.status, result.reason = (Status.FAILED, f"verification: {failure}") if failure else (Status.OK, None)
    if latency_runs > 0:
        result.latency = measure(base_path, path, data.feeds[0], latency_runs)
    result.kernels = kernels(path)


def _store(manifest: dict, result: VariantResult) -> None:
    variant = manifest["modules"][result.module]["variants"][result.dtype]
    variant.update(status=result.status, reason=result.reason, verification=result.verification,
                   latency=result.latency, kernels=result.kernels)



