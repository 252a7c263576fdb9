"""Tests of the ask API: question files, engine loading, answering a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_core.batch.ask import Question, answer_questions, load_engine, read_questions_file
from lrs_core.errors import ConfigError, DatasetError, SceneNotFoundError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reads_jsonl_csv_and_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(
        json.dumps({"question_id": "a", "question": "What is red?"})
        + "\n\n"
        + json.dumps({"id": 7, "text": " Where? "})
        + "\n"
        + json.dumps({"question": "No id"})
        + "\n"
    )
    assert read_questions_file(jsonl) == [
        Question("a", "What is red?"),
        Question("7", "Where?"),
        Question("q4", "No id"),
    ]
    table = tmp_path / "q.csv"
    table.write_text("question_id,question\nx,How many?\ny,Is it big?\n")
    assert read_questions_file(table) == [Question("x", "How many?"), Question("y", "Is it big?")]
    text = tmp_path / "q.txt"
    text.write_text("First?\n\nSecond?\n")
    assert read_questions_file(text) == [Question("q1", "First?"), Question("q3", "Second?")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"question": "ok"}\n{not json}\n', r"bad.jsonl:2: not a JSON object"),
        ("bad2.jsonl", '{"question_id": "a"}\n', r"bad2.jsonl:1: no question text"),
        ("bad3.jsonl", "[1, 2]\n", r"bad3.jsonl:1: expected a JSON object"),
        ("bad.csv", "id,query\n1,x\n", r"bad.csv:1: the CSV header"),
        ("bad2.csv", "question_id,question\na,ok\nb,\n", r"bad2.csv:3: no question text"),
        ("dup.jsonl", '{"id": "a", "question": "x"}\n{"id": "a", "question": "y"}\n', "twice"),
        ("empty.txt", "\n\n", "no questions"),
    ],
)
def test_bad_question_files_name_file_and_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_questions_file(path)


def test_missing_questions_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_questions_file(tmp_path / "none.jsonl")


def test_load_engine_and_answer_a_store(tiny_model_dir: Path, ingested_store: Path) -> None:
    engine = load_engine(
        tiny_model_dir, preset="parity", budget=900, overrides={"max_new_tokens": 2}
    )
    assert engine.config.preset == "parity" and engine.config.budget.token_budget == 900
    questions = [Question("a", "What is the color of the roof?"), Question("b", "Is there a lake?")]
    seen: list[tuple[int, int]] = []
    records = answer_questions(
        engine, ingested_store, questions, progress=lambda d, t: seen.append((d, t))
    )
    assert [r.question_id for r in records] == ["a", "b"]
    assert seen == [(1, 2), (2, 2)]
    assert all(r.error is None and r.accounting.vision_tokens_to_llm <= 900 for r in records)
    assert records[0].scene.size_wh == (1000, 700)


def test_failed_questions_get_error_records(tiny_model_dir: Path, ingested_store: Path) -> None:
    engine = load_engine(tiny_model_dir, preset="thumbnail", budget=100)
    (record,) = answer_questions(engine, ingested_store, [Question("a", "What is red?")])
    assert record.error is not None and "TokenBudgetError" in record.error and record.answer == ""


def test_load_engine_rejects_bad_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        load_engine(tiny_model_dir, preset="fancy")
    with pytest.raises(ConfigError, match="dtype"):
        load_engine(tiny_model_dir, dtype="float8")
    engine = load_engine(tiny_model_dir, preset="thumbnail")
    with pytest.raises(SceneNotFoundError):
        answer_questions(engine, tmp_path / "none.zarr", [Question("a", "x")])


def test_plan_without_weights_equals_plan_with_them(
    tiny_model_dir: Path, ingested_store: Path
) -> None:
    from lrs_core.models.flops import KNOWN_DIMS
    from lrs_core.raster.pyramid import open_pyramid

    pyramid = open_pyramid(ingested_store)
    shapes_only = load_engine(tiny_model_dir, preset="default", weights=False)
    assert shapes_only.model.device.type == "meta"
    loaded = load_engine(tiny_model_dir, preset="default")
    planned = shapes_only.plan(pyramid, "What is red?").to_dict()
    again = loaded.plan(pyramid, "What is red?").to_dict()
    assert planned["accounting"] == again["accounting"]
    big = load_engine(tiny_model_dir, preset="default", weights=False)
    big.dims = KNOWN_DIMS["qwen2-7b"]
    assert big.plan(pyramid, "What is red?").accounting.flops.total_flops > 1e12
