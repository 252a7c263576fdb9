"""Helpers shared by the CLI command groups: console, JSON output, errors, progress.

The dialect every command speaks: ``--json`` prints machine-readable results on standard output
(one JSON document per line), ``--out`` names the output folder or file, messages and progress go
to standard error, exit status 0 is success, 1 a failed item, 2 a usage error.

This module imports no heavy library (torch, transformers, rasterio, zarr, dask): ``lrs --help``
and usage errors must answer at once. Commands import what they need inside their functions,
after their usage checks.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Protocol

import typer
from rich.console import Console

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


#: Seconds between two plain progress lines when standard error is not a terminal.
PROGRESS_LOG_INTERVAL_S: Final = 30.0
#: A plain progress line is also printed each time another 1/N of the total is done.
PROGRESS_LOG_STEPS: Final = 10


class ProgressReporter(Protocol):
    """What :func:`progress_bar` yields: ``progress(done, total)`` plus a new description."""

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` items are finished."""

    def describe(self, description: str) -> None:
        """Start a new round under ``description`` (e.g. the next scene)."""


class _NoProgress:
    """A reporter that shows nothing (``--json``)."""

    def __call__(self, done: int, total: int) -> None:
        """Ignore the progress."""

    def describe(self, description: str) -> None:
        """Ignore the description."""


class PlainProgress:
    """``progress(done, total)`` as log lines, for a standard error that is not a terminal.

    A line is printed at the first call, every 1/:data:`PROGRESS_LOG_STEPS` of the total, at
    least every ``interval_s`` seconds while calls arrive, and when ``done`` reaches ``total``:
    ``ingest: 12/40 (30%), 95 s elapsed, ~221 s left``. A count that goes back (the next scene
    of a multi-scene ingest) starts over.
    """

    def __init__(
        self,
        description: str,
        *,
        total: int | None = None,
        interval_s: float = PROGRESS_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = total
        self.interval_s = interval_s
        self._clock = clock
        self._start = clock()
        self._last_time: float | None = None
        self._last_step = -1
        self._last_done = 0
        self._finished = False

    def describe(self, description: str) -> None:
        """Start a new round under ``description``: its first call prints a line."""
        self.description = description
        self._start, self._last_time, self._last_step = self._clock(), None, -1
        self._last_done, self._finished = 0, False

    def __call__(self, done: int, total: int | None = None) -> None:
        """Record progress; print a line when one is due."""
        if total is not None:
            self.total = total
        now = self._clock()
        if done < self._last_done:  # a new round (e.g. the next scene): start over
            self._start, self._last_time, self._last_step, self._finished = now, None, -1, False
        self._last_done = done
        step = self._step(done)
        finished = self.total is not None and done >= self.total
        due = (
            self._last_time is None
            or now - self._last_time >= self.interval_s
            or step > self._last_step
            or (finished and not self._finished)
        )
        if not due:
            return
        self._last_time, self._last_step, self._finished = now, step, finished
        console.print(self.line(done, now - self._start), highlight=False, markup=False)

    def _step(self, done: int) -> int:
        if not self.total:
            return 0
        return done * PROGRESS_LOG_STEPS // self.total

    def line(self, done: int, elapsed_s: float) -> str:
        """The progress line of ``done`` items after ``elapsed_s`` seconds."""
        if not self.total:
            return f"{self.description}: {done} done, {elapsed_s:.0f} s elapsed"
        text = (
            f"{self.description}: {done}/{self.total} ({100 * done / self.total:.0f}%), "
            f"{elapsed_s:.0f} s elapsed"
        )
        if 0 < done < self.total:
            text += f", ~{elapsed_s * (self.total - done) / done:.0f} s left"
        return text


@contextmanager
def progress_bar(
    description: str,
    *,
    enabled: bool = True,
    total: int | None = None,
    interval_s: float = PROGRESS_LOG_INTERVAL_S,
) -> Iterator[ProgressReporter]:
    """Yield a ``progress(done, total)`` callback that shows progress on standard error.

    On a terminal it draws a rich progress bar; otherwise (a log file, a pipe, a test runner) it
    prints plain lines (:class:`PlainProgress`), so a long run in a log shows where it stands.

    Args:
        description: what is counted, e.g. ``"ingest"`` (the start of each line).
        enabled: False shows nothing (e.g. under ``--json``).
        total: the item count, when known before the first call (shown at once).
        interval_s: most seconds between plain lines while progress is reported.
    """
    if not enabled:
        yield _NoProgress()
        return
    if not console.is_terminal:
        plain = PlainProgress(description, total=total, interval_s=interval_s)
        if total is not None:
            plain(0, total)
        yield plain
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        yield _BarProgress(bar, bar.add_task(description, total=total))


class _BarProgress:
    """A reporter drawing one task of a rich progress bar."""

    def __init__(self, bar: Any, task_id: Any) -> None:
        self._bar, self._task_id = bar, task_id

    def __call__(self, done: int, total: int) -> None:
        """Move the bar."""
        self._bar.update(self._task_id, completed=done, total=total)

    def describe(self, description: str) -> None:
        """Relabel the bar and start it over."""
        self._bar.reset(self._task_id, description=description)


#: ``--preset`` help of every command that answers questions.
PRESET_HELP: Final = (
    "default (coarse-to-fine zoom within a vision-token budget), parity (as the paper's released "
    "code), or a baseline: thumbnail, grid-N (one N x N tiled view), full (the finest view), "
    "fastv, pdrop (drop image tokens inside the language model)."
)
#: ``--model`` help of every command that loads a model.
MODEL_HELP: Final = (
    "Model folder: project format (lrs model init-tiny / convert), a paper release or llava-hf "
    "folder (read as is), or a Hugging Face Qwen2-VL / Qwen2.5-VL folder."
)


#: ``--device`` of every command that loads a model (resolved by
#: :func:`lrs_core.models.runtime.resolve_device`).
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
]
#: ``--preset`` of every command that answers questions.
PresetOpt = Annotated[str, typer.Option("--preset", help=PRESET_HELP)]
#: ``--budget`` of every command that answers questions (checked by :func:`check_budget`).
BudgetOpt = Annotated[
    int | None,
    typer.Option("--budget", help="Most vision tokens to the LLM (thumbnail included)."),
]
#: ``--dtype`` of every command that loads a model (:func:`lrs_core.models.runtime.resolve_dtype`).
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (the checkpoint's dtype on CUDA, fp32 on CPU), fp16, bf16 or fp32.",
    ),
]


