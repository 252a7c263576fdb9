"""The paper's released checkpoints (the original LLaVA layout with an RFM).

The paper's releases (``ll-13/llava-largeimg-Qwen2-7B``, ``ll-13/llava-largeimg-Vicuna-7B``):
the original LLaVA layout. ``config.json`` is the LLM config plus LLaVA fields
(``mm_vision_tower``,
``llm_layer_list``, ``mm_vision_select_layer``, ``mm_vision_select_feature``,
``mm_patch_merge_type``, ``mm_spatial_pool_mode``, ``tokenizer_model_max_length``,
``llm_use_last_text``, ``image_aspect_ratio``, ``mm_hidden_size``, ``mm_projector_type``); the
family comes from ``model_type``/``architectures`` (``llava_qwen`` / ``LlavaQwenForCausalLM`` ->
Qwen2, ``llava_llama`` / ``llava`` / ``LlavaLlamaForCausalLM`` -> Llama). Weight keys:
``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``,
``model.vision_tower.vision_tower.vision_model.*``,
``model.mm_projector.mlp_projector.{0,2}.*``,
``model.mm_projector.token_pruner.layers.{i}.*``,
``model.mm_projector.token_pruner.norm.weight``,
``model.image_newline``.

The vision tower's config is not in that ``config.json``. It is taken, in this order, from: the
``vision_config_path`` argument (``--vision-config``: a CLIP ``config.json`` or a directory
holding one; a full ``CLIPModel`` config is accepted); a ``vision_tower/`` directory beside the
checkpoint; ``mm_vision_tower`` when it is a local directory; the built-in copy of
``openai/clip-vit-large-patch14-336`` (:data:`KNOWN_VISION_CONFIGS`). When the checkpoint holds
no vision weights (as original LLaVA-1.5 releases), they are read from that vision directory's
safetensors (``CLIPVisionModel`` or ``CLIPModel``, text weights ignored). When
``mm_vision_tower`` is a local directory holding a ``config.json`` and safetensors (and no
``--vision-config`` is given), the tower's config *and weights* come from there and the copy
stored in the checkpoint is discarded, as the reference does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import torch
from safetensors import safe_open
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.config import (
    CLIP_IMAGE_MEAN,
    CLIP_IMAGE_STD,
    LlmFamily,
    VlmConfig,
    default_chat_template,
)
from lrs_core.models.loading.files import (
    SKIPPED_SUFFIXES,
    has_keys,
    image_norm,
    load_tokenizer,
    read_json,
    safetensors_files,
)
from lrs_core.models.loading.loaded import build_and_load
from lrs_core.models.vlm import VisionLanguageModel, llm_config_class, vision_config_class

#: Spatial pool modes of the reference equal to 2x2 average pooling at stride 2 (spec §2.1).
AVERAGE_POOL_MODES = ("bilinear", "average")
#: CLIP ViT-L/14 at 336 px (``openai/clip-vit-large-patch14-336`` config.json, vision_config), the
#: tower of the paper's LLaVA checkpoints: keyword arguments of ``CLIPVisionConfig``.
CLIP_L14_336: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
    }
)
#: Vision-tower configs written down so the paper's checkpoints convert offline.
KNOWN_VISION_CONFIGS: dict[str, Mapping[str, Any]] = {
    "openai/clip-vit-large-patch14-336": CLIP_L14_336,
}

_PAPER_QWEN_TYPES = ("llava_qwen", "LlavaQwenForCausalLM")
_PAPER_LLAMA_TYPES = ("llava_llama", "llava", "LlavaLlamaForCausalLM")
_PAPER_NON_LLM_FIELDS = (
    "model_type",
    "architectures",
    "llm_layer_list",
    "llm_use_last_text",
    "image_aspect_ratio",
    "image_grid_pinpoints",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
)
_PAPER_NON_LLM_PREFIXES = ("mm_", "use_mm_", "tune_mm_", "freeze_mm_", "unfreeze_mm_")


def paper_key(key: str) -> str | None:
    """Map a key of the paper's LLaVA layout to the project's (None: skip the tensor)."""
    if key.endswith(SKIPPED_SUFFIXES):
        return None
    for prefix, target in (
        ("model.vision_tower.vision_tower.", "vision_tower."),
        ("model.mm_projector.mlp_projector.", "projector."),
        ("model.mm_projector.token_pruner.", "rfm."),
    ):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if target == "vision_tower.":
                rest = rest.removeprefix("vision_model.")
            return target + rest
    if key == "model.image_newline":
        return "image_newline"
    if key.startswith(("model.", "lm_head.")):
        return "llm." + key
    return key


def read_paper_checkpoint(
    source: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    vision_config_path: str | Path | None = None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Build the model from a paper release directory (see the module docstring).

    Raises:
        WeightsError: unknown family, missing ``llm_layer_list``, or mismatched weights.
        ConfigError: a [CONFIG] value the method does not support (e.g. a max-pool mode).
    """
    raw = read_json(source / "config.json")
    family = _paper_family(raw, source)
    llm_config = paper_llm_config(raw, family)
    tower_dir = _local_vision_tower(raw) if vision_config_path is None else None
    vision_dir, vision_dict = _paper_vision_config(
        raw, source, tower_dir if tower_dir is not None else vision_config_path
    )
    vision_config = vision_config_class("clip").from_dict(vision_dict)
    if "llm_layer_list" not in raw:
        raise WeightsError(
            f"{source / 'config.json'}: llm_layer_list is missing; it defines the RFM"
        )
    pool_mode = raw.get("mm_spatial_pool_mode", "bilinear")
    if pool_mode not in AVERAGE_POOL_MODES:
        raise ConfigError(
            f"{source / 'config.json'}: mm_spatial_pool_mode={pool_mode!r} is not supported "
            f"(supported: {list(AVERAGE_POOL_MODES)}, both 2x2 average pooling)"
        )
    if raw.get("mm_hidden_size", vision_config.hidden_size) != vision_config.hidden_size:
        raise WeightsError(
            f"{source}: mm_hidden_size={raw['mm_hidden_size']} differs from the vision config's "
            f"hidden_size={vision_config.hidden_size}; pass the right --vision-config"
        )
    mean, std = image_norm(vision_dir or source, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)
    config = VlmConfig(
        llm_family=family,
        vision_family="clip",
        chat_template=default_chat_template(family),
        tile_size_px=vision_config.image_size,
        patch_size_px=vision_config.patch_size,
        vision_select_layer=int(raw.get("mm_vision_select_layer", -2)),
        drop_cls=raw.get("mm_vision_select_feature", "patch") == "patch",
        rfm_llm_layers=tuple(raw["llm_layer_list"]),
        image_mean=mean,
        image_std=std,
        max_context_tokens=int(
            raw.get("tokenizer_model_max_length") or llm_config.max_position_embeddings
        ),
    )
    extra = None
    key_map = paper_key
    if tower_dir is not None:
        # as the reference: the tower comes from mm_vision_tower, the stored copy is discarded
        extra = _separate_vision_weights(tower_dir, source)
        key_map = _without_vision_tower
    elif not has_keys(source, "model.vision_tower."):
        extra = _separate_vision_weights(vision_dir, source)
    model = build_and_load(
        config,
        vision_config=vision_config,
        llm_config=llm_config,
        source=source,
        key_map=key_map,
        device=device,
        dtype=dtype,
        extra_weights=extra,
    )
    return model, load_tokenizer(source)


