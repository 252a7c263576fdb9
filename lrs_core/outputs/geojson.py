"""Answers as GeoJSON: each answer, its final evidence tiles and its top tokens as features.

Geometry is EPSG:4326 (lon, lat) per RFC 7946, from :mod:`lrs_core.outputs.geometry`; null for a
scene without georeference. Paths are local paths or fsspec URLs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrs_core.fsio import write_bytes_atomic
from lrs_core.outputs.geometry import record_geometries, union_geometries
from lrs_core.outputs.geoparquet import identity_fields
from lrs_core.records import AnswerRecord

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry


def _answer_properties(record: AnswerRecord) -> dict[str, Any]:
    acc = record.accounting
    return {
        **identity_fields(record),
        "is_georeferenced": record.scene.is_georeferenced,
        "vision_tokens_to_llm": acc.vision_tokens_to_llm,
        "llm_prefill_tokens": acc.llm_prefill_tokens,
        "total_flops": acc.flops.total_flops,
        "seconds_total": acc.seconds.get("total"),
    }


def geojson_features(record: AnswerRecord) -> list[dict[str, Any]]:
    """GeoJSON features of one answer: the answer itself, its final tiles and its top tokens.

    The ``kind: "answer"`` feature carries the union of the final tiles (and the answer text), so
    an answer without evidence still appears. Geometry is EPSG:4326 (lon, lat) per RFC 7946, or
    null for a scene without georeference; ``bbox_px`` (level-0 pixel corners) is always present.
    """
    from shapely import orient_polygons
    from shapely.geometry import mapping

    def lonlat_json(geom: BaseGeometry | None) -> dict[str, Any] | None:
        # RFC 7946 §3.1.6: exterior rings counterclockwise (a north-up affine flips the pixel ring).
        return None if geom is None else dict(mapping(orient_polygons(geom, exterior_cw=False)))

    rows = record_geometries(record)
    tiles = [row for row in rows if row.kind == "tile"]
    union = union_geometries(row.geometry_lonlat for row in tiles)
    union_px = union_geometries(row.geometry_px for row in tiles)
    answer_props = _answer_properties(record) | {
        "kind": "answer",
        "bbox_px": None if union_px is None else list(union_px.bounds),
    }
    features = [
        {
            "type": "Feature",
            "geometry": lonlat_json(union),
            "properties": answer_props,
        }
    ]
    for row in rows:
        features.append(
            {
                "type": "Feature",
                "geometry": lonlat_json(row.geometry_lonlat),
                "properties": row.properties() | {"answer": record.answer},
            }
        )
    return features


def _feature_collection(records: Iterable[AnswerRecord]) -> dict[str, Any]:
    features: list[dict[str, Any]] = []
    for record in records:
        features.extend(geojson_features(record))
    return {"type": "FeatureCollection", "features": features}


def write_geojson(records: Iterable[AnswerRecord], path: str | os.PathLike[str]) -> Path:
    """Write every record's features (see :func:`geojson_features`) as one FeatureCollection.

    The file is written to a temporary name and renamed into place (locally), or put as one
    object (object stores), so a reader never sees half a file.

    Args:
        records: the answers.
        path: local path or fsspec URL of the ``.geojson`` file (replaced if present).

    Returns:
        ``path`` as a Path.
    """
    text = json.dumps(_feature_collection(records), separators=(",", ":"), allow_nan=False)
    write_bytes_atomic(path, text.encode("utf-8"))
    return Path(path)
