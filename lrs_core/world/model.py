"""The world model's architecture and tokenizer: a small LLaVA of the project's own format.

A stock ``CLIPVisionModel`` (336-px tiles, 28-px patches: 12 x 12 patches, pooled 2 x 2 to 6 x 6
tokens per tile, a 144-token thumbnail), the project's 2-layer GELU projector and a stock
``LlamaForCausalLM`` with a byte-level BPE tokenizer learned from the world's own vocabulary, so
every word of its questions and answers is one or two tokens. Saved with
:func:`lrs_core.models.loading.project.save_model`, it loads wherever a ``--model`` is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast

from lrs_core.evaluation.lrs_vqa import ANSWER_SUFFIX, COUNT_ANSWER_SUFFIX
from lrs_core.models.config import VlmConfig, default_chat_template
from lrs_core.models.prompt import VICUNA_V1_SYSTEM
from lrs_core.models.tiny import build_seeded_model, build_tokenizer
from lrs_core.models.vlm import VisionLanguageModel
from lrs_core.world.vocabulary import (
    BACKGROUND_NAMES,
    COLOR_NAMES,
    DIRECTIONS,
    KINDS,
    answer_words,
)

#: Tile side, pixels (the engine's DIP geometry).
WORLD_TILE_PX = 336
#: Default patch side of the world tower, pixels: 12 x 12 patches per tile.
WORLD_PATCH_PX = 28
#: LLM tokens per tile side after pooling, whatever the patch size (a 144-token thumbnail).
WORLD_TOKENS_PER_TILE_SIDE = 6
#: Context of the world LLM, tokens.
WORLD_CONTEXT_TOKENS = 4096
#: LLM layers the RFM mirrors (``llm_layer_list``): copies of layers 1, 2, 3.
WORLD_RFM_LAYERS = (2, 3)


@dataclass(frozen=True, kw_only=True)
class WorldModelSize:
    """Widths and depths of the world model (defaults: ~0.5 M tower, ~1 M LLM parameters).

    Attributes:
        patch_px: CLIP patch side, pixels (a divisor of 336 whose patch grid pools evenly to
            :data:`WORLD_TOKENS_PER_TILE_SIDE` tokens per side: 28 or 14).
        vision_width: CLIP hidden size C.
        vision_layers: CLIP encoder layers.
        vision_heads: CLIP attention heads.
        vision_mlp: CLIP MLP width.
        llm_width: Llama hidden size D.
        llm_layers: Llama decoder layers (>= 4: the RFM mirrors layers 1-3).
        llm_heads: Llama query heads.
        llm_kv_heads: Llama key/value heads.
        llm_mlp: Llama MLP width.
    """

    patch_px: int = WORLD_PATCH_PX
    vision_width: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp: int = 256
    llm_width: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    llm_kv_heads: int = 2
    llm_mlp: int = 384


def world_corpus() -> str:
    """Text the tokenizer learns its merges from: prompts, templates and every answer word."""
    parts = [VICUNA_V1_SYSTEM, "USER: ASSISTANT:", ANSWER_SUFFIX, COUNT_ANSWER_SUFFIX]
    for kind in KINDS:
        parts.append(f"How many {kind.plural} are there in the image?")
        for direction in DIRECTIONS:
            ref = f"the {direction}-most {kind.name}"
            parts += [
                f"What is the color of {ref}?",
                f"Is {ref} moving or stationary?",
                f"What is the background around {ref}?",
                f"Is the area around {ref} rural or urban?",
                f"Is {ref} to the left of {ref}? Is {ref} to the right of {ref}?",
                f"Is {ref} larger than {ref}?",
            ]
    for color in COLOR_NAMES:
        for direction in DIRECTIONS:
            parts += [
                f"What is the category of the {direction}-most {color} object?",
                f"What is the shape of the {direction}-most {color} object?",
            ]
    parts += [" ".join(answer_words()), " ".join(BACKGROUND_NAMES)]
    return " ".join(parts) + " "


def build_world_model(
    *, seed: int, size: WorldModelSize | None = None
) -> tuple[VisionLanguageModel, PreTrainedTokenizerFast]:
    """Return a randomly initialised world model (RFM = copies of LLM layers) and its tokenizer."""
    size = size or WorldModelSize()
    tokenizer = build_tokenizer(family="llava", corpus=world_corpus())
    config = VlmConfig(
        llm_family="llama",
        vision_family="clip",
        chat_template=default_chat_template("llama"),
        tile_size_px=WORLD_TILE_PX,
        patch_size_px=size.patch_px,
        pool_stride=WORLD_TILE_PX // size.patch_px // WORLD_TOKENS_PER_TILE_SIDE,
        vision_select_layer=-1,
        rfm_llm_layers=WORLD_RFM_LAYERS,
        max_context_tokens=WORLD_CONTEXT_TOKENS,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=size.vision_width,
        intermediate_size=size.vision_mlp,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=WORLD_TILE_PX,
        patch_size=size.patch_px,
        hidden_act="gelu",
        projection_dim=size.vision_width,
    )
    llm_config = LlamaConfig(
        hidden_size=size.llm_width,
        intermediate_size=size.llm_mlp,
        num_hidden_layers=size.llm_layers,
        num_attention_heads=size.llm_heads,
        num_key_value_heads=size.llm_kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=WORLD_CONTEXT_TOKENS,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = build_seeded_model(
        config, vision_config=vision_config, llm_config=llm_config, seed=seed
    )
    return model, tokenizer
