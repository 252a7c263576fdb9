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
