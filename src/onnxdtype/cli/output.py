"""Where the CLI prints: results on stdout, errors (one line each) on stderr."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: no truncated file names
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One `error:` line on stderr, then exit (2: the user's mistake)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
