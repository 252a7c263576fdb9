"""``lrs eval run`` end to end: the tiny model answers small real benchmark files, resumably.

Answering is the slow part (the tiny model on a shared CPU), so the module answers few questions:
a 3-question subset of a synthetic set once (reused by the score/resume/merge tests), its two
chunks, and 2 + 1 questions of the real LRS-VQA question file over images written at its paths.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import DatasetError
from lrs_core.evaluation.focus_metrics import focus_report_files
from lrs_core.evaluation.lrs_vqa import (
    QUESTION_FILE_NAME,
    REFERENCE_KEYS,
    read_predictions,
    read_questions,
)
from lrs_core.evaluation.merge import merge_predictions
from lrs_core.evaluation.mme import score_file
from lrs_core.evaluation.report import score_run
from lrs_core.evaluation.runner import (
    ERROR_KEY,
    RunSummary,
    chunk_bounds,
    default_store_dir,
    run_lrs_vqa,
    run_mme,
    scene_id_for,
)
from lrs_core.evaluation.scoring import is_correct, score_files
from lrs_core.evaluation.synth import SynthConfig, SynthSet, write_synthetic_set
from lrs_core.evaluation.wordnet import WordNetMatcher
from lrs_core.raster.ingest import IngestConfig
from lrs_core.records import AnswerRecord
from tests.fixtures.scenes import make_rgb_pattern

REAL_QUESTION_FILE = Path("/work/shared/data/LRS_VQA_merged.jsonl")
TINY_SYNTH = SynthConfig(
    seed=3,
    n_scenes=2,
    side_px=480,
    large_side_px=640,
    objects_per_scene=4,
    min_object_px=8,
    max_object_px=48,
)
#: Fast settings for tests that are not about the method: thumbnail preset, two new tokens.
FAST: dict[str, Any] = {"preset": "thumbnail", "overrides": {"max_new_tokens": 2}}
SMALL_INGEST = IngestConfig(chunk_px=128, n_workers=1, min_long_side_px=128)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_subset(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True)
def _single_torch_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    """Two small scenes (a GeoTIFF and a PNG) with questions of all categories."""
    return write_synthetic_set(tmp_path_factory.mktemp("synth"), config=TINY_SYNTH)


@pytest.fixture(scope="module")
def subset_file(synth: SynthSet) -> Path:
    """Three questions about two scenes: two of scene 0 (a box question first), one of scene 1."""
    rows = [q.to_dict() for q in synth.questions]
    first = [r for r in rows if r["image"] == synth.scenes[0].image and "hbox" in r][:2]
    second = [r for r in rows if r["image"] == synth.scenes[1].image][:1]
    return _write_subset(synth.data_root / "subset.jsonl", first + second)


@pytest.fixture(scope="module")
def first_run(
    synth: SynthSet,
    subset_file: Path,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RunSummary, Path]:
    """The subset answered once (read-only for the tests; copy ``out`` before resuming it)."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared test machine: threads only contend
    try:
        out = tmp_path_factory.mktemp("run") / "pred.jsonl"
        summary = run_lrs_vqa(
            subset_file,
            data_root=synth.data_root,
            model_dir=tiny_model_dir,
            out=out,
            ingest_config=SMALL_INGEST,
            **FAST,
        )
    finally:
        torch.set_num_threads(torch_threads)
    return summary, out


def test_run_writes_reference_fields_records_and_scores(
    first_run: tuple[RunSummary, Path], subset_file: Path, wordnet_matcher: WordNetMatcher
) -> None:
    summary, out = first_run
    assert (summary.n_selected, summary.n_answered, summary.n_failed) == (3, 3, 0)
    assert summary.n_scenes == 2 and summary.is_complete
    assert summary.store_dir == default_store_dir(out).absolute()
    questions = {q.question_id: q for q in read_questions(subset_file)}
    lines = _lines(out)
    assert [line["question_id"] for line in lines] == list(questions)
    for line in lines:
        assert tuple(line)[: len(REFERENCE_KEYS)] == REFERENCE_KEYS
        question = questions[line["question_id"]]
        assert line["prompt"] == "<image>\n" + question.text + "\n"
        assert line["ground_truth"] == question.ground_truth
        assert line["ori_hbox"] == (None if question.hbox is None else list(question.hbox))
        assert line["model_id"].endswith("/thumbnail") and ERROR_KEY not in line
        record = AnswerRecord.from_dict(line["record"])
        assert record.answer.strip() == line["text"] and record.heatmap is None
        assert record.scene.scene_id == scene_id_for(question.image)
        assert record.accounting.vision_tokens_to_llm > 0
    # Each image became one store, named after its relative path.
    stores = sorted(p.name for p in summary.store_dir.glob("*.zarr"))
    assert stores == ["LRS_VQA__image__synth_000_tif.zarr", "LRS_VQA__image__synth_001_png.zarr"]

    score = score_files([out], matcher=wordnet_matcher)
    assert sum(group.n_total for group in score.groups.values()) == 3
    assert set(score.groups) == {"FAIR", "GLH-Bridge"}
    report = score_run("lrs-vqa", out, question_file=subset_file, matcher=wordnet_matcher)
    assert report["scores"] == score.to_json() and report["n_failed"] == 0
    n_boxed = sum(q.hbox is not None for q in questions.values())
    assert report["focus"]["n_questions"] == n_boxed
    assert focus_report_files(out, question_file=subset_file).n_without_record == 0


