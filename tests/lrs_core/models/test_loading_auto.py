"""The one loading entry point detects every layout, Hugging Face Qwen-VL included."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrs_core.errors import WeightsError
from lrs_core.models.families.engine_model import QwenVlEngineModel
from lrs_core.models.families.qwen_vl_tiny import TINY_QWEN_FAMILIES, init_tiny_qwen_vl
from lrs_core.models.loading.auto import convert_checkpoint, detect_layout, load_model


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    family = TINY_QWEN_FAMILIES[0]
    return init_tiny_qwen_vl(tmp_path_factory.mktemp(family), family=family)


def test_load_model_detects_a_qwen_vl_directory(qwen_dir: Path) -> None:
    assert detect_layout(qwen_dir) == "qwen_vl"
    loaded = load_model(qwen_dir, device="cpu", llm_layer_list=(1,))
    assert isinstance(loaded.model, QwenVlEngineModel)
    assert loaded.model.config.rfm_llm_layers == (1,)
    assert loaded.source_dir == qwen_dir


def test_convert_refuses_a_qwen_vl_directory(qwen_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no project-format conversion"):
        convert_checkpoint(qwen_dir, tmp_path / "out")
