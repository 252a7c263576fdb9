"""Prediction files can be trusted: an id is never read twice, torn lines never block a resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import answered_ids, read_predictions
from lrs_core.evaluation.mme import score_file
from lrs_core.evaluation.runner import prepare_output
from lrs_core.evaluation.scoring import read_prediction_rows


def _line(question_id: str, text: str, **extra: Any) -> str:
    row = {"question_id": question_id, "text": text, "ground_truth": "1", "category": "count"}
    return json.dumps(row | extra) + "\n"


def test_resume_drops_torn_and_repeated_lines_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "pred.jsonl"
    out.write_text(
        _line("FAIR_1", "1")
        + '{"question_id": "FAIR_2", "te\n'  # a torn line in the middle (two writers)
        + _line("FAIR_3", "3")
        + _line("FAIR_1", "9")
        + _line("FAIR_4", "", error="WeightsError: boom")
    )
    with caplog.at_level(logging.WARNING):
        done, n_failed = prepare_output(out, id_key="question_id")
    assert done == {"FAIR_1", "FAIR_3"} and n_failed == 1
    assert "1 line(s) that are not JSON" in caplog.text
    assert "1 repeated answer(s)" in caplog.text
    assert out.read_text() == _line("FAIR_1", "1") + _line("FAIR_3", "3")  # kept lines unchanged
    assert prepare_output(out, id_key="question_id") == ({"FAIR_1", "FAIR_3"}, 0)


def test_an_empty_prediction_file_is_a_file_with_nothing_done(tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    out.write_bytes(b"")
    assert prepare_output(out, id_key="question_id") == (set(), 0)
    assert answered_ids(out) == set()


def test_a_line_of_another_file_is_still_refused(tmp_path: Path) -> None:
    out = tmp_path / "pred.jsonl"
    out.write_text('{"Question_id": "x"}\n')
    with pytest.raises(DatasetError, match="right file"):
        prepare_output(out, id_key="question_id")


def test_readers_never_yield_an_id_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        _line("FAIR_1", "", error="boom") + _line("FAIR_2", "2") + _line("FAIR_2", "7")
    )
    second.write_text(_line("FAIR_1", "1"))
    with caplog.at_level(logging.WARNING, logger="lrs_core.dedupe"):
        rows = read_prediction_rows([first, second, first])  # a file given twice is read once
    assert [(r["question_id"], r["text"]) for r in rows] == [("FAIR_1", "1"), ("FAIR_2", "2")]
    assert "1 duplicate answer(s)" in caplog.text
    assert [p.question_id for p in read_predictions(first)] == ["FAIR_1", "FAIR_2"]
    assert [p.text for p in read_predictions(first)] == ["", "2"]


def test_mme_scores_each_question_once(tmp_path: Path) -> None:
    item = {
        "Question_id": "rs/1",
        "Image": "remote_sensing/1.png",
        "Text": "How many?",
        "Answer choices": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) 5"],
        "Ground truth": "B",
        "Category": "count",
        "Subtask": "Remote Sensing",
        "Task": "Perception",
    }
    path = tmp_path / "mme.jsonl"
    path.write_text(
        json.dumps(item | {"Output": "B"}) + "\n" + json.dumps(item | {"Output": "B"}) + "\n"
    )
    score = score_file(path)
    assert (score.n_correct, score.n_total) == (1, 1)
