"""The Dynamic Image Pyramid (DIP): pure geometry of levels, tile grids and token grids.

A DIP turns a ``W x H`` scene into a 336x336 thumbnail plus a ladder of *tiled levels*, counted
coarse to fine from ``dip_level`` 1 (long side about 1008 px, at most 3x3 tiles) to the original
resolution. Each tiled level is the scene resized to ``resize_hw``, padded at the bottom/right to a
whole number of 336-px tiles (``grid_hw``), encoded tile by tile into 12x12 pooled tokens, and laid
out as one token grid over the whole level, from which the padded rows or columns are trimmed
(``token_grid_hw``) and to which the reference appends one newline token per row.

The arithmetic is that of the reference implementation (``reference/algorithm.md`` §1.2–1.5, §2.3),
including Python ``round`` (banker's rounding), the "fill-to-grid" upscale and ``int()`` truncation.
Two rules choose the levels (:class:`PyramidRule`): ``parity`` keeps the reference's ladder exactly,
near-duplicate levels included; ``default`` drops levels too close in size to a neighbour.

Frames and conventions (the project's pixel rule: (0, 0) is the top-left *corner* of the top-left
pixel; centres sit at +0.5):

* ``*_px`` boxes are ``(x0, y0, x1, y1)`` corners in level-0 pixels of the scene (column first).
* ``*_hw`` sizes and ``*_rc`` indices are ``(row, col)``.
* ``tile_rc`` indexes a level's tile grid; ``grid_rc`` indexes its unpadded token grid, whose
  newline column (index ``Wt``) has no footprint.
* Level pixels map to level-0 pixels by ``x0 = x_level * W / rw`` (and ``y`` alike): bilinear
  resizing with ``align_corners=False`` maps pixel *edges* linearly, so corners map exactly.

This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from lrs_core.errors import ConfigError, GeometryError

#: Side of one DIP tile and of the vision tower's input, in pixels of the tile's level (spec §1.2).
TILE_SIZE_PX = 336
#: Long side of the coarsest tiled level ("base_HR_img_long_side", 3 tiles; spec §1.2).
BASE_LONG_SIDE_PX = 1008
#: Vision-tower patch side in pixels (CLIP ViT-L/14; spec §0): 336/14 = 24 patches per tile side.
PATCH_SIZE_PX = 14
#: Pooled tokens per tile side after the 2x2 pooling of tiled levels (spec §2.1): 24/2 = 12.
POOLED_TOKENS_PER_TILE_SIDE = 12
#: Smallest long-side ratio between neighbouring levels that the ``default`` rule keeps.
DEFAULT_MIN_LEVEL_RATIO = 1.25

BBoxPx = tuple[float, float, float, float]
IntArray = npt.NDArray[np.int64]


class PyramidRule(Enum):
    """Which levels a DIP has.

    Attributes:
        PARITY: the reference's ladder exactly (spec §1.2): scale ratios ``1, 1/2, 1/4, ...``
            down to ``min_scale = 1008 / long_side``, then ``min_scale`` itself appended, exact
            duplicate ratios merged, near-duplicate levels (even ones with identical sizes) kept.
            The level-1 token grid is unpadded against the original ``(W, H)``, finer ones
            against their ``resize_hw``, as the reference does (spec §2.3, §5.1).
        DEFAULT: ours. The same ladder, then a level is dropped when its resized long side is within
            ``min_level_ratio`` of the previous kept level or of the finest level. The base level
            (long side ~1008) and the original-resolution level are always kept. Every token grid is
            unpadded against its own ``resize_hw``.
    """

    PARITY = "parity"
    DEFAULT = "default"


@dataclass(frozen=True, kw_only=True)
class DipConfig:
    """Sizes and the level rule of a Dynamic Image Pyramid.

    Attributes:
        tile_size_px: tile side in pixels of its level; the vision tower's input side (spec §1.2).
        base_long_side_px: long side of the coarsest tiled level (spec §1.2, 1008 = 3 tiles).
        patch_size_px: vision-tower patch side; the thumbnail has ``(tile/patch)**2`` tokens.
        tokens_per_tile_side: pooled tokens per tile side of a tiled level (spec §2.1).
        rule: which levels the pyramid has (:class:`PyramidRule`).
        min_level_ratio: ``default`` rule only: smallest long-side ratio kept between neighbouring
            levels (>= 1). Ignored by ``parity``.
    """

    tile_size_px: int = TILE_SIZE_PX
    base_long_side_px: int = BASE_LONG_SIDE_PX
    patch_size_px: int = PATCH_SIZE_PX
    tokens_per_tile_side: int = POOLED_TOKENS_PER_TILE_SIDE
    rule: PyramidRule = PyramidRule.DEFAULT
    min_level_ratio: float = DEFAULT_MIN_LEVEL_RATIO

    def __post_init__(self) -> None:
        for name in ("tile_size_px", "base_long_side_px", "patch_size_px", "tokens_per_tile_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"DipConfig.{name}={value!r} must be a positive integer")
        if self.tile_size_px % self.patch_size_px:
            raise ConfigError(
                f"DipConfig.tile_size_px={self.tile_size_px} is not a multiple of "
                f"patch_size_px={self.patch_size_px}; choose sizes the vision tower tiles exactly"
            )
        if self.patches_per_tile_side % self.tokens_per_tile_side:
            raise ConfigError(
                f"DipConfig.tokens_per_tile_side={self.tokens_per_tile_side} does not divide the "
                f"{self.patches_per_tile_side} patches per tile side; pooling needs a whole stride"
            )
        if self.base_long_side_px < self.tile_size_px:
            raise ConfigError(
                f"DipConfig.base_long_side_px={self.base_long_side_px} is below "
                f"tile_size_px={self.tile_size_px}; the base level needs at least one tile"
            )
        if not isinstance(self.rule, PyramidRule):
            try:
                object.__setattr__(self, "rule", PyramidRule(self.rule))
            except ValueError as err:
                allowed = ", ".join(r.value for r in PyramidRule)
                raise ConfigError(f"DipConfig.rule={self.rule!r} is not one of: {allowed}") from err
        ratio = self.min_level_ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not math.isfinite(ratio)
        ):
            raise ConfigError(f"DipConfig.min_level_ratio={ratio!r} must be a finite number >= 1")
        if ratio < 1.0:
            raise ConfigError(f"DipConfig.min_level_ratio={ratio} is below 1; use a value >= 1")

    @classmethod
    def preset(cls, name: str | PyramidRule, **overrides: Any) -> DipConfig:
        """Return a named preset: ``"parity"`` (spec §1.2 exactly) or ``"default"`` (ours).

        Args:
            name: preset name or :class:`PyramidRule`.
            **overrides: further fields to set on the preset.

        Raises:
            ConfigError: the name is not a preset, or an override is invalid.
        """
        try:
            rule = PyramidRule(name)
        except ValueError as err:
            allowed = ", ".join(r.value for r in PyramidRule)
            raise ConfigError(
                f"DIP preset {name!r} does not exist; choose one of: {allowed}"
            ) from err
        return cls(rule=rule, **overrides)

    @property
    def patches_per_tile_side(self) -> int:
        """Vision-tower patches per tile side (24 for 336/14)."""
        return self.tile_size_px // self.patch_size_px

    @property
    def pool_stride(self) -> int:
        """Pooling stride from patches to tokens of a tiled level (2 for 24 -> 12)."""
        return self.patches_per_tile_side // self.tokens_per_tile_side

    @property
    def token_size_px(self) -> int:
        """Side of one pooled token's footprint, in pixels of its level (28 for 336/12)."""
        return self.tile_size_px // self.tokens_per_tile_side

    @property
    def thumbnail_tokens(self) -> int:
        """Tokens of the thumbnail: unpooled, with padding, no newline (576; spec §1.4)."""
        return self.patches_per_tile_side**2

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready plain values."""
        return {
            "tile_size_px": self.tile_size_px,
            "base_long_side_px": self.base_long_side_px,
            "patch_size_px": self.patch_size_px,
            "tokens_per_tile_side": self.tokens_per_tile_side,
            "rule": self.rule.value,
            "min_level_ratio": self.min_level_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DipConfig:
        """Return the config that :meth:`to_dict` wrote."""
        return cls(**data)


def _check_rc(rc: Sequence[int], limit_hw: tuple[int, int], what: str) -> tuple[int, int]:
    if len(rc) != 2:
        raise GeometryError(f"{what} {tuple(rc)!r} is not a (row, col) pair")
    row, col = int(rc[0]), int(rc[1])
    if not (0 <= row < limit_hw[0] and 0 <= col < limit_hw[1]):
        raise GeometryError(
            f"{what} ({row}, {col}) is outside the grid of {limit_hw[0]} rows x {limit_hw[1]} cols"
        )
    return row, col


@dataclass(frozen=True, kw_only=True)
class DipLevel:
    """One tiled level of a DIP: its size, tile grid and token grid, and maps between them.

    Attributes:
        dip_level: 1 for the coarsest tiled level, counting up to the finest (0 is the thumbnail).
        ratio: the scale ratio the reference starts from (level size ~ ratio x scene size).
        image_hw: (H, W) of the scene at level 0, in pixels.
        resize_hw: (rh, rw) the scene is resized to at this level (spec §1.3), in pixels.
        token_grid_hw: (Ht, Wt) unpadded token grid, newline column excluded (spec §2.3).
        tile_size_px: tile side in pixels of this level.
        tokens_per_tile_side: pooled tokens per tile side.
    """

    dip_level: int
    ratio: float
    image_hw: tuple[int, int]
    resize_hw: tuple[int, int]
    token_grid_hw: tuple[int, int]
    tile_size_px: int = TILE_SIZE_PX
    tokens_per_tile_side: int = POOLED_TOKENS_PER_TILE_SIDE

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, cols) of the tile grid: ``ceil(resize / tile)`` per axis."""
        return (
            math.ceil(self.resize_hw[0] / self.tile_size_px),
            math.ceil(self.resize_hw[1] / self.tile_size_px),
        )

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(h, w) of the padded level canvas in pixels (``resize_padding_hw``)."""
        rows, cols = self.grid_hw
        return rows * self.tile_size_px, cols * self.tile_size_px

    @property
    def resize_ratio_hw(self) -> tuple[float, float]:
        """(rh / H, rw / W): level pixels per level-0 pixel along each axis."""
        return self.resize_hw[0] / self.image_hw[0], self.resize_hw[1] / self.image_hw[1]

    @property
    def n_tiles(self) -> int:
        """Tiles in the grid (``image_num``)."""
        rows, cols = self.grid_hw
        return rows * cols

    @property
    def token_size_px(self) -> int:
        """Side of one token's footprint in pixels of this level."""
        return self.tile_size_px // self.tokens_per_tile_side

    @property
    def token_canvas_hw(self) -> tuple[int, int]:
        """(rows, cols) of the padded token canvas: grid x tokens per tile side."""
        rows, cols = self.grid_hw
        return rows * self.tokens_per_tile_side, cols * self.tokens_per_tile_side

    @property
    def newline_col(self) -> int:
        """Column index of the newline token in each row of the reference's sequence (``Wt``)."""
        return self.token_grid_hw[1]

    @property
    def token_grid_with_newline_hw(self) -> tuple[int, int]:
        """(Ht, Wt + 1): the level's token sequence as the reference lays it out."""
        return self.token_grid_hw[0], self.token_grid_hw[1] + 1

    @property
    def n_tokens(self) -> int:
        """Tokens of the whole level in the LLM sequence, newlines included: ``Ht * (Wt + 1)``."""
        rows, cols = self.token_grid_with_newline_hw
        return rows * cols

    @property
    def long_side_px(self) -> int:
        """Long side of the resized level in pixels."""
        return max(self.resize_hw)

    # -- level pixels <-> level-0 pixels -------------------------------------------------------

    def _to_scene_x(self, x_level: int | float) -> float:
        # Multiply before dividing so integer edges map exactly (rw * W / rw == W).
        return x_level * self.image_hw[1] / self.resize_hw[1]

    def _to_scene_y(self, y_level: int | float) -> float:
        return y_level * self.image_hw[0] / self.resize_hw[0]

    def _clip(self, box: BBoxPx) -> BBoxPx:
        height, width = self.image_hw
        x0, y0, x1, y1 = box
        return (min(x0, width), min(y0, height), min(x1, width), min(y1, height))

    def tile_full_bbox_px(self, tile_rc: Sequence[int]) -> BBoxPx:
        """Return the level-0 pixel corners of a whole tile, padding included.

        Args:
            tile_rc: (row, col) in this level's tile grid.

        Returns:
            (x0, y0, x1, y1) corners in level-0 pixels; the right/bottom edge may lie past the scene
            (the padded area).

        Raises:
            GeometryError: ``tile_rc`` is outside the grid.
        """
        row, col = _check_rc(tile_rc, self.grid_hw, "tile_rc")
        side = self.tile_size_px
        return (
            self._to_scene_x(col * side),
            self._to_scene_y(row * side),
            self._to_scene_x((col + 1) * side),
            self._to_scene_y((row + 1) * side),
        )

    def tile_bbox_px(self, tile_rc: Sequence[int]) -> BBoxPx:
        """Return the level-0 pixel corners of the in-scene part of a tile.

        Args:
            tile_rc: (row, col) in this level's tile grid.

        Returns:
            (x0, y0, x1, y1) corners in level-0 pixels, clipped to the scene; never empty, because
            the grid is ``ceil(resize / tile)``.

        Raises:
            GeometryError: ``tile_rc`` is outside the grid.
        """
        return self._clip(self.tile_full_bbox_px(tile_rc))

    def tile_content_hw(self, tile_rc: Sequence[int]) -> tuple[int, int]:
        """Return (h, w) of a tile's in-scene part in pixels of this level (the rest is padding)."""
        row, col = _check_rc(tile_rc, self.grid_hw, "tile_rc")
        side = self.tile_size_px
        return (
            min(side, self.resize_hw[0] - row * side),
            min(side, self.resize_hw[1] - col * side),
        )

    def token_bbox_px(self, grid_rc: Sequence[int]) -> BBoxPx:
        """Return the level-0 pixel corners of one token's footprint.

        Args:
            grid_rc: (row, col) in the unpadded token grid (newline column excluded).

        Returns:
            (x0, y0, x1, y1) corners in level-0 pixels, clipped to the scene.

        Raises:
            GeometryError: ``grid_rc`` is outside the unpadded grid (the newline column has no
                footprint).
        """
        row, col = _check_rc(grid_rc, self.token_grid_hw, "grid_rc")
        side = self.token_size_px
        return self._clip(
            (
                self._to_scene_x(col * side),
                self._to_scene_y(row * side),
                self._to_scene_x((col + 1) * side),
                self._to_scene_y((row + 1) * side),
            )
        )

    # -- tiles <-> tokens ----------------------------------------------------------------------

    def tile_of_token(self, grid_rc: Sequence[int]) -> tuple[int, int]:
        """Return the tile of this level whose area holds a token's footprint centre.

        Within one level a token lies in exactly one tile, so this is ``(row // 12, col // 12)``.

        Raises:
            GeometryError: ``grid_rc`` is outside the unpadded grid (newline column included).
        """
        row, col = _check_rc(grid_rc, self.token_grid_hw, "grid_rc")
        return row // self.tokens_per_tile_side, col // self.tokens_per_tile_side

    def tokens_of_tile(self, tile_rc: Sequence[int]) -> list[tuple[int, int]]:
        """Return the token (row, col) of a tile that lie inside the unpadded grid, row-major.

        Raises:
            GeometryError: ``tile_rc`` is outside the tile grid.
        """
        row, col = _check_rc(tile_rc, self.grid_hw, "tile_rc")
        side = self.tokens_per_tile_side
        rows = range(row * side, min((row + 1) * side, self.token_grid_hw[0]))
        cols = range(col * side, min((col + 1) * side, self.token_grid_hw[1]))
        return [(r, c) for r in rows for c in cols]

    def tiles_covering(self, bbox_px: Sequence[float]) -> set[tuple[int, int]]:
        """Return the tiles whose in-scene area overlaps a box.

        Overlap means a shared area of positive size; a box of zero width or height selects the
        tiles that contain it under half-open tile extents ``[x0, x1)`` (a point on the scene's
        right or bottom edge belongs to the last tile). The box is clipped to the scene first.

        Args:
            bbox_px: (x0, y0, x1, y1) corners in level-0 pixels.

        Returns:
            set of (row, col) tile indices; empty when the box lies outside the scene.

        Raises:
            GeometryError: the box is not four finite numbers with x0 <= x1 and y0 <= y1.
        """
        if len(bbox_px) != 4 or not all(math.isfinite(float(v)) for v in bbox_px):
            raise GeometryError(f"bbox_px {tuple(bbox_px)!r} is not four finite numbers")
        x0, y0, x1, y1 = (float(v) for v in bbox_px)
        if x1 < x0 or y1 < y0:
            raise GeometryError(f"bbox_px {tuple(bbox_px)!r} has x1 < x0 or y1 < y0")
        height, width = self.image_hw
        x0, x1 = max(x0, 0.0), min(x1, float(width))
        y0, y1 = max(y0, 0.0), min(y1, float(height))
        if x1 < x0 or y1 < y0 or (x0 == width and x1 > x0) or (y0 == height and y1 > y0):
            return set()
        rows_n, cols_n = self.grid_hw
        side = self.tile_size_px
        cols = _overlapping(x0, x1, [self._to_scene_x(c * side) for c in range(cols_n + 1)])
        rows = _overlapping(y0, y1, [self._to_scene_y(r * side) for r in range(rows_n + 1)])
        return {(r, c) for r in rows for c in cols}

    def to_dict(self) -> dict[str, Any]:
        """Return the level as JSON-ready plain values (sizes as [rows, cols] lists)."""
        return {
            "dip_level": self.dip_level,
            "ratio": self.ratio,
            "image_hw": list(self.image_hw),
            "resize_hw": list(self.resize_hw),
            "padded_hw": list(self.padded_hw),
            "resize_ratio_hw": list(self.resize_ratio_hw),
            "grid_hw": list(self.grid_hw),
            "n_tiles": self.n_tiles,
            "token_grid_hw": list(self.token_grid_hw),
            "token_grid_with_newline_hw": list(self.token_grid_with_newline_hw),
            "n_tokens": self.n_tokens,
        }


