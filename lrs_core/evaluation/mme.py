"""MME-RealWorld-RS: its JSON items, the prompt of spec §8 and the benchmark's own scoring.

Items are JSON objects with ``Question_id``, ``Image`` (relative to the data folder, e.g.
``remote_sensing/03553_Toronto.png``), ``Text``, ``Answer choices`` (``"(A) ..."`` strings),
``Ground truth`` (a letter), ``Task``, ``Subtask`` and ``Category``. Prediction files are the items
plus ``Output``; the reference names its merged output ``.json`` although it holds JSONL, so both
a JSON list and JSONL are read whatever the extension.

Scoring reproduces MME-RealWorld's ``evaluation/eval_your_results.py`` exactly, quirks included:
the answer "prefixes" are removed wherever they occur (``str.replace``), two of them are glued
together by missing commas in the original list (so "The best option is" alone is not removed),
and the substring fallback tests whether the output is contained in a choice, so an empty output
picks the first choice's letter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import iter_jsonl

#: The sentence appended to every MME-RealWorld prompt (spec §8).
MME_END_PROMPT = (
    "Select the best answer to the above multiple-choice question based on the image. "
    "Respond with only the letter (A, B, C, D, or E) of the correct option."
)

#: Strings removed from the output before the letter is taken, verbatim from
#: ``eval_your_results.py``; the last two entries are each two prefixes concatenated by missing
#: commas in the original.
ANSWER_PREFIXES: tuple[str, ...] = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",  # two entries glued by a missing comma upstream
    "Best answer:Best option:",  # likewise
)

#: Outputs longer than this many words with no choice letter score as no answer.
MAX_WORDS_WITHOUT_LETTER = 10

_LETTER = re.compile(r"[ABCDE]")
#: Position of the letter in a choice string ``"(A) ..."``.
_CHOICE_LETTER_INDEX = 1


@dataclass(frozen=True, kw_only=True)
class MmeItem:
    """One MME-RealWorld item.

    Attributes:
        question_id: ``Question_id``.
        image: ``Image``, relative to the data folder.
        text: ``Text``, the question.
        choices: ``Answer choices``, e.g. ``("(A) 13", "(B) 90", ...)``.
        ground_truth: ``Ground truth`` letter, or None when absent.
        task: ``Task`` (``Perception`` / ``Reasoning``).
        subtask: ``Subtask`` (``Remote Sensing`` for the RS split).
        category: ``Category``.
        output: ``Output``, the model's raw answer, or None in a question file.
    """

    question_id: str
    image: str
    text: str
    choices: tuple[str, ...]
    ground_truth: str | None
    task: str
    subtask: str
    category: str
    output: str | None = None


def build_prompt(item: MmeItem) -> str:
    """Return the reference prompt: image token, question, choices, then :data:`MME_END_PROMPT`."""
    body = (
        item.text + " The choices are listed below: \n" + "\n" + "\n".join(item.choices)
    ).strip()
    return "<image>\n" + body + "\n" + MME_END_PROMPT


def extract_choice_letter(output: str, choices: Sequence[str]) -> str:
    """Return the choice letter an output names, exactly as ``eval_your_results.py`` does.

    1. Strip the output and remove every :data:`ANSWER_PREFIXES` occurrence.
    2. More than :data:`MAX_WORDS_WITHOUT_LETTER` words and no ``[ABCDE]``: ``""``.
    3. The first ``[ABCDE]`` character anywhere in the output, if any.
    4. Otherwise the letter of the first choice containing the output (case-insensitive), or ``""``.

    Args:
        output: the model's raw answer.
        choices: the item's ``Answer choices`` (``"(A) ..."``).
    """
    text = output.strip()
    for prefix in ANSWER_PREFIXES:
        text = text.replace(prefix, "")
    has_letter = _LETTER.search(text)
    if len(text.split()) > MAX_WORDS_WITHOUT_LETTER and has_letter is None:
        return ""
    if has_letter is not None:
        return has_letter.group(0)
    for choice in choices:
        if text.lower() in choice.lower():
            return choice[_CHOICE_LETTER_INDEX]
    return ""


def normalise_category(category: str) -> str:
    """Return the scorer's category key: lowercase; ``x/..attribute..`` becomes ``x/attribute``."""
    key = category.lower()
    if "attribute" in key:
        key = key.split("/")[0] + "/attribute"
    return key


def _str_field(row: Mapping[str, Any], name: str, where: str, *, required: bool) -> str | None:
    value = row.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field '{name}' is missing or not a string")
    return value


