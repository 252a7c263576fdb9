"""Flow ``evaluate``: answer a benchmark in chunks, merge, score, publish the score table.

Steps: ingest every image the chunks need into one shared store folder (so parallel chunks never
ingest the same image at once), run the chunks as ``gpu``-tagged tasks (each resumes its own file
``<out stem>.chunk<i>of<K>.jsonl``), merge them into ``out``, score it with the benchmark's own rule
(plus focus metrics for LRS-VQA) and publish a markdown artifact with the tables. A chunk or the
scoring that fails is listed in the artifact, and the run then ends Failed; so does a run in which
some questions failed (they are written with their error and scored as wrong). Rerunning the flow
answers only what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import QUESTION_FILE_NAME
from lrs_core.evaluation.runner import (
    BENCHMARKS,
    MME_QUESTION_FILE_NAME,
    Benchmark,
    chunk_output_path,
    default_store_dir,
    resolve_question_file,
)
from tasks.evaluate import (
    evaluate_chunk_task,
    ingest_benchmark_task,
    merge_predictions_task,
    score_predictions_task,
)

#: Chunks run at the same time by one flow run (a ``gpu`` tag limit may allow fewer).
MAX_CONCURRENT_CHUNKS = 4
SUMMARY_ARTIFACT_KEY = "evaluate-summary"
SCORES_ARTIFACT_KEY = "evaluate-scores"


class EvaluationFailedError(RuntimeError):
    """A chunk, some questions or the scoring of an ``evaluate`` run failed (the artifact says)."""


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _score_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a score report into ``{dataset, category, accuracy}`` rows (percent)."""
    scores = report.get("scores")
    if not scores:
        return []
    if report["benchmark"] == "mme":
        rows = [
            {"dataset": "MME-RealWorld-RS", "category": f"task {task}", "accuracy": acc}
            for task, acc in scores["per_task"].items()
        ]
        rows += [
            {"dataset": "MME-RealWorld-RS", "category": key, "accuracy": acc}
            for key, acc in scores["per_category"].items()
        ]
        return [
            *rows,
            {
                "dataset": "MME-RealWorld-RS",
                "category": "overall",
                "accuracy": scores["overall_accuracy"],
            },
        ]
    rows = []
    for name, group in scores["datasets"].items():
        rows += [
            {"dataset": name, "category": category, "accuracy": acc}
            for category, acc in group["categories"].items()
        ]
        rows.append({"dataset": name, "category": "OA", "accuracy": group["overall_accuracy"]})
        rows.append({"dataset": name, "category": "AA", "accuracy": group["average_accuracy"]})
    rows.append({"dataset": "LRS-VQA", "category": "mean AA", "accuracy": scores["lrs_vqa_mean"]})
    return rows


