"""Keep evidence on data: drop zoom tiles that are (almost) all nodata; mask heat to valid pixels.

A scene's nodata collar (the black margin of a warped or clipped raster) holds nothing to answer
from, yet its flat tokens can draw attention. Two small rules, both driven by the store's
``valid`` masks (:meth:`lrs_core.pyramid.Pyramid.read_valid_mask`):

* :func:`drop_nodata_tiles`: a tile chosen for a zoom step whose share of nodata pixels is above
  ``FocusConfig.max_nodata_share`` is not zoomed into (nor reported as evidence).
* :func:`restrict_to_data`: evidence tiles and tokens above that share are dropped from the
  record (the coarsest level is encoded whole, collar included), and heat-map cells holding no
  valid pixel are set to 0.

Shares are measured on the coarsest store level with at least :data:`VALID_SAMPLE_PX` pixels
across the area (a few kB read per tile). A pyramid without ``read_valid_mask`` (a test double)
counts as all valid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from rasterio.windows import Window

from lrs_core.dip.plan import DipLevel
from lrs_core.focus.select import TileChoice
from lrs_core.records import AnswerRecord, BBoxPx, HeatMap

#: Pixels across a tile (or the scene, for the heat map) at which its valid share is measured.
VALID_SAMPLE_PX = 32


def valid_share(pyramid: Any, bbox_px: BBoxPx, *, sample_px: int = VALID_SAMPLE_PX) -> float:
    """Share of valid pixels in ``bbox_px`` (level-0 pixel corners), measured on a coarse level.

    Returns:
        A value in [0, 1]; 1.0 when the pyramid has no validity masks.
    """
    if not hasattr(pyramid, "read_valid_mask"):
        return 1.0
    mask = _valid_mask(pyramid, bbox_px, sample_px=sample_px)
    return float(mask.mean()) if mask.size else 0.0


def _valid_mask(pyramid: Any, bbox_px: BBoxPx, *, sample_px: int) -> np.ndarray:
    """Return bool (h, w) validity over ``bbox_px`` on the coarsest level ``sample_px`` across."""
    x0, y0, x1, y1 = bbox_px
    side = max(1, min(sample_px, math.ceil(min(x1 - x0, y1 - y0))))
    store_level = pyramid.level_for(bbox_px, out_hw=(side, side))
    info = pyramid.levels[store_level]
    height, width = info.shape_hw
    scale = info.downsample
    col0, row0 = max(0, math.floor(x0 / scale)), max(0, math.floor(y0 / scale))
    col1, row1 = min(width, math.ceil(x1 / scale)), min(height, math.ceil(y1 / scale))
    if col1 <= col0 or row1 <= row0:
        return np.zeros((0, 0), dtype=bool)
    window = Window(col0, row0, col1 - col0, row1 - row0)
    return np.asarray(pyramid.read_valid_mask(store_level, window), dtype=bool)


def drop_nodata_tiles(
    choice: TileChoice,
    level: DipLevel,
    pyramid: Any,
    *,
    max_nodata_share: float,
    tiles_cap: int | None = None,
) -> TileChoice:
    """Keep the chosen tiles whose nodata share is at most ``max_nodata_share``, in rank order.

    Args:
        choice: the tiles a selection rule ranked for ``level`` (uncapped).
        level: the level the tiles belong to.
        pyramid: the scene's pyramid.
        max_nodata_share: in (0, 1]; 1.0 keeps every tile (the reference's behaviour).
        tiles_cap: most tiles kept (the first ones on data); None keeps all.
    """
    pairs = list(zip(choice.tiles_rc, choice.mass, strict=True))
    if max_nodata_share < 1.0:
        kept: list[tuple[tuple[int, int], float]] = []
        for tile, mass in pairs:
            if tiles_cap is not None and len(kept) >= tiles_cap:
                break
            if 1.0 - valid_share(pyramid, level.tile_bbox_px(tile)) <= max_nodata_share:
                kept.append((tile, mass))
        pairs = kept
    if tiles_cap is not None:
        pairs = pairs[:tiles_cap]
    return dataclasses.replace(
        choice, tiles_rc=[tile for tile, _ in pairs], mass=[mass for _, mass in pairs]
    )


def restrict_to_data(
    record: AnswerRecord, pyramid: Any, *, max_nodata_share: float
) -> AnswerRecord:
    """The record without evidence in nodata and with its heat map masked to valid pixels.

    Args:
        record: an answer about ``pyramid``'s scene.
        pyramid: the scene's pyramid.
        max_nodata_share: evidence tiles and tokens with a larger nodata share are dropped; 1.0
            returns the record unchanged.
    """
    if max_nodata_share >= 1.0 or not hasattr(pyramid, "read_valid_mask"):
        return record

    def on_data(bbox_px: BBoxPx) -> bool:
        return 1.0 - valid_share(pyramid, bbox_px) <= max_nodata_share

    return dataclasses.replace(
        mask_heatmap(record, pyramid),
        evidence_tiles=tuple(t for t in record.evidence_tiles if on_data(t.bbox_px)),
        evidence_tokens=tuple(t for t in record.evidence_tokens if on_data(t.bbox_px)),
    )


def mask_heatmap(record: AnswerRecord, pyramid: Any) -> AnswerRecord:
    """The record with heat-map cells that hold no valid pixel set to 0 (same record if none)."""
    heat = record.heatmap
    if heat is None or not hasattr(pyramid, "read_valid_mask"):
        return record
    rows, cols = heat.shape_hw
    width, height = record.scene.size_wh
    cell_w, cell_h = width / cols, height / rows
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    mask = _valid_mask(pyramid, (0.0, 0.0, float(width), float(height)), sample_px=max(rows, cols))
    mask_h, mask_w = mask.shape
    if mask.size == 0 or mask.all():
        return record
    # Cell (r, c) covers level-0 [c*cell_w, (c+1)*cell_w) x [r*cell_h, (r+1)*cell_h); the mask's
    # pixel (i, j) covers [j*width/mask_w, ...): any valid mask pixel in the cell keeps it.
    keep = np.zeros((rows, cols), dtype=bool)
    for row in range(rows):
        i0 = math.floor(row * cell_h * mask_h / height)
        i1 = max(i0 + 1, math.ceil((row + 1) * cell_h * mask_h / height))
        for col in range(cols):
            j0 = math.floor(col * cell_w * mask_w / width)
            j1 = max(j0 + 1, math.ceil((col + 1) * cell_w * mask_w / width))
            keep[row, col] = bool(mask[i0:i1, j0:j1].any())
    masked = np.where(keep, values, np.float32(0.0))
    return dataclasses.replace(
        record,
        heatmap=HeatMap(values=tuple(float(v) for v in masked.reshape(-1)), shape_hw=(rows, cols)),
    )
