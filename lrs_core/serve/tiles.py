"""Web-Mercator XYZ tiles of a scene store and of an answer's heat map.

The tile grid is morecantile's ``WebMercatorQuad``. Each tile is read from the coarsest store
level whose pixels are still at most one tile pixel (so a zoomed-out view never touches level 0),
as a small window of that level, and warped by GDAL onto the tile (nearest neighbour, as
TiTiler's default); PNGs are encoded by rio-tiler's renderer, as TiTiler encodes them. The
level's ``valid`` mask travels as a fourth band and becomes the PNG's alpha, so nodata is
transparent. Heat maps are tiled the same way from the record's coarse raster (the grid of
:func:`lrs_core.outputs.heatmaps.write_heatmap_cog`), coloured with the overlay ramp and masked to
the scene's valid area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rasterio.transform import Affine

from lrs_core.errors import LrsError
from lrs_core.outputs.heatmaps import (
    HEATMAP_ALPHA_GAMMA,
    HEATMAP_FLAT_RANGE,
    HEATMAP_MAX_ALPHA,
    HEATMAP_RAMP_RGB,
)
from lrs_core.raster.pyramid import Pyramid, is_north_up

if TYPE_CHECKING:
    from morecantile import TileMatrixSet

    from lrs_core.records import AnswerRecord

#: Side of a served tile, in pixels.
TILE_SIZE_PX = 256
#: Deepest zoom served (Web-Mercator pixels of ~2 cm at the equator).
MAX_ZOOM = 24
#: Level pixels read beyond the tile's footprint on each side, so nearest-neighbour edges are whole.
WINDOW_MARGIN_PX = 2
#: Points per edge when the tile's bounds are reprojected to the scene CRS.
BOUNDS_DENSIFY_POINTS = 21
#: Zoom levels served beyond the one matching level-0 pixels (over-zoom, nearest neighbour).
OVERZOOM_LEVELS = 2
#: Value of the alpha band where a pixel holds data.
OPAQUE = 255
#: Identifier of the tile matrix set.
TMS_ID = "WebMercatorQuad"


class TileNotFoundError(LrsError, LookupError):
    """The tile coordinates are not valid for the grid, or the tile misses the scene."""


def web_mercator() -> TileMatrixSet:
    """The Web-Mercator quad tree of morecantile (256 px tiles, EPSG:3857)."""
    import morecantile

    return morecantile.tms.get(TMS_ID)


def check_tile(z: int, x: int, y: int) -> None:
    """Raise :class:`TileNotFoundError` unless (z, x, y) is a tile of the Web-Mercator grid."""
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise TileNotFoundError(
            f"tile z={z} x={x} y={y} is not in the Web-Mercator grid (0 <= z <= {MAX_ZOOM}, "
            f"0 <= x, y < 2**z); ask for a tile inside the TileJSON bounds"
        )


@dataclass(frozen=True, kw_only=True)
class RgbaTile:
    """One rendered tile before encoding.

    Attributes:
        rgba: uint8 (4, TILE_SIZE_PX, TILE_SIZE_PX); band 4 is 255 where the scene has data.
        store_level: the store level it was read from (-1 for a heat-map tile).
    """

    rgba: np.ndarray
    store_level: int


def encode_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of uint8 (4, h, w) RGBA, through rio-tiler's renderer (as TiTiler encodes)."""
    from rio_tiler.utils import render

    return bytes(render(rgba[:3], mask=rgba[3], img_format="PNG"))


