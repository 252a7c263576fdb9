"""Analytic FLOP counts against torch's FlopCounterMode on tiny stock models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lrs_core.errors import ConfigError
from lrs_core.models.attention_rows import attention_rows_from_hidden
from lrs_core.models.flops import KNOWN_DIMS, LlmDims, count_flops, dims_from_configs

REL_TOL = 0.05
PREFILL = 40


def _configs() -> tuple[CLIPVisionConfig, LlamaConfig]:
    # FlopCounterMode does not see the CPU SDPA kernel, so the reference runs eager attention
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        attn_implementation="eager",
    )
    llm = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=200,
        attn_implementation="eager",
    )
    return vision, llm


def _measured(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _close(measured: float, analytic: float) -> bool:
    return abs(measured - analytic) <= REL_TOL * measured


def test_llm_prefill_and_decode_match_flop_counter() -> None:
    vision_config, llm_config = _configs()
    dims = dims_from_configs(vision_config, llm_config, rfm_layers=1, projector_in=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llm_config).eval()
    x = torch.randn(1, PREFILL, 64)

    last = _measured(lambda: model(inputs_embeds=x, logits_to_keep=1))
    assert _close(last, count_flops(dims, vision_tiles=0, prefill_tokens=PREFILL).llm_flops)
    every = _measured(lambda: model(inputs_embeds=x))
    analytic_all = count_flops(dims, vision_tiles=0, prefill_tokens=PREFILL, prefill_lm_head="all")
    assert _close(every, analytic_all.llm_flops)
    generated = _measured(
        lambda: model.generate(
            inputs_embeds=x, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    )
    analytic = count_flops(dims, vision_tiles=0, prefill_tokens=PREFILL, decode_steps=5)
    assert _close(generated, analytic.llm_flops)
    # the causal option counts fewer attention pairs, never more
    causal = count_flops(dims, vision_tiles=0, prefill_tokens=PREFILL, causal_attention=True)
    assert causal.llm_flops < analytic.llm_flops


def test_vision_tower_and_projector_match_flop_counter() -> None:
    vision_config, llm_config = _configs()
    dims = dims_from_configs(vision_config, llm_config, rfm_layers=1, projector_in=32)
    torch.manual_seed(0)
    tower = CLIPVisionModel(vision_config).eval()
    projector = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)
    )
    tiles = torch.randn(3, 3, 56, 56)

    def run() -> None:
        features = tower(tiles, output_hidden_states=True).hidden_states[-2][:, 1:]
        projector(features)

    assert dims.vision.tokens_per_tile == 17
    assert _close(_measured(run), count_flops(dims, vision_tiles=3, prefill_tokens=0).vision_flops)


def test_rfm_pass_matches_flop_counter() -> None:
    """rfm_layers full layers, then q/k of the scoring layer for the rows (our RFM's work)."""
    vision_config, llm_config = _configs()
    dims = dims_from_configs(vision_config, llm_config, rfm_layers=1, projector_in=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llm_config).eval()
    x = torch.randn(1, PREFILL, 64)
    positions = torch.arange(PREFILL)[None]

    def run() -> None:
        rope = model.model.rotary_emb(x, positions)
        hidden = model.model.layers[0](x, attention_mask=None, position_embeddings=rope)
        attention_rows_from_hidden(
            model.model.layers[1],
            hidden,
            position_ids=positions,
            rotary_emb=model.model.rotary_emb,
            query_positions=torch.tensor([[PREFILL - 1]]),
            key_positions=positions,
        )

    analytic = count_flops(dims, vision_tiles=0, prefill_tokens=0, rfm_tokens=PREFILL)
    assert analytic.llm_flops == 0.0 and analytic.vision_flops == 0.0
    assert _close(_measured(run), analytic.rfm_flops)


@pytest.mark.parametrize(
    ("name", "published_params"),
    [("qwen2-7b", 7.62e9), ("vicuna-7b", 6.74e9)],  # model cards: Qwen2-7B, Llama-2-7B
)
def test_known_dims_reproduce_published_parameter_counts(
    name: str, published_params: float
) -> None:
    llm = KNOWN_DIMS[name].llm
    q_width, kv_width = llm.q_heads * llm.head_dim, llm.kv_heads * llm.head_dim
    per_layer = llm.hidden * (2 * q_width + 2 * kv_width) + 3 * llm.hidden * llm.intermediate
    params = llm.layers * per_layer + 2 * llm.vocab * llm.hidden  # untied embedding + LM head
    assert abs(params - published_params) / published_params < 0.01
    # one prefill token costs about 2 FLOPs per weight it touches (minus the embedding table)
    one = count_flops(KNOWN_DIMS[name], vision_tiles=0, prefill_tokens=1).llm_flops
    assert abs(one - 2 * (params - llm.vocab * llm.hidden)) / one < 0.001


def test_rejects_bad_dims_and_counts() -> None:
    with pytest.raises(ConfigError, match="multiple"):
        LlmDims(layers=1, hidden=8, intermediate=8, q_heads=3, kv_heads=2, head_dim=4, vocab=8)
    with pytest.raises(ConfigError, match="negative"):
        count_flops(KNOWN_DIMS["qwen2-7b"], vision_tiles=-1, prefill_tokens=10)
