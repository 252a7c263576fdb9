from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import Affine
from rasterio.windows import Window

import lrs_core.raster.ingest as ingest_module
from lrs_core.errors import (
    ConfigError,
    IncompletePyramidError,
    NotGeoreferencedWarning,
    SceneReadError,
    StoreConflictError,
)
from lrs_core.raster.ingest import (
    IngestConfig,
    IngestResult,
    file_checksum,
    ingest_many,
    ingest_scene,
)
from lrs_core.raster.pyramid import open_pyramid
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff
from tests.fixtures.stores import MULTI_BLOCK_CONFIG as SMALL
from tests.fixtures.stores import ingest_killed_after

#: Every finished store a test here writes is verified afterwards (lrs verify).
pytestmark = pytest.mark.usefixtures("verify_written_stores")


def _all_levels_valid(store: str) -> list[np.ndarray]:
    pyramid = open_pyramid(store)
    return [
        pyramid.read_valid_mask(lvl.store_level, Window(0, 0, lvl.shape_hw[1], lvl.shape_hw[0]))
        for lvl in pyramid.levels
    ]


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="shard_px"):
        IngestConfig(chunk_px=64, shard_px=100)
    with pytest.raises(ConfigError, match="stretch percentiles"):
        IngestConfig(stretch_low_pct=50, stretch_high_pct=10)
    with pytest.raises(ConfigError, match="bands"):
        IngestConfig(bands=(1, 2))
    assert IngestConfig(chunk_px=64, shard_px=256, levels_per_pass=2).block_px == 1024


def test_ingest_multi_pass_matches_single_pass(tmp_path: Path) -> None:
    data = make_rgb_pattern(301, 457, seed=3)
    source = write_geotiff(tmp_path / "odd.tif", data)
    calls: list[tuple[int, int]] = []
    small = ingest_scene(
        source, tmp_path / "a", config=SMALL, progress=lambda d, t: calls.append((d, t))
    )
    big = ingest_scene(
        source, tmp_path / "b", config=IngestConfig(min_long_side_px=24, n_workers=2)
    )
    assert small.status == big.status == "ingested"
    assert small.level_shapes == ((301, 457), (151, 229), (76, 115), (38, 58), (19, 29), (10, 15))
    assert calls[-1][0] == calls[-1][1] == len(calls)
    pa, pb = open_pyramid(small.store), open_pyramid(big.store)
    for lvl in pa.levels:
        window = Window(0, 0, lvl.shape_hw[1], lvl.shape_hw[0])
        np.testing.assert_array_equal(
            pa.read_window(lvl.store_level, window), pb.read_window(lvl.store_level, window)
        )
    assert all(v.all() for v in _all_levels_valid(small.store))


def test_rgba_alpha_becomes_mask(tmp_path: Path) -> None:
    data = make_rgb_pattern(100, 120)
    alpha = np.full((1, 100, 120), 255, np.uint8)
    alpha[0, :, :40] = 0
    source = tmp_path / "rgba.tif"
    profile = {
        "driver": "GTiff",
        "width": 120,
        "height": 100,
        "count": 4,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_600_000),
        "photometric": "RGB",
        "alpha": "YES",
        "tiled": True,
        "blockxsize": 32,
        "blockysize": 32,
    }
    with rasterio.open(source, "w", **profile) as dst:
        dst.write(np.concatenate([data, alpha]))
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    masks = _all_levels_valid(result.store)
    assert not masks[0][:, :40].any() and masks[0][:, 40:].all()
    assert not masks[2][:, :10].any() and masks[2][:, 10:].all()
    pyramid = open_pyramid(result.store)
    assert (pyramid.read_window(0, Window(0, 0, 40, 100)) == 0).all()
    attrs = pyramid.attributes["lrs"]
    assert attrs["alpha_band"] == 4 and attrs["band_map"] == [1, 2, 3]


def test_single_band_becomes_grey(tmp_path: Path) -> None:
    band = make_rgb_pattern(64, 80)[:1]
    result = ingest_scene(
        write_geotiff(tmp_path / "grey.tif", band), tmp_path / "out", config=SMALL
    )
    rgb = open_pyramid(result.store).read_window(0, Window(0, 0, 80, 64))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], band[0])


