from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import DatasetError
from lrs_core.evaluation.mme import score_file
from lrs_core.evaluation.scoring import is_correct, score_files, score_rows


class ExactOnly:
    """A matcher with no synonyms, for the arithmetic tests."""

    def are_synonyms(self, first: str, second: str) -> bool:
        return False


def row(qid: str, category: str | None, gt: str | None, text: str | None) -> dict:
    data: dict = {"question_id": qid}
    if category is not None:
        data["category"] = category
    if gt is not None:
        data["ground_truth"] = gt
    if text is not None:
        data["text"] = text
    return data


# Hand-made predictions whose scores are worked out by hand in the comments.
HAND_MADE = [
    row("FAIR_1", "object color", "grey", "gray"),  # synonym: correct
    row("FAIR_2", "object color", "white", "White"),  # case-insensitive: correct
    row("FAIR_3", "object color", "white", "white."),  # punctuation: wrong
    row("FAIR_4", "count", "2", "two"),  # digit/word synonym: correct
    row("FAIR_5", "count", "3", "4"),  # wrong
    row("FAIR_6", "reasoning", "yes", "Yes."),  # punctuation: wrong
    row("FAIR_7", "reasoning", "yes", "no"),  # antonym: wrong
    row("FAIR_8", "reasoning", "", "yes"),  # empty gt: skipped
    row("FAIR_9", None, "yes", "yes"),  # missing category: skipped
    row("FAIR_10", "reasoning", "yes", None),  # missing answer: wrong
    row("GLH-Bridge_1", "object category", "ship", "boat"),  # not a shared synset: wrong
    row("GLH-Bridge_2", "object category", "road", "roads"),  # plural: correct
    row("GLH-Bridge_3", "object background", "storage tank", "storage tank"),  # exact: correct
    row("GLH-Bridge_4", "object background", "storage tank", "storage tanks"),  # multi-word: wrong
    row("GLH-Bridge_5", "object background", "Storage Tank", "storage tank"),  # case: correct
    row("STAR_1", "rural or urban", "urban", "urban"),
    row("STAR_2", "rural or urban", "rural", "urban"),
    row("STAR_3", "object shape", "circle", "a circle"),
    row("STAR_4", "object shape", "square", "square"),
]
# FAIR: color 2/3, count 1/2, reasoning 0/3 -> OA 3/8 = 37.50, AA (66.67 + 50 + 0) / 3 = 38.89
# GLH-Bridge: category 1/2, background 2/3 -> OA 3/5 = 60.00, AA (50 + 66.67) / 2 = 58.33
# STAR: rural 1/2, shape 1/2 -> OA 50.00, AA 50.00; mean of AAs = 49.07
MME_ROWS = [
    {
        "Question_id": f"rs/{i}",
        "Image": "remote_sensing/x.png",
        "Text": "Q?",
        "Answer choices": ["(A) one", "(B) two", "(C) three", "(D) four", "(E) none"],
        "Ground truth": gt,
        "Task": "Perception",
        "Subtask": "Remote Sensing",
        "Category": "count",
        "Output": out,
    }
    for i, (gt, out) in enumerate(
        [("A", "A"), ("B", "The answer is B."), ("C", "three"), ("D", "A")]
    )
]  # 3 of 4 correct -> 75.00; four-benchmark mean (38.89 + 58.33 + 50 + 75) / 4 = 55.56


@pytest.fixture
def hand_made_file(tmp_path: Path) -> Path:
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HAND_MADE))
    return path


@pytest.fixture
def mme_file(tmp_path: Path) -> Path:
    path = tmp_path / "mme.json"  # JSONL content under a .json name, as the reference writes it
    path.write_text("".join(json.dumps(r) + "\n" for r in MME_ROWS))
    return path


@pytest.mark.parametrize(
    ("gt", "answer", "expected"),
    [
        ("grey", "gray", True),
        ("gray", "grey", True),
        ("road", "roads", True),
        ("roads", "road", True),
        ("2", "two", True),
        ("ship", "boat", False),
        ("yes", "no", False),
        ("yes", "Yes.", False),
        ("yes", "YES", True),
        ("storage tank", "storage tank", True),
        ("storage tank", "storage tanks", False),
        ("white", " white", False),
        ("", "", True),
    ],
)
def test_is_correct_case_by_case(wordnet_matcher, gt: str, answer: str, expected: bool) -> None:
    assert is_correct(answer, gt, matcher=wordnet_matcher) is expected


