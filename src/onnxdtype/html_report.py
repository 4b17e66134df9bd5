"""report.html: a self-contained page (inline CSS and SVG, no scripts, no network) of what was measured.

Plots where people would rather look than read: error vs size and speed vs size, one point per variant,
failed variants red, repaired ones ringed. Per-output figures sit in collapsible sections.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from onnxdtype.io import atomic_write_text
from onnxdtype.manifest import folder_lock
from onnxdtype.results import BuildResult, VariantResult

REPORT_NAME = "report.html"
COLORS = {"ok": "#2a9d8f", "kept": "#2a9d8f", "failed": "#d62828"}
WIDTH, HEIGHT, PAD = 460, 300, 52


def write_report(result: BuildResult) -> Path:
    """Write report.html into the output folder atomically and return its path. Under the folder lock: another
    build starting on the folder removes stale temp files, and this one's temp file must not look like one."""
    path = result.out_dir / REPORT_NAME
    text = render(result)
    with folder_lock(result.out_dir):
        atomic_write_text(path, text)
    return path


def _points(result: BuildResult) -> list[VariantResult]:
    return [r for r in result.results if r.size_ratio is not None]


def _scatter(title: str, points: list[tuple[float, float, VariantResult]], x_label: str, y_label: str,
             log_y: bool = False) -> str:
    if not points:
        return f'<figure><figcaption>{html.escape(title)}: nothing measured</figcaption></figure>'
    xs = [p[0] for p in points]
    ys = [math.log10(p[1]) if log_y else p[1] for p in points]
    x0, x1 = 0.0, max(1.05, max(xs) * 1.05)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 1, y1 + 1
    span = y1 - y0
    y0, y1 = y0 - 0.08 * span, y1 + 0.08 * span

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD + (y - y0) / (y1 - y0) * (2 * PAD - HEIGHT)

    parts = [f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img">',
             f'<title>{html.escape(title)}</title>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#444"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#444"/>']
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        label = f"{10 ** yv:.1e}" if log_y else f"{yv:.2f}"
        parts.append(f'<text x="{sx(xv):.1f}" y="{HEIGHT - PAD + 16}" font-size="10" text-anchor="middle">{xv:.2f}</text>')
        parts.append(f'<text x="{PAD - 6}" y="{sy(yv) + 3:.1f}" font-size="10" text-anchor="end">{label}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 10}" font-size="11" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{HEIGHT / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {HEIGHT / 2})">{html.escape(y_label)}</text>')
    for (x, _, r), y in zip(points, ys):
        color = COLORS.get(r.status, "#888")
        label = f"{r.module} {r.dtype}"
        parts.append(f'<circle class="point" data-variant="{html.escape(label)}" data-status="{r.status}" '
                     f'cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color}"'
                     + (' stroke="#f4a261" stroke-width="3"' if r.repaired else "") + f'><title>{html.escape(label)}</title></circle>')
        parts.append(f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}" font-size="10">{html.escape(label)}</text>')
    parts.append(f'</svg><figcaption>{html.escape(title)}</figcaption></figure>')
    return "".join(parts)


def _judges(result: BuildResult) -> list[str]:
    """One row per module output: the judge that decided it, and why it was chosen."""
    rows, seen = [], set()
    for r in result.results:
        for output, spec in ((r.verification or {}).get("tasks") or {}).items():
            if (r.module, output) not in seen:
                seen.add((r.module, output))
                params = ",".join(f"{k}={v}" for k, v in spec.get("params", {}).items())
                cells = [r.module, output, spec["task"] + (f":{params}" if params else ""), spec.get("why", "")]
                rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return rows


def render(result: BuildResult) -> str:
    measured = _points(result)
    error_points = [(r.size_ratio, max(1.0 - r.worst_cosine, 1e-9), r) for r in measured if r.worst_cosine is not None]
    speed_points = [(r.size_ratio, r.speedup, r) for r in measured if r.speedup]
    rows = []
    for r in result.results:
        verification = r.verification or {}
        cells = [r.module, r.dtype, r.file or "—", f"{r.bytes / 1e6:.2f}" if r.bytes else "—",
                 f"{r.size_ratio:.2f}" if r.size_ratio else "—",
                 f"{r.task_agreement[0]} {r.task_agreement[1]:.1%}" if r.task_agreement else "—",
                 f"{r.worst_cosine:.5f}" if r.worst_cosine is not None else "—",
                 f"{r.speedup:.2f}" if r.speedup else "—", r.kernel_summary or "—",
                 r.status + (" (repaired)" if r.repaired else "") + (f": {r.reason}" if r.reason else ""),
                 verification.get("data", "—") + (" — accuracy not judged" if verification.get("synthesized") else "")]
        rows.append("<tr class=\"variant\">" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    details = []
    for r in result.results:
        if r.verification or r.latency:
            payload = {"verification": r.verification, "latency": r.latency, "kernels": r.kernels,
                       "kept_in_float": r.kept_in_float,
                       "params": r.params, "op_changes": r.op_changes}
            details.append(f"<details><summary>{html.escape(r.module)} {html.escape(r.dtype)}: figures</summary>"
                           f"<pre>{html.escape(json.dumps(payload, indent=1, default=str))}</pre></details>")
    header = ["module", "dtype", "file", "MB", "size ×", "task agreement", "worst cosine", "speed ×",
              "kernels onnxruntime ran", "status", "evaluation data"]
    judges = _judges(result)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnxdtype report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }}
th {{ background: #f0f0f0; }} figure {{ display: inline-block; margin: 0 1em 1em 0; }}
pre {{ font-size: 11px; background: #f7f7f7; padding: 8px; overflow-x: auto; }}
</style></head><body>
<h1>onnxdtype report</h1>
<p>{len(result.results)} results in <code>{html.escape(str(result.out_dir))}</code>. Task agreement is the lowest share
of task units (lines read alike, labels, detections, neighbours, map pixels) agreeing with fp32 over the outputs a task
judge decides; cosine is the worst over outputs and their feature channels against fp32 (what generic outputs are
judged on); speed × is fp32 / variant median latency (all threads), measured interleaved
in one process. Green: ok; red: failed; ringed: repaired by keeping nodes in fp32.</p>
{_scatter("error (1 - worst cosine) vs size", error_points, "size × fp32", "1 - cosine (log scale)", log_y=True)}
{_scatter("speed vs size", speed_points, "size × fp32", "speedup × fp32")}
<h2>Task judges</h2>
<table><tr><th>module</th><th>output</th><th>judge</th><th>why</th></tr>
{"".join(judges)}
</table>
<table><tr>{"".join(f"<th>{h}</th>" for h in header)}</tr>
{"".join(rows)}
</table>
<h2>Figures per variant</h2>
{"".join(details)}
</body></html>
"""
