"""Qwen2-VL and Qwen2.5-VL as bases of the method, on the stock transformers classes.

Nothing is patched and no remote code runs: the model is a stock
``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` read from its Hugging
Face directory (``config.json``, ``model.safetensors`` or indexed shards, tokenizer files, chat
template, ``generation_config.json``, ``preprocessor_config.json``). This module adds what the
coarse-to-fine method needs around it (the :class:`~lrs_core.models.families.base.ModelFamily`
operations):

* **Image-only preprocessing.** The stock processors need a video processor (torchvision);
  :func:`patchify_tiles` computes the image processor's ``pixel_values`` itself, equal to
  ``Qwen2VLImageProcessor`` with ``do_resize=False``: ``(px / 255 - mean) / std``, 14 px patches,
  each repeated ``temporal_patch_size`` (2) times, ordered by 2 x 2 merge groups. Tiles are fed at
  their own size, which must be a multiple of ``patch_size * merge_size`` (28 px).
* **Tokens and their grid.** A tile of H x W px gives ``Gh x Gw = H/28 x W/28`` LLM tokens in
  row-major order; token (r, c) covers tile pixels ``[28 r, 28 r + 28) x [28 c, 28 c + 28)``.
* **M-RoPE position ids** (:func:`mrope_position_ids`): text runs count up by one; an image of grid
  (Gh, Gw) starting at position ``p`` gives its token (r, c) the ids ``(p, p + r, p + c)``, and the
  text after it continues at ``p + max(Gh, Gw)`` (the maximum image position + 1), exactly as the
  stock ``get_rope_index``. Pruned tokens keep their original ids: they are computed from the
  token's grid coordinates, not from its slot.
* **RFM layers** (:class:`MropeRfmLayers`): copies of the LLM's decoder layers run with M-RoPE.

Shapes: ``n`` tiles, ``B`` batch, ``L`` sequence length, ``D`` LLM hidden size, ``V`` vocabulary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models import hf_compat
from lrs_core.models.families.base import ROPE_RANK_MROPE, Decoder, TileTokens
from lrs_core.models.flops import ModelDims, qwen_vl_dims
from lrs_core.models.layout import SequenceLayout, TokenKind
from lrs_core.models.prompt import PromptIds
from lrs_core.models.runtime import resolve_device

log = logging.getLogger(__name__)

#: Family names, by the ``model_type`` of a Hugging Face ``config.json``.
FAMILY_OF_MODEL_TYPE: dict[str, str] = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}
_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2-vl": Qwen2VLForConditionalGeneration,
    "qwen2.5-vl": Qwen2_5_VLForConditionalGeneration,
}
#: The placeholder the chat template writes where the image's tokens go.
IMAGE_PAD_TOKEN = "<|image_pad|>"
#: RGB channels of the input.
RGB_CHANNELS = 3
#: Largest value of a uint8 pixel.
PIXEL_MAX = 255.0
#: Image normalisation of every released Qwen2-VL / Qwen2.5-VL (``OPENAI_CLIP_MEAN`` / ``STD``).
QWEN_VL_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
QWEN_VL_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"

#: The chat template of ``Qwen/Qwen2-VL-7B-Instruct`` (also Qwen2.5-VL's), used when a directory
#: ships none.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class PatchGeometry:
    """How tile pixels become vision-tower patches (the image processor's settings).

    Attributes:
        patch_size: patch side in pixels (14).
        temporal_patch_size: frames per patch (2; an image is repeated).
        merge_size: patches merged into one LLM token per side (2).
        image_mean: per-channel mean of pixels scaled to [0, 1].
        image_std: per-channel standard deviation.
    """

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float] = QWEN_VL_IMAGE_MEAN
    image_std: tuple[float, float, float] = QWEN_VL_IMAGE_STD

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PatchGeometry.{name}={getattr(self, name)} must be >= 1")
        if len(self.image_mean) != RGB_CHANNELS or len(self.image_std) != RGB_CHANNELS:
            raise ConfigError("PatchGeometry.image_mean and image_std need 3 values each")

    @property
    def token_px(self) -> int:
        """Tile pixels per LLM-token side (``patch_size * merge_size``, 28)."""
        return self.patch_size * self.merge_size

    def grid_hw(self, tile_hw_px: tuple[int, int]) -> tuple[int, int]:
        """Return (Gh, Gw) LLM tokens of a tile of ``tile_hw_px`` = (H, W) pixels.

        Raises:
            ConfigError: a side is not a positive multiple of :attr:`token_px`.
        """
        height, width = tile_hw_px
        step = self.token_px
        if height < step or width < step or height % step or width % step:
            raise ConfigError(
                f"a {height}x{width} px tile does not fit the Qwen-VL patch grid; tiles must be "
                f"positive multiples of {step} px per side (patch {self.patch_size} x merge "
                f"{self.merge_size}); choose a tile size such as {step * 12} px"
            )
        return height // step, width // step


def patchify_tiles(tiles: np.ndarray | torch.Tensor, geometry: PatchGeometry) -> torch.Tensor:
    """Return the vision tower's ``pixel_values`` of same-size tiles (no resizing).

    Equal to the stock ``Qwen2VLImageProcessor`` with ``do_resize=False`` on each tile, the tiles'
    rows concatenated: per tile, patches ordered by merge group ``(gh/m, gw/m, m, m)`` row-major,
    each patch flattened as ``(C, T, p, p)`` with the image repeated over the T temporal slots.

    Args:
        tiles: uint8 (n, H, W, 3) RGB tiles (numpy or a CPU/GPU tensor).
        geometry: the patch settings.

    Returns:
        float32 (n * H/p * W/p, 3 * T * p * p) on the tiles' device (CPU for numpy input).

    Raises:
        ConfigError: not uint8 (n, H, W, 3), or H/W not multiples of ``geometry.token_px``.
    """
    pixels = (
        torch.from_numpy(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    )
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[-1] != RGB_CHANNELS:
        raise ConfigError(
            f"tiles must be uint8 (n, H, W, 3); got {pixels.dtype} {tuple(pixels.shape)}"
        )
    n_tiles, height, width, _ = pixels.shape
    geometry.grid_hw((height, width))
    patch, merge, frames = geometry.patch_size, geometry.merge_size, geometry.temporal_patch_size
    mean = torch.tensor(geometry.image_mean, dtype=torch.float32, device=pixels.device)
    std = torch.tensor(geometry.image_std, dtype=torch.float32, device=pixels.device)
    scaled = pixels.to(torch.float32) * (1.0 / PIXEL_MAX)
    normalised = ((scaled - mean) / std).permute(0, 3, 1, 2)  # (n, C, H, W)
    grid_h, grid_w = height // patch, width // patch
    blocks = normalised.reshape(
        n_tiles, RGB_CHANNELS, grid_h // merge, merge, patch, grid_w // merge, merge, patch
    )
    # -> (n, gh/m, gw/m, m, m, C, p, p)
    blocks = blocks.permute(0, 2, 5, 3, 6, 1, 4, 7)
    blocks = blocks.unsqueeze(6).expand(*blocks.shape[:6], frames, patch, patch)
    return blocks.reshape(n_tiles * grid_h * grid_w, RGB_CHANNELS * frames * patch * patch)


def mrope_position_ids(layout: SequenceLayout) -> np.ndarray:
    """Return the M-RoPE position ids (temporal, height, width) of a layout's slots.

    The layout's images are its thumbnail (grid ``thumbnail_hw``) and its level (grid
    ``level_grid_hw``); text and separator slots are text. Walking the slots in order with a
    running position ``p``: a text slot gets ``(p, p, p)`` and advances ``p`` by one; the first
    slot of an image fixes its start ``s = p``, each of its tokens gets ``(s, s + r, s + c)`` from
    its grid coordinates (r, c), and the first slot after the image continues at
    ``s + max(Gh, Gw)``. For a full image this is the stock ``get_rope_index``; for a pruned one the
    kept tokens keep their ids and the text after continues from where the full image ends. An
    image whose tokens are all pruned is absent from the layout and advances nothing.

    Args:
        layout: the sequence layout (no newline slots: Qwen-VL has no image newline).

    Returns:
        int64 (3, L).

    Raises:
        ConfigError: the layout holds newline slots, or an image's slots are not contiguous.
    """
    kinds = layout.kind
    if np.any(kinds == TokenKind.NEWLINE.value):
        raise ConfigError(
            "the layout ends level rows with newline tokens, which Qwen-VL models do not have; "
            "build it with include_newline=False"
        )
    grids = {
        TokenKind.THUMBNAIL.value: layout.thumbnail_hw,
        TokenKind.LEVEL.value: layout.level_grid_hw,
    }
    out = np.empty((3, layout.length), dtype=np.int64)
    position = 0
    seen_images: set[int] = set()
    start = 0
    while start < layout.length:
        kind = int(kinds[start])
        stop = start + 1
        while stop < layout.length and int(kinds[stop]) == kind:
            stop += 1
        if kind in grids:
            grid = grids[kind]
            if grid is None or kind in seen_images:
                raise ConfigError(
                    f"the layout's {TokenKind(kind).name.lower()} slots are not one contiguous "
                    "image with a grid; build the layout with build_layout"
                )
            seen_images.add(kind)
            out[0, start:stop] = position
            out[1, start:stop] = position + layout.grid_r[start:stop]
            out[2, start:stop] = position + layout.grid_c[start:stop]
            position += max(grid)
        else:
            out[:, start:stop] = np.arange(position, position + stop - start)
            position += stop - start
        start = stop
    return out


def image_layout(
    prompt: PromptIds, grid_hw: tuple[int, int], keep: np.ndarray | None = None
) -> SequenceLayout:
    """Return the layout ``[before] [one image, row-major, kept tokens only] [after]``.

    The image is stored as the layout's level (DIP level 1, one tile), so its tokens carry their
    grid coordinates and :func:`mrope_position_ids` gives the stock positions.

    Args:
        prompt: the prompt's ids around the image.
        grid_hw: (Gh, Gw) tokens of the image.
        keep: bool (Gh, Gw) tokens to keep; None keeps all.
    """
    rows, cols = grid_hw
    keep = np.ones((rows, cols), dtype=bool) if keep is None else keep
    if keep.shape != (rows, cols) or keep.dtype != np.bool_:
        raise ConfigError(f"keep must be bool {(rows, cols)}; got {keep.dtype} {keep.shape}")
    kept_r, kept_c = np.nonzero(keep)
    n_before, n_after, n_image = len(prompt.before_image), len(prompt.after_image), kept_r.size
    length = n_before + n_image + n_after
    text = -np.ones(length, dtype=np.int64)
    kind = np.full(length, TokenKind.TEXT.value, dtype=np.int8)
    image = slice(n_before, n_before + n_image)
    kind[image] = TokenKind.LEVEL.value
    token_id = np.concatenate(
        [
            np.asarray(prompt.before_image, np.int64),
            -np.ones(n_image, np.int64),
            np.asarray(prompt.after_image, np.int64),
        ]
    )
    grid_r, grid_c, level, tile = text.copy(), text.copy(), text.copy(), text.copy()
    grid_r[image], grid_c[image], level[image], tile[image] = kept_r, kept_c, 1, 0
    return SequenceLayout(
        kind=kind,
        token_id=token_id,
        dip_level=level,
        tile_r=tile,
        tile_c=tile.copy(),
        grid_r=grid_r,
        grid_c=grid_c,
        thumbnail_hw=(0, 0),
        level_grid_hw=(rows, cols),
    )


class MropeRfmLayers(nn.Module):
    """RFM layers of a Qwen-VL model: copies of its LLM decoder layers, run with M-RoPE.

    The same attributes and ``forward`` as :class:`lrs_core.models.vlm.RfmLayers`, with position
    ids of shape (3, B, L). The mask is built from the 2-D attention mask alone (as the stock text
    model does), never from the position ids.

    Attributes:
        layers: ``nn.ModuleList`` of the LLM's decoder-layer class; layer i mirrors LLM layer
            ``source_layers[i]``.
        norm: a copy of the LLM's final RMSNorm.
        rotary_emb: the LLM's M-RoPE rotary embedding class (no learned parameters).
        config: the LLM's text config.
    """

    def __init__(self, decoder: Decoder, config: PreTrainedConfig, *, num_layers: int) -> None:
        super().__init__()
        untyped: Any = decoder
        layer_class = type(untyped.layers[0])
        self.layers = nn.ModuleList(layer_class(config, index) for index in range(num_layers))
        self.norm = type(untyped.norm)(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = type(untyped.rotary_emb)(config=config)
        self.config = config

    @classmethod
    def from_decoder(
        cls, decoder: Decoder, config: PreTrainedConfig, llm_layer_list: Sequence[int]
    ) -> MropeRfmLayers:
        """Return RFM layers initialised as copies of LLM layers ``[first - 1, *llm_layer_list]``.

        Raises:
            ConfigError: a layer index is outside the LLM.
        """
        if not llm_layer_list:
            raise ConfigError("llm_layer_list is empty; name at least one LLM layer, e.g. (8, 16)")
        sources = (llm_layer_list[0] - 1, *llm_layer_list)
        n_llm = len(decoder.layers)
        if min(sources) < 0 or max(sources) >= n_llm:
            raise ConfigError(
                f"llm_layer_list={list(llm_layer_list)} names layers outside the LLM's "
                f"0..{n_llm - 1}; pick layers in 1..{n_llm - 1}"
            )
        param = next(decoder.layers.parameters())
        with torch.device(param.device):
            rfm = cls(decoder, config, num_layers=len(sources))
        rfm.to(dtype=param.dtype)
        with torch.no_grad():
            for layer, source in zip(rfm.layers, sources, strict=True):
                layer.load_state_dict(decoder.layers[source].state_dict())
            rfm.norm.load_state_dict(decoder.norm.state_dict())
        return rfm.eval()

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the hidden state after the first ``num_layers`` layers (no final norm).

        Args:
            inputs_embeds: float (B, L, D).
            attention_mask: int/bool (B, L); 1 real, 0 padding; None = all real.
            num_layers: layers to run; None runs all.
            position_ids: int64 (3, B, L) M-RoPE ids (or (B, L), used for all three); None:
                ``0..L-1``.

        Returns:
            float (B, L, D).
        """
        batch, length, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).expand(batch, -1)
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(ROPE_RANK_MROPE, -1, -1)
        mask = hf_compat.causal_mask(
            self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        stop = len(self.layers) if num_layers is None else num_layers
        for layer in self.layers[:stop]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings)
        return hidden