class SceneTiler:
    """Cuts Web-Mercator tiles from one north-up georeferenced store.

    The store is read through :class:`lrs_core.raster.pyramid.Pyramid` (its Zarr arrays stay open; a
    tile reads one small window of one level) and warped by GDAL (``rasterio.warp.reproject``,
    nearest neighbour) onto morecantile's tile grid. Going through rioxarray/``XarrayReader`` for
    this step cost ~5x the warp itself in Python overhead per tile (profiled), which lost the tile
    benchmark against TiTiler; the xarray tree remains the way to open a store for analysis.

    Args:
        pyramid: the open store; it must have a north-up CRS.

    Raises:
        TileNotFoundError: the store has no CRS or no north-up grid (nothing to tile).
    """

    def __init__(self, pyramid: Pyramid) -> None:
        from rasterio.crs import CRS

        if pyramid.crs_wkt is None or pyramid.transform is None:
            raise TileNotFoundError(
                f"{pyramid.store}: the scene has no CRS, so it has no Web-Mercator tiles; "
                "re-ingest it from a georeferenced raster"
            )
        if not is_north_up(pyramid.transform):
            raise TileNotFoundError(
                f"{pyramid.store}: the scene's grid is rotated or sheared; Web-Mercator tiles "
                "are cut from north-up grids only (warp the source with gdalwarp first)"
            )
        self.pyramid = pyramid
        self.crs = CRS.from_wkt(pyramid.crs_wkt)
        self.transforms = [level.transform for level in pyramid.levels]
        self.shapes_hw = [level.shape_hw for level in pyramid.levels]
        self.tms = web_mercator()
        self._bounds_merc = self._merc_bounds()

    @property
    def n_levels(self) -> int:
        """Number of store levels."""
        return len(self.shapes_hw)

    def _merc_bounds(self) -> tuple[float, float, float, float]:
        from rasterio.warp import transform_bounds

        height, width = self.shapes_hw[0]
        t = self.transforms[0]
        xs = (t.c, t.c + t.a * width)
        ys = (t.f, t.f + t.e * height)
        west, south, east, north = transform_bounds(
            self.crs, self.tms.rasterio_crs, min(xs), min(ys), max(xs), max(ys),
            densify_pts=BOUNDS_DENSIFY_POINTS,
        )  # fmt: skip
        return (float(west), float(south), float(east), float(north))

    def zoom_range(self) -> tuple[int, int]:
        """(minzoom, maxzoom): the coarsest level fits a tile, level 0 (plus over-zoom) at most."""
        west, _, east, _ = self._bounds_merc
        res0 = (east - west) / self.shapes_hw[0][1]
        coarsest = res0 * 2 ** (self.n_levels - 1)
        maxzoom = min(MAX_ZOOM, self.tms.zoom_for_res(res0) + OVERZOOM_LEVELS)
        minzoom = max(0, min(maxzoom, self.tms.zoom_for_res(coarsest) - 1))
        return (int(minzoom), int(maxzoom))

    def store_level_for(self, bounds_scene: tuple[float, float, float, float]) -> int:
        """Coarsest store level whose pixel is at most one tile pixel over ``bounds_scene``.

        Args:
            bounds_scene: (left, bottom, right, top) of the tile in the scene CRS.
        """
        level0_px = (bounds_scene[2] - bounds_scene[0]) / abs(self.transforms[0].a)
        per_tile_px = level0_px / TILE_SIZE_PX
        if per_tile_px <= 1.0:
            return 0
        return min(self.n_levels - 1, int(math.floor(math.log2(per_tile_px))))

    def tile_bounds(self, z: int, x: int, y: int) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of tile (z, x, y) in EPSG:3857 metres.

        Raises:
            TileNotFoundError: bad coordinates, or the tile does not touch the scene.
        """
        from morecantile import Tile

        check_tile(z, x, y)
        left, bottom, right, top = self.tms.xy_bounds(Tile(x=x, y=y, z=z))
        west, south, east, north = self._bounds_merc
        if left >= east or right <= west or bottom >= north or top <= south:
            raise TileNotFoundError(f"tile z={z} x={x} y={y} does not touch the scene")
        return (float(left), float(bottom), float(right), float(top))

    def render(self, z: int, x: int, y: int) -> RgbaTile:
        """Render tile (z, x, y) as RGBA with nodata transparent.

        Raises:
            TileNotFoundError: bad coordinates, or the tile does not touch the scene.
        """
        from rasterio.transform import from_bounds
        from rasterio.warp import Resampling, reproject, transform_bounds
        from rasterio.windows import Window
        from rasterio.windows import from_bounds as window_from_bounds

        tile_merc = self.tile_bounds(z, x, y)
        bounds_scene = transform_bounds(
            self.tms.rasterio_crs, self.crs, *tile_merc, densify_pts=BOUNDS_DENSIFY_POINTS
        )
        store_level = self.store_level_for(bounds_scene)
        window = window_from_bounds(*bounds_scene, transform=self.transforms[store_level])
        height, width = self.shapes_hw[store_level]
        row0 = max(0, math.floor(window.row_off) - WINDOW_MARGIN_PX)
        col0 = max(0, math.floor(window.col_off) - WINDOW_MARGIN_PX)
        row1 = min(height, math.ceil(window.row_off + window.height) + WINDOW_MARGIN_PX)
        col1 = min(width, math.ceil(window.col_off + window.width) + WINDOW_MARGIN_PX)
        if row1 <= row0 or col1 <= col0:
            raise TileNotFoundError(f"tile z={z} x={x} y={y} does not touch the scene")
        read = Window(col0, row0, col1 - col0, row1 - row0)
        source = np.empty((4, row1 - row0, col1 - col0), dtype=np.uint8)
        source[:3] = self.pyramid.read_window(store_level, read).transpose(2, 0, 1)
        source[3] = self.pyramid.read_valid_mask(store_level, read)
        source[3] *= np.uint8(OPAQUE)
        rgba = np.zeros((4, TILE_SIZE_PX, TILE_SIZE_PX), dtype=np.uint8)
        reproject(
            source,
            rgba,
            src_transform=self.transforms[store_level] @ Affine.translation(col0, row0),
            src_crs=self.crs,
            dst_transform=from_bounds(*tile_merc, TILE_SIZE_PX, TILE_SIZE_PX),
            dst_crs=self.tms.rasterio_crs,
            resampling=Resampling.nearest,
        )
        return RgbaTile(rgba=rgba, store_level=store_level)


def heat_values(record: AnswerRecord) -> np.ndarray | None:
    """Min-max normalised heat of a record, float32 (rows, cols) in [0, 1]; None if flat or none."""
    heat = record.heatmap
    if heat is None:
        return None
    rows, cols = heat.shape_hw
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    low, high = float(values.min()), float(values.max())
    if not high - low >= HEATMAP_FLAT_RANGE:
        return None
    return (values - low) / (high - low)


def colour_heat(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Colour normalised heat with the overlay ramp; alpha follows the overlay's gamma.

    Args:
        values: float32 (h, w) in [0, 1].
        valid: bool (h, w); False (outside the scene or nodata) becomes transparent.

    Returns:
        uint8 (4, h, w) RGBA.
    """
    stops = np.array([stop for stop, _ in HEATMAP_RAMP_RGB], dtype=np.float32)
    out = np.zeros((4, *values.shape), dtype=np.uint8)
    for channel in range(3):
        ramp = np.array([rgb[channel] for _, rgb in HEATMAP_RAMP_RGB], dtype=np.float32)
        out[channel] = np.interp(values, stops, ramp).astype(np.uint8)
    alpha = np.clip(OPAQUE * HEATMAP_MAX_ALPHA * values**HEATMAP_ALPHA_GAMMA, 0, OPAQUE)
    out[3] = np.where(valid, alpha, 0).astype(np.uint8)
    return out


