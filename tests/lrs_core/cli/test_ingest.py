from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.raster.pyramid import open_pyramid
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

#: Every finished store a test here writes is verified afterwards (lrs verify).
pytestmark = pytest.mark.usefixtures("verify_written_stores")

runner = CliRunner()


def _lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_ingest_json_then_skip(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "scene.tif", make_rgb_pattern(70, 90))
    app = build_app()
    result = runner.invoke(app, ["ingest", str(source), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    (record,) = _lines(result.stdout)
    assert (
        record["scene_id"] == "scene" and record["status"] == "ingested" and record["error"] is None
    )
    assert record["level_shapes"] == [[70, 90]]
    assert open_pyramid(record["store"]).size_wh == (90, 70)
    again = runner.invoke(app, ["ingest", str(source), "--out", str(tmp_path / "out"), "--json"])
    assert again.exit_code == 0 and _lines(again.stdout)[0]["status"] == "skipped"


def test_ingest_folder_with_a_bad_file_exits_1(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "good.tif", make_rgb_pattern(40, 50))
    (src / "bad.tif").write_bytes(b"")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8) + 100).save(src / "plain.png")
    result = runner.invoke(
        build_app(), ["ingest", str(src), "--out", str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 1
    records = {r["scene_id"]: r for r in _lines(result.stdout)}
    assert records["good"]["status"] == "ingested" and records["plain"]["status"] == "ingested"
    assert records["bad"]["status"] == "failed" and "zero-byte" in records["bad"]["error"]


def test_ingest_id_bands_and_human_output(tmp_path: Path) -> None:
    planes = np.stack([np.full((30, 40), 10 * (i + 1), np.uint8) for i in range(4)])
    source = write_geotiff(tmp_path / "four.tif", planes)
    result = runner.invoke(
        build_app(),
        [
            "ingest",
            str(source),
            "--out",
            str(tmp_path / "out"),
            "--id",
            "named",
            "--bands",
            "4,3,2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ingested" in result.output and "named.zarr" in result.output
    pyramid = open_pyramid(tmp_path / "out" / "named.zarr")
    assert pyramid.attributes["lrs"]["band_map"] == [4, 3, 2]


def test_ingest_usage_errors_exit_2(tmp_path: Path) -> None:
    source = write_geotiff(tmp_path / "a.tif", make_rgb_pattern(20, 20))
    other = write_geotiff(tmp_path / "b.tif", make_rgb_pattern(20, 20))
    app = build_app()
    out = str(tmp_path / "out")
    assert (
        runner.invoke(app, ["ingest", str(source), "--out", out, "--bands", "1,x"]).exit_code == 2
    )
    assert (
        runner.invoke(app, ["ingest", str(source), "--out", out, "--bands", "1,2"]).exit_code == 2
    )
    assert (
        runner.invoke(app, ["ingest", str(source), str(other), "--out", out, "--id", "x"]).exit_code
        == 2
    )
    assert runner.invoke(app, ["ingest", str(source)]).exit_code == 2
    assert (
        runner.invoke(app, ["ingest", str(tmp_path / "empty_dir_missing"), "--out", out]).exit_code
        == 1
    )


def test_ingest_shows_plain_progress_per_scene_in_a_log(tmp_path: Path) -> None:
    """Standard error is not a terminal under CliRunner: plain lines, one round per scene."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for name in ("a", "b"):
        write_geotiff(folder / f"{name}.tif", make_rgb_pattern(60, 80))
    result = runner.invoke(build_app(), ["ingest", str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        lines = [x for x in result.stderr.splitlines() if x.startswith(f"ingest {name}.tif: ")]
        assert lines, result.stderr
        assert "(100%)" in lines[-1]
    assert "\x1b[" not in result.stderr
