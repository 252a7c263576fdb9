from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import DatasetError
from lrs_core.evaluation.focus_metrics import (
    focus_report,
    is_top_token_in_box,
    question_focus,
    union_coverage,
)
from lrs_core.evaluation.lrs_vqa import (
    ANSWER_SUFFIX,
    COUNT_ANSWER_SUFFIX,
    RECORD_KEY,
    append_predictions,
    make_prediction,
    parse_question,
)
from lrs_core.records import AnswerRecord, SceneRef, TileEvidence, TokenEvidence


def tile(box, *, final: bool = True, level: int = 2) -> TileEvidence:
    return TileEvidence(dip_level=level, tile_rc=(0, 0), bbox_px=box, is_final=final)


def token(box, score: float) -> TokenEvidence:
    return TokenEvidence(dip_level=2, grid_rc=(0, 0), bbox_px=box, score=score)


def record(qid: str, tiles=(), tokens=()) -> AnswerRecord:
    return AnswerRecord(
        question_id=qid,
        scene=SceneRef(scene_id="s", store="s.zarr", size_wh=(1000, 700)),
        question="q",
        answer="a",
        model_id="m",
        preset="default",
        evidence_tiles=tuple(tiles),
        evidence_tokens=tuple(tokens),
    )


def question(qid: str, category: str, hbox, size_bin: str | None = "64x64"):
    row = {
        "question_id": qid,
        "image": "LRS_VQA/image/a.png",
        "category": category,
        "text": "q" + (COUNT_ANSWER_SUFFIX if category == "count" else ANSWER_SUFFIX),
        "ground_truth": "x",
    }
    if hbox is not None:
        x0, y0, x1, y1 = hbox
        row.update(hbox=list(hbox), rbox=[x0, y0, x1, y0, x1, y1, x0, y1], size_bin=size_bin)
    return parse_question(row)


def test_union_coverage_counts_overlaps_once() -> None:
    box = (0.0, 0.0, 10.0, 10.0)
    assert union_coverage(box, [(0, 0, 6, 10), (4, 0, 10, 5)]) == pytest.approx(0.8)
    assert union_coverage(box, [(-5, -5, 20, 20)]) == 1.0
    assert union_coverage(box, [(10, 0, 20, 10)]) == 0.0  # touching edges cover nothing
    assert union_coverage(box, []) == 0.0
    assert union_coverage((5.0, 5.0, 5.0, 5.0), [(0, 0, 10, 10)]) == 1.0


def test_question_focus_uses_final_tiles_and_best_token() -> None:
    q = question("FAIR_1", "object color", (100, 100, 200, 200))
    rec = record(
        "FAIR_1",
        tiles=[tile((0, 0, 1000, 700), final=False, level=1), tile((150, 0, 400, 400))],
        tokens=[token((0, 0, 14, 14), 0.2), token((140, 140, 154, 154), 0.5)],
    )
    focus = question_focus(q, rec)
    assert focus.box_coverage == pytest.approx(0.5)  # the coarse non-final tile is ignored
    assert focus.top_token_in_box is True
    assert focus.tiles_visited == 2
    assert is_top_token_in_box(record("x"), (0, 0, 1, 1)) is None
    assert question_focus(question("FAIR_2", "count", None), rec) is None


def test_report_aggregates_per_category_size_bin_and_dataset() -> None:
    questions = [
        question("FAIR_1", "object color", (0, 0, 10, 10), "32x32"),
        question("FAIR_2", "object color", (0, 0, 10, 10), "64x64"),
        question("STAR_1", "object shape", (0, 0, 10, 10), "32x32"),
        question("STAR_2", "count", None),
    ]
    full, half = tile((0, 0, 10, 10)), tile((0, 0, 5, 10))
    inside, outside = token((1, 1, 2, 2), 1.0), token((50, 50, 60, 60), 1.0)
    predictions = [
        ("FAIR_1", record("FAIR_1", [full], [inside]).to_dict()),
        ("FAIR_2", record("FAIR_2", [half, tile((0, 0, 1, 1), final=False)], [outside]).to_dict()),
        ("STAR_1", record("STAR_1", [], []).to_dict()),
        ("STAR_2", record("STAR_2", [full], []).to_dict()),
    ]
    report = focus_report(predictions, questions)
    by_category = report.by_category()
    assert by_category["object color"].mean_box_coverage == pytest.approx(0.75)
    assert by_category["object color"].top_token_in_box_rate == pytest.approx(0.5)
    assert by_category["object color"].mean_tiles_visited == pytest.approx(1.5)
    assert by_category["object shape"].top_token_in_box_rate is None
    assert report.by_size_bin()["32x32"].mean_box_coverage == pytest.approx(0.5)
    assert report.by_dataset()["STAR"].n_questions == 1  # the count question has no box
    assert json.loads(json.dumps(report.to_json()))["n_questions"] == 3
    with pytest.raises(DatasetError, match="not in the question file"):
        focus_report([("FAIR_9", None)], questions)


def test_cli_focus_on_a_prediction_file(tmp_path: Path) -> None:
    q = question("GLH-Bridge_1", "object background", (0, 0, 100, 100), "128x128")
    (tmp_path / "LRS_VQA_merged.jsonl").write_text(json.dumps(q.to_dict()) + "\n")
    rec = record(q.question_id, [tile((0, 0, 50, 100))], [token((10, 10, 20, 20), 0.9)])
    pred = tmp_path / "pred.jsonl"
    append_predictions(
        pred, [make_prediction(q, answer="water", model_id="m", extra={RECORD_KEY: rec.to_dict()})]
    )
    out = CliRunner().invoke(
        build_app(), ["eval", "focus", str(pred), "--data", str(tmp_path), "--json"]
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)["by_dataset"]["GLH-Bridge"]
    assert summary["mean_box_coverage"] == pytest.approx(0.5)
    assert summary["top_token_in_box_rate"] == 1.0
    table = CliRunner().invoke(build_app(), ["eval", "focus", str(pred), "--data", str(tmp_path)])
    assert table.exit_code == 0 and "0.500" in table.output
