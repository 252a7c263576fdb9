"""The model-family interface: the LLaVA path behind it equals the path the engine runs today."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrs_core.errors import ConfigError
from lrs_core.models.families.base import ModelFamily
from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.layout import assemble_embeddings, build_layout
from lrs_core.models.loading.loaded import LoadedModel

QUESTION = "How many ships are in the harbour?"


def test_llava_family_runs_the_existing_path(tiny_model: LoadedModel) -> None:
    family = LlavaFamily(tiny_model.model, tiny_model.tokenizer)
    assert isinstance(family, ModelFamily)
    assert family.rope_rank == 1 and family.has_image_newline and family.token_px == 28
    tiles = np.random.default_rng(0).integers(0, 256, (2, 336, 336, 3), dtype=np.uint8)
    encoded = family.encode_tiles(tiles)
    model = tiny_model.model
    with torch.no_grad():
        direct = model.encode_tiles(model.preprocess_tiles(tiles), pooled=True)
        thumb = model.encode_tiles(model.preprocess_tiles(tiles[:1]), pooled=False)[0]
    torch.testing.assert_close(encoded.tokens, direct, atol=0, rtol=0)
    assert encoded.grid_hw == (12, 12) and encoded.token_box_px(1, 2) == (28, 56, 56, 84)
    prompt = family.prompt_ids(QUESTION)
    layout = build_layout(
        prompt,
        thumbnail_tokens=576,
        separator_id=33,
        level_grid_hw=(12, 24),
        tile_tokens_hw=(12, 12),
    )
    level = torch.cat([encoded.tokens[0].view(12, 12, -1), encoded.tokens[1].view(12, 12, -1)], 1)
    with torch.no_grad():
        embeds = assemble_embeddings(model, layout, thumbnail_feats=thumb, level_feats=level)
        ids = family.position_ids(layout)[None]
        mask = torch.ones_like(ids)
        ours = family.llm_logits(embeds[None], attention_mask=mask, position_ids=ids)
        stock = model.llm(inputs_embeds=embeds[None]).logits
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)
    rfm = family.rfm_from_llm(model.config.rfm_llm_layers)
    assert all(
        torch.equal(value, model.rfm.state_dict()[key]) for key, value in rfm.state_dict().items()
    )
    dims = family.flops_dims(rfm_layers=len(model.rfm.layers) - 1, tile_px=336)
    assert dims.llm.hidden == family.hidden_size
    with pytest.raises(ConfigError, match="336x336 px tiles only"):
        family.tile_grid_hw((448, 448))


def test_every_layout_loads_with_its_engine_family(tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lrs_core.focus.rfm import RfmConfig, score_level_tokens
    from lrs_core.models.families.base import EngineFamily
    from lrs_core.models.families.engine_model import QwenVlEngineFamily
    from lrs_core.models.families.qwen_vl_tiny import init_tiny_qwen_vl
    from lrs_core.models.loading.auto import load_model, load_model_shapes

    llava = load_model(tiny_model_dir)
    assert isinstance(llava.family, LlavaFamily) and isinstance(llava.family, EngineFamily)
    assert llava.family.model is llava.model
    assert llava.family.supports_parity and not llava.family.renders_own_prompt
    assert isinstance(load_model_shapes(tiny_model_dir).family, LlavaFamily)
    # rank 1: the engine's positions as they are; training rows numbered by the LLM itself
    layout = build_layout(
        llava.family.prompt_ids(QUESTION),
        thumbnail_tokens=4,
        separator_id=33,
        level_grid_hw=(2, 2),
        tile_tokens_hw=(2, 2),
    )
    positions = np.arange(layout.length, dtype=np.int64) * 2
    ids = llava.family.sequence_position_ids(layout, positions)
    assert ids.shape == (1, layout.length) and int(ids[0, -1]) == 2 * (layout.length - 1)
    assert llava.family.batch_position_ids([layout], layout.length) is None
    # the family's RFM scores are the engine's score_level_tokens, bit for bit
    embeds = torch.randn(
        1, layout.length, llava.model.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    args = {
        "position_ids": torch.arange(layout.length)[None],
        "attention_mask": torch.ones(1, layout.length, dtype=torch.int64),
        "query_positions": torch.tensor([[layout.length - 1]]),
        "key_positions": torch.arange(4)[None],
        "key_mask": torch.ones(1, 4, dtype=torch.bool),
    }
    with torch.no_grad():
        direct = score_level_tokens(llava.model, embeds, **args, config=RfmConfig())
        through = llava.family.score_rfm(embeds, **args, placeholder_logit_bias=None)
    torch.testing.assert_close(through, direct, atol=0, rtol=0)

    qwen = load_model(init_tiny_qwen_vl(tmp_path / "qwen", family="qwen2-vl"))
    family = qwen.family
    assert isinstance(family, QwenVlEngineFamily) and isinstance(family, EngineFamily)
    assert family.rope_rank == 3 and not family.has_image_newline
    assert not family.supports_parity and not family.supports_batched_decode
    assert family.renders_own_prompt and family.turn_template == "chatml"
    q_layout = build_layout(
        family.prompt_ids(QUESTION),
        thumbnail_tokens=144,
        separator_id=33,
        level_grid_hw=(12, 12),
        tile_tokens_hw=(12, 12),
        include_newline=False,
    )
    q_ids = family.sequence_position_ids(q_layout, np.zeros(0, dtype=np.int64))
    assert q_ids.shape == (3, 1, q_layout.length)
    batch = family.batch_position_ids([q_layout], q_layout.length + 2)
    assert batch is not None and batch.shape == (3, 1, q_layout.length + 2)
    torch.testing.assert_close(batch[:, :, : q_layout.length], q_ids)
    assert int(batch[:, :, q_layout.length :].abs().sum()) == 0
    with pytest.raises(ConfigError, match="greedily"):
        family.generate(
            torch.zeros(1, 2, family.hidden_size),
            attention_mask=torch.ones(1, 2, dtype=torch.int64),
            position_ids=torch.zeros(3, 1, 2, dtype=torch.int64),
            max_new_tokens=1,
            eos_token_id=None,
            pad_token_id=0,
            do_sample=True,
            generator=None,
        )
    assert family.info()["config"]["family"] == "qwen2-vl"
