"""Helpers shared by the CLI command groups: console, JSON output, errors, progress bars."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lrs_core.errors import ConfigError, LrsError

console = Console(stderr=True, soft_wrap=True)  # one message, one line (no wrap at 80)


def print_json(obj: Any) -> None:
    """Write one JSON document (one line) to standard output."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: int = 1) -> None:
    """Print an error line to standard error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise SystemExit(code)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``/`` at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def check_out_path(
    path: Path, *, kind: Literal["folder", "file"], option: str = "--out", create: bool = True
) -> None:
    """Fail with one line (exit 1) unless ``path`` can be written as a ``kind``.

    A folder is created (with ``create``) and a probe file is made and removed in it; for a file,
    its parent folder is. Nothing else is written, so a refused command leaves no trace.

    Args:
        path: the output path given on the command line.
        kind: ``"folder"`` (an output folder) or ``"file"`` (e.g. a prediction JSONL).
        option: the option's name, for the message.
        create: create the folder (or the file's parent) when missing.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        fail(f"{option} {path} is an existing file, not a folder; give a folder path", code=1)
    if kind == "file" and path.is_dir():
        fail(f"{option} {path} is an existing folder; give a file path", code=1)
    folder = path if kind == "folder" else path.parent
    blocker = _nearest_existing(folder)
    if not blocker.is_dir():
        fail(
            f"{option} {path} cannot be written: {blocker} is a file, not a folder; choose "
            "another path",
            code=1,
        )
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        target = folder if folder.is_dir() else blocker
        handle, probe = tempfile.mkstemp(prefix=".lrs-write-check-", dir=target)
        os.close(handle)
        os.unlink(probe)
        if kind == "file" and path.is_file() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except OSError as err:
        fail(
            f"{option} {path} cannot be written ({err.strerror or err}); choose another path or "
            "fix its permissions",
            code=1,
        )


def check_budget(budget: int | None, *, option: str = "--budget") -> None:
    """Fail with one line (exit 2) when a vision-token budget is not a positive count."""
    if budget is not None and budget < 1:
        fail(
            f"{option} {budget}: the budget is the number of vision tokens sent to the language "
            "model and must be at least 1 (leave it out to use the preset's)",
            code=2,
        )


def check_question(text: str | None, *, option: str = "--question") -> None:
    """Fail with one line (exit 2) for an empty or whitespace-only question."""
    if text is not None and not text.strip():
        fail(f"{option} is empty; give the question text, e.g. {option} 'How many ships?'", code=2)


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