def test_rerun_answers_nothing_and_loads_no_model(
    first_run: tuple[RunSummary, Path], subset_file: Path, synth: SynthSet, tmp_path: Path
) -> None:
    _, out = first_run
    copy = shutil.copy(out, tmp_path / "pred.jsonl")
    before = Path(copy).read_bytes()
    again = run_lrs_vqa(
        subset_file,
        data_root=synth.data_root,
        model_dir=tmp_path / "no-model-needed",  # nothing is pending, so nothing is loaded
        out=Path(copy),
        **FAST,
    )
    assert (again.n_already_done, again.n_answered, again.n_failed) == (3, 0, 0)
    assert Path(copy).read_bytes() == before


def test_killed_run_resumes_at_the_cut_line(
    first_run: tuple[RunSummary, Path],
    subset_file: Path,
    synth: SynthSet,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    summary, out = first_run
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    killed = tmp_path / "pred.jsonl"
    killed.write_bytes(data[: last_start + 40])  # died while writing the third line
    resumed = run_lrs_vqa(
        subset_file,
        data_root=synth.data_root,
        model_dir=tiny_model_dir,
        out=killed,
        store_dir=summary.store_dir,  # the stores are reused, not rebuilt
        ingest_config=SMALL_INGEST,
        **FAST,
    )
    assert (resumed.n_already_done, resumed.n_answered) == (2, 1)
    text = killed.read_bytes()
    assert text.startswith(data[:last_start])  # finished lines are never rewritten
    assert [p.question_id for p in read_predictions(killed)] == [
        line["question_id"] for line in _lines(out)
    ]


def test_chunks_merge_to_the_single_run(
    first_run: tuple[RunSummary, Path],
    subset_file: Path,
    synth: SynthSet,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    summary, out = first_run
    chunk_files = []
    for chunk_idx in range(2):
        chunk_out = tmp_path / f"pred.chunk{chunk_idx}.jsonl"
        result = run_lrs_vqa(
            subset_file,
            data_root=synth.data_root,
            model_dir=tiny_model_dir,
            out=chunk_out,
            store_dir=summary.store_dir,
            num_chunks=2,
            chunk_idx=chunk_idx,
            ingest_config=SMALL_INGEST,
            **FAST,
        )
        assert result.n_selected == (2, 1)[chunk_idx]  # ceil(3 / 2) = 2, then the rest
        chunk_files.append(chunk_out)
    merged = merge_predictions([*chunk_files, out], tmp_path / "merged.jsonl")
    # The single run's lines repeat the chunks' ids; same tiny model and preset, same answers.
    assert merged.n_rows == 3 and merged.n_duplicates == 3 and merged.n_failed == 0
    assert [r["question_id"] for r in _lines(merged.out)] == [r["question_id"] for r in _lines(out)]
    assert [r["text"] for r in _lines(merged.out)] == [r["text"] for r in _lines(out)]


def test_merge_prefers_answers_and_refuses_conflicts(tmp_path: Path) -> None:
    def row(qid: str, text: str, error: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"question_id": qid, "text": text}
        if error is not None:
            data[ERROR_KEY] = error
        return data

    a = _write_subset(
        tmp_path / "a.jsonl", [row("FAIR_1", "", "SceneReadError: x"), row("FAIR_2", "no")]
    )
    b = _write_subset(tmp_path / "b.jsonl", [row("FAIR_1", "yes"), row("FAIR_2", "no")])
    merged = merge_predictions([a, b], tmp_path / "m.jsonl")
    assert _lines(merged.out) == [row("FAIR_1", "yes"), row("FAIR_2", "no")]
    assert (merged.n_rows, merged.n_duplicates, merged.n_failed) == (2, 2, 0)
    c = _write_subset(tmp_path / "c.jsonl", [row("FAIR_2", "yes")])
    with pytest.raises(DatasetError, match="FAIR_2.*answered differently"):
        merge_predictions([a, c], tmp_path / "m2.jsonl")
    half = tmp_path / "half.jsonl"
    half.write_text(json.dumps(row("FAIR_3", "x")) + "\n" + '{"question_id": "FA')
    with pytest.raises(DatasetError, match="half.jsonl:2"):
        merge_predictions([half], tmp_path / "m3.jsonl")
    assert half.read_text().endswith('"FA')  # inputs are only read


def test_missing_image_gives_error_rows_and_exit_1(
    synth: SynthSet, tiny_model_dir: Path, tmp_path: Path
) -> None:
    row = synth.questions[0].to_dict()
    rows = [{**row, "question_id": f"FAIR_{n}", "image": "LRS_VQA/image/gone.png"} for n in (1, 2)]
    questions = _write_subset(tmp_path / QUESTION_FILE_NAME, rows)
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(
        build_app(),
        [
            "eval", "run", "lrs-vqa", "--data", str(tmp_path), "--model", str(tiny_model_dir),
            "--preset", "thumbnail", "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["n_answered"], summary["n_failed"]) == (0, 2)
    assert "gone.png" in summary["failures"][0]["error"]
    lines = _lines(out)
    assert [line["text"] for line in lines] == ["", ""]
    assert all("SceneNotFoundError" in line[ERROR_KEY] and "record" not in line for line in lines)
    # A rerun takes the failed lines out and tries them again (still failing here).
    again = run_lrs_vqa(questions, model_dir=tiny_model_dir, out=out, **FAST)
    assert (again.n_retried, again.n_failed, len(_lines(out))) == (2, 2, 2)


def test_image_path_escaping_the_root_is_refused(
    synth: SynthSet, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(synth.data_root / synth.scenes[1].image, tmp_path / "outside.png")
    row = {**synth.questions[0].to_dict(), "image": "../outside.png"}
    _write_subset(root / QUESTION_FILE_NAME, [row])
    out = tmp_path / "pred.jsonl"
    with pytest.raises(DatasetError, match="outside the data root"):
        run_lrs_vqa(root, model_dir=tiny_model_dir, out=out, **FAST)
    assert not out.exists()
    mme_item = {
        "Question_id": "q1",
        "Image": "../outside.png",
        "Text": "?",
        "Answer choices": ["(A) a", "(B) b"],
        "Ground truth": "A",
    }
    (root / "MME_RealWorld_RS.json").write_text(json.dumps([mme_item]))
    with pytest.raises(DatasetError, match="outside the data root"):
        run_mme(root, model_dir=tiny_model_dir, out=out, **FAST)
    assert not out.exists()


def test_chunk_bounds_are_the_reference_splits() -> None:
    n_items, num_chunks = 7333, 4
    size = math.ceil(n_items / num_chunks)
    bounds = [chunk_bounds(n_items, num_chunks=num_chunks, chunk_idx=i) for i in range(num_chunks)]
    assert bounds == [(0, size), (size, 2 * size), (2 * size, 3 * size), (3 * size, n_items)]
    assert chunk_bounds(2, num_chunks=3, chunk_idx=2) == (2, 2)
    with pytest.raises(DatasetError, match="chunk_idx=3 of num_chunks=3"):
        chunk_bounds(5, num_chunks=3, chunk_idx=3)


def _write_image(path: Path, size_wh: tuple[int, int], *, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = make_rgb_pattern(size_wh[1], size_wh[0], seed=seed)
    Image.fromarray(np.moveaxis(pixels, 0, -1)).save(path)  # plain TIFF / PNG, as shipped


@pytest.mark.skipif(not REAL_QUESTION_FILE.is_file(), reason=f"needs {REAL_QUESTION_FILE}")
def test_real_question_file_end_to_end(
    tiny_model_dir: Path, tmp_path: Path, wordnet_matcher: WordNetMatcher
) -> None:
    """The shipped 7,333-question file, small images at the paths it names (the shipped layout)."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(REAL_QUESTION_FILE, root / QUESTION_FILE_NAME)
    questions = read_questions(root / QUESTION_FILE_NAME)
    second_chunk_start = math.ceil(len(questions) / 3)
    wanted = [questions[0], questions[1], questions[second_chunk_start]]
    for seed, image in enumerate(sorted({q.image for q in wanted})):
        _write_image(root / image, (400, 300), seed=seed)  # the real ones are 4000 px and more
    assert {Path(q.image).suffix for q in wanted} == {".tif", ".png"}
    out = tmp_path / "pred.jsonl"
    common = [
        "eval", "run", "lrs-vqa", "--data", str(root), "--model", str(tiny_model_dir),
        "--preset", "thumbnail", "--max-new-tokens", "2", "--out", str(out), "--json",
    ]  # fmt: skip
    app = build_app()
    first = CliRunner().invoke(app, [*common, "--limit", "2"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["n_answered"] == 2
    second = CliRunner().invoke(
        app, [*common, "--num-chunks", "3", "--chunk-idx", "1", "--limit", "1"]
    )
    assert second.exit_code == 0, second.output
    lines = _lines(out)
    assert [line["question_id"] for line in lines] == [q.question_id for q in wanted]
    assert lines[2]["question_id"] == "GLH-Bridge_174"  # the first question of chunk 2 of 3
    assert all(line["category"] and line["ground_truth"] for line in lines)
    # Scored in-process with the session's WordNet (the CLI would load WordNet again, ~10 s).
    report = score_files([out], matcher=wordnet_matcher).to_json()
    assert set(report["datasets"]) == {"FAIR", "GLH-Bridge"}
    right = is_correct(lines[2]["text"], lines[2]["ground_truth"], matcher=wordnet_matcher)
    assert report["datasets"]["GLH-Bridge"]["categories"] == {
        lines[2]["category"]: 100.0 if right else 0.0
    }


def test_mme_run_writes_output_and_scores(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "mme"
    _write_image(root / "remote_sensing" / "03553_Toronto.png", (360, 240), seed=4)
    item = {
        "Question_id": "perception/remote_sensing/color/0001",
        "Image": "remote_sensing/03553_Toronto.png",
        "Text": "What color is the roof of the largest building?",
        "Answer choices": ["(A) red", "(B) blue", "(C) green", "(D) white", "(E) black"],
        "Ground truth": "D",
        "Task": "Perception",
        "Subtask": "Remote Sensing",
        "Category": "color",
    }
    missing = {
        **item,
        "Question_id": "perception/remote_sensing/color/0002",
        "Image": "remote_sensing/gone.png",
    }
    (root / "MME_RealWorld_RS.json").write_text(json.dumps([item, missing]))
    out = tmp_path / "mme_pred.jsonl"
    summary = run_mme(root, model_dir=tiny_model_dir, out=out, **FAST)
    assert (summary.n_answered, summary.n_failed) == (1, 1)
    answered, failed = _lines(out)
    assert {k: answered[k] for k in item} == item and isinstance(answered["Output"], str)
    assert "Output" not in failed and "SceneNotFoundError" in failed[ERROR_KEY]
    assert AnswerRecord.from_dict(answered["record"]).answer.strip() == answered["Output"]
    assert score_run("mme", out)["scores"] is None  # a failed item has no Output to score
    answered_only = _write_subset(tmp_path / "answered.jsonl", [answered])
    assert score_file(answered_only).n_total == 1
    assert score_run("mme", answered_only)["scores"]["n_total"] == 1


def test_ingest_only_fills_the_shared_store_for_all_chunks(synth: SynthSet, tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    args = [
        "eval", "run", "lrs-vqa", "--data", str(synth.data_root), "--model", str(tmp_path / "none"),
        "--out", str(tmp_path / "pred.jsonl"), "--stores", str(stores), "--num-chunks", "2",
        "--limit", "1", "--ingest-only", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    scenes = json.loads(result.stdout)["scenes"]
    # Chunk 1 starts in scene 0 and chunk 2 in scene 1: both are ingested, and no model is needed.
    assert sorted(s["scene_id"] for s in scenes) == [scene_id_for(s.image) for s in synth.scenes]
    assert all((stores / f"{s['scene_id']}.zarr").is_dir() for s in scenes)
    assert not (tmp_path / "pred.jsonl").exists()
