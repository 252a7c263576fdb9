"""RFM token scores of rank-1 RoPE models: the computation behind :mod:`lrs_core.focus.rfm`.

Spec §3: run the RFM's layers ``0 .. n-2`` over the input embeddings, then recompute the last
layer's attention row of the query over the keys from the hidden state entering it
(:func:`lrs_core.models.attention_rows.attention_rows_from_hidden`), softmax over the key slice in
float32, heads averaged. Lives in ``models`` so a model family can score through it;
:func:`lrs_core.focus.rfm.score_level_tokens` validates its config and calls it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrs_core.errors import ConfigError
from lrs_core.models.attention_rows import attention_rows_from_hidden


def rfm_token_scores(
    rfm: nn.Module,
    inputs_embeds: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_mask: torch.Tensor | None,
    placeholder_logit_bias: float | None,
) -> torch.Tensor:
    """RFM attention probabilities of the query over the keys, float32 (B, K) (spec §3).

    Args:
        rfm: the RFM (:class:`lrs_core.models.vlm.RfmLayers`: ``layers``, ``rotary_emb``).
        inputs_embeds: float (B, L, D); right padded when B > 1.
        position_ids: int64 (B, L); RoPE position of every slot (gaps allowed).
        attention_mask: int/bool (B, L); 1 = real token; None = all real.
        query_positions: int64 (B, 1); sequence index of the query of each row.
        key_positions: int64 (B, K); sequence indices of the scored tokens.
        key_mask: bool (B, K) valid keys, or None.
        placeholder_logit_bias: logit added to masked keys of the scored row (reference quirk),
            or None (they get probability 0).

    Returns:
        float32 (B, K) on the model's device.

    Raises:
        ConfigError: shapes that do not fit the sequence.
    """
    batch, length, _ = inputs_embeds.shape
    if position_ids.shape != (batch, length):
        raise ConfigError(
            f"position_ids has shape {tuple(position_ids.shape)}; "
            f"expected (B, L) = {(batch, length)}"
        )
    if query_positions.shape != (batch, 1):
        raise ConfigError(
            f"query_positions has shape {tuple(query_positions.shape)}; expected (B, 1)"
        )
    device = inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.int64, device=device)
    attention_mask = attention_mask.to(device=device, dtype=torch.int64)
    position_ids = position_ids.to(device)
    layers: Any = rfm
    n_layers = len(layers.layers)
    hidden: torch.Tensor = layers(
        inputs_embeds,
        attention_mask=attention_mask,
        num_layers=n_layers - 1,
        position_ids=position_ids,
    )
    rows = attention_rows_from_hidden(
        layers.layers[n_layers - 1],
        hidden,
        position_ids=position_ids,
        rotary_emb=layers.rotary_emb,
        query_positions=query_positions.to(device),
        key_positions=key_positions.to(device),
        key_mask=None if key_mask is None else key_mask.to(device),
        sequence_mask=attention_mask.to(torch.bool),
        renormalize_over_keys=True,
        masked_key_logit_bias=placeholder_logit_bias,
    )
    return rows.mean[:, 0, :]
