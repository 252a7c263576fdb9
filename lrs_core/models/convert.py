"""Read foreign checkpoint layouts into the project's model, and convert them to the project format.

Supported layouts (auto-detected by :func:`detect_layout` from files and config fields, never from
the directory name as the reference did):

``project``
    ``lrs_model.json`` present (see :mod:`lrs_core.models.io`).

``paper``
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

``llava_hf``
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
from typing import Any, Literal

import torch
from safetensors import safe_open
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

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
from lrs_core.models.io import (
    PREPROCESSOR_FILE,
    PROJECT_CONFIG_FILE,
    build_and_load,
    load_model,
    load_tokenizer,
    read_json,
    safetensors_files,
    save_model,
)
from lrs_core.models.vlm import VisionLanguageModel, llm_config_class, vision_config_class

CheckpointLayout = Literal["project", "paper", "llava_hf"]

#: Seed of the ``image_newline`` initialisation for checkpoints without one (LLaVA-1.5).
IMAGE_NEWLINE_SEED = 0
#: Spatial pool modes of the reference equal to 2x2 average pooling at stride 2 (spec §2.1).
AVERAGE_POOL_MODES = ("bilinear", "average")

#: Vision-tower configs written down so the paper's checkpoints convert offline.
KNOWN_VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "openai/clip-vit-large-patch14-336": {
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
    },
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
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def detect_layout(source: Path) -> CheckpointLayout:
    """Return which on-disk layout ``source`` holds.

    Raises:
        WeightsError: not a directory, or no supported layout recognised.
    """
    if not source.is_dir():
        raise WeightsError(f"{source}: model directory not found (pass a local directory)")
    if (source / PROJECT_CONFIG_FILE).is_file():
        return "project"
    config_file = source / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{source}: neither {PROJECT_CONFIG_FILE} nor config.json found")
    config = read_json(config_file)
    if "mm_vision_tower" in config or "llm_layer_list" in config:
        return "paper"
    if config.get("model_type") in ("llava", "llava_next") and "text_config" in config:
        return "llava_hf"
    raise WeightsError(
        f"{config_file}: model_type={config.get('model_type')!r} is not a supported layout "
        "(project format, the paper's LLaVA layout, or llava-hf llava / llava_next)"
    )


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    vision_config_path: str | Path | None = None,
    llm_layer_list: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert a checkpoint of any supported layout to the project format and return ``dst``.

    Args:
        src: the source directory (see the module docstring for the layouts).
        dst: output directory.
        vision_config_path: paper layout: the vision tower's config (file or directory).
        llm_layer_list: llava-hf layout: the RFM layer list.
        dtype: dtype to store (default: the checkpoint's, float32 when unknown).
    """
    source = Path(src)
    detect_layout(source)  # clear errors for a missing or foreign directory
    if dtype is None:
        dtype = _checkpoint_dtype(source)
    loaded = load_model(
        source,
        device="cpu",
        dtype=dtype,
        attn_implementation="sdpa",
        vision_config_path=vision_config_path,
        llm_layer_list=llm_layer_list,
    )
    return save_model(
        loaded.model,
        loaded.tokenizer,
        dst,
        model_id=loaded.model_id,
        generation=loaded.generation,
    )


def _checkpoint_dtype(source: Path) -> torch.dtype:
    files = safetensors_files(source)
    with safe_open(str(files[0]), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
            tensor = handle.get_slice(key)
            name = tensor.get_dtype()
            if name in ("F16", "BF16", "F32"):
                return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]
    return torch.float32


def default_llm_layer_list(num_layers: int) -> tuple[int, ...]:
    """Return the default RFM list for an LLM without one: ``(1, ..., max(1, num_layers // 4))``.

    With a list consecutive from 1 the RFM is an exact copy of the LLM's first layers (spec §3), so
    before any distillation its attention equals the LLM's at layer ``num_layers // 4``.
    """
    return tuple(range(1, max(1, num_layers // 4) + 1))


# ---------------------------------------------------------------------------------------------
# The paper's release (original LLaVA layout)


def paper_key(key: str) -> str | None:
    """Map a key of the paper's LLaVA layout to the project's (None: skip the tensor)."""
    if key.endswith(_SKIPPED_SUFFIXES):
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
    mean, std = _image_norm(vision_dir or source, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)
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
    elif not _has_keys(source, "model.vision_tower."):
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
                if key.endswith(_SKIPPED_SUFFIXES):
                    continue
                rest = key.removeprefix("vision_model.")
                weights["vision_tower." + rest] = handle.get_tensor(key)
    return weights


def _has_keys(source: Path, prefix: str) -> bool:
    for file in safetensors_files(source):
        with safe_open(str(file), framework="pt") as handle:
            if any(key.startswith(prefix) for key in handle.keys()):  # noqa: SIM118
                return True
    return False


def _image_norm(
    directory: Path, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    file = directory / PREPROCESSOR_FILE
    if not file.is_file():
        return mean, std
    data = read_json(file)
    image_mean = tuple(float(v) for v in data.get("image_mean", mean))
    image_std = tuple(float(v) for v in data.get("image_std", std))
    if len(image_mean) != 3 or len(image_std) != 3:
        raise WeightsError(f"{file}: image_mean and image_std must hold 3 values each")
    return (image_mean[0], image_mean[1], image_mean[2]), (image_std[0], image_std[1], image_std[2])


# ---------------------------------------------------------------------------------------------
# llava-hf LLaVA-1.5 / LLaVA-NeXT

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


def llava_hf_key(key: str) -> str | None:
    """Map a llava-hf key (transformers v4 or v5 spelling) to the project's (None: skip)."""
    if key.endswith(_SKIPPED_SUFFIXES):
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
    mean, std = _image_norm(source, default_mean, default_std)
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
    if not _has_keys(source, "image_newline") and not _has_keys(source, "model.image_newline"):
        generator = torch.Generator().manual_seed(IMAGE_NEWLINE_SEED)
        values = torch.randn(model.hidden_size, generator=generator) * model.hidden_size**-0.5
        with torch.no_grad():
            model.image_newline.copy_(values)
    return model, load_tokenizer(source)


def _drop_model_type(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "model_type"}
