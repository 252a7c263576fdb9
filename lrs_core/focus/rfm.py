"""The Region Focus Module (RFM): text-to-vision attention scores of one level's tokens.

The RFM is a short stack of LLM decoder layers (``model.rfm``, spec §3). At inference it runs its
layers ``0 .. n-2`` over the same input embeddings the LLM would get, then uses the *last* layer's
``q_proj`` / ``k_proj`` (with RoPE and the GQA head repeat) to compute the attention row of one
query, the last prompt token, over the keys of the current level. The softmax is taken over that key
slice only (renormalised) in float32, and the heads are averaged (spec §3 steps 1-6).

Unlike the reference, the last layer's full forward and the final norm are never run: their output
is thrown away there (spec §11.9). The row itself is recomputed from the hidden state entering the
last layer by :func:`lrs_core.models.attention_rows.attention_rows_from_hidden`, so no eager
attention matrix is ever built and the layers keep running on SDPA.

Index convention: ``query_positions`` and ``key_positions`` are *sequence indices* into the ``L``
axis of ``inputs_embeds``; ``position_ids`` are the RoPE positions of those slots (they may have
gaps when only some tokens of a level are gathered, spec §11.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lrs_core.errors import ConfigError
from lrs_core.focus.config import REFERENCE_PLACEHOLDER_LOGIT_BIAS
from lrs_core.models.rfm_scoring import rfm_token_scores
from lrs_core.models.vlm import VisionLanguageModel

HeadReduction = Literal["mean"]


@dataclass(frozen=True, kw_only=True)
class RfmConfig:
    """How RFM attention rows become token scores.

    Attributes:
        head_reduction: how the query heads are combined; ``"mean"`` (spec §3 step 6).
        exclude_newline_keys: leave the level's newline tokens out of the key slice, so the softmax
            runs over image tokens only (ours, spec §11.6). The reference keeps them (``False``).
        placeholder_logit_bias: None (ours): masked placeholder keys (``attention_mask`` 0) get
            probability 0. A float: they stay in each head's softmax with this value added to
            their logit, before the mean over heads. The reference's ``get_text_image_attn`` casts
            the 4-D float mask to bool before adding it, so masked keys get
            :data:`REFERENCE_PLACEHOLDER_LOGIT_BIAS` (``parity``, spec §5.1 pass 2). Only the
            scored row is affected; the RFM layers before it always mask placeholders.
    """

    head_reduction: HeadReduction = "mean"
    exclude_newline_keys: bool = True
    placeholder_logit_bias: float | None = None

    def __post_init__(self) -> None:
        if self.head_reduction != "mean":
            raise ConfigError(
                f"RfmConfig.head_reduction={self.head_reduction!r} is not supported; use 'mean'"
            )
        if not isinstance(self.exclude_newline_keys, bool):
            raise ConfigError(
                f"RfmConfig.exclude_newline_keys={self.exclude_newline_keys!r} must be a bool"
            )
        bias = self.placeholder_logit_bias
        if bias is not None and (
            isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
        ):
            raise ConfigError(
                f"RfmConfig.placeholder_logit_bias={bias!r} must be None or a finite number "
                f"(the reference adds {REFERENCE_PLACEHOLDER_LOGIT_BIAS})"
            )


def score_level_tokens(
    model: VisionLanguageModel,
    inputs_embeds: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    config: RfmConfig | None = None,
) -> torch.Tensor:
    """RFM attention probabilities of the last prompt token over a level's tokens (spec §3).

    Args:
        model: the VLM whose ``rfm`` layers score (eval mode; call under ``torch.inference_mode``).
        inputs_embeds: float (B, L, D) on the model's device and dtype; right padded when B > 1.
        position_ids: int64 (B, L); RoPE position of every slot (gaps allowed).
        attention_mask: int/bool (B, L); 1 = real token, 0 = padding or placeholder (masked as a
            key everywhere); None = all real.
        query_positions: int64 (B, 1); sequence index of the last prompt token of each row.
        key_positions: int64 (B, K); sequence indices of the scored tokens (pad rows with any valid
            index and mark those slots False in ``key_mask``).
        key_mask: bool (B, K); False slots get probability 0 and are left out of the softmax.
            With ``config.placeholder_logit_bias`` set, leave placeholders True here: they take
            part in the softmax through ``attention_mask`` (callers zero their scores after).
        config: head reduction and placeholder bias; None = :class:`RfmConfig` defaults. (Which
            keys are passed, newline or not, is the caller's choice; ``exclude_newline_keys``
            documents it.)

    Returns:
        float32 (B, K) on the model's device; each row sums to 1 over its valid keys (0 for a row
        with none).

    Raises:
        ConfigError: shapes or indices that do not fit the sequence.
    """
    config = RfmConfig() if config is None else config
    return rfm_token_scores(
        model.rfm,
        inputs_embeds,
        position_ids=position_ids,
        attention_mask=attention_mask,
        query_positions=query_positions,
        key_positions=key_positions,
        key_mask=key_mask,
        placeholder_logit_bias=config.placeholder_logit_bias,
    )
