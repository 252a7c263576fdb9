"""Tests of the RFM scoring path (spec §3) on the tiny model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from lrs_core.errors import ConfigError
from lrs_core.focus.rfm import RfmConfig, score_level_tokens
from lrs_core.models.loading.loaded import LoadedModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTH = 40
KEYS = slice(10, 30)


def _inputs(
    model: LoadedModel, *, batch: int = 1, length: int = LENGTH, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, model.model.hidden_size, generator=generator)


def _reference_scores(
    loaded: LoadedModel, embeds: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Independent re-derivation: stock layers 0..n-2, then q.k of layer n-1 with HF's RoPE."""
    rfm: Any = loaded.model.rfm  # stock decoder layers are untyped upstream
    hidden = rfm(embeds, num_layers=len(rfm.layers) - 1)
    layer = rfm.layers[-1]
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    batch, length, _ = x.shape
    q = attn.q_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)
    positions = torch.arange(length)[None].expand(batch, -1)
    cos, sin = rfm.rotary_emb(x, positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q[:, :, -1:] @ k[:, :, keys].transpose(-1, -2)).float() * attn.scaling
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]


def test_scores_match_an_independent_derivation(tiny_model: LoadedModel) -> None:
    embeds = _inputs(tiny_model)
    keys = torch.arange(KEYS.start, KEYS.stop)
    with torch.inference_mode():
        scores = score_level_tokens(
            tiny_model.model,
            embeds,
            position_ids=torch.arange(LENGTH)[None],
            attention_mask=None,
            query_positions=torch.tensor([[LENGTH - 1]]),
            key_positions=keys[None],
        )
        expected = _reference_scores(tiny_model, embeds, keys)
    assert scores.dtype == torch.float32 and scores.shape == (1, keys.numel())
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_key_mask_zeroes_keys_and_renormalises(tiny_model: LoadedModel) -> None:
    embeds = _inputs(tiny_model)
    keys = torch.arange(KEYS.start, KEYS.stop)[None]
    mask = torch.ones_like(keys, dtype=torch.bool)
    mask[0, ::3] = False
    with torch.inference_mode():
        scores = score_level_tokens(
            tiny_model.model,
            embeds,
            position_ids=torch.arange(LENGTH)[None],
            attention_mask=None,
            query_positions=torch.tensor([[LENGTH - 1]]),
            key_positions=keys,
            key_mask=mask,
        )
    assert torch.all(scores[~mask] == 0)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_gathered_valid_tokens_equal_masked_canvas(tiny_model: LoadedModel) -> None:
    """Spec §11.9: the valid tokens alone, at their original positions, score like the full canvas
    with masked placeholders (the placeholders are masked as keys for every query)."""
    embeds = _inputs(tiny_model)
    placeholder = torch.zeros(LENGTH, dtype=torch.bool)
    placeholder[14:22] = True
    canvas = embeds.clone()
    canvas[0, placeholder] = 0
    keys = torch.arange(KEYS.start, KEYS.stop)
    with torch.inference_mode():
        full = score_level_tokens(
            tiny_model.model,
            canvas,
            position_ids=torch.arange(LENGTH)[None],
            attention_mask=(~placeholder).long()[None],
            query_positions=torch.tensor([[LENGTH - 1]]),
            key_positions=keys[None],
            key_mask=~placeholder[keys][None],
        )
        kept = torch.nonzero(~placeholder).flatten()
        gathered_keys = torch.nonzero(
            ~placeholder[kept] & (kept >= KEYS.start) & (kept < KEYS.stop)
        ).flatten()
        gathered = score_level_tokens(
            tiny_model.model,
            embeds[:, kept],
            position_ids=kept[None],
            attention_mask=None,
            query_positions=torch.tensor([[kept.numel() - 1]]),
            key_positions=gathered_keys[None],
        )
    valid = ~placeholder[keys]
    torch.testing.assert_close(full[0, valid], gathered[0], rtol=1e-4, atol=1e-6)
    assert torch.all(full[0, ~valid] == 0)


def test_batch_of_three_with_padding_equals_rows_alone(tiny_model: LoadedModel) -> None:
    lengths = [LENGTH, LENGTH - 7, LENGTH - 3]
    rows = [_inputs(tiny_model, length=n, seed=i) for i, n in enumerate(lengths)]
    batch = torch.zeros(3, LENGTH, tiny_model.model.hidden_size)
    mask = torch.zeros(3, LENGTH, dtype=torch.int64)
    for i, row in enumerate(rows):
        batch[i, : row.shape[1]] = row[0]
        mask[i, : row.shape[1]] = 1
    keys = torch.arange(5, 25)[None].expand(3, -1)
    with torch.inference_mode():
        together = score_level_tokens(
            tiny_model.model,
            batch,
            position_ids=torch.arange(LENGTH)[None].expand(3, -1),
            attention_mask=mask,
            query_positions=torch.tensor([[n - 1] for n in lengths]),
            key_positions=keys,
        )
        for i, row in enumerate(rows):
            alone = score_level_tokens(
                tiny_model.model,
                row,
                position_ids=torch.arange(row.shape[1])[None],
                attention_mask=None,
                query_positions=torch.tensor([[row.shape[1] - 1]]),
                key_positions=keys[:1],
            )
            torch.testing.assert_close(together[i], alone[0], rtol=1e-4, atol=1e-6)


def test_bad_shapes_raise(tiny_model: LoadedModel) -> None:
    embeds = _inputs(tiny_model)
    with pytest.raises(ConfigError, match="position_ids"):
        score_level_tokens(
            tiny_model.model,
            embeds,
            position_ids=torch.arange(LENGTH - 1)[None],
            attention_mask=None,
            query_positions=torch.tensor([[LENGTH - 1]]),
            key_positions=torch.arange(3)[None],
        )
    with pytest.raises(ConfigError, match="query_positions"):
        score_level_tokens(
            tiny_model.model,
            embeds,
            position_ids=torch.arange(LENGTH)[None],
            attention_mask=None,
            query_positions=torch.tensor([LENGTH - 1]),
            key_positions=torch.arange(3)[None],
        )


def test_rfm_config_validates() -> None:
    assert RfmConfig().exclude_newline_keys is True
    with pytest.raises(ConfigError, match="head_reduction"):
        RfmConfig(head_reduction="max")  # type: ignore[arg-type]  # invalid on purpose
    with pytest.raises(ConfigError, match="exclude_newline_keys"):
        RfmConfig(exclude_newline_keys="yes")  # type: ignore[arg-type]  # invalid on purpose
