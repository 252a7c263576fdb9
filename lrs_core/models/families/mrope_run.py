"""Running a Qwen-VL model on assembled embeddings with M-RoPE: RFM scores and greedy generation.

These are the M-RoPE counterparts of :func:`lrs_core.focus.rfm.score_level_tokens` and
:func:`lrs_core.models.generation.generate_from_embeds`, for the engine's Qwen-VL path:

* :func:`score_tokens_mrope` runs RFM layers ``0 .. n-2`` and recomputes the last layer's attention
  row of the query over the chosen keys (renormalised over them, heads averaged; spec §3 steps 1-6)
  with (3, B, L) position ids.
* :func:`generate_greedy_mrope` prefills from embeddings and decodes greedily with the KV cache;
  each new token gets the M-RoPE id ``(p, p, p)`` with ``p`` = the row's largest prefill id + 1,
  then + 1 per step, which is what the stock model's ``rope_deltas`` give. Rows may be right
  padded. The model's ``generation_config.repetition_penalty`` is applied over the generated ids,
  as the LLaVA path's ``generate()`` from embeddings and the layer-drop decoder do.

Stock ``generate()`` cannot be used here: from embeddings alone (no ``input_ids`` and
``mm_token_type_ids``) it rebuilds text-only position ids for the decode steps.
"""

from __future__ import annotations

from typing import Any

import torch

from lrs_core.errors import ConfigError
from lrs_core.models import hf_compat
from lrs_core.models.attention_rows import attention_rows_from_hidden
from lrs_core.models.families.base import ROPE_RANK_MROPE
from lrs_core.models.families.qwen_vl import MropeRfmLayers, QwenVlModel
from lrs_core.models.generation import GenerationResult


def _check_mrope(position_ids: torch.Tensor, batch: int, length: int) -> None:
    if tuple(position_ids.shape) != (ROPE_RANK_MROPE, batch, length):
        raise ConfigError(
            f"position_ids has shape {tuple(position_ids.shape)}; expected M-RoPE "
            f"(3, B, L) = {(ROPE_RANK_MROPE, batch, length)}"
        )


