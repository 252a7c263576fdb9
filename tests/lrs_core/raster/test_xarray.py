"""The stores open in xarray as georeferenced multiscale trees (CF coordinates + grid mapping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

import lrs_core
from lrs_core.errors import SceneNotFoundError
from lrs_core.raster.ingest import IngestConfig, ingest_scene
from lrs_core.raster.pyramid import open_datatree, open_pyramid
from tests.fixtures.scenes import SCENE_EPSG, make_rgb_pattern, write_geotiff

SMALL = IngestConfig(chunk_px=64, levels_per_pass=2, n_workers=1, min_long_side_px=16)


def _centres(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) + 0.5


def test_every_level_has_the_coordinates_of_its_transform(ingested_store: Path) -> None:
    pyramid = open_pyramid(ingested_store)
    tree = lrs_core.open_datatree(ingested_store)
    assert sorted(tree.children, key=int) == [str(k.store_level) for k in pyramid.levels]
    for level in pyramid.levels:
        node = tree[str(level.store_level)].to_dataset()
        height, width = level.shape_hw
        assert node["rgb"].dims == ("y", "x", "band") and node["rgb"].shape == (height, width, 3)
        assert node["rgb"].dtype == np.uint8 and node["valid"].dtype == np.bool_
        t = level.transform
        np.testing.assert_array_equal(node["x"].values, t.c + t.a * _centres(width))
        np.testing.assert_array_equal(node["y"].values, t.f + t.e * _centres(height))
        # The CRS is found the usual way (CF grid mapping) and rioxarray rebuilds the transform.
        assert node.rio.crs == CRS.from_epsg(SCENE_EPSG)
        assert node["rgb"].attrs["grid_mapping"] == "spatial_ref"
        assert "crs_wkt" in node["spatial_ref"].attrs
        assert node.rio.transform() == pytest.approx(t)
    # Pixel values are the store's.
    level1 = tree["1"]["rgb"].values
    h1, w1 = pyramid.levels[1].shape_hw
    np.testing.assert_array_equal(level1, pyramid.read_window(1, Window(0, 0, w1, h1)))


def test_plain_image_gets_pixel_coordinates_and_no_crs(ingested_png_store: Path) -> None:
    tree = open_datatree(ingested_png_store)
    for name, node in tree.children.items():
        ds = node.to_dataset()
        step = 2.0 ** int(name)
        assert "spatial_ref" not in ds.variables
        assert ds.rio.crs is None
        np.testing.assert_array_equal(ds["x"].values, _centres(ds.sizes["x"]) * step)
        np.testing.assert_array_equal(ds["y"].values, _centres(ds.sizes["y"]) * step)


def test_rotated_scene_gets_pixel_coordinates_and_no_crs(tmp_path: Path) -> None:
    transform = (
        Affine.translation(500_000, 4_600_000) @ Affine.rotation(20) @ Affine.scale(0.5, -0.5)
    )
    source = write_geotiff(tmp_path / "rot.tif", make_rgb_pattern(50, 60), transform=transform)
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    tree = open_datatree(result.store)
    assert len(tree.children) >= 2
    for name, node in tree.children.items():
        ds = node.to_dataset()
        assert "spatial_ref" not in ds.variables and ds.rio.crs is None
        np.testing.assert_array_equal(ds["x"].values, _centres(ds.sizes["x"]) * 2.0 ** int(name))
    # The GeoZarr attributes still carry the rotated affine and the CRS.
    assert tree.attrs["proj:code"] == "EPSG:32633"


def test_open_datatree_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(SceneNotFoundError, match="lrs ingest"):
        open_datatree(tmp_path / "nothing.zarr")
