"""Small fsspec helpers shared by the output writers: resolve a path or URL, write atomically.

Paths are local paths or fsspec URLs (``s3://bucket/run``, ``memory://run``); the "fs path" that
:func:`filesystem` returns is the path inside that filesystem (no protocol), ``/``-separated.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import fsspec

#: Mode of a new file before the umask (what ``open(path, "w")`` asks for).
DEFAULT_FILE_MODE = 0o666
_UMASK_FALLBACK: int | None = None


def filesystem(path: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem of ``path`` (local path or URL) and the path inside it."""
    from fsspec.core import url_to_fs

    fs, fs_path = url_to_fs(os.fspath(path))
    return fs, fs_path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (where rename and hard links are atomic)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def parent_path(fs_path: str) -> str:
    """The parent of a ``/``-separated fs path ("" for a top-level name)."""
    return fs_path.rstrip("/").rsplit("/", 1)[0] if "/" in fs_path.rstrip("/") else ""


def join_path(base: str, *names: str) -> str:
    """``base`` and ``names`` joined with ``/`` (for fs paths and URLs alike)."""
    return "/".join([base.rstrip("/"), *names])


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux)."""
    global _UMASK_FALLBACK
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    if _UMASK_FALLBACK is None:  # no /proc: read it once (os.umask sets it while reading)
        _UMASK_FALLBACK = os.umask(0o022)
        os.umask(_UMASK_FALLBACK)
    return _UMASK_FALLBACK


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder to disk (fsync), so a rename inside it survives a power failure."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` so readers see the old file or the new one, never half of one.

    Local files go through a temporary file in the same folder and a rename (a symlink at
    ``path`` is replaced, never written through); the file gets mode ``0o666 & ~umask``, as a
    plain ``open(path, "w")`` would. Other filesystems get one PUT (object stores replace objects
    atomically). Parent folders are created.

    Args:
        path: local path or fsspec URL.
        data: the file's bytes.
        durable: local files only: fsync the file before the rename and its folder after it.
    """
    fs, fs_path = filesystem(path)
    if is_local(fs):
        target = Path(fs_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            # mkstemp creates 0600; a file written in place would get 0666 less the umask.
            os.fchmod(fd, DEFAULT_FILE_MODE & ~current_umask())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            # os.replace swaps the name itself: a symlink planted at ``target`` is replaced,
            # never followed.
            os.replace(tmp, target)
            if durable:
                fsync_dir(target.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    parent = parent_path(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "wb") as handle:  # one PUT: object stores replace objects atomically
        handle.write(data)
