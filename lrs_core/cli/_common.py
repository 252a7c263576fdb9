"""Helpers shared by the CLI command groups: console, JSON output, errors, progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lrs_core.errors import ConfigError, LrsError

console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """Write one JSON document (one line) to standard output."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: int = 1) -> None:
    """Print an error line to standard error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(code)


@contextmanager
def reported_errors(*, config_is_usage: bool = False) -> Iterator[None]:
    """Turn an :class:`LrsError` into a one-line message and exit status 1.

    Args:
        config_is_usage: exit with status 2 (usage) for a :class:`ConfigError` (a bad option).
    """
    try:
        yield
    except ConfigError as err:
        fail(str(err), code=2 if config_is_usage else 1)
    except LrsError as err:
        fail(str(err), code=1)


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` callback drawing a rich progress bar on standard error."""
    if not enabled:
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task_id = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task_id, completed=done, total=total)

        yield update


#: ``--device`` of every command that loads a model (resolved by
#: :func:`lrs_core.models.runtime.resolve_device`).
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
]
#: ``--dtype`` of every command that loads a model (:func:`lrs_core.models.runtime.resolve_dtype`).
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (the checkpoint's dtype on CUDA, fp32 on CPU), fp16, bf16 or fp32.",
    ),
]


def check_runtime(device: str, dtype: str) -> None:
    """Exit 2 with one line when ``--device``/``--dtype`` are unknown or unavailable (no CUDA)."""
    from lrs_core.models.runtime import parse_dtype, resolve_device

    try:
        resolve_device(device)
        parse_dtype(dtype)
    except ConfigError as err:
        fail(str(err), code=2)
