"""The answer flow run for real under the Prefect test harness: outputs, failures, resume."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from flows.answer import answer_questions
from flows.outcome import QuestionsFailedError, run_result
from lrs_core.batch.requests import generated_id
from lrs_core.errors import DatasetError, OutputNotWritableError, WeightsError
from lrs_core.outputs.parts import read_records
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Seconds allowed for the server to record artifacts after the flow returns.
EVENTS_SETTLE_S = 60.0
QUESTION = "Where is the red roof?"


async def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in artifacts if a.key}


def _wait_for_artifacts(flow_run_id: Any, keys: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + EVENTS_SETTLE_S
    while True:
        found = asyncio.run(_artifacts(flow_run_id))
        if keys <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _part_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "answers.parquet").glob("part-*"))}


def test_flow_answers_reports_bad_items_and_resumes(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    raster = write_geotiff(tmp_path / "fresh.tif", make_rgb_pattern(200, 300, seed=3))
    stores = tmp_path / "stores"
    out = tmp_path / "out"
    requests = tmp_path / "requests.jsonl"
    rows = [
        {"scene": str(ingested_store), "question": QUESTION, "id": "store-q"},
        {"scene": str(raster), "question": "How many fields?", "id": "raster-q"},
        {"scene": str(ingested_store), "question": "Is there water?"},
        {"scene": "nowhere", "question": QUESTION, "id": "missing-q"},
        {"scene": str(ingested_store), "id": "no-text"},
        {"scene": "fresh", "question": "Is it urban?", "id": "by-id"},  # ingested in this run
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{this is not json")
    requests.write_text("\n".join(lines) + "\n")

    # A run killed after its first answer: only that answer is in the output folder.
    first_state = answer_questions(
        requests=[rows[0]],
        model=str(tiny_model_dir),
        preset="thumbnail",
        out=str(out),
        store=str(stores),
        return_state=True,
    )
    assert first_state.is_completed() and first_state.name == "Completed"  # all good: green
    first = first_state.result()
    assert [r["status"] for r in first] == ["answered"]
    before = _part_bytes(out)

    state = answer_questions(
        requests=str(requests),
        model=str(tiny_model_dir),
        preset="thumbnail",
        out=str(out),
        store=str(stores),
        return_state=True,
    )
    # Some questions failed: the run says so (Failed, with the count), its good answers are kept.
    assert state.is_failed(), (state.name, state.message)
    assert state.message.startswith("3 of 7 questions failed; see the table artifact")
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, QuestionsFailedError) and str(outcome) == state.message
    by_id = {r["question_id"]: r for r in outcome.result}
    assert run_result(state) == outcome.result
    auto_id = generated_id(str(ingested_store), "Is there water?")
    assert {k: r["status"] for k, r in by_id.items()} == {
        "store-q": "skipped",
        "raster-q": "answered",
        auto_id: "answered",
        "missing-q": "failed",
        "row-4": "failed",
        "no-text": "failed",
        "by-id": "answered",
    }
    assert "neither a store path" in by_id["missing-q"]["error"]
    assert "not a JSON object" in by_id["row-4"]["error"]
    assert "no question" in by_id["no-text"]["error"]
    assert (stores / "fresh.zarr").is_dir()  # the raster was ingested first

    # Finished answers are never rewritten; the rerun added one part per new answer.
    after = _part_bytes(out)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 3
    assert sorted(r.question_id for r in read_records(out)) == sorted(
        ["store-q", "raster-q", auto_id, "by-id"]
    )
    geojson = json.loads((out / "answers.geojson").read_text())
    assert {f["properties"]["question_id"] for f in geojson["features"]} == {
        "store-q",
        "raster-q",
        auto_id,
        "by-id",
    }
    assert (out / "overlays" / "raster-q.png").is_file()

    artifacts = _wait_for_artifacts(
        state.state_details.flow_run_id,
        {"answer-questions-answers", "answer-questions-summary", "answer-questions-overlays"},
    )
    summary = artifacts["answer-questions-summary"].data
    assert "- answered: 3" in summary and "- failed: 3" in summary
    assert "Savings against the `full` baseline" in summary and "| vision tokens" in summary
    assert "neither a store path" in summary
    table = artifacts["answer-questions-answers"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["question_id"] for row in table} == set(by_id)
    assert "raster-q.png" in artifacts["answer-questions-overlays"].data

    # Nothing left: a third run answers nothing and writes nothing; the bad rows still fail it,
    # and a direct call (no return_state) raises.
    with pytest.raises(QuestionsFailedError, match="3 of 7 questions failed") as raised:
        answer_questions(
            requests=str(requests),
            model=str(tiny_model_dir),
            preset="thumbnail",
            out=str(out),
            store=str(stores),
        )
    assert sum(r["status"] == "answered" for r in raised.value.result) == 0
    assert _part_bytes(out) == after


def test_bad_model_or_output_fails_before_writing(
    prefect_harness: Path, tmp_path: Path, tiny_model_dir: Path, ingested_store: Path
) -> None:
    request = [{"scene": str(ingested_store), "question": QUESTION}]
    out = tmp_path / "out"
    with pytest.raises(WeightsError):
        answer_questions(requests=request, model=str(tmp_path / "no-model"), out=str(out))
    assert not out.exists()
    with pytest.raises(DatasetError, match="requests file not found"):
        answer_questions(requests=str(tmp_path / "none.csv"), model=str(tiny_model_dir))

    try:  # root may write anywhere on disk; /sys refuses even root
        os.makedirs("/sys/lrs-out-check")
    except PermissionError:
        with pytest.raises(OutputNotWritableError, match="cannot be written"):
            answer_questions(
                requests=request,
                model=str(tiny_model_dir),
                preset="thumbnail",
                out="/sys/lrs-out-check",
            )
    else:  # pragma: no cover - depends on the host
        os.rmdir("/sys/lrs-out-check")
        pytest.skip("this host lets the test user write under /sys")
