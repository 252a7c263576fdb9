"""Prefect task answering one scene's questions: :func:`lrs_core.ask.load_engine` + the engine.

One task run per scene group: the questions of one scene share its tile features (the engine's
feature cache), and each answer is appended to the batch output as soon as it exists, so a killed
run loses at most the question in flight. The task carries the :data:`GPU_TAG` tag; a tag
concurrency limit of 1 on it (``prefect concurrency-limit create gpu 1``) keeps one GPU from
running two models at once, while ingest and writing in other tasks go on.

The loaded engine is cached per worker process, keyed by the model directory (and its files'
sizes and modification times), the preset, the budget and the device, so consecutive scene groups
of a run, and later runs on the same worker, load the weights once.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lrs_core.batch.ask import load_engine
from lrs_core.errors import LrsError
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.outputs.parts import BatchCounts
from lrs_core.outputs.writers import DEFAULT_OVERLAY_SIDE_PX, BatchWriter
from lrs_core.raster.pyramid import open_pyramid
from lrs_core.records import AnswerRecord
from tasks._retry import retry_condition_fn
from tasks.artifacts import progress_reporter

#: The tag of every task that holds a model on the accelerator; limit it with
#: ``prefect concurrency-limit create gpu 1`` (one model per GPU at a time).
GPU_TAG = "gpu"
ANSWER_TAGS = ["lrs", GPU_TAG]
#: Attempts after the first for a transient failure (reading a store over a network filesystem).
ANSWER_RETRIES = 2
ANSWER_RETRY_DELAYS_S: list[float] = [10.0, 60.0]
#: Engines kept loaded per worker process (one model per GPU: a new key evicts the old engine).
ENGINE_CACHE_SIZE = 1
#: The preset whose dry-run plan is the baseline of the token and FLOP savings.
BASELINE_PRESET = "full"

ModelFingerprint = tuple[tuple[str, int, int], ...]


def model_fingerprint(model_dir: str) -> ModelFingerprint:
    """Return ``(name, size, mtime_ns)`` of the files of a model directory (the cache key part).

    A rebuilt or retrained model under the same path gets a new fingerprint, so the cache
    reloads it. A missing directory gives ``()``; loading then fails with the library's error.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@functools.lru_cache(maxsize=ENGINE_CACHE_SIZE)
def _load_engine_cached(
    model_dir: str,
    fingerprint: ModelFingerprint,
    preset: str,
    budget: int | None,
    device: str,
    dtype: str,
) -> tuple[FocusEngine, threading.Lock]:
    """Load an engine, with a lock serialising its use by the threads of this process.

    ``fingerprint`` is only part of the cache key. The arguments are immutable, so the cache is a
    pure memo of the loader (as the style guide allows).
    """
    del fingerprint
    engine = load_engine(model_dir, preset=preset, budget=budget, device=device, dtype=dtype)
    return engine, threading.Lock()