def summary_markdown(
    *,
    benchmark: str,
    model: str,
    preset: str,
    out: str,
    chunks: list[dict[str, Any]],
    report: dict[str, Any] | None,
    problems: list[str],
) -> str:
    """Return the run's markdown artifact: chunks, failures, score table, focus table."""
    lines = [
        f"# Evaluation: {benchmark}",
        "",
        f"Model `{model}`, preset `{preset}`, predictions `{out}`.",
        "",
        "| chunk | selected | already done | answered | failed | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for chunk in chunks:
        lines.append(
            f"| {chunk['chunk_idx'] + 1}/{chunk['num_chunks']} | {chunk['n_selected']} | "
            f"{chunk['n_already_done']} | {chunk['n_answered']} | {chunk['n_failed']} | "
            f"{chunk['seconds']:.1f} |"
        )
    failures = [f for chunk in chunks for f in chunk["failures"]]
    if problems or failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {_cell(problem)}" for problem in problems]
        lines += [f"- `{f['question_id']}` ({f['image']}): {_cell(f['error'])}" for f in failures]
    if report is not None:
        lines += ["", "## Scores (accuracy, %)", ""]
        if report.get("note"):
            lines += [f"_{report['note']}_", ""]
        rows = _score_rows(report)
        if rows:
            lines += ["| dataset | category | accuracy |", "|---|---|---|"]
            lines += [
                f"| {r['dataset']} | {r['category']} | {_cell(r['accuracy'])} |" for r in rows
            ]
        focus = report.get("focus")
        if focus:
            lines += [
                "",
                "## Focus (fractions)",
                "",
                f"{focus['n_questions']} questions with a box; "
                f"{focus['n_without_record']} lines without an answer record.",
                "",
                "| dataset | questions | box coverage | top token in box | tiles visited |",
                "|---|---|---|---|---|",
            ]
            for name, s in focus["by_dataset"].items():
                lines.append(
                    f"| {name} | {s['n_questions']} | {_cell(s['mean_box_coverage'])} | "
                    f"{_cell(s['top_token_in_box_rate'])} | {_cell(s['mean_tiles_visited'])} |"
                )
    return "\n".join(lines) + "\n"


@flow(
    name="evaluate",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_CHUNKS),  # type: ignore[arg-type]  # Prefect's generic runner typing
)
def evaluate(
    benchmark: str,
    data_root: str,
    model: str,
    preset: str,
    out: str,
    limit: int | None = None,
    num_chunks: int = 1,
    questions: str | None = None,
    store: str | None = None,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    overrides: dict[str, Any] | None = None,
    score: bool = True,
) -> dict[str, Any]:
    """Answer ``benchmark`` in ``num_chunks`` chunks, merge into ``out`` and score it.

    Args:
        benchmark: ``lrs-vqa`` or ``mme``.
        data_root: folder holding the question file and the images it names.
        model: model directory.
        preset: focus preset (``default``, ``parity``, ``thumbnail``, ...).
        out: merged prediction JSONL; chunk files are written beside it.
        limit: answer at most the first ``limit`` questions of each chunk.
        num_chunks: chunks run as separate (``gpu``-tagged) tasks.
        questions: question file; None: the benchmark's file inside ``data_root``.
        store: folder of scene stores; None: ``<out>.stores``.
        budget: ``token_budget`` override.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        overrides: further :class:`~lrs_core.focus.engine.FocusConfig` fields (e.g.
            ``max_new_tokens``).
        score: score the merged file (LRS-VQA loads WordNet, ~10 s); False only merges.

    Returns:
        ``{"out", "store", "chunks": [RunSummary dicts], "merge", "report", "problems"}``.

    Raises:
        ConfigError: unknown benchmark.
        EvaluationFailedError: a chunk, some questions or the scoring failed (after the artifacts
            are published; the merged predictions are written).
    """
    logger = get_run_logger()
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    name: Benchmark = "lrs-vqa" if benchmark == "lrs-vqa" else "mme"
    default_name = QUESTION_FILE_NAME if name == "lrs-vqa" else MME_QUESTION_FILE_NAME
    question_file, root = resolve_question_file(
        Path(questions or data_root), data_root=Path(data_root), default_name=default_name
    )
    store_dir = str(Path(store) if store else default_store_dir(Path(out)))
    ingest = ingest_benchmark_task(
        name, str(question_file), str(root), store_dir, limit=limit, num_chunks=num_chunks
    )
    problems = [f"cannot ingest {f['source']}: {f['error']}" for f in ingest["failed"]]
    chunk_paths = [
        str(chunk_output_path(Path(out), chunk_idx=i, num_chunks=num_chunks))
        for i in range(num_chunks)
    ]
    futures = [
        evaluate_chunk_task.submit(
            name,
            str(question_file),
            str(root),
            model,
            preset,
            chunk_paths[i],
            store_dir,
            limit=limit,
            num_chunks=num_chunks,
            chunk_idx=i,
            budget=budget,
            device=device,
            dtype=dtype,
            overrides=overrides,
        )
        for i in range(num_chunks)
    ]
    chunks: list[dict[str, Any]] = []
    for index, future in enumerate(futures):
        future.wait()
        outcome = future.result(raise_on_failure=False)
        if future.state.is_completed():
            chunks.append(outcome)
        else:
            message = f"chunk {index + 1}/{num_chunks} failed: {' '.join(str(outcome).split())}"
            logger.warning(message)
            problems.append(message)
    existing = [p for p in chunk_paths if Path(p).is_file()]
    merged = merge_predictions_task(existing, out) if existing else None
    report: dict[str, Any] | None = None
    if score and merged is not None and merged["n_rows"]:
        score_state = score_predictions_task(
            name,
            out,
            question_file=str(question_file) if name == "lrs-vqa" else None,
            return_state=True,
        )
        scored = score_state.result(raise_on_failure=False)
        if score_state.is_completed() and isinstance(scored, dict):
            report = scored
        else:
            problems.append(f"scoring failed: {' '.join(str(scored).split())}")
    create_markdown_artifact(
        markdown=summary_markdown(
            benchmark=name,
            model=model,
            preset=preset,
            out=out,
            chunks=chunks,
            report=report,
            problems=problems,
        ),
        key=SUMMARY_ARTIFACT_KEY,
        description=f"{name} evaluation of {model} ({preset})",
    )
    if report is not None and report.get("scores"):
        create_table_artifact(
            table=_score_rows(report),
            key=SCORES_ARTIFACT_KEY,
            description=f"{name} accuracy (%) of {model} ({preset})",
        )
    result = {
        "out": out,
        "store": store_dir,
        "chunks": chunks,
        "merge": merged,
        "report": report,
        "problems": problems,
    }
    failed_chunks = [p for p in problems if p.startswith(("chunk", "scoring"))]
    if merged is not None and merged["n_failed"]:
        failed_chunks.insert(
            0,
            f"{merged['n_failed']} of {merged['n_rows']} questions failed; see the artifact "
            f"'{SUMMARY_ARTIFACT_KEY}' and the 'error' field in {out}; rerun to answer them",
        )
    if failed_chunks:
        raise EvaluationFailedError("; ".join(failed_chunks))
    return result


if __name__ == "__main__":
    import sys

    evaluate(
        benchmark=sys.argv[1],
        data_root=sys.argv[2],
        model=sys.argv[3],
        preset=sys.argv[4],
        out=sys.argv[5],
    )
