"""The QA builder on a DOTA fixture written by hand: every category, right answers, right boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lrs_core.evaluation.lrs_vqa import CATEGORIES, parse_question
from lrs_core.world.annotations import read_dota
from lrs_core.world.qa import QaConfig, build_questions, plural_of

# Three ships on water (the left-most is red and moving), a plane, a tank; a real user would
# annotate like this (category words joined by '-').
FIXTURE = """imagesource:my-drone
gsd:0.3
landcover:rural
100 500 160 500 160 520 100 520 ship 0 color=red shape=ellipse status=moving background=water
300 500 380 500 380 530 300 530 ship 0 color=white shape=ellipse status=stationary background=water
600 500 640 500 640 520 600 520 ship 0 color=white shape=ellipse status=stationary background=water
900 100 1000 100 1000 200 900 200 plane 0 color=black shape=cross background=fields
700 700 740 700 740 740 700 740 storage-tank 0 color=blue shape=circle background=fields
"""


def _questions(tmp_path: Path, seed: int = 0) -> list:
    path = tmp_path / "scene.txt"
    path.write_text(FIXTURE)
    counter = iter(range(1, 10_000))
    return build_questions(
        read_dota(path),
        image="LRS_VQA/image/scene.tif",
        image_size_wh=(1200, 800),
        rng=np.random.default_rng(seed),
        next_id=lambda: f"WORLD_{next(counter)}",
        config=QaConfig(count_categories=("ship", "plane", "storage tank", "bridge")),
    )


def test_every_category_is_asked_and_parses(tmp_path: Path) -> None:
    questions = _questions(tmp_path)
    assert {q.category for q in questions} == set(CATEGORIES)
    for question in questions:
        # the LRS-VQA reader accepts every line (hbox is the bound of rbox, fields typed)
        assert parse_question(question.to_dict(), where="test") == question


def test_counts_including_absent_categories(tmp_path: Path) -> None:
    counts = {
        q.text.split("\n")[0]: q.ground_truth for q in _questions(tmp_path) if q.category == "count"
    }
    assert counts == {
        "How many ships are there in the image?": "3",
        "How many planes are there in the image?": "1",
        "How many storage tanks are there in the image?": "1",
        "How many bridges are there in the image?": "0",
    }


def test_referring_answers_and_boxes(tmp_path: Path) -> None:
    for seed in range(6):
        for q in _questions(tmp_path, seed):
            text = q.text.split("\n")[0]
            if text == "What is the color of the left-most ship?":
                assert q.ground_truth == "red" and q.hbox == (100, 500, 160, 520)
            if text == "Is the left-most ship moving or stationary?":
                assert q.ground_truth == "moving"
            if text == "What is the color of the right-most ship?":
                assert q.ground_truth == "white" and q.hbox == (600, 500, 640, 520)
            if text == "What is the category of the top-most black object?":
                assert q.ground_truth == "plane" and q.hbox == (900, 100, 1000, 200)
            if text == "What is the shape of the bottom-most blue object?":
                assert q.ground_truth == "circle"
            if text.startswith("What is the background around the"):
                assert q.ground_truth in ("water", "fields")
            if q.category == "rural or urban":
                assert q.ground_truth == "rural"
            if q.category != "count":
                assert q.abs_size is not None and q.size_bin is not None


def test_tied_extremes_are_not_asked(tmp_path: Path) -> None:
    # the top edges of all three ships tie (y = 500), so "top-most ship" is never asked
    texts = {q.text for seed in range(8) for q in _questions(tmp_path, seed)}
    assert not any("top-most ship" in t for t in texts)
    assert any("bottom-most ship" in t or "left-most ship" in t for t in texts)


def test_plurals() -> None:
    assert plural_of("storage tank") == "storage tanks"
    assert plural_of("bus") == "buses"
    assert plural_of("ferry") == "ferries"
