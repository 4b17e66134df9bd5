"""The zoo's index (zoo.json) and overview (report.html), both read back from the models' manifests, so they
describe what the output folder vouches for, whichever run built it; and each model's own report.html."""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

from onnxdtype.build.pipeline import KEY_PARAM
from onnxdtype.build.plan import NEEDS_CALIBRATION
from onnxdtype.build.publish import versions
from onnxdtype.dtype import INFO, DType
from onnxdtype.html_report import REPORT_NAME, write_report
from onnxdtype.io import atomic_write_text
from onnxdtype.manifest import folder_lock, read_manifest
from onnxdtype.results import BuildResult, Status, VariantResult
from onnxdtype.zoo.spec import ZooModel, ZooSpec

INDEX_NAME = "zoo.json"
VERDICT_COLORS = {"ok": "#cdeee8", "failed": "#f6c9cc", "not_applicable": "#ececec", "skipped": "#ffffff"}
_FIELDS = {f.name for f in dataclasses.fields(VariantResult)}


def write_index(out: Path, zoo: ZooSpec, results: dict[str, list[VariantResult]], seconds: float
                ) -> tuple[Path, Path]:
    """Write each model's report.html, then DIR/zoo.json and DIR/report.html; returns the last two."""
    models = {}
    for model in zoo.models:
        folder = out / model.name
        manifest = read_manifest(folder) if folder.is_dir() else {"modules": {}}
        if manifest["modules"]:
            write_report(BuildResult(folder, manifest_results(manifest, model), False))
        models[model.name] = _model_entry(model, manifest, results.get(model.name, []))
    index = {"spec": zoo.source, "seconds": round(seconds, 3), "versions": versions(), "models": models}
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")
        atomic_write_text(out / REPORT_NAME, render(index))
    return out / INDEX_NAME, out / REPORT_NAME


def manifest_results(manifest: dict, model: ZooModel) -> list[VariantResult]:
    """The model's recorded variants as results, in the spec's module and dtype order (for its report.html)."""
    found = []
    for module in model.modules:
        entry = manifest["modules"].get(module.name)
        for dtype in model.dtypes if entry else []:
            variant = entry["variants"].get(dtype.value)
            if variant is not None:
                fields = {k: v for k, v in variant.items() if k in _FIELDS}
                found.append(VariantResult(**{**fields, "module": module.name, "dtype": dtype.value,
                                              "base_bytes": entry["base"]["bytes"]}))
    return found


def _model_entry(model: ZooModel, manifest: dict, results: list[VariantResult]) -> dict:
    built = {(r.module, r.dtype) for r in results if r.status in (Status.OK, Status.FAILED)}
    modules = {}
    for module in model.modules:
        entry = manifest["modules"].get(module.name, {})
        base = entry.get("base")
        dtypes = {}
        for dtype in model.dtypes:
            variant = entry.get("variants", {}).get(dtype.value)
            dtypes[dtype.value] = _variant_entry(model, variant, base) if variant else {
                "status": "skipped", "reason": NEEDS_CALIBRATION if INFO[dtype].needs_calibration
                and model.calib is None else "not built"}
            dtypes[dtype.value]["built_this_run"] = (module.name, dtype.value) in built
        modules[module.name] = {"base": _relative(model, base), "calibration": entry.get("calibration"),
                                "dtypes": dtypes}
    return {"source": str(model.path), "folder": model.name, "report": f"{model.name}/{REPORT_NAME}",
            "modules": modules}


def _variant_entry(model: ZooModel, variant: dict, base: dict | None) -> dict:
    latency = (variant.get("latency") or {}).get("threads_all") or {}
    size = variant["bytes"] / base["bytes"] if variant.get("bytes") and base and base.get("bytes") else None
    return {"status": variant["status"], "reason": variant.get("reason"),
            "file": f"{model.name}/{variant['file']}" if variant.get("file") else None,
            "sha256": variant.get("sha256"), "bytes": variant.get("bytes"),
            "size_ratio": round(size, 4) if size else None, "speedup": latency.get("speedup"),
            "fp32_ms": latency.get("fp32_ms"), "variant_ms": latency.get("variant_ms"),
            "seconds": variant.get("seconds"), "key": (variant.get("params") or {}).get(KEY_PARAM)}