def _overlapping(lo: float, hi: float, edges: Sequence[float]) -> list[int]:
    """Return indices i of intervals [edges[i], edges[i+1]) overlapping [lo, hi].

    See :meth:`DipLevel.tiles_covering` for the rule on zero-size boxes.
    """
    found = []
    for index in range(len(edges) - 1):
        start, stop = edges[index], edges[index + 1]
        if lo == hi:
            if start <= lo < stop:
                found.append(index)
        elif lo < stop and hi > start:
            found.append(index)
    if not found and lo == hi and lo == edges[-1]:
        found.append(len(edges) - 2)  # a point on the scene's far edge belongs to the last tile
    return found


@dataclass(frozen=True, kw_only=True)
class Thumbnail:
    """The global view: the whole scene resized to fit one tile, pasted top-left (spec §1.4).

    Attributes:
        ratio: scale ratio, ``min(tile / H, tile / W)``.
        image_hw: (H, W) of the scene at level 0.
        resize_hw: (h, w) of the resized scene inside the canvas; the long side is the tile side.
        tile_size_px: side of the square canvas.
        patch_size_px: vision-tower patch side (for the token count).
    """

    ratio: float
    image_hw: tuple[int, int]
    resize_hw: tuple[int, int]
    tile_size_px: int = TILE_SIZE_PX
    patch_size_px: int = PATCH_SIZE_PX

    @property
    def canvas_hw(self) -> tuple[int, int]:
        """(h, w) of the padded square canvas the vision tower encodes."""
        return self.tile_size_px, self.tile_size_px

    @property
    def tokens(self) -> int:
        """Tokens of the thumbnail: every patch, padding included, no pooling or newline (576)."""
        return (self.tile_size_px // self.patch_size_px) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Return the thumbnail as JSON-ready plain values."""
        return {
            "ratio": self.ratio,
            "resize_hw": list(self.resize_hw),
            "canvas_hw": list(self.canvas_hw),
            "tokens": self.tokens,
        }


@dataclass(frozen=True, kw_only=True)
class DipPlan:
    """The whole pyramid of one scene: thumbnail plus tiled levels, coarse to fine.

    Attributes:
        image_hw: (H, W) of the scene at level 0, in pixels.
        config: the config that produced the plan.
        thumbnail: the global view (dip_level 0).
        levels: tiled levels, coarse to fine; ``levels[i].dip_level == i + 1``.
    """

    image_hw: tuple[int, int]
    config: DipConfig = field(default_factory=DipConfig)
    thumbnail: Thumbnail
    levels: tuple[DipLevel, ...]

    def level(self, dip_level: int) -> DipLevel:
        """Return the tiled level with this number (1 = coarsest).

        Raises:
            GeometryError: no such level.
        """
        if not 1 <= dip_level <= len(self.levels):
            raise GeometryError(
                f"dip_level {dip_level} does not exist; this plan has levels 1..{len(self.levels)}"
            )
        return self.levels[dip_level - 1]

    @property
    def n_levels(self) -> int:
        """Number of tiled levels (the thumbnail not counted)."""
        return len(self.levels)

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as JSON-ready plain values."""
        return {
            "image_hw": list(self.image_hw),
            "config": self.config.to_dict(),
            "thumbnail": self.thumbnail.to_dict(),
            "levels": [level.to_dict() for level in self.levels],
        }


# -- the reference arithmetic (spec §1.2–1.4, §2.3) --------------------------------------------


def reference_ratios(height: int, width: int, *, config: DipConfig) -> list[float]:
    """Return the reference's scale ratios, descending; the last is the thumbnail's (spec §1.2).

    The float arithmetic is the reference's, step by step, so comparisons and ``set`` merges behave
    identically.
    """
    tile, base = config.tile_size_px, config.base_long_side_px
    min_scale = min(base / max(height, width), 1.0)
    ratios: list[float] = []
    scale = 1.0
    while scale >= min_scale:
        ratios.append(scale)
        scale /= 2
    if ratios[-1] > min_scale:
        ratios.append(min_scale)
    ratios.append(min(tile / height, tile / width))
    return sorted(set(ratios), reverse=True)


def resized_hw(height: int, width: int, ratio: float, *, tile_size_px: int) -> tuple[int, int]:
    """Return the level size (rh, rw) for a scale ratio: round, then fill-to-grid (spec §1.3).

    Sides that would round to 0 pixels (aspect ratios beyond ~670:1, where the reference divides by
    zero) are clamped to 1 pixel.
    """
    h_ = max(1, round(height * ratio))
    w_ = max(1, round(width * ratio))
    rows = math.ceil(h_ / tile_size_px)
    cols = math.ceil(w_ / tile_size_px)
    scale = min(rows * tile_size_px / h_, cols * tile_size_px / w_)
    return max(1, round(h_ * scale)), max(1, round(w_ * scale))


def unpadded_token_grid_hw(
    canvas_hw: tuple[int, int], basis_hw: tuple[int, int]
) -> tuple[int, int]:
    """Return (Ht, Wt) after trimming a token canvas's bottom rows or right columns (spec §2.3).

    The reference's ``unpad_image``: if the basis is wider than the canvas, keep
    ``int(bh * (cw / bw))`` rows, else ``int(bw * (ch / bh))`` columns (at least 1).

    Args:
        canvas_hw: (rows, cols) of the padded token canvas.
        basis_hw: (h, w) whose aspect ratio the content has (the scene or the resized level).
    """
    canvas_h, canvas_w = canvas_hw
    basis_h, basis_w = basis_hw
    if basis_w / basis_h > canvas_w / canvas_h:
        return max(1, int(basis_h * (canvas_w / basis_w))), canvas_w
    return canvas_h, max(1, int(basis_w * (canvas_h / basis_h)))


def _make_level(
    dip_level: int, ratio: float, image_hw: tuple[int, int], *, config: DipConfig
) -> DipLevel:
    height, width = image_hw
    resize = resized_hw(height, width, ratio, tile_size_px=config.tile_size_px)
    rows = math.ceil(resize[0] / config.tile_size_px)
    cols = math.ceil(resize[1] / config.tile_size_px)
    canvas = (rows * config.tokens_per_tile_side, cols * config.tokens_per_tile_side)
    # Parity: level 1 is unpadded against the scene's (W, H), finer levels against resize_hw.
    basis = image_hw if (config.rule is PyramidRule.PARITY and dip_level == 1) else resize
    return DipLevel(
        dip_level=dip_level,
        ratio=ratio,
        image_hw=image_hw,
        resize_hw=resize,
        token_grid_hw=unpadded_token_grid_hw(canvas, basis),
        tile_size_px=config.tile_size_px,
        tokens_per_tile_side=config.tokens_per_tile_side,
    )


def reencoded_level(level: DipLevel) -> DipLevel:
    """Return a level as the reference sees it when it re-encodes it as its own next level.

    With one tiled level the reference's pass 2 re-selects tiles of that same level, and it unpads
    the pass-2 token canvas against the level's ``resize_hw`` (spec §5.1 ``unpad(C, M,
    levels[nxt].resize_hw)``), while pass 1 unpadded it against the scene's ``(W, H)`` under the
    ``parity`` rule (spec §2.3). The two grids differ by one row or column for some sizes (a
    343 x 358 scene: 24 x 22 tokens in pass 1, 24 x 23 in pass 2). Under the ``default`` rule the
    level is already unpadded against ``resize_hw`` and comes back equal.

    Args:
        level: the single tiled level.

    Returns:
        The same level with ``token_grid_hw`` unpadded against its ``resize_hw``.
    """
    rows, cols = level.grid_hw
    side = level.tokens_per_tile_side
    grid = unpadded_token_grid_hw((rows * side, cols * side), level.resize_hw)
    return dataclasses.replace(level, token_grid_hw=grid)


def _drop_near_duplicates(sizes: list[int], *, min_ratio: float) -> list[int]:
    """Return the indices (coarse to fine) the default rule keeps, given each level's long side."""
    last = len(sizes) - 1
    kept = [0]
    for index in range(1, last):
        size = sizes[index]
        apart_below = size / sizes[kept[-1]]
        apart_above = sizes[last] / size
        if apart_below >= min_ratio and apart_above >= min_ratio and size != sizes[kept[-1]]:
            kept.append(index)
    if last > 0:
        kept.append(last)
    return kept


