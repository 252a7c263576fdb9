"""Tests of ``lrs ask``: answers, JSON records, question files, dry runs and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyproj import Transformer
from shapely.geometry import Point, shape
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.records import AnswerRecord
from tests.fixtures.cli import ask_argv
from tests.fixtures.scenes import SCENE_EPSG, SCENE_ORIGIN_XY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


def _ask(scene: Path, model: Path, *options: str) -> tuple[int, str]:
    result = runner.invoke(build_app(), ask_argv(scene, model, *options))
    return result.exit_code, result.stdout


def test_json_record_has_the_documented_keys(
    tiny_model_dir: Path, ingested_store: Path, tmp_path: Path
) -> None:
    geojson = tmp_path / "answers.geojson"
    code, out = _ask(
        ingested_store,
        tiny_model_dir,
        "--question",
        "How many ships are in the harbour?",
        "--max-new-tokens",
        "2",
        "--json",
        "--geojson",
        str(geojson),
    )
    assert code == 0, out
    (line,) = out.strip().splitlines()
    data = json.loads(line)
    assert data["preset"] == "default" and isinstance(data["answer"], str)
    # The record is written once: no second copy, no second evidence list.
    assert "record" not in data and "evidence" not in data
    record = AnswerRecord.from_dict(data)
    as_json = json.loads(json.dumps(record.to_dict()))
    assert as_json == {k: v for k, v in data.items() if k != "footprints"}
    acc = data["accounting"]
    for key in ("vision_tiles_encoded", "llm_prefill_tokens", "vision_tokens_to_llm"):
        assert isinstance(acc[key], int) and acc[key] > 0
    assert acc["flops"]["total_flops"] > 0 and acc["seconds"]["total"] > 0
    # Footprints of the final tiles: pixels, scene CRS (0.5 m pixels), EPSG:4326.
    final = [t for t in record.evidence_tiles if t.is_final]
    assert len(data["footprints"]) == len(final) > 0
    to_lonlat = Transformer.from_crs(SCENE_EPSG, 4326, always_xy=True)
    for footprint, tile in zip(data["footprints"], final, strict=True):
        x0, y0, x1, y1 = footprint["bbox_px"]
        assert [x0, y0, x1, y1] == list(tile.bbox_px)
        assert 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 700
        scene_xy = np.asarray(footprint["scene_crs"]["coordinates"][0])
        assert scene_xy[:, 0].min() == pytest.approx(SCENE_ORIGIN_XY[0] + 0.5 * x0)
        assert scene_xy[:, 1].max() == pytest.approx(SCENE_ORIGIN_XY[1] - 0.5 * y0)
        lonlat = shape(footprint["lonlat"])
        lon, lat = to_lonlat.transform(
            SCENE_ORIGIN_XY[0] + 0.5 * (x0 + x1) / 2, SCENE_ORIGIN_XY[1] - 0.5 * (y0 + y1) / 2
        )
        assert lonlat.contains(Point(lon, lat))
    # --geojson: the answer and its footprints, EPSG:4326.
    collection = json.loads(geojson.read_text())
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds[0] == "answer" and kinds.count("tile") == len(final)


def test_questions_file_gives_one_line_each_and_dry_run(
    tiny_model_dir: Path, ingested_store: Path, tmp_path: Path
) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        '{"question_id": "a", "question": "What is red?"}\n'
        '{"question_id": "b", "question": "Where?"}\n'
    )
    asked = (ingested_store, tiny_model_dir, "--questions", str(questions), "--preset", "grid-3")
    code, out = _ask(*asked, "--max-new-tokens", "1", "--json")
    assert code == 0, out
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["question_id"] for line in lines] == ["a", "b"]
    assert (
        lines[1]["accounting"]["vision_tiles_cached"]
        == lines[0]["accounting"]["vision_tiles_encoded"]
    )
    code, planned = _ask(*asked, "--dry-run", "--json")
    assert code == 0
    plans = [json.loads(line) for line in planned.strip().splitlines()]
    assert all(p["accounting"]["planned"] for p in plans)
    assert (
        plans[0]["accounting"]["llm_prefill_tokens"] == lines[0]["accounting"]["llm_prefill_tokens"]
    )


def test_human_output_prints_answer_and_accounting(
    tiny_model_dir: Path, ingested_store: Path
) -> None:
    result = runner.invoke(
        build_app(),
        ask_argv(
            ingested_store,
            tiny_model_dir,
            "--question",
            "What is red?",
            "--preset",
            "thumbnail",
            "--max-new-tokens",
            "1",
        ),
    )
    assert result.exit_code == 0
    assert "measured: tiles 1" in result.output


def test_exit_codes(tiny_model_dir: Path, ingested_store: Path, tmp_path: Path) -> None:
    base = (ingested_store, tiny_model_dir)
    code, _ = _ask(*base)
    assert code == 2  # neither --question nor --questions
    code, _ = _ask(*base, "--question", "x", "--questions", str(tmp_path / "q.txt"))
    assert code == 2
    code, _ = _ask(*base, "--question", "x", "--preset", "nonsense")
    assert code == 2
    code, out = _ask(
        *base, "--question", "What is red?", "--preset", "thumbnail", "--budget", "50", "--json"
    )
    assert code == 1
    assert "TokenBudgetError" in json.loads(out)["error"]
    code, _ = _ask(tmp_path / "none.zarr", tiny_model_dir, "--question", "x")
    assert code == 1
