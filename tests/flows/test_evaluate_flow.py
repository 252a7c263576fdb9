"""The evaluate flow run for real under Prefect's test harness, on a tiny synthetic benchmark."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flows.evaluate import EvaluationFailedError, evaluate
from lrs_core.errors import DatasetError
from lrs_core.evaluation.runner import chunk_output_path
from lrs_core.evaluation.synth import SynthConfig, SynthSet, write_synthetic_set
from lrs_core.evaluation.wordnet import find_wordnet_dir

TINY_SYNTH = SynthConfig(
    seed=5,
    n_scenes=2,
    side_px=480,
    large_side_px=640,
    objects_per_scene=4,
    min_object_px=8,
    max_object_px=48,
)
FAST_OVERRIDES = {"max_new_tokens": 2}


def _has_wordnet() -> bool:
    try:
        find_wordnet_dir()
    except DatasetError:
        return False
    return True


async def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in artifacts if artifact.key}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    """Two small scenes: chunk 1 of 2 starts in the first, chunk 2 in the second."""
    return write_synthetic_set(tmp_path_factory.mktemp("synth"), config=TINY_SYNTH)


@pytest.mark.skipif(not _has_wordnet(), reason="scoring needs WordNet: run 'lrs setup' first")
def test_evaluate_runs_chunks_merges_scores_and_resumes(
    prefect_harness: Path, synth: SynthSet, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.jsonl"
    params: dict[str, Any] = {
        "benchmark": "lrs-vqa",
        "data_root": str(synth.data_root),
        "model": str(tiny_model_dir),
        "preset": "thumbnail",
        "out": str(out),
        "limit": 1,
        "num_chunks": 2,
        "overrides": FAST_OVERRIDES,
    }
    state = evaluate(**params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert [c["n_answered"] for c in result["chunks"]] == [1, 1]
    for chunk_idx in range(2):
        assert chunk_output_path(out, chunk_idx=chunk_idx, num_chunks=2).is_file()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    half = -(-len(synth.questions) // 2)  # ceil: the reference's chunk size
    assert [line["question_id"] for line in lines] == [
        synth.questions[0].question_id,
        synth.questions[half].question_id,
    ]
    report = result["report"]
    assert sum(len(g["categories"]) for g in report["scores"]["datasets"].values()) == 2
    assert report["focus"] is not None and result["problems"] == []

    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    summary = artifacts["evaluate-summary"].data
    assert "## Scores (accuracy, %)" in summary and "| FAIR | OA |" in summary
    assert "## Focus (fractions)" in summary
    table = artifacts["evaluate-scores"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["category"] for row in table} >= {"OA", "AA", "mean AA"}

    # Idempotent: nothing left to answer, so no model is loaded (and no second WordNet load).
    again = evaluate(**{**params, "score": False})
    assert [c["n_answered"] for c in again["chunks"]] == [0, 0]
    assert [c["n_already_done"] for c in again["chunks"]] == [1, 1]
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert again["report"] is None


def test_evaluate_fails_loudly_when_the_model_does_not_load(
    prefect_harness: Path, synth: SynthSet, tmp_path: Path
) -> None:
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    state = evaluate(
        benchmark="lrs-vqa",
        data_root=str(synth.data_root),
        model=str(broken),
        preset="thumbnail",
        out=str(tmp_path / "pred.jsonl"),
        limit=1,
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(EvaluationFailedError, match="chunk 1/1 failed"):
        state.result()
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    assert "not-a-model" in artifacts["evaluate-summary"].data