def plan_pyramid(width: int, height: int, *, config: DipConfig | None = None) -> DipPlan:
    """Return the DIP of a ``width x height`` scene: thumbnail and tiled levels, coarse to fine.

    Args:
        width: scene width W in level-0 pixels.
        height: scene height H in level-0 pixels.
        config: sizes and level rule; ``DipConfig()`` (the ``default`` rule) when omitted.

    Returns:
        The plan. Under ``parity`` its levels are the reference's ``scale_infos`` (spec §1.5);
        under ``default`` near-duplicate levels are dropped.

    Raises:
        GeometryError: width or height is not a positive integer.
    """
    config = DipConfig() if config is None else config
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise GeometryError(f"image {name}={value!r} must be a positive integer (pixels)")
    image_hw = (int(height), int(width))
    ratios = reference_ratios(image_hw[0], image_hw[1], config=config)
    thumb_ratio = ratios[-1]
    # Coarse -> fine. A scene whose long side equals the tile side has one ratio only; the reference
    # then fails ("no enough elements"); we give it one tiled level at ratio 1.
    tiled_ratios = list(reversed(ratios[:-1])) or [1.0]
    thumb_hw = resized_hw(image_hw[0], image_hw[1], thumb_ratio, tile_size_px=config.tile_size_px)
    thumbnail = Thumbnail(
        ratio=thumb_ratio,
        image_hw=image_hw,
        resize_hw=thumb_hw,
        tile_size_px=config.tile_size_px,
        patch_size_px=config.patch_size_px,
    )
    if config.rule is PyramidRule.DEFAULT and len(tiled_ratios) > 2:
        sizes = [
            max(resized_hw(image_hw[0], image_hw[1], r, tile_size_px=config.tile_size_px))
            for r in tiled_ratios
        ]
        keep = _drop_near_duplicates(sizes, min_ratio=config.min_level_ratio)
        tiled_ratios = [tiled_ratios[i] for i in keep]
    levels = tuple(
        _make_level(index + 1, ratio, image_hw, config=config)
        for index, ratio in enumerate(tiled_ratios)
    )
    return DipPlan(image_hw=image_hw, config=config, thumbnail=thumbnail, levels=levels)


