"""Save and load models: the project format, plus auto-detected foreign layouts.

Project format (a directory)::

    lrs_model.json            {"format": "lrs-vlm", "format_version": 1, "model_id": ...,
                               "vlm_config": VlmConfig, "vision_config": HF dict, "llm_config": HF
                               dict}
    model.safetensors         the VisionLanguageModel state dict (keys ``vision_tower.*``,
                              ``projector.{0,2}.*``, ``image_newline``, ``llm.*``, ``rfm.*``); a
                              tied ``llm.lm_head.weight`` is stored once
    preprocessor_config.json  CLIP-style image-processor settings (informational; VlmConfig rules)
    tokenizer files           whatever ``tokenizer.save_pretrained`` writes

:func:`load_model` also reads the paper's released checkpoints and llava-hf LLaVA-1.5 / LLaVA-NeXT
directories (see :mod:`lrs_core.models.convert`). Only safetensors are read; pickles are refused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model as save_safetensors_model
from transformers import AutoTokenizer, GenerationConfig, PreTrainedConfig, PreTrainedTokenizerBase

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.config import VlmConfig
from lrs_core.models.runtime import (
    DEVICE_AUTO,
    GENERATION_CONFIG_FILE,
    GenerationSettings,
    resolve_device,
    resolve_dtype,
)
from lrs_core.models.vlm import (
    VisionLanguageModel,
    check_state_dict_keys,
    llm_config_class,
    materialise,
    vision_config_class,
)

log = logging.getLogger(__name__)

PROJECT_CONFIG_FILE = "lrs_model.json"
PROJECT_FORMAT = "lrs-vlm"
PROJECT_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

#: Maps a checkpoint key to a project key, or None to skip the tensor.
KeyMap = Callable[[str], str | None]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use, with its tokenizer and provenance.

    Attributes:
        model: the :class:`VisionLanguageModel` in eval mode.
        tokenizer: its tokenizer (``PreTrainedTokenizerBase``).
        model_id: a name for records (the project format's ``model_id`` or the directory name).
        source_dir: the directory it was loaded from.
        generation: the checkpoint's ``generation_config.json`` settings (defaults when absent).
    """

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    source_dir: Path
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer EOS, then generation_config ``eos_token_id``."""
        return self.generation.stop_token_ids(self.tokenizer.eos_token_id)


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


def default_attn_implementation(device: torch.device) -> str:
    """Return ``"flash_attention_2"`` on CUDA when ``flash_attn`` is installed, else ``"sdpa"``."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


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
        path: a project-format directory, a paper release (LLaVA layout with ``llm_layer_list``) or
            a llava-hf LLaVA-1.5 / LLaVA-NeXT directory.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda[:N]`` or a device
            (:func:`lrs_core.models.runtime.resolve_device`).
        dtype: a dtype, ``fp16``/``bf16``/``fp32``, or ``auto``/None: the checkpoint's dtype on
            CUDA, float32 on CPU (:func:`lrs_core.models.runtime.resolve_dtype`).
        attn_implementation: the LLM's (and RFM's) attention; None =
            :func:`default_attn_implementation`.
        vision_config_path: paper layout only: a CLIP config (file or directory) when none is stored
            beside the checkpoint (see :mod:`lrs_core.models.convert`).
        llm_layer_list: llava-hf layout only: the RFM layer list (default
            :func:`lrs_core.models.convert.default_llm_layer_list`).

    Raises:
        WeightsError: missing directory, unknown layout, pickle-only weights, or mismatched weights.
        ConfigError: an unknown or unavailable device, or an unknown dtype name.
    """
    from lrs_core.models import convert

    source = Path(path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device, source)
    attn = attn_implementation or default_attn_implementation(torch_device)
    layout = convert.detect_layout(source)
    safetensors_files(source)  # fail fast (and refuse pickles) before building anything
    if layout == "project":
        model, tokenizer, model_id = _read_project(source, device=torch_device, dtype=torch_dtype)
    elif layout == "paper":
        model, tokenizer = convert.read_paper_checkpoint(
            source, device=torch_device, dtype=torch_dtype, vision_config_path=vision_config_path
        )
        model_id = source.name
    else:
        model, tokenizer = convert.read_llava_hf_checkpoint(
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
    )


def set_attn_implementation(model: VisionLanguageModel, name: str) -> None:
    """Switch the LLM (and the RFM, which shares its config) to attention ``name``."""
    model.llm.set_attn_implementation(name)
    model.rfm.config = model.llm.config
    model.vision_tower.set_attn_implementation("eager" if name == "eager" else "sdpa")


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


def _read_project(
    source: Path, *, device: torch.device, dtype: torch.dtype
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase, str]:
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


def build_and_load(
    config: VlmConfig,
    *,
    vision_config: PreTrainedConfig,
    llm_config: PreTrainedConfig,
    source: Path,
    key_map: KeyMap,
    device: torch.device,
    dtype: torch.dtype,
    optional_prefixes: tuple[str, ...] = (),
    extra_weights: dict[str, torch.Tensor] | None = None,
) -> VisionLanguageModel:
    """Build the model on ``meta`` and assign ``source``'s tensors in the target dtype and device.

    Each tensor is read from its safetensors shard, cast and moved once, and assigned to the model
    (``load_state_dict(assign=True)``), so the process holds about one copy of the weights in the
    target dtype (plus one tensor in flight), never a float32 model. Non-persistent buffers (RoPE
    ``inv_freq``, CLIP ``position_ids``) are recomputed on ``device`` (see
    :func:`lrs_core.models.vlm.materialise`).

    Args:
        config: the project config.
        vision_config: the vision tower's Hugging Face config.
        llm_config: the LLM's Hugging Face config.
        source: a directory with ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``.
        key_map: checkpoint key -> project key (None skips the tensor).
        device: target device.
        dtype: target dtype of the floating-point tensors.
        optional_prefixes: project keys allowed to be missing (they become zeros; the caller fills
            them, e.g. the RFM from layer copies).
        extra_weights: project-keyed tensors from elsewhere (a separate vision tower).

    Raises:
        WeightsError: the keys do not match the architecture.
    """
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=False
    )
    expected = set(model.state_dict())
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in _weight_tensors(source, key_map, extra_weights):
        if key in expected:
            kind = dtype if tensor.dtype.is_floating_point else tensor.dtype
            weights[key] = tensor.to(device=device, dtype=kind)
        else:
            weights[key] = tensor  # reported below; never assigned
    if llm_config.tie_word_embeddings:
        _alias_tied_embeddings(weights)
    check_state_dict_keys(
        model, set(weights), source=str(source), optional_prefixes=optional_prefixes
    )
    with torch.no_grad():
        materialise(model, weights, device=device, dtype=dtype)
    del weights
    if llm_config.tie_word_embeddings:
        model.llm.tie_weights()
    return model


_EMBED_KEY = "llm.model.embed_tokens.weight"
_LM_HEAD_KEY = "llm.lm_head.weight"


def _alias_tied_embeddings(part: dict[str, torch.Tensor]) -> None:
    """Fill the missing one of a tied embedding/LM-head pair (files store shared tensors once)."""
    if _LM_HEAD_KEY in part and _EMBED_KEY not in part:
        part[_EMBED_KEY] = part[_LM_HEAD_KEY]
    elif _EMBED_KEY in part and _LM_HEAD_KEY not in part:
        part[_LM_HEAD_KEY] = part[_EMBED_KEY]


def _weight_tensors(
    source: Path, key_map: KeyMap, extra_weights: dict[str, torch.Tensor] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (project key, tensor) of every mapped tensor of ``source``, one at a time."""
    for file in safetensors_files(source):
        yield from read_safetensors(file, key_map)
    if extra_weights:
        yield from extra_weights.items()


