"""Run a stock causal LM on a subset of its input embeddings: prefill logits and generation.

After pruning, the LLM sees ``inputs_embeds`` holding the thumbnail, the kept vision tokens and the
text (spec §5.1, last line). Two position conventions are supported (:data:`PositionMode`):

* ``"compact"``: positions ``0..K-1`` over the kept tokens, so dropped tokens leave no gap. This is
  the reference's choice (spec §5.5: ``position_ids=None`` is passed to ``generate``).
* ``"original"``: each kept token keeps the position id it had in the full sequence (gaps where
  tokens were dropped), so RoPE distances match the unpruned sequence.

Batches of rows with different kept counts are **left padded** (:func:`pack_kept`): the real tokens
of row ``b`` sit at the right end, padding slots have ``attention_mask`` 0, a zero embedding and
position id 0. Left padding keeps every row's last prompt token in the last column, which is where
``generate()`` reads the next-token logits.

Explicit position ids always travel with an explicit attention mask: transformers treats a
position-id sequence with gaps as several packed sequences when no 2D mask is given (and no cache is
used), which would silently cut attention at every gap of the ``"original"`` mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from lrs_core.errors import ConfigError

log = logging.getLogger(__name__)

PositionMode = Literal["compact", "original"]
#: Upper bound (exclusive) of the seeds drawn from a caller's ``torch.Generator`` for sampling.
_SEED_BOUND = 2**62


@dataclass(frozen=True, kw_only=True)
class PackedInputs:
    """Kept tokens of a batch, left padded to a common length K.

    Attributes:
        inputs_embeds: (B, K, D) in the dtype of the source embeddings; padding slots are 0.
        attention_mask: int64 (B, K); 1 for kept tokens, 0 for left padding.
        position_ids: int64 (B, K); see :func:`select_positions`.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """Tokens generated for each row of a batch.

    Attributes:
        token_ids: per row, the generated token ids, without the end-of-sequence token and without
            the padding that follows it in a batch.
        decode_steps: per row, the number of tokens the model generated for it, the
            end-of-sequence token included (one decode step = one generated token; the first one
            comes from the prefill logits).
    """

    token_ids: list[list[int]]
    decode_steps: list[int]


def _check_mode(mode: str) -> None:
    if mode not in get_args(PositionMode):
        raise ConfigError(f"position mode {mode!r} is not one of {get_args(PositionMode)}")