# -- token -> tile maps between levels (spec §5.2) ---------------------------------------------


def _outside_grid(tokens: IntArray, rows_n: int, cols_n: int) -> bool:
    """Whether any int (n, 2) (row, col) lies outside a ``rows_n`` x ``cols_n`` grid."""
    return bool(
        tokens.size
        and (
            tokens[:, 0].min() < 0
            or tokens[:, 0].max() >= rows_n
            or tokens[:, 1].min() < 0
            or tokens[:, 1].max() >= cols_n
        )
    )


def _as_token_rc(token_rc: npt.ArrayLike) -> IntArray:
    array = np.asarray(token_rc)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, 2)
    if array.ndim != 2 or array.shape[1] != 2:
        raise GeometryError(f"token_rc has shape {array.shape}; expected (n, 2) (row, col) pairs")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise GeometryError(f"token_rc has dtype {array.dtype}; expected integer (row, col)")
    return array.astype(np.int64, copy=False)


def map_tokens_to_next_level_parity(
    token_rc: npt.ArrayLike, level: DipLevel, next_level: DipLevel
) -> IntArray:
    """Map tokens of a level to tiles of the next level with the reference's index arithmetic.

    Spec §5.2 (``get_next_level_fea``): ``(floor(r * (hb / Ht)), floor(c * (wb / (Wt + 1))))``
    where ``(Ht, Wt + 1)`` is the current token grid *including* the newline column and ``(hb, wb)``
    the next level's padded tile grid. The products are computed in float32 as torch computes
    ``long_tensor * python_float``. Because the newline column ``Wt`` maps to ``wb - 1``, including
    newline tokens always selects the whole right-most tile column.

    Args:
        token_rc: int (n, 2) token (row, col) in ``level``'s grid; col may be ``Wt`` (newline).
        level: the level the tokens belong to.
        next_level: the level whose tiles are selected (may be ``level`` itself).

    Returns:
        int64 (n, 2) tile (row, col) in ``next_level``'s grid, one per token (duplicates kept).

    Raises:
        GeometryError: a token lies outside ``(Ht, Wt + 1)``.
    """
    tokens = _as_token_rc(token_rc)
    rows_n, cols_n = level.token_grid_with_newline_hw
    if _outside_grid(tokens, rows_n, cols_n):
        raise GeometryError(
            f"token_rc outside the {rows_n} x {cols_n} token grid (newline included) of "
            f"dip_level {level.dip_level}"
        )
    tiles_h, tiles_w = next_level.grid_hw
    scale_h = np.float32(tiles_h / rows_n)
    scale_w = np.float32(tiles_w / cols_n)
    rows = np.floor(tokens[:, 0].astype(np.float32) * scale_h).astype(np.int64)
    cols = np.floor(tokens[:, 1].astype(np.float32) * scale_w).astype(np.int64)
    return np.stack([rows, cols], axis=1)


