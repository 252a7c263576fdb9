"""Every supported on-disk layout loads through load_model with identical weights and outputs."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.loading.auto import convert_checkpoint, detect_layout, load_model
from lrs_core.models.loading.llava_hf import default_llm_layer_list, llava_hf_key
from lrs_core.models.loading.paper import paper_key, paper_llm_config
from lrs_core.models.tiny import build_tiny

PAPER_FIELDS = {
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "spatial_unpad",
    "mm_spatial_pool_mode": "bilinear",
    "tokenizer_model_max_length": 8192,
    "llm_use_last_text": True,
    "image_aspect_ratio": "anyres",
    "mm_projector_type": "mlp2x_gelu_after_distillpruner",
}


@pytest.fixture(scope="module", params=["llava", "qwen2"])
def source(request):
    torch.manual_seed(1)
    model, tokenizer = build_tiny(family=request.param, seed=3)
    with torch.no_grad():  # distilled RFM weights differ from plain layer copies
        for parameter in model.rfm.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model, tokenizer


def to_paper_key(key):
    for ours, theirs in (
        ("vision_tower.", "model.vision_tower.vision_tower.vision_model."),
        ("projector.", "model.mm_projector.mlp_projector."),
        ("rfm.", "model.mm_projector.token_pruner."),
        ("llm.", ""),
    ):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    assert key == "image_newline"
    return "model.image_newline"


def write_shards(directory, tensors, n_shards=2):
    keys = sorted(tensors)
    weight_map = {}
    for index in range(n_shards):
        name = f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[index::n_shards]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def write_paper_checkpoint(directory, model, tokenizer, *, vision_beside=True, with_vision=True):
    directory.mkdir()
    tensors = {to_paper_key(k): v for k, v in model.state_dict().items()}
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # 4.37-era extra buffer
    if not with_vision:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("model.vision_tower.")}
    write_shards(directory, tensors)
    family = model.config.llm_family
    llm_dict = model.llm.config.to_dict()
    # the transformers-4.37 spelling of the rotary base, as in the released config.json files
    llm_dict["rope_theta"] = llm_dict.pop("rope_parameters")["rope_theta"]
    config = (
        llm_dict
        | PAPER_FIELDS
        | {
            "model_type": "llava_qwen" if family == "qwen2" else "llava_llama",
            "architectures": [
                "LlavaQwenForCausalLM" if family == "qwen2" else "LlavaLlamaForCausalLM"
            ],
            "llm_layer_list": list(model.config.rfm_llm_layers),
            "mm_hidden_size": model.vision_tower.config.hidden_size,
        }
    )
    (directory / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(directory))
    vision_dir = (
        directory / "vision_tower" if vision_beside else directory.parent / f"{directory.name}_clip"
    )
    vision_dir.mkdir()
    vision_dict = model.vision_tower.config.to_dict()
    (vision_dir / "config.json").write_text(
        json.dumps({"model_type": "clip", "vision_config": vision_dict})
    )
    vision_weights = {"vision_model." + k: v for k, v in model.vision_tower.state_dict().items()}
    vision_weights["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 2)
    save_file(vision_weights, str(vision_dir / "model.safetensors"))
    return vision_dir


def assert_same_model(loaded, original):
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)
    context = {"max_context_tokens": loaded.config.max_context_tokens}
    assert loaded.config == dataclasses.replace(original.config, **context)


@torch.no_grad()
def assert_same_outputs(loaded, original):
    tiles = np.random.default_rng(0).integers(0, 256, (3, 336, 336, 3), dtype=np.uint8)
    feats = loaded.encode_tiles(loaded.preprocess_tiles(tiles), batch_size=2)
    torch.testing.assert_close(
        feats, original.encode_tiles(original.preprocess_tiles(tiles)), rtol=0, atol=0
    )
    embeds = torch.cat(
        [feats[:, :5].flatten(0, 1)[None], loaded.embed_text(torch.tensor([[5, 6, 7]]))], 1
    )
    torch.testing.assert_close(
        loaded.llm(inputs_embeds=embeds).logits,
        original.llm(inputs_embeds=embeds).logits,
        rtol=0,
        atol=0,
    )


def test_paper_layout_loads_and_converts(source, tmp_path):
    model, tokenizer = source
    src = tmp_path / "llava-largeimg"
    write_paper_checkpoint(src, model, tokenizer)
    assert detect_layout(src) == "paper"
    loaded = load_model(src)
    assert_same_model(loaded.model, model)
    assert_same_outputs(loaded.model, model)
    assert loaded.model.config.max_context_tokens == 8192
    assert loaded.model.config.chat_template == (
        "chatml" if model.config.llm_family == "qwen2" else "vicuna_v1"
    )
    assert loaded.tokenizer("ASSISTANT:").input_ids == tokenizer("ASSISTANT:").input_ids
    generation = {"eos_token_id": [3, 9], "max_new_tokens": 7, "do_sample": False}
    (src / "generation_config.json").write_text(json.dumps(generation))
    dst = convert_checkpoint(src, tmp_path / "converted")
    assert detect_layout(dst) == "project"
    converted = load_model(dst)
    assert_same_model(converted.model, model)
    # the checkpoint's generation settings travel with the conversion
    assert json.loads((dst / "generation_config.json").read_text()) == generation
    assert converted.generation.eos_token_ids == (3, 9)
    assert converted.model.llm.generation_config.max_new_tokens == 7


def test_paper_layout_with_separate_vision_tower(source, tmp_path):
    model, tokenizer = source
    src = tmp_path / "ckpt"
    vision_dir = write_paper_checkpoint(
        src, model, tokenizer, vision_beside=False, with_vision=False
    )
    with pytest.raises(WeightsError, match="vision"):
        load_model(src)  # the built-in ViT-L config has no weights here
    loaded = load_model(src, vision_config_path=vision_dir)
    assert_same_model(loaded.model, model)


@torch.no_grad()
def test_paper_layout_takes_the_tower_from_a_local_mm_vision_tower(source, tmp_path):
    model, tokenizer = source
    src = tmp_path / "ckpt"
    vision_dir = write_paper_checkpoint(src, model, tokenizer, vision_beside=False)
    # the separate tower differs from the copy stored in the checkpoint
    other = {k: v + 1.0 for k, v in model.vision_tower.state_dict().items()}
    save_file(
        {"vision_model." + k: v.contiguous() for k, v in other.items()},
        str(vision_dir / "model.safetensors"),
    )
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"mm_vision_tower": str(vision_dir)}))
    loaded = load_model(src).model
    for key, value in loaded.vision_tower.state_dict().items():
        torch.testing.assert_close(value, other[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(loaded.llm.lm_head.weight, model.llm.lm_head.weight, rtol=0, atol=0)


def test_paper_layout_errors_name_the_problem(source, tmp_path):
    model, tokenizer = source
    src = tmp_path / "ckpt"
    write_paper_checkpoint(src, model, tokenizer)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"mm_spatial_pool_mode": "max"}))
    with pytest.raises(ConfigError, match="mm_spatial_pool_mode"):
        load_model(src)
    (src / "config.json").write_text(json.dumps(config | {"llm_layer_list": [1]}))
    with pytest.raises(WeightsError, match="do not match"):
        load_model(src)  # the file has more token_pruner layers than the list implies


def test_paper_llm_config_keeps_the_rotary_base_and_drops_llava_fields():
    raw = {
        "model_type": "llava_qwen",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "rope_theta": 1000000.0,
        "torch_dtype": "bfloat16",
    } | PAPER_FIELDS
    config = paper_llm_config(raw | {"llm_layer_list": [2]}, "qwen2")
    assert config.rope_parameters["rope_theta"] == 1000000.0
    assert config.hidden_size == 64
    assert not hasattr(config, "mm_vision_tower") and not hasattr(config, "llm_layer_list")


def test_paper_keys_map_to_project_keys():
    assert paper_key("model.mm_projector.token_pruner.layers.3.mlp.up_proj.weight") == (
        "rfm.layers.3.mlp.up_proj.weight"
    )
    assert paper_key("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight") == (
        "vision_tower.pre_layrnorm.weight"
    )
    assert paper_key("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert paper_key("lm_head.weight") == "llm.lm_head.weight"


def llava_hf_model(model, tokenizer, *, next_):
    config_class, model_class = (
        (LlavaNextConfig, LlavaNextForConditionalGeneration)
        if next_
        else (LlavaConfig, LlavaForConditionalGeneration)
    )
    config = config_class(
        vision_config=model.vision_tower.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    hf = model_class(config).eval()
    ours = model.state_dict()
    state = {}
    for key in hf.state_dict():
        mapped = llava_hf_key(key)
        state[key] = ours[mapped]
    hf.load_state_dict(state)
    return hf


@pytest.mark.parametrize("spelling", ["save_pretrained", "v4", "v5"])
@pytest.mark.parametrize("next_", [False, True], ids=["llava15", "llava_next"])
def test_llava_hf_layouts_load_with_rfm_copies(source, tmp_path, spelling, next_):
    model, tokenizer = source
    hf = llava_hf_model(model, tokenizer, next_=next_)
    src = tmp_path / "llava-hf"
    hf.save_pretrained(str(src))
    tokenizer.save_pretrained(str(src))
    if spelling != "save_pretrained":
        (src / "model.safetensors").unlink()
        tensors = {}
        for key, value in hf.state_dict().items():
            if spelling == "v4":
                key = key.replace("model.language_model.", "language_model.model.")
                key = key.replace("model.vision_tower.", "vision_tower.vision_model.")
                key = key.replace("lm_head.", "language_model.lm_head.").removeprefix("model.")
            tensors[key] = value.contiguous()
        save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert detect_layout(src) == "llava_hf"
    loaded = load_model(src).model
    layers = default_llm_layer_list(model.llm.config.num_hidden_layers)
    assert loaded.config.rfm_llm_layers == layers
    ours = loaded.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("rfm.") or (key == "image_newline" and not next_):
            continue
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    for rfm_layer, source_layer in zip(
        loaded.rfm.layers, loaded.config.rfm_source_layers, strict=True
    ):
        torch.testing.assert_close(
            rfm_layer.mlp.up_proj.weight, loaded.llm.model.layers[source_layer].mlp.up_proj.weight
        )
    if not next_:
        assert loaded.image_newline.abs().sum() > 0  # seeded init, LLaVA-1.5 has none
        if spelling == "save_pretrained":  # one spelling suffices; the weights are equal in all
            check_llava_forward(loaded, hf, tokenizer)
    custom = load_model(src, llm_layer_list=(2, 3)).model
    assert custom.config.rfm_num_layers == 3


@torch.no_grad()
def check_llava_forward(loaded, hf, tokenizer):
    """Our parts reproduce stock LlavaForConditionalGeneration logits (thumbnail only)."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    n_image = loaded.config.tokens_per_tile_unpooled
    ids = torch.tensor([[tokenizer.bos_token_id or 1, 40, 41] + [image_id] * n_image + [42, 43]])
    tiles = np.random.default_rng(1).integers(0, 256, (1, 336, 336, 3), dtype=np.uint8)
    pixels = loaded.preprocess_tiles(tiles)
    reference = hf(input_ids=ids, pixel_values=pixels).logits
    embeds = loaded.embed_text(ids)
    embeds[0, 3 : 3 + n_image] = loaded.encode_tiles(pixels, pooled=False)[0]
    torch.testing.assert_close(
        loaded.llm(inputs_embeds=embeds).logits, reference, rtol=1e-5, atol=1e-5
    )


def test_unknown_and_pickled_checkpoints_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match="bert"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {}}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(WeightsError, match="safetensors only"):
        load_model(tmp_path)
