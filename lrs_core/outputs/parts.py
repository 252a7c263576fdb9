"""The batch output folder: append answers as GeoParquet parts, overlays and a GeoJSON.

A batch's output folder holds::

    OUT/answers.parquet/part-00000.parquet   GeoParquet parts, one per append, never rewritten
    OUT/answers.geojson                      every answer's evidence as a FeatureCollection
    OUT/overlays/<question_id>.png           evidence and heat map on the scene thumbnail

``OUT`` is a local path or an fsspec URL (``s3://bucket/run``, ``memory://run``). Each file is
written by its module: :mod:`~lrs_core.outputs.geoparquet`, :mod:`~lrs_core.outputs.geojson`,
:mod:`~lrs_core.outputs.overlays`.

Trust rules (see docs/outputs.md):

* One writer per local folder: a :class:`BatchWriter` holds the OS lock of ``OUT``
  (:func:`lrs_core.locks.exclusive_writer`, lock file ``OUT.lock`` beside it) while it is used as a
  context manager, and takes it for each single write otherwise. A second writer gets
  :class:`~lrs_core.locks.WriterLockedError` naming the holder, or queues with ``wait=True``.
  Object-store URLs have no OS lock; one writer per URL is then the caller's duty.
* Readers never yield a question id twice (:func:`read_records`): the first successful record of
  an id wins (else its first failed one); extra successful copies are dropped with a warning.
* A part that is empty or unreadable (a crash, a full disk) is treated as absent, with a warning:
  its answers are answered again on resume instead of blocking the folder for good.
* A record's overlay is written before its part: the part marks the answer done, so a kill between
  the two leaves no answer without its overlay.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lrs_core.dedupe import first_per_id
from lrs_core.errors import ConfigError
from lrs_core.fsio import filesystem, is_local, join_path
from lrs_core.locks import exclusive_writer
from lrs_core.outputs.geojson import write_geojson
from lrs_core.outputs.geometry import LONLAT_CRS, ThumbnailSource
from lrs_core.outputs.geoparquet import answers_frame, write_geoparquet
from lrs_core.outputs.overlays import DEFAULT_OVERLAY_SIDE_PX, write_overlay_png
from lrs_core.records import AnswerRecord

if TYPE_CHECKING:
    import fsspec
    import geopandas
    import pyarrow

log = logging.getLogger(__name__)

#: Digits of a part number in ``part-XXXXX.parquet``.
PART_DIGITS = 5
PARTS_DIRNAME = "answers.parquet"
GEOJSON_NAME = "answers.geojson"
OVERLAYS_DIRNAME = "overlays"

_PART_RE = re.compile(r"^part-(\d+)\.parquet$")
_SAFE_ID_RE = re.compile(r"[^A-Za-z0-9._-]")


def _part_names(fs: fsspec.AbstractFileSystem, parts_dir: str) -> list[str]:
    """Return the ``part-XXXXX.parquet`` file names under ``parts_dir``, in part order."""
    if not fs.exists(parts_dir):
        return []
    names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(parts_dir, detail=False)]
    return sorted((n for n in names if _PART_RE.match(n)), key=_part_number)


def _part_number(name: str) -> int:
    """Return XXXXX of ``part-XXXXX.parquet`` (-1 for any other name)."""
    match = _PART_RE.match(name)
    return int(match.group(1)) if match else -1


def _read_part(
    fs: fsspec.AbstractFileSystem, path: str, columns: Sequence[str]
) -> pyarrow.Table | None:
    """Read ``columns`` of one part; None (with a warning) for an empty or unreadable part.

    A part is only ever renamed into place whole, so an empty or corrupt one comes from outside
    (a crash of the filesystem, a full disk, a copy cut short): it is treated as absent, and its
    answers are answered again, rather than blocking every later resume with an error.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            # one record per part: threads buy nothing, and pyarrow 26's threaded read of a Python
            # file object aborts the interpreter at exit ("terminate called without an active
            # exception", exit 134) in about 4 runs of 10, after correct results
            return pq.read_table(handle, columns=list(columns), use_threads=False)
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        log.warning(
            "%s: unreadable answers part skipped, treated as absent; its answers are answered "
            "again on resume (%s: %s)",
            path,
            type(err).__name__,
            " ".join(str(err).split()) or "empty file",
        )
        return None