def map_tokens_to_tiles(token_rc: npt.ArrayLike, level: DipLevel, next_level: DipLevel) -> IntArray:
    """Map tokens of a level to the tiles of another level that hold their footprint centres.

    Ours (spec §11.6): a token's footprint centre, in normalised scene coordinates, is located in
    ``next_level``'s resized image and the tile containing it is returned. Newline tokens have no
    footprint and are rejected.

    Args:
        token_rc: int (n, 2) token (row, col) in ``level``'s unpadded grid (newline excluded).
        level: the level the tokens belong to.
        next_level: the level whose tiles are wanted (any level of the same scene, itself included).

    Returns:
        int64 (n, 2) tile (row, col) in ``next_level``'s grid, always inside that grid.

    Raises:
        GeometryError: a token lies outside ``(Ht, Wt)`` (a newline token included), or the levels
            belong to scenes of different sizes.
    """
    if level.image_hw != next_level.image_hw:
        raise GeometryError(
            f"levels of different scenes: image_hw {level.image_hw} vs {next_level.image_hw}"
        )
    tokens = _as_token_rc(token_rc)
    rows_n, cols_n = level.token_grid_hw
    if _outside_grid(tokens, rows_n, cols_n):
        raise GeometryError(
            f"token_rc outside the unpadded {rows_n} x {cols_n} token grid of dip_level "
            f"{level.dip_level}; newline tokens (col {cols_n}) have no footprint"
        )
    side = level.token_size_px
    centre_v = (tokens[:, 0] + 0.5) * side / level.resize_hw[0]  # normalised [0, 1] rows
    centre_u = (tokens[:, 1] + 0.5) * side / level.resize_hw[1]  # normalised [0, 1] cols
    tiles_h, tiles_w = next_level.grid_hw
    tile_side = next_level.tile_size_px
    rows = np.floor(centre_v * next_level.resize_hw[0] / tile_side).astype(np.int64)
    cols = np.floor(centre_u * next_level.resize_hw[1] / tile_side).astype(np.int64)
    return np.stack([np.clip(rows, 0, tiles_h - 1), np.clip(cols, 0, tiles_w - 1)], axis=1)
