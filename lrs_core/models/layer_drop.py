"""Drop vision tokens inside the LLM at chosen layers: the FastV and PyramidDrop baselines.

Both baselines keep every vision token for the first decoder layers and then, at a *stage layer*,
rank the vision tokens still present by the attention the last prompt token pays them, keep the top
share and run the remaining layers on the shorter sequence. Later layers therefore hold fewer KV
entries, and decoding continues with those per-layer caches.

What each method does, as released (and reproduced here):

* **FastV** (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2"): for ``K = 2`` and
  ratio ``R = 50%``, layers ``0..K-1`` see every token. The attention probabilities of layer
  ``K-1`` (the full causal softmax row, computed from the hidden states *entering* layer ``K-1``),
  averaged over heads, of the **last token** rank the vision tokens; the top
  ``round(N * (1 - R))`` are kept (Python ``round``), the others are dropped before layer ``K``.
  Kept tokens keep their **original position ids** (FastV passes ``keep_indexs`` as
  ``position_ids``). :meth:`LayerDropSchedule.fastv` builds this schedule (``keep_ratio = 1 - R``).
* **PyramidDrop** (Xing et al., 2024): the LLM is split into ``n_stages + 1`` equal stages (layers
  8, 16, 24 of 32); at each boundary layer ``K`` the vision tokens still present are ranked by the
  attention of the last instruction token computed with **layer K's own** ``q_proj``/``k_proj``
  from the hidden states entering layer ``K`` (full causal row, mean over heads), and
  ``int(N * lambda^s)`` of the original ``N`` are kept after stage ``s`` (``lambda = 0.5``).
  Positions are **compact** after each drop (the released code rebuilds ``0..n-1`` and shifts decode
  positions per stage). :meth:`LayerDropSchedule.pdrop` builds this schedule.

The loop runs the model's stock modules (``llm.model.layers``, ``rotary_emb``, ``norm``,
``lm_head``) with a stock ``DynamicCache`` and masks from ``transformers.masking_utils``; nothing
is patched, and the ranking attention comes from
:func:`lrs_core.models.attention_rows.attention_rows_from_hidden` (exact rows, never eager).

Limits: batch size 1 (a per-row token count would need ragged per-layer caches); greedy decoding
only, with the model's ``generation_config.repetition_penalty`` applied as ``generate()`` would and
no other logits processor. A schedule that keeps everything reproduces the stock model's prefill
logits and greedy tokens.

M-RoPE (Qwen-VL): pass the slots' ids as ``position_ids`` of shape (3, 1, L). Kept tokens keep
their ids at every stage (M-RoPE has no compact renumbering, so a ``compact`` schedule keeps them
too), and generated tokens continue at the largest prefill id + 1 on all three axes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from lrs_core.errors import ConfigError
from lrs_core.models import hf_compat
from lrs_core.models.attention_rows import attention_rows_from_hidden
from lrs_core.models.generation import GenerationResult

log = logging.getLogger(__name__)

#: Axes of M-RoPE position ids (temporal, height, width).
MROPE_AXES = 3

#: How the ranking attention of a stage at layer ``K`` is obtained.
#: ``"previous_layer"``: layer ``K-1``'s attention (FastV); ``"stage_layer"``: layer ``K``'s own
#: q/k on the hidden states entering it, before it runs (PyramidDrop).
ScoringLayer = Literal["previous_layer", "stage_layer"]
#: Positions of the surviving tokens: ``"original"`` keeps their ids in the unpruned sequence
#: (FastV); ``"compact"`` renumbers ``0..n-1`` at every drop (PyramidDrop).
DropPositions = Literal["original", "compact"]
#: How a kept count is rounded: ``"round"`` (Python ``round``, FastV) or ``"floor"`` (``int()``,
#: PyramidDrop).
KeepRounding = Literal["round", "floor"]

#: FastV's defaults: drop after layer K = 2, keeping 1 - R = 50% of the vision tokens.
FASTV_DEFAULT_LAYER = 2
FASTV_DEFAULT_KEEP_RATIO = 0.5
#: PyramidDrop's defaults: lambda = 0.5 at each of 3 stage boundaries (layers 8/16/24 of 32).
PDROP_DEFAULT_KEEP_RATIO = 0.5
PDROP_DEFAULT_STAGES = 3


@dataclass(frozen=True, kw_only=True)
class LayerDropSchedule:
    """Where vision tokens are dropped inside the LLM, and how many survive.

    Attributes:
        stages: ``(layer, keep_ratio)`` pairs, layers strictly increasing. ``layer`` is the first
            decoder layer (0-based) that runs without the dropped tokens; ``keep_ratio`` in (0, 1]
            is the share of the vision tokens *still present* that survive (cumulative keep after
            stage s = product of the ratios up to s). Layers must be < the model's layer count
            (checked when run).
        scoring: which layer's attention ranks the tokens (see :data:`ScoringLayer`).
        positions: position ids of the surviving tokens (see :data:`DropPositions`).
        rounding: rounding of the kept counts (see :data:`KeepRounding`). Kept after stage s =
            ``rounding(N * cumulative ratio)`` of the ``N`` original vision tokens, at least 0 and
            at most the number present.
    """

    stages: tuple[tuple[int, float], ...]
    scoring: ScoringLayer = "previous_layer"
    positions: DropPositions = "original"
    rounding: KeepRounding = "round"

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("LayerDropSchedule.stages is empty; give at least one (layer, ratio)")
        min_layer = 1 if self.scoring == "previous_layer" else 0
        previous = -1
        for layer, ratio in self.stages:
            if int(layer) != layer or layer < min_layer:
                raise ConfigError(
                    f"LayerDropSchedule stage layer {layer} must be an integer >= {min_layer} "
                    f"(scoring={self.scoring!r})"
                )
            if layer <= previous:
                raise ConfigError(
                    f"LayerDropSchedule stage layers {[s[0] for s in self.stages]} must be "
                    "strictly increasing"
                )
            if not 0.0 < float(ratio) <= 1.0:
                raise ConfigError(
                    f"LayerDropSchedule keep_ratio {ratio} at layer {layer} is outside (0, 1]"
                )
            previous = layer
        for name, value, allowed in (
            ("scoring", self.scoring, get_args(ScoringLayer)),
            ("positions", self.positions, get_args(DropPositions)),
            ("rounding", self.rounding, get_args(KeepRounding)),
        ):
            if value not in allowed:
                raise ConfigError(f"LayerDropSchedule.{name}={value!r} is not one of {allowed}")

    @classmethod
    def fastv(
        cls, *, layer: int = FASTV_DEFAULT_LAYER, keep_ratio: float = FASTV_DEFAULT_KEEP_RATIO
    ) -> LayerDropSchedule:
        """FastV: rank by layer ``layer - 1``'s last-token attention; drop before ``layer``.

        Args:
            layer: K, the first layer without the dropped tokens (FastV's default 2).
            keep_ratio: 1 - R, the share of vision tokens kept (FastV's default R = 50%).

        Returns:
            One stage, ``scoring="previous_layer"``, original positions, ``round`` counts.
        """
        return cls(
            stages=((layer, keep_ratio),),
            scoring="previous_layer",
            positions="original",
            rounding="round",
        )

    @classmethod
    def pdrop(
        cls,
        *,
        num_layers: int,
        keep_ratio: float = PDROP_DEFAULT_KEEP_RATIO,
        n_stages: int = PDROP_DEFAULT_STAGES,
    ) -> LayerDropSchedule:
        """PyramidDrop: ``n_stages`` drops at depth fractions ``s / (n_stages + 1)``.

        Args:
            num_layers: decoder layers of the LLM (32 gives layers 8, 16, 24; 28 gives 7, 14, 21).
            keep_ratio: lambda, the share kept at every stage (PyramidDrop's 0.5).
            n_stages: number of drops (PyramidDrop's 3).

        Returns:
            The schedule, stage layers ``floor(num_layers * s / (n_stages + 1))``, scored by the
            stage layer itself, compact positions, ``floor`` counts.

        Raises:
            ConfigError: the model is too shallow for distinct stage layers.
        """
        if n_stages < 1:
            raise ConfigError(f"n_stages={n_stages} must be >= 1")
        layers = [num_layers * s // (n_stages + 1) for s in range(1, n_stages + 1)]
        if len(set(layers)) != n_stages or layers[0] < 1:
            raise ConfigError(
                f"num_layers={num_layers} is too shallow for {n_stages} PyramidDrop stages "
                f"(layers {layers}); use fewer stages"
            )
        return cls(
            stages=tuple((layer, keep_ratio) for layer in layers),
            scoring="stage_layer",
            positions="compact",
            rounding="floor",
        )

    def kept_counts(self, n_vision: int) -> list[int]:
        """Vision tokens present after each stage, for ``n_vision`` at the start."""
        counts: list[int] = []
        present, cumulative = n_vision, 1.0
        for _, ratio in self.stages:
            cumulative *= ratio
            exact = n_vision * cumulative
            count = round(exact) if self.rounding == "round" else math.floor(exact)
            present = max(0, min(present, count))
            counts.append(present)
        return counts

    def tokens_per_layer(self, *, num_layers: int, prefill_tokens: int, n_vision: int) -> list[int]:
        """Sequence length each decoder layer processes in the prefill (no model needed).

        Args:
            num_layers: decoder layers of the LLM.
            prefill_tokens: prefill length L before any drop (vision + text).
            n_vision: vision tokens among them.

        Returns:
            ``num_layers`` lengths, non-increasing.

        Raises:
            ConfigError: a stage layer is outside the model, or ``n_vision > prefill_tokens``.
        """
        self.check_layers(num_layers)
        if not 0 <= n_vision <= prefill_tokens:
            raise ConfigError(
                f"n_vision={n_vision} is outside [0, prefill_tokens={prefill_tokens}]"
            )
        lengths = [prefill_tokens] * num_layers
        for (layer, _), kept in zip(self.stages, self.kept_counts(n_vision), strict=True):
            for index in range(layer, num_layers):
                lengths[index] = prefill_tokens - n_vision + kept
        return lengths

    def check_layers(self, num_layers: int) -> None:
        """Raise :class:`ConfigError` when a stage layer is outside a ``num_layers``-layer model."""
        bad = [layer for layer, _ in self.stages if layer >= num_layers]
        if bad:
            raise ConfigError(
                f"LayerDropSchedule stage layers {bad} are outside the model's "
                f"0..{num_layers - 1}; use smaller layers (or LayerDropSchedule.pdrop(num_layers="
                f"{num_layers}))"
            )


@dataclass(frozen=True)
class LayerDropResult:
    """Generation with in-LLM vision-token dropping, and what was dropped where.

    Attributes:
        generation: the generated tokens (B = 1 row) and decode steps.
        kept_vision_positions: per stage, int64 (K_s,) sorted sequence indices (into the caller's
            ``inputs_embeds``) of the vision tokens still present after that stage.
        tokens_per_layer: per decoder layer, the sequence length it processed in the prefill.
        vision_scores: per stage, float32 (N_s,) head-averaged attention probability the last
            prompt token paid each vision token present *entering* the stage (full causal softmax
            row of the scoring layer, so the values sum to <= 1), aligned with those tokens in
            ascending sequence order (stage 0: the sorted input ``vision_positions``; stage s: the
            ``kept_vision_positions`` of stage s - 1).
        last_logits: float32 (V,) next-token logits of the last prefill position (the logits the
            first generated token came from), before any logits processor.
    """

    generation: GenerationResult
    kept_vision_positions: list[np.ndarray]
    tokens_per_layer: list[int]
    vision_scores: list[np.ndarray]
    last_logits: torch.Tensor


@dataclass
class _Sequence:
    """The tokens present at the current layer of the prefill (loop state, B = 1).

    Attributes:
        hidden: (1, n, D) hidden states entering the current layer.
        source: int64 (n,) sequence indices of these tokens in the caller's ``inputs_embeds``.
        positions: int64 (1, n) RoPE position ids of these tokens ((3, 1, n) for M-RoPE).
        is_vision: bool (n,) which of them are vision tokens.
    """

    hidden: torch.Tensor
    source: torch.Tensor
    positions: torch.Tensor
    is_vision: torch.Tensor


def _check_inputs(
    inputs_embeds: torch.Tensor,
    vision_positions: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate B = 1 inputs; return the kept (unpadded) sequence indices and sorted vision ones."""
    if inputs_embeds.ndim != 3:
        raise ConfigError(f"inputs_embeds must be (1, L, D); got {tuple(inputs_embeds.shape)}")
    batch, length, _ = inputs_embeds.shape
    if batch != 1:
        raise ConfigError(
            f"generate_with_layer_drop runs one sequence at a time (B=1); got B={batch}. Its "
            "layers hold different token counts per row after a drop; call it once per question"
        )
    if vision_positions.dtype != torch.int64 or vision_positions.ndim != 1:
        raise ConfigError(
            f"vision_positions must be int64 (N,); got {vision_positions.dtype} "
            f"{tuple(vision_positions.shape)}"
        )
    vision = torch.unique(vision_positions.cpu())  # sorted
    if vision.numel() != vision_positions.numel():
        raise ConfigError("vision_positions holds duplicate indices")
    if vision.numel() and (int(vision[0]) < 0 or int(vision[-1]) >= length - 1):
        raise ConfigError(
            f"vision_positions span [{int(vision[0])}, {int(vision[-1])}] but must lie in "
            f"[0, {length - 1}): the last token is the query and cannot be a vision token"
        )
    if attention_mask is None:
        valid = torch.arange(length)
    else:
        if tuple(attention_mask.shape) != (1, length):
            raise ConfigError(
                f"attention_mask must be (1, {length}); got {tuple(attention_mask.shape)}"
            )
        flags = attention_mask[0].cpu().to(torch.bool)
        if not bool(flags[-1]):
            raise ConfigError("attention_mask masks the last token; use left padding")
        valid = flags.nonzero().flatten()
        if vision.numel() and not bool(flags[vision].all()):
            raise ConfigError("some vision_positions fall on padding (attention_mask 0)")
    return valid, vision


def _causal_mask(llm: nn.Module, cache: Any, hidden: torch.Tensor, layer_idx: int) -> Any:
    """The stock causal mask of one layer for ``hidden`` appended to that layer's cache."""
    untyped: Any = llm
    return hf_compat.causal_mask(
        untyped.config,
        inputs_embeds=hidden,
        attention_mask=None,
        cache=cache,
        position_ids=None,  # given ids may have gaps: never read them as packed sequences
        layer_idx=layer_idx,
    )


def _score_vision(
    layer: nn.Module, state: _Sequence, rotary_emb: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-mean full-row attention of the last token over the vision tokens of ``state``.

    Returns:
        float32 (N_s,) scores and int64 (N_s,) indices of those tokens in ``state``.
    """
    vision_index = state.is_vision.nonzero().flatten()
    length = state.hidden.shape[1]
    rows = attention_rows_from_hidden(
        layer,
        state.hidden,
        position_ids=state.positions,
        rotary_emb=rotary_emb,
        query_positions=torch.tensor([[length - 1]], device=state.hidden.device),
        key_positions=vision_index[None].to(state.hidden.device),
        renormalize_over_keys=False,
    )
    return rows.mean[0, 0].float(), vision_index


def _drop(
    state: _Sequence, scores: torch.Tensor, vision_index: torch.Tensor, keep: int
) -> _Sequence:
    """Keep the ``keep`` best-scored vision tokens (ties: lower sequence index) and all others."""
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices  # stable: index order
    dropped = vision_index.cpu()[order[keep:]]
    kept = torch.ones(state.hidden.shape[1], dtype=torch.bool)
    kept[dropped] = False
    kept_device = kept.to(state.hidden.device)
    return _Sequence(
        hidden=state.hidden[:, kept_device],
        source=state.source[kept],
        positions=state.positions[..., kept_device],
        is_vision=state.is_vision[kept],
    )


def _rotary(llm: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> Any:
    untyped: Any = llm
    return untyped.model.rotary_emb(hidden, positions)


def generate_with_layer_drop(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    *,
    vision_positions: torch.Tensor,
    schedule: LayerDropSchedule,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> LayerDropResult:
    """Greedy generation with vision tokens dropped inside the LLM at the schedule's layers.

    The prefill runs the stock decoder layers one by one, each with its own entries in one
    ``DynamicCache``; at a stage layer the vision tokens still present are ranked (see the module
    docstring) and the lowest are removed from the hidden states before that layer runs. Decoding
    feeds one token at a time through the same layers; a layer attends to whatever its cache holds.
    New tokens get position ``p + t`` where ``p`` is one past the last prefill position *of that
    layer* (original mode: the unpruned length for every layer).

    Args:
        llm: a stock ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (any attention implementation).
        inputs_embeds: (1, L, D) in the model's dtype and device: system text, vision tokens,
            question; the last token is the query of the ranking.
        vision_positions: int64 (N,) sequence indices in [0, L - 1) of the droppable vision tokens
            (any order; thumbnail tokens the caller wants protected are simply left out).
        schedule: the drop stages.
        max_new_tokens: upper bound on generated tokens (>= 1).
        eos_token_id: end-of-sequence id(s); None: the model's ``generation_config`` ids, if any.
        pad_token_id: unused for B = 1 (kept for symmetry with
            :func:`lrs_core.models.generation.generate_from_embeds`).
        attention_mask: int/bool (1, L); 0 marks left padding, which is removed first (positions
            then count real tokens only, as ``generate()`` does). Default: all ones.
        position_ids: the slots' position ids, int64 (1, L) or M-RoPE (3, 1, L) (see the module
            docstring); None: ``0..n-1`` over the real tokens.

    Returns:
        The generation and the per-stage record (see :class:`LayerDropResult`).

    Raises:
        ConfigError: B > 1, bad indices or mask, a stage outside the model, ``max_new_tokens < 1``.
    """
    del pad_token_id  # B = 1: nothing is ever padded
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    valid, vision = _check_inputs(inputs_embeds, vision_positions, attention_mask)
    untyped: Any = llm
    decoder: Any = untyped.model
    layers = list(decoder.layers[: untyped.config.num_hidden_layers])
    schedule.check_layers(len(layers))
    device = inputs_embeds.device

    is_vision = torch.zeros(inputs_embeds.shape[1], dtype=torch.bool)
    is_vision[vision] = True
    n_real = valid.numel()
    if position_ids is None:
        positions = torch.arange(n_real, device=device)[None]
    else:
        if position_ids.shape[-2:] != (1, inputs_embeds.shape[1]) or position_ids.ndim > 3:
            raise ConfigError(
                f"position_ids must be (1, L) or (3, 1, L) with L={inputs_embeds.shape[1]}; "
                f"got {tuple(position_ids.shape)}"
            )
        positions = position_ids.to(device)[..., valid.to(device)]
    mrope = positions.ndim == 3
    state = _Sequence(
        hidden=inputs_embeds[:, valid.to(device)],
        source=valid,
        positions=positions,
        is_vision=is_vision[valid],
    )
    stage_of = {layer: index for index, (layer, _) in enumerate(schedule.stages)}
    keep_counts = schedule.kept_counts(int(vision.numel()))
    cache = hf_compat.new_cache(untyped.config)
    kept_positions: list[np.ndarray] = []
    scores_per_stage: list[np.ndarray] = []
    tokens_per_layer: list[int] = []
    next_position: list[int] = []  # per layer, the position id of the first generated token
    previous_input = state  # the state entering the previous layer (FastV scores with it)
    mask: Any = None
    embeddings: Any = None
    mask_length = -1

    with torch.inference_mode():
        for index, layer in enumerate(layers):
            if index in stage_of:
                scorer, scored = (
                    (layers[index - 1], previous_input)
                    if schedule.scoring == "previous_layer"
                    else (layer, state)
                )
                scores, vision_index = _score_vision(scorer, scored, decoder.rotary_emb)
                state = _drop(state, scores, vision_index, keep_counts[stage_of[index]])
                if schedule.positions == "compact" and not mrope:
                    state.positions = torch.arange(state.hidden.shape[1], device=device)[None]
                scores_per_stage.append(scores.cpu().numpy().astype(np.float32))
                kept_positions.append(state.source[state.is_vision].numpy().astype(np.int64))
                embeddings = None
            length = state.hidden.shape[1]
            if embeddings is None:
                embeddings = _rotary(llm, state.hidden, state.positions)
            if length != mask_length:  # same length and empty caches: the same mask
                mask = _causal_mask(llm, cache, state.hidden, index)
                mask_length = length
            previous_input = state
            hidden = layer(
                state.hidden,
                attention_mask=mask,
                position_ids=state.positions,
                **hf_compat.layer_cache_kwargs(cache),
                position_embeddings=embeddings,
            )
            state = _Sequence(
                hidden=hidden,
                source=state.source,
                positions=state.positions,
                is_vision=state.is_vision,
            )
            tokens_per_layer.append(length)
            next_position.append(int(state.positions.max()) + 1)
        last_logits = untyped.lm_head(decoder.norm(state.hidden[:, -1:]))[0, -1].float()
        generation = _greedy_decode(
            llm,
            layers,
            cache,
            first_logits=last_logits,
            next_position=next_position,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            mrope=mrope,
        )
    log.debug("layer drop: tokens per layer %s", tokens_per_layer)
    return LayerDropResult(
        generation=generation,
        kept_vision_positions=kept_positions,
        tokens_per_layer=tokens_per_layer,
        vision_scores=scores_per_stage,
        last_logits=last_logits,
    )


def _stop_ids(llm: nn.Module, eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _greedy_decode(
    llm: nn.Module,
    layers: Sequence[nn.Module],
    cache: Any,
    *,
    first_logits: torch.Tensor,
    next_position: Sequence[int],
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    mrope: bool = False,
) -> GenerationResult:
    """Greedy tokens from the prefill's last logits, one token per pass through ``layers``."""
    untyped: Any = llm
    decoder: Any = untyped.model
    stops = _stop_ids(llm, eos_token_id)
    penalty = getattr(getattr(llm, "generation_config", None), "repetition_penalty", None)
    device = first_logits.device
    logits = first_logits
    generated: list[int] = []
    for step in range(max_new_tokens):
        if penalty is not None and penalty != 1.0 and generated:
            # generate()'s RepetitionPenaltyLogitsProcessor over the generated ids (no input ids)
            seen = torch.tensor(sorted(set(generated)), device=device)
            values = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(values < 0, values * penalty, values / penalty)
        token = int(torch.argmax(logits))
        generated.append(token)
        if token in stops or step == max_new_tokens - 1:
            break
        hidden = untyped.get_input_embeddings()(torch.tensor([[token]], device=device))
        embeddings: Any = None
        last_position = -1
        for index, layer in enumerate(layers):
            position = next_position[index] + step
            if position != last_position:
                position_ids = torch.tensor([[position]], device=device)
                if mrope:
                    position_ids = position_ids[None].expand(MROPE_AXES, -1, -1)
                embeddings = _rotary(llm, hidden, position_ids)
                last_position = position
            hidden = layer(
                hidden,
                attention_mask=_causal_mask(llm, cache, hidden, index),
                position_ids=position_ids,
                **hf_compat.layer_cache_kwargs(cache),
                position_embeddings=embeddings,
            )
        logits = untyped.lm_head(decoder.norm(hidden))[0, -1].float()
    end = next((i for i, token in enumerate(generated) if token in stops), None)
    tokens = generated if end is None else generated[:end]
    steps = len(generated) if end is None else end + 1
    return GenerationResult(token_ids=[tokens], decode_steps=[steps])
