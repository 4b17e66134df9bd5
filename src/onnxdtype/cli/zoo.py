"""`onnxdtype zoo SPEC --out DIR`: every model's variants from one spec, on this machine or a Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from onnxdtype.cli.output import console, err_console, fail
from onnxdtype.errors import OnnxDtypeError


def register(app: typer.Typer) -> None:
    app.command()(zoo)


def zoo(
    spec: Annotated[Path, typer.Argument(help="A zoo.toml: a defaults table and a list of models (see the README)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: a folder per model, zoo.json, report.html")],
    executor: Annotated[str, typer.Option(help="local (this machine's worker pool) or ray")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: auto or ray://HOST:PORT (default: Ray here)")
                       ] = None,
    max_parallel: Annotated[Optional[int], typer.Option(help="Tasks at once (default: by cores and memory)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print zoo.json")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show onnxruntime's own logging")] = False,
) -> None:
    """Build, prove, time and index every (module, dtype) of a zoo; a rerun does only what changed."""
    if verbose:
        os.environ["ONNXDTYPE_VERBOSE"] = "1"
    from onnxdtype.zoo import ZooProgress, build_zoo

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("running {task.fields[running]}, failed {task.fields[failed]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
                        transient=True, disable=not err_console.is_terminal)
    bar = progress.add_task("zoo", total=None, running=0, failed=0)

    def on_change(state: ZooProgress) -> None:
        progress.update(bar, total=state.total, completed=state.done, running=state.running, failed=state.failed,
                        description=f"zoo: {state.stage}")
        result = state.finished
        if result is not None:
            size = f"  size ×{result.size_ratio:.2f}" if result.size_ratio else ""
            why = f": {result.reason}" if result.reason else ""
            progress.console.print(f"{state.model}/{result.module} {result.dtype}: {result.status}{why}{size}"
                                   f"  ({result.seconds or 0:.1f} s)", highlight=False, soft_wrap=True)

    with progress:
        try:
            result = build_zoo(spec, out, executor=executor, address=address, max_parallel=max_parallel,
                               progress=on_change)
        except OnnxDtypeError as exc:
            progress.stop()
            fail(str(exc))
    if as_json:
        print(result.index.read_text())
    else:
        state = result.progress
        console.print(f"{state.done} tasks run ({state.failed} failed), {state.skipped} up to date, "
                      f"{result.seconds:.1f} s\nindex:  {result.index}\nreport: {result.report}", highlight=False)
    if result.failed:
        for model, r in result.failed:
            err_console.print(f"[bold red]error:[/] {model}/{r.module} {r.dtype}: {r.reason}", highlight=False,
                              soft_wrap=True)
        raise typer.Exit(1)
