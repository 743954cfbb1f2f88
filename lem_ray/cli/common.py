"""What every lem-ray command shares: how it refuses bad input, and how wide it prints."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from typing_extensions import override


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2, nothing written."""
    click.echo(f"lem-ray: error: {message}", err=True)
    sys.exit(2)


class OneLineGroup(click.Group):
    """Click's usage errors as one line and exit 2, like every other refusal."""

    @override
    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)  # UsageError and its subclasses carry one
            command = ctx.command_path if ctx else self.name
            hint = f" (see {command} --help)" if isinstance(exc, click.UsageError) else ""
            fail(f"{' '.join(exc.format_message().split())}{hint}")
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                # Ctrl-C before any run started (Ray starting, the plan being written): the
                # same code as one during the runs, and resuming is the same command.
                click.echo("lem-ray: interrupted", err=True)
                sys.exit(130)
            click.echo("lem-ray: aborted", err=True)
            sys.exit(1)
        if isinstance(code, int) and code:
            sys.exit(code)
        return code


def check_output_file(path: Path, option: str) -> None:
    """Before anything is written: the file can be created there (or replaced)."""
    from lem_ray.errors import ConfigError

    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a file", path=option)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"cannot create {path}: {probe} is a file", path=option)
    if not os.access(probe, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"no permission to write {path}", path=option)


def console(stderr: bool = False) -> Console:
    """Logs and CI are not terminals: give tables room instead of rich's 80 columns.

    No markup: what is printed holds errors, paths, model names and config values, and rich
    would take `lem-ray[vllm]` in an error for a style tag and drop it. Colour comes from
    rich.text.Text styles instead."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160, markup=False)


# A label column is at least this wide: in a 160-column log, what the report's throughput and
# latency table leaves beside its metrics (wider, the last one is cut off).
LABEL_WIDTH = 14


def label_width(build: Callable[[int], Table], labels: list[str], console: Console) -> int:
    """The width of a table's label column: what the console leaves beside the other columns
    at their natural width, up to the longest label, at least LABEL_WIDTH. `build(width)` lays
    the table out with its labels on lines of at most `width` (labels.wrap_label), so a label
    breaks between its parts, never mid-word as a table's own wrapping does."""
    others = Measurement.get(console, console.options, build(LABEL_WIDTH)).maximum - LABEL_WIDTH
    return max(LABEL_WIDTH, min(console.width - others, max(map(len, labels), default=0)))
