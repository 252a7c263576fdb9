"""llava-hf LLaVA-1.5 / LLaVA-NeXT directories.

``LlavaForConditionalGeneration`` (LLaVA-1.5) and ``LlavaNextForConditionalGeneration``
(LLaVA-NeXT) directories, ``model_type`` ``llava`` / ``llava_next`` with ``text_config`` (Llama
or Qwen2) and ``vision_config`` (CLIP or SigLIP). Both key spellings are read: transformers v4
(``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.vision_model.*``,
``multi_modal_projector.linear_{1,2}.*``, ``image_newline``) and v5 (``model.language_model.*``,
``lm_head.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
``model.image_newline``). The RFM is initialised from LLM layer copies
(``llm_layer_list`` argument, default :func:`default_llm_layer_list`); LLaVA-1.5 has no
``image_newline``, which is initialised ``N(0, 1/D)`` from a fixed seed (LLaVA-NeXT's init).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.config import (
    CLIP_IMAGE_MEAN,
    CLIP_IMAGE_STD,
    SIGLIP_IMAGE_MEAN,
    SIGLIP_IMAGE_STD,
    LlmFamily,
    VisionFamily,
    VlmConfig,
    default_chat_template,
)
from lrs_core.models.loading.files import (
    SKIPPED_SUFFIXES,
    has_keys,
    image_norm,
    load_tokenizer,
    read_json,
)
from lrs_core.models.loading.loaded import build_and_load
from lrs_core.models.vlm import VisionLanguageModel, llm_config_class, vision_config_class

#: Seed of the ``image_newline`` initialisation for checkpoints without one (LLaVA-1.5).
IMAGE_NEWLINE_SEED = 0

_LLAVA_HF_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        # transformers v5 spelling
        (r"^lm_head\.", "llm.lm_head."),
        (r"^model\.language_model\.", "llm.model."),
        (r"^model\.vision_tower\.(vision_model\.)?", "vision_tower."),
        (r"^model\.multi_modal_projector\.linear_1\.", "projector.0."),
        (r"^model\.multi_modal_projector\.linear_2\.", "projector.2."),
        (r"^model\.image_newline$", "image_newline"),
        # transformers v4 spelling
        (r"^language_model\.lm_head\.", "llm.lm_head."),
        (r"^language_model\.model\.", "llm.model."),
        (r"^vision_tower\.(vision_model\.)?", "vision_tower."),
        (r"^multi_modal_projector\.linear_1\.", "projector.0."),
        (r"^multi_modal_projector\.linear_2\.", "projector.2."),
        (r"^image_newline$", "image_newline"),
    )
)


def default_llm_layer_list(num_layers: int) -> tuple[int, ...]:
    """Return the default RFM list for an LLM without one: ``(1, ..., max(1, num_layers // 4))``.

    With a list consecutive from 1 the RFM is an exact copy of the LLM's first layers (spec §3), so
    before any distillation its attention equals the LLM's at layer ``num_layers // 4``.
    """
    return tuple(range(1, max(1, num_layers // 4) + 1))


def llava_hf_key(key: str) -> str | None:
    """Map a llava-hf key (transformers v4 or v5 spelling) to the project's (None: skip)."""
    if key.endswith(SKIPPED_SUFFIXES):
        return None
    for pattern, target in _LLAVA_HF_RULES:
        if pattern.match(key):
            return pattern.sub(target, key, count=1)
    return key


def read_llava_hf_checkpoint(
    source: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    llm_layer_list: tuple[int, ...] | None = None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Build the model from a llava-hf directory; the RFM is a copy of LLM layers.

    Raises:
        WeightsError: unsupported text/vision family or mismatched weights.
    """
    raw = read_json(source / "config.json")
    text_dict = dict(raw["text_config"])
    vision_dict = dict(raw.get("vision_config") or {})
    llm_families: dict[str, LlmFamily] = {"llama": "llama", "qwen2": "qwen2"}
    vision_families: dict[str, VisionFamily] = {
        "clip_vision_model": "clip",
        "siglip_vision_model": "siglip",
    }
    family = llm_families.get(text_dict.get("model_type", "llama"))
    vision_family = vision_families.get(vision_dict.get("model_type", "clip_vision_model"))
    if family is None or vision_family is None:
        raise WeightsError(
            f"{source / 'config.json'}: text model_type={text_dict.get('model_type')!r}, vision "
            f"model_type={vision_dict.get('model_type')!r}; supported: llama/qwen2 with clip/siglip"
        )
    if raw.get("projector_hidden_act", "gelu") != "gelu":
        raise WeightsError(
            f"{source / 'config.json'}: projector_hidden_act={raw['projector_hidden_act']!r}; "
            "only the mlp2x_gelu projector is supported"
        )
    llm_config = llm_config_class(family).from_dict(_drop_model_type(text_dict))
    vision_config = vision_config_class(vision_family).from_dict(_drop_model_type(vision_dict))
    feature_layer = raw.get("vision_feature_layer", -2)
    if not isinstance(feature_layer, int):
        raise ConfigError(
            f"{source / 'config.json'}: vision_feature_layer={feature_layer!r}; "
            "only one layer is supported"
        )
    layer_list = llm_layer_list or default_llm_layer_list(llm_config.num_hidden_layers)
    default_mean, default_std = (
        (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)
        if vision_family == "clip"
        else (SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD)
    )
    mean, std = image_norm(source, default_mean, default_std)
    config = VlmConfig(
        llm_family=family,
        vision_family=vision_family,
        chat_template=default_chat_template(family),
        tile_size_px=vision_config.image_size,
        patch_size_px=vision_config.patch_size,
        vision_select_layer=feature_layer,
        drop_cls=vision_family == "clip"
        and raw.get("vision_feature_select_strategy", "default") == "default",
        rfm_llm_layers=tuple(layer_list),
        image_mean=mean,
        image_std=std,
        max_context_tokens=int(llm_config.max_position_embeddings),
    )
    model = build_and_load(
        config,
        vision_config=vision_config,
        llm_config=llm_config,
        source=source,
        key_map=llava_hf_key,
        device=device,
        dtype=dtype,
        optional_prefixes=("rfm.", "image_newline", "vision_tower.head."),
    )
    model.rfm.copy_from_llm(model.llm, config.rfm_source_layers)
    if not has_keys(source, "image_newline") and not has_keys(source, "model.image_newline"):
        generator = torch.Generator().manual_seed(IMAGE_NEWLINE_SEED)
        values = torch.randn(model.hidden_size, generator=generator) * model.hidden_size**-0.5
        with torch.no_grad():
            model.image_newline.copy_(values)
    return model, load_tokenizer(source)


def _drop_model_type(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "model_type"}
