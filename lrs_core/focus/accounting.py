"""What a question costs: FLOPs of the vision tower, the RFM and the LLM, from counted tokens.

Both executors (:mod:`lrs_core.focus.executor`) count through these functions, so a dry run and a
run of the same view report the same figures for the same tiles and tokens. Dense attention
throughout (:func:`lrs_core.models.flops.count_flops`); a layer-drop prefill counts each layer on
its own length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lrs_core.models.flops import ModelDims, count_flops


def vision_flops(dims: ModelDims, *, tiles_encoded: int) -> float:
    """Vision-tower FLOPs of ``tiles_encoded`` tile passes (cache hits are free)."""
    return count_flops(dims, vision_tiles=tiles_encoded, prefill_tokens=0).vision_flops


def rfm_flops(dims: ModelDims, rfm_tokens: Sequence[int]) -> float:
    """RFM FLOPs of passes over sequences of these lengths."""
    return sum(
        count_flops(dims, vision_tiles=0, prefill_tokens=0, rfm_tokens=n).rfm_flops
        for n in rfm_tokens
    )


def llm_flops(dims: ModelDims, *, prefill_tokens: int, decode_steps: int) -> float:
    """LLM FLOPs of a prefill of ``prefill_tokens`` and ``decode_steps`` decode steps."""
    return count_flops(
        dims, vision_tiles=0, prefill_tokens=prefill_tokens, decode_steps=decode_steps
    ).llm_flops


def layer_drop_llm_flops(
    dims: ModelDims, tokens_per_layer: Sequence[int], *, decode_steps: int
) -> float:
    """LLM FLOPs of a prefill whose layers see different lengths (FastV/PDrop), plus decoding.

    Each layer is counted as a one-layer model on its own length (dense attention, as
    :func:`count_flops`); the LM head is counted once for the prefill's last token and once per
    decode step. Decode step t of layer l attends over ``tokens_per_layer[l] + t`` keys.
    """
    one_layer = dataclasses.replace(dims, llm=dataclasses.replace(dims.llm, layers=1))
    head = 2.0 * dims.llm.hidden * dims.llm.vocab
    head_count = 1 + max(0, decode_steps - 1)
    total = 0.0
    for length in tokens_per_layer:
        total += count_flops(
            one_layer, vision_tiles=0, prefill_tokens=length, decode_steps=decode_steps
        ).llm_flops
        total -= head * head_count
    return total + head * head_count
