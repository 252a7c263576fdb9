"""``lrs demo`` and the demo flow under Prefect's test harness, on a small demo scene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.demo import run_demo
from lrs_core.cli import build_app
from lrs_core.cli.demo import PREFECT_ENV_DEFAULTS
from lrs_core.demo import write_demo_scene
from lrs_core.errors import ConfigError
from lrs_core.outputs.parts import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A demo scene just big enough for the planted objects (the real demo is 3000 x 2000 px).
SMALL_SCENE_WH = (1000, 700)
#: The demo scene's EPSG:32633 origin (500 km E, 4600 km N) lies near 15.0 E, 41.5 N.
LON_RANGE = (14.9, 15.1)
LAT_RANGE = (41.4, 41.6)


def test_demo_writes_the_output_layout_and_reruns_idle(
    prefect_harness: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, size_wh=SMALL_SCENE_WH)
    assert [r["status"] for r in result.rows] == ["answered"] * 3 and result.n_failed == 0
    assert result.answers_parquet == out / "answers.parquet" and result.answers_geojson.is_file()
    assert [p.name for p in result.overlays] == ["demo-1.png", "demo-2.png", "demo-3.png"]
    assert sorted(r.question_id for r in read_records(out)) == ["demo-1", "demo-2", "demo-3"]
    assert all(r.scene.is_georeferenced for r in read_records(out))
    features = json.loads(result.answers_geojson.read_text())["features"]
    located = [f for f in features if f["geometry"] is not None]
    assert located  # the kept tokens' footprints, on the map
    lon, lat = located[0]["geometry"]["coordinates"][0][0]
    assert LON_RANGE[0] < lon < LON_RANGE[1] and LAT_RANGE[0] < lat < LAT_RANGE[1]
    assert result.flow_run_id is not None

    parts = sorted(result.answers_parquet.iterdir())
    again = run_demo(out, size_wh=SMALL_SCENE_WH)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3
    assert sorted(result.answers_parquet.iterdir()) == parts


def test_cli_exits_1_when_questions_fail(
    prefect_harness: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PREFECT_ENV_DEFAULTS.items():  # restored after the test
        monkeypatch.setenv(name, value)
    args = ["demo", "--out", str(tmp_path / "cli"), "--scene-size", "1000x700", "--json"]
    # 100 vision tokens cannot hold the thumbnail: every question fails, and says why.
    result = CliRunner().invoke(build_app(), [*args, "--preset", "thumbnail", "--budget", "100"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["status"] for r in report["rows"]] == ["failed"] * 3
    assert all("TokenBudgetError" in r["error"] for r in report["rows"])
    assert report["flow_run_url"].startswith("http://127.0.0.1:4200/runs/flow-run/")
    usage = CliRunner().invoke(build_app(), [*args, "--scene-size", "big"])
    assert usage.exit_code == 2


def test_demo_scene_is_reused_and_checked(tmp_path: Path) -> None:
    scene = write_demo_scene(tmp_path, size_wh=SMALL_SCENE_WH)
    stamp = scene.scene_path.stat().st_mtime_ns
    assert write_demo_scene(tmp_path, size_wh=SMALL_SCENE_WH) == scene
    assert scene.scene_path.stat().st_mtime_ns == stamp
    assert [q.category for q in scene.questions] == ["object color", "count", "rural or urban"]
    with pytest.raises(ConfigError, match="landscape"):
        write_demo_scene(tmp_path / "tall", size_wh=(700, 1000))
