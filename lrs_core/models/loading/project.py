"""The project format: save a model, read it back.

Layout (a directory)::

    lrs_model.json            {"format": "lrs-vlm", "format_version": 1, "model_id": ...,
                               "vlm_config": VlmConfig, "vision_config": HF dict, "llm_config": HF
                               dict}
    model.safetensors         the VisionLanguageModel state dict (keys ``vision_tower.*``,
                              ``projector.{0,2}.*``, ``image_newline``, ``llm.*``, ``rfm.*``); a
                              tied ``llm.lm_head.weight`` is stored once
    preprocessor_config.json  CLIP-style image-processor settings (informational; VlmConfig rules)
    tokenizer files           whatever ``tokenizer.save_pretrained`` writes
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model as save_safetensors_model
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.config import VlmConfig
from lrs_core.models.loading.files import (
    PREPROCESSOR_FILE,
    PROJECT_CONFIG_FILE,
    WEIGHTS_FILE,
    load_tokenizer,
    read_json,
)
from lrs_core.models.loading.loaded import build_and_load
from lrs_core.models.runtime import GENERATION_CONFIG_FILE, GenerationSettings
from lrs_core.models.vlm import VisionLanguageModel, llm_config_class, vision_config_class

PROJECT_FORMAT = "lrs-vlm"
PROJECT_FORMAT_VERSION = 1


def save_model(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    generation: GenerationSettings | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` in the project format and return the directory.

    Args:
        model: the model to save (any device/dtype; tensors are written as they are).
        tokenizer: its tokenizer.
        out_dir: directory (created if needed; existing model files are replaced).
        model_id: name stored in ``lrs_model.json`` (default: the directory name).
        generation: generation settings to write as ``generation_config.json`` (none: no file).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "format": PROJECT_FORMAT,
        "format_version": PROJECT_FORMAT_VERSION,
        "model_id": model_id or out.name,
        "vlm_config": model.config.to_dict(),
        **model.sub_configs(),
    }
    # the stored dtype is the tensors' (``--dtype auto`` on CUDA reads it back)
    header["llm_config"]["dtype"] = str(model.dtype).removeprefix("torch.")
    save_safetensors_model(model, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "image_mean": list(model.config.image_mean),
        "image_std": list(model.config.image_std),
        "size": {"height": model.config.tile_size_px, "width": model.config.tile_size_px},
    }
    (out / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2) + "\n")
    if generation is not None and generation.raw:
        (out / GENERATION_CONFIG_FILE).write_text(json.dumps(generation.raw, indent=2) + "\n")
    # Written last, so a directory with lrs_model.json is a complete one.
    (out / PROJECT_CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
    return out


def configs_from_header(
    header: dict[str, Any], *, source: Path
) -> tuple[VlmConfig, PreTrainedConfig, PreTrainedConfig]:
    """The VLM, vision-tower and LLM configs of a project-format model header.

    Args:
        header: the parsed ``PROJECT_CONFIG_FILE`` of the model folder ``source``.
        source: the model folder (named in errors).

    Raises:
        WeightsError: a config is missing or invalid.
    """
    try:
        config = VlmConfig.from_dict(header["vlm_config"])
        vision_config = vision_config_class(config.vision_family).from_dict(header["vision_config"])
        llm_config = llm_config_class(config.llm_family).from_dict(header["llm_config"])
    except (KeyError, TypeError, ConfigError) as err:
        raise WeightsError(f"{source / PROJECT_CONFIG_FILE}: invalid model header ({err})") from err
    return config, vision_config, llm_config


def read_project(
    source: Path, *, device: torch.device, dtype: torch.dtype
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase, str]:
    """Read a project-format directory: the model, its tokenizer and its ``model_id``.

    Raises:
        WeightsError: another format or version, an invalid header, or mismatched weights.
    """
    header = read_json(source / PROJECT_CONFIG_FILE)
    if (
        header.get("format") != PROJECT_FORMAT
        or header.get("format_version") != PROJECT_FORMAT_VERSION
    ):
        raise WeightsError(
            f"{source / PROJECT_CONFIG_FILE}: format {header.get('format')!r} version "
            f"{header.get('format_version')!r} is not "
            f"{PROJECT_FORMAT!r} v{PROJECT_FORMAT_VERSION}; "
            "re-create it with this version of lrs ('lrs model convert')"
        )
    config, vision_config, llm_config = configs_from_header(header, source=source)
    model = build_and_load(
        config,
        vision_config=vision_config,
        llm_config=llm_config,
        source=source,
        key_map=lambda key: key,
        device=device,
        dtype=dtype,
    )
    return model, load_tokenizer(source), str(header.get("model_id", source.name))
