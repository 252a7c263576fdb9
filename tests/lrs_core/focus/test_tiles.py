"""Tests of the DIP tile reader: parity against torch's resize, antialiased reads, locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rasterio.windows import Window

from lrs_core.dip.plan import DipConfig, DipLevel, plan_pyramid
from lrs_core.errors import ConfigError, GeometryError
from lrs_core.focus.tiles import (
    CLIP_MEAN_RGB_UINT8,
    Resampler,
    level0_span_px,
    read_thumbnail,
    read_tiles,
    resample_parity,
)
from lrs_core.raster.pyramid import open_pyramid
from tests.fixtures.scenes import SCENE_HEIGHT_PX, SCENE_WIDTH_PX, make_rgb_pattern

#: A DIP with 28-px tiles so a 150 x 97 px image has several levels and many tiles.
SMALL = DipConfig(tile_size_px=28, patch_size_px=14, tokens_per_tile_side=2, base_long_side_px=84)
#: 112-px tiles on the 1000 x 700 store: levels that shrink (coarse) and one that enlarges.
MEDIUM = DipConfig(
    tile_size_px=112, patch_size_px=14, tokens_per_tile_side=4, base_long_side_px=336
)
PAD = (7, 200, 31)


class ArrayPyramid:
    """A test double of :class:`lrs_core.raster.pyramid.Pyramid` over one uint8 (H, W, 3) array."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.size_wh = (pixels.shape[1], pixels.shape[0])
        self.windows: list[Window] = []
        self.regions: list[tuple[tuple[float, ...], tuple[int, int]]] = []

    def read_window(self, store_level: int, window: Window) -> np.ndarray:
        assert store_level == 0
        self.windows.append(window)
        rows, cols = window.toslices()
        assert rows.start >= 0 and cols.start >= 0
        assert rows.stop <= self.pixels.shape[0] and cols.stop <= self.pixels.shape[1]
        return self.pixels[rows, cols]

    def read_region(self, bounds_px, *, out_hw, fill_rgb):
        self.regions.append((tuple(bounds_px), tuple(out_hw)))
        image = Image.fromarray(self.pixels, mode="RGB")
        return np.asarray(
            image.resize((out_hw[1], out_hw[0]), resample=Image.Resampling.BOX, box=bounds_px)
        )


class RecordingPyramid:
    """Wraps a real pyramid and records every read."""

    def __init__(self, pyramid) -> None:
        self.inner = pyramid
        self.size_wh = pyramid.size_wh
        self.windows: list[tuple[int, Window]] = []
        self.regions: list[tuple[float, ...]] = []

    def read_window(self, store_level, window):
        self.windows.append((store_level, window))
        return self.inner.read_window(store_level, window)

    def read_region(self, bounds_px, *, out_hw, fill_rgb):
        self.regions.append(tuple(bounds_px))
        return self.inner.read_region(bounds_px, out_hw=out_hw, fill_rgb=fill_rgb)