def cached_engine(
    model_dir: str,
    *,
    preset: str = "default",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> tuple[FocusEngine, threading.Lock]:
    """Return this process's engine for a model and preset, loading it on first use.

    Args:
        model_dir: the model directory.
        preset: engine preset (:meth:`FocusConfig.from_preset`).
        budget: vision-token budget; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.

    Returns:
        The engine and the lock to hold while using it (tasks of one process share the engine).

    Raises:
        ConfigError: unknown preset or invalid budget.
        WeightsError: the model directory does not load.
    """
    path = os.fspath(Path(model_dir).resolve())
    return _load_engine_cached(path, model_fingerprint(path), preset, budget, device, dtype)


def _row(
    record: AnswerRecord,
    *,
    scene: str,
    overlay: str | None,
    baseline: AnswerRecord | None,
    baseline_error: str | None,
) -> dict[str, Any]:
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


@task(
    name="answer-scene",
    task_run_name="answer-{scene_id}",
    retries=ANSWER_RETRIES,
    retry_delay_seconds=ANSWER_RETRY_DELAYS_S,
    retry_condition_fn=retry_condition_fn,
    tags=ANSWER_TAGS,
    cache_policy=NO_CACHE,  # resumability comes from the output folder (answered ids are skipped)
)
def answer_scene_task(
    store: str,
    questions: list[dict[str, str]],
    model: str,
    out: str,
    scene_id: str,
    preset: str = "default",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    overlay_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Answer the questions of one scene that ``out`` does not hold yet; append each answer.

    Args:
        store: the scene's Zarr store (``<scene_id>.zarr``).
        questions: ``{"question_id", "question"}`` dicts (an optional ``scene`` key is carried
            into the rows, e.g. the request's original scene string).
        model: the model directory.
        out: the batch output folder (local path or fsspec URL).
        scene_id: the scene's id (names the task run).
        preset: engine preset.
        budget: vision-token budget; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        overlay_side_px: longest side of the overlay PNGs.
        wait: queue behind another writer of ``out`` instead of failing at once.

    Returns:
        One small dict per question (see :mod:`tasks.artifacts`): ``skipped`` for ids already in
        ``out``, ``answered`` or ``failed`` (with the engine's error) for the others;
        :meth:`lrs_core.batch_outputs.BatchCounts.from_rows` counts them.

    Raises:
        WriterLockedError: another run writes ``out`` (the folder is locked from reading the
            answered ids to the last answer, so two runs never answer a question twice).
        SceneNotFoundError, IncompletePyramidError: the store is missing or unfinished (not
            retried); WeightsError, ConfigError: the model or preset is wrong.
    """
    logger = get_run_logger()
    with BatchWriter(
        out,
        overlay_side_px=overlay_side_px,
        refresh_geojson=False,
        purpose=f"answer-scene {scene_id}",
        wait=wait,
    ) as writer:
        return _answer_locked(
            writer,
            store=store,
            questions=questions,
            model=model,
            scene_id=scene_id,
            preset=preset,
            budget=budget,
            device=device,
            dtype=dtype,
            logger=logger,
        )


def _answer_locked(
    writer: BatchWriter,
    *,
    store: str,
    questions: list[dict[str, str]],
    model: str,
    scene_id: str,
    preset: str,
    budget: int | None,
    device: str,
    dtype: str,
    logger: Any,
) -> list[dict[str, Any]]:
    """The body of :func:`answer_scene_task`, run while ``writer`` holds the folder's lock."""
    out = writer.out_dir
    done = writer.answered_ids()
    todo = [q for q in questions if q["question_id"] not in done]
    rows: list[dict[str, Any]] = [
        {
            "question_id": q["question_id"],
            "scene": q.get("scene", store),
            "scene_id": scene_id,
            "question": q["question"],
            "status": "skipped",
            "answer": None,
            "error": None,
        }
        for q in questions
        if q["question_id"] in done
    ]
    if not todo:
        logger.info("%s: all %d questions already answered in %s", scene_id, len(questions), out)
        return rows
    engine, lock = cached_engine(model, preset=preset, budget=budget, device=device, dtype=dtype)
    pyramid = open_pyramid(store)
    baseline_engine = FocusEngine(
        engine.loaded,
        config=FocusConfig.from_preset(BASELINE_PRESET),
        feature_cache=engine.feature_cache,
    )
    progress = progress_reporter(f"answers about {scene_id}")
    for index, question in enumerate(todo):
        with lock:
            (record,) = engine.answer_many(
                pyramid, [(question["question_id"], question["question"])]
            )
        writer.append([record], pyramid=pyramid)
        baseline: AnswerRecord | None = None
        baseline_error: str | None = None
        try:
            baseline = baseline_engine.plan(
                pyramid, question["question"], question_id=question["question_id"]
            )
        except LrsError as err:
            baseline_error = f"{type(err).__name__}: {err}"
        overlay = writer.overlay_path(record.question_id) if record.error is None else None
        rows.append(
            _row(
                record,
                scene=question.get("scene", store),
                overlay=overlay,
                baseline=baseline,
                baseline_error=baseline_error,
            )
        )
        if progress is not None:
            progress(index + 1, len(todo))
    counts = BatchCounts.from_rows(rows)
    logger.info(
        "%s: answered %d, failed %d, skipped %d (already in %s)",
        scene_id,
        counts.answered,
        counts.failed,
        counts.skipped,
        out,
    )
    return rows
