"""A tiny version of the world pipeline: a short step budget on CPU, and checks that it learned.

The run is shared by the tests of this module (one training, several assertions). The full
training (``lrs world train``, 30+ minutes) stays out of the suite.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.errors import ConfigError
from lrs_core.models.loading.auto import load_model
from lrs_core.world.train import WorldTrainConfig, WorldTrainResult, train_world

# Rural-or-urban questions only: the one category a minute of CPU is enough for (the answer needs
# the image but no parsing of the question); chance is 0.5, the untrained model answers garbage.
# Seed-sensitive at this budget, measured: seed 1 reaches 0.90 (oracle zoom) and 1.00 (thumbnail)
# on 51 held-out questions after 300 answer steps; seed 0 still answered the prior (0.57) after
# 400 in an earlier version. Twelve held-out scenes: with four (20 questions) one run read 0.75
# where the 51 read 0.90. The run is deterministic for a given seed.
TINY = WorldTrainConfig(
    seed=1,
    stage1_steps=40,
    stage2_steps=300,
    scene_px=(512, 1024),
    tile_batch=8,
    eval_scenes=12,
    eval_scene_px=768,
    categories=("rural or urban",),
    threads=1,  # as measured; two threads on a busy 2-core machine crawl (docs/world.md)
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> WorldTrainResult:
    return train_world(tmp_path_factory.mktemp("world-train"), config=TINY)


def test_held_out_accuracy_beats_untrained_and_chance(trained: WorldTrainResult) -> None:
    metrics = trained.metrics
    print(metrics)  # shown by pytest -s / on failure
    for view in ("focus", "thumbnail"):
        accuracy = metrics[view]["overall"]
        assert accuracy >= metrics["untrained"][view]["overall"] + 0.3
        assert accuracy >= 0.75  # chance (a coin) is 0.5
        assert accuracy >= metrics["answer_prior"]["overall"] + 0.15


def test_trained_model_loads_in_project_format(trained: WorldTrainResult) -> None:
    loaded = load_model(trained.model_dir)
    assert loaded.model.config.patch_size_px == 28
    assert loaded.model_id == "lrs-world-seed1"


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="minutes"):
        WorldTrainConfig(minutes=0)
    with pytest.raises(ConfigError, match="scene_px"):
        WorldTrainConfig(scene_px=(100, 50))


def test_cli_train_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        build_app(), ["world", "train", "--out", str(tmp_path), "--minutes", "0"]
    )
    assert result.exit_code == 2 and "minutes" in result.output


def test_a_step_budget_gives_the_same_bytes(tmp_path: Path) -> None:
    config = replace(
        TINY, stage1_steps=3, stage2_steps=5, eval_scenes=1, eval_scene_px=512, categories=()
    )
    first = train_world(tmp_path / "a", config=config)
    second = train_world(tmp_path / "b", config=config)
    weights = [
        hashlib.sha256((r.model_dir / "model.safetensors").read_bytes()).hexdigest()
        for r in (first, second)
    ]
    assert weights[0] == weights[1]
    assert first.metrics["focus"] == second.metrics["focus"]
