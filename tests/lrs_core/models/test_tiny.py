import torch

from lrs_core.models.loading.auto import load_model
from lrs_core.models.tiny import build_tiny, build_tokenizer, init_tiny


def test_same_seed_same_weights_other_seed_other_weights():
    first, _ = build_tiny(seed=5)
    again, _ = build_tiny(seed=5)
    other, _ = build_tiny(seed=6)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(other.llm.lm_head.weight, first.llm.lm_head.weight)


def test_tiny_geometry_is_the_real_one(tiny_model):
    config = tiny_model.model.config
    assert (config.tile_size_px, config.patch_size_px, config.tokens_per_tile) == (336, 14, 144)
    assert config.llm_family == "llama" and config.chat_template == "vicuna_v1"
    assert sum(p.numel() for p in tiny_model.model.parameters()) < 1_000_000


def test_tokenizers_have_the_named_special_tokens():
    llava = build_tokenizer(family="llava")
    assert llava.bos_token == "<s>" and llava.eos_token == "</s>" and llava.pad_token == "<pad>"
    assert llava("hello").input_ids[0] == llava.bos_token_id
    qwen = build_tokenizer(family="qwen2")
    assert qwen.eos_token == "<|im_end|>" and qwen.bos_token is None
    ids = qwen("<|im_start|>user\n").input_ids
    assert ids[0] == qwen.convert_tokens_to_ids("<|im_start|>")
    for tokenizer in (llava, qwen):
        assert tokenizer.convert_tokens_to_ids([":"])[0] != tokenizer.unk_token_id
        assert len(tokenizer(":").input_ids) == (2 if tokenizer is llava else 1)


def test_init_tiny_saves_a_loadable_project_directory(tmp_path):
    out = init_tiny(tmp_path / "tiny", family="qwen2", seed=1)
    loaded = load_model(out)
    assert loaded.model.config.llm_family == "qwen2"
    assert type(loaded.model.llm).__name__ == "Qwen2ForCausalLM"
