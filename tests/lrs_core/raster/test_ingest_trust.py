"""Issue 10 on the ingest side: no silent corruption, one writer per store, honest georeference,
files and paths that cannot be turned against the user, and one clear line for each bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors
import zarr
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from typer.testing import CliRunner

import lrs_core.raster.ingest as ingest_module
from lrs_core.cli import build_app
from lrs_core.errors import (
    IncompletePyramidError,
    NoLonLatFootprintWarning,
    NotGeoreferencedWarning,
    StoreConflictError,
)
from lrs_core.fsio import write_bytes_atomic
from lrs_core.raster.ingest import IngestConfig, file_checksum, ingest_scene
from lrs_core.raster.integrity import verify_store
from lrs_core.raster.pyramid import open_pyramid, rgb_path
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff
from tests.fixtures.stores import MULTI_BLOCK_CONFIG as SMALL
from tests.fixtures.stores import ingest_killed_after

#: Every finished store a test here writes is verified afterwards (lrs verify).
pytestmark = pytest.mark.usefixtures("verify_written_stores")

#: Stress config: 4 blocks of 256 px read by 2 worker threads, each with GDAL_NUM_THREADS=2.
STRESS = IngestConfig(chunk_px=64, levels_per_pass=2, min_long_side_px=64, n_workers=2)
STRESS_RUNS = 10
STRESS_SIDE_PX = 512
#: Seconds a subprocess may take (imports on a loaded 2-core machine are slow).
PROCESS_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[3]

runner = CliRunner()


def _full(level_hw: tuple[int, int]) -> Window:
    return Window(0, 0, level_hw[1], level_hw[0])


def _hillshade_like(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A single-band uint8 scene that is 88 % nodata (255) outside a disk; and its nodata mask."""
    yy, xx = np.mgrid[0:side, 0:side]
    band = ((xx * 7 + yy * 3) % 250).astype(np.uint8)
    nodata = (xx - side / 2) ** 2 + (yy - side / 2) ** 2 > (0.19 * side) ** 2
    band[nodata] = 255
    return band, nodata


# --- silent corruption -------------------------------------------------------------------------


def test_single_band_nodata_scene_ingests_identically_every_time(tmp_path: Path) -> None:
    band, nodata = _hillshade_like(STRESS_SIDE_PX)
    source = write_geotiff(tmp_path / "hillshade.tif", band[None], nodata=255)
    digests = set()
    for run in range(STRESS_RUNS):
        result = ingest_scene(source, tmp_path / f"run{run}", config=STRESS)
        pyramid = open_pyramid(result.store)
        digests.add(json.dumps(pyramid.attributes["lrs"]["digests"]))
        valid = pyramid.read_valid_mask(0, _full(pyramid.levels[0].shape_hw))
        rgb = pyramid.read_window(0, _full(pyramid.levels[0].shape_hw))
        assert not valid[nodata].any(), f"run {run}: nodata pixels marked valid"
        assert valid[~nodata].all()
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel][~nodata], band[~nodata])
        assert not rgb[nodata].any()
    assert len(pyramid.levels) == 4
    assert len(digests) == 1, "the same scene gave different stores"


# --- digests and verify ------------------------------------------------------------------------


