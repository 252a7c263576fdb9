"""Score a finished benchmark run: the benchmark's own scorer plus, for LRS-VQA, focus metrics.

One entry point for the ``evaluate`` flow (and anyone scripting a run): :func:`score_run` picks the
scorer by benchmark and returns plain JSON values. Failed lines (an ``error`` field) are handled as
each benchmark allows: LRS-VQA counts them as wrong answers (their ``text`` is empty), so the score
is not inflated; MME-RealWorld-RS failed lines have no ``Output`` and its scorer cannot read them,
so the run is not scored until a rerun answers them (``scores`` is None and ``note`` says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import iter_jsonl
from lrs_core.evaluation.mme import score_file
from lrs_core.evaluation.runner import BENCHMARKS, ERROR_KEY, Benchmark
from lrs_core.evaluation.scoring import PERCENT, PERCENT_DECIMALS, SynonymMatcher, score_files


def _percent(fraction: float) -> float:
    return round(PERCENT * fraction, PERCENT_DECIMALS)


def count_failed(predictions: Path) -> int:
    """Return the number of lines of a prediction file that carry an ``error``."""
    return sum(
        1
        for _, row in iter_jsonl(Path(predictions))
        if isinstance(row, dict) and row.get(ERROR_KEY) is not None
    )


def score_run(
    benchmark: Benchmark,
    predictions: Path,
    *,
    question_file: Path | None = None,
    matcher: SynonymMatcher | None = None,
) -> dict[str, Any]:
    """Score a prediction file of ``benchmark``; return JSON values.

    Args:
        benchmark: ``lrs-vqa`` or ``mme``.
        predictions: the (merged) prediction file.
        question_file: the LRS-VQA question file, for focus metrics (None: no focus metrics).
        matcher: synonym test for LRS-VQA; None loads
            :class:`~lrs_core.evaluation.wordnet.WordNetMatcher` (needs ``lrs setup``).

    Returns:
        ``{"benchmark", "predictions", "n_failed", "scores", "focus", "note"}``: ``scores`` is
        :meth:`LrsVqaScore.to_json` for LRS-VQA (percent), or ``{"overall_accuracy",
        "per_task", "per_category", "n_total"}`` for MME (percent), or None with a ``note``;
        ``focus`` is :meth:`FocusReport.to_json` (fractions) or None.

    Raises:
        ConfigError: unknown benchmark.
        DatasetError: a file is unreadable or malformed, or WordNet is not installed.
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    n_failed = count_failed(predictions)
    report: dict[str, Any] = {
        "benchmark": benchmark,
        "predictions": str(predictions),
        "n_failed": n_failed,
        "scores": None,
        "focus": None,
        "note": None,
    }
    if benchmark == "lrs-vqa":
        if matcher is None:
            from lrs_core.evaluation.wordnet import WordNetMatcher

            matcher = WordNetMatcher()
        report["scores"] = score_files([Path(predictions)], matcher=matcher).to_json()
        if n_failed:
            report["note"] = f"{n_failed} failed questions are counted as wrong answers"
        if question_file is not None:
            from lrs_core.evaluation.focus_metrics import focus_report_files

            report["focus"] = focus_report_files(
                Path(predictions), question_file=Path(question_file)
            ).to_json()
        return report
    if n_failed:
        report["note"] = (
            f"not scored: {n_failed} items failed and have no 'Output'; rerun to answer them"
        )
        return report
    score = score_file(Path(predictions))
    report["scores"] = {
        "overall_accuracy": _percent(score.overall_accuracy),
        "per_task": {task: _percent(c / t) for task, (c, t) in score.per_task.items()},
        "per_category": {
            "/".join(key): _percent(c / t) for key, (c, t) in score.per_category.items()
        },
        "n_total": score.n_total,
    }
    return report
