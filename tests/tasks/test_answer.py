"""The answer task (through ``.fn()``), its engine cache and the artifact helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from lrs_core.errors import SceneNotFoundError
from lrs_core.outputs.parts import read_records
from tasks.answer import GPU_TAG, answer_scene_task
from tasks.artifacts import answers_table, overlays_markdown, savings, summary_markdown

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [
    {"question_id": "red", "question": "Where is the red roof?"},
    {"question_id": "count", "question": "How many cars are there?"},
]


def test_task_answers_appends_and_skips_on_rerun(
    tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    out = tmp_path / "out"
    with disable_run_logger():
        first = answer_scene_task.fn(
            str(ingested_store),
            QUESTIONS[:1],
            str(tiny_model_dir),
            str(out),
            scene_id="scene",
            preset="thumbnail",
        )
        second = answer_scene_task.fn(
            str(ingested_store),
            QUESTIONS,
            str(tiny_model_dir),
            str(out),
            scene_id="scene",
            preset="thumbnail",
        )
    assert [r["status"] for r in first] == ["answered"]
    assert {r["question_id"]: r["status"] for r in second} == {
        "red": "skipped",
        "count": "answered",
    }
    row = first[0]
    # Small JSON-able values only (task results are pickled by Prefect): never arrays.
    assert all(isinstance(v, (str, int, float, type(None))) for v in row.values())
    assert row["scene_id"] == "scene" and row["error"] is None
    assert 0 < row["vision_tokens"] < row["full_vision_tokens"]
    assert 0 < row["flops"] < row["full_flops"]
    assert Path(row["overlay"]).is_file()
    parts = sorted((out / "answers.parquet").iterdir())
    assert len(parts) == 2  # one part per answer: a kill loses at most the question in flight
    assert [r.question_id for r in read_records(out)] == ["red", "count"]


def test_task_raises_for_a_missing_store(tmp_path: Path, tiny_model_dir: Path) -> None:
    with disable_run_logger(), pytest.raises(SceneNotFoundError):
        answer_scene_task.fn(
            str(tmp_path / "nowhere.zarr"),
            QUESTIONS,
            str(tiny_model_dir),
            str(tmp_path / "o"),
            scene_id="nowhere",
        )
    assert not (tmp_path / "o").exists()


def test_task_carries_the_gpu_tag() -> None:
    assert GPU_TAG in answer_scene_task.tags and GPU_TAG == "gpu"


def test_summary_lists_failures_and_savings() -> None:
    rows = [
        {
            "question_id": "a",
            "scene": "s.zarr",
            "scene_id": "s",
            "question": "What | is it?",
            "status": "answered",
            "answer": "a ship",
            "error": None,
            "vision_tokens": 250,
            "flops": 1.0e12,
            "full_vision_tokens": 1000,
            "full_flops": 4.0e12,
            "seconds": 1.5,
            "overlay": "https://example.org/a.png",
        },
        {
            "question_id": "b",
            "scene": "gone",
            "scene_id": None,
            "question": "Where?",
            "status": "failed",
            "answer": None,
            "error": "scene 'gone' is neither a store path",
        },
        {"question_id": "c", "scene": "s", "question": "x", "status": "skipped", "answer": None},
    ]
    saved = savings(rows)
    assert saved["n"] == 1 and saved["token_saving"] == pytest.approx(0.75)
    assert saved["flop_saving"] == pytest.approx(0.75)
    text = summary_markdown(rows, out="/o", model="/m", preset="default")
    assert "- answered: 1" in text and "- failed: 1" in text and "- skipped" in text
    assert "| vision tokens to the LLM | 250 | 1000 | 75.0% |" in text
    assert "## Failures" in text and "neither a store path" in text
    assert "What \\| is it?" in text  # pipes escaped in table cells
    assert "![a](https://example.org/a.png)" in overlays_markdown(rows)
    table = answers_table(rows)
    assert table[0]["tflops"] == 1.0 and table[1]["status"] == "failed"
    nothing = summary_markdown(rows[1:], out="/o", model="/m", preset="default")
    assert "nothing to compare" in nothing
    assert "on the map" not in text
    linked = summary_markdown(
        rows, out="/data/run 7/", model="/m", preset="default", serve_url="http://127.0.0.1:8000/"
    )
    assert "[Open these answers on the map](http://127.0.0.1:8000/?run=run+7)" in linked


class Killed(BaseException):
    """Stands for the process dying (SIGKILL cannot be caught, so a BaseException plays it)."""


def test_a_killed_task_resumes_with_only_the_missing_answers(
    tmp_path: Path,
    tiny_model_dir: Path,
    ingested_store: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lrs_core.outputs.parts import BatchWriter

    out = tmp_path / "out"
    questions = [*QUESTIONS, {"question_id": "water", "question": "Is there water?"}]
    original_append = BatchWriter.append
    calls: list[str] = []

    def append_then_die(self: BatchWriter, records, *, pyramid=None):  # type: ignore[no-untyped-def]
        calls.append(records[0].question_id)
        if len(calls) == 2:
            raise Killed  # dies while writing the second answer: nothing of it is kept
        return original_append(self, records, pyramid=pyramid)

    monkeypatch.setattr(BatchWriter, "append", append_then_die)
    with disable_run_logger(), pytest.raises(Killed):
        answer_scene_task.fn(
            str(ingested_store),
            questions,
            str(tiny_model_dir),
            str(out),
            scene_id="scene",
            preset="thumbnail",
        )
    monkeypatch.setattr(BatchWriter, "append", original_append)
    first_part = {p.name: p.read_bytes() for p in (out / "answers.parquet").glob("part-*")}
    assert [r.question_id for r in read_records(out)] == ["red"]

    with disable_run_logger():
        rows = answer_scene_task.fn(
            str(ingested_store),
            questions,
            str(tiny_model_dir),
            str(out),
            scene_id="scene",
            preset="thumbnail",
        )
    assert {r["question_id"]: r["status"] for r in rows} == {
        "red": "skipped",
        "count": "answered",
        "water": "answered",
    }
    assert [r.question_id for r in read_records(out)] == ["red", "count", "water"]
    for name, data in first_part.items():  # the finished answer was not rewritten
        assert (out / "answers.parquet" / name).read_bytes() == data