def _check_kept(kept: torch.Tensor) -> None:
    if kept.dtype != torch.bool or kept.ndim != 2:
        raise ConfigError(f"kept must be a bool (B, L) mask; got {kept.dtype} {tuple(kept.shape)}")
    empty = (~kept.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(f"rows {empty} keep no token; keep at least the text of every row")


def select_positions(
    kept: torch.Tensor,
    mode: PositionMode,
    *,
    full_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Position ids of the kept tokens, left padded like :func:`pack_kept`.

    Args:
        kept: bool (B, L_full); True where a token of the full sequence is kept.
        mode: ``"compact"`` gives ``0..k_b-1`` for the ``k_b`` kept tokens of row b; ``"original"``
            gives their ids in ``full_positions``.
        full_positions: int64 (B, L_full) or (1, L_full); position ids of the full sequence
            (default ``0..L_full-1``). Only read in ``"original"`` mode.

    Returns:
        int64 (B, K) with K = max kept count; row b's ids fill its last ``k_b`` slots in sequence
        order, padding slots hold 0.

    Raises:
        ConfigError: unknown mode, a malformed mask, or a row that keeps nothing.
    """
    _check_mode(mode)
    _check_kept(kept)
    batch, length = kept.shape
    counts = kept.sum(dim=1)
    width = int(counts.max())
    if full_positions is None:
        full_positions = torch.arange(length, device=kept.device)[None]
    out = torch.zeros(batch, width, dtype=torch.int64, device=kept.device)
    for row in range(batch):
        count = int(counts[row])
        if mode == "compact":
            values = torch.arange(count, device=kept.device)
        else:
            values = full_positions.expand(batch, -1)[row][kept[row]].to(torch.int64)
        out[row, width - count :] = values
    return out


def pack_kept(
    inputs_embeds: torch.Tensor,
    kept: torch.Tensor,
    *,
    mode: PositionMode = "compact",
    full_positions: torch.Tensor | None = None,
) -> PackedInputs:
    """Gather the kept tokens of each row, left padded, with their mask and position ids.

    Args:
        inputs_embeds: (B, L_full, D); embeddings of the full (unpruned) sequence.
        kept: bool (B, L_full); True where a token is kept (order is preserved).
        mode: position convention, see :data:`PositionMode`.
        full_positions: int64 (B, L_full) or (1, L_full); position ids of the full sequence.

    Returns:
        The packed batch (B, K, D) with K = max kept count.

    Raises:
        ConfigError: as :func:`select_positions`, or shapes that disagree.
    """
    if inputs_embeds.shape[:2] != kept.shape:
        raise ConfigError(
            f"inputs_embeds {tuple(inputs_embeds.shape)} and kept {tuple(kept.shape)} disagree on "
            "(B, L_full)"
        )
    position_ids = select_positions(kept, mode, full_positions=full_positions)
    batch, width = position_ids.shape
    embeds = inputs_embeds.new_zeros(batch, width, inputs_embeds.shape[-1])
    mask = torch.zeros(batch, width, dtype=torch.int64, device=inputs_embeds.device)
    for row in range(batch):
        count = int(kept[row].sum())
        embeds[row, width - count :] = inputs_embeds[row][kept[row]]
        mask[row, width - count :] = 1
    return PackedInputs(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids)


def _model_kwargs(
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> dict[str, Any]:
    if attention_mask is None and position_ids is not None:
        # an explicit mask keeps transformers from reading position gaps as packed sequences
        attention_mask = torch.ones(
            inputs_embeds.shape[:2], dtype=torch.int64, device=inputs_embeds.device
        )
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return kwargs


def prefill_logits(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token logits at every position of one prefill (no cache).

    Args:
        llm: a stock causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``).
        inputs_embeds: (B, L, D) in the model's dtype and device.
        attention_mask: int/bool (B, L); 1 = real token, 0 = (left) padding. Default: all ones.
        position_ids: int64 (B, L); default: the model's own ``0..L-1``.

    Returns:
        (B, L, V) logits in the model's dtype (every position: the LM head runs on all L rows).
        Gradients flow unless the caller disables them.
    """
    untyped: Any = llm
    output = untyped(**_model_kwargs(inputs_embeds, attention_mask, position_ids), use_cache=False)
    logits: torch.Tensor = output.logits
    return logits


def _eos_ids(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def generate_from_embeds(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationResult:
    """Generate with the KV cache from a prefill of input embeddings.

    Uses the stock ``generate()``, which continues the given position ids (each new token gets the
    row's last id + 1) and otherwise applies the model's ``generation_config`` (as the reference
    does). Greedy decoding (``do_sample=False``) is deterministic. For sampling, a seed is drawn
    from ``generator`` and the global RNG is seeded inside ``torch.random.fork_rng``, so the same
    generator state gives the same tokens and the caller's global RNG state is left untouched.

    Args:
        llm: a stock causal LM.
        inputs_embeds: (B, L, D) in the model's dtype and device, left padded when B > 1.
        attention_mask: int/bool (B, L); 1 = real token, 0 = left padding. Default: all ones.
        position_ids: int64 (B, L); e.g. :attr:`PackedInputs.position_ids`. Default: positions
            counted over the real tokens (``cumsum(attention_mask) - 1``), i.e. compact.
        max_new_tokens: upper bound on generated tokens per row (>= 1).
        eos_token_id: end-of-sequence id(s); None: the model's ``generation_config`` ids, if any.
        pad_token_id: id written after a row finished.
        do_sample: sample instead of greedy decoding.
        generator: seed source for sampling (None: the global RNG, not reproducible).

    Returns:
        The tokens and decode steps of each row.

    Raises:
        ConfigError: ``max_new_tokens`` < 1.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be >= 1")
    untyped: Any = llm
    kwargs = _model_kwargs(inputs_embeds, attention_mask, position_ids)
    kwargs.update(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        do_sample=do_sample,
    )
    if do_sample and generator is not None:
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=generator))
        devices = [inputs_embeds.device] if inputs_embeds.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            sequences = untyped.generate(**kwargs)
    else:
        sequences = untyped.generate(**kwargs)
    # with inputs_embeds only, decoder-only generate() returns the new tokens alone
    if eos_token_id is None:  # generate() then falls back on the model's generation_config
        eos_token_id = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    stops = _eos_ids(eos_token_id)
    token_ids: list[list[int]] = []
    decode_steps: list[int] = []
    for row in sequences.tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        token_ids.append(row if end is None else row[:end])
        decode_steps.append(len(row) if end is None else end + 1)
    return GenerationResult(token_ids=token_ids, decode_steps=decode_steps)
