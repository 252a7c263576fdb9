"""The answers folder can be trusted: honest CRS, one row per id, no dead part, no lost overlay."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import geopandas
import pytest

from lrs_core.outputs.parts import (
    BatchCounts,
    BatchWriter,
    answered_ids,
    read_answers_table,
    read_records,
)
from lrs_core.raster.pyramid import open_pyramid
from lrs_core.records import AnswerRecord
from tests.lrs_core.outputs.test_writers import FakePyramid, make_record, make_scene


def _with_answer(record: AnswerRecord, answer: str) -> AnswerRecord:
    return AnswerRecord.from_dict({**record.to_dict(), "answer": answer})


def test_folder_as_one_table_never_labels_pixel_boxes_as_lonlat(
    ingested_store: Path, ingested_png_store: Path, tmp_path: Path
) -> None:
    geo_pyramid, png_pyramid = open_pyramid(ingested_store), open_pyramid(ingested_png_store)
    assert not png_pyramid.scene_ref().is_georeferenced  # a real PNG scene: pixels only
    out = tmp_path / "out"
    writer = BatchWriter(out, overlay_side_px=64)
    # the georeferenced part first: its metadata used to label the whole folder EPSG:4326
    writer.append([make_record(geo_pyramid.scene_ref(), "geo")], pyramid=geo_pyramid)
    writer.append([make_record(png_pyramid.scene_ref(), "png")], pyramid=png_pyramid)

    for frame in (geopandas.read_parquet(out / "answers.parquet"), read_answers_table(out)):
        frame = frame.set_index("question_id")
        assert frame.crs.to_epsg() == 4326
        assert frame.geometry["png"] is None or frame.geometry.isna()["png"]
        lon0, lat0, lon1, lat1 = frame.geometry["geo"].bounds
        assert -180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90
        assert frame["geometry_px"].crs is None
        assert frame["geometry_px"]["png"].bounds == pytest.approx((250, 0, 1000, 700))
        assert list(frame["is_georeferenced"]) == [True, False]
    features = json.loads((out / "answers.geojson").read_text())["features"]
    png_features = [f for f in features if f["properties"]["question_id"] == "png"]
    assert png_features and all(f["geometry"] is None for f in png_features)


def test_an_id_written_twice_is_read_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    scene = make_scene()
    writer = BatchWriter(out, refresh_geojson=False)
    writer.append([_with_answer(make_record(scene, "q1"), "first")])
    writer.append([make_record(scene, "q2", error="model failed")])
    # a second writer (before locks) appended the same answers again
    other = BatchWriter(out, refresh_geojson=False)
    other.append([_with_answer(make_record(scene, "q1"), "second")])
    other.append([_with_answer(make_record(scene, "q2"), "retried")])
    other.append([_with_answer(make_record(scene, "q2"), "retried twice")])
    with caplog.at_level(logging.WARNING, logger="lrs_core.dedupe"):
        records = read_records(out)
    assert [(r.question_id, r.answer) for r in records] == [("q1", "first"), ("q2", "retried")]
    assert "2 duplicate answer(s)" in caplog.text
    assert len(read_records(out, unique=False)) == 5
    table = read_answers_table(out)
    assert list(table["question_id"]) == ["q1", "q2"]
    assert list(table["answer"]) == ["first", "retried"]
    features = json.loads(Path(writer.finalize()).read_text())["features"]
    answers = [
        f["properties"]["question_id"] for f in features if f["properties"]["kind"] == "answer"
    ]
    assert answers == ["q1", "q2"]
    assert writer.counts == BatchCounts(answered=1, failed=1)


def test_an_empty_or_corrupt_part_is_treated_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    writer = BatchWriter(out)
    writer.append([make_record(make_scene(), "q1")])
    parts = out / "answers.parquet"
    (parts / "part-00001.parquet").write_bytes(b"")  # a crash of the disk, not of a writer
    (parts / "part-00002.parquet").write_bytes(b"PAR1 not really")
    with caplog.at_level(logging.WARNING, logger="lrs_core.outputs.parts"):
        assert answered_ids(out) == {"q1"}
    assert caplog.text.count("treated as absent") == 2
    writer.append([make_record(make_scene(), "q2")])  # resume goes on
    assert sorted(p.name for p in parts.iterdir())[-1] == "part-00003.parquet"
    assert [r.question_id for r in read_records(out)] == ["q1", "q2"]
    assert len(read_answers_table(out)) == 2


class Killed(BaseException):
    """Stands for the process dying between two writes (SIGKILL cannot be caught)."""


def test_a_kill_between_overlay_and_part_loses_no_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    record = make_record(make_scene(), "q1")

    def die(self: BatchWriter, records: object) -> str:
        raise Killed

    monkeypatch.setattr(BatchWriter, "_write_part", die)
    with pytest.raises(Killed):
        BatchWriter(out, overlay_side_px=64).append([record], pyramid=FakePyramid())
    monkeypatch.undo()
    # the answer is not marked done (no part), so a resume answers it again ...
    assert answered_ids(out) == set()
    assert (out / "overlays" / "q1.png").is_file()  # ... and its overlay is already there
    resumed = BatchWriter(out, overlay_side_px=64)
    resumed.append([record], pyramid=FakePyramid())
    assert answered_ids(out) == {"q1"}
    for answered in answered_ids(out):  # every answer marked done has its overlay
        assert Path(resumed.overlay_path(answered)).is_file()
    assert not (tmp_path / "out.lock.holder").exists()  # the killed writer left no holder record


#: Fresh interpreters that read the answers; the abort it guards against hit about 4 runs in 10.
EXIT_RUNS = 6


def test_a_process_that_read_answers_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    scene = make_scene()
    writer = BatchWriter(out, refresh_geojson=False)
    for index in range(3):
        writer.append([make_record(scene, f"q{index}")])
    code = (
        "import sys\n"
        "from lrs_core.outputs.parts import read_records\n"
        "print(len(read_records(sys.argv[1])))\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    for _ in range(EXIT_RUNS):
        done = subprocess.run(
            [sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env
        )
        assert (done.returncode, done.stdout.strip()) == (0, "3"), done.stderr[-500:]
