from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rasterio.transform import Affine
from rasterio.windows import Window

from lrs_core.errors import SceneNotFoundError, SceneReadError
from lrs_core.raster.scene import (
    compute_stretch,
    footprint_polygon,
    inspect_scene,
    map_to_pixel,
    open_raster,
    pixel_to_map,
    polygon_to_lonlat,
    read_rgb_window,
)
from tests.fixtures.scenes import SCENE_EPSG, make_rgb_pattern

MAX_PX = 1 << 34


def test_inspect_rgb_geotiff(rgb_geotiff: Path) -> None:
    info = inspect_scene(rgb_geotiff, max_pixels=MAX_PX)
    assert info.size_wh == (1000, 700)
    assert info.size_hw == (700, 1000)
    assert info.band_map == (1, 2, 3)
    assert info.alpha_band is None
    assert info.epsg == SCENE_EPSG
    assert info.is_georeferenced
    assert info.transform == Affine(0.5, 0, 500_000.0, 0, -0.5, 4_600_000.0)


def test_band_map_from_colour_tags_and_alpha(geotiff_writer) -> None:
    data = np.stack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 40, 255)])
    path = geotiff_writer(
        "tagged.tif", data, colorinterp=["blue", "undefined", "green", "red", "alpha"]
    )
    info = inspect_scene(path, max_pixels=MAX_PX)
    assert info.band_map == (4, 3, 1)
    assert info.alpha_band == 5
    picked = inspect_scene(path, bands=[2], max_pixels=MAX_PX)
    assert picked.band_map == (2, 2, 2)
    with pytest.raises(SceneReadError, match="do not exist"):
        inspect_scene(path, bands=[1, 2, 9], max_pixels=MAX_PX)


def test_read_rgb_window_matches_source(rgb_geotiff: Path) -> None:
    info = inspect_scene(rgb_geotiff, max_pixels=MAX_PX)
    data = make_rgb_pattern(700, 1000)
    with open_raster(rgb_geotiff) as dataset:
        stretch = compute_stretch(dataset, info, low_pct=2, high_pct=98, sample_long_side_px=64)
        rgb, valid = read_rgb_window(dataset, info, stretch, Window(100, 50, 30, 20))
    assert stretch.method == "none"
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert valid.all()
    np.testing.assert_array_equal(rgb, data[:, 50:70, 100:130].transpose(1, 2, 0))


def test_percentile_stretch_of_uint16_with_nan_free_nodata(geotiff_writer) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(1000, 5000, size=(3, 64, 80)).astype(np.uint16)
    data[:, :8, :] = 0
    path = geotiff_writer("u16.tif", data, nodata=0)
    info = inspect_scene(path, max_pixels=MAX_PX)
    with open_raster(path) as dataset:
        stretch = compute_stretch(dataset, info, low_pct=2, high_pct=98, sample_long_side_px=1024)
        rgb, valid = read_rgb_window(dataset, info, stretch, Window(0, 0, 80, 64))
    assert stretch.method == "percentile"
    expected_low = np.percentile(data[0, 8:].astype(float), 2)
    assert stretch.low[0] == pytest.approx(expected_low)
    assert not valid[:8].any() and valid[8:].all()
    assert (rgb[:8] == 0).all()
    assert rgb[8:].min() == 0 and rgb[8:].max() == 255


def test_open_raster_errors(tmp_path: Path) -> None:
    with pytest.raises(SceneNotFoundError, match="missing.tif"):
        open_raster(tmp_path / "missing.tif")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(SceneReadError, match="zero-byte"):
        open_raster(empty)
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n" * 20)
    with pytest.raises(SceneReadError, match="not a readable raster"):
        open_raster(text)


@given(
    x=st.floats(-1e4, 1e4),
    y=st.floats(-1e4, 1e4),
    angle=st.floats(-180, 180),
    shear=st.floats(-30, 30),
)
def test_pixel_map_round_trip(x: float, y: float, angle: float, shear: float) -> None:
    transform = (
        Affine.translation(300_000, 5_000_000)
        @ Affine.rotation(angle)
        @ Affine.shear(shear, 0)
        @ Affine.scale(0.5, -0.5)
    )
    back = map_to_pixel(transform, *pixel_to_map(transform, x, y))
    assert back == pytest.approx((x, y), abs=1e-6)


def test_pixel_rule_corner_and_centre() -> None:
    transform = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_600_000.0)
    assert pixel_to_map(transform, 0, 0) == (500_000.0, 4_600_000.0)
    assert pixel_to_map(transform, 0.5, 0.5) == (500_000.25, 4_599_999.75)


def test_footprint_goes_through_rotation_and_shear() -> None:
    transform = Affine.translation(1000, 2000) @ Affine.rotation(30) @ Affine.shear(10, 0)
    polygon = footprint_polygon(transform, (0, 0, 10, 5))
    corners = list(polygon.exterior.coords)[:4]
    for (px, py), corner in zip([(0, 0), (10, 0), (10, 5), (0, 5)], corners, strict=True):
        assert corner == pytest.approx(transform @ (px, py))
    # A parallelogram: area = |det| * pixel area.
    det = abs(transform.a * transform.e - transform.b * transform.d)
    assert polygon.area == pytest.approx(det * 50)


def test_polygon_to_lonlat_utm33() -> None:
    from pyproj import CRS

    wkt = CRS.from_epsg(SCENE_EPSG).to_wkt()
    lonlat = polygon_to_lonlat(
        footprint_polygon(Affine(0.5, 0, 500_000.0, 0, -0.5, 4_600_000.0), (0, 0, 1000, 700)), wkt
    )
    minx, miny, maxx, maxy = lonlat.bounds
    # x = 500 000 is the central meridian of UTM zone 33 (15 degrees east).
    assert minx == pytest.approx(15.0, abs=1e-9)
    assert 41.5 < miny < maxy < 41.6
    assert maxx - minx == pytest.approx(500 / (111_320 * math.cos(math.radians(41.55))), rel=1e-2)