def _relative(model: ZooModel, base: dict | None) -> dict | None:
    return {**base, "file": f"{model.name}/{base['file']}"} if base else None


def model_cell(entry: dict, dtype: str) -> tuple[str, float | None, float | None, str]:
    """One model at one dtype over its modules: the verdict (failed if any failed, ok if any ok), size × (variant
    bytes over base bytes) and speed × (fp32 over variant latency, summed over the timed modules), and detail."""
    cells = [(name, m["dtypes"][dtype], m["base"]) for name, m in entry["modules"].items()]
    statuses = {c["status"] for _, c, _ in cells}
    verdict = next((s for s in ("failed", "ok", "not_applicable") if s in statuses), "skipped")
    sized = [(c["bytes"], base["bytes"]) for _, c, base in cells if c["status"] == "ok" and c["bytes"] and base]
    size = sum(b for b, _ in sized) / sum(b for _, b in sized) if sized else None
    timed = [c for _, c, _ in cells if c.get("fp32_ms") and c.get("variant_ms")]
    speed = sum(c["fp32_ms"] for c in timed) / sum(c["variant_ms"] for c in timed) if timed else None
    detail = "; ".join(f"{name}: {c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
                       for name, c, _ in cells)
    return verdict, size, speed, detail


def render(index: dict) -> str:
    """One row per model, one column per dtype; a cell coloured by verdict with size × and speed ×."""
    listed = {d for m in index["models"].values() for mod in m["modules"].values() for d in mod["dtypes"]}
    dtypes = [d.value for d in DType if d.value in listed]
    rows = []
    for name, entry in index["models"].items():
        cells = [f'<th><a href="{html.escape(entry["report"])}">{html.escape(name)}</a><br>'
                 f'<small>{len(entry["modules"])} module{"s" * (len(entry["modules"]) != 1)}</small></th>']
        for dtype in dtypes:
            if not all(dtype in m["dtypes"] for m in entry["modules"].values()):
                cells.append("<td></td>")
                continue
            verdict, size, speed, detail = model_cell(entry, dtype)
            text = "<br>".join(part for part in (
                f"size ×{size:.2f}" if size else "", f"speed ×{speed:.2f}" if speed else "") if part) or \
                html.escape(verdict.replace("_", " "))
            cells.append(f'<td class="{verdict}" style="background:{VERDICT_COLORS[verdict]}" '
                         f'title="{html.escape(detail)}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    legend = " ".join(f'<span style="background:{color};padding:2px 6px;border:1px solid #ccc">'
                      f'{verdict.replace("_", " ")}</span>' for verdict, color in VERDICT_COLORS.items())
    versions_text = ", ".join(f"{k} {v}" for k, v in index["versions"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnxdtype zoo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 6px 10px; font-size: 13px; }}
td {{ text-align: right; min-width: 6em; }} th {{ text-align: left; }}
</style></head><body>
<h1>onnxdtype zoo: {len(index["models"])} models</h1>
<p>Each cell: the model at that dtype over all its modules. size ×: variant bytes / fp32 bytes; speed ×: fp32 /
variant median latency (all threads). Hover a cell for each module's status; a model's name opens its report.</p>
<p>{legend}</p>
<table><tr><th>model</th>{"".join(f"<th>{html.escape(d)}</th>" for d in dtypes)}</tr>
{chr(10).join(rows)}
</table>
<p><small>{html.escape(index["spec"])}; {html.escape(versions_text)}; {index["seconds"]:.1f} s</small></p>
</body></html>
"""
