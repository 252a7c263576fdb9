from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrs_core.errors import DatasetError
from lrs_core.evaluation.mme import (
    MME_END_PROMPT,
    MmeItem,
    build_prompt,
    extract_choice_letter,
    normalise_category,
    read_items,
    score_items,
)

CHOICES = ["(A) 13", "(B) 90", "(C) harbour", "(D) 6", "(E) The image does not feature the buses"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),
        ("  (C) harbour ", "C"),
        ("The best answer is D", "D"),  # prefix removed, then the first letter
        ("The correct answer is: A.", "A"),
        ("The answer is 13", "A"),  # no letter after removal: substring of choice (A)
        ("the answer is b", ""),  # prefixes are case-sensitive; 'the answer is b' is in no choice
        ("harbour", "C"),  # substring fallback, case-insensitive
        ("HARBOUR", "A"),  # any capital A-E counts, even inside a word (the 'A' of HARBOUR)
        ("90", "B"),
        ("one two three four five six seven eight nine ten eleven", ""),  # > 10 words, no letter
        ("one two three four five six seven eight nine ten eleven A", "A"),  # long, has a letter
        ("Eleven A", "E"),  # the first capital A-E wins, here the 'E' of 'Eleven'
        ("Answer: E", "A"),  # the first [ABCDE] character anywhere: the 'A' of 'Answer'
        ("Best option: C", "B"),  # 'Best option:' alone is not a prefix; 'B' is the first letter
        ("The best option is C", "C"),  # glued prefix not removed; the 'C' is found anyway
        ("", "A"),  # the empty string is a substring of every choice: the first one wins
        ("zebra", ""),
    ],
)
def test_letter_extraction_rules(output: str, expected: str) -> None:
    assert extract_choice_letter(output, CHOICES) == expected


def test_prompt_matches_spec() -> None:
    item = MmeItem(
        question_id="q",
        image="remote_sensing/a.png",
        text="How many buses?",
        choices=("(A) 1", "(B) 2"),
        ground_truth="A",
        task="Perception",
        subtask="Remote Sensing",
        category="count",
    )
    assert build_prompt(item) == (
        "<image>\nHow many buses? The choices are listed below: \n\n(A) 1\n(B) 2\n" + MME_END_PROMPT
    )


def test_category_normalisation() -> None:
    assert normalise_category("Vehicle/Color attribute") == "vehicle/attribute"
    assert normalise_category("Position") == "position"


def _item(qid: str, gt: str, out: str, category: str = "count", task: str = "Perception") -> dict:
    return {
        "Question_id": qid,
        "Image": "remote_sensing/a.png",
        "Text": "Q",
        "Answer choices": CHOICES,
        "Ground truth": gt,
        "Task": task,
        "Subtask": "Remote Sensing",
        "Category": category,
        "Output": out,
    }


def test_read_json_list_and_jsonl_and_score_micro_averages(tmp_path: Path) -> None:
    rows = [
        _item("1", "A", "A"),
        _item("2", "B", "A"),
        _item("3", "C", "harbour", category="color/attribute x", task="Reasoning"),
    ]
    as_list, as_lines = tmp_path / "a.json", tmp_path / "b.json"
    as_list.write_text(json.dumps(rows))
    as_lines.write_text("\n".join(json.dumps(r) for r in rows))
    assert read_items(as_list) == read_items(as_lines)
    score = score_items(read_items(as_list))
    assert (score.n_correct, score.n_total) == (2, 3)
    assert score.per_task == {"Perception": (1, 2), "Reasoning": (1, 1)}
    assert score.per_category[("Reasoning", "Remote Sensing", "color/attribute")] == (1, 1)
    assert score.overall_accuracy == pytest.approx(2 / 3)


def test_missing_output_and_bad_choices_are_errors(tmp_path: Path) -> None:
    row = _item("1", "A", "A")
    del row["Output"]
    with pytest.raises(DatasetError, match="Output"):
        score_items([MmeItem(**{**_parsed(row)})])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**row, "Answer choices": "A"}]))
    with pytest.raises(DatasetError, match="Answer choices"):
        read_items(bad)


def _parsed(row: dict) -> dict:
    from lrs_core.evaluation.mme import parse_item

    item = parse_item(row)
    return {f: getattr(item, f) for f in item.__dataclass_fields__}
