"""Footprints of an answer: level-0 pixel boxes in pixels, in the scene CRS and in EPSG:4326.

Frames: a record's ``bbox_px`` is ``(x0, y0, x1, y1)`` in level-0 pixel corners of its scene (column
first; (0, 0) is the top-left corner of the top-left pixel). The scene CRS geometry applies the full
level-0 affine (rotation and shear included) to those corners; the EPSG:4326 geometry reprojects
the scene-CRS ring, densified so long edges follow the projection, in (lon, lat) order as RFC 7946
wants. Scenes without a georeference keep pixel geometry only (``x`` = column, ``y`` = row, y down):
their EPSG:4326 geometry is null, never a pixel box labelled EPSG:4326.

Every writer of :mod:`lrs_core.outputs` takes its geometry from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from lrs_core.errors import ConfigError, GeoreferenceError
from lrs_core.records import AnswerRecord, BBoxPx, SceneRef

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

#: Top-scored tokens of a record turned into features (the rest stay in the evidence JSON).
DEFAULT_TOP_TOKENS = 16
#: Points inserted per tile edge before reprojecting to EPSG:4326, so edges follow the projection.
LONLAT_EDGE_POINTS = 8
LONLAT_CRS = "EPSG:4326"


FeatureKind = Literal["tile", "token"]


class ThumbnailSource(Protocol):
    """What outputs need from a scene pyramid (:class:`lrs_core.raster.pyramid.Pyramid` has it)."""

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


def union_geometries(geoms: Iterable[BaseGeometry | None]) -> BaseGeometry | None:
    """Return the union of the non-None geometries as a (Multi)Polygon; None when there are none."""
    from shapely import union_all

    present = [geom for geom in geoms if geom is not None]
    return union_all(present) if present else None


def corner_lonlat(record: AnswerRecord) -> dict[str, tuple[float, float]] | None:
    """Return (lon, lat) of the corners ``ul``, ``ur``, ``ll``, ``lr``; None without georef."""
    from pyproj import CRS, Transformer

    scene = record.scene
    if scene.crs_wkt is None or scene.transform is None:
        return None
    a, b, c, d, e, f = scene.transform
    width, height = scene.size_wh
    to_lonlat = Transformer.from_crs(CRS.from_wkt(scene.crs_wkt), LONLAT_CRS, always_xy=True)
    corners = {"ul": (0, 0), "ur": (width, 0), "ll": (0, height), "lr": (width, height)}
    out = {}
    for name, (col, row) in corners.items():
        lon, lat = to_lonlat.transform(a * col + b * row + c, d * col + e * row + f)
        out[name] = (float(lon), float(lat))
    return out
