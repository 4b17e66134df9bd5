"""`onnxdtype verify DIR`: re-verify a variants folder from its manifest.

Each file's sha256 is checked against the manifest first: a mismatch fails the variant and the file is
never loaded. Then the figures are measured again against the fp32 base and the manifest is updated.
"""

from __future__ import annotations

from pathlib import Path

from onnxdtype.dtype import parse_dtype
from onnxdtype.errors import OnnxDtypeError
from onnxdtype.manifest import confined_path, read_manifest, update_manifest
from onnxdtype.model import load_model, model_sha256
from onnxdtype.results import BuildResult, Status, VariantResult
from onnxdtype.verify.evaluate import DEFAULT_ATOL, Criteria, EvalData, load_metric, min_cosine_for, session, synthesize
from onnxdtype.verify.latency import measure
from onnxdtype.verify.record import skipped, verify_variant


def verify_folder(folder: str | Path, eval_data: EvalData | dict[str, EvalData] | None = None,
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
        data = (eval_data.get(module) if isinstance(eval_data, dict) else eval_data) or synthesize(load_model(base_path))
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
                _measure(result, base_path, path, data, tolerances, metric, latency_runs)
            update_manifest(folder, lambda m, r=result: _store(m, r))
            results.append(result)
    return BuildResult(folder, results, requested_explicitly=False)


def _integrity_problem(path: Path, entry: dict) -> str | None:
    if not path.exists():
        return f"{path.name} is missing"
    digest = model_sha256(path)
    if digest != entry.get("sha256"):
        return f"{path.name}: sha256 {digest[:12]}… does not match the manifest's {str(entry.get('sha256'))[:12]}…; not loaded"
    return None


def _measure(result: VariantResult, base_path: Path, path: Path, data: EvalData, tolerances: dict | None, metric: str | None,
             latency_runs: int) -> None:
    dtype = parse_dtype(result.dtype)
    criteria = Criteria(min_cosine_for(dtype, tolerances), (tolerances or {}).get("atol", DEFAULT_ATOL), metric)
    if not data.feeds:
        result.verification = skipped(data)
        return
    result.verification, _, failure = verify_variant(session(base_path), session(path), data, criteria)
    result.status, result.reason = (Status.FAILED, f"verification: {failure}") if failure else (Status.OK, None)
    if latency_runs > 0:
        result.latency = measure(base_path, path, data.feeds[0], latency_runs)


def _store(manifest: dict, result: VariantResult) -> None:
    variant = manifest["modules"][result.module]["variants"][result.dtype]
    variant.update(status=result.status, reason=result.reason, verification=result.verification,
                   latency=result.latency)



