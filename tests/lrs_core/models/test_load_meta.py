"""Loading builds on ``meta`` and assigns the weights: same logits as the old float32 build."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.loading.auto import load_model
from lrs_core.models.loading.files import PROJECT_CONFIG_FILE, read_json
from lrs_core.models.loading.project import configs_from_header
from lrs_core.models.vlm import VisionLanguageModel
from tests.lrs_core.models.test_io import QUESTIONS, prompt_logits


def _old_path(source: Path, dtype: torch.dtype) -> VisionLanguageModel:
    """The loader before meta + assign: build in float32 on CPU, copy the weights in, cast."""
    config, vision_config, llm_config = configs_from_header(
        read_json(source / PROJECT_CONFIG_FILE), source=source
    )
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=True
    )
    weights = load_file(str(source / "model.safetensors"))
    model.load_state_dict(weights, strict=not llm_config.tie_word_embeddings)
    return model.to(dtype=dtype).eval()


@pytest.mark.parametrize("family", ["llava", "qwen2"])
@torch.no_grad()
def test_logits_are_bit_identical_to_the_float32_build(
    family: str, tiny_model_dir: Path, tiny_qwen2_model_dir: Path
) -> None:
    source = tiny_model_dir if family == "llava" else tiny_qwen2_model_dir
    new = load_model(source, device="cpu", dtype=torch.float32, attn_implementation="sdpa")
    old = _old_path(source, torch.float32)
    assert not any(t.is_meta for t in new.model.state_dict().values())
    for name, buffer in old.named_buffers():
        assert torch.equal(dict(new.model.named_buffers())[name], buffer), name
    old_loaded = type(new)(
        model=old,
        tokenizer=new.tokenizer,
        model_id=new.model_id,
        source_dir=source,
        family=LlavaFamily(old, new.tokenizer),
    )
    torch.testing.assert_close(
        prompt_logits(new, QUESTIONS), prompt_logits(old_loaded, QUESTIONS), rtol=0, atol=0
    )


@torch.no_grad()
def test_bf16_load_has_bf16_weights_and_float32_rope(tiny_qwen2_model_dir: Path) -> None:
    new = load_model(tiny_qwen2_model_dir, device="cpu", dtype=torch.bfloat16).model
    old = _old_path(tiny_qwen2_model_dir, torch.bfloat16)
    params = dict(new.named_parameters())
    for name, param in old.named_parameters():
        assert params[name].dtype == torch.bfloat16
        assert torch.equal(params[name], param), name
    # like from_pretrained (and the reference), RoPE frequencies stay float32
    assert new.llm.model.rotary_emb.inv_freq.dtype == torch.float32
    assert new.rfm.rotary_emb.inv_freq.dtype == torch.float32
    position_ids = dict(new.named_buffers())["vision_tower.embeddings.position_ids"]
    assert position_ids.dtype == torch.int64
    assert torch.equal(position_ids[0], torch.arange(position_ids.shape[1]))


def test_builds_on_threads_need_no_lock(tiny_model_dir: Path) -> None:
    """Loading on one thread while another builds a randomly initialised model: both are right."""
    header = read_json(tiny_model_dir / PROJECT_CONFIG_FILE)
    config, vision_config, llm_config = configs_from_header(header, source=tiny_model_dir)
    results: dict[str, object] = {}

    def build() -> None:
        torch.manual_seed(0)
        results["random"] = VisionLanguageModel.build(
            config, vision_config=vision_config, llm_config=llm_config, initialise=True
        )

    thread = threading.Thread(target=build)
    thread.start()
    loaded = load_model(tiny_model_dir)
    thread.join()
    random_model = results["random"]
    assert isinstance(random_model, VisionLanguageModel)
    weight = random_model.llm.model.layers[0].mlp.up_proj.weight
    assert float(weight.detach().std()) > 0  # initialised, not left empty
    expected = load_file(str(tiny_model_dir / "model.safetensors"))
    for key, value in loaded.model.state_dict().items():
        if key in expected:
            assert torch.equal(value, expected[key]), key
    assert np.isfinite(prompt_logits(loaded, QUESTIONS[:1]).numpy()).all()
