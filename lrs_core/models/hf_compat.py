"""The one place that touches transformers internals.

Everything beyond the public model and config classes (``LlamaForCausalLM``, ``CLIPVisionConfig``
...) goes through this module: the causal-mask builder, the KV cache class, the attention and mask
registries, and the keyword a decoder layer takes its cache under. When transformers renames one of
them, only this module changes.

Tested range: :data:`TESTED_TRANSFORMERS` (the pin in ``pyproject.toml``). transformers 5.x renamed
the ``past_key_values=`` keyword of ``create_causal_mask`` and of the decoder layers to ``cache=``
(the old name warns, and goes in 5.40); the test suite turns transformers' ``FutureWarning`` and
``DeprecationWarning`` into errors, so a call in the old form fails the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache, PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface
from transformers.masking_utils import create_causal_mask as _create_causal_mask
from transformers.utils import logging as _hf_logging

__all__ = [
    "TESTED_TRANSFORMERS",
    "AttentionInterface",
    "AttentionMaskInterface",
    "DynamicCache",
    "causal_mask",
    "layer_cache_kwargs",
    "new_cache",
    "register_attention",
    "unregister_attention",
]

#: The transformers versions this module was written and tested against (the pyproject pin).
TESTED_TRANSFORMERS = ">=5.24,<5.25"
#: The keyword under which decoder layers and mask builders take the KV cache (5.x: ``cache``).
CACHE_KWARG = "cache"


def causal_mask(
    config: PreTrainedConfig,
    *,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Any = None,
    position_ids: torch.Tensor | None = None,
    layer_idx: int | None = None,
) -> Any:
    """Return the stock causal mask for ``config``'s attention implementation.

    Args:
        config: the LLM (or RFM) config; its ``_attn_implementation`` picks the mask format.
        inputs_embeds: float (B, L, D), the tokens the mask is for.
        attention_mask: int/bool (B, L_total) padding mask, or None (all real).
        cache: a :class:`DynamicCache` the tokens are appended to, or None.
        position_ids: int64 (B, L); None lets transformers count them.
        layer_idx: with a cache, the layer whose cached length counts.

    Returns:
        Whatever the implementation consumes (a float/bool 4-D mask, a block mask, or None).
    """
    kwargs: dict[str, Any] = {
        "config": config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        CACHE_KWARG: cache,
        "position_ids": position_ids,
    }
    if layer_idx is not None:
        kwargs["layer_idx"] = layer_idx
    return _create_causal_mask(**kwargs)


def new_cache(config: PreTrainedConfig) -> Any:
    """Return an empty :class:`DynamicCache` for a model with ``config``."""
    return DynamicCache(config=config)


def layer_cache_kwargs(cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand ``cache`` to a stock decoder layer (``layer(h, **kwargs)``)."""
    return {CACHE_KWARG: cache, "use_cache": cache is not None}


def register_attention(name: str, attention: Callable[..., Any], base: str) -> None:
    """Register ``attention`` under ``name``, with the mask builder of implementation ``base``."""
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, AttentionMaskInterface()[base])  # type: ignore[no-untyped-call]  # untyped upstream


def attention_function(name: str) -> Callable[..., Any]:
    """Return the registered attention function of implementation ``name`` (e.g. ``"sdpa"``)."""
    function: Callable[..., Any] = AttentionInterface()[name]  # type: ignore[no-untyped-call]  # untyped upstream
    return function


def unregister_attention(name: str) -> None:
    """Remove implementation ``name`` from the attention and mask registries (no-op if absent)."""
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


@contextmanager
def progress_bars_disabled() -> Iterator[None]:
    """Silence transformers' loading progress bars inside the block (restored on exit)."""
    enabled = _hf_logging.is_progress_bar_enabled()
    _hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream
    try:
        yield
    finally:
        if enabled:
            _hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream


def qwen2_vl_image_processor_class() -> Any:
    """The stock image-only Qwen2-VL processor class (PIL backend: no torchvision needed)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    return Qwen2VLImageProcessorPil