def test_verify_finds_changed_pixels_and_missing_digests(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "v.tif", make_rgb_pattern(200, 260, seed=4))
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    store = Path(str(result.store))
    report = verify_store(store)
    assert report.ok and len(report.levels) == len(result.level_shapes)
    assert all(level.digest_ok for level in report.levels)
    assert [level.reduction_max_diff for level in report.levels][1:] == [0] * (
        len(report.levels) - 1
    )
    app = build_app()
    ok = runner.invoke(app, ["verify", str(store), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True

    level1 = zarr.open_array(str(store), path=rgb_path(1), mode="r+")
    level1[10:20, 10:20] = 255
    report = verify_store(store)
    assert not report.ok
    text = " ".join(report.problems)
    assert "level 1: 1 of 6 written regions differ from their digests" in text
    assert "level 1: not the 2x reduction of level 0" in text
    assert "level 2: not the 2x reduction of level 1" in text
    failed = runner.invoke(app, ["verify", str(store)])
    assert failed.exit_code == 1 and "FAILED" in failed.output and "Traceback" not in failed.output
    not_a_store = runner.invoke(app, ["verify", str(tmp_path / "nothing.zarr")])
    assert not_a_store.exit_code == 1 and "no Zarr store" in not_a_store.output

    level_meta_file = store / "0" / "zarr.json"
    level_meta = json.loads(level_meta_file.read_text())
    level_meta["attributes"]["lrs.regions"].pop()
    level_meta_file.write_text(json.dumps(level_meta))
    assert "level 0: the written regions do not cover the level exactly once" in " ".join(
        verify_store(store).problems
    )
    del level_meta["attributes"]["lrs.regions"]
    level_meta_file.write_text(json.dumps(level_meta))
    assert "level 0: lrs.regions is missing" in " ".join(verify_store(store).problems)
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["lrs"]["digests"]
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IncompletePyramidError, match="no content digests"):
        open_pyramid(store)
    assert "cannot check content" in " ".join(verify_store(store).problems)
    # The same source rewrites a store that cannot be verified (instead of skipping it).
    again = ingest_scene(source, tmp_path / "out", config=SMALL)
    assert again.status == "ingested" and verify_store(store).ok


# --- one writer per store ----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _lrs(*args: str) -> subprocess.Popen[str]:
    """Start ``lrs ARGS`` as a separate process."""
    return subprocess.Popen(
        [sys.executable, "-c", "from lrs_core.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert "Traceback" not in err and "FileNotFoundError" not in err, err
    return process.returncode, out, err


def test_second_writer_names_the_holder_then_queues_with_wait(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "s.tif", make_rgb_pattern(60, 80))
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom lrs_core.locks import exclusive_writer\n"
            "with exclusive_writer(sys.argv[1], purpose='test holder'):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n",
            str(out / "s.zarr"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, _, err = _finish(_lrs("ingest", str(source), "--out", str(out)))
        assert code == 1
        assert f"pid {holder.pid} on host" in err and "test holder" in err and "--wait" in err
        assert not (out / "s.zarr").exists()
        queued = _lrs("ingest", str(source), "--out", str(out), "--wait", "--json")
        time.sleep(2.0)
        assert queued.poll() is None, "--wait did not wait for the holder"
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=PROCESS_TIMEOUT_S) == 0
        code, stdout, _ = _finish(queued)
        assert code == 0 and json.loads(stdout)["status"] == "ingested"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("first", "second"), [("a", "a"), ("a", "b"), ("b", "a")], ids=["same", "ab", "ba"]
)
def test_two_concurrent_ingests_of_one_store(tmp_path: Path, first: str, second: str) -> None:
    sources = {
        name: write_geotiff(tmp_path / f"{name}.tif", make_rgb_pattern(300, 340, seed=seed))
        for name, seed in (("a", 1), ("b", 2))
    }
    out = tmp_path / "out"
    args = ["--out", str(out), "--id", "scene", "--json", "--wait"]
    processes = [_lrs("ingest", str(sources[first]), *args)]
    processes.append(_lrs("ingest", str(sources[second]), *args))
    finished = [_finish(p) for p in processes]
    records = [json.loads(out_text) for _, out_text, _ in finished]
    statuses = sorted(r["status"] for r in records)
    if first == second:
        assert statuses == ["ingested", "skipped"] and all(c == 0 for c, _, _ in finished)
    else:
        assert statuses == ["failed", "ingested"]
        (loser,) = [r for r in records if r["status"] == "failed"]
        assert "--overwrite" in loser["error"]
    (winner,) = [r for r in records if r["status"] == "ingested"]
    pyramid = open_pyramid(out / "scene.zarr")
    winner_source = Path(winner["source"])
    assert pyramid.attributes["lrs"]["checksum"] == file_checksum(winner_source)
    with rasterio.open(winner_source) as dataset:
        np.testing.assert_array_equal(
            pyramid.read_window(0, Window(0, 0, 340, 300)), dataset.read().transpose(1, 2, 0)
        )


# --- honest georeference -----------------------------------------------------------------------


def test_crs_without_geotransform_is_not_georeferenced(tmp_path: Path) -> None:
    source = tmp_path / "crs_only.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            source,
            "w",
            driver="GTiff",
            width=40,
            height=30,
            count=3,
            dtype="uint8",
            crs=CRS.from_epsg(32633),
        ) as dst:
            dst.write(make_rgb_pattern(30, 40))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(source) as check:
            assert check.crs is not None  # the file does carry a CRS
    with pytest.warns(NotGeoreferencedWarning, match="a CRS but no geotransform"):
        result = ingest_scene(source, tmp_path / "out", config=SMALL)
    pyramid = open_pyramid(result.store)
    assert not pyramid.is_georeferenced and pyramid.footprint_lonlat((0, 0, 40, 30)) is None
    assert pyramid.attributes["lrs"]["georeference"] == "none"
    item = json.loads(Path(str(result.stac_item)).read_text())
    assert item.get("bbox") is None and item["geometry"] is None
    assert "a CRS but no geotransform" in result.warnings[0]


def test_gcp_only_raster_keeps_a_fitted_georeference(tmp_path: Path) -> None:
    true = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)
    gcps = [
        GroundControlPoint(row=row, col=col, x=(true @ (col, row))[0], y=(true @ (col, row))[1])
        for row, col in ((0, 0), (0, 60), (50, 0), (50, 60), (25, 30))
    ]
    source = tmp_path / "gcps.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            source, "w", driver="GTiff", width=60, height=50, count=3, dtype="uint8"
        ) as dst:
            dst.write(make_rgb_pattern(50, 60))
            dst.gcps = (gcps, CRS.from_epsg(32633))
    result = ingest_scene(source, tmp_path / "out", config=SMALL)
    pyramid = open_pyramid(result.store)
    assert pyramid.is_georeferenced and pyramid.epsg == 32633
    assert pyramid.transform is not None
    assert tuple(pyramid.transform)[:6] == pytest.approx(tuple(true)[:6])
    assert pyramid.attributes["lrs"]["georeference"] == "gcps"
    assert "fitted from 5 GCPs" in pyramid.attributes["lrs"]["georeference_note"]
    item = json.loads(Path(str(result.stac_item)).read_text())
    assert item["properties"]["lrs:georeference"] == "gcps"
    assert item["bbox"] == pytest.approx(list(pyramid.footprint_lonlat((0, 0, 60, 50)).bounds))


