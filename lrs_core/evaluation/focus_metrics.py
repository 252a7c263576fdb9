"""Focus metrics: did the engine look where the question's object is?

For every question with an ``hbox`` and an answer record (a prediction line's
:data:`~lrs_core.evaluation.lrs_vqa.RECORD_KEY`):

* ``box_coverage``: the fraction of the hbox area covered by the union of the final evidence tiles
  (``TileEvidence.is_final``), in [0, 1];
* ``top_token_in_box``: whether the centre of the highest-scored kept token lies inside the hbox
  (None when the record kept no scored token);
* ``tiles_visited``: the number of tiles the engine encoded or selected, all levels together.

All boxes are ``(x0, y0, x1, y1)`` level-0 pixel corners, x (column) first. Results are averaged
per category, per ``size_bin`` and per dataset group.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import (
    RECORD_KEY,
    LrsVqaQuestion,
    read_predictions,
    read_questions,
)
from lrs_core.records import AnswerRecord, BBoxPx

_TWO = 2


def union_coverage(box: BBoxPx, tiles: Sequence[BBoxPx]) -> float:
    """Return the fraction of ``box``'s area covered by the union of ``tiles`` (exact).

    Uses coordinate compression over the tile edges clipped to the box, so overlapping tiles are
    counted once.

    Args:
        box: (x0, y0, x1, y1) corners; a degenerate box (zero area) gives 1.0 when a tile
            contains its centre, else 0.0.
        tiles: (x0, y0, x1, y1) corners in the same frame.
    """
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    if area <= 0:
        cx, cy = (x0 + x1) / _TWO, (y0 + y1) / _TWO
        return float(any(t[0] <= cx <= t[2] and t[1] <= cy <= t[3] for t in tiles))
    clipped = [
        (max(t[0], x0), max(t[1], y0), min(t[2], x1), min(t[3], y1))
        for t in tiles
        if t[2] > x0 and t[0] < x1 and t[3] > y0 and t[1] < y1
    ]
    if not clipped:
        return 0.0
    xs = sorted({v for t in clipped for v in (t[0], t[2])})
    ys = sorted({v for t in clipped for v in (t[1], t[3])})
    covered = 0.0
    for xa, xb in zip(xs, xs[1:], strict=False):
        for ya, yb in zip(ys, ys[1:], strict=False):
            if any(t[0] <= xa and xb <= t[2] and t[1] <= ya and yb <= t[3] for t in clipped):
                covered += (xb - xa) * (yb - ya)
    return covered / area


def is_top_token_in_box(record: AnswerRecord, box: BBoxPx) -> bool | None:
    """Whether the highest-scored kept token's centre lies in ``box`` (None without tokens).

    Ties keep the first token in record order.
    """
    if not record.evidence_tokens:
        return None
    top = max(record.evidence_tokens, key=lambda token: token.score)
    cx = (top.bbox_px[0] + top.bbox_px[2]) / _TWO
    cy = (top.bbox_px[1] + top.bbox_px[3]) / _TWO
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


@dataclass(frozen=True, kw_only=True)
class QuestionFocus:
    """Focus metrics of one question.

    Attributes:
        question_id: the question.
        dataset: dataset group (prefix of the id).
        category: question category.
        size_bin: the question's size bin (``"unknown"`` when the question file has none).
        box_coverage: fraction of the hbox covered by the final evidence tiles, [0, 1].
        top_token_in_box: whether the best token's centre is in the hbox; None without tokens.
        tiles_visited: tiles in the record, all DIP levels.
    """

    question_id: str
    dataset: str
    category: str
    size_bin: str
    box_coverage: float
    top_token_in_box: bool | None
    tiles_visited: int


def question_focus(question: LrsVqaQuestion, record: AnswerRecord) -> QuestionFocus | None:
    """Return the focus metrics of one answered question, or None when it has no hbox."""
    if question.hbox is None:
        return None
    final_tiles = [tile.bbox_px for tile in record.evidence_tiles if tile.is_final]
    return QuestionFocus(
        question_id=question.question_id,
        dataset=question.dataset,
        category=question.category,
        size_bin=question.size_bin or "unknown",
        box_coverage=union_coverage(question.hbox, final_tiles),
        top_token_in_box=is_top_token_in_box(record, question.hbox),
        tiles_visited=len(record.evidence_tiles),
    )


@dataclass(frozen=True, kw_only=True)
class FocusSummary:
    """Averages of :class:`QuestionFocus` over a set of questions.

    Attributes:
        n_questions: questions averaged.
        mean_box_coverage: mean of ``box_coverage``.
        top_token_in_box_rate: share of questions (with tokens) whose best token is in the box;
            None when no question had tokens.
        mean_tiles_visited: mean of ``tiles_visited``.
    """

    n_questions: int
    mean_box_coverage: float
    top_token_in_box_rate: float | None
    mean_tiles_visited: float


def summarize(items: Sequence[QuestionFocus]) -> FocusSummary:
    """Average focus metrics over ``items`` (must not be empty).

    Raises:
        DatasetError: ``items`` is empty.
    """
    if not items:
        raise DatasetError("no questions to summarise focus metrics over")
    hits = [i.top_token_in_box for i in items if i.top_token_in_box is not None]
    return FocusSummary(
        n_questions=len(items),
        mean_box_coverage=sum(i.box_coverage for i in items) / len(items),
        top_token_in_box_rate=None if not hits else sum(hits) / len(hits),
        mean_tiles_visited=sum(i.tiles_visited for i in items) / len(items),
    )


def _by(items: Sequence[QuestionFocus], attribute: str) -> dict[str, FocusSummary]:
    groups: dict[str, list[QuestionFocus]] = {}
    for item in items:
        groups.setdefault(getattr(item, attribute), []).append(item)
    return {key: summarize(groups[key]) for key in sorted(groups)}


@dataclass(frozen=True, kw_only=True)
class FocusReport:
    """Focus metrics of a prediction file.

    Attributes:
        questions: per question with an hbox and an answer record.
        n_without_record: prediction lines with no answer record (not scored).
    """

    questions: tuple[QuestionFocus, ...]
    n_without_record: int = 0

    def by_category(self) -> dict[str, FocusSummary]:
        """Summaries per question category."""
        return _by(self.questions, "category")

    def by_size_bin(self) -> dict[str, FocusSummary]:
        """Summaries per ``size_bin``."""
        return _by(self.questions, "size_bin")

    def by_dataset(self) -> dict[str, FocusSummary]:
        """Summaries per dataset group."""
        return _by(self.questions, "dataset")

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON values (fractions, not percent)."""

        def dump(table: Mapping[str, FocusSummary]) -> dict[str, Any]:
            return {
                key: {
                    "n_questions": s.n_questions,
                    "mean_box_coverage": s.mean_box_coverage,
                    "top_token_in_box_rate": s.top_token_in_box_rate,
                    "mean_tiles_visited": s.mean_tiles_visited,
                }
                for key, s in table.items()
            }

        return {
            "n_questions": len(self.questions),
            "n_without_record": self.n_without_record,
            "by_dataset": dump(self.by_dataset()),
            "by_category": dump(self.by_category()),
            "by_size_bin": dump(self.by_size_bin()),
        }


