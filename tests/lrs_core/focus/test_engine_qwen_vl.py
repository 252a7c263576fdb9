"""The engine's contract suite on Qwen2-VL and Qwen2.5-VL bases (tiny stock models, real stores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

import tests.lrs_core.focus.test_engine as contract
from lrs_core.errors import ConfigError
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.models.families.engine_model import QwenVlEngineModel, load_qwen_vl_engine
from lrs_core.models.families.qwen_vl import mrope_position_ids
from lrs_core.models.families.qwen_vl_tiny import TINY_QWEN_FAMILIES, init_tiny_qwen_vl
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.pyramid import Pyramid, open_pyramid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QWEN_THUMBNAIL_TOKENS = 144


@pytest.fixture(scope="module", params=TINY_QWEN_FAMILIES)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny Qwen-VL model loaded for the engine (overrides the LLaVA fixture in this module)."""
    directory = init_tiny_qwen_vl(tmp_path_factory.mktemp(request.param), family=request.param)
    return load_qwen_vl_engine(directory)


@pytest.fixture(scope="module")
def large_pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


class TestQwenDefaultContract(contract.TestDefaultContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


class TestQwenThumbnailContract(contract.TestThumbnailContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


class TestQwenGridContract(contract.TestGridContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


class TestQwenFullContract(contract.TestFullContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


class TestQwenFastvContract(contract.TestFastvContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


class TestQwenPdropContract(contract.TestPdropContract):
    thumbnail_tokens = QWEN_THUMBNAIL_TOKENS


def test_parity_is_refused(tiny_model: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="no qwen2(.5)?-vl path"):
        FocusEngine(tiny_model, config=FocusConfig.from_preset("parity"))


class TestQwenSequences:
    """What the engine feeds a Qwen-VL LLM: no newline, stock M-RoPE ids, kept ids preserved."""

    presets: ClassVar[tuple[str, ...]] = ("default", "full")

    @pytest.mark.parametrize("preset", presets)
    def test_llm_input(self, tiny_model: LoadedModel, large_pyramid: Pyramid, preset: str) -> None:
        engine = contract._engine(tiny_model, preset, max_zoom_steps=1)
        llm_input = engine.prepare(large_pyramid, contract.QUESTION)
        layout = llm_input.sequence.layout
        assert not np.any(layout.kind == TokenKind.NEWLINE.value)
        assert layout.thumbnail_hw == (12, 12)
        ids = llm_input.position_ids
        assert tuple(ids.shape) == (3, 1, layout.length)
        assert torch.equal(ids[:, 0].cpu(), torch.from_numpy(mrope_position_ids(layout)))
        level = layout.positions_of(TokenKind.LEVEL)
        start = int(ids[0, 0, level[0]])  # the level's temporal id is its start position
        assert torch.equal(ids[1, 0, level].cpu(), torch.from_numpy(start + layout.grid_r[level]))
        assert torch.equal(ids[2, 0, level].cpu(), torch.from_numpy(start + layout.grid_c[level]))
        assert layout.level_grid_hw is not None
        # the text after the image continues from the full level grid, pruned or not
        assert int(ids[0, 0, -1]) == start + max(layout.level_grid_hw) + (
            len(engine.prompt_ids(contract.QUESTION).after_image) - 1
        )

    def test_record_names_the_qwen_dims(self, tiny_model: LoadedModel) -> None:
        engine = contract._engine(tiny_model, "thumbnail")
        model = tiny_model.model
        assert isinstance(model, QwenVlEngineModel)
        assert engine.dims.vision.merge_size == 2
        assert engine.dims.vision.tokens_per_tile == 24 * 24


@pytest.mark.parametrize("family", TINY_QWEN_FAMILIES)
def test_lrs_ask_reads_a_hugging_face_qwen_vl_directory(
    family: str, tmp_path: Path, ingested_store: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from lrs_core.cli import build_app

    model_dir = init_tiny_qwen_vl(tmp_path / family, family=family)  # type: ignore[arg-type]
    runner = CliRunner()
    base = ["ask", "--scene", str(ingested_store), "--model", str(model_dir)]
    result = runner.invoke(
        build_app(), [*base, "--question", "Any ships?", "--max-new-tokens", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["preset"] == "default" and data["accounting"]["vision_tiles_encoded"] > 0
    refused = runner.invoke(build_app(), [*base, "--question", "Any ships?", "--preset", "parity"])
    assert refused.exit_code in (1, 2)
    message = " ".join(refused.output.split())
    assert f"no {family} path" in message and "Traceback" not in message


@pytest.mark.parametrize(("preset", "overrides"), contract.PLAN_CASES[::2])
def test_plan_counts_equal_the_run(
    tiny_model: LoadedModel, large_pyramid: Pyramid, preset: str, overrides: dict[str, Any]
) -> None:
    """The dry run of a Qwen-VL base counts its sequences without newline slots, as it runs."""
    planned = contract._engine(tiny_model, preset, **overrides).plan(
        large_pyramid, contract.QUESTION
    )
    ran = contract._engine(tiny_model, preset, **overrides).answer(large_pyramid, contract.QUESTION)
    contract.assert_plan_equals_run(planned, ran)
