"""Pixels of DIP tiles and of the thumbnail, read lazily from a scene's Zarr pyramid.

Only the tiles asked for are read. Two resamplers (:class:`Resampler`):

* ``antialiased`` (default): each tile's in-scene part is read as a level-0 region at the tile's
  output size with :meth:`lrs_core.pyramid.Pyramid.read_region`, which picks the coarsest stored
  level with enough resolution and resamples with an area (box) filter when shrinking, bicubic when
  enlarging.
* ``parity``: the reference's ``F.interpolate(mode='bilinear', align_corners=False)`` without
  antialias, computed from level-0 pixels (spec §1.1, §11.8). Sample positions, indices and weights
  follow PyTorch's CPU kernel in float32, and only the level-0 rows and columns those samples touch
  are read, so a tile equals the matching crop of the whole-image resize (up to float rounding, then
  rounding to uint8) without ever holding the whole scene.

Padding: tiles are anchored top-left, and the area beyond the level's ``resize_hw`` (bottom rows,
right columns) is padding. The reference pads with exactly 0 *after* normalisation, i.e. the
model's image mean. uint8 output fills it with ``pad_rgb``, by default the uint8 colour closest to
the model's mean (:func:`mean_rgb_uint8`; the engine passes its own model's ``image_mean``, CLIP's
gives (123, 117, 104)), within half a grey level of exact. float32 output (``dtype="float32"``, the
``parity`` preset) keeps the resampler's unrounded values and marks padding NaN, which
:meth:`lrs_core.models.vlm.VisionLanguageModel.preprocess_tiles` turns into exactly 0 after
normalisation, as the reference. Invalid (nodata) pixels of the store read as 0 under ``parity``
(what a decoder gives the reference) and as ``pad_rgb`` under ``antialiased``.

Output arrays are ``(n, S, S, 3)`` RGB in 0..255, ``S`` the tile side, rows first (image layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from rasterio.windows import Window

from lrs_core.dip.plan import DipLevel, Thumbnail
from lrs_core.errors import ConfigError, GeometryError
from lrs_core.models.config import CLIP_IMAGE_MEAN
from lrs_core.records import BBoxPx

#: Level-0 rows read at once by the parity resampler (bounds memory to rows x columns x 3 bytes).
PARITY_BAND_ROWS = 512
#: Channels of an RGB image.
RGB_CHANNELS = 3

UInt8Array = npt.NDArray[np.uint8]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Element types the readers return: ``uint8`` (rounded) or ``float32`` (NaN = padding).
PixelDtype = Literal["uint8", "float32"]
#: Largest 8-bit channel value.
CHANNEL_MAX = 255


def mean_rgb_uint8(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """Return the uint8 RGB colour closest to a model's per-channel ``image_mean`` (in [0, 1]).

    It is the padding colour that becomes (nearly) 0 after the model's normalisation, which is how
    the reference pads (spec §1.1).
    """
    values = [round(CHANNEL_MAX * float(v)) for v in image_mean]
    if len(values) != RGB_CHANNELS or not all(0 <= v <= CHANNEL_MAX for v in values):
        raise ConfigError(f"image_mean={tuple(image_mean)!r} must be three values in [0, 1]")
    return values[0], values[1], values[2]


#: The padding colour of CLIP models (123, 117, 104), the default when no model's mean is given.
CLIP_MEAN_RGB_UINT8: tuple[int, int, int] = mean_rgb_uint8(CLIP_IMAGE_MEAN)


class Resampler(Enum):
    """How tile pixels are resampled from the scene.

    Attributes:
        ANTIALIASED: area-averaged from the coarsest sufficient store level (ours, default).
        PARITY: bilinear without antialias from level 0, as the reference (spec §1.1).
    """

    ANTIALIASED = "antialiased"
    PARITY = "parity"


class PyramidReader(Protocol):
    """What the tile reader needs of a scene store (:class:`lrs_core.pyramid.Pyramid` has it)."""

    @property
    def size_wh(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        ...

    def read_region(
        self, bounds_px: BBoxPx, *, out_hw: tuple[int, int], fill_rgb: tuple[int, int, int]
    ) -> np.ndarray:
        """uint8 (out_h, out_w, 3): a level-0 pixel region resampled (antialiased) to ``out_hw``."""
        ...

    def read_window(self, store_level: int, window: Window) -> np.ndarray:
        """uint8 (h, w, 3): an integer window of one store level."""
        ...


def _check_pad(pad_rgb: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(pad_rgb)
    if len(values) != RGB_CHANNELS or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    ):
        raise ConfigError(f"pad_rgb={pad_rgb!r} must be three integers in 0..255 (R, G, B)")
    return int(values[0]), int(values[1]), int(values[2])


def _check_scene(pyramid: PyramidReader, image_hw: tuple[int, int]) -> None:
    width, height = pyramid.size_wh
    if (height, width) != image_hw:
        raise GeometryError(
            f"the plan is for a {image_hw[1]} x {image_hw[0]} px scene but the store holds "
            f"{width} x {height} px; plan the pyramid with the store's size_wh"
        )


def _resampler(value: Resampler | str) -> Resampler:
    try:
        return Resampler(value)
    except ValueError as err:
        allowed = ", ".join(r.value for r in Resampler)
        raise ConfigError(f"resampler {value!r} is not one of: {allowed}") from err


# -- the parity resampler (PyTorch's bilinear, align_corners=False, no antialias) ----------------


def _linear_taps(
    out_start: int, out_stop: int, *, in_size: int, out_size: int
) -> tuple[IntArray, IntArray, Float32Array, Float32Array]:
    """Return source indices and weights of output samples ``out_start..out_stop-1`` along one axis.

    The formula of PyTorch's ``upsample_bilinear2d`` CPU kernel in float32 (``opmath_t``):
    ``scale = in / out``, ``src = max(scale * (dst + 0.5) - 0.5, 0)``, ``i0 = min(floor(src),
    in - 1)``, ``i1 = i0 + (i0 < in - 1)``, ``w1 = clamp(src - i0, 0, 1)``, ``w0 = 1 - w1``.

    Returns:
        (i0, i1) int64 (n,) and (w0, w1) float32 (n,).
    """
    scale = np.float32(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(out_start, out_stop, dtype=np.int64).astype(np.float64)
    # A fused multiply-add in float32, as PyTorch's compiled kernel does: the float64 product and
    # difference are exact here (24-bit x 24-bit mantissas), so one rounding to float32 follows.
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.where(src < 0, np.float32(0), src).astype(np.float32)
    index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    weight1 = np.clip(src - index0.astype(np.float32), 0, 1).astype(np.float32)
    weight0 = (np.float32(1) - weight1).astype(np.float32)
    index1 = index0 + (index0 < in_size - 1)
    return index0, index1, weight0, weight1


def _gather_level0(
    pyramid: PyramidReader, rows: IntArray, cols: IntArray, *, band_rows: int
) -> UInt8Array:
    """Return uint8 (len(rows), len(cols), 3): level-0 pixels at sorted unique rows x cols.

    Reads row bands of at most ``band_rows`` rows spanning only the needed columns, so memory stays
    at ``band_rows x (cols span) x 3`` bytes whatever the scene size.
    """
    out = np.empty((rows.size, cols.size, RGB_CHANNELS), dtype=np.uint8)
    col_lo, col_hi = int(cols[0]), int(cols[-1]) + 1
    local_cols = cols - col_lo
    start = 0
    while start < rows.size:
        band_lo = int(rows[start])
        band_hi = band_lo + band_rows
        stop = int(np.searchsorted(rows, band_hi, side="left"))
        band_hi = int(rows[stop - 1]) + 1
        window = Window(
            col_off=col_lo, row_off=band_lo, width=col_hi - col_lo, height=band_hi - band_lo
        )
        band = np.asarray(pyramid.read_window(0, window))
        out[start:stop] = band[rows[start:stop] - band_lo][:, local_cols]
        start = stop
    return out


def resample_parity(
    pyramid: PyramidReader,
    *,
    resize_hw: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
    band_rows: int = PARITY_BAND_ROWS,
) -> Float32Array:
    """Return part of the scene's bilinear resize to ``resize_hw``, as the reference computes it.

    Equals ``F.interpolate(scene, size=resize_hw, mode='bilinear', align_corners=False)`` cropped to
    ``[rows[0]:rows[1], cols[0]:cols[1]]`` (values 0..255), reading only the level-0 rows and
    columns the samples touch.

    Args:
        pyramid: the scene store.
        resize_hw: (h, w) of the whole resized scene.
        rows: [start, stop) output rows of the resized scene, inside it.
        cols: [start, stop) output columns of the resized scene, inside it.
        band_rows: level-0 rows read at once.

    Returns:
        float32 (rows[1] - rows[0], cols[1] - cols[0], 3) RGB in 0..255.
    """
    width, height = pyramid.size_wh
    out_h, out_w = resize_hw
    if not (0 <= rows[0] < rows[1] <= out_h and 0 <= cols[0] < cols[1] <= out_w):
        raise GeometryError(
            f"rows {rows} / cols {cols} are empty or outside the resized scene {resize_hw}"
        )
    r0, r1, wr0, wr1 = _linear_taps(rows[0], rows[1], in_size=height, out_size=out_h)
    c0, c1, wc0, wc1 = _linear_taps(cols[0], cols[1], in_size=width, out_size=out_w)
    need_rows = np.unique(np.concatenate([r0, r1]))
    need_cols = np.unique(np.concatenate([c0, c1]))
    pixels = _gather_level0(pyramid, need_rows, need_cols, band_rows=band_rows).astype(np.float32)
    pr0, pr1 = np.searchsorted(need_rows, r0), np.searchsorted(need_rows, r1)
    pc0, pc1 = np.searchsorted(need_cols, c0), np.searchsorted(need_cols, c1)
    wc0_, wc1_ = wc0[None, :, None], wc1[None, :, None]
    # Width inner, height outer, ``t0 * w0 + t1 * w1`` with the first product fused: the order and
    # rounding of PyTorch's compiled generic kernel (bit-exact on x86-64 builds we measured).
    top = _fused(pixels[pr0][:, pc0], wc0_, pixels[pr0][:, pc1] * wc1_)
    bottom = _fused(pixels[pr1][:, pc0], wc0_, pixels[pr1][:, pc1] * wc1_)
    return _fused(top, wr0[:, None, None], bottom * wr1[:, None, None])


def _fused(a: Float32Array, b: Float32Array, c: Float32Array) -> Float32Array:
    """Return float32 ``a * b + c`` rounded once (a float32 fused multiply-add).

    float32 x float32 is exact in float64; the float64 sum can round once more before the cast
    (when ``a * b`` carries more than 53 significant bits past ``c``'s scale), which changes the
    float32 result only in rare ties.
    """
    return (a.astype(np.float64) * b + c).astype(np.float32)


def _to_uint8(values: Float32Array) -> UInt8Array:
    return np.clip(np.rint(values), 0, CHANNEL_MAX).astype(np.uint8)


def _as_float(dtype: str) -> bool:
    if dtype not in ("uint8", "float32"):
        raise ConfigError(f"dtype={dtype!r} is not one of ('uint8', 'float32')")
    return dtype == "float32"


def _canvas(shape: tuple[int, ...], pad: tuple[int, int, int], *, as_float: bool) -> np.ndarray:
    """An output array filled with the padding: ``pad`` (uint8) or NaN (float32)."""
    if as_float:
        return np.full(shape, np.nan, dtype=np.float32)
    out = np.empty(shape, dtype=np.uint8)
    out[...] = np.asarray(pad, dtype=np.uint8)
    return out


# -- public API --------------------------------------------------------------------------------


def read_tiles(
    pyramid: PyramidReader,
    level: DipLevel,
    tiles_rc: Sequence[tuple[int, int]],
    *,
    resampler: Resampler | str = Resampler.ANTIALIASED,
    pad_rgb: tuple[int, int, int] = CLIP_MEAN_RGB_UINT8,
    dtype: PixelDtype = "uint8",
) -> npt.NDArray[Any]:
    """Read the pixels of some tiles of one DIP level.

    Args:
        pyramid: the scene store (:func:`lrs_core.pyramid.open_pyramid`).
        level: the DIP level the tiles belong to; planned for this scene's size.
        tiles_rc: (row, col) tile indices in ``level``'s grid, in output order.
        resampler: :class:`Resampler` (or its value).
        pad_rgb: colour of the padded area beyond the level's ``resize_hw`` (uint8 output; pass
            :func:`mean_rgb_uint8` of the model's ``image_mean``).
        dtype: ``uint8`` (rounded) or ``float32`` (the resampler's values unrounded, NaN padding).

    Returns:
        (n, S, S, 3) RGB in 0..255 of ``dtype``, S = ``level.tile_size_px``; the tile's in-scene
        part at the top-left, ``pad_rgb`` (uint8) or NaN (float32) elsewhere.

    Raises:
        GeometryError: the level is for another scene size, or a tile is outside its grid.
        ConfigError: bad ``resampler``, ``pad_rgb`` or ``dtype``.
    """
    method = _resampler(resampler)
    pad = _check_pad(pad_rgb)
    as_float = _as_float(dtype)
    _check_scene(pyramid, level.image_hw)
    side = level.tile_size_px
    out = _canvas((len(tiles_rc), side, side, RGB_CHANNELS), pad, as_float=as_float)
    for index, tile_rc in enumerate(tiles_rc):
        content_h, content_w = level.tile_content_hw(tile_rc)
        if method is Resampler.ANTIALIASED:
            pixels = pyramid.read_region(
                level.tile_bbox_px(tile_rc), out_hw=(content_h, content_w), fill_rgb=pad
            )
        else:
            row0, col0 = int(tile_rc[0]) * side, int(tile_rc[1]) * side
            values = resample_parity(
                pyramid,
                resize_hw=level.resize_hw,
                rows=(row0, row0 + content_h),
                cols=(col0, col0 + content_w),
            )
            pixels = np.clip(values, 0, CHANNEL_MAX) if as_float else _to_uint8(values)
        out[index, :content_h, :content_w] = pixels
    return out


def read_thumbnail(
    pyramid: PyramidReader,
    thumb: Thumbnail,
    *,
    resampler: Resampler | str = Resampler.ANTIALIASED,
    pad_rgb: tuple[int, int, int] = CLIP_MEAN_RGB_UINT8,
    dtype: PixelDtype = "uint8",
) -> npt.NDArray[Any]:
    """Read the thumbnail: the whole scene at ``thumb.resize_hw``, pasted top-left (spec §1.4).

    Under ``parity`` every level-0 row band the samples touch is read once (memory stays bounded,
    but the read is proportional to the scene, as in the reference).

    Args:
        pyramid: the scene store.
        thumb: the plan's thumbnail.
        resampler: :class:`Resampler` (or its value).
        pad_rgb: colour of the canvas beyond ``thumb.resize_hw`` (uint8 output).
        dtype: ``uint8`` or ``float32`` (unrounded, NaN padding), as in :func:`read_tiles`.

    Returns:
        (S, S, 3) RGB in 0..255 of ``dtype``.

    Raises:
        GeometryError: the thumbnail is for another scene size.
        ConfigError: bad ``resampler``, ``pad_rgb`` or ``dtype``.
    """
    method = _resampler(resampler)
    pad = _check_pad(pad_rgb)
    as_float = _as_float(dtype)
    _check_scene(pyramid, thumb.image_hw)
    canvas_h, canvas_w = thumb.canvas_hw
    out = _canvas((canvas_h, canvas_w, RGB_CHANNELS), pad, as_float=as_float)
    height, width = thumb.image_hw
    thumb_h, thumb_w = thumb.resize_hw
    if method is Resampler.ANTIALIASED:
        bounds = (0.0, 0.0, float(width), float(height))
        pixels = pyramid.read_region(bounds, out_hw=(thumb_h, thumb_w), fill_rgb=pad)
    else:
        values = resample_parity(
            pyramid, resize_hw=thumb.resize_hw, rows=(0, thumb_h), cols=(0, thumb_w)
        )
        pixels = np.clip(values, 0, CHANNEL_MAX) if as_float else _to_uint8(values)
    out[:thumb_h, :thumb_w] = pixels
    return out


def level0_span_px(level: DipLevel, tile_rc: tuple[int, int]) -> tuple[int, int, int, int]:
    """Return the integer level-0 pixel span (x0, y0, x1, y1) a tile's pixels can depend on.

    The tile's in-scene box widened to whole pixels plus a 1-px margin for the bilinear taps,
    clipped to the scene; useful for checking that a read stayed local.
    """
    x0, y0, x1, y1 = level.tile_bbox_px(tile_rc)
    height, width = level.image_hw
    return (
        max(0, math.floor(x0) - 1),
        max(0, math.floor(y0) - 1),
        min(width, math.ceil(x1) + 1),
        min(height, math.ceil(y1) + 1),
    )