def focus_report(
    predictions: Iterable[tuple[str, Mapping[str, Any] | None]],
    questions: Iterable[LrsVqaQuestion],
) -> FocusReport:
    """Join answer records with their questions and compute focus metrics.

    Args:
        predictions: ``(question_id, answer_record_dict or None)`` pairs.
        questions: the question file's questions (for hbox, size_bin, category).

    Raises:
        DatasetError: a prediction's question id is not in the question file.
    """
    by_id = {q.question_id: q for q in questions}
    results: list[QuestionFocus] = []
    missing_record = 0
    for question_id, record_dict in predictions:
        question = by_id.get(question_id)
        if question is None:
            raise DatasetError(
                f"prediction {question_id!r} is not in the question file; pass the file the "
                "predictions were made from (--questions)"
            )
        if record_dict is None:
            missing_record += 1
            continue
        focus = question_focus(question, AnswerRecord.from_dict(dict(record_dict)))
        if focus is not None:
            results.append(focus)
    return FocusReport(questions=tuple(results), n_without_record=missing_record)


def focus_report_files(predictions: Path, *, question_file: Path) -> FocusReport:
    """Compute focus metrics of a prediction file against its question file.

    Raises:
        DatasetError: a file is unreadable, a record is malformed, or an id is unknown.
    """
    records = read_predictions(predictions)
    pairs = [(r.question_id, r.extra.get(RECORD_KEY)) for r in records]
    try:
        return focus_report(pairs, read_questions(question_file))
    except (KeyError, TypeError) as err:
        raise DatasetError(f"{predictions}: malformed answer record ({err!r})") from err
