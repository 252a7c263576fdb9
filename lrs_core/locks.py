"""One writer at a time: an OS file lock per store, output folder or predictions file.

A writer takes :func:`exclusive_writer` on the path it writes (a Zarr store, an answers folder, a
predictions file) for as long as it writes. The lock is an OS advisory lock (``flock`` through the
`filelock` library) on a sibling file ``<name>.lock``, so the kernel releases it when the process
dies, however it dies: a killed writer never leaves a lock that blocks the next run. The lock file
lives *beside* the target, not inside it, so ``--overwrite`` may delete and recreate the target
while holding the lock.

Who holds a lock is written, after acquiring it, to ``<name>.lock.holder`` (JSON: pid, host,
since, purpose), so a second writer's error can name the holder. That file is informational only;
the lock itself is the OS lock, never the presence of a file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import filelock

from lrs_core.errors import LrsError

log = logging.getLogger(__name__)

#: Suffix of the lock file that sits beside a locked target.
LOCK_SUFFIX = ".lock"
#: Suffix of the JSON file that names the process holding the lock.
HOLDER_SUFFIX = ".lock.holder"


class WriterLockedError(LrsError, BlockingIOError):
    """Another process (or another writer in this one) is writing the same store or output."""


@dataclass(frozen=True, kw_only=True)
class LockHolder:
    """Who holds a writer lock: enough for a user to find the process."""

    pid: int
    host: str
    since: str  # ISO 8601, UTC
    purpose: str

    def describe(self) -> str:
        """One line for an error message: ``pid 123 on host h since 2026-…Z (ingest)``."""
        return f"pid {self.pid} on host {self.host} since {self.since} ({self.purpose})"


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of ``target``: ``<target>.lock`` in the same folder."""
    target_path = Path(os.path.abspath(target))
    return target_path.with_name(target_path.name + LOCK_SUFFIX)


def holder_path(target: str | os.PathLike[str]) -> Path:
    """The holder file of ``target``: ``<target>.lock.holder`` in the same folder."""
    target_path = Path(os.path.abspath(target))
    return target_path.with_name(target_path.name + HOLDER_SUFFIX)


def read_holder(target: str | os.PathLike[str]) -> LockHolder | None:
    """The recorded holder of ``target``'s lock, or None when none is recorded or readable."""
    try:
        fields = json.loads(holder_path(target).read_text())
        return LockHolder(**fields)
    except (OSError, ValueError, TypeError):
        return None


def _write_holder(target: Path, holder: LockHolder) -> None:
    path = holder_path(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(holder)))
    os.replace(tmp, path)


@contextmanager
def exclusive_writer(
    target: str | os.PathLike[str],
    *,
    purpose: str,
    wait: bool = False,
    timeout_s: float | None = None,
) -> Iterator[LockHolder]:
    """Hold the writer lock of ``target`` for the duration of the ``with`` block.

    Args:
        target: the store, folder or file about to be written (it need not exist yet; its parent
            folder is created).
        purpose: a few words on what the writer does (``"ingest scene-1"``), shown to a second
            writer.
        wait: block until the lock is free instead of failing at once.
        timeout_s: with ``wait``, give up after this many seconds (None waits forever).

    Yields:
        The holder record written for this process.

    Raises:
        WriterLockedError: another writer holds the lock (and ``wait`` is off, or it timed out).
            The message names the holder's pid, host and start time.
    """
    target_path = Path(os.path.abspath(target))
    target_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path(target_path), thread_local=False, fallback_to_soft=False)
    acquire_timeout = (-1.0 if timeout_s is None else timeout_s) if wait else 0.0
    try:
        lock.acquire(timeout=acquire_timeout)
    except filelock.Timeout as err:
        holder = read_holder(target_path)
        who = holder.describe() if holder is not None else "another process"
        raise WriterLockedError(
            f"{target_path} is being written by {who}; wait for it to finish, or pass "
            f"--wait to queue behind it (lock file {lock_path(target_path)})"
        ) from err
    try:
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            purpose=purpose,
        )
        _write_holder(target_path, holder)
        log.debug("writer lock taken on %s by %s", target_path, holder.describe())
        yield holder
    finally:
        holder_path(target_path).unlink(missing_ok=True)
        lock.release()
