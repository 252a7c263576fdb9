"""RFM distillation on Qwen2-VL / Qwen2.5-VL: teacher rows with M-RoPE, training, loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lrs_core.cli import build_app
from lrs_core.distill.config import DistillConfig
from lrs_core.distill.data import build_dataset
from lrs_core.distill.loss import (
    distill_loss,
    teacher_hidden_states,
    teacher_logits,
)
from lrs_core.errors import ConfigError
from lrs_core.models.families.engine_model import (
    RFM_CONFIG_FILE,
    QwenVlEngineModel,
    load_qwen_vl_engine,
)
from lrs_core.models.families.qwen_vl import mrope_position_ids
from lrs_core.models.families.qwen_vl_tiny import TINY_QWEN_FAMILIES, init_tiny_qwen_vl
from tests.lrs_core.distill.helpers import feature_grid_records
from tests.lrs_core.distill.test_data import write_llava_json, write_png

TOL = 1e-5
#: The tiny Qwen-VL LLM's hidden size (lrs_core.models.families.qwen_vl_tiny).
TINY_WIDTH = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=TINY_QWEN_FAMILIES)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_qwen_vl(tmp_path_factory.mktemp(request.param), family=request.param)


def _batch(loaded: Any, n: int) -> tuple[Any, Any]:
    records = feature_grid_records(n, seed=5, width=TINY_WIDTH)
    dataset = build_dataset(
        records, model=loaded.model, tokenizer=loaded.tokenizer, family=loaded.family
    )
    return dataset, dataset.collate(loaded.model, list(range(n)))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_teacher_rows_with_mrope_equal_eager_attention(model_dir: Path, batch_size: int) -> None:
    loaded = load_qwen_vl_engine(model_dir, llm_layer_list=(1, 3))
    assert isinstance(loaded.model, QwenVlEngineModel)
    model: Any = loaded.model  # a QwenVlEngineModel in the VisionLanguageModel seat
    dataset, batch = _batch(loaded, batch_size)
    assert batch.position_ids is not None and batch.position_ids.shape[0] == 3
    for row in range(batch_size):
        layout = dataset.prepare(model, row).layout
        expected = torch.from_numpy(mrope_position_ids(layout))
        assert torch.equal(batch.position_ids[:, row, : layout.length], expected)
    hidden = teacher_hidden_states(model, batch, layers=[1, 3])
    eager = load_qwen_vl_engine(model_dir, attn_implementation="eager")
    with torch.no_grad():
        out = eager.model.family.hf.model.language_model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
        )
    heads, length = out.attentions[0].shape[1], batch.attention_mask.shape[1]
    valid = batch.query_mask[:, None, :, None]
    for layer in (1, 3):
        torch.testing.assert_close(hidden[layer], out.hidden_states[layer], atol=TOL, rtol=0)
        probs = torch.softmax(teacher_logits(model, batch, hidden, layer=layer).logits, dim=-1)
        rows = out.attentions[layer].gather(
            2, batch.query_positions[:, None, :, None].expand(-1, heads, -1, length)
        )
        torch.testing.assert_close(probs * valid, rows * valid, atol=TOL, rtol=0)


def test_an_exact_prefix_rfm_matches_its_teacher(model_dir: Path) -> None:
    loaded = load_qwen_vl_engine(model_dir, llm_layer_list=(1, 2))  # copies of layers 0, 1, 2
    _, batch = _batch(loaded, 2)
    output = distill_loss(loaded.model, batch, config=DistillConfig())
    assert output.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(output.topk_recall == 1.0)
    with pytest.raises(ConfigError, match="M-RoPE"):
        distill_loss(loaded.model, batch, config=DistillConfig(trainable="all", lm_weight=1.0))


def test_cli_trains_a_qwen_vl_rfm_and_writes_a_loadable_directory(
    model_dir: Path, tmp_path: Path, ingested_store: Path
) -> None:
    (tmp_path / "data").mkdir()
    write_png(tmp_path / "data" / "scene.png")
    data = write_llava_json(tmp_path / "data" / "train.json", "scene.png", n=3)
    out = tmp_path / "run"
    args = ["train-rfm", "--model", str(model_dir), "--data", str(data), "--out", str(out)]
    args += ["--steps", "2", "--batch-size", "1", "--lr", "1e-3", "--views", "single"]
    args += ["--eval-samples", "1", "--log-interval", "1", "--json"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 2
    assert (out / "model" / RFM_CONFIG_FILE).is_file()
    trained = load_qwen_vl_engine(out / "model")
    original = load_qwen_vl_engine(model_dir)
    assert trained.model.config == original.model.config
    before, after = original.model.rfm.state_dict(), trained.model.rfm.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after)
    for key, value in trained.model.family.hf.state_dict().items():
        assert torch.equal(value, original.model.family.hf.state_dict()[key]), key
    asked = CliRunner().invoke(
        build_app(),
        ["ask", "--scene", str(ingested_store), "--model", str(out / "model")]
        + ["--question", "Any ships?", "--max-new-tokens", "2", "--json"],
    )
    assert asked.exit_code == 0, asked.output