def score_tokens_mrope(
    rfm: MropeRfmLayers,
    inputs_embeds: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RFM attention probabilities of the query token over the chosen keys, with M-RoPE.

    Args:
        rfm: the model's RFM layers (:meth:`QwenVlModel.rfm_from_llm`).
        inputs_embeds: float (B, L, D); right padded when B > 1.
        position_ids: int64 (3, B, L) M-RoPE ids of every slot.
        attention_mask: int/bool (B, L); 1 real, 0 padding or placeholder; None = all real.
        query_positions: int64 (B, 1) sequence index of each row's last prompt token.
        key_positions: int64 (B, K) sequence indices of the scored tokens.
        key_mask: bool (B, K); False slots get 0 and stay out of the softmax.

    Returns:
        float32 (B, K); each row sums to 1 over its valid keys.

    Raises:
        ConfigError: shapes that do not fit.
    """
    batch, length, _ = inputs_embeds.shape
    _check_mrope(position_ids, batch, length)
    if tuple(query_positions.shape) != (batch, 1):
        raise ConfigError(f"query_positions has shape {tuple(query_positions.shape)}; need (B, 1)")
    device = inputs_embeds.device
    mask = (
        torch.ones(batch, length, dtype=torch.int64, device=device)
        if attention_mask is None
        else attention_mask.to(device=device, dtype=torch.int64)
    )
    n_layers = len(rfm.layers)
    hidden = rfm(
        inputs_embeds, attention_mask=mask, num_layers=n_layers - 1, position_ids=position_ids
    )
    rows = attention_rows_from_hidden(
        rfm.layers[n_layers - 1],
        hidden,
        position_ids=position_ids.to(device),
        rotary_emb=rfm.rotary_emb,
        query_positions=query_positions.to(device),
        key_positions=key_positions.to(device),
        key_mask=None if key_mask is None else key_mask.to(device),
        sequence_mask=mask.to(torch.bool),
        renormalize_over_keys=True,
    )
    return rows.mean[:, 0, :]


def _stop_ids(model: QwenVlModel, eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.hf.generation_config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _penalised(
    logits: torch.Tensor, generated: list[list[int]], penalty: float | None
) -> torch.Tensor:
    """``generate()``'s repetition penalty over each row's generated ids: float (B, V)."""
    if penalty is None or penalty == 1.0 or not any(generated):
        return logits
    logits = logits.clone()
    for row, tokens in enumerate(generated):
        if tokens:
            seen = torch.tensor(sorted(set(tokens)), device=logits.device)
            values = logits[row, seen]
            logits[row, seen] = torch.where(values < 0, values * penalty, values / penalty)
    return logits


def generate_greedy_mrope(
    model: QwenVlModel,
    inputs_embeds: torch.Tensor,
    *,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
) -> GenerationResult:
    """Greedy generation with the KV cache from a prefill of embeddings with M-RoPE ids.

    Args:
        model: the Qwen-VL model.
        inputs_embeds: float (B, L, D); rows right padded.
        attention_mask: int64 (B, L); 1 real, 0 right padding.
        position_ids: int64 (3, B, L) M-RoPE ids (e.g. kept tokens at their original ids).
        max_new_tokens: upper bound on generated tokens per row (>= 1).
        eos_token_id: end-of-sequence id(s); None: the model's ``generation_config`` ids.

    Returns:
        Per row, the tokens before the first end-of-sequence token and the decode steps (the
        end-of-sequence token included).

    Raises:
        ConfigError: ``max_new_tokens`` < 1, bad shapes, or padding that is not on the right.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    batch, length, _ = inputs_embeds.shape
    _check_mrope(position_ids, batch, length)
    mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.int64)
    lengths = mask.sum(dim=1)
    expected = torch.arange(length, device=mask.device)[None] < lengths[:, None]
    if not torch.equal(mask.bool(), expected) or int(lengths.min()) < 1:
        raise ConfigError("attention_mask must mark each row's real tokens first (right padding)")
    language_model: Any = model.hf.model.language_model
    stops = _stop_ids(model, eos_token_id)
    penalty = getattr(model.hf.generation_config, "repetition_penalty", None)
    rows = torch.arange(batch, device=mask.device)
    real = mask.bool()[None].expand(ROPE_RANK_MROPE, -1, -1)
    next_position = position_ids.masked_fill(~real, -1).amax(dim=(0, 2)) + 1  # (B,)
    cache = hf_compat.new_cache(language_model.config)
    with torch.no_grad():
        out = language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        hidden = out.last_hidden_state[rows, lengths - 1]  # (B, D)
        generated: list[list[int]] = [[] for _ in range(batch)]
        finished = [False] * batch
        for step in range(max_new_tokens):
            logits = _penalised(model.hf.lm_head(hidden).float(), generated, penalty)
            tokens = logits.argmax(dim=-1)  # (B,)
            for row, token in enumerate(tokens.tolist()):
                if not finished[row]:
                    generated[row].append(int(token))
                    finished[row] = int(token) in stops
            if all(finished) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=mask.device)], 1)
            step_ids = (next_position + step).view(1, batch, 1).expand(ROPE_RANK_MROPE, -1, -1)
            out = language_model(
                inputs_embeds=model.embed_text(tokens[:, None]),
                attention_mask=mask,
                position_ids=step_ids,
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1]
    token_ids: list[list[int]] = []
    decode_steps: list[int] = []
    for row_tokens in generated:
        end = next((i for i, token in enumerate(row_tokens) if token in stops), None)
        token_ids.append(row_tokens if end is None else row_tokens[:end])
        decode_steps.append(len(row_tokens) if end is None else end + 1)
    return GenerationResult(token_ids=token_ids, decode_steps=decode_steps)
