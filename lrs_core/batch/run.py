"""Answer many questions about many scenes into one output folder; resumable.

:func:`run_batch` is the batch: read the requests (:mod:`lrs_core.batch.requests`), skip the ids
the output folder already holds, find each scene's store, ingesting rasters first
(:mod:`lrs_core.batch.scenes`), group the questions by scene so tile features are shared, and
answer one scene at a time with :func:`answer_scene`, which appends each answer as a GeoParquet
part with its overlay as soon as it exists (:class:`lrs_core.outputs.parts.BatchWriter`), then
rebuild ``answers.geojson``. A killed batch loses at most the question in flight; a rerun answers
only what is missing, and finished answers are never rewritten.

``lrs batch`` calls it directly; the answer flow calls the same function and passes the Prefect
task versions of the two steps that orchestration adds retries, tags and concurrency to (ingest
and answering a scene group).

Bad input fails the item, not the batch: an unreadable row, a duplicate id, a missing scene, a
scene outside the data root or a scene that does not ingest becomes a ``failed`` row with its
reason. Bad run settings fail the batch before any output is written: an unreadable requests
file, a model that does not load, an unknown preset, an output folder that cannot be written, or
one that another run is writing (:class:`~lrs_core.locks.WriterLockedError`; ``wait`` queues).

Each question's outcome is a row: a dict of plain JSON values (``question_id``, ``scene``,
``scene_id``, ``question``, ``status`` (``answered``, ``skipped`` or ``failed``), ``answer``,
``error``, and for answered rows ``vision_tokens``, ``flops``, ``full_vision_tokens``,
``full_flops`` (the ``full`` baseline's dry-run plan, for the savings), ``baseline_error``,
``seconds``, ``overlay``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.batch.engines import baseline_engine, cached_engine
from lrs_core.batch.requests import AnswerRequest, RowsLike, read_requests
from lrs_core.batch.scenes import (
    IngestRasters,
    ingest_rasters,
    resolve_scenes,
    scene_id_of_store,
)
from lrs_core.errors import LrsError, OutputNotWritableError
from lrs_core.locks import WriterLockedError
from lrs_core.outputs.overlays import DEFAULT_OVERLAY_SIDE_PX
from lrs_core.outputs.parts import BatchCounts, BatchWriter, answered_ids, batch_lock
from lrs_core.raster.pyramid import open_pyramid
from lrs_core.records import AnswerRecord

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Row = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """How a batch is answered and where it goes.

    Attributes:
        model: a model directory or name
            (:func:`~lrs_core.models.loading.registry.resolve_model_dir`).
        out: the output folder (local path or fsspec URL): ``answers.parquet/``,
            ``answers.geojson``, ``overlays/``.
        stores: folder of scene stores: where scene ids are looked up and rasters are ingested.
        preset: engine preset (``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``...).
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16``, ``fp32``.
        data_root: folder scene paths are confined to (relative ones are read from it); None
            leaves them unconfined.
        wait: queue behind another run writing ``out`` instead of failing at once.
        overlay_side_px: longest side of the overlay PNGs.
    """

    model: str
    out: str
    stores: str = "stores"
    preset: str = "default"
    budget: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    data_root: str | None = None
    wait: bool = False
    overlay_side_px: int = DEFAULT_OVERLAY_SIDE_PX


@dataclass(frozen=True, kw_only=True)
class SceneGroup:
    """The questions of a batch about one scene store.

    Attributes:
        store: the scene's Zarr store.
        scene_id: the scene's id (the store's name).
        requests: the questions still to answer about it.
    """

    store: str
    scene_id: str
    requests: tuple[AnswerRequest, ...]

    def question_dicts(self) -> list[dict[str, str]]:
        """The questions as ``{"question_id", "question", "scene"}`` dicts (JSON values)."""
        return [
            {"question_id": r.question_id, "question": r.question, "scene": r.scene}
            for r in self.requests
        ]


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    """How a batch went.

    Attributes:
        out: the output folder.
        rows: one row per request (see the module docstring), in request order, unusable rows
            last.
    """

    out: str
    rows: tuple[Row, ...]

    @property
    def counts(self) -> BatchCounts:
        """Answered, skipped and failed questions."""
        return BatchCounts.from_rows(self.rows)

    def summary(self) -> str:
        """One line: the counts, and where the answers are."""
        counts = self.counts
        line = (
            f"answered {counts.answered}, skipped {counts.skipped} (already in {self.out}), "
            f"failed {counts.failed} of {counts.total} questions"
        )
        if counts.failed:
            return (
                f"{counts.failed} of {counts.total} questions failed ({line}); the answers of "
                f"the others are in {self.out}"
            )
        return line


#: Answer one scene group: returns its rows, or raises (an :class:`LrsError` or ``OSError``
#: fails the group's questions, with the error as their reason). The progress callback counts
#: the group's questions; a hook may ignore it.
AnswerGroup = Callable[[SceneGroup, Progress | None], list[Row]]


def failed_row(question_id: str, scene: str | None, question: str | None, error: str) -> Row:
    """Return the row of a question that could not be answered."""
    return {
        "question_id": question_id,
        "scene": scene,
        "scene_id": None,
        "question": question,
        "status": "failed",
        "answer": None,
        "error": error,
    }


def skipped_row(question_id: str, scene: str, question: str, scene_id: str | None) -> Row:
    """Return the row of a question the output folder already answers."""
    return {
        "question_id": question_id,
        "scene": scene,
        "scene_id": scene_id,
        "question": question,
        "status": "skipped",
        "answer": None,
        "error": None,
    }


def answer_row(
    record: AnswerRecord,
    *,
    scene: str,
    overlay: str | None,
    baseline: AnswerRecord | None,
    baseline_error: str | None,
) -> Row:
    """Return the row of an answered (or engine-failed) question, with its baseline's cost."""
    acc = record.accounting
    return {
        "question_id": record.question_id,
        "scene": scene,
        "scene_id": record.scene.scene_id,
        "question": record.question,
        "status": "failed" if record.error is not None else "answered",
        "answer": record.answer,
        "error": record.error,
        "vision_tokens": acc.vision_tokens_to_llm,
        "flops": acc.flops.total_flops,
        "full_vision_tokens": None
        if baseline is None
        else baseline.accounting.vision_tokens_to_llm,
        "full_flops": None if baseline is None else baseline.accounting.flops.total_flops,
        "baseline_error": baseline_error,
        "seconds": acc.seconds.get("total"),
        "overlay": overlay,
    }


