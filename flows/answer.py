"""Flow ``answer-questions``: answer a batch of (scene, question) requests; resumable.

The batch itself is the library's :func:`lrs_core.batch.run.run_batch` (the same code as
``lrs batch``): requests are read, scenes resolved (rasters ingested), questions grouped by scene,
answers appended to ``out`` and a rerun answers only what ``out`` lacks. This flow adds what
orchestration adds: rasters are ingested by concurrent ingest task runs and each scene group is
answered by one :func:`tasks.answer.answer_scene_task` run (retries, the ``gpu`` tag), progress
and the answers table, summary and overlays go to Prefect artifacts, and a run in which some
questions failed ends ``Failed`` with their count (:mod:`flows.outcome`) after every other answer
is written. Bad run settings (an unreadable requests file, a model that does not load, an unknown
preset, an output folder that cannot be written or is being written by another run) fail the run
before any output is written.

Scene paths of requests are confined to the data root: the ``data_root`` parameter, else the
``LRS_DATA_ROOT`` environment variable of the worker; without either, paths are not confined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.outcome import outcome_of
from lrs_core.batch.run import AnswerGroup, BatchSettings, Progress, SceneGroup, run_batch
from lrs_core.errors import LrsError
from tasks.answer import answer_scene_task
from tasks.artifacts import progress_reporter, publish_answer_artifacts
from tasks.ingest import ingest_scene_task

#: Raster scenes ingested at the same time (answers run one scene at a time: one model, one GPU).
MAX_CONCURRENT_INGESTS = 4
ARTIFACT_KEY_PREFIX = "answer-questions"
#: Environment variable naming the data root when the flow's ``data_root`` is not given.
DATA_ROOT_ENV = "LRS_DATA_ROOT"


class SceneGroupFailedError(LrsError, RuntimeError):
    """The task run answering a scene group failed (after its retries); its questions fail."""


def data_root_of(data_root: str | None) -> Path | None:
    """Return the data root requests are confined to: ``data_root``, else ``$LRS_DATA_ROOT``.

    None (neither is set) leaves request paths unconfined.
    """
    chosen = data_root if data_root else os.environ.get(DATA_ROOT_ENV) or None
    return None if chosen is None else Path(chosen).resolve()


def _ingest_with_tasks(rasters: Sequence[str], store: str) -> Mapping[str, str | BaseException]:
    """Ingest rasters with concurrent ingest task runs (the flow's task runner)."""
    futures: dict[str, PrefectFuture[dict[str, Any]]] = {
        raster: ingest_scene_task.submit(raster, store) for raster in rasters
    }
    done: dict[str, str | BaseException] = {}
    for raster, future in futures.items():
        future.wait()
        outcome = future.result(raise_on_failure=False)
        if future.state.is_completed():
            done[raster] = str(outcome["store"])
        else:
            done[raster] = (
                outcome if isinstance(outcome, BaseException) else RuntimeError(str(outcome))
            )
    return done


def answers_artifact_note(out: str) -> str:
    """Where a failed run's answers are shown: its table artifact and the output folder ``out``."""
    table = f"{ARTIFACT_KEY_PREFIX}-answers"
    return f"the table artifact '{table}' (answers of the others are in {out})"


def _answer_with_task(settings: BatchSettings) -> AnswerGroup:
    """Return the flow's scene-group answerer: one ``answer-scene`` task run per group."""

    def answer(group: SceneGroup, progress: Progress | None) -> list[dict[str, Any]]:
        del progress  # the task run publishes its own progress artifact
        state = answer_scene_task(
            group.store,
            group.question_dicts(),
            settings.model,
            settings.out,
            scene_id=group.scene_id,
            preset=settings.preset,
            budget=settings.budget,
            device=settings.device,
            dtype=settings.dtype,
            wait=settings.wait,
            return_state=True,
        )
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            raise SceneGroupFailedError(" ".join(str(error).split()))
        rows: list[dict[str, Any]] = state.result()
        return rows

    return answer


@flow(
    name="answer-questions",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_INGESTS),  # type: ignore[arg-type]  # Prefect's generic runner typing
)
def answer_questions(
    requests: str | list[dict[str, Any]],
    model: str,
    preset: str = "default",
    out: str = "answers",
    store: str = "stores",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    data_root: str | None = None,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Answer every request that ``out`` does not hold yet; report each question's outcome.

    Args:
        requests: a CSV / JSONL / Parquet file of ``scene,question[,id]`` rows, or a list of dicts
            with those keys (see :func:`lrs_core.batch.requests.read_requests`).
        model: the model directory.
        preset: engine preset (``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``...).
        out: batch output folder (local path or fsspec URL): ``answers.parquet/``,
            ``answers.geojson``, ``overlays/``.
        store: folder of scene stores: where scene ids are looked up and rasters are ingested.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        data_root: folder request scene paths are confined to (relative ones are read from it);
            None: ``$LRS_DATA_ROOT``, or unconfined when that is unset too.
        wait: queue behind another run writing ``out`` instead of failing at once.

    Returns:
        One row per request (see :mod:`lrs_core.batch.run`): ``answered``, ``skipped`` (already in
        ``out``) or ``failed`` with its ``error``; ``BatchCounts.from_rows(rows).failed`` counts
        the failures. Published as the artifacts
        ``answer-questions-answers`` (table), ``-summary`` and ``-overlays`` (markdown). When a
        row failed the run ends ``Failed`` ("N of M questions failed; see ...") after writing
        every answer it could; ``state.result(raise_on_failure=False)`` of a
        ``return_state=True`` call is then a :class:`~flows.outcome.QuestionsFailedError` holding
        the rows (:func:`flows.outcome.run_result` returns them either way).

    Raises:
        QuestionsFailedError: (called without ``return_state=True``) a row failed; the answers of
            the other rows are written, and the error's ``result`` holds every row.
        DatasetError: the requests file cannot be read.
        WeightsError, ConfigError: the model does not load, or the preset/budget is invalid.
        OutputNotWritableError: ``out`` cannot be written.
        WriterLockedError: another run writes ``out`` (and ``wait`` is off).
    """
    logger = get_run_logger()
    root = data_root_of(data_root)
    settings = BatchSettings(
        model=model,
        out=out,
        stores=store,
        preset=preset,
        budget=budget,
        device=device,
        dtype=dtype,
        data_root=None if root is None else str(root),
        wait=wait,
    )
    result = run_batch(
        requests,
        settings,
        ingest=_ingest_with_tasks,
        answer_group=_answer_with_task(settings),
        progress=progress_reporter(f"questions answered into {out}"),
    )
    rows = list(result.rows)
    counts = result.counts
    logger.info("answers in %s: %s", out, counts.to_dict())
    publish_answer_artifacts(
        rows, out=out, model=model, preset=preset, key_prefix=ARTIFACT_KEY_PREFIX
    )
    # finished answers are written; the run ends Failed if some failed
    return outcome_of(rows, rows, see=answers_artifact_note(out))


if __name__ == "__main__":
    import sys

    answer_questions(requests=sys.argv[1], model=sys.argv[2], out=sys.argv[3])
