"""Tiny random models of the real architectures, and an offline tokenizer, for tests and the demo.

``init_tiny(dir)`` builds a complete :class:`VisionLanguageModel` from stock configs with random
weights and saves it in the project format. Geometry is the real one: 336-px tiles, 14-px patches,
a 24 x 24 patch grid pooled to 12 x 12 (narrow widths keep it fast).

Sizes:
    * ``tiny``: vision tower 2 layers x 32 wide; LLM 4 layers x 64 wide (4 query / 2 KV heads);
      RFM list ``(2, 3)`` (copies of LLM layers 1, 2, 3). About 0.3 M parameters; loads in < 1 s.
    * ``benchmark``: a ViT-B/14 tower at 336 px (12 x 768) and a 12-layer, 768-wide LLM
      (12 query / 4 KV heads, MLP 3072), RFM list ``(4, 8)``: about 220 M parameters.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on a small built-in corpus, wrapped in
``PreTrainedTokenizerFast`` with named special tokens. The llava family behaves like Llama (BOS
added to every encoding, ``</s>`` as EOS); the qwen2 family like Qwen2 (no BOS, ``<|im_end|>`` EOS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from lrs_core.models.config import LlmFamily, VlmConfig, default_chat_template
from lrs_core.models.vlm import VisionLanguageModel

TinyFamily = Literal["llava", "qwen2"]
TinySize = Literal["tiny", "benchmark"]

#: Merges learned beyond the 256 byte symbols; small enough to train in well under a second.
TOKENIZER_VOCAB_SIZE = 1024
#: Context length of the tiny models, tokens.
TINY_MAX_CONTEXT_TOKENS = 4096

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
PAD_TOKEN = "<pad>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    PAD_TOKEN,
    IM_START_TOKEN,
    IM_END_TOKEN,
    ENDOFTEXT_TOKEN,
    IMAGE_TOKEN,
)

_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT: "
    "system user assistant You are a helpful assistant. "
    "What is the color of the roof? How many ships are in the harbour? Is there a bridge over the "
    "river? Where is the airport runway? Answer the question using a single word or phrase. "
    "Which building is the largest? Are there any cars parked near the stadium? "
    "yes no one two three four five red green blue white black gray small large "
    "left right top bottom center north south "
    "east west road field forest water lake sea port tank farmland residential industrial vehicle "
    "plane storage roundabout swimming pool tennis court baseball diamond ground track. 0123456789 "
)

_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "llm": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    },
    "benchmark": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        "llm": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
        },
    },
}
_RFM_LAYERS: dict[str, tuple[int, ...]] = {"tiny": (2, 3), "benchmark": (4, 8)}


def build_tokenizer(
    *, family: TinyFamily = "llava", corpus: str | None = None
) -> PreTrainedTokenizerFast:
    """Return a small byte-level BPE tokenizer trained offline on a built-in corpus.

    Args:
        family: ``"llava"`` (Llama-like: BOS prepended, ``</s>`` EOS) or ``"qwen2"`` (no BOS,
            ``<|im_end|>`` EOS, ``<|endoftext|>`` padding).
        corpus: text to learn the merges from; None = the built-in corpus (a trained model
            passes its own vocabulary's text, so its words become single tokens).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus or _CORPUS] * 4, trainer=trainer)
    if family == "llava":
        bos_id = tokenizer.token_to_id(BOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A",
            pair=f"{BOS_TOKEN} $A $B",
            special_tokens=[(BOS_TOKEN, bos_id)],
        )
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped upstream
            tokenizer_object=tokenizer,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=UNK_TOKEN,
            pad_token=PAD_TOKEN,
            additional_special_tokens=[IMAGE_TOKEN],
            model_max_length=TINY_MAX_CONTEXT_TOKENS,
        )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # untyped upstream
        tokenizer_object=tokenizer,
        eos_token=IM_END_TOKEN,
        pad_token=ENDOFTEXT_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN],
        model_max_length=TINY_MAX_CONTEXT_TOKENS,
    )


def build_tiny(
    *, family: TinyFamily = "llava", seed: int = 0, size: TinySize = "tiny"
) -> tuple[VisionLanguageModel, PreTrainedTokenizerFast]:
    """Return a random tiny model (RFM initialised from LLM layer copies) and its tokenizer."""
    if family not in ("llava", "qwen2"):
        raise ValueError(f"family={family!r} must be 'llava' or 'qwen2'")
    if size not in _SIZES:
        raise ValueError(f"size={size!r} must be one of {sorted(_SIZES)}")
    tokenizer = build_tokenizer(family=family)
    llm_family: LlmFamily = "llama" if family == "llava" else "qwen2"
    config = VlmConfig(
        llm_family=llm_family,
        vision_family="clip",
        chat_template=default_chat_template(llm_family),
        rfm_llm_layers=_RFM_LAYERS[size],
        max_context_tokens=TINY_MAX_CONTEXT_TOKENS,
    )
    vision_config = CLIPVisionConfig(
        **_SIZES[size]["vision"],
        image_size=config.tile_size_px,
        patch_size=config.patch_size_px,
        hidden_act="quick_gelu",
        projection_dim=_SIZES[size]["vision"]["hidden_size"],
    )
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    llm_class = LlamaConfig if llm_family == "llama" else Qwen2Config
    llm_config = llm_class(
        **_SIZES[size]["llm"],
        vocab_size=len(tokenizer),
        max_position_embeddings=TINY_MAX_CONTEXT_TOKENS,
        tie_word_embeddings=False,
        **special,
    )
    model = build_seeded_model(
        config, vision_config=vision_config, llm_config=llm_config, seed=seed
    )
    return model.eval(), tokenizer


def build_seeded_model(
    config: VlmConfig,
    *,
    vision_config: CLIPVisionConfig,
    llm_config: LlamaConfig | Qwen2Config,
    seed: int,
) -> VisionLanguageModel:
    """Return a randomly initialised VLM, the same for the same seed, its RFM copied from the LLM.

    The global torch generator is seeded for the build and restored afterwards, so callers'
    random streams are left as they were.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = VisionLanguageModel.build(
            config, vision_config=vision_config, llm_config=llm_config, initialise=True
        )
        with torch.no_grad():
            model.image_newline.normal_(std=model.hidden_size**-0.5)
    finally:
        torch.random.set_rng_state(generator_state)
    model.rfm.copy_from_llm(model.llm, config.rfm_source_layers)
    return model


def init_tiny(
    out_dir: str | Path,
    *,
    family: TinyFamily = "llava",
    seed: int = 0,
    size: TinySize = "tiny",
) -> Path:
    """Build a random tiny model with its tokenizer and save it in the project format.

    Args:
        out_dir: directory to write (created; existing model files are overwritten).
        family: ``"llava"`` (Llama LLM, vicuna_v1 template) or ``"qwen2"`` (Qwen2 LLM, ChatML).
        seed: seed of the random weights (the same seed gives the same files' contents).
        size: ``"tiny"`` or ``"benchmark"`` (see the module docstring).

    Returns:
        The output directory.
    """
    from lrs_core.models.loading.project import save_model

    model, tokenizer = build_tiny(family=family, seed=seed, size=size)
    return save_model(model, tokenizer, out_dir, model_id=f"tiny-{family}-{size}-seed{seed}")
