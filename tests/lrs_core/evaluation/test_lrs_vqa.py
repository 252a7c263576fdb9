from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import (
    ANSWER_SUFFIX,
    COUNT_ANSWER_SUFFIX,
    RECORD_KEY,
    answered_ids,
    append_predictions,
    drop_partial_tail,
    group_by_scene,
    iter_scenes,
    make_prediction,
    parse_question,
    read_predictions,
    read_questions,
    resolve_image_path,
    select_chunk,
)

REAL_FILE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "LRS_VQA_merged.jsonl"

CATEGORY_TABLE = {  # spec §7.1: category -> (FAIR, GLH-Bridge, STAR)
    "rural or urban": (400, 252, 600),
    "count": (400, 400, 399),
    "reasoning": (400, 0, 600),
    "object status": (400, 0, 600),
    "object category": (387, 0, 600),
    "object shape": (285, 0, 600),
    "object color": (0, 165, 600),
    "object background": (0, 245, 0),
}


def _row(**overrides: object) -> dict:
    row = {
        "question_id": "FAIR_1",
        "image": "LRS_VQA/image/1.tif",
        "category": "object color",
        "text": "What colour?" + ANSWER_SUFFIX,
        "ground_truth": "red",
        "hbox": [1, 2, 11, 22],
        "rbox": [1.0, 22.0, 1.0, 2.0, 11.0, 2.0, 11.0, 22.0],
        "abs_size": "small",
        "image_size": [100, 80],
        "size_bin": "32x32",
    }
    row.update(overrides)
    return {k: v for k, v in row.items() if v is not None}


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"needs {REAL_FILE}")
def test_real_question_file_matches_spec_counts(tmp_path: Path) -> None:
    questions = read_questions(REAL_FILE)
    assert len(questions) == 7333
    assert Counter(q.dataset for q in questions) == {"FAIR": 2272, "GLH-Bridge": 1062, "STAR": 3999}
    for category, per_group in CATEGORY_TABLE.items():
        for group, expected in zip(("FAIR", "GLH-Bridge", "STAR"), per_group, strict=True):
            got = sum(1 for q in questions if q.category == category and q.dataset == group)
            assert got == expected, (category, group)
    counts = [q for q in questions if q.category == "count"]
    assert all(q.hbox is None and q.text.endswith(COUNT_ANSWER_SUFFIX) for q in counts)
    others = [q for q in questions if q.category != "count"]
    assert len(others) == 6134
    assert all(q.hbox is not None and q.text.endswith(ANSWER_SUFFIX) for q in others)
    assert Counter(q.size_bin for q in others)["32x32"] == 820
    assert sum(1 for q in questions if q.image.endswith(".tif")) == 2272
    scenes = group_by_scene(questions, data_root=tmp_path)
    assert len(scenes) == 1228
    per_group = Counter(s.questions[0].dataset for s in scenes)
    assert per_group == {"FAIR": 323, "GLH-Bridge": 419, "STAR": 486}
    assert max(len(s.questions) for s in scenes) == 78
    assert all(s.image_path.is_relative_to(tmp_path.resolve()) for s in scenes)


def test_parse_validates_fields() -> None:
    question = parse_question(_row())
    assert question.dataset == "FAIR" and question.image_size_wh == (100, 80)
    assert question.prompt == "<image>\nWhat colour?" + ANSWER_SUFFIX + "\n"
    assert parse_question(question.to_dict()) == question
    with pytest.raises(DatasetError, match="ground_truth"):
        parse_question({k: v for k, v in _row().items() if k != "ground_truth"})
    with pytest.raises(DatasetError, match="unknown category"):
        parse_question(_row(category="colour"))
    with pytest.raises(DatasetError, match="hbox"):
        parse_question(_row(hbox=[1, 2, 3]))
    with pytest.raises(DatasetError, match="xmin > xmax"):
        parse_question(_row(hbox=[11, 2, 1, 22], rbox=None))
    with pytest.raises(DatasetError, match="bound"):
        parse_question(_row(hbox=[0, 0, 5, 5]))
    with pytest.raises(DatasetError, match="image_size"):
        parse_question(_row(image_size=[0, 10]))


def test_read_questions_reports_line_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(_row()) + "\n")
    with pytest.raises(DatasetError, match=r"q.jsonl:2: question_id 'FAIR_1' repeats line 1"):
        read_questions(path)
    path.write_text(json.dumps(_row()) + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"q.jsonl:2: not valid JSON"):
        read_questions(path)
    with pytest.raises(DatasetError, match="cannot open"):
        read_questions(tmp_path / "absent.jsonl")


