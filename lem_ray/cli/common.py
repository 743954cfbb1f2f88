"""What every lem-ray command shares: how it refuses bad input, and how wide it prints."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from rich.console import Console


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing written."""
    click.echo(f"lem-ray: error: {message}", err=True)
    sys.exit(2)


def console(stderr: bool = False) -> Console:
    """Logs and CI are not terminals: give tables room instead of rich's 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)
