import json

import numpy as np
import pytest
import torch

from lrs_core.errors import WeightsError
from lrs_core.models.layout import assemble_batch, build_layout
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.project import save_model
from lrs_core.models.prompt import tokenize_prompt


@torch.no_grad()
def prompt_logits(loaded, questions):
    """Logits at the query position of thumbnail + level sequences, batched with right padding."""
    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    separator = tokenizer.convert_tokens_to_ids([config.separator_token])[0]
    size = config.tile_size_px
    tiles = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), np.uint8)
    pixels = model.preprocess_tiles(tiles)
    thumb = model.encode_tiles(pixels[:1])[0]  # a pooled thumbnail keeps the test fast
    side = config.pooled_per_side
    level = model.encode_tiles(pixels[1:])[0].view(side, side, -1)  # one tile: (Ht, Wt, D)
    layouts = [
        build_layout(
            tokenize_prompt(tokenizer, question, template=config.chat_template),
            thumbnail_tokens=config.tokens_per_tile,
            separator_id=separator,
            level_grid_hw=(side, side),
            tile_tokens_hw=(side, side),
        )
        for question in questions
    ]
    batch = assemble_batch(
        model, layouts, thumbnail_feats=[thumb] * len(layouts), level_feats=[level] * len(layouts)
    )
    logits = model.llm(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask
    ).logits
    return torch.stack([logits[i, layout.query_position] for i, layout in enumerate(layouts)])


QUESTIONS = [
    "What is the color of the roof?",
    "How many ships?",
    "Is there a bridge over the river?",
]


@pytest.mark.parametrize("family", ["llava", "qwen2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_project_format_round_trips_with_identical_logits(
    family, batch, tiny_model_dir, tiny_qwen2_model_dir, tmp_path
):
    source = tiny_model_dir if family == "llava" else tiny_qwen2_model_dir
    loaded = load_model(source)
    again = load_model(save_model(loaded.model, loaded.tokenizer, tmp_path / "copy"))
    assert again.model.config == loaded.model.config
    assert (
        again.tokenizer("USER: ASSISTANT:").input_ids
        == loaded.tokenizer("USER: ASSISTANT:").input_ids
    )
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    logits = prompt_logits(loaded, QUESTIONS[:batch])
    torch.testing.assert_close(prompt_logits(again, QUESTIONS[:batch]), logits, rtol=0, atol=0)
    if batch == 3:  # the shortest (padded) row equals the row alone
        alone = prompt_logits(loaded, QUESTIONS[1:2])[0]
        torch.testing.assert_close(logits[1], alone, rtol=1e-5, atol=1e-5)


def test_loads_in_another_dtype_with_eager_attention(tiny_model_dir):
    loaded = load_model(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="eager")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.llm.config._attn_implementation == "eager"
    assert loaded.model.rfm.config is loaded.model.llm.config
    assert loaded.model_id == "tiny-llava-tiny-seed0"
    assert loaded.source_dir == tiny_model_dir


def test_header_and_weights_are_checked(tiny_model, tmp_path):
    out = save_model(tiny_model.model, tiny_model.tokenizer, tmp_path / "m")
    header = json.loads((out / "lrs_model.json").read_text())
    assert header["vlm_config"]["rfm_llm_layers"] == [2, 3]
    (out / "lrs_model.json").write_text(json.dumps(header | {"format_version": 99}))
    with pytest.raises(WeightsError, match="version"):
        load_model(out)
    header["llm_config"]["num_hidden_layers"] = 5
    (out / "lrs_model.json").write_text(json.dumps(header))
    with pytest.raises(WeightsError, match="missing"):
        load_model(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_model(out)


@torch.no_grad()
def test_tied_embeddings_survive_a_round_trip(tmp_path):
    from transformers import CLIPVisionConfig, Qwen2Config

    from lrs_core.models.config import VlmConfig
    from lrs_core.models.tiny import build_tokenizer
    from lrs_core.models.vlm import VisionLanguageModel

    tokenizer = build_tokenizer(family="qwen2")
    config = VlmConfig(
        llm_family="qwen2",
        vision_family="clip",
        chat_template="chatml",
        rfm_llm_layers=(1,),
        max_context_tokens=512,
    )
    model = VisionLanguageModel.build(
        config,
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=336,
            patch_size=14,
        ),
        llm_config=Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            tie_word_embeddings=True,
        ),
        initialise=True,
    )
    loaded = load_model(save_model(model, tokenizer, tmp_path / "tied")).model
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.model.embed_tokens.weight.data_ptr()
    embeds = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loaded.llm(inputs_embeds=embeds).logits,
        model.llm(inputs_embeds=embeds).logits,
        rtol=0,
        atol=0,
    )
