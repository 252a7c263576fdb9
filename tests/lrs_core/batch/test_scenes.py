"""Scene resolution: store paths, scene ids, rasters to ingest, and the data root."""

from __future__ import annotations

from pathlib import Path

from lrs_core.batch.scenes import ResolvedScene, resolve_scene, resolve_scenes
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff


def test_scene_inside_the_root_resolves(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "scenes").mkdir(parents=True)
    raster = root / "scenes" / "a.tif"
    raster.write_bytes(b"")
    stores = tmp_path / "stores"
    (stores / "known.zarr").mkdir(parents=True)
    root = root.resolve()
    assert resolve_scene("scenes/a.tif", stores=stores, data_root=root) == ResolvedScene(
        kind="raster", path=str(raster)
    )
    assert resolve_scene("known", stores=stores, data_root=root) == ResolvedScene(
        kind="store", path=str(stores / "known.zarr")
    )
    escape = resolve_scene("../../etc/x.tif", stores=stores, data_root=root)
    assert isinstance(escape, str) and "outside the data root" in escape
    missing = resolve_scene("nowhere", stores=stores)
    assert isinstance(missing, str) and "neither a store path" in missing


def test_rasters_are_ingested_before_ids_are_looked_up(tmp_path: Path) -> None:
    raster = write_geotiff(tmp_path / "fresh.tif", make_rgb_pattern(64, 96, seed=2))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    stores = tmp_path / "stores"
    found = resolve_scenes([str(raster), "fresh", str(broken), "gone"], stores=str(stores))
    assert found.stores == {
        str(raster): str(stores / "fresh.zarr"),
        "fresh": str(stores / "fresh.zarr"),
    }
    assert sorted(found.errors) == [str(broken), "gone"]
    assert found.errors[str(broken)].startswith(f"ingest of {broken} failed: ")