def _part_paths(out_dir: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    fs, base = filesystem(out_dir)
    parts_dir = join_path(base, PARTS_DIRNAME)
    return fs, [join_path(parts_dir, name) for name in _part_names(fs, parts_dir)]


def read_records(out_dir: str | os.PathLike[str], *, unique: bool = True) -> list[AnswerRecord]:
    """Return the records stored in ``OUT/answers.parquet`` parts, in write order.

    Args:
        out_dir: the batch output folder (local path or fsspec URL).
        unique: one record per question id (see :func:`first_per_id`); False returns every
            stored record, retries and duplicates included.
    """
    fs, paths = _part_paths(out_dir)
    records: list[AnswerRecord] = []
    for path in paths:
        table = _read_part(fs, path, ["record_json"])
        if table is None:
            continue
        records.extend(
            AnswerRecord.from_dict(json.loads(text)) for text in table["record_json"].to_pylist()
        )
    if not unique:
        return records
    return first_per_id(
        records,
        id_of=lambda r: r.question_id,
        failed=lambda r: r.error is not None,
        source=os.fspath(out_dir),
    )


def answered_ids(out_dir: str | os.PathLike[str], *, include_failed: bool = False) -> set[str]:
    """Question ids already written under ``OUT/answers.parquet`` (for resuming a batch).

    Args:
        out_dir: the batch output folder (local path or fsspec URL); missing means nothing done.
        include_failed: also count records that carry an ``error`` (by default those are retried).

    Returns:
        The set of ``question_id`` values (empty or unreadable parts count as absent).
    """
    fs, paths = _part_paths(out_dir)
    done: set[str] = set()
    for path in paths:
        table = _read_part(fs, path, ["question_id", "error"])
        if table is None:
            continue
        for question_id, error in zip(
            table["question_id"].to_pylist(), table["error"].to_pylist(), strict=True
        ):
            if include_failed or error is None:
                done.add(question_id)
    return done


def read_answers_table(out_dir: str | os.PathLike[str]) -> geopandas.GeoDataFrame:
    """The answers folder as one GeoDataFrame, one row per question id.

    Every part has the same schema (see :func:`~lrs_core.outputs.geoparquet.answers_frame`):
    ``geometry`` is EPSG:4326 and null for answers about scenes without georeference, whose
    footprint is only in ``geometry_px`` (pixels, CRS None). Duplicated ids are dropped as in
    :func:`read_records`; unreadable parts are skipped with a warning.

    Args:
        out_dir: the batch output folder (local path or fsspec URL).

    Returns:
        The frame (empty, with the usual columns, when nothing is stored).
    """
    import geopandas
    import pandas as pd

    fs, paths = _part_paths(out_dir)
    frames: list[geopandas.GeoDataFrame] = []
    for path in paths:
        if _read_part(fs, path, ["question_id"]) is None:
            continue
        with fs.open(path, "rb") as handle:
            frame = geopandas.read_parquet(handle)
        if frame.crs is None:  # a part written before pixel footprints left ``geometry``
            frame = frame.set_geometry(
                geopandas.GeoSeries([None] * len(frame), index=frame.index, crs=LONLAT_CRS)
            )
        frames.append(frame.to_crs(LONLAT_CRS))
    if not frames:
        return answers_frame([])
    table = pd.concat(frames, ignore_index=True)
    failed = table["error"].notna().to_numpy()
    order = list(range(len(table)))
    kept = first_per_id(
        order,
        id_of=lambda i: table["question_id"].iat[i],
        failed=lambda i: bool(failed[i]),
        source=os.fspath(out_dir),
    )
    result = table.iloc[kept].reset_index(drop=True)
    return geopandas.GeoDataFrame(result, geometry="geometry", crs=LONLAT_CRS)


@dataclass(frozen=True, kw_only=True)
class BatchCounts:
    """Outcome counts of a batch of questions (what a flow's final state is decided on).

    Attributes:
        answered: questions answered now without error.
        skipped: questions already answered by an earlier run.
        failed: questions that failed (their rows carry ``error``).
    """

    answered: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        """All questions counted."""
        return self.answered + self.skipped + self.failed

    @property
    def all_ok(self) -> bool:
        """True when no question failed."""
        return self.failed == 0

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> BatchCounts:
        """Count rows by their ``status`` (``answered``, ``skipped`` or ``failed``)."""
        statuses = [row.get("status") for row in rows]
        return cls(
            answered=statuses.count("answered"),
            skipped=statuses.count("skipped"),
            failed=statuses.count("failed"),
        )

    def to_dict(self) -> dict[str, int]:
        """Plain JSON values."""
        return {"answered": self.answered, "skipped": self.skipped, "failed": self.failed}


@contextmanager
def batch_lock(
    out_dir: str | os.PathLike[str],
    *,
    purpose: str,
    wait: bool = False,
    timeout_s: float | None = None,
) -> Iterator[None]:
    """Hold the writer lock of a local batch folder (a no-op for object-store URLs).

    Raises:
        WriterLockedError: another writer holds it (and ``wait`` is off, or timed out).
    """
    fs, base = filesystem(out_dir)
    if not is_local(fs):
        log.debug("%s: no OS lock on an object store; one writer per URL is the caller's", out_dir)
        yield
        return
    with exclusive_writer(base, purpose=purpose, wait=wait, timeout_s=timeout_s):
        yield


class BatchWriter:
    """Append answers to a batch output folder without ever rewriting finished output.

    Each :meth:`append` writes ``OUT/overlays/<question_id>.png`` when a pyramid is given, then a
    new ``OUT/answers.parquet/part-XXXXX.parquet`` (the next free number; an existing part is never
    replaced), and refreshes ``OUT/answers.geojson``. The part marks the answers done, so it is
    written last. :meth:`finalize` rebuilds ``answers.geojson`` from all parts, keeping one answer
    per question id (:func:`read_records`).

    Every part has the same columns and the same CRS per geometry column (see
    :func:`~lrs_core.outputs.geoparquet.answers_frame`), so the parts read as one table whatever
    mix of georeferenced and pixel-only scenes the batch holds.

    Use it as a context manager to hold the folder's writer lock for a whole batch (from reading
    :meth:`answered_ids` to the last append), so that a second run into the same folder cannot
    answer the same questions again::

        with BatchWriter(out, purpose="answer scene-1") as writer:
            todo = [q for q in questions if q.id not in writer.answered_ids()]
            ...

    Outside a ``with`` block each append or finalize takes the lock for its own duration.

    Args:
        out_dir: the batch output folder, local path or fsspec URL; created on the first write.
        overlay_side_px: longest side of the overlay PNGs.
        refresh_geojson: rewrite ``answers.geojson`` after every append (off for huge batches:
            then only :meth:`finalize` writes it).
        purpose: what the writer does, shown to a second writer in its error.
        wait: queue behind another writer instead of failing at once.
        wait_timeout_s: with ``wait``, give up after this many seconds (None waits forever).

    Attributes:
        n_appended: records appended by this writer.
        n_failed: of those, records with an ``error``.

    Raises:
        WriterLockedError: (on entering, appending or finalizing) another writer holds the folder.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overlay_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
        refresh_geojson: bool = True,
        purpose: str = "answer batch",
        wait: bool = False,
        wait_timeout_s: float | None = None,
    ) -> None:
        if overlay_side_px < 1:
            raise ConfigError(f"overlay_side_px={overlay_side_px} must be >= 1")
        self.out_dir = os.fspath(out_dir)
        self.overlay_side_px = overlay_side_px
        self.refresh_geojson = refresh_geojson
        self.purpose = purpose
        self.wait = wait
        self.wait_timeout_s = wait_timeout_s
        self.n_appended = 0
        self.n_failed = 0
        self._held: Any = None
        self._fs, self._base = filesystem(out_dir)

    def __enter__(self) -> BatchWriter:
        if self._held is not None:
            raise ConfigError(f"{self.out_dir}: this BatchWriter already holds its lock")
        held = batch_lock(
            self.out_dir, purpose=self.purpose, wait=self.wait, timeout_s=self.wait_timeout_s
        )
        held.__enter__()
        self._held = held
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(exc_type, exc, tb)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for one write, unless the ``with`` block already holds it."""
        if self._held is not None:
            yield
            return
        with batch_lock(
            self.out_dir, purpose=self.purpose, wait=self.wait, timeout_s=self.wait_timeout_s
        ):
            yield

    @property
    def counts(self) -> BatchCounts:
        """What this writer appended: ``answered`` (no error) and ``failed``."""
        return BatchCounts(answered=self.n_appended - self.n_failed, failed=self.n_failed)

    @property
    def parts_dir(self) -> str:
        """Path (in the folder's filesystem) of the ``answers.parquet`` parts folder."""
        return join_path(self._base, PARTS_DIRNAME)

    @property
    def geojson_path(self) -> str:
        """Path or URL of ``answers.geojson``."""
        return join_path(self.out_dir, GEOJSON_NAME)

    def overlay_path(self, question_id: str) -> str:
        """Path or URL of the overlay PNG of ``question_id`` (unsafe characters become ``_``)."""
        return join_path(self.out_dir, OVERLAYS_DIRNAME, f"{_SAFE_ID_RE.sub('_', question_id)}.png")

    def answered_ids(self, *, include_failed: bool = False) -> set[str]:
        """See :func:`answered_ids`."""
        return answered_ids(self.out_dir, include_failed=include_failed)

    def append(
        self, records: Sequence[AnswerRecord], *, pyramid: ThumbnailSource | None = None
    ) -> str | None:
        """Write ``records``' overlays (when ``pyramid`` is given), then them as a new part.

        Args:
            records: answers to add; nothing is written for an empty sequence.
            pyramid: the pyramid of the records' scene, for overlays (records of one scene);
                records with an ``error`` get no overlay.

        Returns:
            The written part's path (in the folder's filesystem), or None for no records.

        Raises:
            WriterLockedError: another writer holds the folder.
        """
        if not records:
            return None
        with self._writing():
            if pyramid is not None:  # before the part, which marks the answers done
                for record in records:
                    if record.error is None:
                        write_overlay_png(
                            record,
                            pyramid,
                            self.overlay_path(record.question_id),
                            max_side_px=self.overlay_side_px,
                        )
            part = self._write_part(records)
            self.n_appended += len(records)
            self.n_failed += sum(1 for record in records if record.error is not None)
            if self.refresh_geojson:
                self._write_geojson()
        log.info("wrote %d answers to %s", len(records), part)
        return part

    def _write_part(self, records: Sequence[AnswerRecord]) -> str:
        self._fs.makedirs(self.parts_dir, exist_ok=True)
        existing = _part_names(self._fs, self.parts_dir)
        number = 1 + max((_part_number(n) for n in existing), default=-1)
        if is_local(self._fs):
            parts_dir = Path(self.parts_dir)
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=parts_dir)
            os.close(fd)
            try:
                write_geoparquet(records, tmp)
                _fsync_file(tmp)  # the part is the resume marker: durable before it is visible
                while True:
                    target = parts_dir / f"part-{number:0{PART_DIGITS}d}.parquet"
                    try:
                        os.link(tmp, target)  # fails if the part exists: never replaces one
                    except FileExistsError:
                        number += 1
                        continue
                    _fsync_dir(parts_dir)
                    return str(target)
            finally:
                Path(tmp).unlink(missing_ok=True)
        target_path = join_path(self.parts_dir, f"part-{number:0{PART_DIGITS}d}.parquet")
        while self._fs.exists(target_path):
            number += 1
            target_path = join_path(self.parts_dir, f"part-{number:0{PART_DIGITS}d}.parquet")
        buffer = io.BytesIO()
        answers_frame(records).to_parquet(buffer, index=False, schema_version="1.1.0")
        with self._fs.open(target_path, "wb") as handle:
            handle.write(buffer.getvalue())
        return target_path

    def _write_geojson(self) -> str:
        write_geojson(read_records(self.out_dir), self.geojson_path)
        return self.geojson_path

    def finalize(self) -> str:
        """Rewrite ``answers.geojson`` from every part (temp file + rename) and return its path.

        Raises:
            WriterLockedError: another writer holds the folder.
        """
        with self._writing():
            return self._write_geojson()


def _fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a new name in it) to the disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
