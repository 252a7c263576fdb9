"""The model-family interface: what the coarse-to-fine method needs from a vision-language model.

The engine, distillation, FLOPs and evaluation drive a VLM through a handful of operations. This
module names those operations once so that every base (LLaVA-1.5 / NeXT / the paper's checkpoints,
Qwen2-VL, Qwen2.5-VL) plugs in without branching on strings or types. Each operation maps to where
the LLaVA path does it:

============================  ==================================================================
:class:`ModelFamily` member   LLaVA path today
============================  ==================================================================
``encode_tiles``              ``VisionLanguageModel.preprocess_tiles`` + ``encode_tiles`` (vlm.py)
``token_px``                  ``VlmConfig.tile_size_px / tokens_per_side`` (28 px pooled tokens)
``prompt_ids``                :func:`lrs_core.models.prompt.tokenize_prompt`
``embed_text``                ``VisionLanguageModel.embed_text``
``position_ids``              ``0..L-1`` or gapped full-sequence positions (focus_sequence.py)
``llm_logits``                ``model.llm(inputs_embeds=..., position_ids=...)``
``decoder``                   ``model.llm.model`` (layers, norm, rotary_emb; layer_drop.py,
                              attention_rows.py)
``rfm_from_llm``              :meth:`lrs_core.models.vlm.RfmLayers.from_llm`
``flops_dims``                :func:`lrs_core.models.flops.dims_from_configs`
============================  ==================================================================

:class:`EngineFamily` adds what the engine, distillation and ``lrs model info`` call on the family a
:class:`~lrs_core.models.loading.loaded.LoadedModel` carries (``loaded.family``), so none of them
branches on the family: the position ids of a sequence and of a training batch, generation, RFM
scoring, saving, whether the ``parity`` preset and batched decoding apply, and the description.

Position ids have a *rank* R: 1 for plain RoPE (shape (B, L)) and 3 for Qwen's M-RoPE
(shape (3, B, L): temporal, height, width). Every entry point that takes position ids accepts the
family's rank; :func:`lrs_core.models.attention_rows.attention_rows_from_hidden` handles both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lrs_core.models.flops import ModelDims
from lrs_core.models.generation import GenerationResult
from lrs_core.models.layout import SequenceLayout
from lrs_core.models.prompt import PromptIds

#: Rank of plain 1-D RoPE position ids, shape (B, L).
ROPE_RANK_1D = 1
#: Rank of Qwen's multimodal RoPE position ids, shape (3, B, L): temporal, height, width.
ROPE_RANK_MROPE = 3


@dataclass(frozen=True)
class TileTokens:
    """LLM-space tokens of a batch of same-size tiles and the grid they sit on.

    Attributes:
        tokens: float (n, Gh * Gw, D); token ``r * Gw + c`` is grid cell (r, c), row-major.
        grid_hw: (Gh, Gw); tokens per tile along height and width.
        token_px: side in tile pixels of the square each token covers; token (r, c) covers pixel
            rows ``[r * token_px, (r + 1) * token_px)`` and the same for columns.
    """

    tokens: torch.Tensor
    grid_hw: tuple[int, int]
    token_px: int

    def token_box_px(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Return the tile-pixel box ``(top, left, bottom, right)`` of token (row, col)."""
        side = self.token_px
        return row * side, col * side, (row + 1) * side, (col + 1) * side


@runtime_checkable
class Decoder(Protocol):
    """The parts of an LLM decoder the method touches (a stock ``*TextModel`` / ``*Model``)."""

    layers: nn.ModuleList
    norm: nn.Module
    rotary_emb: nn.Module