def parse_item(row: Mapping[str, Any], *, where: str = "<item>") -> MmeItem:
    """Validate one MME-RealWorld object.

    Raises:
        DatasetError: a required field is missing or has the wrong type.
    """
    if not isinstance(row, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    choices = row.get("Answer choices")
    if not isinstance(choices, list) or not all(
        isinstance(c, str) and len(c) > _CHOICE_LETTER_INDEX for c in choices
    ):
        raise DatasetError(f"{where}: 'Answer choices' must be a list of '(X) ...' strings")
    return MmeItem(
        question_id=str(_str_field(row, "Question_id", where, required=True)),
        image=str(_str_field(row, "Image", where, required=True)),
        text=str(_str_field(row, "Text", where, required=True)),
        choices=tuple(choices),
        ground_truth=_str_field(row, "Ground truth", where, required=False),
        task=_str_field(row, "Task", where, required=False) or "",
        subtask=_str_field(row, "Subtask", where, required=False) or "",
        category=_str_field(row, "Category", where, required=False) or "",
        output=_str_field(row, "Output", where, required=False),
    )


def read_raw_rows(path: Path) -> list[tuple[str, Any]]:
    """Read the raw rows of a JSON list or JSONL file, each with where it stands.

    Returns:
        ``(where, row)`` pairs in file order; ``where`` is ``path[i]`` or ``path:line``.

    Raises:
        DatasetError: the file cannot be read or parsed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from err
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: not a valid JSON list ({err.msg})") from err
        return [(f"{path}[{i}]", row) for i, row in enumerate(rows)]
    return [(f"{path}:{line_no}", row) for line_no, row in iter_jsonl(path)]


def read_items(path: Path) -> list[MmeItem]:
    """Read MME-RealWorld items or predictions from a JSON list or a JSONL file.

    Raises:
        DatasetError: the file cannot be read or parsed, or an item is invalid.
    """
    return [parse_item(row, where=where) for where, row in read_raw_rows(path)]


@dataclass(frozen=True, kw_only=True)
class MmeScore:
    """MME-RealWorld accuracies, micro-averaged at every level (fractions in [0, 1]).

    Attributes:
        n_correct: items whose extracted letter equals the ground truth.
        n_total: items scored.
        per_task: ``{task: (correct, total)}``.
        per_subtask: ``{(task, subtask): (correct, total)}``.
        per_category: ``{(task, subtask, category): (correct, total)}`` with normalised categories.
    """

    n_correct: int
    n_total: int
    per_task: dict[str, tuple[int, int]]
    per_subtask: dict[tuple[str, str], tuple[int, int]]
    per_category: dict[tuple[str, str, str], tuple[int, int]]

    @property
    def overall_accuracy(self) -> float:
        """Correct / total over all items."""
        return self.n_correct / self.n_total


def _add(table: dict[Any, tuple[int, int]], key: Any, correct: bool) -> None:
    c, t = table.get(key, (0, 0))
    table[key] = (c + int(correct), t + 1)


def score_items(items: Iterable[MmeItem]) -> MmeScore:
    """Score MME-RealWorld predictions (items with ``Output``).

    Raises:
        DatasetError: no items, or an item lacks ``Output`` or ``Ground truth``.
    """
    per_task: dict[str, tuple[int, int]] = {}
    per_subtask: dict[tuple[str, str], tuple[int, int]] = {}
    per_category: dict[tuple[str, str, str], tuple[int, int]] = {}
    n_correct = n_total = 0
    for item in items:
        if item.output is None or item.ground_truth is None:
            raise DatasetError(
                f"MME item {item.question_id!r} has no 'Output' or no 'Ground truth'; pass a "
                "prediction file"
            )
        correct = extract_choice_letter(item.output, item.choices) == item.ground_truth
        _add(per_task, item.task, correct)
        _add(per_subtask, (item.task, item.subtask), correct)
        _add(per_category, (item.task, item.subtask, normalise_category(item.category)), correct)
        n_correct += int(correct)
        n_total += 1
    if n_total == 0:
        raise DatasetError("no MME-RealWorld predictions to score")
    return MmeScore(
        n_correct=n_correct,
        n_total=n_total,
        per_task=per_task,
        per_subtask=per_subtask,
        per_category=per_category,
    )


def score_file(path: Path) -> MmeScore:
    """Read and score an MME-RealWorld prediction file (JSON list or JSONL), one item per id.

    A repeated ``Question_id`` keeps its first line without an ``error`` (warned, see
    :func:`lrs_core.dedupe.first_per_id`).
    """
    from lrs_core.dedupe import first_per_id
    from lrs_core.evaluation.lrs_vqa import ERROR_KEY

    pairs = [(parse_item(row, where=where), row) for where, row in read_raw_rows(path)]
    kept = first_per_id(
        pairs,
        id_of=lambda pair: pair[0].question_id,
        failed=lambda pair: pair[1].get(ERROR_KEY) is not None,
        source=str(path),
    )
    return score_items([item for item, _ in kept])
