"""Flow ``watch-folder``: ingest what is new in an inbox and answer standing questions about it.

Made for a cron deployment (``watch-inbox`` in ``infra/prefect.yaml``). Each run ingests the inbox
with the ingest flow (finished scenes are skipped), then asks every standing question about every
scene of the inbox whose answer ``out`` does not hold yet, with the answer flow. A run that finds
nothing new does nothing, and a run killed half-way is completed by the next tick: the flow is
idempotent. Answer ids are ``<scene_id>-<question_id>``. A tick in which some questions failed ends
``Failed`` with their count (its other answers are written), so a schedule that keeps failing is
red in the UI rather than a row of green ``Completed`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.answer import ARTIFACT_KEY_PREFIX, answer_questions
from flows.ingest import ingest_scenes
from flows.outcome import outcome_of, run_result
from lrs_core.batch.requests import read_questions, standing_requests
from lrs_core.outputs.parts import answered_ids

SUMMARY_ARTIFACT_KEY = "watch-summary"
#: Ingest outcomes whose store is complete and can be asked about.
READY_STATUSES = ("ingested", "skipped")


@flow(name="watch-folder")
def watch_folder(
    inbox: str,
    store: str,
    questions: str | list[str] | list[dict[str, str]],
    model: str,
    out: str,
    preset: str = "default",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    ingest_config: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Ingest the inbox's new scenes and answer the standing questions about them.

    Args:
        inbox: folder (or glob) where new rasters land.
        store: folder of scene stores.
        questions: the standing questions: a file or a list of strings or dicts
            (:func:`lrs_core.batch.requests.read_questions`).
        model: the model directory.
        out: batch output folder shared by every run (answers accumulate there).
        preset: engine preset.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        ingest_config: :class:`lrs_core.ingest.IngestConfig` fields as JSON values.

    Returns:
        ``{"scenes": ingest rows, "answers": answer rows}`` (answers empty when nothing was new).
        When a question failed the run ends ``Failed`` ("N of M questions failed; see ...");
        ``state.result(raise_on_failure=False)`` of a ``return_state=True`` call is then a
        :class:`~flows.outcome.QuestionsFailedError` whose ``result`` is this dict.

    Raises:
        QuestionsFailedError: (called without ``return_state=True``) a question failed; its
            ``result`` is the dict above.
    """
    logger = get_run_logger()
    standing = read_questions(questions)
    scenes = ingest_scenes(sources=[inbox], store=store, config=ingest_config)
    ready = [row for row in scenes if row["status"] in READY_STATUSES and row.get("store")]
    done = answered_ids(out)
    requests = standing_requests(
        [(str(row["scene_id"]), str(row["store"])) for row in ready], standing, answered=done
    )
    new_scenes = sorted({r["scene"] for r in requests})
    logger.info(
        "%d scenes ready (%d failed to ingest); %d questions to answer about %d scenes",
        len(ready),
        sum(1 for row in scenes if row["status"] == "failed"),
        len(requests),
        len(new_scenes),
    )
    answers: list[dict[str, Any]] = []
    if requests:
        answers = run_result(  # also the rows of a run in which some questions failed
            answer_questions(
                requests=requests,
                model=model,
                preset=preset,
                out=out,
                store=store,
                budget=budget,
                device=device,
                dtype=dtype,
                return_state=True,
            )
        )
    lines = [
        "# Inbox watch",
        "",
        f"Inbox `{inbox}`, stores `{store}`, answers `{out}`.",
        "",
        f"- scenes ready: {len(ready)}; failed to ingest: "
        f"{sum(1 for row in scenes if row['status'] == 'failed')}",
        f"- scenes with new questions: {len(new_scenes)}",
        f"- answered: {sum(1 for a in answers if a['status'] == 'answered')}; failed: "
        f"{sum(1 for a in answers if a['status'] == 'failed')}",
    ]
    lines += [f"  - `{Path(scene).name}`" for scene in new_scenes]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n", key=SUMMARY_ARTIFACT_KEY, description="Inbox watch"
    )
    result = {"scenes": scenes, "answers": answers}
    return outcome_of(  # the run's final state says when some questions failed
        answers,
        result,
        see=f"the artifacts '{SUMMARY_ARTIFACT_KEY}' and '{ARTIFACT_KEY_PREFIX}-answers' "
        f"(answers in {out})",
    )


if __name__ == "__main__":
    import sys

    inbox, store, questions_file, model, out = sys.argv[1:6]
    watch_folder(inbox=inbox, store=store, questions=questions_file, model=model, out=out)
