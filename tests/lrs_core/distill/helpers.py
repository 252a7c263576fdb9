"""Small models and synthetic records for the distillation tests (built on the fly, CPU)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig

from lrs_core.distill.data import FeatureGridRecord, Turn
from lrs_core.models.config import VlmConfig
from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.loading.loaded import LoadedModel, set_attn_implementation
from lrs_core.models.tiny import TINY_MAX_CONTEXT_TOKENS, build_tokenizer
from lrs_core.models.vlm import VisionLanguageModel, copy_llm_into_rfm

#: LLM layers of the learning-test teacher and its non-contiguous RFM list (copies of 2, 3, 6).
TEACHER_LAYERS = 8
TEACHER_LAYER_LIST = (3, 6)
LLM_WIDTH = 64
#: Weight init std of the teacher LLM: larger than HF's 0.02 so that layers change the hidden
#: state (and peak the attention) enough for the truncated student to differ from the teacher.
INIT_STD = 0.2
QUESTIONS = (
    ("How many ships are in the harbour?", "two"),
    ("What is the color of the roof?", "red"),
    ("Is there a bridge over the river?", "yes"),
    ("Where is the airport runway?", "left"),
    ("Which building is the largest?", "the white one"),
    ("Are there any cars parked near the stadium?", "no"),
)


def build_teacher(
    *,
    seed: int = 0,
    layers: int = TEACHER_LAYERS,
    layer_list: tuple[int, ...] = TEACHER_LAYER_LIST,
    init_std: float = INIT_STD,
) -> LoadedModel:
    """A random Llama-family VLM with ``layers`` LLM layers; its RFM copies ``[first-1, *list]``."""
    tokenizer = build_tokenizer(family="llava")
    config = VlmConfig(
        llm_family="llama",
        vision_family="clip",
        chat_template="vicuna_v1",
        rfm_llm_layers=layer_list,
        max_context_tokens=TINY_MAX_CONTEXT_TOKENS,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=config.tile_size_px,
        patch_size=config.patch_size_px,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    llm_config = LlamaConfig(
        hidden_size=LLM_WIDTH,
        intermediate_size=2 * LLM_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_MAX_CONTEXT_TOKENS,
        tie_word_embeddings=False,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VisionLanguageModel.build(
            config, vision_config=vision_config, llm_config=llm_config, initialise=True
        )
        with torch.no_grad():
            model.image_newline.normal_(std=LLM_WIDTH**-0.5)
    copy_llm_into_rfm(model)
    set_attn_implementation(model, "sdpa")
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        model_id="tiny-llama-8",
        source_dir=Path("."),
        family=LlavaFamily(model, tokenizer),
    )


def feature_grid_records(
    n: int,
    *,
    seed: int,
    width: int = LLM_WIDTH,
    thumbnail_side: int = 4,
    level_hw: tuple[int, int] = (6, 6),
    vary_shape: bool = True,
    max_turns: int = 2,
) -> list[FeatureGridRecord]:
    """Random "scene" feature grids with one or more question/answer turns each."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for index in range(n):
        rows, cols = level_hw
        if vary_shape:
            rows += int(torch.randint(0, 3, (1,), generator=generator))
            cols += int(torch.randint(0, 3, (1,), generator=generator))
        n_turns = 1 + int(torch.randint(0, max_turns, (1,), generator=generator))
        picks = torch.randint(0, len(QUESTIONS), (n_turns,), generator=generator).tolist()
        records.append(
            FeatureGridRecord(
                sample_id=f"grid-{index}",
                thumbnail_feats=torch.randn(thumbnail_side**2, width, generator=generator),
                level_feats=torch.randn(rows, cols, width, generator=generator),
                turns=tuple(Turn(*QUESTIONS[p]) for p in picks),
            )
        )
    return records