def check_output_writable(out: str) -> None:
    """Make sure ``out`` (a local folder) can be created and written; URLs are left to the writer.

    Raises:
        OutputNotWritableError: the folder (or its ``answers.parquet``) cannot be written.
    """
    if "://" in out and not out.startswith("file://"):
        return
    folder = Path(out.removeprefix("file://"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for target in (folder, folder / "answers.parquet"):
            if target.is_dir():
                handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=target)
                os.close(handle)
                os.unlink(probe)
    except OSError as err:
        raise OutputNotWritableError(
            f"{out}: the output folder cannot be written ({err.strerror or err}); choose another "
            "output folder or fix its permissions (nothing was written)"
        ) from err


def answer_scene(
    store: str,
    questions: Sequence[Mapping[str, str]],
    *,
    model: str,
    out: str,
    scene_id: str | None = None,
    preset: str = "default",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    overlay_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
    wait: bool = False,
    progress: Progress | None = None,
) -> list[Row]:
    """Answer the questions of one scene that ``out`` does not hold yet; append each answer.

    The output folder's writer lock is held from reading its answered ids to the last answer, so
    two runs never answer a question twice. Each answer is appended (overlay, then its GeoParquet
    part) before the next question is asked.

    Args:
        store: the scene's Zarr store.
        questions: ``{"question_id", "question"}`` mappings (an optional ``scene`` key is carried
            into the rows, e.g. the request's original scene string).
        model: a model directory or name.
        out: the output folder (local path or fsspec URL).
        scene_id: the scene's id (for messages); None: the store's name.
        preset: engine preset.
        budget: vision-token budget; None keeps the preset's.
        device: where the model runs.
        dtype: the model's dtype.
        overlay_side_px: longest side of the overlay PNGs.
        wait: queue behind another writer of ``out`` instead of failing at once.
        progress: called with (questions done, questions to answer) after each answer.

    Returns:
        One row per question: ``skipped`` for ids already in ``out``, ``answered`` or ``failed``
        (with the engine's error) for the others.

    Raises:
        WriterLockedError: another run writes ``out`` (and ``wait`` is off).
        SceneNotFoundError, IncompletePyramidError: the store is missing or unfinished.
        WeightsError, ConfigError: the model or preset is wrong.
    """
    scene_id = scene_id or scene_id_of_store(store)
    with BatchWriter(
        out,
        overlay_side_px=overlay_side_px,
        refresh_geojson=False,
        purpose=f"answer-scene {scene_id}",
        wait=wait,
    ) as writer:
        done = writer.answered_ids()
        todo = [q for q in questions if q["question_id"] not in done]
        rows = [
            skipped_row(q["question_id"], q.get("scene", store), q["question"], scene_id)
            for q in questions
            if q["question_id"] in done
        ]
        if not todo:
            log.info("%s: all %d questions already answered in %s", scene_id, len(questions), out)
            return rows
        engine, lock = cached_engine(
            model, preset=preset, budget=budget, device=device, dtype=dtype
        )
        pyramid = open_pyramid(store)
        baseline = baseline_engine(engine)
        for index, question in enumerate(todo):
            with lock:
                (record,) = engine.answer_many(
                    pyramid, [(question["question_id"], question["question"])]
                )
            writer.append([record], pyramid=pyramid)
            planned: AnswerRecord | None = None
            baseline_error: str | None = None
            try:
                planned = baseline.plan(
                    pyramid, question["question"], question_id=question["question_id"]
                )
            except LrsError as err:
                baseline_error = f"{type(err).__name__}: {err}"
            overlay = writer.overlay_path(record.question_id) if record.error is None else None
            rows.append(
                answer_row(
                    record,
                    scene=question.get("scene", store),
                    overlay=overlay,
                    baseline=planned,
                    baseline_error=baseline_error,
                )
            )
            if progress is not None:
                progress(index + 1, len(todo))
    log_scene_counts(rows, scene_id=scene_id, out=out)
    return rows


def log_scene_counts(
    rows: list[Row],
    *,
    scene_id: str,
    out: str,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> BatchCounts:
    """Count a scene's rows and log the counts in one line on ``logger``; return them."""
    counts = BatchCounts.from_rows(rows)
    logger.info(
        "%s: answered %d, failed %d, skipped %d (already in %s)",
        scene_id,
        counts.answered,
        counts.failed,
        counts.skipped,
        out,
    )
    return counts


def answer_group_here(settings: BatchSettings) -> AnswerGroup:
    """Return the :data:`AnswerGroup` that answers a scene group in this process."""

    def answer(group: SceneGroup, progress: Progress | None) -> list[Row]:
        return answer_scene(
            group.store,
            group.question_dicts(),
            model=settings.model,
            out=settings.out,
            scene_id=group.scene_id,
            preset=settings.preset,
            budget=settings.budget,
            device=settings.device,
            dtype=settings.dtype,
            overlay_side_px=settings.overlay_side_px,
            wait=settings.wait,
            progress=progress,
        )

    return answer


def run_batch(
    requests: RowsLike,
    settings: BatchSettings,
    *,
    ingest: IngestRasters = ingest_rasters,
    answer_group: AnswerGroup | None = None,
    progress: Progress | None = None,
) -> BatchResult:
    """Answer every request that ``settings.out`` does not hold yet; report each question.

    Args:
        requests: a CSV / JSONL / Parquet file of ``scene,question[,id]`` rows, or a list of
            dicts (:func:`lrs_core.batch.requests.read_requests`).
        settings: model, preset, output and stores folders, data root...
        ingest: how raster scenes are ingested (default: one by one in this process).
        answer_group: how one scene group is answered (default: :func:`answer_scene` here).
        progress: called with (questions done, questions to answer) as answers are written.

    Returns:
        One row per request (``answered``, ``skipped`` or ``failed`` with its ``error``).

    Raises:
        DatasetError: the requests file cannot be read.
        WeightsError, ConfigError: the model does not load, or the preset/budget is invalid.
        OutputNotWritableError: the output folder cannot be written.
        WriterLockedError: another run writes the output folder (and ``wait`` is off).
    """
    out = settings.out
    data_root = None if settings.data_root is None else Path(settings.data_root).resolve()
    items, problems = read_requests(requests)
    done = answered_ids(out) if items else set()
    pending = [item for item in items if item.question_id not in done]
    log.info(
        "%d requests (%d already answered in %s), %d unusable rows",
        len(items),
        len(items) - len(pending),
        out,
        len(problems),
    )
    if pending:  # fail on a bad model before anything is written (and load it once)
        cached_engine(
            settings.model,
            preset=settings.preset,
            budget=settings.budget,
            device=settings.device,
            dtype=settings.dtype,
        )
    check_output_writable(out)
    with batch_lock(out, purpose="answer batch", wait=settings.wait):
        pass  # fail now, before any ingest, when another run writes ``out``; groups lock again

    rows_by_id: dict[str, Row] = {}
    for problem in problems:
        log.warning("unusable request %s: %s", problem.where, problem.error)
        rows_by_id[problem.question_id] = failed_row(
            problem.question_id, problem.scene, problem.question, problem.error
        )
    for item in items:
        if item.question_id in done:
            rows_by_id[item.question_id] = skipped_row(
                item.question_id, item.scene, item.question, None
            )

    scenes = list(dict.fromkeys(item.scene for item in pending))
    found = resolve_scenes(scenes, stores=settings.stores, data_root=data_root, ingest=ingest)
    by_store: dict[str, list[AnswerRequest]] = {}
    for item in pending:
        if item.scene in found.errors:
            log.warning("request %s: %s", item.question_id, found.errors[item.scene])
            rows_by_id[item.question_id] = failed_row(
                item.question_id, item.scene, item.question, found.errors[item.scene]
            )
        else:
            by_store.setdefault(found.stores[item.scene], []).append(item)

    # One scene at a time: a GPU holds one model, and the scene's tiles stay in its cache.
    answer = answer_group if answer_group is not None else answer_group_here(settings)
    total = sum(len(group) for group in by_store.values())
    finished = 0
    for store, group_items in by_store.items():
        group = SceneGroup(
            store=store, scene_id=scene_id_of_store(store), requests=tuple(group_items)
        )
        offset = finished

        def group_progress(done_now: int, _todo: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done_now, total)

        try:
            group_rows = answer(group, group_progress)
        except (LrsError, OSError) as err:
            error = " ".join(str(err).split())
            log.warning("answers about %s failed: %s", group.scene_id, error)
            group_rows = [
                failed_row(i.question_id, i.scene, i.question, error) for i in group_items
            ]
        for row in group_rows:
            rows_by_id[row["question_id"]] = row
        finished += len(group_items)
        if progress is not None:
            progress(finished, total)

    if any(row["status"] == "answered" for row in rows_by_id.values()):
        try:
            with BatchWriter(
                out, refresh_geojson=False, purpose="answer batch", wait=settings.wait
            ) as writer:
                writer.finalize()
        except WriterLockedError as err:  # the run now writing ``out`` finalizes it in turn
            log.warning("answers.geojson not refreshed: %s", err)
    order = [item.question_id for item in items] + [p.question_id for p in problems]
    rows = tuple(rows_by_id[question_id] for question_id in dict.fromkeys(order))
    result = BatchResult(out=out, rows=rows)
    log.info("answers in %s: %s", out, result.counts.to_dict())
    return result