def render_heat(record: AnswerRecord, tiler: SceneTiler, z: int, x: int, y: int) -> RgbaTile:
    """Render tile (z, x, y) of a record's heat map, masked to the scene's valid pixels.

    The heat raster's grid is the scene's level-0 affine scaled by ``(W / cols, H / rows)``, as in
    :func:`lrs_core.outputs.heatmaps.write_heatmap_cog`; GDAL warps it with bilinear resampling.

    Raises:
        TileNotFoundError: bad coordinates, no heat map, or the tile misses the scene.
    """
    from rasterio.transform import from_bounds
    from rasterio.warp import Resampling, reproject

    scene_tile = tiler.render(z, x, y)
    values = heat_values(record)
    if values is None:
        raise TileNotFoundError(f"{record.question_id}: the answer has no (non-flat) heat map")
    rows, cols = values.shape
    width_px, height_px = record.scene.size_wh
    warped = np.full((TILE_SIZE_PX, TILE_SIZE_PX), np.nan, dtype=np.float32)
    reproject(
        values,
        warped,
        src_transform=tiler.transforms[0] @ Affine.scale(width_px / cols, height_px / rows),
        src_crs=tiler.crs,
        src_nodata=np.nan,
        dst_transform=from_bounds(*tiler.tile_bounds(z, x, y), TILE_SIZE_PX, TILE_SIZE_PX),
        dst_crs=tiler.tms.rasterio_crs,
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    valid = (scene_tile.rgba[3] == OPAQUE) & np.isfinite(warped)
    return RgbaTile(rgba=colour_heat(np.nan_to_num(warped), valid), store_level=-1)