def test_hand_made_file_known_scores(wordnet_matcher, hand_made_file: Path, mme_file: Path) -> None:
    result = score_files([hand_made_file], matcher=wordnet_matcher, mme=score_file(mme_file))
    report = result.to_json()
    assert report == {
        "datasets": {
            "FAIR": {
                "overall_accuracy": 37.5,
                "average_accuracy": 38.89,
                "categories": {"object color": 66.67, "count": 50.0, "reasoning": 0.0},
            },
            "GLH-Bridge": {
                "overall_accuracy": 60.0,
                "average_accuracy": 58.33,
                "categories": {"object category": 50.0, "object background": 66.67},
            },
            "STAR": {
                "overall_accuracy": 50.0,
                "average_accuracy": 50.0,
                "categories": {"rural or urban": 50.0, "object shape": 50.0},
            },
        },
        "lrs_vqa_mean": 49.07,
        "mme_realworld_rs": 75.0,
        "four_benchmark_mean": 55.56,
    }
    assert result.groups["FAIR"].n_skipped == 2
    assert result.groups["FAIR"].n_total == 8


def test_oa_aa_arithmetic_without_synonyms() -> None:
    rows = [row(f"STAR_{i}", "count", "1", "1" if i < 9 else "0") for i in range(10)]
    rows += [row("STAR_10", "object color", "red", "blue")]
    result = score_rows(rows, matcher=ExactOnly())
    star = result.groups["STAR"]
    assert star.overall_accuracy == pytest.approx(9 / 11)
    assert star.average_accuracy == pytest.approx((0.9 + 0.0) / 2)
    assert result.lrs_vqa_mean == pytest.approx(0.45)  # the only group present
    assert result.four_benchmark_mean is None


def test_average_accuracy_sums_categories_in_sorted_order() -> None:
    # accuracies 1/3 ('zone'), 2/3 ('area'), 2/4 ('mid') in that line order: summed as they come
    # the float is 1.5, in sorted order (area, mid, zone) 1.4999999999999998, as the official script
    rows = [row("STAR_z0", "zone", "1", "1")] + [
        row(f"STAR_z{i}", "zone", "1", "0") for i in (1, 2)
    ]
    rows += [row(f"STAR_a{i}", "area", "1", "1") for i in (0, 1)] + [
        row("STAR_a2", "area", "1", "0")
    ]
    rows += [row(f"STAR_m{i}", "mid", "1", "1" if i < 2 else "0") for i in range(4)]
    star = score_rows(rows, matcher=ExactOnly()).groups["STAR"]
    assert list(star.categories) == ["zone", "area", "mid"]
    in_line_order = (1 / 3 + 2 / 3 + 2 / 4) / 3
    in_sorted_order = (2 / 3 + 2 / 4 + 1 / 3) / 3
    assert in_line_order != in_sorted_order
    assert star.average_accuracy == in_sorted_order


def test_groups_follow_question_id_prefix_and_chunks_merge(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps(row("GLH-Bridge_1", "count", "1", "1")) + "\n")
    second.write_text(json.dumps(row("GLH-Bridge_2", "count", "1", "2")) + "\n\n")
    result = score_files([first, second], matcher=ExactOnly())
    assert list(result.groups) == ["GLH-Bridge"]
    assert result.groups["GLH-Bridge"].overall_accuracy == 0.5


def test_duplicate_ids_and_missing_id_are_refused() -> None:
    with pytest.raises(DatasetError, match="twice"):
        score_rows([row("FAIR_1", "count", "1", "1")] * 2, matcher=ExactOnly())
    with pytest.raises(DatasetError, match="question_id"):
        score_rows([{"id": "FAIR_1", "category": "count"}], matcher=ExactOnly())


def test_group_with_only_skipped_rows_is_reported_as_a_note() -> None:
    result = score_rows([row("FAIR_1", "count", "", "1")], matcher=ExactOnly())
    assert result.groups == {}
    assert result.notes and "FAIR" in result.notes[0]


def test_cli_score_json(wordnet_matcher, hand_made_file: Path, mme_file: Path, monkeypatch) -> None:
    from lrs_core.evaluation import wordnet

    # The command builds WordNetMatcher() from NLTK's data path, as the session fixture does;
    # reuse the loaded one (loading takes seconds).
    monkeypatch.setattr(wordnet, "WordNetMatcher", lambda *args, **kwargs: wordnet_matcher)
    out = CliRunner().invoke(
        build_app(), ["eval", "score", str(hand_made_file), "--mme", str(mme_file), "--json"]
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert set(report) == {"datasets", "lrs_vqa_mean", "mme_realworld_rs", "four_benchmark_mean"}
    assert report["datasets"]["FAIR"]["average_accuracy"] == 38.89
    assert report["four_benchmark_mean"] == 55.56


def test_cli_score_table(wordnet_matcher, hand_made_file: Path, monkeypatch) -> None:
    from lrs_core.evaluation import wordnet

    monkeypatch.setattr(wordnet, "WordNetMatcher", lambda *args, **kwargs: wordnet_matcher)
    table = CliRunner().invoke(build_app(), ["eval", "score", str(hand_made_file)])
    assert table.exit_code == 0, table.output
    assert "38.89" in table.output and "49.07" in table.output


def test_cli_score_missing_file_exits_1(tmp_path: Path) -> None:
    out = CliRunner().invoke(build_app(), ["eval", "score", str(tmp_path / "none.jsonl")])
    assert out.exit_code == 1
