"""The vision-language model: vision tower, projector, image-newline vector, LLM and RFM layers.

Every part is a stock Hugging Face class (``CLIPVisionModel`` / ``SiglipVisionModel``,
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` and their decoder-layer classes); nothing is patched.
The tokenizer is not a module attribute: :class:`lrs_core.models.loading.loaded.LoadedModel`
carries it.

Shapes use the project glossary: ``n`` tiles, ``S`` tile side in pixels, ``P`` patches per tile
side, ``D`` the LLM hidden size, ``C`` the vision width, ``B`` batch, ``T`` tokens, ``L`` sequence
length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models import hf_compat
from lrs_core.models.config import VlmConfig
from lrs_core.models.projector import Mlp2xGelu

#: Largest value of a uint8 pixel, the scale that maps pixels to [0, 1].
PIXEL_MAX = 255.0

_LLM_CLASSES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
_VISION_CLASSES: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "clip": (CLIPVisionConfig, CLIPVisionModel),
    "siglip": (SiglipVisionConfig, SiglipVisionModel),
}


def llm_config_class(llm_family: str) -> type[PreTrainedConfig]:
    """Return the stock config class of an LLM family (``LlamaConfig`` or ``Qwen2Config``)."""
    return _LLM_CLASSES[llm_family][0]


def vision_config_class(vision_family: str) -> type[PreTrainedConfig]:
    """Return the stock config class of a vision family (CLIP or SigLIP vision config)."""
    return _VISION_CLASSES[vision_family][0]


class RfmLayers(nn.Module):
    """The Region Focus Module's parameters: LLM decoder layers, final norm, rotary embedding.

    The layers are instances of the LLM's own decoder-layer class built from the LLM config, so the
    RFM runs whatever attention implementation the config names (spec §3).

    Attributes:
        layers: ``nn.ModuleList`` of ``num_layers`` decoder layers (``LlamaDecoderLayer`` or
            ``Qwen2DecoderLayer``); layer ``i`` mirrors LLM layer ``source_layers[i]``.
        norm: the final RMSNorm (a copy of the LLM's final norm).
        rotary_emb: the LLM family's rotary embedding (no learned parameters).
    """

    def __init__(
        self, llm_config: PreTrainedConfig, *, num_layers: int, llm: PreTrainedModel
    ) -> None:
        super().__init__()
        inner = llm.model
        layer_class = type(inner.layers[0])
        self.layers = nn.ModuleList(
            layer_class(llm_config, layer_idx) for layer_idx in range(num_layers)
        )
        self.norm = type(inner.norm)(llm_config.hidden_size, eps=llm_config.rms_norm_eps)
        self.rotary_emb = type(inner.rotary_emb)(config=llm_config)
        self.config = llm_config

    @classmethod
    def from_llm(cls, llm: PreTrainedModel, llm_layer_list: Sequence[int]) -> RfmLayers:
        """Return RFM layers initialised as copies of LLM layers ``[first - 1, *llm_layer_list]``.

        Args:
            llm: a ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``.
            llm_layer_list: the reference's ``llm_layer_list`` (strictly increasing, first >= 1).

        Raises:
            ConfigError: a layer index is outside the LLM.
        """
        sources = (llm_layer_list[0] - 1, *llm_layer_list)
        n_llm = len(llm.model.layers)
        if min(sources) < 0 or max(sources) >= n_llm:
            raise ConfigError(
                f"llm_layer_list={list(llm_layer_list)} names layers outside "
                f"the LLM's 0..{n_llm - 1}"
            )
        rfm = cls(llm.config, num_layers=len(sources), llm=llm)
        rfm.copy_from_llm(llm, sources)
        return rfm

    def copy_from_llm(self, llm: PreTrainedModel, source_layers: Sequence[int]) -> None:
        """Copy LLM layer ``source_layers[i]`` into RFM layer ``i``, and the LLM's final norm."""
        with torch.no_grad():
            for layer, source in zip(self.layers, source_layers, strict=True):
                layer.load_state_dict(llm.model.layers[source].state_dict())
            self.norm.load_state_dict(llm.model.norm.state_dict())

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the hidden state after the first ``num_layers`` RFM layers (no final norm).

        Args:
            inputs_embeds: float (B, L, D); the same embeddings the LLM gets.
            attention_mask: int/bool (B, L); 1 for real tokens, 0 for (right) padding; None = all
                real.
            num_layers: how many layers to run; None runs all of them.
            position_ids: int64 (B, L) RoPE positions; None: ``0 .. L-1`` for every row.

        Returns:
            float (B, L, D), same dtype as ``inputs_embeds``.
        """
        if position_ids is None:
            batch, length, _ = inputs_embeds.shape
            position_ids = torch.arange(length, device=inputs_embeds.device).expand(batch, -1)
        mask = hf_compat.causal_mask(
            self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=None,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        stop = len(self.layers) if num_layers is None else num_layers
        for layer in self.layers[:stop]:
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
        return hidden


class VisionLanguageModel(nn.Module):
    """A LLaVA-style VLM split into the parts the coarse-to-fine method drives one by one.

    Attributes:
        config: the :class:`VlmConfig`.
        vision_tower: ``CLIPVisionModel`` or ``SiglipVisionModel``.
        projector: :class:`Mlp2xGelu` (C -> D).
        image_newline: learned (D,) vector ending each token row of a level (spec §2.4).
        llm: ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``.
        rfm: :class:`RfmLayers`.
    """

    def __init__(
        self,
        config: VlmConfig,
        *,
        vision_config: PreTrainedConfig,
        llm_config: PreTrainedConfig,
    ) -> None:
        super().__init__()
        _, vision_class = _VISION_CLASSES[config.vision_family]
        _, llm_class = _LLM_CLASSES[config.llm_family]
        _check_sub_configs(config, vision_config, llm_config)
        self.config = config
        self.vision_tower = vision_class(vision_config)
        self.projector = Mlp2xGelu(vision_config.hidden_size, llm_config.hidden_size)
        self.image_newline = nn.Parameter(torch.zeros(llm_config.hidden_size))
        self.llm = llm_class(llm_config)
        self.rfm = RfmLayers(self.llm.config, num_layers=config.rfm_num_layers, llm=self.llm)

    @classmethod
    def build(
        cls,
        config: VlmConfig,
        *,
        vision_config: PreTrainedConfig,
        llm_config: PreTrainedConfig,
        initialise: bool,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> VisionLanguageModel:
        """Construct the model, randomly initialised on ``device``/``dtype`` or empty on ``meta``.

        ``initialise=False`` builds every parameter and buffer on the ``meta`` device (no memory,
        no initialisation, whatever ``device`` and ``dtype`` say): the caller fills it with
        :func:`materialise` (see :func:`lrs_core.models.loading.loaded.build_and_load`, which
        assigns the checkpoint's tensors straight in their target dtype and device). Nothing
        process-wide is patched, so builds on several threads are safe.
        """
        if not initialise:
            with torch.device("meta"):
                return cls(config, vision_config=vision_config, llm_config=llm_config)
        with torch.device(device):
            model = cls(config, vision_config=vision_config, llm_config=llm_config)
        return model.to(dtype=dtype)

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        return int(self.llm.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self.image_newline.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return self.image_newline.dtype

    def preprocess_tiles(self, tiles: np.ndarray) -> torch.Tensor:
        """Return normalised pixels for the vision tower.

        ``config.image_mean`` / ``image_std`` are the one source of the normalisation (the
        tile readers' padding colour derives from the same mean).

        Args:
            tiles: uint8 or float32 (n, S, S, 3) RGB tiles in 0..255, ``S ==
                config.tile_size_px``. float32 NaN marks padding, which becomes exactly 0 after
                normalisation (the reference's zero padding, spec §1.1;
                ``lrs_core.focus.tiles.read_tiles(dtype="float32")``).

        Returns:
            float (n, 3, S, S) on the model's device and dtype: ``(pixel / 255 - mean) / std``.

        Raises:
            ValueError: wrong dtype or shape.
        """
        size = self.config.tile_size_px
        if (
            tiles.dtype not in (np.uint8, np.float32)
            or tiles.ndim != 4
            or tiles.shape[1:] != (size, size, 3)
        ):
            raise ValueError(
                f"tiles must be uint8 or float32 (n, {size}, {size}, 3); got {tiles.dtype} "
                f"{tiles.shape}"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).to(torch.float32) / PIXEL_MAX
        mean = torch.tensor(self.config.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, device=self.device).view(1, 3, 1, 1)
        normalised = (pixels - mean) / std
        if tiles.dtype == np.float32:
            normalised = torch.nan_to_num(normalised, nan=0.0)
        return normalised.to(self.dtype)

    def encode_tiles(
        self, pixels: torch.Tensor, *, pooled: bool = True, batch_size: int = 16
    ) -> torch.Tensor:
        """Return projected vision tokens of each tile.

        Features are ``hidden_states[config.vision_select_layer]`` of the tower with the CLS token
        dropped (``config.drop_cls``), mapped by the projector, then (``pooled``) 2x2 average-pooled
        on the (P, P) patch grid in row-major order (spec §2.1: pooling after the projector).

        Args:
            pixels: float (n, 3, S, S) from :meth:`preprocess_tiles`.
            pooled: pool to ``config.tokens_per_tile`` tokens (144) or keep the full grid (576).
            batch_size: tiles per vision-tower call.

        Returns:
            float (n, 144, D) if ``pooled`` else (n, 576, D), on the model's device and dtype,
            tokens in row-major order of the (pooled) patch grid.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        side = self.config.patches_per_side
        outputs = []
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start : start + batch_size].to(device=self.device, dtype=self.dtype)
            tower_out = self.vision_tower(pixel_values=chunk, output_hidden_states=True)
            features = tower_out.hidden_states[self.config.vision_select_layer]
            if self.config.drop_cls:
                features = features[:, 1:]
            if features.shape[1] != side * side:
                raise ConfigError(
                    f"vision tower gave {features.shape[1]} patch tokens per tile, "
                    "the config expects "
                    f"{side}x{side}; check tile_size_px/patch_size_px/drop_cls against the tower"
                )
            tokens = self.projector(features)
            if pooled:
                tokens = self._pool(tokens)
            outputs.append(tokens)
        if not outputs:
            per_tile = (
                self.config.tokens_per_tile if pooled else self.config.tokens_per_tile_unpooled
            )
            return torch.zeros(0, per_tile, self.hidden_size, device=self.device, dtype=self.dtype)
        return torch.cat(outputs)

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, P*P, D) -> (n, (P/s)*(P/s), D) by s x s average pooling on the patch grid."""
        n_tiles, _, width = tokens.shape
        side = self.config.patches_per_side
        grid = tokens.view(n_tiles, side, side, width).permute(0, 3, 1, 2)
        stride = self.config.pool_stride
        pooled = nn.functional.avg_pool2d(grid, kernel_size=stride, stride=stride)
        return pooled.flatten(2).transpose(1, 2)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the LLM's input embeddings of token ids.

        Args:
            input_ids: int64 (B, T) (or any shape) token ids.

        Returns:
            float (B, T, D) on the model's device and dtype.
        """
        embeddings: torch.Tensor = self.llm.get_input_embeddings()(input_ids.to(self.device))
        return embeddings

    def sub_configs(self) -> dict[str, Any]:
        """Return the Hugging Face sub-configs as JSON-ready dicts (vision_config, llm_config)."""
        return {
            "vision_config": self.vision_tower.config.to_dict(),
            "llm_config": self.llm.config.to_dict(),
        }


def _check_sub_configs(
    config: VlmConfig, vision_config: PreTrainedConfig, llm_config: PreTrainedConfig
) -> None:
    expected_vision, _ = _VISION_CLASSES[config.vision_family]
    expected_llm, _ = _LLM_CLASSES[config.llm_family]
    if not isinstance(vision_config, expected_vision):
        raise ConfigError(
            f"vision_family={config.vision_family!r} needs a {expected_vision.__name__}, "
            f"got {type(vision_config).__name__}"
        )
    if not isinstance(llm_config, expected_llm):
        raise ConfigError(
            f"llm_family={config.llm_family!r} needs a {expected_llm.__name__}, "
            f"got {type(llm_config).__name__}"
        )
    if (
        vision_config.image_size != config.tile_size_px
        or vision_config.patch_size != config.patch_size_px
    ):
        raise ConfigError(
            f"vision tower geometry image_size={vision_config.image_size}, "
            f"patch_size={vision_config.patch_size} differs from the VlmConfig's "
            f"tile_size_px={config.tile_size_px}, patch_size_px={config.patch_size_px}"
        )
    n_tower = vision_config.num_hidden_layers
    if not -n_tower - 1 <= config.vision_select_layer <= n_tower:
        raise ConfigError(
            f"vision_select_layer={config.vision_select_layer} is outside the tower's "
            f"hidden_states (0..{n_tower})"
        )
    n_llm = llm_config.num_hidden_layers
    if config.rfm_llm_layers[-1] >= n_llm:
        raise ConfigError(
            f"rfm_llm_layers={list(config.rfm_llm_layers)} names layers beyond the LLM's "
            f"{n_llm} layers (0..{n_llm - 1})"
        )


def copy_llm_into_rfm(model: VisionLanguageModel) -> None:
    """Initialise ``model.rfm`` from the LLM layers ``config.rfm_source_layers`` (spec §3)."""
    model.rfm.copy_from_llm(model.llm, model.config.rfm_source_layers)


def check_state_dict_keys(
    model: VisionLanguageModel,
    keys: set[str],
    *,
    source: str,
    optional_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise :class:`WeightsError` when ``keys`` do not match the model's state dict.

    Args:
        model: the module about to receive the weights.
        keys: the (already renamed) keys of the checkpoint.
        source: the checkpoint path, for the message.
        optional_prefixes: model keys that may be absent (they keep their initial values).
    """
    expected = set(model.state_dict())
    if model.llm.config.tie_word_embeddings:
        expected.discard("llm.lm_head.weight")
        keys = keys - {"llm.lm_head.weight"}
    missing = sorted(k for k in expected - keys if not k.startswith(optional_prefixes))
    unexpected = sorted(keys - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{source}: the weights do not match the architecture in its config "
            f"(missing {len(missing)}: {missing[:5]}, "
            f"unexpected {len(unexpected)}: {unexpected[:5]}); "
            "check that the config belongs to these weights"
        )


def materialise(
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Give a ``meta`` model real tensors: ``weights`` by assignment, then its own buffers.

    ``weights`` are assigned as they are (``load_state_dict(assign=True)``: no copy, so they must
    already be on ``device`` in their final dtype). Then every tensor still on ``meta`` is made:

    * non-persistent buffers (RoPE ``inv_freq``, CLIP ``position_ids``, anything a module computes
      in its constructor and never saves) are recomputed by running the owning module's
      constructor again on ``device`` (from its ``config``) and taking its buffers; they keep the
      dtype the constructor gives them (float32 ``inv_freq``, as ``from_pretrained`` leaves it);
    * parameters the weights did not cover (e.g. RFM layers a caller copies in next) become zeros
      of ``dtype`` on ``device``.

    Args:
        model: a model built on ``meta`` (e.g. ``VisionLanguageModel.build(initialise=False)``).
        weights: project-keyed tensors, possibly a subset of the state dict.
        device: where the remaining tensors go.
        dtype: floating dtype of the uncovered parameters.

    Raises:
        WeightsError: a module with a missing non-persistent buffer cannot be rebuilt.
    """
    model.load_state_dict(weights, strict=False, assign=True)
    for module_name, module in model.named_modules():
        missing = [
            name
            for name, buffer in module.named_buffers(recurse=False)
            if buffer is not None and buffer.is_meta
        ]
        if missing:
            _rebuild_buffers(module, module_name, missing, device)
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                kind = dtype if param.dtype.is_floating_point else param.dtype
                value = torch.zeros(param.shape, dtype=kind, device=device)
                setattr(module, name, nn.Parameter(value, requires_grad=param.requires_grad))


def _rebuild_buffers(
    module: nn.Module, module_name: str, names: list[str], device: torch.device
) -> None:
    """Recompute ``module``'s buffers ``names`` by constructing a fresh copy on ``device``."""
    config = getattr(module, "config", None)
    if config is None:
        raise WeightsError(
            f"{module_name or 'model'} ({type(module).__name__}): buffers {names} are neither in "
            "the weights nor rebuildable (the module keeps no config); add them to the checkpoint"
        )
    with torch.device(device):
        fresh = type(module)(config)
    for name in names:
        persistent = name not in module._non_persistent_buffers_set
        module.register_buffer(name, getattr(fresh, name), persistent=persistent)
