"""The terminal summary table and the `dtypes` / `inspect` views (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from onnxdtype.dtype import INFO, DType
from onnxdtype.model import ModelFacts
from onnxdtype.naming import file_suffix

if TYPE_CHECKING:
    from onnxdtype.results import BuildResult

STATUS_STYLE = {"ok": "green", "kept": "green", "failed": "bold red", "not_applicable": "yellow", "skipped": "dim"}


def build_table(result: BuildResult) -> Table:
    table = Table(title=f"onnxdtype variants in {result.out_dir}", title_justify="left")
    numeric = ("MB", "size ×", "task", "cosine", "speed ×", "int/qdq", "s")
    for column in ("module", "dtype", "file", *numeric, "status"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for r in result.results:
        status = r.status if r.status in ("ok", "kept") else f"{r.status}: {r.reason}"
        if r.repaired:
            status += f" (repaired: {len(r.verification['repair']['kept'])} nodes in higher precision)"
        elif r.status == "ok" and r.kept_in_float:
            status += f" ({len(r.kept_in_float)} nodes kept fp32)"
        verification = r.verification or {}
        if verification.get("synthesized"):
            status += " [dim](accuracy not judged: synthesized inputs)[/]"
        table.add_row(
            r.module, r.dtype, r.file or "—",
            f"{r.bytes / 1e6:.1f}" if r.bytes else "—",
            f"{r.size_ratio:.2f}" if r.size_ratio else "—",
            f"{r.task_agreement[0]} {r.task_agreement[1]:.1%}" if r.task_agreement else "—",
            f"{r.worst_cosine:.5f}" if r.worst_cosine is not None else "—",
            f"{r.speedup:.2f}" if r.speedup else "—",
            f"{sum(r.kernels['integer'].values())}/{sum(r.kernels['conversions'].values())}" if r.kernels else "—",
            f"{r.seconds:.1f}" if r.seconds is not None else "—",
            f"[{STATUS_STYLE.get(r.status, '')}]{status}[/]",
        )
    table.caption = ("task: the judge with the lowest agreement to fp32 (lines read alike, labels, detections, neighbours,"
                     " map IoU); cosine: worst over outputs and channels (what generic outputs are judged on); "
                     "speed ×: fp32 / variant median latency; int/qdq: integer kernels / Q-DQ conversions in the "
                     "graph onnxruntime runs")
    return table


def dtypes_table() -> Table:
    table = Table(title="onnxdtype dtypes", title_justify="left")
    for column in ("dtype", "aliases", "bits", "calibration", "file", "recipe", "meaning"):
        table.add_column(column)
    for dtype in DType:
        info = INFO[dtype]
        table.add_row(info.name, ", ".join(info.aliases), info.bits, "yes" if info.needs_calibration else "no",
                      f"<stem>{file_suffix(dtype)}.onnx", " → ".join(info.steps) or "the input", info.description)
    return table


def inspect_tables(facts: ModelFacts, applicability: dict[str, str | None], tasks: dict | None = None) -> list[Table]:
    io = Table(title=f"{facts.path}  (opset {facts.opset}, IR {facts.ir_version}, {facts.producer or 'unknown producer'})",
               title_justify="left")
    for column in ("", "name", "type", "shape"):
        io.add_column(column)
    for kind, rows in (("input", facts.inputs), ("output", facts.outputs)):
        for name, elem, dims in rows:
            io.add_row(kind, name, elem, "[" + ", ".join(map(str, dims)) + "]")
    ops = Table(title=f"{sum(facts.op_counts.values())} nodes, {facts.float_params:,} float parameters, "
                      f"{facts.file_bytes / 1e6:.1f} MB", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in facts.op_counts.most_common():
        ops.add_row(op, str(count))
    apply = Table(title="dtypes", title_justify="left")
    apply.add_column("dtype")
    apply.add_column("applies")
    for name, reason in applicability.items():
        apply.add_row(name, "[green]yes[/]" if reason is None else f"[yellow]no[/]: {reason}")
    judges = Table(title="task judges (guessed; --task overrides)", title_justify="left")
    for column in ("output", "task", "why"):
        judges.add_column(column)
    for name, spec in (tasks or {}).items():
        params = ",".join(f"{k}={v}" for k, v in spec.params.items())
        judges.add_row(name, spec.task + (f":{params}" if params else ""), spec.why)
    return [io, ops, apply, judges]


def print_tables(tables: list[Table], console: Console | None = None) -> None:
    console = console or Console()
    for table in tables:
        console.print(table)

