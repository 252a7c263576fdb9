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
from flows.outcome import failed_run, run_result
from lrs_core.batch.ask import Question, read_questions_file
from lrs_core.errors import DatasetError
from lrs_core.outputs.parts import answered_ids

SUMMARY_ARTIFACT_KEY = "watch-summary"
#: Ingest outcomes whose store is complete and can be asked about.
READY_STATUSES = ("ingested", "skipped")


def standing_questions(questions: str | list[str] | list[dict[str, str]]) -> list[Question]:
    """Return the standing questions from a file or a list.

    Args:
        questions: a JSONL / CSV / text file (:func:`lrs_core.ask.read_questions_file`), or a list
            of question strings (ids ``q1``, ``q2``...) or of ``{"question_id", "question"}``
            dicts (``id`` and ``text`` are accepted too).

    Raises:
        DatasetError: the file is unreadable, a dict lacks its text, or an id repeats.
    """
    if isinstance(questions, str):
        return read_questions_file(questions)
    found: list[Question] = []
    items: list[str | dict[str, str]] = list(questions)
    for index, item in enumerate(items, start=1):
        if isinstance(item, str):
            found.append(Question(question_id=f"q{index}", text=item))
            continue
        text = item.get("question") or item.get("text")
        if not text:
            raise DatasetError(f"standing question {index} has no 'question' text: {item}")
        found.append(
            Question(
                question_id=str(item.get("question_id") or item.get("id") or f"q{index}"), text=text
            )
        )
    ids = [q.question_id for q in found]
    if len(set(ids)) != len(ids) or not found:
        raise DatasetError(f"standing questions need at least one question and unique ids: {ids}")
    return found


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
        questions: the standing questions (a file or a list; see :func:`standing_questions`).
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
    standing = standing_questions(questions)
    scenes = ingest_scenes(sources=[inbox], store=store, config=ingest_config)
    ready = [row for row in scenes if row["status"] in READY_STATUSES and row.get("store")]
    done = answered_ids(out)
    requests = [
        {
            "scene": str(row["store"]),
            "question": question.text,
            "id": f"{row['scene_id']}-{question.question_id}",
        }
        for row in ready
        for question in standing
        if f"{row['scene_id']}-{question.question_id}" not in done
    ]
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
    n_failed = sum(1 for a in answers if a["status"] == "failed")
    if n_failed:
        message = (
            f"{n_failed} of {len(answers)} questions failed; see the artifacts "
            f"'{SUMMARY_ARTIFACT_KEY}' and '{ARTIFACT_KEY_PREFIX}-answers' (answers in {out})"
        )
        return failed_run(message, result)  # the run's final state says so
    return result


if __name__ == "__main__":
    import sys

    inbox, store, questions, model, out = sys.argv[1:6]
    watch_folder(inbox=inbox, store=store, questions=questions, model=model, out=out)