def test_many_bands_use_colour_tags_or_bands_option(tmp_path: Path) -> None:
    planes = np.stack([np.full((40, 50), 10 * (i + 1), np.uint8) for i in range(5)])
    source = write_geotiff(
        tmp_path / "multi.tif",
        planes,
        colorinterp=["undefined", "blue", "green", "red", "undefined"],
    )
    tagged = ingest_scene(source, tmp_path / "a", config=SMALL)
    assert tuple(open_pyramid(tagged.store).read_window(0, Window(0, 0, 1, 1))[0, 0]) == (
        40,
        30,
        20,
    )
    picked = ingest_scene(source, tmp_path / "b", config=IngestConfig(chunk_px=32, bands=(5, 1, 2)))
    assert tuple(open_pyramid(picked.store).read_window(0, Window(0, 0, 1, 1))[0, 0]) == (
        50,
        10,
        20,
    )
    untagged = write_geotiff(tmp_path / "plain5.tif", planes)
    first = ingest_scene(untagged, tmp_path / "c", config=SMALL)
    assert tuple(open_pyramid(first.store).read_window(0, Window(0, 0, 1, 1))[0, 0]) == (10, 20, 30)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_stretch_of_wide_dtypes_is_recorded(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0 if dtype != "uint16" else 3000, 500, size=(3, 90, 110))
    if dtype == "uint16":
        values = np.clip(values, 0, 65535)
    data = values.astype(dtype)
    result = ingest_scene(
        write_geotiff(tmp_path / f"{dtype}.tif", data), tmp_path / "out", config=SMALL
    )
    pyramid = open_pyramid(result.store)
    stretch = pyramid.attributes["lrs"]["stretch"]
    assert pyramid.attributes["lrs"]["source_dtype"] == dtype
    assert (
        stretch["method"] == "percentile"
        and stretch["low_pct"] == 2.0
        and stretch["high_pct"] == 98.0
    )
    assert stretch["low"][0] == pytest.approx(
        np.percentile(data[0].astype(float), 2), rel=0.05, abs=20
    )
    rgb = pyramid.read_window(0, Window(0, 0, 110, 90))
    share_clipped = np.mean((rgb == 0) | (rgb == 255))
    assert 0.02 < share_clipped < 0.1  # about 2 % at each end


def test_nodata_and_nan_give_masks_at_every_level(tmp_path: Path) -> None:
    data = make_rgb_pattern(96, 128).astype(np.float32)
    data[:, 10:30, 20:50] = np.nan
    data[:, 60:, 100:] = -9999.0
    source = write_geotiff(tmp_path / "holes.tif", data, nodata=-9999.0)
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    masks = _all_levels_valid(result.store)
    assert not masks[0][10:30, 20:50].any() and not masks[0][60:, 100:].any()
    assert masks[0].sum() == 96 * 128 - 20 * 30 - 36 * 28
    # A coarse pixel is valid when any of its level-0 pixels is.
    assert not masks[1][5:15, 10:25].any() and masks[1][4, 10] and not masks[2][15:, 25:].any()
    rgb = open_pyramid(result.store).read_window(0, Window(0, 0, 128, 96))
    assert (rgb[10:30, 20:50] == 0).all()


def test_rotated_sheared_transform_footprint(tmp_path: Path) -> None:
    transform = (
        Affine.translation(500_000, 4_600_000)
        @ Affine.rotation(20)
        @ Affine.shear(5, 0)
        @ Affine.scale(0.5, -0.5)
    )
    source = write_geotiff(tmp_path / "rot.tif", make_rgb_pattern(50, 60), transform=transform)
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    pyramid = open_pyramid(result.store)
    assert pyramid.transform == transform
    assert pyramid.levels[1].transform == transform @ Affine.scale(2)
    corners = list(pyramid.footprint((0, 0, 60, 50)).exterior.coords)[:4]
    assert corners[2] == pytest.approx(transform @ (60, 50))
    item = json.loads(Path(result.stac_item).read_text())
    assert item["properties"]["proj:code"] == "EPSG:32633"
    assert item["properties"]["proj:transform"] == pytest.approx(list(transform)[:6])
    assert item["geometry"]["type"] == "Polygon"
    assert item["bbox"][0] == pytest.approx(pyramid.footprint_lonlat((0, 0, 60, 50)).bounds[0])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_plain_images_get_pixel_frame(tmp_path: Path, suffix: str) -> None:
    # 300 rows > SMALL's 128 px blocks: PNG/JPEG go through whole-width bands, one at a time.
    pixels = np.ascontiguousarray(make_rgb_pattern(300, 290).transpose(1, 2, 0))
    source = tmp_path / f"plain{suffix}"
    Image.fromarray(pixels).save(source)
    with pytest.warns(NotGeoreferencedWarning, match="no CRS"):
        result = ingest_scene(source, tmp_path / "out", config=SMALL)
    pyramid = open_pyramid(result.store)
    assert not pyramid.is_georeferenced and pyramid.transform is None
    rgb = pyramid.read_window(0, Window(0, 0, 290, 300))
    if suffix != ".tif":
        assert (
            len(
                ingest_module.plan_passes(
                    store=Path(result.store),
                    info=ingest_module.inspect_scene(source, max_pixels=1 << 34),
                    stretch=ingest_module.Stretch(method="none"),
                    level_shapes=result.level_shapes,
                    config=SMALL,
                )[0]
            )
            == 3
        )
    if suffix == ".jpg":
        assert np.abs(rgb.astype(int) - pixels).mean() < 10
    else:
        np.testing.assert_array_equal(rgb, pixels)
    item = json.loads(Path(result.stac_item).read_text())
    assert item["geometry"] is None and item.get("bbox") is None
    assert item["properties"]["proj:code"] is None