def test_image_paths_stay_inside_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "LRS_VQA" / "image").mkdir(parents=True)
    (root / "LRS_VQA" / "image" / "1.tif").write_bytes(b"x")
    assert resolve_image_path(root, "LRS_VQA/image/1.tif", must_exist=True) == (
        root.resolve() / "LRS_VQA" / "image" / "1.tif"
    )
    for bad in ("../secret.tif", "LRS_VQA/../../secret.tif", "/etc/passwd", ""):
        with pytest.raises(DatasetError, match="data root"):
            resolve_image_path(root, bad)
    (tmp_path / "outside.tif").write_bytes(b"x")
    os.symlink(tmp_path / "outside.tif", root / "LRS_VQA" / "image" / "link.tif")
    with pytest.raises(DatasetError, match="outside the data root"):
        resolve_image_path(root, "LRS_VQA/image/link.tif")
    with pytest.raises(DatasetError, match="missing"):
        resolve_image_path(root, "LRS_VQA/image/2.tif", must_exist=True)


def test_chunks_are_contiguous_ceil_splits() -> None:
    questions = [parse_question(_row(question_id=f"FAIR_{i}")) for i in range(10)]
    chunks = [select_chunk(questions, num_chunks=3, chunk_idx=i) for i in range(3)]
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert sum(chunks, []) == questions
    with pytest.raises(DatasetError):
        select_chunk(questions, num_chunks=3, chunk_idx=3)


def test_iter_scenes_groups_resumes_and_limits(tmp_path: Path) -> None:
    (tmp_path / "LRS_VQA" / "image").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (tmp_path / "LRS_VQA" / "image" / name).write_bytes(b"x")
    rows = [
        _row(question_id="STAR_1", image="LRS_VQA/image/a.png"),
        _row(question_id="STAR_2", image="LRS_VQA/image/b.png"),
        _row(question_id="STAR_3", image="LRS_VQA/image/a.png"),
    ]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scenes = list(iter_scenes(qfile, data_root=tmp_path))
    assert [(s.image, [q.question_id for q in s.questions]) for s in scenes] == [
        ("LRS_VQA/image/a.png", ["STAR_1", "STAR_3"]),
        ("LRS_VQA/image/b.png", ["STAR_2"]),
    ]
    scenes = list(iter_scenes(qfile, data_root=tmp_path, skip_ids={"STAR_1"}, limit=2))
    assert [[q.question_id for q in s.questions] for s in scenes] == [["STAR_2"]]
    rows.append(_row(question_id="STAR_4", image="LRS_VQA/image/c.png"))
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match="missing"):
        list(iter_scenes(qfile, data_root=tmp_path))


def test_prediction_records_round_trip_with_reference_fields(tmp_path: Path) -> None:
    question = parse_question(_row())
    record = make_prediction(
        question, answer="  Red \n", model_id="tiny", answer_id="id1", extra={RECORD_KEY: {"x": 1}}
    )
    line = record.to_dict()
    assert list(line)[:10] == [
        "question_id",
        "prompt",
        "category",
        "text",
        "ground_truth",
        "answer_id",
        "model_id",
        "ori_hbox",
        "ori_rbox",
        "metadata",
    ]
    assert line["text"] == "Red" and line["prompt"] == "<image>\n" + question.text + "\n"
    assert line["ori_hbox"] == [1, 2, 11, 22] and line[RECORD_KEY] == {"x": 1}
    path = tmp_path / "pred.jsonl"
    assert append_predictions(path, [record]) == 1
    assert read_predictions(path) == [record]
    assert answered_ids(path) == {"FAIR_1"}
    assert answered_ids(tmp_path / "none.jsonl") == set()
    assert make_prediction(question, answer="a", model_id="m").answer_id  # a fresh unique id


def test_partial_last_line_is_dropped_before_resuming(tmp_path: Path) -> None:
    question = parse_question(_row())
    path = tmp_path / "pred.jsonl"
    append_predictions(path, [make_prediction(question, answer="red", model_id="m")])
    complete = path.read_bytes()
    assert drop_partial_tail(path) is False and path.read_bytes() == complete
    path.write_bytes(complete + b'{"question_id": "FAIR_2", "te')  # killed mid-write
    with pytest.raises(DatasetError, match="not valid JSON"):
        answered_ids(path)
    assert drop_partial_tail(path) is True
    assert path.read_bytes() == complete and answered_ids(path) == {"FAIR_1"}
    path.write_bytes(complete + b'{"question_id": "FAIR_2"}')  # complete JSON, newline lost
    assert drop_partial_tail(path) is True
    assert answered_ids(path) == {"FAIR_1", "FAIR_2"}
    assert drop_partial_tail(tmp_path / "absent.jsonl") is False
