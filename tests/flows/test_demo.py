"""The ``lrs-demo`` flow under Prefect's test harness, on a small demo scene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.demo import run_demo
from lrs_core.outputs.parts import read_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A small demo scene (the real demo is 3000 x 2000 px).
SMALL_SCENE_WH = (1000, 700)
#: The demo scene's EPSG:32633 origin (500 km E, 4600 km N) lies near 15.0 E, 41.5 N.
LON_RANGE = (14.9, 15.1)
LAT_RANGE = (41.4, 41.6)


def test_demo_flow_writes_the_output_layout_and_reruns_idle(
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
    assert result.run_id is not None  # the flow run's id

    parts = sorted(result.answers_parquet.iterdir())
    again = run_demo(out, size_wh=SMALL_SCENE_WH)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3
    assert sorted(result.answers_parquet.iterdir()) == parts
