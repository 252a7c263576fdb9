"""Prefill and generation from (pruned) input embeddings on tiny stock Llama / Qwen2 models."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lrs_core.errors import ConfigError
from lrs_core.models.generation import (
    generate_from_embeds,
    pack_kept,
    prefill_logits,
    select_positions,
)

VOCAB = 96
EOS = 2


def _tiny(family: str) -> torch.nn.Module:
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
    )
    torch.manual_seed(1)
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    model = (LlamaForCausalLM if family == "llama" else Qwen2ForCausalLM)(config)
    return model.float().eval()


def _embeds(model: torch.nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.get_input_embeddings()(ids)


def test_select_positions_compact_and_original() -> None:
    kept = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 0]], dtype=torch.bool)
    assert select_positions(kept, "compact").tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    assert select_positions(kept, "original").tolist() == [[0, 2, 3, 5], [0, 0, 2, 4]]
    shifted = torch.arange(10, 16)[None]
    assert select_positions(kept, "original", full_positions=shifted).tolist()[1] == [0, 0, 12, 14]
    with pytest.raises(ConfigError, match="position mode"):
        select_positions(kept, "gapped")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="keep no token"):
        select_positions(torch.zeros(2, 3, dtype=torch.bool), "compact")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_keeping_every_token_reproduces_unpruned_logits(family: str) -> None:
    model = _tiny(family)
    full = _embeds(model, 1, 12)
    with torch.no_grad():
        reference = model(inputs_embeds=full).logits
        packed = pack_kept(full, torch.ones(1, 12, dtype=torch.bool), mode="compact")
        logits = prefill_logits(
            model,
            packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
        )
    assert torch.equal(logits, reference)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batched_pruned_prefill_matches_rows_alone(family: str) -> None:
    """B=3 with unequal kept counts (left padding) equals each row run alone, both modes."""
    model = _tiny(family)
    full = _embeds(model, 3, 14, seed=4)
    kept = torch.ones(3, 14, dtype=torch.bool)
    kept[0, 3:6] = False
    kept[1, 1:9:2] = False
    for mode in ("compact", "original"):
        packed = pack_kept(full, kept, mode=mode)
        with torch.no_grad():
            batched = prefill_logits(
                model,
                packed.inputs_embeds,
                attention_mask=packed.attention_mask,
                position_ids=packed.position_ids,
            )
            for row in range(3):
                alone = pack_kept(full[row : row + 1], kept[row : row + 1], mode=mode)
                single = prefill_logits(model, alone.inputs_embeds, position_ids=alone.position_ids)
                count = int(kept[row].sum())
                assert torch.allclose(batched[row, -count:], single[0], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_original_positions_equal_masking_the_dropped_keys(family: str) -> None:
    """Dropping tokens with original positions == the full sequence with those keys masked."""
    model = _tiny(family)
    full = _embeds(model, 1, 16, seed=7)
    kept = torch.ones(1, 16, dtype=torch.bool)
    kept[0, 4:10] = False
    causal = torch.tril(torch.ones(16, 16, dtype=torch.bool)) & kept[:, None, :]
    causal |= torch.eye(16, dtype=torch.bool)  # dropped rows attend to themselves (unused)
    additive = torch.zeros(1, 1, 16, 16).masked_fill(
        ~causal[:, None], torch.finfo(torch.float32).min
    )
    packed = pack_kept(full, kept, mode="original")
    with torch.no_grad():
        masked = model(inputs_embeds=full, attention_mask=additive).logits[0, kept[0]]
        pruned = prefill_logits(model, packed.inputs_embeds, position_ids=packed.position_ids)
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 10, 11, 12, 13, 14, 15]]
    assert torch.allclose(pruned[0], masked, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_generation_is_deterministic_and_continues_positions(family: str) -> None:
    model = _tiny(family)
    full = _embeds(model, 3, 12, seed=2)
    kept = torch.ones(3, 12, dtype=torch.bool)
    kept[1, 2:7] = False
    kept[2, ::2] = False
    packed = pack_kept(full, kept, mode="original")
    args = dict(
        attention_mask=packed.attention_mask,
        position_ids=packed.position_ids,
        max_new_tokens=4,
        eos_token_id=None,
        pad_token_id=0,
    )
    first = generate_from_embeds(model, packed.inputs_embeds, **args)
    second = generate_from_embeds(model, packed.inputs_embeds, **args)
    assert first == second
    assert first.decode_steps == [4, 4, 4]
    # the continuation of row 2 by hand: append each token at position last + 1
    embeds, positions = packed.inputs_embeds[2:3], packed.position_ids[2:3]
    embeds, positions = embeds[:, -int(kept[2].sum()) :], positions[:, -int(kept[2].sum()) :]
    for token in first.token_ids[2]:
        with torch.no_grad():
            logits = prefill_logits(model, embeds, position_ids=positions)
        assert int(logits[0, -1].argmax()) == token
        with torch.no_grad():
            new = model.get_input_embeddings()(torch.tensor([[token]]))
        embeds = torch.cat([embeds, new], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)


def test_eos_ends_a_row_and_sampling_is_seeded() -> None:
    model = _tiny("llama")
    embeds = _embeds(model, 2, 8, seed=5)
    greedy = generate_from_embeds(
        model, embeds, max_new_tokens=3, eos_token_id=None, pad_token_id=0
    )
    stop = greedy.token_ids[0][1]  # make the second token of row 0 the end-of-sequence id
    result = generate_from_embeds(
        model, embeds, max_new_tokens=3, eos_token_id=stop, pad_token_id=0
    )
    assert result.token_ids[0] == greedy.token_ids[0][:1]
    assert result.decode_steps[0] == 2

    state = torch.get_rng_state()
    runs = [
        generate_from_embeds(
            model,
            embeds,
            max_new_tokens=5,
            eos_token_id=None,
            pad_token_id=0,
            do_sample=True,
            generator=torch.Generator().manual_seed(11),
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_from_embeds(model, embeds, max_new_tokens=0, eos_token_id=None, pad_token_id=0)
