"""What the engine shows the model, rebuilt for training: tiles, per-cell labels, LLM sequences.

Training sees exactly the engine's inputs: tiles come from :func:`lrs_core.tiles.read_tiles` /
:func:`~lrs_core.tiles.read_thumbnail` on the DIP of :func:`lrs_core.dip.plan.plan_pyramid`, and LLM
sequences from :func:`lrs_core.focus_sequence.build_level_sequence` and
:func:`~lrs_core.focus_sequence.embed_sequence`, pruned by
:func:`lrs_core.focus_select.prune_tokens`.
Only the pixels' source differs: :class:`ArrayPyramid` serves an in-memory rendered scene through
the same reader protocol as a Zarr store (area resampling with Pillow's box filter).

Per-cell labels (the dense auxiliary targets of the vision tower) come from the scene description:
for each token cell (a patch, or a pooled token) the object covering most of it, or whose centre
lies in it, gives the kind and colour labels; the background under the cell centre gives the
background label. An object whose long side is under :data:`MIN_VISIBLE_PX` pixels at the tile's
scale labels nothing: the cells it touches get :data:`IGNORE_LABEL` for kind and colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image
from rasterio.windows import Window

from lrs_core.dip.plan import DipLevel, Thumbnail
from lrs_core.records import BBoxPx
from lrs_core.world.generate import WorldObject, WorldScene
from lrs_core.world.vocabulary import COLOR_NAMES, KIND_NAMES, NO_OBJECT

UInt8Array = npt.NDArray[np.uint8]
IntArray = npt.NDArray[np.int64]

#: Label of a cell outside the scene (padding): ignored by the losses.
IGNORE_LABEL = -100
#: Sample points per cell side when measuring how much of a cell an object covers.
COVERAGE_SAMPLES = 4
#: Bonus score of the object whose centre lies in a cell (so sub-cell objects get a label).
CENTRE_BONUS = 0.5
#: Long side, in pixels of the tile's level, under which an object is not labelled: smaller ones
#: (a vehicle in a coarse level) cannot be seen, so their cells' kind and colour are ignored
#: rather than taught as unlearnable targets.
MIN_VISIBLE_PX = 4.0


class ArrayPyramid:
    """An in-memory scene behind the tile reader's protocol (:class:`lrs_core.tiles.PyramidReader`).

    Args:
        rgb: uint8 (H, W, 3) level-0 pixels.
    """

    def __init__(self, rgb: UInt8Array) -> None:
        self.rgb = rgb

    @property
    def size_wh(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def read_region(
        self, bounds_px: BBoxPx, *, out_hw: tuple[int, int], fill_rgb: tuple[int, int, int]
    ) -> UInt8Array:
        """uint8 (out_h, out_w, 3): a level-0 region, box-filtered (shrink) or bicubic (enlarge)."""
        x0, y0, x1, y1 = (float(v) for v in bounds_px)
        out_h, out_w = out_hw
        shrinking = (x1 - x0) >= out_w and (y1 - y0) >= out_h
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        image = Image.fromarray(self.rgb, mode="RGB")
        out: UInt8Array = np.asarray(
            image.resize((out_w, out_h), resample=resample, box=(x0, y0, x1, y1))
        )
        return out

    def read_window(self, store_level: int, window: Window) -> UInt8Array:
        """uint8 (h, w, 3): an integer window of level 0 (only store level 0 exists)."""
        if store_level != 0:
            raise ValueError(f"an ArrayPyramid has only store_level 0, not {store_level}")
        rows, cols = window.toslices()
        out: UInt8Array = self.rgb[rows, cols]
        return out


@dataclass(frozen=True)
class CellLabels:
    """Per-cell targets of one tile, each int64 (G, G), :data:`IGNORE_LABEL` outside the scene.

    Attributes:
        kind: 0 = no object, ``i + 1`` = ``KIND_NAMES[i]``.
        color: 0 = no object, ``i + 1`` = ``COLOR_NAMES[i]``.
        background: index into ``BACKGROUNDS``.
        wake: 1 where a moving object's wake or trail covers part of the cell.
    """

    kind: IntArray
    color: IntArray
    background: IntArray
    wake: IntArray


def _objects_in(scene: WorldScene, bbox: BBoxPx) -> list[WorldObject]:
    x0, y0, x1, y1 = bbox
    found = []
    for obj in scene.objects:
        ox0, oy0, ox1, oy1 = obj.wake_hbox()
        if ox1 > x0 and ox0 < x1 and oy1 > y0 and oy0 < y1:
            found.append(obj)
    return found


def cell_labels(
    scene: WorldScene,
    *,
    origin_px: tuple[float, float],
    cell_px: float,
    scale_xy: tuple[float, float],
    grid_side: int,
    content_hw: tuple[int, int],
    min_visible_px: float = MIN_VISIBLE_PX,
) -> CellLabels:
    """Labels of a ``grid_side`` x ``grid_side`` grid of cells over one tile.

    Args:
        scene: the scene.
        origin_px: (x, y) of the tile's top-left corner, in pixels of the tile's level.
        cell_px: side of one cell in pixels of the tile's level.
        scale_xy: level-0 pixels per level pixel along x and y.
        grid_side: cells per tile side.
        content_hw: (rows, cols) of the tile's pixels inside the scene (the rest is padding).
        min_visible_px: objects whose long side is under this at the tile's scale label nothing.
    """
    n = grid_side
    offsets = (np.arange(COVERAGE_SAMPLES) + 0.5) / COVERAGE_SAMPLES
    cell_idx = np.arange(n)
    # level-pixel sample positions, (n, S) per axis
    lx = origin_px[0] + (cell_idx[:, None] + offsets[None, :]) * cell_px
    ly = origin_px[1] + (cell_idx[:, None] + offsets[None, :]) * cell_px
    sx, sy = scale_xy
    xs = np.broadcast_to((lx * sx)[None, :, None, :], (n, n, COVERAGE_SAMPLES, COVERAGE_SAMPLES))
    ys = np.broadcast_to((ly * sy)[:, None, :, None], (n, n, COVERAGE_SAMPLES, COVERAGE_SAMPLES))
    cx = (origin_px[0] + (cell_idx + 0.5) * cell_px) * sx
    cy = (origin_px[1] + (cell_idx + 0.5) * cell_px) * sy
    width, height = scene.size_wh
    centre_x = np.broadcast_to(np.clip(cx, 0, width - 1e-3)[None, :], (n, n))
    centre_y = np.broadcast_to(np.clip(cy, 0, height - 1e-3)[:, None], (n, n))
    background = scene.background_at(centre_x, centre_y).astype(np.int64)
    kind = np.full((n, n), NO_OBJECT, dtype=np.int64)
    color = np.full((n, n), NO_OBJECT, dtype=np.int64)
    wake = np.zeros((n, n), dtype=np.int64)
    best = np.zeros((n, n), dtype=np.float64)
    bbox = (
        origin_px[0] * sx,
        origin_px[1] * sy,
        (origin_px[0] + n * cell_px) * sx,
        (origin_px[1] + n * cell_px) * sy,
    )
    cell0_x, cell0_y = cell_px * sx, cell_px * sy
    unseen = np.zeros((n, n), dtype=bool)
    for obj in _objects_in(scene, bbox):
        score = obj.contains(xs, ys).mean(axis=(2, 3))
        ox, oy = obj.center_xy
        col = int((ox - bbox[0]) // cell0_x)
        row = int((oy - bbox[1]) // cell0_y)
        if 0 <= row < n and 0 <= col < n:
            score[row, col] += CENTRE_BONUS
        if max(obj.extent_px) / max(sx, sy) < min_visible_px:
            unseen |= score > 0
            continue
        better = score > best
        kind[better] = KIND_NAMES.index(obj.kind) + 1
        color[better] = COLOR_NAMES.index(obj.color) + 1
        best = np.maximum(best, score)
        if obj.status == "moving":
            wake |= obj.wake_contains(xs, ys).any(axis=(2, 3)).astype(np.int64)
    rows_in = int(np.ceil(content_hw[0] / cell_px))
    cols_in = int(np.ceil(content_hw[1] / cell_px))
    outside = np.ones((n, n), dtype=bool)
    outside[:rows_in, :cols_in] = False
    unseen &= kind == NO_OBJECT
    kind[unseen] = IGNORE_LABEL
    color[unseen] = IGNORE_LABEL
    for array in (kind, color, background, wake):
        array[outside] = IGNORE_LABEL
    return CellLabels(kind=kind, color=color, background=background, wake=wake)


def tile_labels(
    scene: WorldScene, level: DipLevel, tile_rc: tuple[int, int], *, grid_side: int
) -> CellLabels:
    """Per-cell labels of one tile of a DIP level (``grid_side`` cells per tile side)."""
    rh, rw = level.resize_hw
    height, width = level.image_hw
    side = level.tile_size_px
    return cell_labels(
        scene,
        origin_px=(tile_rc[1] * side, tile_rc[0] * side),
        cell_px=side / grid_side,
        scale_xy=(width / rw, height / rh),
        grid_side=grid_side,
        content_hw=level.tile_content_hw(tile_rc),
    )


def thumbnail_labels(scene: WorldScene, thumb: Thumbnail, *, grid_side: int) -> CellLabels:
    """Per-cell labels of the thumbnail canvas (``grid_side`` cells per side)."""
    th, tw = thumb.resize_hw
    height, width = thumb.image_hw
    return cell_labels(
        scene,
        origin_px=(0.0, 0.0),
        cell_px=thumb.canvas_hw[0] / grid_side,
        scale_xy=(width / tw, height / th),
        grid_side=grid_side,
        content_hw=(th, tw),
    )


def token_boxes(level: DipLevel) -> npt.NDArray[np.float64]:
    """Float (Ht, Wt, 4) level-0 pixel boxes (x0, y0, x1, y1) of a level's tokens."""
    rows_n, cols_n = level.token_grid_hw
    rh, rw = level.resize_hw
    height, width = level.image_hw
    token = level.tile_size_px / level.tokens_per_tile_side
    sx, sy = width / rw, height / rh
    cols = np.arange(cols_n, dtype=np.float64)
    rows = np.arange(rows_n, dtype=np.float64)
    boxes = np.zeros((rows_n, cols_n, 4), dtype=np.float64)
    boxes[..., 0] = (cols * token * sx)[None, :]
    boxes[..., 1] = (rows * token * sy)[:, None]
    boxes[..., 2] = ((cols + 1) * token * sx)[None, :]
    boxes[..., 3] = ((rows + 1) * token * sy)[:, None]
    return boxes


def boxes_overlap(
    boxes: npt.NDArray[np.float64], target: tuple[float, float, float, float]
) -> npt.NDArray[np.bool_]:
    """Bool (...): which (x0, y0, x1, y1) boxes intersect ``target`` (same frame)."""
    x0, y0, x1, y1 = target
    return np.asarray(
        (boxes[..., 0] < x1) & (boxes[..., 2] > x0) & (boxes[..., 1] < y1) & (boxes[..., 3] > y0)
    )
