"""Answers as one GeoParquet table: one row per answer, its evidence footprint as geometry.

Geometry comes from :mod:`lrs_core.outputs.geometry` (frames explained there). Paths are local
paths or fsspec URLs (``s3://bucket/run``, ``memory://run``).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_core.fsio import filesystem, is_local, parent_path
from lrs_core.outputs.geometry import LONLAT_CRS, record_geometries, union_geometries
from lrs_core.records import AnswerRecord, SceneRef

if TYPE_CHECKING:
    import geopandas
    from shapely.geometry.base import BaseGeometry

#: Stages of ``Accounting.seconds`` flattened into ``seconds_<stage>`` columns (all in JSON too).
SECONDS_STAGES = ("read", "vision", "rfm", "llm", "total")

_NULLABLE_TEXT_COLUMNS = ("error", "scene_crs_wkt", "footprint_scene_wkt")


def _evidence_json(record: AnswerRecord) -> str:
    data = record.to_dict()
    return json.dumps(
        {"tiles": data["evidence_tiles"], "tokens": data["evidence_tokens"]}, separators=(",", ":")
    )


def identity_fields(record: AnswerRecord) -> dict[str, Any]:
    """The columns/properties that name an answer: ids, question, answer, model, preset, error."""
    return {
        "question_id": record.question_id,
        "scene_id": record.scene.scene_id,
        "question": record.question,
        "answer": record.answer,
        "model_id": record.model_id,
        "preset": record.preset,
        "error": record.error,
    }


def _answer_row(record: AnswerRecord) -> dict[str, Any]:
    """Return one flat table row (no geometry columns) for ``record``."""
    acc = record.accounting
    row: dict[str, Any] = {
        **identity_fields(record),
        "scene_store": record.scene.store,
        "scene_width_px": record.scene.size_wh[0],
        "scene_height_px": record.scene.size_wh[1],
        "scene_crs_wkt": record.scene.crs_wkt,
        "vision_tiles_encoded": acc.vision_tiles_encoded,
        "vision_tiles_cached": acc.vision_tiles_cached,
        "tokens_per_level": json.dumps(list(acc.tokens_per_level)),
        "vision_tokens_to_llm": acc.vision_tokens_to_llm,
        "llm_text_tokens": acc.llm_text_tokens,
        "llm_prefill_tokens": acc.llm_prefill_tokens,
        "decode_steps": acc.decode_steps,
        "vision_flops": float(acc.flops.vision_flops),
        "llm_flops": float(acc.flops.llm_flops),
        "rfm_flops": float(acc.flops.rfm_flops),
        "total_flops": float(acc.flops.total_flops),
        "peak_memory_bytes": acc.peak_memory_bytes,
        "planned": acc.planned,
        "seconds_json": json.dumps(acc.seconds, sort_keys=True),
        "preset_params_json": json.dumps(record.preset_params, sort_keys=True, default=str),
        "evidence_json": _evidence_json(record),
        "record_json": json.dumps(record.to_dict(), separators=(",", ":"), default=str),
    }
    for stage in SECONDS_STAGES:
        row[f"seconds_{stage}"] = float(acc.seconds.get(stage, math.nan))
    return row


def answers_frame(records: Sequence[AnswerRecord]) -> geopandas.GeoDataFrame:
    """One row per answer with its evidence footprint, as a GeoDataFrame.

    Geometry columns have one meaning each, whatever the records' scenes, so every frame (and
    every part of a batch folder) has the same schema and the parts read as one honest table:

    * ``geometry`` (active, EPSG:4326): the union of the final evidence tiles in (lon, lat); null
      for an answer about a scene without georeference, never a pixel box.
    * ``geometry_px`` (CRS None): the same union in level-0 pixels (x = column, y = row); always
      present.
    * ``footprint_scene_wkt``: the union in the row's own scene CRS (``scene_crs_wkt``).
    * ``is_georeferenced``: whether the scene has a CRS and transform.

    Args:
        records: the answers, in output order.

    Returns:
        The frame; columns are listed in :func:`write_geoparquet`.
    """
    import geopandas
    import pandas as pd

    rows: list[dict[str, Any]] = []
    unions_px: list[BaseGeometry | None] = []
    unions_crs: list[BaseGeometry | None] = []
    unions_lonlat: list[BaseGeometry | None] = []
    for record in records:
        tiles = [row for row in record_geometries(record) if row.kind == "tile"]
        rows.append(_answer_row(record))
        unions_px.append(union_geometries(row.geometry_px for row in tiles))
        unions_crs.append(union_geometries(row.geometry_crs for row in tiles))
        unions_lonlat.append(union_geometries(row.geometry_lonlat for row in tiles))
    frame = pd.DataFrame(rows, columns=list(_answer_row_columns()))
    frame["is_georeferenced"] = pd.array(
        [record.scene.is_georeferenced for record in records], dtype="bool"
    )
    frame["footprint_scene_wkt"] = [None if geom is None else geom.wkt for geom in unions_crs]
    # Fixed column types, so every part of a batch has the same Parquet schema (an all-null
    # column would otherwise be typed ``null`` in one part and ``string`` in the next).
    frame = frame.astype({name: "string" for name in _NULLABLE_TEXT_COLUMNS})
    frame["geometry_px"] = geopandas.GeoSeries(unions_px, crs=None, index=frame.index)
    primary = geopandas.GeoSeries(unions_lonlat, crs=LONLAT_CRS, index=frame.index)
    return geopandas.GeoDataFrame(frame, geometry=primary)


def _answer_row_columns() -> tuple[str, ...]:
    """Column names of :func:`_answer_row`, in order (the same for every record)."""
    probe = AnswerRecord(
        question_id="",
        scene=SceneRef(scene_id="", store="", size_wh=(1, 1)),
        question="",
        answer="",
        model_id="",
        preset="",
    )
    return tuple(_answer_row(probe))


def write_geoparquet(records: Sequence[AnswerRecord], path: str | os.PathLike[str]) -> Path:
    """Write one GeoParquet file, one row per answer.

    Columns: ``question_id``, ``scene_id``, ``question``, ``answer``, ``model_id``, ``preset``,
    ``error``, the scene (``scene_store``, ``scene_width_px``, ``scene_height_px``,
    ``scene_crs_wkt``), the accounting flattened (``vision_tiles_encoded`` ... ``total_flops``,
    ``seconds_<stage>``, ``tokens_per_level`` and ``seconds_json`` as JSON text), ``evidence_json``
    (tiles and tokens), ``record_json`` (the whole record, for :meth:`AnswerRecord.from_dict`),
    ``is_georeferenced``, ``footprint_scene_wkt``, ``geometry_px`` and the primary ``geometry``
    (EPSG:4326, null without georeference; see :func:`answers_frame`). The file carries GeoParquet
    1.x ``geo`` metadata, so DuckDB's spatial extension, QGIS and ``geopandas.read_parquet`` read
    it.

    Args:
        records: the answers.
        path: local path or fsspec URL of the ``.parquet`` file to write (replaced if present).

    Returns:
        ``path`` as a Path.
    """
    frame = answers_frame(records)
    fs, fs_path = filesystem(path)
    if is_local(fs):
        Path(fs_path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(fs_path, index=False, schema_version="1.1.0")
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False, schema_version="1.1.0")
        fs.makedirs(parent_path(fs_path), exist_ok=True)
        with fs.open(fs_path, "wb") as handle:
            handle.write(buffer.getvalue())
    return Path(path)
