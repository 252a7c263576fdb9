"""One entry point for every model directory: detect its layout, load it, or convert it.

Layouts (detected by :func:`detect_layout` from files and config fields, never from the directory
name as the reference did), one module each:

``project``
    ``lrs_model.json`` present (:mod:`lrs_core.models.loading.project`).
``paper``
    the paper's releases, the original LLaVA layout (:mod:`lrs_core.models.loading.paper`).
``llava_hf``
    llava-hf LLaVA-1.5 / LLaVA-NeXT (:mod:`lrs_core.models.loading.llava_hf`).
``qwen_vl``
    a Hugging Face Qwen2-VL / Qwen2.5-VL directory, loaded with the stock classes by
    :func:`lrs_core.models.families.engine_model.load_qwen_vl_engine` (not convertible).

Every :class:`LoadedModel` it returns carries its model family (``loaded.family``, an
:class:`~lrs_core.models.families.base.EngineFamily`): ``LlavaFamily`` for the first three layouts,
``QwenVlEngineFamily`` for ``qwen_vl``. Dispatching on the layout here is detection; past this point
callers use the family and never branch on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from transformers import GenerationConfig

from lrs_core.errors import WeightsError
from lrs_core.models.families.engine_model import load_qwen_vl_engine
from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.families.qwen_vl import is_qwen_vl_dir
from lrs_core.models.loading.files import (
    PROJECT_CONFIG_FILE,
    load_tokenizer,
    read_json,
    safetensors_files,
)
from lrs_core.models.loading.llava_hf import read_llava_hf_checkpoint
from lrs_core.models.loading.loaded import (
    LoadedModel,
    default_attn_implementation,
    set_attn_implementation,
)
from lrs_core.models.loading.paper import read_paper_checkpoint
from lrs_core.models.loading.project import configs_from_header, read_project, save_model
from lrs_core.models.loading.registry import resolve_model_dir
from lrs_core.models.runtime import DEVICE_AUTO, GenerationSettings, resolve_device, resolve_dtype
from lrs_core.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)

CheckpointLayout = Literal["project", "paper", "llava_hf", "qwen_vl"]


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
    if is_qwen_vl_dir(source):
        return "qwen_vl"
    raise WeightsError(
        f"{config_file}: model_type={config.get('model_type')!r} is not a supported layout "
        "(project format, the paper's LLaVA layout, llava-hf llava / llava_next, or Hugging "
        "Face Qwen2-VL / Qwen2.5-VL)"
    )


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = DEVICE_AUTO,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    vision_config_path: str | Path | None = None,
    llm_layer_list: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load a model directory in any supported layout (auto-detected).

    Args:
        path: a project-format directory, a paper release (LLaVA layout with ``llm_layer_list``),
            a llava-hf LLaVA-1.5 / LLaVA-NeXT directory or a Hugging Face Qwen-VL directory; or
            the name of a shipped model (``world``,
            :func:`~lrs_core.models.loading.registry.resolve_model_dir`).
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:N]`` or a device
            (:func:`lrs_core.models.runtime.resolve_device`).
        dtype: a dtype, ``fp16``/``bf16``/``fp32``, or ``auto``/None: the checkpoint's dtype on
            CUDA, float32 on CPU (:func:`lrs_core.models.runtime.resolve_dtype`).
        attn_implementation: the LLM's (and RFM's) attention; None =
            :func:`default_attn_implementation`.
        vision_config_path: paper layout only: a CLIP config (file or directory) when none is stored
            beside the checkpoint (see :mod:`lrs_core.models.loading.paper`).
        llm_layer_list: llava-hf and Qwen-VL layouts: the RFM layer list (default
            :func:`lrs_core.models.loading.llava_hf.default_llm_layer_list`, or the trained RFM's
            of a Qwen-VL directory).

    Raises:
        WeightsError: missing directory, unknown layout, pickle-only weights, or mismatched weights.
        ConfigError: an unknown or unavailable device, or an unknown dtype name.
    """
    source = resolve_model_dir(path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, source)
    attn = attn_implementation or default_attn_implementation(torch_device)
    layout = detect_layout(source)
    safetensors_files(source)  # fail fast (and refuse pickles) before building anything
    if layout == "qwen_vl":
        qwen_vl: LoadedModel = load_qwen_vl_engine(
            source,
            device=torch_device,
            dtype=torch_dtype,
            attn_implementation=attn,
            llm_layer_list=llm_layer_list,
        )
        log.info(
            "loaded %s (qwen_vl layout) on %s as %s with %s",
            source,
            torch_device,
            torch_dtype,
            attn,
        )
        return qwen_vl
    if layout == "project":
        model, tokenizer, model_id = read_project(source, device=torch_device, dtype=torch_dtype)
    elif layout == "paper":
        model, tokenizer = read_paper_checkpoint(
            source, device=torch_device, dtype=torch_dtype, vision_config_path=vision_config_path
        )
        model_id = source.name
    else:
        model, tokenizer = read_llava_hf_checkpoint(
            source, device=torch_device, dtype=torch_dtype, llm_layer_list=llm_layer_list
        )
        model_id = source.name
    set_attn_implementation(model, attn)
    generation = GenerationSettings.read(source)
    if generation.raw:
        model.llm.generation_config = GenerationConfig.from_dict(generation.raw)
    log.info(
        "loaded %s (%s layout) on %s as %s with %s", source, layout, torch_device, torch_dtype, attn
    )
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        model_id=model_id,
        source_dir=source,
        generation=generation,
        family=LlavaFamily(model, tokenizer),
    )


def load_model_shapes(source: Path) -> LoadedModel:
    """Build a project-format model on the ``meta`` device (shapes only) with its tokenizer.

    For planning (:meth:`lrs_core.focus.engine.FocusEngine.plan` needs the tokenizer and the
    dimensions); the model has no weights.

    Raises:
        WeightsError: no readable ``lrs_model.json`` or tokenizer.
    """
    header = read_json(source / PROJECT_CONFIG_FILE)
    config, vision_config, llm_config = configs_from_header(header, source=source)
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=False, device="meta"
    ).eval()
    tokenizer = load_tokenizer(source)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=str(header.get("model_id", source.name)),
        source_dir=source,
        generation=GenerationSettings.read(source),
        family=LlavaFamily(model, tokenizer),
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
    if detect_layout(source) == "qwen_vl":  # also: clear errors for a missing or foreign directory
        raise WeightsError(
            f"{source}: a Hugging Face Qwen-VL directory has no project-format conversion; "
            "use it as it is (lrs ask --model DIR)"
        )
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