def _local_vision_tower(raw: dict[str, Any]) -> Path | None:
    """``mm_vision_tower`` when it is a local directory with a config and safetensors weights."""
    tower = raw.get("mm_vision_tower")
    if not isinstance(tower, str):
        return None
    path = Path(tower)
    if not (path / "config.json").is_file():
        return None
    try:
        safetensors_files(path)
    except WeightsError:
        return None
    return path


def _without_vision_tower(key: str) -> str | None:
    """:func:`paper_key`, skipping the checkpoint's own vision tower."""
    target = paper_key(key)
    return None if target is None or target.startswith("vision_tower.") else target


def paper_llm_config(raw: dict[str, Any], family: LlmFamily) -> PreTrainedConfig:
    """Return the LLM config inside a paper ``config.json``: every field but the LLaVA ones.

    Fields of the transformers-4.37 era (``rope_theta``, ``rope_scaling``, ``torch_dtype``) are
    passed through, so the stock v5 config class converts them (``rope_theta`` into
    ``rope_parameters``) exactly as for any old checkpoint.
    """
    values = {
        key: value
        for key, value in raw.items()
        if key not in _PAPER_NON_LLM_FIELDS and not key.startswith(_PAPER_NON_LLM_PREFIXES)
    }
    return llm_config_class(family).from_dict(values)


def _paper_family(raw: dict[str, Any], source: Path) -> LlmFamily:
    names = [raw.get("model_type", ""), *raw.get("architectures", [])]
    if any(name in _PAPER_QWEN_TYPES for name in names):
        return "qwen2"
    if any(name in _PAPER_LLAMA_TYPES for name in names):
        return "llama"
    raise WeightsError(
        f"{source / 'config.json'}: model_type/architectures {names} name no supported LLM "
        f"(Qwen2: {list(_PAPER_QWEN_TYPES)}; Llama/Vicuna: {list(_PAPER_LLAMA_TYPES)})"
    )


def _paper_vision_config(
    raw: dict[str, Any], source: Path, vision_config_path: str | Path | None
) -> tuple[Path | None, dict[str, Any]]:
    candidates: list[Path] = []
    if vision_config_path is not None:
        candidates.append(Path(vision_config_path))
    candidates.append(source / "vision_tower")
    tower = raw.get("mm_vision_tower")
    if isinstance(tower, str) and Path(tower).is_dir():
        candidates.append(Path(tower))
    for candidate in candidates:
        file = candidate / "config.json" if candidate.is_dir() else candidate
        if file.is_file():
            data = read_json(file)
            if data.get("model_type") == "clip" and "vision_config" in data:
                data = data["vision_config"]
            data = {k: v for k, v in data.items() if k != "model_type"}
            return (file.parent, data)
        if candidate == Path(vision_config_path or ""):
            raise WeightsError(f"{candidate}: no CLIP config.json there (from --vision-config)")
    if isinstance(tower, str) and tower in KNOWN_VISION_CONFIGS:
        return (None, dict(KNOWN_VISION_CONFIGS[tower]))
    raise WeightsError(
        f"{source}: no vision tower config for mm_vision_tower={tower!r}; pass --vision-config "
        "with a CLIP config.json or directory, or put one in <checkpoint>/vision_tower/"
    )


def _separate_vision_weights(vision_dir: Path | None, source: Path) -> dict[str, torch.Tensor]:
    if vision_dir is None:
        raise WeightsError(
            f"{source}: the checkpoint holds no vision-tower weights and no vision tower directory "
            "was given; pass --vision-config with a CLIP directory holding model.safetensors"
        )
    weights: dict[str, torch.Tensor] = {}
    for file in safetensors_files(vision_dir):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if key.startswith(
                    ("text_model.", "text_projection", "visual_projection", "logit_scale")
                ):
                    continue
                if key.endswith(SKIPPED_SUFFIXES):
                    continue
                rest = key.removeprefix("vision_model.")
                weights["vision_tower." + rest] = handle.get_tensor(key)
    return weights