class QwenVlModel:
    """A loaded Qwen2-VL / Qwen2.5-VL model, a :class:`~lrs_core.models.families.base.ModelFamily`.

    Attributes:
        family: ``"qwen2-vl"`` or ``"qwen2.5-vl"``.
        hf: the stock ``*ForConditionalGeneration`` module (eval mode).
        tokenizer: its tokenizer.
        chat_template: the Jinja chat template used to render prompts.
        geometry: the patch settings.
        rope_rank: 3 (M-RoPE).
        has_image_newline: False.
        token_px: tile pixels per token side (28).
    """

    rope_rank = ROPE_RANK_MROPE
    has_image_newline = False

    def __init__(
        self,
        hf: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        family: str,
        chat_template: str = QWEN_VL_CHAT_TEMPLATE,
        geometry: PatchGeometry | None = None,
    ) -> None:
        if family not in _MODEL_CLASSES:
            raise ConfigError(f"family {family!r} is not one of {sorted(_MODEL_CLASSES)}")
        if not isinstance(hf, _MODEL_CLASSES[family]):
            raise ConfigError(
                f"family {family!r} needs a {_MODEL_CLASSES[family].__name__}, "
                f"got {type(hf).__name__}"
            )
        vision: Any = hf.config.vision_config
        self.family = family
        self.hf: Any = hf.eval()  # type: ignore[no-untyped-call]  # untyped upstream
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.geometry = geometry or PatchGeometry(
            patch_size=int(vision.patch_size),
            temporal_patch_size=int(vision.temporal_patch_size),
            merge_size=int(vision.spatial_merge_size),
        )
        if (
            self.geometry.patch_size != vision.patch_size
            or self.geometry.merge_size != vision.spatial_merge_size
            or self.geometry.temporal_patch_size != vision.temporal_patch_size
        ):
            raise ConfigError(
                f"the preprocessor's patch settings {self.geometry} differ from the vision "
                f"config's patch_size={vision.patch_size}, "
                f"spatial_merge_size={vision.spatial_merge_size}, "
                f"temporal_patch_size={vision.temporal_patch_size}; fix preprocessor_config.json"
            )
        self.token_px = self.geometry.token_px
        image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD_TOKEN)
        if image_pad != hf.config.image_token_id:
            raise ConfigError(
                f"the tokenizer's {IMAGE_PAD_TOKEN} id {image_pad} differs from the config's "
                f"image_token_id={hf.config.image_token_id}; the tokenizer does not belong to "
                "this model"
            )
        self.image_token_id = int(image_pad)  # type: ignore[arg-type]  # one token, one id

    @property
    def text_config(self) -> PreTrainedConfig:
        """The LLM's config (``config.text_config``)."""
        config: PreTrainedConfig = self.hf.config.text_config
        return config

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        device: torch.device = self.hf.device
        return device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        dtype: torch.dtype = self.hf.dtype
        return dtype

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        return int(self.text_config.hidden_size)

    def tile_grid_hw(self, tile_hw_px: tuple[int, int]) -> tuple[int, int]:
        """Return (Gh, Gw) LLM tokens of a tile of (H, W) pixels (see :class:`PatchGeometry`)."""
        return self.geometry.grid_hw(tile_hw_px)

    def encode_tiles(self, tiles: np.ndarray, *, batch_size: int = 16) -> TileTokens:
        """Vision-encode same-size tiles into LLM tokens (tower + patch merger, stock).

        Args:
            tiles: uint8 (n, H, W, 3), H and W multiples of :attr:`token_px`.
            batch_size: tiles per vision-tower call (each tile attends only to itself).

        Returns:
            float (n, Gh * Gw, D) tokens on the model's device and dtype, row-major per tile.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        n_tiles = int(tiles.shape[0])
        grid = self.geometry.grid_hw((int(tiles.shape[1]), int(tiles.shape[2])))
        patches_per_tile = grid[0] * grid[1] * self.geometry.merge_size**2
        thw = torch.tensor(
            [[1, grid[0] * self.geometry.merge_size, grid[1] * self.geometry.merge_size]],
            device=self.device,
        )
        chunks = []
        with torch.no_grad():
            for start in range(0, n_tiles, batch_size):
                pixels = patchify_tiles(tiles[start : start + batch_size], self.geometry)
                count = pixels.shape[0] // patches_per_tile
                out = self.hf.model.get_image_features(
                    pixels.to(self.device, self.dtype), thw.expand(count, -1)
                )
                chunks.append(torch.stack(list(out.pooler_output)))
        tokens = (
            torch.cat(chunks)
            if chunks
            else torch.zeros(0, grid[0] * grid[1], self.hidden_size, device=self.device)
        )
        return TileTokens(tokens=tokens.to(self.dtype), grid_hw=grid, token_px=self.token_px)

    def render_prompt(self, question: str) -> str:
        """Return the chat-template text of one user turn: the image, then ``question``."""
        messages: Any = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )
        return str(text)

    def prompt_ids(self, question: str) -> PromptIds:
        """Return the prompt's ids split at the image: ``<|vision_start|>`` ends ``before``.

        The whole rendered prompt is tokenized once (as the stock processor does, whose expansion
        of ``<|image_pad|>`` into the image's tokens does not change the text around it).

        Raises:
            ConfigError: the template does not place exactly one image placeholder.
        """
        if IMAGE_PAD_TOKEN in question:
            raise ConfigError(f"the question must not contain {IMAGE_PAD_TOKEN!r}: {question!r}")
        ids = list(self.tokenizer(self.render_prompt(question)).input_ids)
        where = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(where) != 1:
            raise ConfigError(
                f"the chat template placed {len(where)} image placeholders, expected 1; "
                "check the model's chat template"
            )
        return PromptIds(before_image=ids[: where[0]], after_image=ids[where[0] + 1 :])

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return float (..., D) input embeddings of int64 ids."""
        table = self.hf.get_input_embeddings()
        embeddings: torch.Tensor = table(input_ids.to(self.device))
        return embeddings

    def position_ids(self, layout: SequenceLayout) -> torch.Tensor:
        """Return int64 (3, L) M-RoPE ids of a layout (:func:`mrope_position_ids`)."""
        return torch.from_numpy(mrope_position_ids(layout)).to(self.device)

    def assemble(self, layout: SequenceLayout, *, image_tokens: torch.Tensor) -> torch.Tensor:
        """Return float (L, D) embeddings of a layout with text and one image's tokens.

        Args:
            layout: a layout from :func:`image_layout` (the image is its level).
            image_tokens: float (Gh, Gw, D) the image's token grid.
        """
        out = torch.empty(layout.length, self.hidden_size, device=self.device, dtype=self.dtype)
        text = np.flatnonzero(
            np.isin(layout.kind, [TokenKind.TEXT.value, TokenKind.SEPARATOR.value])
        )
        if text.size:
            ids = torch.from_numpy(layout.token_id[text]).to(self.device)
            out[torch.from_numpy(text).to(self.device)] = self.embed_text(ids).to(self.dtype)
        image = layout.positions_of(TokenKind.LEVEL)
        if image.size:
            rows = torch.from_numpy(layout.grid_r[image]).to(self.device)
            cols = torch.from_numpy(layout.grid_c[image]).to(self.device)
            out[torch.from_numpy(image).to(self.device)] = image_tokens.to(self.device, self.dtype)[
                rows, cols
            ]
        return out

    def llm_logits(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Return float (B, L, V) logits of a no-cache LLM forward from embeddings.

        Args:
            inputs_embeds: float (B, L, D).
            attention_mask: int64 (B, L), 1 = real token (right padding 0).
            position_ids: int64 (3, B, L) M-RoPE ids.
        """
        if position_ids.ndim != 3 or position_ids.shape[0] != ROPE_RANK_MROPE:
            raise ConfigError(
                f"position_ids must be M-RoPE (3, B, L); got {tuple(position_ids.shape)}"
            )
        out = self.hf.model.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        logits: torch.Tensor = self.hf.lm_head(out.last_hidden_state)
        return logits

    def decoder(self) -> Decoder:
        """Return the stock text model (``layers``, ``norm``, ``rotary_emb``)."""
        decoder: Decoder = self.hf.model.language_model
        return decoder

    def rfm_from_llm(self, llm_layer_list: tuple[int, ...]) -> MropeRfmLayers:
        """Return RFM layers copied from LLM layers ``[first - 1, *llm_layer_list]``."""
        return MropeRfmLayers.from_decoder(self.decoder(), self.text_config, llm_layer_list)

    def flops_dims(self, *, rfm_layers: int, tile_px: int) -> ModelDims:
        """Return the analytic-FLOPs dimensions at square tiles of ``tile_px`` pixels."""
        self.geometry.grid_hw((tile_px, tile_px))
        return qwen_vl_dims(
            self.hf.config.vision_config,
            self.text_config,
            family=self.family,
            tile_px=tile_px,
            rfm_layers=rfm_layers,
        )


def is_qwen_vl_dir(path: str | Path) -> bool:
    """Return whether ``path`` holds a Hugging Face Qwen2-VL / Qwen2.5-VL ``config.json``."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return False
    return model_type in FAMILY_OF_MODEL_TYPE


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err}); download the file again") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object; download the file again")
    return data


