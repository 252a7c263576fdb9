"""Answer records to map layers and pictures: GeoParquet, GeoJSON, PNG overlays and heat-map COGs.

Frames: a record's ``bbox_px`` is ``(x0, y0, x1, y1)`` in level-0 pixel corners of its scene (column
first; (0, 0) is the top-left corner of the top-left pixel). The scene CRS geometry applies the full
level-0 affine (rotation and shear included) to those corners; the EPSG:4326 geometry reprojects
the scene-CRS ring, densified so long edges follow the projection, in (lon, lat) order as RFC 7946
wants. Scenes without a georeference keep pixel geometry only (``x`` = column, ``y`` = row, y down):
their EPSG:4326 geometry is null, never a pixel box labelled EPSG:4326.

The batch output folder (``BatchWriter``, ``answered_ids``, ``read_records``) lives in
:mod:`lrs_core.outputs.parts`; those names and its folder-layout constants stay importable from
here. Paths are local paths or fsspec URLs (``s3://bucket/run``, ``memory://run``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from lrs_core.errors import ConfigError, GeoreferenceError
from lrs_core.fsio import filesystem, is_local, parent_path, write_bytes_atomic
from lrs_core.records import AnswerRecord, BBoxPx, SceneRef

if TYPE_CHECKING:
    import geopandas
    from shapely.geometry.base import BaseGeometry

    # Re-exported from lrs_core.outputs.parts (resolved lazily by __getattr__ at the bottom).
    from lrs_core.outputs.parts import (
        GEOJSON_NAME,
        OVERLAYS_DIRNAME,
        PART_DIGITS,
        PARTS_DIRNAME,
        BatchWriter,
        answered_ids,
        read_records,
    )

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TOP_TOKENS",
    "LONLAT_EDGE_POINTS",
    "DEFAULT_OVERLAY_SIDE_PX",
    "HEATMAP_MAX_ALPHA",
    "HEATMAP_ALPHA_GAMMA",
    "HEATMAP_FLAT_RANGE",
    "HEATMAP_RAMP_RGB",
    "FINAL_TILE_OUTLINE_PX",
    "TILE_OUTLINE_PX",
    "LEVEL_COLOURS_RGB",
    "TOKEN_COLOUR_RGB",
    "SECONDS_STAGES",
    "LONLAT_CRS",
    "FeatureKind",
    "ThumbnailSource",
    "FeatureRow",
    "record_geometries",
    "answers_frame",
    "write_geoparquet",
    "geojson_features",
    "write_geojson",
    "render_overlay",
    "write_overlay_png",
    "write_heatmap_cog",
    "GEOJSON_NAME",
    "OVERLAYS_DIRNAME",
    "PART_DIGITS",
    "PARTS_DIRNAME",
    "BatchWriter",
    "answered_ids",
    "read_records",
]


#: Top-scored tokens of a record turned into features (the rest stay in the evidence JSON).
DEFAULT_TOP_TOKENS = 16
#: Points inserted per tile edge before reprojecting to EPSG:4326, so edges follow the projection.
LONLAT_EDGE_POINTS = 8
#: Longest side of the thumbnail an overlay is drawn on, in pixels.
DEFAULT_OVERLAY_SIDE_PX = 768
#: Opacity of the heat map at its (min-max normalised) maximum; 0 leaves the thumbnail as it is.
HEATMAP_MAX_ALPHA = 0.6
#: Opacity grows as ``HEATMAP_MAX_ALPHA * v**HEATMAP_ALPHA_GAMMA`` of the normalised value ``v``,
#: so low-attention areas stay see-through and the scene stays readable under a flat heat map.
HEATMAP_ALPHA_GAMMA = 2.0
#: Heat maps whose max - min is below this are flat: nothing to show, no heat is drawn.
HEATMAP_FLAT_RANGE = 1e-6
#: Perceptual colour ramp of the heat map (matplotlib's "inferno" sampled at 0, 0.25, ... 1), as
#: (normalised value, RGB) stops interpolated linearly.
HEATMAP_RAMP_RGB: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)
#: Outline width of final-level evidence tiles / of coarser-level tiles / of tokens, in overlay px.
FINAL_TILE_OUTLINE_PX = 3
TILE_OUTLINE_PX = 1
#: Outline colours of the DIP levels (cycled), RGB; level 0 is the thumbnail and has no tiles.
LEVEL_COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 200, 255),
    (255, 220, 0),
    (255, 60, 60),
    (120, 255, 80),
)
TOKEN_COLOUR_RGB = (255, 0, 255)
#: Stages of ``Accounting.seconds`` flattened into ``seconds_<stage>`` columns (all in JSON too).
SECONDS_STAGES = ("read", "vision", "rfm", "llm", "total")
LONLAT_CRS = "EPSG:4326"

_NULLABLE_TEXT_COLUMNS = ("error", "scene_crs_wkt", "footprint_scene_wkt")


FeatureKind = Literal["tile", "token"]


class ThumbnailSource(Protocol):
    """What overlays need from a scene pyramid (:class:`lrs_core.pyramid.Pyramid` satisfies it)."""

    @property
    def size_wh(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        ...

    def thumbnail(self, *, max_side_px: int) -> np.ndarray:
        """Return uint8 (h, w, 3) of the whole scene, longest side at most ``max_side_px``."""
        ...


@dataclass(frozen=True, kw_only=True)
class FeatureRow:
    """One evidence footprint of one answer, in every frame that the scene supports.

    Attributes:
        question_id: id of the answer the footprint belongs to.
        scene_id: id of the scene.
        kind: ``"tile"`` (a final-level evidence tile) or ``"token"`` (a top-scored vision token).
        dip_level: DIP level of the tile or token (counted coarse to fine; 0 is the thumbnail).
        index_rc: (row, col) of the tile in its tile grid, or of the token in its token grid.
        bbox_px: (x0, y0, x1, y1) level-0 pixel corners.
        score: RFM score of the tile or token.
        is_final: True for tiles of the final level (always True for tokens' own level ordering).
        geometry_px: polygon of ``bbox_px`` (x = column, y = row).
        geometry_crs: the polygon in the scene CRS (through the full affine); None without georef.
        geometry_lonlat: the polygon in EPSG:4326 (lon, lat); None without georeference.
    """

    question_id: str
    scene_id: str
    kind: FeatureKind
    dip_level: int
    index_rc: tuple[int, int]
    bbox_px: BBoxPx
    score: float
    is_final: bool
    geometry_px: BaseGeometry
    geometry_crs: BaseGeometry | None
    geometry_lonlat: BaseGeometry | None

    def properties(self) -> dict[str, Any]:
        """Return the JSON-serialisable attributes (no geometry)."""
        return {
            "question_id": self.question_id,
            "scene_id": self.scene_id,
            "kind": self.kind,
            "dip_level": self.dip_level,
            "index_rc": list(self.index_rc),
            "bbox_px": list(self.bbox_px),
            "score": self.score,
            "is_final": self.is_final,
        }


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _ring_px(bbox_px: BBoxPx, *, points_per_edge: int) -> np.ndarray:
    """Return float64 (4 * points_per_edge, 2) (x, y) pixel corners of ``bbox_px``, clockwise."""
    x0, y0, x1, y1 = bbox_px
    steps = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)
    top = np.stack([x0 + (x1 - x0) * steps, np.full_like(steps, y0)], axis=1)
    right = np.stack([np.full_like(steps, x1), y0 + (y1 - y0) * steps], axis=1)
    bottom = np.stack([x1 - (x1 - x0) * steps, np.full_like(steps, y1)], axis=1)
    left = np.stack([np.full_like(steps, x0), y1 - (y1 - y0) * steps], axis=1)
    return np.concatenate([top, right, bottom, left])


def _apply_affine(
    transform: tuple[float, float, float, float, float, float], xy_px: np.ndarray
) -> np.ndarray:
    """Map float64 (P, 2) pixel (col, row) corners to (P, 2) scene-CRS (x, y) with a GDAL affine."""
    a, b, c, d, e, f = transform
    cols, rows = xy_px[:, 0], xy_px[:, 1]
    return np.stack([a * cols + b * rows + c, d * cols + e * rows + f], axis=1)


class _Georeferencer:
    """Pixel → scene CRS → EPSG:4326 for one scene (holds one pyproj transformer)."""

    def __init__(self, scene: SceneRef) -> None:
        self.scene = scene
        self._to_lonlat: Any = None
        if scene.crs_wkt is not None and scene.transform is not None:
            from pyproj import CRS, Transformer
            from pyproj.exceptions import CRSError

            try:
                crs = CRS.from_wkt(scene.crs_wkt)
            except CRSError as err:
                raise GeoreferenceError(
                    f"scene {scene.scene_id!r} ({scene.store}): its CRS WKT cannot be parsed "
                    f"({err}); re-ingest the scene or clear its CRS to get pixel footprints"
                ) from err
            self._to_lonlat = Transformer.from_crs(crs, LONLAT_CRS, always_xy=True)

    def polygons(
        self, bbox_px: BBoxPx
    ) -> tuple[BaseGeometry, BaseGeometry | None, BaseGeometry | None]:
        """Return the (pixel, scene CRS, EPSG:4326) polygons of one level-0 pixel box."""
        from shapely.geometry import Polygon

        corners = _ring_px(bbox_px, points_per_edge=1)
        poly_px = Polygon(corners)
        if self._to_lonlat is None or self.scene.transform is None:
            return poly_px, None, None
        poly_crs = Polygon(_apply_affine(self.scene.transform, corners))
        dense = _apply_affine(
            self.scene.transform, _ring_px(bbox_px, points_per_edge=LONLAT_EDGE_POINTS)
        )
        lon, lat = self._to_lonlat.transform(dense[:, 0], dense[:, 1])
        lonlat = np.stack([np.asarray(lon), np.asarray(lat)], axis=1)
        if not np.isfinite(lonlat).all():
            raise GeoreferenceError(
                f"scene {self.scene.scene_id!r}: pixel box {bbox_px} does not project to "
                f"EPSG:4326 (non-finite coordinates); check the scene's CRS and transform"
            )
        return poly_px, poly_crs, Polygon(lonlat)


def record_geometries(
    record: AnswerRecord, *, top_tokens: int = DEFAULT_TOP_TOKENS
) -> list[FeatureRow]:
    """Footprints of a record's final evidence tiles and its top-scored tokens.

    Args:
        record: the answer; its ``scene`` gives size and georeference.
        top_tokens: how many of the highest-scored tokens become features (ties keep record order).

    Returns:
        The final-level tiles (record order) followed by the tokens (descending score). Each row
        keeps its pixel polygon; ``geometry_crs`` / ``geometry_lonlat`` are None when the scene has
        no georeference.

    Raises:
        ConfigError: ``top_tokens`` is negative.
        GeoreferenceError: the scene's CRS cannot be parsed or does not project to EPSG:4326.
    """
    if top_tokens < 0:
        raise ConfigError(f"top_tokens={top_tokens} must be >= 0")
    geo = _Georeferencer(record.scene)

    def row(
        kind: FeatureKind,
        dip_level: int,
        index_rc: tuple[int, int],
        bbox_px: BBoxPx,
        score: float,
    ) -> FeatureRow:
        px, crs, lonlat = geo.polygons(bbox_px)
        return FeatureRow(
            question_id=record.question_id,
            scene_id=record.scene.scene_id,
            kind=kind,
            dip_level=dip_level,
            index_rc=index_rc,
            bbox_px=bbox_px,
            score=score,
            is_final=kind == "tile",
            geometry_px=px,
            geometry_crs=crs,
            geometry_lonlat=lonlat,
        )

    rows = [
        row("tile", tile.dip_level, tile.tile_rc, tile.bbox_px, tile.score)
        for tile in record.evidence_tiles
        if tile.is_final
    ]
    ranked = sorted(record.evidence_tokens, key=lambda token: -token.score)[:top_tokens]
    rows.extend(
        row("token", token.dip_level, token.grid_rc, token.bbox_px, token.score) for token in ranked
    )
    return rows


def _union(geoms: Iterable[BaseGeometry | None]) -> BaseGeometry | None:
    """Return the union of the non-None geometries as a (Multi)Polygon; None when there are none."""
    from shapely import union_all

    present = [geom for geom in geoms if geom is not None]
    return union_all(present) if present else None


# ---------------------------------------------------------------------------------------------
# GeoParquet
# ---------------------------------------------------------------------------------------------


def _evidence_json(record: AnswerRecord) -> str:
    data = record.to_dict()
    return json.dumps(
        {"tiles": data["evidence_tiles"], "tokens": data["evidence_tokens"]}, separators=(",", ":")
    )


def _identity_fields(record: AnswerRecord) -> dict[str, Any]:
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
        **_identity_fields(record),
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
        unions_px.append(_union(row.geometry_px for row in tiles))
        unions_crs.append(_union(row.geometry_crs for row in tiles))
        unions_lonlat.append(_union(row.geometry_lonlat for row in tiles))
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
    from lrs_core.records import SceneRef as _SceneRef

    probe = AnswerRecord(
        question_id="",
        scene=_SceneRef(scene_id="", store="", size_wh=(1, 1)),
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


# ---------------------------------------------------------------------------------------------
# GeoJSON
# ---------------------------------------------------------------------------------------------


def _answer_properties(record: AnswerRecord) -> dict[str, Any]:
    acc = record.accounting
    return {
        **_identity_fields(record),
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
    union = _union(row.geometry_lonlat for row in tiles)
    union_px = _union(row.geometry_px for row in tiles)
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


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def _heat_rgba(record: AnswerRecord, size_wh: tuple[int, int]) -> np.ndarray | None:
    """Return the uint8 (h, w, 4) heat layer at ``size_wh``; None without a heat map.

    The values are min-max normalised to ``v`` in [0, 1], coloured with :data:`HEATMAP_RAMP_RGB`
    and given alpha ``HEATMAP_MAX_ALPHA * v**HEATMAP_ALPHA_GAMMA``; a flat map (range below
    :data:`HEATMAP_FLAT_RANGE`) is fully transparent.
    """
    from PIL import Image

    heat = record.heatmap
    if heat is None:
        return None
    rows, cols = heat.shape_hw
    if rows * cols != len(heat.values) or rows <= 0 or cols <= 0:
        raise ConfigError(
            f"{record.question_id}: heat map shape_hw={heat.shape_hw} does not hold "
            f"{len(heat.values)} values; the record is malformed"
        )
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    low, high = float(values.min()), float(values.max())
    if not high - low >= HEATMAP_FLAT_RANGE:  # also catches NaN
        return np.zeros((size_wh[1], size_wh[0], 4), dtype=np.uint8)
    values = (values - low) / (high - low)
    resized = np.clip(
        np.asarray(
            Image.fromarray(values, mode="F").resize(size_wh, resample=Image.Resampling.BILINEAR)
        ),
        0.0,
        1.0,
    )
    stops = np.array([stop for stop, _ in HEATMAP_RAMP_RGB], dtype=np.float32)
    layer = np.zeros((size_wh[1], size_wh[0], 4), dtype=np.uint8)
    for channel in range(3):
        ramp = np.array([rgb[channel] for _, rgb in HEATMAP_RAMP_RGB], dtype=np.float32)
        layer[..., channel] = np.interp(resized, stops, ramp).astype(np.uint8)
    alpha = HEATMAP_MAX_ALPHA * resized**HEATMAP_ALPHA_GAMMA
    layer[..., 3] = np.clip(255 * alpha, 0, 255).astype(np.uint8)
    return layer


def render_overlay(
    record: AnswerRecord, pyramid: ThumbnailSource, *, max_side_px: int = DEFAULT_OVERLAY_SIDE_PX
) -> np.ndarray:
    """Scene thumbnail with the heat map blended and the evidence drawn.

    Tiles of every DIP level are outlined in that level's colour (final-level tiles thicker);
    the top-scored tokens are outlined in magenta.

    Args:
        record: the answer.
        pyramid: the scene's pyramid (its level-0 size must match ``record.scene.size_wh``).
        max_side_px: longest side of the thumbnail.

    Returns:
        uint8 (h, w, 3) RGB image.

    Raises:
        ConfigError: ``max_side_px`` < 1, or the pyramid is not the record's scene.
    """
    from PIL import Image, ImageDraw

    if max_side_px < 1:
        raise ConfigError(f"max_side_px={max_side_px} must be >= 1")
    if tuple(pyramid.size_wh) != tuple(record.scene.size_wh):
        raise ConfigError(
            f"{record.question_id}: pyramid size_wh={tuple(pyramid.size_wh)} differs from the "
            f"record's scene {record.scene.scene_id!r} size_wh={record.scene.size_wh}; pass the "
            f"pyramid of {record.scene.store}"
        )
    thumb = np.asarray(pyramid.thumbnail(max_side_px=max_side_px))
    if thumb.dtype != np.uint8 or thumb.ndim != 3 or thumb.shape[2] != 3:
        raise ConfigError(
            f"thumbnail must be uint8 (h, w, 3); got {thumb.dtype} {thumb.shape} from {pyramid!r}"
        )
    height, width = thumb.shape[:2]
    image = Image.fromarray(thumb, mode="RGB").convert("RGBA")
    heat = _heat_rgba(record, (width, height))
    if heat is not None:
        image = Image.alpha_composite(image, Image.fromarray(heat, mode="RGBA"))
    draw = ImageDraw.Draw(image)
    scale_x = width / record.scene.size_wh[0]
    scale_y = height / record.scene.size_wh[1]

    def outline(bbox_px: BBoxPx, colour: tuple[int, int, int], line_px: int) -> None:
        x0, y0, x1, y1 = bbox_px
        box = (
            x0 * scale_x,
            y0 * scale_y,
            max(x0 * scale_x, x1 * scale_x - 1),
            max(y0 * scale_y, y1 * scale_y - 1),
        )
        draw.rectangle(box, outline=(*colour, 255), width=line_px)

    for tile in sorted(record.evidence_tiles, key=lambda t: (t.is_final, t.dip_level)):
        colour = LEVEL_COLOURS_RGB[tile.dip_level % len(LEVEL_COLOURS_RGB)]
        outline(tile.bbox_px, colour, FINAL_TILE_OUTLINE_PX if tile.is_final else TILE_OUTLINE_PX)
    for token in sorted(record.evidence_tokens, key=lambda t: -t.score)[:DEFAULT_TOP_TOKENS]:
        outline(token.bbox_px, TOKEN_COLOUR_RGB, TILE_OUTLINE_PX)
    return np.asarray(image.convert("RGB"))


def write_overlay_png(
    record: AnswerRecord,
    pyramid: ThumbnailSource,
    path: str | os.PathLike[str],
    *,
    max_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
    annotated: bool = True,
) -> Path:
    """Write :func:`render_overlay` as a PNG at ``path`` (local path or fsspec URL); return it.

    With ``annotated`` (the default) the picture is framed with the question, the answer, a
    legend and, for a georeferenced scene, a scale bar and corner coordinates
    (:func:`lrs_core.overlay_annotate.annotate_overlay`); otherwise it is the bare picture.
    """
    from PIL import Image

    from lrs_core.outputs.annotate import annotate_overlay

    picture = render_overlay(record, pyramid, max_side_px=max_side_px)
    if annotated:
        picture = annotate_overlay(record, picture)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def write_heatmap_cog(
    record: AnswerRecord, pyramid: ThumbnailSource, path: str | os.PathLike[str]
) -> Path:
    """Write the heat map as a float32 Cloud-Optimized GeoTIFF aligned with the scene.

    Cell (r, c) of the heat map covers level-0 pixels ``[c*W/w, (c+1)*W/w) x [r*H/h, (r+1)*H/h)``,
    so the COG's affine is the scene's level-0 affine scaled by ``(W/w, H/h)``, in the scene CRS.
    A scene without georeference gets that scaling in pixel units and no CRS.

    Args:
        record: the answer; must have a heat map.
        pyramid: the scene's pyramid (checked against ``record.scene.size_wh``).
        path: local path of the ``.tif`` to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: the record has no heat map, or the pyramid is not its scene.
    """
    import rasterio
    from rasterio.transform import Affine

    heat = record.heatmap
    if heat is None:
        raise ConfigError(f"{record.question_id}: the record has no heat map to write as a COG")
    if tuple(pyramid.size_wh) != tuple(record.scene.size_wh):
        raise ConfigError(
            f"{record.question_id}: pyramid size_wh={tuple(pyramid.size_wh)} differs from the "
            f"record's scene size_wh={record.scene.size_wh}"
        )
    rows, cols = heat.shape_hw
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    width_px, height_px = record.scene.size_wh
    scale = Affine.scale(width_px / cols, height_px / rows)
    # SceneRef.transform is (a, b, c, d, e, f) of x = a*col + b*row + c: Affine's own order.
    base = (
        Affine(*record.scene.transform) if record.scene.transform is not None else Affine.identity()
    )
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": "float32",
        "transform": base @ scale,
    }
    if record.scene.crs_wkt is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(record.scene.crs_wkt)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Batch output folder (in lrs_core.outputs.parts, which imports this module)
# ---------------------------------------------------------------------------------------------

#: Names of :mod:`lrs_core.outputs.parts` importable from here, resolved on first use (an import
#: at the top would be circular: the batch writer builds on the writers above).
_BATCH_NAMES = frozenset(
    {
        "BatchWriter",
        "answered_ids",
        "read_records",
        "PART_DIGITS",
        "PARTS_DIRNAME",
        "GEOJSON_NAME",
        "OVERLAYS_DIRNAME",
    }
)


def __getattr__(name: str) -> Any:
    if name in _BATCH_NAMES:
        from lrs_core.outputs import parts as batch_outputs

        return getattr(batch_outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
