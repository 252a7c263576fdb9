from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from rasterio.transform import Affine
from rasterio.windows import Window

from lrs_core.errors import IncompletePyramidError, SceneNotFoundError, WindowError
from lrs_core.raster.pyramid import level_shapes_hw, open_pyramid, reduce_2x2
from tests.fixtures.scenes import SCENE_EPSG, make_rgb_pattern

SCENE = make_rgb_pattern(700, 1000).transpose(1, 2, 0)  # (h, w, 3)


def _reference_reduce(rgb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = valid.shape
    out_h, out_w = -(-height // 2), -(-width // 2)
    out = np.zeros((out_h, out_w, 3), np.uint8)
    out_valid = np.zeros((out_h, out_w), bool)
    for r in range(out_h):
        for c in range(out_w):
            cell_v = valid[2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
            if cell_v.any():
                cell = rgb[2 * r : 2 * r + 2, 2 * c : 2 * c + 2][cell_v].astype(float)
                out[r, c] = np.floor(cell.mean(axis=0) + 0.5)
                out_valid[r, c] = True
    return out, out_valid


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
)
def test_reduce_2x2_is_nodata_aware_rounded_mean(
    data: st.DataObject, height: int, width: int
) -> None:
    rgb = data.draw(arrays(np.uint8, (height, width, 3)))
    valid = data.draw(arrays(np.bool_, (height, width)))
    rgb = rgb.copy()
    rgb[~valid] = 0
    out, out_valid = reduce_2x2(rgb, valid)
    ref, ref_valid = _reference_reduce(rgb, valid)
    np.testing.assert_array_equal(out_valid, ref_valid)
    np.testing.assert_array_equal(out, ref)


def test_level_shapes_stop_at_first_level_within_min_side() -> None:
    assert level_shapes_hw((700, 1000), min_long_side_px=336) == (
        (700, 1000),
        (350, 500),
        (175, 250),
    )
    assert level_shapes_hw((300, 200), min_long_side_px=336) == ((300, 200),)
    assert level_shapes_hw((16384, 16384), min_long_side_px=336)[-1] == (256, 256)


def test_open_pyramid_levels_and_metadata(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    assert pyramid.scene_id == "scene"
    assert pyramid.size_wh == (1000, 700)
    assert pyramid.is_georeferenced and pyramid.epsg == SCENE_EPSG
    assert [lvl.shape_hw for lvl in pyramid.levels] == [(700, 1000), (350, 500), (175, 250)]
    assert pyramid.levels[2].downsample == 4.0
    assert pyramid.levels[2].transform == Affine(2.0, 0, 500_000.0, 0, -2.0, 4_600_000.0)
    attrs = json.loads((ingested_store / "zarr.json").read_text())["attributes"]
    assert attrs["proj:code"] == "EPSG:32633"
    assert {c["name"] for c in attrs["zarr_conventions"]} == {"multiscales", "proj:", "spatial:"}
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["0", "1", "2"]
    assert layout[1]["derived_from"] == "0" and layout[1]["resampling_method"] == "average"
    assert layout[2]["spatial:transform"] == [2.0, 0.0, 500_000.0, 0.0, -2.0, 4_600_000.0]
    assert attrs["lrs"]["complete"] is True
    assert attrs["lrs"]["checksum"].startswith("blake2b-128:")
    assert not (ingested_store / "_lrs_progress").exists()
    ref = pyramid.scene_ref()
    assert ref.size_wh == (1000, 700) and ref.transform == (
        0.5,
        0.0,
        500_000.0,
        0.0,
        -0.5,
        4_600_000.0,
    )


def test_read_window_exact_and_levels_consistent(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    window = pyramid.read_window(0, Window(123, 45, 300, 200))
    np.testing.assert_array_equal(window, SCENE[45:245, 123:423])
    assert pyramid.read_valid_mask(0, Window(0, 0, 1000, 700)).all()
    level1 = pyramid.read_window(1, Window(0, 0, 500, 350))
    expected, _ = reduce_2x2(SCENE, np.ones(SCENE.shape[:2], bool))
    np.testing.assert_array_equal(level1, expected)
    with pytest.raises(WindowError, match="outside"):
        pyramid.read_window(2, Window(200, 0, 100, 10))
    with pytest.raises(WindowError, match="does not exist"):
        pyramid.read_window(7, Window(0, 0, 1, 1))


def test_read_region_uses_coarsest_sufficient_level(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    assert pyramid.level_for((0, 0, 1000, 700), out_hw=(175, 250)) == 2
    assert pyramid.level_for((0, 0, 1000, 700), out_hw=(176, 250)) == 1
    assert pyramid.level_for((0, 0, 100, 100), out_hw=(336, 336)) == 0
    # Exactly one level's grid: a copy of that level.
    region = pyramid.read_region((0, 0, 1000, 700), out_hw=(175, 250))
    np.testing.assert_array_equal(region, pyramid.read_window(2, Window(0, 0, 250, 175)))
    # Area average of level 0 over an aligned region: matches a box filter of the source.
    region = pyramid.read_region((200, 100, 536, 436), out_hw=(112, 112))
    expected = np.asarray(
        Image.fromarray(SCENE[100:436, 200:536]).resize((112, 112), Image.Resampling.BOX)
    )
    # Read from level 1 (factor 1.5 left), so cells straddle level-1 pixels: close, not equal.
    assert np.abs(region.astype(int) - expected.astype(int)).mean() < 3
    # Factor 4 from level 0 lands exactly on level 2: equal to a box filter of the source.
    region = pyramid.read_region((200, 100, 536, 436), out_hw=(84, 84))
    expected = np.asarray(
        Image.fromarray(SCENE[100:436, 200:536]).resize((84, 84), Image.Resampling.BOX)
    )
    assert np.abs(region.astype(int) - expected.astype(int)).max() <= 1


def test_read_region_fills_outside_and_thumbnail(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    region = pyramid.read_region((900, 600, 1100, 800), out_hw=(200, 200), fill_rgb=(7, 8, 9))
    assert (region[120:, :] == (7, 8, 9)).all() and (region[:, 120:] == (7, 8, 9)).all()
    np.testing.assert_array_equal(region[:100, :100], SCENE[600:700, 900:1000])
    thumb = pyramid.thumbnail(max_side_px=336)
    assert thumb.shape == (235, 336, 3) and thumb.dtype == np.uint8
    with pytest.raises(WindowError):
        pyramid.read_region((10, 10, 10, 20), out_hw=(4, 4))


def test_footprints(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    poly = pyramid.footprint((0, 0, 1000, 700))
    assert poly.bounds == (500_000.0, 4_599_650.0, 500_500.0, 4_600_000.0)
    lonlat = pyramid.footprint_lonlat((0, 0, 1000, 700))
    assert lonlat is not None and lonlat.bounds[0] == pytest.approx(15.0)


def test_png_store_has_pixel_frame(ingested_png_store: Path) -> None:
    pyramid = open_pyramid(ingested_png_store)
    assert not pyramid.is_georeferenced
    assert pyramid.crs_wkt is None and pyramid.epsg is None and pyramid.transform is None
    assert pyramid.levels[1].transform == Affine.scale(2.0)
    assert pyramid.footprint((1, 2, 3, 4)).bounds == (1.0, 2.0, 3.0, 4.0)
    assert pyramid.footprint_lonlat((1, 2, 3, 4)) is None
    assert pyramid.scene_ref().crs_wkt is None and pyramid.scene_ref().transform is None
    np.testing.assert_array_equal(pyramid.read_window(0, Window(0, 0, 50, 40)), SCENE[:40, :50])
    attrs = json.loads((ingested_png_store / "zarr.json").read_text())["attributes"]
    assert "proj:code" not in attrs and attrs["spatial:transform"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_open_pyramid_missing_and_incomplete(tmp_path: Path, ingested_store: Path) -> None:
    with pytest.raises(SceneNotFoundError, match="nope.zarr"):
        open_pyramid(tmp_path / "nope.zarr")
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(ingested_store, copy)
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["lrs"]["complete"] = False
    (copy / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IncompletePyramidError, match="did not finish"):
        open_pyramid(copy)


@pytest.mark.parametrize("shape_hw", [(8, 10), (7, 9), (2, 2)])
def test_reduce_2x2_all_valid_fast_path(shape_hw: tuple[int, int]) -> None:
    rgb = np.random.default_rng(4).integers(0, 256, (*shape_hw, 3), dtype=np.uint8)
    valid = np.ones(shape_hw, bool)
    out, out_valid = reduce_2x2(rgb, valid)
    ref, ref_valid = _reference_reduce(rgb, valid)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out_valid, ref_valid)


def test_reduce_2x2_all_valid_kernel_is_exact_rounded_mean() -> None:
    # Every sum 0..1020 of four uint8 values (each residue mod 4, so every rounding case),
    # in every position of the 2x2 cell and every channel, plus random blocks.
    rng = np.random.default_rng(7)
    cells = rng.integers(0, 256, (4096, 4, 3), dtype=np.uint8)
    cells[:1021, :, 0] = np.array(
        [
            [min(255, s), min(255, max(0, s - 255)), min(255, max(0, s - 510)), max(0, s - 765)]
            for s in range(1021)
        ],
        dtype=np.uint8,
    )
    cells[:1021, :, 1] = cells[:1021, ::-1, 0]
    rgb = cells.reshape(64, 64, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(128, 128, 3)
    rgb = np.concatenate([rgb, rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)])
    out, out_valid = reduce_2x2(rgb, np.ones(rgb.shape[:2], bool))
    total = rgb[0::2, 0::2].astype(np.uint16) + rgb[1::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 1::2]
    np.testing.assert_array_equal(out, ((total + 2) >> 2).astype(np.uint8))
    assert out.dtype == np.uint8 and out_valid.all()
    assert sorted(np.unique(total[:64, :, 0]).tolist())[:1021] == list(range(1021))