def test_full_disk_without_lonlat_footprint_ingests_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    geos = CRS.from_proj4("+proj=geos +h=35785831 +lon_0=0 +sweep=y +ellps=WGS84 +units=m")
    pixel_m = 180_000.0  # 64 px * 180 km: past the Earth's limb (about +-5.4e6 m)
    transform = Affine(pixel_m, 0, -32 * pixel_m, 0, -pixel_m, 32 * pixel_m)
    source = write_geotiff(
        tmp_path / "disk.tif", make_rgb_pattern(64, 64), crs=geos, transform=transform
    )
    blocks: list[int] = []
    real_run_block = ingest_module.run_block

    def counting_run_block(task: ingest_module.BlockTask) -> int:
        blocks.append(1)
        return real_run_block(task)

    monkeypatch.setattr(ingest_module, "run_block", counting_run_block)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ingest_scene(source, tmp_path / "out", config=SMALL)
    (warned,) = [w for w in caught if issubclass(w.category, NoLonLatFootprintWarning)]
    assert "no EPSG:4326 form" in str(warned.message) and result.status == "ingested"
    pyramid = open_pyramid(result.store)
    assert pyramid.is_georeferenced and pyramid.attributes["lrs"]["lonlat_footprint"] is False
    assert pyramid.footprint_lonlat((0, 0, 64, 64)) is None
    assert pyramid.footprint_lonlat((30, 30, 34, 34)) is not None  # the disk centre is on Earth
    item = json.loads(Path(str(result.stac_item)).read_text())
    assert item.get("bbox") is None and item["geometry"] is None
    assert blocks, "the pixels were written"


