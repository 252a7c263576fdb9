"""The demo scene and the library demo (no Prefect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_core.demo import run_demo, write_demo_scene
from lrs_core.errors import ConfigError
from lrs_core.outputs.parts import read_records
from lrs_core.world.annotations import read_dota

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A small demo scene (the real demo is 3000 x 2000 px).
SMALL_SCENE_WH = (1000, 700)
#: The demo scene's EPSG:32633 origin (500 km E, 4600 km N) lies near 15.0 E, 41.5 N.
LON_RANGE = (14.9, 15.1)
LAT_RANGE = (41.4, 41.6)


def test_demo_writes_the_output_layout_and_reruns_idle(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(out, size_wh=SMALL_SCENE_WH)
    assert [r["status"] for r in result.rows] == ["answered"] * 3 and result.n_failed == 0
    assert result.answers_parquet == out / "answers.parquet" and result.answers_geojson.is_file()
    assert [p.name for p in result.overlays] == ["demo-1.png", "demo-2.png", "demo-3.png"]
    assert (out / "stores" / "demo_scene.zarr").is_dir() and result.run_id is None
    assert sorted(r.question_id for r in read_records(out)) == ["demo-1", "demo-2", "demo-3"]
    features = json.loads(result.answers_geojson.read_text())["features"]
    located = [f for f in features if f["geometry"] is not None]
    lon, lat = located[0]["geometry"]["coordinates"][0][0]
    assert LON_RANGE[0] < lon < LON_RANGE[1] and LAT_RANGE[0] < lat < LAT_RANGE[1]

    checks = result.checks()
    assert [c.question_id for c in checks] == ["demo-1", "demo-2", "demo-3"]
    truth = {q.question_id: q.ground_truth for q in result.scene.questions}
    assert all(c.ground_truth == truth[c.question_id] for c in checks)
    assert all(c.evidence_coverage is not None and 0 <= c.evidence_coverage <= 1 for c in checks)

    parts = sorted(result.answers_parquet.iterdir())
    again = run_demo(out, size_wh=SMALL_SCENE_WH)
    assert [r["status"] for r in again.rows] == ["skipped"] * 3
    assert sorted(result.answers_parquet.iterdir()) == parts


def test_demo_scene_is_reused_and_checked(tmp_path: Path) -> None:
    scene = write_demo_scene(tmp_path, size_wh=SMALL_SCENE_WH)
    stamp = scene.scene_path.stat().st_mtime_ns
    assert write_demo_scene(tmp_path, size_wh=SMALL_SCENE_WH) == scene
    assert scene.scene_path.stat().st_mtime_ns == stamp
    assert [q.category for q in scene.questions] == [
        "object color",
        "object category",
        "rural or urban",
    ]
    assert all(q.hbox is not None for q in scene.questions)  # each asks about one object
    annotation = read_dota(tmp_path / "demo_scene.txt")
    assert annotation.image_source == "lrs-world" and annotation.objects
    with pytest.raises(ConfigError, match="landscape"):
        write_demo_scene(tmp_path / "tall", size_wh=(700, 1000))