#: safetensors dtype names -> torch dtypes (the ones checkpoints of these models use).
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: Bytes of the little-endian header length that opens a safetensors file.
_SAFETENSORS_LENGTH_BYTES = 8


def read_safetensors(
    file: Path, key_map: KeyMap = lambda key: key
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (mapped key, CPU tensor) of a safetensors file, reading each tensor with ``readinto``.

    Unlike a memory map, plain reads leave no file pages mapped into the process, so reading a
    checkpoint adds one tensor at a time to the resident memory instead of the whole file.

    Raises:
        WeightsError: a truncated or malformed file, or a dtype this reader does not know.
    """
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(_SAFETENSORS_LENGTH_BYTES), "little")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(
                f"{file}: not a safetensors file ({err}); download it again"
            ) from err
        start = _SAFETENSORS_LENGTH_BYTES + length
        header.pop("__metadata__", None)
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        for key, entry in entries:
            target = key_map(key)
            if target is None:
                continue
            if entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise WeightsError(
                    f"{file}: tensor {key} has dtype {entry['dtype']}, which lrs does not read; "
                    "convert the checkpoint to F32/F16/BF16"
                )
            begin, end = entry["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(start + begin)
            if handle.readinto(raw.numpy().data) != end - begin:
                raise WeightsError(f"{file}: truncated at tensor {key}; download it again")
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            yield target, raw.view(dtype).reshape(entry["shape"])


def safetensors_files(source: Path) -> list[Path]:
    """Return the safetensors files of a checkpoint directory (one file, or every indexed shard).

    Raises:
        WeightsError: no safetensors (with a hint when only pickled weights exist).
    """
    index = source / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        files = sorted({source / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index}: shards {missing[:3]} are missing; download them again")
        return files
    single = source / WEIGHTS_FILE
    if single.is_file():
        return [single]
    files = sorted(source.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in source.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{source}: only pickled weights ({pickles[:3]}) were found; "
            "lrs loads safetensors only. "
            "Download the safetensors revision of the checkpoint, or convert it with a trusted tool"
        )
    raise WeightsError(f"{source}: no model.safetensors or {WEIGHTS_INDEX_FILE} found")


def read_json(path: Path) -> dict[str, Any]:
    """Return the JSON object in ``path``.

    Raises:
        WeightsError: the file is missing or not a JSON object.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def load_tokenizer(source: Path) -> PreTrainedTokenizerBase:
    """Return the tokenizer stored in ``source`` (offline; no remote code).

    Raises:
        WeightsError: no loadable tokenizer in the directory.
    """
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise WeightsError(f"{source}: no usable tokenizer files ({err})") from err
    return tokenizer
