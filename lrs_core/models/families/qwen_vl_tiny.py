"""Tiny random Qwen2-VL / Qwen2.5-VL models in the Hugging Face on-disk layout, for tests and demos.

The architecture is the stock one (M-RoPE, 14 px patches, 2 x 2 merge, temporal patch 2; Qwen2.5-VL
with windowed vision attention and a full-attention block) at toy widths:

* vision tower: 2 blocks, 32 wide, 2 heads (Qwen2.5-VL: 56 px windows, block 1 full attention);
* LLM: 4 layers, 64 wide, 4 query / 2 KV heads (head dim 16, ``mrope_section`` [2, 3, 3]).

The tokenizer is :func:`lrs_core.models.tiny.build_tokenizer`'s Qwen2-like BPE plus Qwen-VL's vision
special tokens; the directory gets ``config.json``, ``model.safetensors``,
``generation_config.json``, tokenizer files with the stock chat template, and
``preprocessor_config.json`` (the stock image processor's settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from lrs_core.errors import ConfigError
from lrs_core.models import hf_compat
from lrs_core.models.families.qwen_vl import IMAGE_PAD_TOKEN, QWEN_VL_CHAT_TEMPLATE
from lrs_core.models.tiny import (
    ENDOFTEXT_TOKEN,
    IM_END_TOKEN,
    TINY_MAX_CONTEXT_TOKENS,
    build_tokenizer,
)

TinyQwenFamily = Literal["qwen2-vl", "qwen2.5-vl"]
#: The families :func:`init_tiny_qwen_vl` builds.
TINY_QWEN_FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl")

VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
VIDEO_PAD_TOKEN = "<|video_pad|>"
VISION_SPECIAL_TOKENS = (VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_PAD_TOKEN, VIDEO_PAD_TOKEN)

_ROPE_THETA = 1_000_000.0
#: Standard deviation of the random q/k/v biases (the stock init leaves them at 0).
_BIAS_STD = 0.5
_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": TINY_MAX_CONTEXT_TOKENS,
    # head_dim 16 -> 8 rotary frequencies, split temporal / height / width.
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": _ROPE_THETA,
        "mrope_section": [2, 3, 3],
    },
}
_PATCH = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
_QWEN2_VL_VISION: dict[str, Any] = {
    **_PATCH,
    "depth": 2,
    "embed_dim": 32,
    "mlp_ratio": 2,
    "num_heads": 2,
    "hidden_size": _TEXT["hidden_size"],
}
_QWEN25_VL_VISION: dict[str, Any] = {
    **_PATCH,
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": _TEXT["hidden_size"],
    "window_size": 56,  # 4 x 4 patches, so small test tiles span several windows
    "fullatt_block_indexes": [1],
}


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Return the offline Qwen2-like tokenizer with Qwen-VL's vision tokens and chat template."""
    tokenizer = build_tokenizer(family="qwen2")
    tokenizer.add_tokens(list(VISION_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen_vl(
    *, family: TinyQwenFamily = "qwen2-vl", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Return a random tiny stock Qwen-VL model (eval mode, float32) and its tokenizer.

    Raises:
        ConfigError: unknown family.
    """
    if family not in TINY_QWEN_FAMILIES:
        raise ConfigError(f"family={family!r} must be one of {TINY_QWEN_FAMILIES}")
    tokenizer = build_tiny_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_SPECIAL_TOKENS}
    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT_TOKEN),
    }
    text = {**_TEXT, "vocab_size": len(tokenizer), **special}
    common: dict[str, Any] = {
        "text_config": text,
        "image_token_id": ids[IMAGE_PAD_TOKEN],
        "video_token_id": ids[VIDEO_PAD_TOKEN],
        "vision_start_token_id": ids[VISION_START_TOKEN],
        "vision_end_token_id": ids[VISION_END_TOKEN],
        "tie_word_embeddings": False,
    }
    config: Any
    model_class: Any
    if family == "qwen2-vl":
        config = Qwen2VLConfig(vision_config=dict(_QWEN2_VL_VISION), **common)
        model_class = Qwen2VLForConditionalGeneration
    else:
        config = Qwen2_5_VLConfig(vision_config=dict(_QWEN25_VL_VISION), **common)
        model_class = Qwen2_5_VLForConditionalGeneration
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_class(config)
        with torch.no_grad():  # random init leaves the q/k/v biases at 0; make them matter
            for layer in model.model.language_model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(std=_BIAS_STD)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]  # untyped upstream
        bos_token_id=special["bos_token_id"],
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END_TOKEN), special["bos_token_id"]],
        pad_token_id=special["pad_token_id"],
        do_sample=False,
    )
    return model.to(torch.float32).eval(), tokenizer


def init_tiny_qwen_vl(
    out_dir: str | Path, *, family: TinyQwenFamily = "qwen2-vl", seed: int = 0
) -> Path:
    """Build a tiny random Qwen-VL model and save it in the Hugging Face layout.

    Args:
        out_dir: directory to write (created; existing files are overwritten).
        family: ``"qwen2-vl"`` or ``"qwen2.5-vl"``.
        seed: seed of the random weights.

    Returns:
        The directory, loadable with :func:`lrs_core.models.families.qwen_vl.load_qwen_vl`.
    """
    model, tokenizer = build_tiny_qwen_vl(family=family, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    hf_compat.qwen2_vl_image_processor_class()().save_pretrained(str(out))
    return out
