"""The one reader of requests and questions: CSV, JSONL, Parquet, text and lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrs_core.batch.requests import (
    Question,
    generated_id,
    read_questions,
    read_requests,
    standing_requests,
)
from lrs_core.errors import DatasetError


def test_read_requests_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "r.csv"
    table.write_text('scene,question,id\na.zarr,"Where, exactly?",x\nb,What?,\n,No scene?,z\n')
    found, problems = read_requests(str(table))
    assert [(r.scene, r.question, r.question_id) for r in found] == [
        ("a.zarr", "Where, exactly?", "x"),
        ("b", "What?", generated_id("b", "What?")),
    ]
    assert [p.question_id for p in problems] == ["z"] and "no scene" in problems[0].error
    assert problems[0].error.startswith(f"{table}:4:")
    assert generated_id("/s/b.zarr", "What?") == generated_id("b.tif", "What?")  # stable id
    parquet = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([{"scene": "a", "question": "Q?", "id": "p"}]), parquet)
    assert [r.question_id for r in read_requests(str(parquet))[0]] == ["p"]
    with pytest.raises(DatasetError, match="header"):
        (tmp_path / "bad.csv").write_text("image_path,query\n1,2\n")
        read_requests(str(tmp_path / "bad.csv"))


def test_read_requests_jsonl_and_lists_report_bad_rows(tmp_path: Path) -> None:
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text(
        '{"scene": "a", "question": "Q?", "id": "one"}\n{oops\n[1]\n'
        '{"scene": "a", "question": "Again?", "id": "one"}\n'
    )
    found, problems = read_requests(jsonl)
    assert [r.question_id for r in found] == ["one"]
    assert [p.question_id for p in problems] == ["row-2", "row-3", "one"]
    assert "r.jsonl:2: not a JSON object" in problems[0].error
    assert "expected a JSON object, got list" in problems[1].error
    assert "used by an earlier row" in problems[2].error
    found, problems = read_requests([{"scene": "s", "text": "T?"}, "nope"])  # type: ignore[list-item]
    assert found[0].question == "T?" and problems[0].question_id == "row-2"
    with pytest.raises(DatasetError, match="requests file not found"):
        read_requests(tmp_path / "none.csv")
    (tmp_path / "r.txt").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unknown requests format"):
        read_requests(tmp_path / "r.txt")


def test_read_questions_from_lists_and_standing_requests() -> None:
    assert read_questions(["A?", "B?"]) == [Question("q1", "A?"), Question("q2", "B?")]
    assert read_questions([{"question_id": "x", "question": "C?"}]) == [Question("x", "C?")]
    with pytest.raises(DatasetError, match="appears twice"):
        read_questions([{"question_id": "x", "question": "C?"}, {"id": "x", "text": "D?"}])
    with pytest.raises(DatasetError, match="no question text"):
        read_questions([{"question_id": "x"}])
    with pytest.raises(DatasetError, match="no questions found"):
        read_questions([])
    asked = standing_requests(
        [("s1", "/st/s1.zarr"), ("s2", "/st/s2.zarr")],
        [Question("a", "A?"), Question("b", "B?")],
        answered={"s1-a"},
    )
    assert [r["id"] for r in asked] == ["s1-b", "s2-a", "s2-b"]
    assert asked[0] == {"scene": "/st/s1.zarr", "question": "B?", "id": "s1-b"}
