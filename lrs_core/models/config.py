"""The configuration of a vision-language model as this project uses it.

:class:`VlmConfig` holds what the method needs beyond the Hugging Face sub-configs (which stay stock
``CLIPVisionConfig`` / ``SiglipVisionConfig`` and ``LlamaConfig`` / ``Qwen2Config`` and are stored
beside it in ``lrs_model.json``): the tile geometry, where vision features are taken, the RFM layer
list and the chat template. Spec references are to ``reference/algorithm.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lrs_core.errors import ConfigError

LlmFamily = Literal["llama", "qwen2"]
VisionFamily = Literal["clip", "siglip"]
ChatTemplate = Literal["vicuna_v1", "chatml"]

LLM_FAMILIES: tuple[str, ...] = ("llama", "qwen2")
VISION_FAMILIES: tuple[str, ...] = ("clip", "siglip")
CHAT_TEMPLATES: tuple[str, ...] = ("vicuna_v1", "chatml")

#: CLIP's normalisation constants (openai/clip-vit-large-patch14-336 preprocessor), RGB order.
CLIP_IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: SigLIP's normalisation constants (maps [0, 1] to [-1, 1]).
SIGLIP_IMAGE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SIGLIP_IMAGE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: Tile side of the reference's CLIP ViT-L/14-336 tower, pixels (spec §0).
TILE_SIZE_PX = 336
#: Patch side of the same tower, pixels (spec §0).
PATCH_SIZE_PX = 14
#: Side ratio of the 2x2 average pooling applied after the projector (24x24 -> 12x12, spec §2.1).
POOL_STRIDE = 2
#: LLaVA's default ``mm_vision_select_layer`` (spec §0).
VISION_SELECT_LAYER = -2
#: The separator token put between the thumbnail and the level tokens (spec §2.5).
SEPARATOR_TOKEN = ":"


@dataclass(frozen=True, kw_only=True)
class VlmConfig:
    """How a vision-language model turns tiles and a question into LLM input.

    Attributes:
        llm_family: decoder family of the LLM (``LlamaForCausalLM`` or ``Qwen2ForCausalLM``).
        vision_family: vision tower family (``CLIPVisionModel`` or ``SiglipVisionModel``).
        chat_template: prompt template (spec §2.6): ``vicuna_v1`` or ``chatml`` (Qwen).
        tile_size_px: side of one square tile fed to the vision tower, pixels.
        patch_size_px: side of one vision-tower patch, pixels.
        pool_stride: side ratio of the average pooling of tile features (after the projector).
        vision_select_layer: index into the tower's ``hidden_states`` (``mm_vision_select_layer``).
        drop_cls: drop the first (CLS) token of the tower output (CLIP: True; SigLIP has none).
        rfm_llm_layers: the reference's ``llm_layer_list``; the RFM holds copies of LLM layers
            ``[rfm_llm_layers[0] - 1, *rfm_llm_layers]`` (spec §3).
        image_mean: per-channel RGB mean applied to pixels scaled to [0, 1].
        image_std: per-channel RGB standard deviation, same convention.
        separator_token: the token whose embedding separates thumbnail and level (spec §2.5).
        max_context_tokens: the reference's ``tokenizer_model_max_length`` (context budget, tokens).
    """

    llm_family: LlmFamily
    vision_family: VisionFamily
    chat_template: ChatTemplate
    tile_size_px: int = TILE_SIZE_PX
    patch_size_px: int = PATCH_SIZE_PX
    pool_stride: int = POOL_STRIDE
    vision_select_layer: int = VISION_SELECT_LAYER
    drop_cls: bool = True
    rfm_llm_layers: tuple[int, ...]
    image_mean: tuple[float, float, float] = CLIP_IMAGE_MEAN
    image_std: tuple[float, float, float] = CLIP_IMAGE_STD
    separator_token: str = SEPARATOR_TOKEN
    max_context_tokens: int

    def __post_init__(self) -> None:
        _check_choice("llm_family", self.llm_family, LLM_FAMILIES)
        _check_choice("vision_family", self.vision_family, VISION_FAMILIES)
        _check_choice("chat_template", self.chat_template, CHAT_TEMPLATES)
        for name in ("tile_size_px", "patch_size_px", "pool_stride", "max_context_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"VlmConfig.{name}={value!r} must be a positive integer")
        if self.tile_size_px % self.patch_size_px:
            raise ConfigError(
                f"VlmConfig.tile_size_px={self.tile_size_px} is not a multiple of "
                f"patch_size_px={self.patch_size_px}"
            )
        if self.patches_per_side % self.pool_stride:
            raise ConfigError(
                f"VlmConfig.pool_stride={self.pool_stride} does not divide the "
                f"{self.patches_per_side}-patch side of a tile"
            )
        layers = tuple(self.rfm_llm_layers)
        if (
            not layers
            or layers[0] < 1
            or any(b <= a for a, b in zip(layers, layers[1:], strict=False))
        ):
            raise ConfigError(
                f"VlmConfig.rfm_llm_layers={layers!r} must be a non-empty, strictly increasing "
                "list of LLM layer indices starting at 1 or more "
                "(the RFM also copies layer first-1)"
            )
        object.__setattr__(self, "rfm_llm_layers", layers)
        if self.vision_family == "siglip" and self.drop_cls:
            raise ConfigError(
                "VlmConfig.drop_cls=True but a SigLIP tower has no CLS token; set False"
            )
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ConfigError(f"VlmConfig.{name}={value!r} must hold 3 values (R, G, B)")
            object.__setattr__(self, name, value)
        if any(v <= 0 for v in self.image_std):
            raise ConfigError(f"VlmConfig.image_std={self.image_std!r} must be positive")
        if not self.separator_token:
            raise ConfigError("VlmConfig.separator_token must not be empty")

    @property
    def patches_per_side(self) -> int:
        """Patches along one side of a tile (24 at 336 px / patch 14)."""
        return self.tile_size_px // self.patch_size_px

    @property
    def tokens_per_tile_unpooled(self) -> int:
        """Vision tokens of one tile before pooling, CLS excluded (576)."""
        return self.patches_per_side**2

    @property
    def pooled_per_side(self) -> int:
        """Tokens along one side of a tile after pooling (12)."""
        return self.patches_per_side // self.pool_stride

    @property
    def tokens_per_tile(self) -> int:
        """Vision tokens of one tile after pooling (144)."""
        return self.pooled_per_side**2

    @property
    def rfm_num_layers(self) -> int:
        """Decoder layers of the RFM: ``len(rfm_llm_layers) + 1``."""
        return len(self.rfm_llm_layers) + 1

    @property
    def rfm_source_layers(self) -> tuple[int, ...]:
        """LLM layer indices the RFM layers are initialised from: ``[first - 1, *list]``."""
        return (self.rfm_llm_layers[0] - 1, *self.rfm_llm_layers)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VlmConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"VlmConfig: unknown fields {unknown}; known fields are {sorted(names)}"
            )
        values = dict(data)
        for key in ("rfm_llm_layers", "image_mean", "image_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"VlmConfig.{name}={value!r} is not one of {list(allowed)}")


def default_chat_template(llm_family: str) -> ChatTemplate:
    """Return the reference's chat template of an LLM family (Qwen2: chatml, Llama: vicuna_v1)."""
    return "chatml" if llm_family == "qwen2" else "vicuna_v1"