def test_cli_shows_the_not_georeferenced_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        source = write_geotiff(tmp_path / "plain.tif", make_rgb_pattern(20, 30), crs=None)
    result = runner.invoke(build_app(), ["ingest", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert "warning:" in result.output and "not georeferenced" in result.output


# --- files and paths ---------------------------------------------------------------------------


def test_planted_symlinks_are_never_written_through(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "s.tif", make_rgb_pattern(40, 50))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "s.stac.json").symlink_to(victim)
    result = ingest_scene(source, out, config=SMALL)
    assert victim.read_text() == "precious\n"
    stac = out / "s.stac.json"
    assert not stac.is_symlink() and json.loads(stac.read_text())["id"] == "s"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep\n")
    (out / "t.zarr").symlink_to(elsewhere, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(StoreConflictError, match="is a symlink"):
            ingest_scene(source, out, scene_id="t", config=SMALL, overwrite=overwrite)
    assert (elsewhere / "keep.txt").read_text() == "keep\n"
    cli = runner.invoke(
        build_app(), ["ingest", str(source), "--out", str(out), "--id", "t", "--overwrite"]
    )
    assert cli.exit_code == 1 and "is a symlink" in cli.output and "Traceback" not in cli.output
    assert result.status == "ingested"


def test_files_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "f.bin", b"x")
        result = ingest_scene(
            write_geotiff(tmp_path / "s.tif", make_rgb_pattern(30, 30)), tmp_path / "out"
        )
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640
    assert Path(str(result.stac_item)).stat().st_mode & 0o777 == 0o640


def test_damaged_markers_count_as_absent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = write_geotiff(tmp_path / "r.tif", make_rgb_pattern(200, 260, seed=5))
    ingest_killed_after(source, tmp_path / "out", blocks=4)
    markers = sorted((tmp_path / "out" / "r.zarr" / "_lrs_progress").iterdir())
    assert len(markers) == 4
    markers[0].write_bytes(b"")
    markers[1].write_bytes(b"\xff\xfe")
    with caplog.at_level(logging.WARNING, logger="lrs_core.raster.ingest"):
        resumed = ingest_scene(source, tmp_path / "out", config=SMALL)
    assert resumed.status == "ingested"
    assert "damaged resume marker" in caplog.text or "unreadable resume marker" in caplog.text
    fresh = ingest_scene(source, tmp_path / "fresh", config=SMALL)
    assert (
        open_pyramid(resumed.store).attributes["lrs"]["digests"]
        == open_pyramid(fresh.store).attributes["lrs"]["digests"]
    )


def test_same_file_by_another_path_is_not_another_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_geotiff(tmp_path / "k.tif", make_rgb_pattern(64, 64))
    first = ingest_scene(source, tmp_path / "out", config=SMALL)
    store = Path(str(first.store))
    assert open_pyramid(store).attributes["lrs"]["source"] == str(source.resolve())
    link = tmp_path / "link.tif"
    link.symlink_to(source)
    monkeypatch.chdir(tmp_path)
    for other_path in (Path("k.tif"), link):
        # As if killed before the checksum pass ended: only the recorded path identifies it.
        meta = json.loads((store / "zarr.json").read_text())
        meta["attributes"]["lrs"].update(checksum=None, complete=False)
        (store / "zarr.json").write_text(json.dumps(meta))
        again = ingest_scene(other_path, tmp_path / "out", scene_id="k", config=SMALL)
        assert again.status == "ingested"
        assert open_pyramid(store).attributes["lrs"]["source"] == str(source.resolve())


# --- clear errors at the CLI -------------------------------------------------------------------


def _one_line_error(output: str) -> None:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith(("error:", "failed"))]
    assert len(errors) == 1, output


def test_cli_out_problems_and_symlink_loop(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "s.tif", make_rgb_pattern(20, 30))
    app = build_app()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    result = runner.invoke(app, ["ingest", str(source), "--out", str(a_file)])
    assert result.exit_code == 2 and "is an existing file" in result.output
    _one_line_error(result.output)
    if Path("/sys").is_dir():  # mkdir there fails even for root
        result = runner.invoke(app, ["ingest", str(source), "--out", "/sys/lrs-no-such-dir"])
        assert result.exit_code == 1 and "cannot create the output folder" in result.output
        _one_line_error(result.output)
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop)
    result = runner.invoke(app, ["ingest", str(loop), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "symlink loop" in result.output
    assert "no such file" not in result.output


def test_cli_folder_says_what_it_skipped_and_recursive_descends(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_geotiff(src / "top.tif", make_rgb_pattern(20, 30))
    write_geotiff(src / "sub" / "deep.tif", make_rgb_pattern(20, 30, seed=1))
    (src / "notes.txt").write_text("hello")
    app = build_app()
    out = str(tmp_path / "out")
    flat = runner.invoke(app, ["ingest", str(src), "--out", out, "--json"])
    assert flat.exit_code == 0
    assert f"skipped {src / 'sub'}: a subfolder; pass --recursive" in flat.output
    assert f"skipped {src / 'notes.txt'}: not a raster suffix" in flat.output
    assert [json.loads(line)["scene_id"] for line in flat.stdout.splitlines()] == ["top"]
    deep = runner.invoke(app, ["ingest", str(src), "--out", out, "--json", "--recursive"])
    assert deep.exit_code == 0
    statuses = {
        json.loads(line)["scene_id"]: json.loads(line)["status"]
        for line in deep.stdout.splitlines()
    }
    assert statuses == {"deep": "ingested", "top": "skipped"}
