"""Prefect tasks around :mod:`lrs_core.evaluation`: ingest a benchmark, run a chunk, merge, score.

Each task wraps one library call. The chunk task carries the ``gpu`` tag, so a concurrency limit
on that tag (``prefect concurrency-limit create gpu 1``) keeps one model per GPU; ingest and
scoring hold no GPU. Retries are for transient I/O only (:func:`tasks._retry.retry_condition_fn`);
a retried chunk resumes its prediction file, so nothing already answered is answered again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lrs_core.evaluation.merge import merge_predictions
from lrs_core.evaluation.report import score_run
from lrs_core.evaluation.runner import (
    Benchmark,
    benchmark_images,
    ingest_benchmark_scenes,
    run_benchmark,
)
from tasks._retry import retry_condition_fn
from tasks.artifacts import progress_reporter

#: Attempts after the first one for a transient failure (bad input is never retried).
EVAL_RETRIES = 2
#: Seconds to wait before each retry.
EVAL_RETRY_DELAYS_S: list[float] = [10.0, 60.0]
#: Tags of a chunk run: ``gpu`` is the one to put a concurrency limit on.
GPU_TAGS = ["lrs", "gpu"]
#: Tags of the benchmark ingest (shares the ingest flow's limit tag).
INGEST_TAGS = ["lrs", "lrs-ingest"]
#: Tags of merging and scoring.
CPU_TAGS = ["lrs"]
#: Seconds between two updates of a chunk's progress artifact.
PROGRESS_INTERVAL_S = 5.0


def _progress_reporter(label: str) -> Callable[[int, int], None] | None:
    """Return a throttled callback feeding a Prefect progress artifact; None outside a task run."""
    return progress_reporter(label, interval_s=PROGRESS_INTERVAL_S, task_run_only=True)


@task(
    name="ingest-benchmark",
    retries=EVAL_RETRIES,
    retry_delay_seconds=EVAL_RETRY_DELAYS_S,
    retry_condition_fn=retry_condition_fn,
    tags=INGEST_TAGS,
    cache_policy=NO_CACHE,  # finished stores are skipped by the library
)
def ingest_benchmark_task(
    benchmark: Benchmark,
    questions: str,
    data_root: str,
    store: str,
    limit: int | None = None,
    num_chunks: int = 1,
) -> dict[str, Any]:
    """Ingest the images of every chunk into ``store`` before the chunks run in parallel.

    Returns:
        ``{"store", "n_images", "n_failed", "failed": [{"source", "error"}]}``; an image that
        fails is listed (its questions will fail in their chunk) and the others go on.

    Raises:
        DatasetError: the question file is invalid or an image path escapes the data root.
    """
    logger = get_run_logger()
    _, _, images = benchmark_images(
        benchmark, Path(questions), data_root=Path(data_root), limit=limit, num_chunks=num_chunks
    )
    results = ingest_benchmark_scenes(
        images, store_dir=Path(store), progress=_progress_reporter(f"ingest of {benchmark}")
    )
    failed = [{"source": r.source, "error": r.error} for r in results if r.status == "failed"]
    logger.info("%d images ready in %s, %d failed", len(results) - len(failed), store, len(failed))
    return {"store": store, "n_images": len(results), "n_failed": len(failed), "failed": failed}


@task(
    name="evaluate-chunk",
    task_run_name="evaluate-{benchmark}-chunk-{chunk_idx}",
    retries=EVAL_RETRIES,
    retry_delay_seconds=EVAL_RETRY_DELAYS_S,
    retry_condition_fn=retry_condition_fn,
    tags=GPU_TAGS,
    cache_policy=NO_CACHE,  # the prediction file is the state; a rerun resumes it
)
def evaluate_chunk_task(
    benchmark: Benchmark,
    questions: str,
    data_root: str,
    model: str,
    preset: str,
    out: str,
    store: str,
    limit: int | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer one chunk of a benchmark into ``out``; return :meth:`RunSummary.to_dict`.

    Raises:
        DatasetError, ConfigError, WeightsError: bad input (not retried).
    """
    logger = get_run_logger()
    summary = run_benchmark(
        benchmark,
        Path(questions),
        data_root=Path(data_root),
        model_dir=Path(model),
        preset=preset,
        out=Path(out),
        store_dir=Path(store),
        limit=limit,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        budget=budget,
        device=device,
        dtype=dtype,
        overrides=overrides,
        progress=_progress_reporter(f"{benchmark} chunk {chunk_idx + 1}/{num_chunks}"),
    )
    logger.info(
        "chunk %d/%d: %d answered, %d failed, %d already done of %d in %.1f s -> %s",
        chunk_idx + 1,
        num_chunks,
        summary.n_answered,
        summary.n_failed,
        summary.n_already_done,
        summary.n_selected,
        summary.seconds,
        out,
    )
    return summary.to_dict()


@task(name="merge-predictions", tags=CPU_TAGS, cache_policy=NO_CACHE)
def merge_predictions_task(paths: list[str], out: str) -> dict[str, Any]:
    """Merge chunk files into ``out``; return ``{"out", "n_rows", "n_duplicates", "n_failed"}``.

    Raises:
        DatasetError: two chunks answer the same question differently, or a file is malformed.
    """
    logger = get_run_logger()
    summary = merge_predictions([Path(p) for p in paths], Path(out))
    logger.info("merged %d files into %s: %d lines", len(paths), out, summary.n_rows)
    return {
        "out": str(summary.out),
        "n_rows": summary.n_rows,
        "n_duplicates": summary.n_duplicates,
        "n_failed": summary.n_failed,
    }


@task(name="score-predictions", tags=CPU_TAGS, cache_policy=NO_CACHE)
def score_predictions_task(
    benchmark: Benchmark, predictions: str, question_file: str | None = None
) -> dict[str, Any]:
    """Score a merged prediction file; return :func:`lrs_core.evaluation.report.score_run`'s dict.

    Raises:
        DatasetError: a malformed file, or WordNet not installed (run ``lrs setup``).
    """
    logger = get_run_logger()
    report = score_run(
        benchmark,
        Path(predictions),
        question_file=None if question_file is None else Path(question_file),
    )
    logger.info("scored %s (%d failed lines)", predictions, report["n_failed"])
    return report
