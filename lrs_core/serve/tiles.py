"""Web-Mercator XYZ tiles of a scene store and of an answer's heat map, through rio-tiler.

The tile grid is morecantile's ``WebMercatorQuad``; each tile is read from the coarsest store
level whose pixels are still at most one tile pixel (so a zoomed-out view never touches level 0),
as a small window of that level of the store's xarray tree (:func:`lrs_core.pyramid.open_datatree`),
and reprojected by rio-tiler's ``XarrayReader.part`` (GDAL warp, nearest neighbour, as TiTiler's
default). The level's ``valid`` mask travels as a fourth band and becomes the PNG's alpha, so
nodata is transparent. Heat maps are tiled the same way from the record's coarse raster (the
same grid as :func:`lrs_core.outputs.write_heatmap_cog`), coloured with the overlay ramp and masked
to the scene's valid area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_core.errors import LrsError
from lrs_core.outputs import (
    HEATMAP_ALPHA_GAMMA,
    HEATMAP_FLAT_RANGE,
    HEATMAP_MAX_ALPHA,
    HEATMAP_RAMP_RGB,
)

if TYPE_CHECKING:
    import xarray as xr
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

    Args:
        tree: the store opened with :func:`lrs_core.pyramid.open_datatree`; its levels must carry
            a CRS (``spatial_ref``).

    Raises:
        TileNotFoundError: the store has no CRS or no north-up grid (nothing to tile).
    """

    def __init__(self, tree: xr.DataTree) -> None:
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        self.levels = [tree[str(k)].to_dataset() for k in range(len(tree.children))]
        level0 = self.levels[0]
        self.crs = level0.rio.crs
        if self.crs is None:
            raise TileNotFoundError(
                "the store has no CF grid mapping (no CRS, or a rotated grid), so it has no "
                "Web-Mercator tiles; re-ingest it from a north-up georeferenced raster"
            )
        self.transforms = [level.rio.transform() for level in self.levels]
        self.tms = web_mercator()
        self._bounds_merc = self._merc_bounds()

    def _merc_bounds(self) -> tuple[float, float, float, float]:
        from rasterio.warp import transform_bounds

        left, bottom, right, top = self.levels[0].rio.bounds()
        west, south, east, north = transform_bounds(
            self.crs, self.tms.rasterio_crs, left, bottom, right, top,
            densify_pts=BOUNDS_DENSIFY_POINTS,
        )  # fmt: skip
        return (float(west), float(south), float(east), float(north))

    def zoom_range(self) -> tuple[int, int]:
        """(minzoom, maxzoom): the coarsest level fits a tile, level 0 (plus over-zoom) at most."""
        west, _, east, _ = self._bounds_merc
        width_px = self.levels[0].sizes["x"]
        res0 = (east - west) / width_px
        coarsest = res0 * 2 ** (len(self.levels) - 1)
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
        return min(len(self.levels) - 1, int(math.floor(math.log2(per_tile_px))))

    def render(self, z: int, x: int, y: int) -> RgbaTile:
        """Render tile (z, x, y) as RGBA with nodata transparent.

        Raises:
            TileNotFoundError: bad coordinates, or the tile does not touch the scene.
        """
        import xarray as xr
        from morecantile import Tile
        from rasterio.warp import transform_bounds
        from rasterio.windows import from_bounds
        from rio_tiler.io import XarrayReader

        check_tile(z, x, y)
        tile_merc = self.tms.xy_bounds(Tile(x=x, y=y, z=z))
        west, south, east, north = self._bounds_merc
        if (
            tile_merc.left >= east
            or tile_merc.right <= west
            or tile_merc.bottom >= north
            or tile_merc.top <= south
        ):
            raise TileNotFoundError(f"tile z={z} x={x} y={y} does not touch the scene")
        bounds_scene = transform_bounds(
            self.tms.rasterio_crs, self.crs, *tile_merc, densify_pts=BOUNDS_DENSIFY_POINTS
        )
        store_level = self.store_level_for(bounds_scene)
        level = self.levels[store_level]
        window = from_bounds(*bounds_scene, transform=self.transforms[store_level])
        height, width = level.sizes["y"], level.sizes["x"]
        row0 = max(0, math.floor(window.row_off) - WINDOW_MARGIN_PX)
        col0 = max(0, math.floor(window.col_off) - WINDOW_MARGIN_PX)
        row1 = min(height, math.ceil(window.row_off + window.height) + WINDOW_MARGIN_PX)
        col1 = min(width, math.ceil(window.col_off + window.width) + WINDOW_MARGIN_PX)
        if row1 - row0 < 2 or col1 - col0 < 2:
            raise TileNotFoundError(f"tile z={z} x={x} y={y} does not touch the scene")
        part = level.isel(y=slice(row0, row1), x=slice(col0, col1))
        rgb = np.asarray(part["rgb"].values)
        alpha = np.asarray(part["valid"].values).astype(np.uint8) * np.uint8(OPAQUE)
        bands = np.concatenate([rgb, alpha[..., None]], axis=2).transpose(2, 0, 1)
        data = xr.DataArray(
            bands,
            dims=("band", "y", "x"),
            coords={"band": [1, 2, 3, 4], "y": part["y"].values, "x": part["x"].values},
        )
        data = data.rio.write_crs(self.crs).rio.write_nodata(0)
        with XarrayReader(data, tms=self.tms) as reader:
            image = reader.part(
                tuple(tile_merc),
                dst_crs=self.tms.rasterio_crs,
                bounds_crs=self.tms.rasterio_crs,
                height=TILE_SIZE_PX,
                width=TILE_SIZE_PX,
            )
        return RgbaTile(rgba=np.asarray(image.array.data, dtype=np.uint8), store_level=store_level)


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
    :func:`lrs_core.outputs.write_heatmap_cog`; it is warped with bilinear resampling.

    Raises:
        TileNotFoundError: bad coordinates, no heat map, or the tile misses the scene.
    """
    import xarray as xr
    from morecantile import Tile
    from rasterio.transform import Affine
    from rio_tiler.io import XarrayReader

    scene_tile = tiler.render(z, x, y)
    values = heat_values(record)
    if values is None:
        raise TileNotFoundError(f"{record.question_id}: the answer has no (non-flat) heat map")
    rows, cols = values.shape
    width_px, height_px = record.scene.size_wh
    grid = tiler.transforms[0] @ Affine.scale(width_px / cols, height_px / rows)
    xs = grid.c + grid.a * (np.arange(cols) + 0.5)
    ys = grid.f + grid.e * (np.arange(rows) + 0.5)
    data = xr.DataArray(
        values[None], dims=("band", "y", "x"), coords={"band": [1], "y": ys, "x": xs}
    )
    data = data.rio.write_crs(tiler.crs).rio.write_nodata(np.nan)
    tile_merc = tiler.tms.xy_bounds(Tile(x=x, y=y, z=z))
    with XarrayReader(data, tms=tiler.tms) as reader:
        image = reader.part(
            tuple(tile_merc),
            dst_crs=tiler.tms.rasterio_crs,
            bounds_crs=tiler.tms.rasterio_crs,
            height=TILE_SIZE_PX,
            width=TILE_SIZE_PX,
            reproject_method="bilinear",
        )
    warped: Any = np.asarray(image.array.data[0], dtype=np.float32)
    valid = (scene_tile.rgba[3] == OPAQUE) & np.isfinite(warped)
    return RgbaTile(rgba=colour_heat(np.nan_to_num(warped), valid), store_level=-1)