def torch_resize(pixels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """The reference: F.interpolate of the whole image, bilinear, align_corners=False (float)."""
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().contiguous()
    out = F.interpolate(tensor, size=size_hw, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def stitch(tiles: np.ndarray, level: DipLevel) -> np.ndarray:
    """Lay a full row-major tile read out as the padded level canvas (h, w, 3)."""
    rows, cols = level.grid_hw
    side = level.tile_size_px
    return (
        tiles.reshape(rows, cols, side, side, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(rows * side, cols * side, 3)
    )


def all_tiles(level: DipLevel) -> list[tuple[int, int]]:
    return [(r, c) for r in range(level.grid_hw[0]) for c in range(level.grid_hw[1])]


@pytest.fixture(scope="module")
def scene_pixels() -> np.ndarray:
    """The canonical scene's pixels (what the ingested store holds at level 0), (700, 1000, 3)."""
    return np.ascontiguousarray(
        make_rgb_pattern(SCENE_HEIGHT_PX, SCENE_WIDTH_PX).transpose(1, 2, 0)
    )


def test_clip_mean_pad_colour():
    assert CLIP_MEAN_RGB_UINT8 == (123, 117, 104)


# -- parity: equal to crops of the whole-image torch resize --------------------------------------


@pytest.mark.parametrize("size_wh", [(150, 97), (97, 150), (61, 61), (250, 250)])
def test_parity_tiles_equal_crops_of_the_whole_image_resize(size_wh):
    width, height = size_wh
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pyramid = ArrayPyramid(pixels)
    plan = plan_pyramid(width, height, config=DipConfig.preset("parity", **_small()))
    assert plan.n_levels >= (1 if width < SMALL.base_long_side_px else 2)
    for level in plan.levels:
        expected = torch_resize(pixels, level.resize_hw)
        rh, rw = level.resize_hw
        floats = resample_parity(pyramid, resize_hw=level.resize_hw, rows=(0, rh), cols=(0, rw))
        np.testing.assert_allclose(floats, expected, rtol=0, atol=1e-3)
        canvas = stitch(
            read_tiles(pyramid, level, all_tiles(level), resampler="parity", pad_rgb=PAD), level
        )
        diff = np.abs(canvas[:rh, :rw].astype(int) - np.rint(expected).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        assert (canvas[rh:] == PAD).all() and (canvas[:, rw:] == PAD).all()


def _small() -> dict[str, int]:
    return {
        "tile_size_px": SMALL.tile_size_px,
        "patch_size_px": SMALL.patch_size_px,
        "tokens_per_tile_side": SMALL.tokens_per_tile_side,
        "base_long_side_px": SMALL.base_long_side_px,
    }


def test_parity_on_the_real_store_matches_torch_bit_for_bit_where_the_kernel_is_generic(
    ingested_store, scene_pixels
):
    # Standard 336-px DIP of the 1000 x 700 scene: one enlarged level (706 x 1008) and a shrunk
    # thumbnail (235 x 336); both are large enough for torch's generic kernel, which we emulate.
    pyramid = open_pyramid(ingested_store)
    plan = plan_pyramid(*pyramid.size_wh, config=DipConfig.preset("parity"))
    (level,) = plan.levels
    assert level.resize_hw == (706, 1008)
    expected = torch_resize(scene_pixels, level.resize_hw)
    floats = resample_parity(pyramid, resize_hw=level.resize_hw, rows=(0, 706), cols=(0, 1008))
    np.testing.assert_allclose(floats, expected, rtol=0, atol=1e-3)
    measured_exact = float((floats == expected).mean())
    assert measured_exact > 0.99  # 1.0 on x86-64 torch builds (fused multiply-adds emulated)
    tiles = read_tiles(pyramid, level, [(2, 1), (0, 2)], resampler=Resampler.PARITY, pad_rgb=PAD)
    np.testing.assert_array_equal(tiles[1], _to_uint8(expected[0:336, 672:1008]))
    assert (tiles[0][706 - 672 :] == PAD).all()
    np.testing.assert_array_equal(tiles[0][: 706 - 672], _to_uint8(expected[672:706, 336:672]))
    thumb = read_thumbnail(pyramid, plan.thumbnail, resampler="parity", pad_rgb=PAD)
    assert thumb.shape == (336, 336, 3) and plan.thumbnail.resize_hw == (235, 336)
    np.testing.assert_array_equal(thumb[:235], _to_uint8(torch_resize(scene_pixels, (235, 336))))
    assert (thumb[235:] == PAD).all()


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def test_parity_reads_only_the_rows_and_columns_a_tile_needs(ingested_store):
    pyramid = RecordingPyramid(open_pyramid(ingested_store))
    plan = plan_pyramid(*pyramid.size_wh, config=DipConfig.preset("parity", **_medium()))
    for level in plan.levels:
        for tile_rc in [(0, 0), (level.grid_hw[0] - 1, level.grid_hw[1] - 1)]:
            pyramid.windows.clear()
            read_tiles(pyramid, level, [tile_rc], resampler="parity")
            x0, y0, x1, y1 = level0_span_px(level, tile_rc)
            assert pyramid.windows
            for store_level, window in pyramid.windows:
                assert store_level == 0
                assert window.col_off >= x0 and window.col_off + window.width <= x1
                assert window.row_off >= y0 and window.row_off + window.height <= y1


def test_parity_bands_do_not_change_the_result(scene_pixels):
    pyramid = ArrayPyramid(scene_pixels)
    whole = resample_parity(
        pyramid, resize_hw=(300, 420), rows=(17, 250), cols=(5, 400), band_rows=700
    )
    assert len(pyramid.windows) == 1
    banded = resample_parity(
        pyramid, resize_hw=(300, 420), rows=(17, 250), cols=(5, 400), band_rows=9
    )
    assert len(pyramid.windows) > 10
    np.testing.assert_array_equal(whole, banded)
    np.testing.assert_allclose(
        whole, torch_resize(scene_pixels, (300, 420))[17:250, 5:400], atol=1e-3
    )


# -- antialiased ---------------------------------------------------------------------------------


def _medium() -> dict[str, int]:
    return {
        "tile_size_px": MEDIUM.tile_size_px,
        "patch_size_px": MEDIUM.patch_size_px,
        "tokens_per_tile_side": MEDIUM.tokens_per_tile_side,
        "base_long_side_px": MEDIUM.base_long_side_px,
    }


def test_antialiased_tiles_match_an_area_average_of_the_whole_scene(ingested_store, scene_pixels):
    pyramid = RecordingPyramid(open_pyramid(ingested_store))
    plan = plan_pyramid(*pyramid.size_wh, config=DipConfig.preset("default", **_medium()))
    image = Image.fromarray(scene_pixels, mode="RGB")
    shrinking = 0
    for level in plan.levels:
        rh, rw = level.resize_hw
        pyramid.regions.clear()
        tiles = read_tiles(pyramid, level, all_tiles(level), pad_rgb=PAD)
        assert tiles.dtype == np.uint8 and tiles.shape == (level.n_tiles, 112, 112, 3)
        # one region per tile, exactly the tile's in-scene box
        assert pyramid.regions == [level.tile_bbox_px(t) for t in all_tiles(level)]
        canvas = stitch(tiles, level)
        assert (canvas[rh:] == PAD).all() and (canvas[:, rw:] == PAD).all()
        if rh < SCENE_HEIGHT_PX:
            # Shrinking: close to an area average of level 0 (the store's coarser levels are
            # rounded 2x2 averages, so not equal), and closer than point-sampling parity is.
            shrinking += 1
            reference = np.asarray(image.resize((rw, rh), resample=Image.Resampling.BOX))
            parity = stitch(read_tiles(pyramid, level, all_tiles(level), resampler="parity"), level)
            diff = np.abs(canvas[:rh, :rw].astype(int) - reference.astype(int)).mean()
            diff_parity = np.abs(parity[:rh, :rw].astype(int) - reference.astype(int)).mean()
            assert diff < 3.5 and diff < 0.7 * diff_parity
    assert shrinking >= 2


def test_antialiased_is_smoother_than_parity_when_shrinking_a_lot():
    # a 1-px checkerboard shrunk 7x: area averaging gives flat grey, point sampling aliases
    board = (np.indices((700, 700)).sum(axis=0) % 2 * 255).astype(np.uint8)
    pixels = np.repeat(board[..., None], 3, axis=2)
    pyramid = ArrayPyramid(pixels)
    config = DipConfig.preset("parity", **_small())
    thumb = plan_pyramid(700, 700, config=config).thumbnail  # 28 x 28 from 700 x 700
    smooth = read_thumbnail(pyramid, thumb, resampler="antialiased").astype(float)
    aliased = read_thumbnail(pyramid, thumb, resampler="parity").astype(float)
    assert smooth.std() < 2 and aliased.std() > 20


def test_thumbnail_antialiased_on_the_real_store(ingested_store, scene_pixels):
    pyramid = open_pyramid(ingested_store)
    plan = plan_pyramid(*pyramid.size_wh)
    thumb = read_thumbnail(pyramid, plan.thumbnail)
    assert thumb.shape == (336, 336, 3)
    assert (thumb[235:] == CLIP_MEAN_RGB_UINT8).all()
    reference = np.asarray(
        Image.fromarray(scene_pixels, mode="RGB").resize((336, 235), resample=Image.Resampling.BOX)
    )
    assert np.abs(thumb[:235].astype(int) - reference.astype(int)).mean() < 3.5


# -- errors and edge cases -----------------------------------------------------------------------


def test_empty_selection_reads_nothing(scene_pixels):
    pyramid = ArrayPyramid(scene_pixels)
    level = plan_pyramid(1000, 700).levels[0]
    out = read_tiles(pyramid, level, [])
    assert out.shape == (0, 336, 336, 3) and out.dtype == np.uint8
    assert not pyramid.windows and not pyramid.regions


def test_errors(scene_pixels):
    pyramid = ArrayPyramid(scene_pixels)
    other = plan_pyramid(1001, 700)
    with pytest.raises(GeometryError, match="1001 x 700"):
        read_tiles(pyramid, other.levels[0], [(0, 0)])
    with pytest.raises(GeometryError, match="1001 x 700"):
        read_thumbnail(pyramid, other.thumbnail)
    level = plan_pyramid(1000, 700).levels[0]
    with pytest.raises(GeometryError, match="tile_rc"):
        read_tiles(pyramid, level, [(5, 0)])
    with pytest.raises(ConfigError, match="pad_rgb"):
        read_tiles(pyramid, level, [(0, 0)], pad_rgb=(0, 0, 256))
    with pytest.raises(ConfigError, match="resampler"):
        read_tiles(pyramid, level, [(0, 0)], resampler="nearest")
    with pytest.raises(GeometryError, match="outside"):
        resample_parity(pyramid, resize_hw=(10, 10), rows=(0, 11), cols=(0, 10))
