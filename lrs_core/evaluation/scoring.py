"""LRS-VQA scoring exactly as the reference scores it (spec §7.3), plus the paper's averages.

Rule, per prediction line:

* ``gt = ground_truth.lower()`` and ``ans = text.lower()``, with no stripping and no punctuation
  removal (``"Yes."`` is wrong against ``yes``);
* a line whose ``gt`` or ``category`` is empty is skipped (not counted);
* correct iff ``gt == ans`` or the two share a WordNet synset (``grey``/``gray``,
  ``roads``/``road``, ``2``/``two``; multi-word strings match no lemma, so they need an exact
  match).

Lines are grouped by dataset, the prefix of ``question_id`` before the first ``_`` (the reference
reads a non-existent ``id`` field; spec §7.3 and §11). Per group: overall accuracy (OA) =
correct / counted over all lines, average accuracy (AA) = mean of the per-category accuracies of
the categories present. The paper's tables print AA per dataset ("Average Accuracy is reported for
each dataset"), so :attr:`LrsVqaScore.lrs_vqa_mean` is the mean of the three groups' AA, and the
four-benchmark mean adds MME-RealWorld-RS's overall accuracy as a fourth term.

Lines missing ``text`` count as an empty answer (wrong); lines missing ``ground_truth`` or
``category`` are skipped like empty ones, and counted in ``n_skipped``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import (
    DATASET_GROUPS,
    dataset_of,
    iter_jsonl,
    unique_prediction_rows,
)
from lrs_core.evaluation.mme import MmeScore

#: Accuracies are reported in percent, as the paper prints them.
PERCENT = 100.0
#: Decimal places of the reported percentages (the paper prints two).
PERCENT_DECIMALS = 2


class SynonymMatcher(Protocol):
    """Anything that says whether two lowercase answers are synonyms (e.g. ``WordNetMatcher``)."""

    def are_synonyms(self, first: str, second: str) -> bool:
        """Whether the two strings share a meaning."""
        ...


def is_correct(answer: str, ground_truth: str, *, matcher: SynonymMatcher) -> bool:
    """Return the reference's verdict: lowercase exact match, or a shared WordNet synset.

    Args:
        answer: the model's answer as written in the prediction's ``text``.
        ground_truth: the reference answer.
        matcher: synonym test, normally :class:`lrs_core.evaluation.wordnet.WordNetMatcher`.
    """
    gt, ans = ground_truth.lower(), answer.lower()
    return gt == ans or matcher.are_synonyms(gt, ans)


@dataclass(frozen=True, kw_only=True)
class CategoryCount:
    """Correct and counted lines of one category."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        """Correct / total as a fraction in [0, 1]."""
        return self.correct / self.total


@dataclass(frozen=True, kw_only=True)
class GroupScore:
    """Scores of one dataset group (FAIR, GLH-Bridge or STAR).

    Attributes:
        dataset: the group name.
        categories: per category, correct and counted lines (only categories with lines counted).
        n_skipped: lines skipped because their ground truth or category was empty or missing.
    """

    dataset: str
    categories: dict[str, CategoryCount]
    n_skipped: int = 0

    @property
    def n_correct(self) -> int:
        """Correct lines over all categories."""
        return sum(c.correct for c in self.categories.values())

    @property
    def n_total(self) -> int:
        """Counted lines over all categories."""
        return sum(c.total for c in self.categories.values())

    @property
    def overall_accuracy(self) -> float:
        """OA: correct / counted over the group, a fraction in [0, 1]."""
        return self.n_correct / self.n_total

    @property
    def average_accuracy(self) -> float:
        """AA: the mean of the per-category accuracies, a fraction in [0, 1].

        Summed in sorted category order, as the official script does, so the float (and its
        rounding on exact ties) is the same whatever order the lines came in.
        """
        accuracies = [self.categories[name].accuracy for name in sorted(self.categories)]
        return sum(accuracies) / len(accuracies)


def _percent(fraction: float) -> float:
    return round(fraction * PERCENT, PERCENT_DECIMALS)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True, kw_only=True)
class LrsVqaScore:
    """LRS-VQA scores per dataset group, their mean and, optionally, the four-benchmark mean.

    Attributes:
        groups: per dataset group present in the predictions, in :data:`DATASET_GROUPS` order
            first, then any other prefix in order of appearance.
        mme: MME-RealWorld-RS scores when given.
    """

    groups: dict[str, GroupScore]
    mme: MmeScore | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def lrs_vqa_mean(self) -> float | None:
        """Mean AA of the FAIR, GLH-Bridge and STAR groups present (fraction); None if none."""
        return _mean([self.groups[g].average_accuracy for g in DATASET_GROUPS if g in self.groups])

    @property
    def four_benchmark_mean(self) -> float | None:
        """Mean of the three LRS-VQA AAs and MME-RealWorld-RS accuracy (fraction).

        None unless MME results are given and all three LRS-VQA groups are present.
        """
        if self.mme is None or not all(g in self.groups for g in DATASET_GROUPS):
            return None
        terms = [self.groups[g].average_accuracy for g in DATASET_GROUPS]
        return _mean([*terms, self.mme.overall_accuracy])

    def to_json(self) -> dict[str, Any]:
        """Return the report: accuracies in percent, two decimals.

        Shape: ``{"datasets": {name: {"overall_accuracy", "average_accuracy", "categories":
        {category: acc}}}, "lrs_vqa_mean": ..}`` plus ``"mme_realworld_rs"`` and
        ``"four_benchmark_mean"`` when MME results were given.
        """
        datasets = {
            name: {
                "overall_accuracy": _percent(group.overall_accuracy),
                "average_accuracy": _percent(group.average_accuracy),
                "categories": {
                    category: _percent(count.accuracy)
                    for category, count in group.categories.items()
                },
            }
            for name, group in self.groups.items()
        }
        mean = self.lrs_vqa_mean
        report: dict[str, Any] = {
            "datasets": datasets,
            "lrs_vqa_mean": None if mean is None else _percent(mean),
        }
        if self.mme is not None:
            four = self.four_benchmark_mean
            report["mme_realworld_rs"] = _percent(self.mme.overall_accuracy)
            report["four_benchmark_mean"] = None if four is None else _percent(four)
        return report


def score_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    matcher: SynonymMatcher,
    mme: MmeScore | None = None,
) -> LrsVqaScore:
    """Score prediction rows (dicts of prediction lines) per dataset group.

    Args:
        rows: prediction lines; each needs ``question_id``; ``text``, ``ground_truth`` and
            ``category`` may be missing (see the module docstring).
        matcher: synonym test.
        mme: MME-RealWorld-RS scores to fold into the four-benchmark mean.

    Raises:
        DatasetError: a row has no string ``question_id``, a field is not a string, or an id
            repeats (chunk files merged twice would double-count).
    """
    counts: dict[str, dict[str, list[int]]] = {}
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    for index, row in enumerate(rows):
        question_id = row.get("question_id")
        if not isinstance(question_id, str):
            raise DatasetError(f"prediction {index}: no string 'question_id' (got {question_id!r})")
        if question_id in seen:
            raise DatasetError(
                f"prediction {question_id!r} appears twice; merge chunk files once and remove "
                "duplicated lines"
            )
        seen.add(question_id)
        values = {}
        for name in ("text", "ground_truth", "category"):
            value = row.get(name)
            if value is not None and not isinstance(value, str):
                raise DatasetError(
                    f"prediction {question_id!r}: '{name}' is not a string: {value!r}"
                )
            values[name] = value or ""
        group = dataset_of(question_id)
        per_category = counts.setdefault(group, {})
        if not values["ground_truth"] or not values["category"]:
            skipped[group] = skipped.get(group, 0) + 1
            continue
        tally = per_category.setdefault(values["category"], [0, 0])
        tally[0] += int(is_correct(values["text"], values["ground_truth"], matcher=matcher))
        tally[1] += 1
    order = [g for g in DATASET_GROUPS if g in counts] + [
        g for g in counts if g not in DATASET_GROUPS
    ]
    groups = {
        name: GroupScore(
            dataset=name,
            categories={
                category: CategoryCount(correct=c, total=t)
                for category, (c, t) in counts[name].items()
            },
            n_skipped=skipped.get(name, 0),
        )
        for name in order
        if counts[name]
    }
    notes = tuple(
        f"{name}: all {skipped[name]} lines skipped (empty ground truth or category)"
        for name in order
        if not counts[name]
    )
    return LrsVqaScore(groups=groups, mme=mme, notes=notes)


def read_prediction_rows(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Concatenate the JSON objects of one or more prediction files (chunks are merged this way).

    A question id never comes out twice: its first line without an ``error`` is kept (else its
    first line), and dropped extra answers are counted in a warning. A file given twice is read
    once.

    Raises:
        DatasetError: a file is missing, a line is not JSON, or a line is not a JSON object.
    """
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    for path in dict.fromkeys(Path(p).resolve() for p in paths):
        names.append(str(path))
        for line_no, row in iter_jsonl(path):
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object")
            rows.append(row)
    return [
        dict(row)
        for row in unique_prediction_rows(rows, id_key="question_id", source=", ".join(names))
    ]


def score_files(
    paths: Iterable[Path], *, matcher: SynonymMatcher, mme: MmeScore | None = None
) -> LrsVqaScore:
    """Score one or more LRS-VQA prediction files together (see :func:`score_rows`)."""
    return score_rows(read_prediction_rows(paths), matcher=matcher, mme=mme)
