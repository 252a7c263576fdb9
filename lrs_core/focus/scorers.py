"""Token scorers other than the RFM: the LLM's own attention, and a seeded random baseline.

Both plug into :class:`lrs_core.focus.engine.FocusEngine` (``scorer=``) in place of
:class:`lrs_core.focus.state.RfmScorer`, so a benchmark can ask whether the distilled RFM zooms as
well as the attention it was distilled from, and better than chance, with the same tile budget:

* :class:`LlmAttentionScorer` runs the whole LLM over the RFM's input and reads the attention row
  of the last prompt token over the keys at one decoder layer (by default the layer the RFM's last
  layer mirrors, ``rfm_llm_layers[-1]``), heads averaged, softmax over the keys: the RFM's own
  definition (spec §3) with the LLM in place of its copied layers. Costs a full LLM prefill per
  scored level instead of the RFM's few layers.
* :class:`RandomScorer` draws uniform scores from a generator seeded by the seed, the question
  and the level, so a run is reproducible.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from lrs_core.errors import ConfigError
from lrs_core.focus.state import FloatArray, ScoreRequest
from lrs_core.models.attention_rows import attention_rows_from_hidden
from lrs_core.models.families.base import ROPE_RANK_1D
from lrs_core.models.loading.loaded import LoadedModel


class LlmAttentionScorer:
    """The LLM's own attention as a :class:`~lrs_core.focus.state.TokenScorer`.

    Args:
        loaded: a model whose LLM is a stock decoder with rank-1 RoPE (``model.llm.model.layers``
            and ``.rotary_emb``; LLaVA-style families).
        layer: decoder layer whose attention row scores (None: ``rfm_llm_layers[-1]``).

    Raises:
        ConfigError: the LLM has no such layer, or is not a rank-1 RoPE decoder.
    """

    def __init__(self, loaded: LoadedModel, *, layer: int | None = None) -> None:
        self.model = loaded.model
        decoder = getattr(self.model.llm, "model", None)
        layers = getattr(decoder, "layers", None)
        if decoder is None or layers is None or not hasattr(decoder, "rotary_emb"):
            raise ConfigError(
                f"the LLM attention scorer needs a stock decoder (model.llm.model.layers); "
                f"{type(self.model.llm).__name__} has none"
            )
        if loaded.family.rope_rank != ROPE_RANK_1D:
            raise ConfigError(
                f"the LLM attention scorer supports rank-1 RoPE (LLaVA-style) models, not "
                f"{loaded.family.family} (M-RoPE)"
            )
        self.decoder = decoder
        self.layer = self.model.config.rfm_llm_layers[-1] if layer is None else layer
        if not 0 <= self.layer < len(layers):
            raise ConfigError(f"layer={self.layer} is not a layer of a {len(layers)}-layer LLM")

    def __call__(self, request: ScoreRequest) -> FloatArray:
        """Return float32 (K,): the layer's attention of the last prompt token over the keys."""
        with torch.inference_mode():
            out = self.decoder(
                inputs_embeds=request.inputs_embeds,
                position_ids=request.position_ids,
                attention_mask=request.attention_mask,
                output_hidden_states=True,
                use_cache=False,
            )
            rows = attention_rows_from_hidden(
                self.decoder.layers[self.layer],
                out.hidden_states[self.layer],
                position_ids=request.position_ids,
                rotary_emb=self.decoder.rotary_emb,
                query_positions=request.query_positions,
                key_positions=request.key_positions,
                key_mask=torch.from_numpy(request.key_valid)[None].to(request.key_positions.device),
                sequence_mask=request.attention_mask.to(torch.bool),
            )
        scores: FloatArray = rows.mean[0, 0].float().cpu().numpy()
        return scores


class RandomScorer:
    """Uniform random scores, 0 at invalid keys, normalised to sum 1 (a chance baseline).

    Args:
        seed: combined with the question and the level's index into each draw's seed.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, request: ScoreRequest) -> FloatArray:
        """Return float32 (K,) random scores."""
        digest = hashlib.blake2b(request.question.encode(), digest_size=8).digest()
        rng = np.random.default_rng(
            [self.seed, request.level.dip_level, int.from_bytes(digest, "little")]
        )
        scores: FloatArray = np.zeros(request.key_valid.shape[0], dtype=np.float32)
        scores[request.key_valid] = rng.random(int(request.key_valid.sum()), dtype=np.float32)
        total = float(scores.sum())
        out: FloatArray = scores / total if total > 0 else scores
        return out
