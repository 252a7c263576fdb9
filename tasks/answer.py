"""Prefect task answering one scene's questions: :func:`lrs_core.batch.run.answer_scene`.

One task run per scene group: the questions of one scene share its tile features (the engine's
feature cache), and each answer is appended to the batch output as soon as it exists, so a killed
run loses at most the question in flight. The task carries the :data:`GPU_TAG` tag; a tag
concurrency limit of 1 on it (``prefect concurrency-limit create gpu 1``) keeps one GPU from
running two models at once, while ingest and writing in other tasks go on.

The engine is the library's per-process one (:func:`lrs_core.batch.engines.cached_engine`), so
consecutive scene groups of a run, and later runs on the same worker, load the weights once.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lrs_core.batch.run import answer_scene, log_scene_counts
from lrs_core.outputs.overlays import DEFAULT_OVERLAY_SIDE_PX
from tasks._retry import retry_condition_fn
from tasks.artifacts import progress_reporter

#: The tag of every task that holds a model on the accelerator; limit it with
#: ``prefect concurrency-limit create gpu 1`` (one model per GPU at a time).
GPU_TAG = "gpu"
ANSWER_TAGS = ["lrs", GPU_TAG]
#: Attempts after the first for a transient failure (reading a store over a network filesystem).
ANSWER_RETRIES = 2
ANSWER_RETRY_DELAYS_S: list[float] = [10.0, 60.0]


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
        model: the model directory (or name).
        out: the batch output folder (local path or fsspec URL).
        scene_id: the scene's id (names the task run).
        preset: engine preset.
        budget: vision-token budget; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        overlay_side_px: longest side of the overlay PNGs.
        wait: queue behind another writer of ``out`` instead of failing at once.

    Returns:
        One small dict per question (see :mod:`lrs_core.batch.run`): ``skipped`` for ids already
        in ``out``, ``answered`` or ``failed`` (with the engine's error) for the others.

    Raises:
        WriterLockedError: another run writes ``out``.
        SceneNotFoundError, IncompletePyramidError: the store is missing or unfinished (not
            retried); WeightsError, ConfigError: the model or preset is wrong.
    """
    logger = get_run_logger()
    rows = answer_scene(
        store,
        questions,
        model=model,
        out=out,
        scene_id=scene_id,
        preset=preset,
        budget=budget,
        device=device,
        dtype=dtype,
        overlay_side_px=overlay_side_px,
        wait=wait,
        progress=progress_reporter(f"answers about {scene_id}"),
    )
    log_scene_counts(rows, scene_id=scene_id, out=out, logger=logger)
    return rows