def _absurd_png(path: Path) -> Path:
    """A PNG whose IHDR claims 200 000 x 200 000 px (4e10 > the 2^34 limit) (with a valid CRC)."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + 13 data bytes
    ihdr[4:12] = struct.pack(">II", 200_000, 200_000)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(raw))
    return path


def test_bad_inputs_fail_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = write_geotiff(src / "a_good.tif", make_rgb_pattern(60, 70))
    (src / "b_empty.tif").write_bytes(b"")
    (src / "c_text.png").write_text("not an image at all\n")
    whole = write_geotiff(tmp_path / "whole.tif", make_rgb_pattern(300, 300), tiled=True)
    (src / "d_truncated.tif").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _absurd_png(src / "e_absurd.png")
    write_geotiff(src / "f_nodata.tif", np.zeros((3, 50, 60), np.uint8), nodata=0)
    good2 = write_geotiff(src / "g_good.tif", make_rgb_pattern(40, 30))
    results = ingest_many([src], tmp_path / "out", config=SMALL)
    by_id = {r.scene_id: r for r in results}
    assert [r.status for r in results] == [
        "ingested",
        "failed",
        "failed",
        "failed",
        "failed",
        "failed",
        "ingested",
    ]
    expected = {
        "b_empty": "zero-byte",
        "c_text": "not a readable raster",
        "d_truncated": "truncated or corrupt",
        "e_absurd": "header claims",
        "f_nodata": "every pixel is nodata",
    }
    for scene_id, problem in expected.items():
        error = by_id[scene_id].error
        assert error is not None and "\n" not in error
        assert f"{scene_id}." in error and problem in error, error
        store = tmp_path / "out" / f"{scene_id}.zarr"
        if store.exists():
            with pytest.raises(IncompletePyramidError):
                open_pyramid(store)
    assert open_pyramid(by_id["a_good"].store).size_wh == (70, 60)
    assert open_pyramid(by_id["g_good"].store).size_wh == (30, 40)
    assert Path(good).exists() and Path(good2).exists()


def test_rerun_skips_and_conflicts(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "s.tif", make_rgb_pattern(64, 64))
    first = ingest_scene(source, tmp_path / "out", config=SMALL)
    again = ingest_scene(source, tmp_path / "out", config=SMALL)
    assert (first.status, again.status) == ("ingested", "skipped")
    assert again.level_shapes == first.level_shapes
    other = write_geotiff(tmp_path / "other.tif", make_rgb_pattern(64, 64, seed=9))
    with pytest.raises(StoreConflictError, match="--overwrite"):
        ingest_scene(other, tmp_path / "out", scene_id="s", config=SMALL)
    replaced = ingest_scene(other, tmp_path / "out", scene_id="s", config=SMALL, overwrite=True)
    assert replaced.status == "ingested"
    assert open_pyramid(replaced.store).attributes["lrs"]["source"] == str(other)
    assert (
        IngestResult(scene_id="x", source="y", store=None, status="failed", error="e").to_dict()[
            "status"
        ]
        == "failed"
    )


def test_interrupted_ingest_resumes(tmp_path: Path) -> None:
    data = make_rgb_pattern(200, 260, seed=5)
    source = write_geotiff(tmp_path / "r.tif", data)
    ingest_killed_after(source, tmp_path / "out", blocks=5)
    store = tmp_path / "out" / "r.zarr"
    with pytest.raises(IncompletePyramidError, match="did not finish"):
        open_pyramid(store)
    assert len(list((store / "_lrs_progress").iterdir())) == 5
    progress: list[tuple[int, int]] = []
    resumed = ingest_scene(
        source, tmp_path / "out", config=SMALL, progress=lambda d, t: progress.append((d, t))
    )
    assert resumed.status == "ingested"
    fresh = ingest_scene(source, tmp_path / "fresh", config=SMALL)
    a, b = open_pyramid(resumed.store), open_pyramid(fresh.store)
    for lvl in a.levels:
        window = Window(0, 0, lvl.shape_hw[1], lvl.shape_hw[0])
        np.testing.assert_array_equal(
            a.read_window(lvl.store_level, window), b.read_window(lvl.store_level, window)
        )
    assert progress[-1][0] == progress[-1][1]


def test_ingest_on_distributed_local_cluster(tmp_path: Path) -> None:
    from distributed import LocalCluster

    data = make_rgb_pattern(90, 100)
    source = write_geotiff(tmp_path / "dist.tif", data)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = ingest_scene(
            source, tmp_path / "out", config=SMALL, dask_address=cluster.scheduler_address
        )
    assert result.status == "ingested"
    np.testing.assert_array_equal(
        open_pyramid(result.store).read_window(0, Window(0, 0, 100, 90)), data.transpose(1, 2, 0)
    )


def test_truncated_file_is_a_scene_read_error(tmp_path: Path) -> None:
    whole = write_geotiff(tmp_path / "whole.tif", make_rgb_pattern(300, 300))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(SceneReadError, match="broken.tif"):
        ingest_scene(broken, tmp_path / "out", config=SMALL)
    assert not (tmp_path / "out" / "broken.zarr").exists()


def test_rasterio_reads_stac_neighbour(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "n.tif", make_rgb_pattern(30, 40))
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    item = json.loads(Path(result.stac_item).read_text())
    assert item["assets"]["pyramid"]["href"] == "./n.zarr"
    assert item["properties"]["proj:shape"] == [30, 40]
    with rasterio.open(source) as dataset:
        assert item["properties"]["proj:transform"] == pytest.approx(list(dataset.transform)[:6])


@pytest.mark.parametrize(
    "overrides",
    [{"compressor": "zstd", "compression_level": 1}, {"compressor": "none"}, {"shard_px": 64}],
)
def test_codecs_and_sharding_read_back_identically(tmp_path: Path, overrides: dict) -> None:
    data = make_rgb_pattern(150, 170, seed=2)
    source = write_geotiff(tmp_path / "c.tif", data)
    config = IngestConfig(
        chunk_px=32, levels_per_pass=1, min_long_side_px=24, n_workers=1, **overrides
    )
    result = ingest_scene(source, tmp_path / "out", config=config)
    reference = ingest_scene(source, tmp_path / "ref", config=SMALL)
    a, b = open_pyramid(result.store), open_pyramid(reference.store)
    assert [lvl.shape_hw for lvl in a.levels] == [lvl.shape_hw for lvl in b.levels]
    for lvl in a.levels:
        window = Window(0, 0, lvl.shape_hw[1], lvl.shape_hw[0])
        np.testing.assert_array_equal(
            a.read_window(lvl.store_level, window), b.read_window(lvl.store_level, window)
        )
        assert a.read_valid_mask(lvl.store_level, window).all()


def test_store_killed_before_its_checksum_was_recorded(tmp_path: Path) -> None:
    # The checksum pass overlaps pass 0; a kill -9 before it ends leaves lrs.checksum null.
    source = write_geotiff(tmp_path / "k.tif", make_rgb_pattern(64, 64))
    first = ingest_scene(source, tmp_path / "out", config=SMALL)
    store = Path(str(first.store))
    assert open_pyramid(store).attributes["lrs"]["checksum"] == file_checksum(source)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["lrs"].update(checksum=None, complete=False)
    (store / "zarr.json").write_text(json.dumps(meta))
    other = write_geotiff(tmp_path / "other.tif", make_rgb_pattern(64, 64, seed=9))
    with pytest.raises(StoreConflictError, match="--overwrite"):
        ingest_scene(other, tmp_path / "out", scene_id="k", config=SMALL)
    again = ingest_scene(source, tmp_path / "out", config=SMALL)  # same path: starts over
    assert again.status == "ingested"
    pyramid = open_pyramid(store)
    assert pyramid.attributes["lrs"]["checksum"] == file_checksum(source)
    np.testing.assert_array_equal(
        pyramid.read_window(0, Window(0, 0, 64, 64)),
        make_rgb_pattern(64, 64).transpose(1, 2, 0),
    )
