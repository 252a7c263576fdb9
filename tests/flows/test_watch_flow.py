"""The watch flow under Prefect's test harness: new scenes get the standing questions, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.outcome import QuestionsFailedError, run_result
from flows.watch import watch_folder
from lrs_core.outputs.parts import answered_ids, read_records
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_CONFIG = {"chunk_px": 64, "levels_per_pass": 2, "n_workers": 1, "min_long_side_px": 64}


def test_watch_answers_new_scenes_once(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_geotiff(inbox / "first.tif", make_rgb_pattern(180, 260, seed=1))
    questions = tmp_path / "standing.jsonl"
    questions.write_text(
        '{"question_id": "ships", "question": "How many ships?"}\n'
        '{"question_id": "land", "question": "Is this area rural or urban?"}\n'
    )
    params = {
        "inbox": str(inbox),
        "store": str(tmp_path / "stores"),
        "questions": str(questions),
        "model": str(tiny_model_dir),
        "out": str(tmp_path / "out"),
        "preset": "thumbnail",
        "ingest_config": SMALL_CONFIG,
    }
    first = watch_folder(**params)
    assert [r["status"] for r in first["scenes"]] == ["ingested"]
    assert sorted(a["question_id"] for a in first["answers"]) == ["first-land", "first-ships"]

    write_geotiff(inbox / "second.tif", make_rgb_pattern(150, 210, seed=2))
    second = watch_folder(**params)
    assert sorted(r["status"] for r in second["scenes"]) == ["ingested", "skipped"]
    assert sorted(a["question_id"] for a in second["answers"]) == ["second-land", "second-ships"]
    assert all(a["status"] == "answered" for a in second["answers"])

    third = watch_folder(**params)
    assert third["answers"] == []  # nothing new: nothing asked, nothing written
    assert sorted(r.question_id for r in read_records(tmp_path / "out")) == [
        "first-land",
        "first-ships",
        "second-land",
        "second-ships",
    ]

    # A tick whose questions fail (100 vision tokens cannot hold the thumbnail) ends Failed and
    # says how many; a direct call raises with the rows.
    write_geotiff(inbox / "third.tif", make_rgb_pattern(120, 170, seed=3))
    state = watch_folder(**params, budget=100, return_state=True)
    assert state.is_failed() and state.message.startswith("2 of 2 questions failed; see"), (
        state.message
    )
    assert sorted(a["status"] for a in run_result(state)["answers"]) == ["failed", "failed"]
    with pytest.raises(QuestionsFailedError, match="2 of 2 questions failed") as raised:
        watch_folder(**params, budget=100)
    assert [r["status"] for r in raised.value.result["scenes"]] == ["skipped"] * 3
    assert answered_ids(tmp_path / "out") == {
        "first-land",
        "first-ships",
        "second-land",
        "second-ships",
    }
