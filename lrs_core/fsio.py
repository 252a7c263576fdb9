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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so readers see the old file or the new one, never half of one.

    Local files go through a temporary file in the same folder and a rename; other filesystems
    get one PUT (object stores replace objects atomically). Parent folders are created.
    """
    fs, fs_path = filesystem(path)
    if is_local(fs):
        target = Path(fs_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    parent = parent_path(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "wb") as handle:  # one PUT: object stores replace objects atomically
        handle.write(data)
