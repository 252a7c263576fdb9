"""The batch output folder: append answers as GeoParquet parts, overlays and a GeoJSON.

A batch's output folder holds::

    OUT/answers.parquet/part-00000.parquet   GeoParquet parts, one per append, never rewritten
    OUT/answers.geojson                      every answer's evidence as a FeatureCollection
    OUT/overlays/<question_id>.png           evidence and heat map on the scene thumbnail

``OUT`` is a local path or an fsspec URL (``s3://bucket/run``, ``memory://run``). The names here
are also importable from :mod:`lrs_core.outputs`, which writes each file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lrs_core.errors import ConfigError
from lrs_core.fsio import filesystem, is_local, join_path
from lrs_core.outputs import (
    DEFAULT_OVERLAY_SIDE_PX,
    ThumbnailSource,
    answers_frame,
    write_geojson,
    write_geoparquet,
    write_overlay_png,
)
from lrs_core.records import AnswerRecord

if TYPE_CHECKING:
    import fsspec

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


def read_records(out_dir: str | os.PathLike[str]) -> list[AnswerRecord]:
    """Return every record stored in ``OUT/answers.parquet`` parts, in write order."""
    import pyarrow.parquet as pq

    fs, base = filesystem(out_dir)
    parts_dir = join_path(base, PARTS_DIRNAME)
    records: list[AnswerRecord] = []
    for name in _part_names(fs, parts_dir):
        with fs.open(join_path(parts_dir, name), "rb") as handle:
            table = pq.read_table(handle, columns=["record_json"])
        records.extend(
            AnswerRecord.from_dict(json.loads(text)) for text in table["record_json"].to_pylist()
        )
    return records


def answered_ids(out_dir: str | os.PathLike[str], *, include_failed: bool = False) -> set[str]:
    """Question ids already written under ``OUT/answers.parquet`` (for resuming a batch).

    Args:
        out_dir: the batch output folder (local path or fsspec URL); missing means nothing done.
        include_failed: also count records that carry an ``error`` (by default those are retried).

    Returns:
        The set of ``question_id`` values.
    """
    import pyarrow.parquet as pq

    fs, base = filesystem(out_dir)
    parts_dir = join_path(base, PARTS_DIRNAME)
    done: set[str] = set()
    for name in _part_names(fs, parts_dir):
        with fs.open(join_path(parts_dir, name), "rb") as handle:
            table = pq.read_table(handle, columns=["question_id", "error"])
        for question_id, error in zip(
            table["question_id"].to_pylist(), table["error"].to_pylist(), strict=True
        ):
            if include_failed or error is None:
                done.add(question_id)
    return done


def _latest_per_question(records: Iterable[AnswerRecord]) -> list[AnswerRecord]:
    """Keep one record per question id: the last successful one, else the last one (write order)."""
    chosen: dict[str, AnswerRecord] = {}
    for record in records:
        previous = chosen.get(record.question_id)
        if previous is None or record.error is None or previous.error is not None:
            chosen[record.question_id] = record
    return list(chosen.values())


class BatchWriter:
    """Append answers to a batch output folder without ever rewriting finished output.

    Each :meth:`append` writes a new ``OUT/answers.parquet/part-XXXXX.parquet`` (the next free
    number; an existing part is never replaced, even by a concurrent writer on a local disk),
    writes ``OUT/overlays/<question_id>.png`` when a pyramid is given, and refreshes
    ``OUT/answers.geojson``. :meth:`finalize` rebuilds ``answers.geojson`` from all parts,
    keeping one answer per question id (the last successful one).

    Each part's primary ``geometry`` follows :func:`answers_frame`: EPSG:4326 when its records'
    scenes are georeferenced, pixels otherwise. A batch that appends parts of both kinds holds
    parts with different CRS; read such parts one by one (``geometry_px`` is always comparable).

    Args:
        out_dir: the batch output folder, local path or fsspec URL; created if missing.
        overlay_side_px: longest side of the overlay PNGs.
        refresh_geojson: rewrite ``answers.geojson`` after every append (off for huge batches:
            then only :meth:`finalize` writes it).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        overlay_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
        refresh_geojson: bool = True,
    ) -> None:
        if overlay_side_px < 1:
            raise ConfigError(f"overlay_side_px={overlay_side_px} must be >= 1")
        self.out_dir = os.fspath(out_dir)
        self.overlay_side_px = overlay_side_px
        self.refresh_geojson = refresh_geojson
        self._fs, self._base = filesystem(out_dir)
        self._fs.makedirs(join_path(self._base, PARTS_DIRNAME), exist_ok=True)

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
        """Write ``records`` as a new part (and their overlays when ``pyramid`` is given).

        Args:
            records: answers to add; nothing is written for an empty sequence.
            pyramid: the pyramid of the records' scene, for overlays (records of one scene);
                records with an ``error`` get no overlay.

        Returns:
            The written part's path (in the folder's filesystem), or None for no records.
        """
        if not records:
            return None
        part = self._write_part(records)
        if pyramid is not None:
            for record in records:
                if record.error is None:
                    write_overlay_png(
                        record,
                        pyramid,
                        self.overlay_path(record.question_id),
                        max_side_px=self.overlay_side_px,
                    )
        if self.refresh_geojson:
            self.finalize()
        log.info("wrote %d answers to %s", len(records), part)
        return part

    def _write_part(self, records: Sequence[AnswerRecord]) -> str:
        existing = _part_names(self._fs, self.parts_dir)
        number = 1 + max((_part_number(n) for n in existing), default=-1)
        if is_local(self._fs):
            parts_dir = Path(self.parts_dir)
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".tmp", dir=parts_dir)
            os.close(fd)
            try:
                write_geoparquet(records, tmp)
                while True:
                    target = parts_dir / f"part-{number:0{PART_DIGITS}d}.parquet"
                    try:
                        os.link(tmp, target)  # fails if the part exists: never replaces one
                    except FileExistsError:
                        number += 1
                        continue
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

    def finalize(self) -> str:
        """Rewrite ``answers.geojson`` from every part (temp file + rename) and return its path."""
        records = _latest_per_question(read_records(self.out_dir))
        write_geojson(records, self.geojson_path)
        return self.geojson_path