@runtime_checkable
class ModelFamily(Protocol):
    """One loaded VLM of some family, seen through the operations the method needs.

    Attributes:
        family: the family's name (``"qwen2-vl"``, ``"qwen2.5-vl"``, ...), for records.
        rope_rank: :data:`ROPE_RANK_1D` or :data:`ROPE_RANK_MROPE`.
        has_image_newline: whether level rows end with a learned newline token (LLaVA yes).
        token_px: tile pixels per token side (28 for LLaVA's pooled 336 px tiles and for Qwen).
        tokenizer: the family's tokenizer.
    """

    family: str
    rope_rank: int
    has_image_newline: bool
    token_px: int
    tokenizer: PreTrainedTokenizerBase

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        ...

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        ...

    def tile_grid_hw(self, tile_hw_px: tuple[int, int]) -> tuple[int, int]:
        """Return (Gh, Gw) tokens of a tile of ``tile_hw_px`` pixels.

        Raises:
            ConfigError: the family cannot take a tile of that size.
        """
        ...

    def encode_tiles(self, tiles: np.ndarray) -> TileTokens:
        """Vision-encode same-size RGB tiles into LLM tokens.

        Args:
            tiles: uint8 (n, H, W, 3).
        """
        ...

    def prompt_ids(self, question: str) -> PromptIds:
        """Return the rendered prompt's ids split at the single image position."""
        ...

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return float (..., D) input embeddings of int64 ids."""
        ...

    def position_ids(self, layout: SequenceLayout) -> torch.Tensor:
        """Return int64 (L,) (rank 1) or (3, L) (rank 3) position ids of a layout's slots."""
        ...

    def llm_logits(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Return float (B, L, V) logits of a no-cache forward from embeddings.

        Args:
            inputs_embeds: float (B, L, D).
            attention_mask: int64 (B, L), 1 = real token.
            position_ids: int64 (B, L) or (3, B, L) by :attr:`rope_rank`.
        """
        ...

    def decoder(self) -> Decoder:
        """Return the LLM decoder (its ``layers``, final ``norm`` and ``rotary_emb``)."""
        ...

    def rfm_from_llm(self, llm_layer_list: tuple[int, ...]) -> nn.Module:
        """Return RFM layers initialised as copies of LLM layers ``[first - 1, *list]``."""
        ...

    def flops_dims(self, *, rfm_layers: int, tile_px: int) -> ModelDims:
        """Return the analytic-FLOPs dimensions of this model at square tiles of ``tile_px``."""
        ...


@runtime_checkable
class EngineFamily(ModelFamily, Protocol):
    """A :class:`ModelFamily` with what the engine, distillation and the CLI call on it.

    Every :class:`~lrs_core.models.loading.loaded.LoadedModel` carries one (``loaded.family``).

    Attributes:
        supports_parity: whether the ``parity`` preset (the released LLaVA code) applies.
        supports_batched_decode: whether several questions can share one decode batch.
        renders_own_prompt: True when :meth:`prompt_ids` renders turn 1 with the model's own chat
            template (conversations then take it); False when the project's templates
            (``config.chat_template``) render every turn.
        turn_template: the project chat template (``vicuna_v1``, ``chatml``) of the turns after
            the first and of the answers, in training conversations.
    """

    supports_parity: bool
    supports_batched_decode: bool
    renders_own_prompt: bool
    turn_template: str

    def sequence_position_ids(self, layout: SequenceLayout, positions: np.ndarray) -> torch.Tensor:
        """Return the LLM's position ids of one sequence.

        Args:
            layout: the sequence's slots.
            positions: int64 (L,) the engine's RoPE positions of the slots (compact or gapped,
                spec §5.5); rank-1 families use them as they are.

        Returns:
            int64 (1, L) (rank 1) or (3, 1, L) (rank 3) on the model's device.
        """
        ...

    def batch_position_ids(
        self, layouts: Sequence[SequenceLayout], length: int
    ) -> torch.Tensor | None:
        """Return the position ids of right-padded training rows, or None for ``0 .. L-1``.

        Args:
            layouts: one layout per row.
            length: L, the padded length.

        Returns:
            None (rank 1: the LLM numbers each row itself) or int64 (3, B, L) on the model's
            device, zero in the padding.
        """
        ...

    def layer_drop_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Return the ids layer-drop generation takes: None when it numbers positions itself."""
        ...

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        pad_token_id: int,
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> GenerationResult:
        """Generate from a prefill of embeddings (the family's decode loop).

        Args:
            inputs_embeds: float (B, L, D).
            attention_mask: int64 (B, L), 1 = real token.
            position_ids: int64 (B, L) or (3, B, L) by :attr:`rope_rank`.
            max_new_tokens: cap on generated tokens.
            eos_token_id: ids that end an answer.
            pad_token_id: id of the padding.
            do_sample: sample instead of greedy decoding.
            generator: the sampling seed's generator (None when greedy).

        Raises:
            ConfigError: the family cannot decode that way (e.g. sampling).
        """
        ...

    def score_rfm(
        self,
        inputs_embeds: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        key_mask: torch.Tensor | None,
        placeholder_logit_bias: float | None,
    ) -> torch.Tensor:
        """RFM probabilities of the query over the keys, float32 (B, K) (spec §3).

        Args:
            inputs_embeds: float (B, L, D).
            position_ids: int64 (B, L) or (3, B, L) by :attr:`rope_rank`.
            attention_mask: int64 (B, L); 0 = padding or masked placeholder.
            query_positions: int64 (B, 1) sequence indices of the query.
            key_positions: int64 (B, K) sequence indices of the scored keys.
            key_mask: bool (B, K) valid keys, or None (all valid; placeholders then take part
                through ``attention_mask`` with ``placeholder_logit_bias``).
            placeholder_logit_bias: the reference's placeholder quirk (``parity``), or None.

        Raises:
            ConfigError: shapes that do not fit, or a quirk the family does not have.
        """
        ...

    def save(self, out_dir: str | Path, *, model_id: str) -> Path:
        """Save the model (with its RFM) where the loading entry point reads it back."""
        ...

    def info(self) -> dict[str, Any]:
        """Describe the model for ``lrs model info``: config, sizes, RFM layers, parameters."""
        ...
