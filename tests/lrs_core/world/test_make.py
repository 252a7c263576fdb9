"""``lrs world make``: same seed -> same bytes, georeferenced tiled GeoTIFFs, valid questions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.evaluation.lrs_vqa import read_questions
from lrs_core.world.annotations import read_dota
from lrs_core.world.generate import generate_scene
from lrs_core.world.make import make_world
from lrs_core.world.render import render_window


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    make_world(tmp_path / "a", seed=3, n_scenes=2, size_px=512)
    make_world(tmp_path / "b", seed=3, n_scenes=2, size_px=512)
    make_world(tmp_path / "c", seed=4, n_scenes=2, size_px=512)
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert len(a) == 5  # 2 images, 2 annotation files, 1 question file
    assert a == b
    assert a["LRS_VQA/image/world_000.tif"] != c["LRS_VQA/image/world_000.tif"]


def test_geotiff_annotations_and_questions_agree(tmp_path: Path) -> None:
    world = make_world(tmp_path, seed=1, n_scenes=1, size_px=768)
    with rasterio.open(tmp_path / world.images[0]) as src:
        assert src.crs.to_epsg() == 32633
        assert src.profile["tiled"] and (src.width, src.height) == (768, 768)
        pixels = np.moveaxis(src.read(), 0, -1)
    scene = world.scenes[0]
    assert np.array_equal(pixels, render_window(scene, rows=(0, 768), cols=(0, 768)))
    annotation = read_dota(tmp_path / "LRS_VQA/annotations/world_000.txt")
    assert annotation.gsd_m == 0.5 and annotation.headers["landcover"] == scene.land_cover
    assert len(annotation.objects) == len(scene.objects)
    questions = read_questions(world.question_file)
    assert questions == list(world.questions)
    for question in questions:
        if question.hbox is not None:
            x0, y0, x1, y1 = question.hbox
            assert 0 <= x0 < x1 <= 768 and 0 <= y0 < y1 <= 768


def test_windows_render_the_same_pixels_as_the_whole() -> None:
    scene = generate_scene(11, size_wh=(640, 384))
    whole = render_window(scene, rows=(0, 384), cols=(0, 640))
    part = render_window(scene, rows=(100, 260), cols=(333, 640))
    assert np.array_equal(whole[100:260, 333:640], part)


def test_objects_sit_on_their_backgrounds() -> None:
    for seed in range(5):
        scene = generate_scene(seed, size_wh=(1024, 1024))
        assert scene.objects
        for obj in scene.objects:
            assert obj.background == scene.background_name_at(*obj.center_xy)
            if obj.kind in ("ship", "bridge"):
                assert obj.background == "water"
            if obj.kind == "vehicle":
                assert obj.background == "roads" and 8 <= obj.length_px <= 24


def test_cli_make_json_and_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()
    app = build_app()
    out = tmp_path / "w"
    result = runner.invoke(
        app, ["world", "make", "--out", str(out), "--scenes", "1", "--size", "512", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["questions"] > 0 and (out / "LRS_VQA_merged.jsonl").is_file()
    bad = runner.invoke(app, ["world", "make", "--out", str(out), "--size", "100"])
    assert bad.exit_code == 2 and "256" in bad.output


@pytest.mark.parametrize("size", [255, 16_385])
def test_size_limits(tmp_path: Path, size: int) -> None:
    from lrs_core.errors import ConfigError

    with pytest.raises(ConfigError, match="16384"):
        make_world(tmp_path, seed=0, n_scenes=1, size_px=size)
