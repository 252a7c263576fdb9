"""In-LLM vision-token dropping (FastV / PyramidDrop) on tiny stock Llama / Qwen2 models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lrs_core.errors import ConfigError
from lrs_core.models.flops import KNOWN_DIMS, count_flops, count_llm_flops_per_layer
from lrs_core.models.generation import generate_from_embeds, pack_kept, prefill_logits
from lrs_core.models.layer_drop import LayerDropSchedule, generate_with_layer_drop

VOCAB = 96
EOS = 2
LAYERS = 6
LENGTH = 30
VISION = torch.arange(5, 25)  # 20 vision tokens between a 5-token prefix and a 5-token question
TOL = 1e-5


def _tiny(family: str, attn: str = "sdpa") -> torch.nn.Module:
    common = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=LAYERS,
        num_attention_heads=6,
        num_key_value_heads=2,  # GQA
        vocab_size=VOCAB,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    torch.manual_seed(3)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
        with torch.no_grad():  # random init leaves q/k biases at 0; make them matter
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
    return model.float().eval()


def _embeds(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


def _run(model: torch.nn.Module, embeds: torch.Tensor, schedule: LayerDropSchedule, **kw):
    return generate_with_layer_drop(
        model,
        embeds,
        vision_positions=VISION,
        schedule=schedule,
        max_new_tokens=kw.pop("max_new_tokens", 8),
        eos_token_id=kw.pop("eos_token_id", EOS),
        pad_token_id=0,
        **kw,
    )


def test_schedule_validation_and_presets() -> None:
    assert LayerDropSchedule.fastv().stages == ((2, 0.5),)
    pdrop = LayerDropSchedule.pdrop(num_layers=32)
    assert [s[0] for s in pdrop.stages] == [8, 16, 24]
    assert [s[0] for s in LayerDropSchedule.pdrop(num_layers=28).stages] == [7, 14, 21]
    assert pdrop.kept_counts(576) == [288, 144, 72]
    assert pdrop.kept_counts(100) == [50, 25, 12]  # int(100 * 0.125)
    assert LayerDropSchedule.fastv(keep_ratio=0.25).kept_counts(10) == [2]  # round(2.5) = 2
    assert pdrop.tokens_per_layer(num_layers=32, prefill_tokens=600, n_vision=576) == (
        [600] * 8 + [312] * 8 + [168] * 8 + [96] * 8
    )
    for bad in (
        dict(stages=()),
        dict(stages=((0, 0.5),)),  # FastV scoring needs a previous layer
        dict(stages=((3, 0.5), (3, 0.5))),
        dict(stages=((3, 0.0),)),
        dict(stages=((3, 1.5),)),
        dict(stages=((3, 0.5),), positions="gapped"),
    ):
        with pytest.raises(ConfigError):
            LayerDropSchedule(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="too shallow"):
        LayerDropSchedule.pdrop(num_layers=2)
    with pytest.raises(ConfigError, match="outside the model"):
        LayerDropSchedule.fastv(layer=9).check_layers(LAYERS)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("preset", ["fastv", "pdrop"])
def test_keeping_everything_reproduces_the_stock_model(family: str, preset: str) -> None:
    model = _tiny(family)
    embeds = _embeds(model)
    schedule = (
        LayerDropSchedule.fastv(layer=2, keep_ratio=1.0)
        if preset == "fastv"
        else LayerDropSchedule.pdrop(num_layers=LAYERS, keep_ratio=1.0)
    )
    result = _run(model, embeds, schedule, max_new_tokens=10, eos_token_id=None)
    with torch.no_grad():
        reference_logits = prefill_logits(model, embeds)[0, -1]
    stock = generate_from_embeds(
        model, embeds, max_new_tokens=10, eos_token_id=None, pad_token_id=0
    )
    assert torch.allclose(result.last_logits, reference_logits, atol=TOL, rtol=0)
    assert result.generation == stock
    assert result.tokens_per_layer == [LENGTH] * LAYERS
    for kept in result.kept_vision_positions:
        assert kept.tolist() == VISION.tolist()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("positions", ["original", "compact"])
def test_drop_before_layer_zero_equals_the_stock_model_on_the_kept_tokens(
    family: str, positions: str
) -> None:
    """A drop before every layer is input pruning: compare with the stock model on kept tokens."""
    model = _tiny(family)
    embeds = _embeds(model, seed=1)
    schedule = LayerDropSchedule(stages=((0, 0.3),), scoring="stage_layer", positions=positions)
    result = _run(model, embeds, schedule, max_new_tokens=10, eos_token_id=None)
    kept = torch.ones(1, LENGTH, dtype=torch.bool)
    kept[0, VISION] = False
    kept[0, torch.from_numpy(result.kept_vision_positions[0])] = True
    assert int(kept.sum()) == LENGTH - 20 + 6
    packed = pack_kept(embeds, kept, mode=positions)
    with torch.no_grad():
        reference = prefill_logits(
            model,
            packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
        )[0, -1]
    stock = generate_from_embeds(
        model,
        packed.inputs_embeds,
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids,
        max_new_tokens=10,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.allclose(result.last_logits, reference, atol=TOL, rtol=0)
    assert result.generation == stock
    assert result.tokens_per_layer == [LENGTH - 14] * LAYERS


def _eager_last_row(family: str, embeds: torch.Tensor, layer: int) -> torch.Tensor:
    """Head-mean attention of the last token at ``layer`` from eager output_attentions, unpruned."""
    eager = _tiny(family, attn="eager")
    with torch.no_grad():
        out = eager(inputs_embeds=embeds, output_attentions=True)
    return out.attentions[layer][0, :, -1].mean(0)  # (L,)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fastv_ranks_by_the_previous_layers_exact_attention(family: str) -> None:
    model = _tiny(family)
    embeds = _embeds(model, seed=2)
    result = _run(model, embeds, LayerDropSchedule.fastv(layer=2, keep_ratio=0.5))
    row = _eager_last_row(family, embeds, layer=1)[VISION]
    assert np.allclose(result.vision_scores[0], row.numpy(), atol=TOL)
    expected = VISION[torch.sort(row, descending=True, stable=True).indices[:10]].sort().values
    assert result.kept_vision_positions[0].tolist() == expected.tolist()
    assert result.tokens_per_layer == [LENGTH] * 2 + [LENGTH - 10] * (LAYERS - 2)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pdrop_stages_rank_with_the_stage_layer_and_shrink(family: str) -> None:
    model = _tiny(family)
    embeds = _embeds(model, seed=3)
    schedule = LayerDropSchedule.pdrop(num_layers=LAYERS, keep_ratio=0.5, n_stages=2)  # layers 2, 4
    result = _run(model, embeds, schedule)
    row = _eager_last_row(family, embeds, layer=2)[VISION]  # stage 1 = layer 2's own attention
    assert np.allclose(result.vision_scores[0], row.numpy(), atol=TOL)
    assert [len(k) for k in result.kept_vision_positions] == [10, 5]
    assert [len(s) for s in result.vision_scores] == [20, 10]
    assert set(result.kept_vision_positions[1]) <= set(result.kept_vision_positions[0])
    assert result.tokens_per_layer == [30, 30, 20, 20, 15, 15]
    assert result.tokens_per_layer == schedule.tokens_per_layer(
        num_layers=LAYERS, prefill_tokens=LENGTH, n_vision=20
    )


def test_deterministic_and_ties_keep_sequence_order() -> None:
    model = _tiny("llama")
    embeds = _embeds(model, seed=4)
    schedule = LayerDropSchedule.fastv(layer=3, keep_ratio=0.4)
    first, second = _run(model, embeds, schedule), _run(model, embeds, schedule)
    assert first.generation == second.generation
    assert first.kept_vision_positions[0].tolist() == second.kept_vision_positions[0].tolist()
    assert torch.equal(first.last_logits, second.last_logits)
    # zero keys in the scoring layer (2) give uniform attention, exact ties: the earliest win
    with torch.no_grad():
        model.model.layers[2].self_attn.k_proj.weight.zero_()
    result = _run(model, embeds, schedule)
    assert np.ptp(result.vision_scores[0]) == 0.0
    assert result.kept_vision_positions[0].tolist() == VISION[:8].tolist()


def test_padding_is_stripped_and_bad_inputs_raise() -> None:
    model = _tiny("qwen2")
    embeds = _embeds(model, seed=5)
    padded = torch.cat([torch.zeros(1, 3, embeds.shape[-1]), embeds], dim=1)
    mask = torch.ones(1, LENGTH + 3, dtype=torch.int64)
    mask[0, :3] = 0
    schedule = LayerDropSchedule.fastv(layer=2, keep_ratio=0.5)
    plain = _run(model, embeds, schedule)
    shifted = generate_with_layer_drop(
        model,
        padded,
        vision_positions=VISION + 3,
        schedule=schedule,
        max_new_tokens=8,
        eos_token_id=EOS,
        pad_token_id=0,
        attention_mask=mask,
    )
    assert shifted.generation == plain.generation
    assert (shifted.kept_vision_positions[0] - 3).tolist() == plain.kept_vision_positions[
        0
    ].tolist()
    with pytest.raises(ConfigError, match="B=1"):
        _run(model, embeds.expand(2, -1, -1), schedule)
    with pytest.raises(ConfigError, match="last token"):
        generate_with_layer_drop(
            model,
            embeds,
            vision_positions=torch.tensor([LENGTH - 1]),
            schedule=schedule,
            max_new_tokens=2,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    with pytest.raises(ConfigError, match="outside the model"):
        _run(model, embeds, LayerDropSchedule.fastv(layer=LAYERS))


def test_per_layer_flops_match_count_flops_and_shrink_with_drops() -> None:
    dims = KNOWN_DIMS["qwen2-7b"]
    layers = dims.llm.layers
    for causal in (False, True):
        constant = count_llm_flops_per_layer(
            dims, [700] * layers, decode_steps=5, causal_attention=causal
        )
        reference = count_flops(
            dims, vision_tiles=3, prefill_tokens=700, decode_steps=5, causal_attention=causal
        )
        assert constant == pytest.approx(reference.llm_flops, rel=1e-12)
    schedule = LayerDropSchedule.fastv(layer=2, keep_ratio=0.5)
    dropped = schedule.tokens_per_layer(num_layers=layers, prefill_tokens=700, n_vision=576)
    assert dropped == [700] * 2 + [412] * (layers - 2)
    small = count_llm_flops_per_layer(dims, dropped, decode_steps=5)
    expected = (
        2 * count_flops(dims, vision_tiles=0, prefill_tokens=700, decode_steps=5).llm_flops
        + (layers - 2)
        * count_flops(dims, vision_tiles=0, prefill_tokens=412, decode_steps=5).llm_flops
    ) / layers
    # the weights sum to 1, so the LM head (per token, not per layer) is counted once
    assert small == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError, match="entries"):
        count_llm_flops_per_layer(dims, [700] * (layers - 1))
