"""The `onnxdtype` command: thin subcommands that parse arguments, call the API and print.

cli/build.py holds quantize, verify and calibrate; cli/run.py holds run and bench; cli/zoo.py holds zoo.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from onnxdtype import __version__
from onnxdtype.cli import build, run, zoo
from onnxdtype.cli.output import console, err_console, fail
from onnxdtype.errors import OnnxDtypeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Build, prove and run the precision variants of ONNX models.")


def _version(value: bool) -> None:
    if value:
        console.print(f"onnxdtype {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit")] = False) -> None:
    """Build, prove and run the precision variants of ONNX models."""


@app.command()
def dtypes() -> None:
    """List the dtypes, their aliases, file suffixes and recipes."""
    from onnxdtype.report import dtypes_table

    console.print(dtypes_table())


@app.command()
def inspect(model: Annotated[Path, typer.Argument(help="An .onnx file")]) -> None:
    """Show a model's inputs/outputs, opset, op counts, parameters, and which dtypes apply and why not."""
    from onnxdtype.build import applicability
    from onnxdtype.model import load_model, model_facts
    from onnxdtype.report import inspect_tables, print_tables
    from onnxdtype.verify.judges import guess_tasks

    try:
        loaded = load_model(model)
    except OnnxDtypeError as exc:
        fail(str(exc))
    print_tables(inspect_tables(model_facts(model, loaded), applicability(loaded), guess_tasks(loaded)), console)


build.register(app)
run.register(app)
zoo.register(app)


def main() -> None:
    try:
        app()
    except OnnxDtypeError as exc:  # errors raised outside a command body still get one line
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
