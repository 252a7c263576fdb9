from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import CATEGORIES, group_by_scene, read_questions
from lrs_core.evaluation.synth import (
    COLORS,
    PATCH_COLORS,
    SynthConfig,
    abs_size_of,
    size_bin_of,
    write_synthetic_set,
)

SMALL = SynthConfig(
    seed=7,
    n_scenes=3,
    side_px=600,
    large_side_px=900,
    objects_per_scene=10,
    min_object_px=8,
    max_object_px=64,
)


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) of a synthetic scene, PNG or GeoTIFF."""
    if path.suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    with rasterio.open(path) as dataset:
        return np.moveaxis(dataset.read(), 0, -1)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory):
    return write_synthetic_set(tmp_path_factory.mktemp("synth"), config=SMALL)


def test_set_parses_with_the_lrs_vqa_reader(small_set) -> None:
    questions = read_questions(small_set.question_file)
    assert tuple(questions) == small_set.questions
    assert set(q.category for q in questions) == set(CATEGORIES)
    assert {q.dataset for q in questions} == {"FAIR", "GLH-Bridge", "STAR"}
    scenes = group_by_scene(questions, data_root=small_set.data_root, must_exist=True)
    assert [s.image for s in scenes] == [s.image for s in small_set.scenes]
    assert [s.image for s in scenes] == [
        "LRS_VQA/image/synth_000.tif",
        "LRS_VQA/image/synth_001.png",
        "LRS_VQA/image/synth_002.png",
    ]
    for question in questions:
        width, height = question.image_size_wh
        if question.category == "count":
            assert question.hbox is None and question.size_bin is None
            continue
        x0, y0, x1, y1 = question.hbox
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert question.size_bin == size_bin_of(question.hbox)


def test_pixels_show_the_planted_objects_and_answers_match(small_set) -> None:
    manifest = json.loads((small_set.data_root / "synth_objects.json").read_text())
    for scene, meta in zip(small_set.scenes, manifest["scenes"], strict=True):
        rgb = read_rgb(small_set.data_root / scene.image)
        assert rgb.shape == (scene.size_wh[1], scene.size_wh[0], 3)
        assert len(meta["objects"]) == len(scene.objects)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.hbox
            centre = rgb[(y0 + y1) // 2, (x0 + x1) // 2]
            assert tuple(centre) == COLORS[obj.color], (scene.image, obj)
            patch = obj.patch_box
            assert tuple(rgb[patch[1] + 1, patch[2] - 2]) == PATCH_COLORS[obj.background]
        kinds = Counter(o.kind for o in scene.objects)
        for question in small_set.questions:
            if question.image == scene.image and question.category == "count":
                kind = question.text.split("How many ")[1].split("s are")[0]
                assert question.ground_truth == str(kinds[kind])


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small_set) -> None:
    again = write_synthetic_set(tmp_path / "again", config=SMALL)
    for name in [s.image for s in small_set.scenes] + ["LRS_VQA_merged.jsonl"]:
        assert (again.data_root / name).read_bytes() == (small_set.data_root / name).read_bytes()
    other = write_synthetic_set(
        tmp_path / "other", config=SynthConfig(**{**SMALL.__dict__, "seed": 8})
    )
    assert other.question_file.read_bytes() != small_set.question_file.read_bytes()


def test_scene_over_10k_px_is_written_with_bounded_memory(tmp_path: Path) -> None:
    config = SynthConfig(
        seed=1,
        n_scenes=1,
        large_side_px=10_400,
        large_short_side_px=2_600,
        objects_per_scene=6,
        strip_bytes=2 * 2**20,
    )
    full_bytes = 10_400 * 2_600 * 3
    tracemalloc.start()
    try:
        result = write_synthetic_set(tmp_path, config=config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    path = tmp_path / result.scenes[0].image
    with rasterio.open(path) as dataset:
        assert (dataset.width, dataset.height) == (10_400, 2_600)
        assert dataset.block_shapes[0] == (256, 256)
        obj = result.scenes[0].objects[0]
        x0, y0, x1, y1 = obj.hbox
        window = dataset.read(window=((y0, y1), (x0, x1)))
    assert tuple(window[:, (y1 - y0) // 2, (x1 - x0) // 2]) == COLORS[obj.color]
    assert peak < full_bytes / 3, f"peak Python/numpy allocation {peak} B for {full_bytes} B scene"


def test_size_rules_and_config_validation() -> None:
    assert size_bin_of((0, 0, 32, 10)) == "32x32"
    assert size_bin_of((0, 0, 33, 10)) == "64x64"
    assert size_bin_of((0, 0, 2000, 10)) == ">1024x1024"
    assert abs_size_of((0, 0, 10, 10)) == "small"
    assert abs_size_of((0, 0, 600, 600)) == "giant"
    with pytest.raises(ConfigError, match="n_scenes"):
        SynthConfig(n_scenes=0)
    with pytest.raises(ConfigError, match="too small"):
        SynthConfig(side_px=300, max_object_px=320)


def test_cli_synth_json(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        build_app(),
        [
            "eval",
            "synth",
            "--out",
            str(tmp_path / "set"),
            "--seed",
            "3",
            "--scenes",
            "1",
            "--large-side",
            "1400",
            "--side",
            "1400",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["scenes"][0]["size_wh"] == [1400, 700]
    assert len(read_questions(Path(summary["question_file"]))) == summary["questions"]


def test_oracle_predictions_on_the_synthetic_set_score_100(small_set, tmp_path: Path) -> None:
    from lrs_core.evaluation.lrs_vqa import append_predictions, make_prediction
    from lrs_core.evaluation.scoring import score_files

    class ExactOnly:
        def are_synonyms(self, first: str, second: str) -> bool:
            return False

    pred = tmp_path / "oracle.jsonl"
    append_predictions(
        pred,
        [make_prediction(q, answer=q.ground_truth, model_id="oracle") for q in small_set.questions],
    )
    report = score_files([pred], matcher=ExactOnly()).to_json()
    assert report["lrs_vqa_mean"] == 100.0
    assert {name: d["overall_accuracy"] for name, d in report["datasets"].items()} == {
        "FAIR": 100.0,
        "GLH-Bridge": 100.0,
        "STAR": 100.0,
    }