#: Every name ``--dtype`` accepts (``lrs_core.models.runtime`` maps them to torch dtypes; a test
#: keeps the two in step). Checked here without importing torch.
DTYPE_NAMES: Final = frozenset(
    {"auto", "fp16", "float16", "half", "bf16", "bfloat16", "fp32", "float32", "float"}
)
#: ``--dtype`` names shown in messages.
DTYPE_CHOICES: Final = ("auto", "fp16", "bf16", "fp32")
_DEVICE_NAME = re.compile(r"(auto|cpu|meta|cuda(:\d+)?)")


def check_runtime(device: str, dtype: str) -> None:
    """Exit 2 with one line when ``--device``/``--dtype`` are unknown or unavailable (no CUDA).

    Names are checked without importing torch; only a CUDA device imports it, to ask whether
    the GPU is there.
    """
    if dtype not in DTYPE_NAMES:
        fail(f"--dtype {dtype!r} is not one of {list(DTYPE_CHOICES)}", code=2)
    if _DEVICE_NAME.fullmatch(device) is None:
        fail(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N", code=2)
    if not device.startswith("cuda"):
        return
    from lrs_core.models.runtime import resolve_device

    try:
        resolve_device(device)
    except ConfigError as err:
        fail(str(err), code=2)


#: ``context_settings`` of a command whose output was once a positional argument: the old form
#: lands in ``ctx.args`` (read by :func:`deprecated_positional`) and stays out of the usage line.
LEGACY_POSITIONAL: Final = {"allow_extra_args": True}


def deprecated_positional(ctx: typer.Context) -> Path | None:
    """The one extra positional argument of a :data:`LEGACY_POSITIONAL` command, if any.

    Exits 2 when there are more.
    """
    if len(ctx.args) > 1:
        fail(f"unexpected arguments {' '.join(ctx.args[1:])!r}; see --help", code=2)
    return Path(ctx.args[0]) if ctx.args else None


def out_path(
    out: Path | None, positional: Path | None, *, name: str, required: bool = True
) -> Path | None:
    """Return the output path of ``--out``, or of a deprecated positional ``name`` (warned).

    Exits 2 when both are given, or (``required``) neither.
    """
    if out is not None and positional is not None:
        fail(f"give the output once: --out {out} or {name} {positional}, not both", code=2)
    if positional is not None:
        console.print(
            f"[yellow]warning:[/] the positional {name} is deprecated; use --out {positional}",
            highlight=False,
        )
        return positional
    if out is None and required:
        fail("missing option '--out': give the output path, e.g. --out OUT", code=2)
    return out
