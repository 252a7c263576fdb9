"""The LLaVA-style models (LLaVA-1.5, LLaVA-NeXT, the paper's checkpoints) as a model family.

:class:`LlavaFamily` puts a loaded :class:`~lrs_core.models.vlm.VisionLanguageModel` behind the
:class:`~lrs_core.models.families.base.ModelFamily` interface, with the operations it already has:
336 px tiles, CLIP/SigLIP tower, ``mlp2x_gelu`` projector, 2 x 2 average pooling to 12 x 12 tokens
of 28 px, the reference's chat templates, plain RoPE and an image newline. It changes nothing of
the model: every operation is the code the engine ran before it called the family (stock
``generate()``, the RFM of :mod:`lrs_core.models.rfm_scoring`, the project format's saver), and
:func:`lrs_core.models.loading.auto.load_model` gives every project, paper and llava-hf model one.

Position ids (rank 1): :meth:`LlavaFamily.position_ids` numbers the slots present ``0 .. L-1``
(the reference's compact convention, spec §5.5); the ``original`` convention's gapped ids come from
the full sequence the engine tracks (:class:`lrs_core.focus.sequence.LevelSequence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lrs_core.errors import ConfigError
from lrs_core.models.families.base import ROPE_RANK_1D, Decoder, TileTokens
from lrs_core.models.flops import ModelDims, dims_from_configs
from lrs_core.models.generation import GenerationResult, generate_from_embeds
from lrs_core.models.layout import SequenceLayout
from lrs_core.models.loading.project import save_model
from lrs_core.models.prompt import PromptIds, tokenize_prompt
from lrs_core.models.rfm_scoring import rfm_token_scores
from lrs_core.models.vlm import RfmLayers, VisionLanguageModel


class LlavaFamily:
    """A loaded LLaVA-style model as a :class:`~lrs_core.models.families.base.ModelFamily`.

    Attributes:
        family: ``"llava-llama"`` or ``"llava-qwen2"`` (by the LLM family).
        model: the wrapped :class:`VisionLanguageModel`.
        tokenizer: its tokenizer.
        rope_rank: 1.
        has_image_newline: True.
        supports_parity: True (the reference's code is this family's).
        supports_batched_decode: True.
        renders_own_prompt: False (the project's chat templates render every turn).
        turn_template: ``config.chat_template``.
        token_px: tile pixels per pooled token side (28).
    """

    rope_rank = ROPE_RANK_1D
    has_image_newline = True
    supports_parity = True
    supports_batched_decode = True
    renders_own_prompt = False

    def __init__(self, model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model = model
        self.tokenizer = tokenizer
        config = self.model.config
        self.family = f"llava-{config.llm_family}"
        self.token_px = config.tile_size_px // config.pooled_per_side
        self.turn_template: str = config.chat_template

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.model.dtype

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        return self.model.hidden_size

    def tile_grid_hw(self, tile_hw_px: tuple[int, int]) -> tuple[int, int]:
        """Return (12, 12) for the model's square tile; other sizes are refused.

        Raises:
            ConfigError: a tile size other than ``config.tile_size_px`` square.
        """
        size = self.model.config.tile_size_px
        if tuple(tile_hw_px) != (size, size):
            raise ConfigError(
                f"this {self.family} model takes {size}x{size} px tiles only, not "
                f"{tile_hw_px[0]}x{tile_hw_px[1]}; read tiles at the model's tile size"
            )
        side = self.model.config.pooled_per_side
        return side, side

    def encode_tiles(self, tiles: np.ndarray, *, batch_size: int = 16) -> TileTokens:
        """Vision-encode tiles into pooled LLM tokens (tower, projector, 2 x 2 pooling).

        Args:
            tiles: uint8 (n, S, S, 3), ``S == config.tile_size_px``.
            batch_size: tiles per vision-tower call.
        """
        grid = self.tile_grid_hw((int(tiles.shape[1]), int(tiles.shape[2])))
        with torch.no_grad():
            tokens = self.model.encode_tiles(
                self.model.preprocess_tiles(tiles), pooled=True, batch_size=batch_size
            )
        return TileTokens(tokens=tokens, grid_hw=grid, token_px=self.token_px)

    def prompt_ids(self, question: str) -> PromptIds:
        """The reference's prompt ids around the image (spec §2.6)."""
        return tokenize_prompt(self.tokenizer, question, template=self.model.config.chat_template)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return float (..., D) input embeddings."""
        return self.model.embed_text(input_ids)

    def position_ids(self, layout: SequenceLayout) -> torch.Tensor:
        """Return int64 (L,) ids ``0 .. L-1`` of the slots present (compact, spec §5.5)."""
        return torch.arange(layout.length, device=self.device)

    def llm_logits(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Return float (B, L, V) logits of a no-cache forward; ``position_ids`` int64 (B, L)."""
        llm: Any = self.model.llm
        out = llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        logits: torch.Tensor = out.logits
        return logits

    def decoder(self) -> Decoder:
        """Return the stock decoder (``LlamaModel`` / ``Qwen2Model``)."""
        llm: Any = self.model.llm
        decoder: Decoder = llm.model
        return decoder

    def rfm_from_llm(self, llm_layer_list: tuple[int, ...]) -> nn.Module:
        """Return RFM layers copied from LLM layers ``[first - 1, *llm_layer_list]``."""
        return RfmLayers.from_llm(self.model.llm, llm_layer_list).to(self.device, self.dtype)

    def flops_dims(self, *, rfm_layers: int, tile_px: int) -> ModelDims:
        """Return the analytic-FLOPs dimensions (the model's own tile size only)."""
        self.tile_grid_hw((tile_px, tile_px))
        vision: Any = self.model.vision_tower.config
        return dims_from_configs(
            vision,
            self.model.llm.config,
            rfm_layers=rfm_layers,
            projector_in=int(vision.hidden_size),
        )

    # -- what the engine, distillation and the CLI call (EngineFamily) ---------------------------

    def sequence_position_ids(self, layout: SequenceLayout, positions: np.ndarray) -> torch.Tensor:
        """Return int64 (1, L): the engine's positions (compact or gapped) as they are."""
        del layout
        return torch.from_numpy(positions)[None].to(self.device)

    def batch_position_ids(
        self, layouts: Sequence[SequenceLayout], length: int
    ) -> torch.Tensor | None:
        """Return None: the LLM numbers every training row ``0 .. L-1`` itself."""
        del layouts, length
        return None

    def layer_drop_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Return None: layer-drop generation numbers positions by its schedule."""
        del position_ids
        return None

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
        """Stock ``generate()`` from the embeddings (:func:`generate_from_embeds`)."""
        return generate_from_embeds(
            self.model.llm,
            inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            do_sample=do_sample,
            generator=generator,
        )

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
        """RFM probabilities, float32 (B, K) (:func:`rfm_token_scores`, ids (B, L))."""
        return rfm_token_scores(
            self.model.rfm,
            inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            query_positions=query_positions,
            key_positions=key_positions,
            key_mask=key_mask,
            placeholder_logit_bias=placeholder_logit_bias,
        )

    def save(self, out_dir: str | Path, *, model_id: str) -> Path:
        """Save in the project format (:func:`lrs_core.models.loading.project.save_model`)."""
        return save_model(self.model, self.tokenizer, out_dir, model_id=model_id)

    def info(self) -> dict[str, Any]:
        """Config, sizes, RFM source layers, tokens per tile, vocabulary and parameter counts."""
        model = self.model
        vision: Any = model.vision_tower.config
        return {
            "config": model.config.to_dict(),
            "hidden_size": model.hidden_size,
            "llm_layers": model.llm.config.num_hidden_layers,
            "vision_layers": vision.num_hidden_layers,
            "rfm_source_layers": list(model.config.rfm_source_layers),
            "tokens_per_tile": model.config.tokens_per_tile,
            "vocab_size": len(self.tokenizer),
            "parameters": {
                name: sum(p.numel() for p in part.parameters())
                for name, part in (
                    ("vision_tower", model.vision_tower),
                    ("projector", model.projector),
                    ("llm", model.llm),
                    ("rfm", model.rfm),
                )
            },
        }
