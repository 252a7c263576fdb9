"""A loaded model and how every layout builds one: on ``meta``, then each tensor assigned once."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedConfig, PreTrainedTokenizerBase

from lrs_core.models.config import VlmConfig
from lrs_core.models.loading.files import KeyMap, read_safetensors, safetensors_files
from lrs_core.models.runtime import GenerationSettings
from lrs_core.models.vlm import VisionLanguageModel, check_state_dict_keys, materialise

if TYPE_CHECKING:
    from lrs_core.models.families.base import EngineFamily


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use, with its tokenizer and provenance.

    Attributes:
        model: the :class:`VisionLanguageModel` in eval mode.
        tokenizer: its tokenizer (``PreTrainedTokenizerBase``).
        model_id: a name for records (the project format's ``model_id`` or the directory name).
        source_dir: the directory it was loaded from.
        generation: the checkpoint's ``generation_config.json`` settings (defaults when absent).
        family: the model behind the :class:`~lrs_core.models.families.base.EngineFamily`
            interface, which the engine, distillation and the CLI call instead of branching on
            the family. The loading entry point sets it
            (:func:`lrs_core.models.loading.auto.load_model`): ``LlavaFamily`` for the
            :class:`VisionLanguageModel` layouts (project, paper, llava-hf), the Qwen-VL family
            for Hugging Face Qwen-VL directories.
    """

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    source_dir: Path
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    family: EngineFamily = field(kw_only=True, repr=False, compare=False)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer EOS, then generation_config ``eos_token_id``."""
        return self.generation.stop_token_ids(self.tokenizer.eos_token_id)


def default_attn_implementation(device: torch.device) -> str:
    """Return ``"flash_attention_2"`` on CUDA when ``flash_attn`` is installed, else ``"sdpa"``."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def set_attn_implementation(model: VisionLanguageModel, name: str) -> None:
    """Switch the LLM (and the RFM, which shares its config) to attention ``name``."""
    model.llm.set_attn_implementation(name)
    model.rfm.config = model.llm.config
    model.vision_tower.set_attn_implementation("eager" if name == "eager" else "sdpa")


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