def _chat_template(source: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """The directory's chat template: tokenizer config, ``chat_template.jinja`` or ``.json``."""
    stored = getattr(tokenizer, "chat_template", None)
    if isinstance(stored, str) and stored:
        return stored
    if (source / CHAT_TEMPLATE_JINJA).is_file():
        return (source / CHAT_TEMPLATE_JINJA).read_text()
    if (source / CHAT_TEMPLATE_JSON).is_file():
        template = _read_json(source / CHAT_TEMPLATE_JSON).get("chat_template")
        if isinstance(template, str) and template:
            return template
    log.warning("%s has no chat template; using the stock Qwen2-VL template", source)
    return QWEN_VL_CHAT_TEMPLATE


def _geometry(source: Path, vision: Any) -> PatchGeometry:
    """Patch settings from ``preprocessor_config.json`` (default: vision config, CLIP stats)."""
    settings = (
        _read_json(source / PREPROCESSOR_FILE) if (source / PREPROCESSOR_FILE).is_file() else {}
    )
    return PatchGeometry(
        patch_size=int(settings.get("patch_size", vision.patch_size)),
        temporal_patch_size=int(settings.get("temporal_patch_size", vision.temporal_patch_size)),
        merge_size=int(settings.get("merge_size", vision.spatial_merge_size)),
        image_mean=tuple(settings.get("image_mean", QWEN_VL_IMAGE_MEAN)),
        image_std=tuple(settings.get("image_std", QWEN_VL_IMAGE_STD)),
    )


def load_qwen_vl(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> QwenVlModel:
    """Load a Qwen2-VL / Qwen2.5-VL Hugging Face directory with the stock classes, offline.

    Reads ``config.json``, the safetensors weights (one file or indexed shards; pickles are
    refused), ``generation_config.json`` when present, the tokenizer, the chat template and the
    preprocessor's patch settings. No remote code runs and nothing is downloaded.

    Args:
        path: the model directory.
        device: where to put the model.
        dtype: parameter dtype.
        attn_implementation: ``"sdpa"``, ``"eager"`` or a flash-attention name (LLM and tower).

    Raises:
        WeightsError: not a Qwen-VL directory, no safetensors, or unreadable files.
    """
    from lrs_core.models.loading.files import safetensors_files

    source = Path(path)
    if not (source / CONFIG_FILE).is_file():
        raise WeightsError(f"{source}: no {CONFIG_FILE}; pass a Hugging Face model directory")
    model_type = _read_json(source / CONFIG_FILE).get("model_type")
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise WeightsError(
            f"{source / CONFIG_FILE}: model_type={model_type!r} is not one of "
            f"{sorted(FAMILY_OF_MODEL_TYPE)}; this loader reads Qwen2-VL and Qwen2.5-VL only"
        )
    family = FAMILY_OF_MODEL_TYPE[str(model_type)]
    safetensors_files(source)  # refuses pickle-only directories with a clear message
    model_class: Any = _MODEL_CLASSES[family]
    try:
        with hf_compat.progress_bars_disabled():
            hf = model_class.from_pretrained(
                str(source),
                local_files_only=True,
                use_safetensors=True,
                dtype=dtype,
                attn_implementation=attn_implementation,
            )
    except (OSError, ValueError) as err:
        raise WeightsError(
            f"{source}: the weights do not load ({err}); check the directory"
        ) from err
    hf = hf.to(resolve_device(device))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise WeightsError(f"{source}: no usable tokenizer files ({err})") from err
    return QwenVlModel(
        hf,
        tokenizer,
        family=family,
        chat_template=_chat_template(source, tokenizer),
        geometry=_geometry(source, hf.config.vision_config),
    )
