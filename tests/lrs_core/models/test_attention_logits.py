"""Masked attention logits from hidden states against eager attention and the probability rows."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lrs_core.models.attention_rows import attention_logits_from_hidden, attention_rows_from_hidden

TOL = 1e-5
LENGTH = 18


def _tiny(family: str) -> torch.nn.Module:
    common = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if family == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**common))
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.q_proj.bias.normal_()
                    layer.self_attn.k_proj.bias.normal_()
    return model.float().eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("batch", [1, 3])
def test_softmax_of_logits_equals_eager_rows_with_right_padding(family: str, batch: int) -> None:
    model = _tiny(family)
    lengths = [LENGTH, LENGTH - 4, LENGTH - 7][:batch]
    ids = torch.randint(0, 128, (batch, LENGTH), generator=torch.Generator().manual_seed(batch))
    valid = torch.zeros(batch, LENGTH, dtype=torch.int64)
    for row, n in enumerate(lengths):
        valid[row, :n] = 1
    position_ids = torch.arange(LENGTH).expand(batch, -1)
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=valid, output_attentions=True, output_hidden_states=True
        )
    queries = torch.tensor([[n - 1, n - 3] for n in lengths])
    keys = torch.arange(LENGTH).expand(batch, -1)
    for layer_index in range(2):
        logits = attention_logits_from_hidden(
            model.model.layers[layer_index],
            out.hidden_states[layer_index],
            position_ids=position_ids,
            rotary_emb=model.model.rotary_emb,
            query_positions=queries,
            key_positions=keys,
            sequence_mask=valid.bool(),
        )
        assert logits.logits.shape == (batch, 6, 2, LENGTH)
        assert logits.logits.dtype == torch.float32
        # padding and future keys are masked (-inf), everything else finite
        for row, n in enumerate(lengths):
            assert torch.isinf(logits.logits[row, :, 0, n:]).all()
            assert torch.isfinite(logits.logits[row, :, 0, :n]).all()
            assert torch.isinf(logits.logits[row, :, 1, n - 2 :]).all()
        probs = torch.softmax(logits.logits, dim=-1)
        eager = out.attentions[layer_index].gather(
            2, queries[:, None, :, None].expand(-1, 6, -1, LENGTH)
        )
        torch.testing.assert_close(probs, eager, atol=TOL, rtol=TOL)
        rows = attention_rows_from_hidden(
            model.model.layers[layer_index],
            out.hidden_states[layer_index],
            position_ids=position_ids,
            rotary_emb=model.model.rotary_emb,
            query_positions=queries,
            key_positions=keys,
            sequence_mask=valid.bool(),
        )
        torch.testing.assert_close(probs, rows.per_head, atol=TOL, rtol=TOL)


def test_key_mask_and_gradients() -> None:
    model = _tiny("llama")
    hidden = torch.randn(2, LENGTH, 48, requires_grad=True)
    keys = torch.arange(4, 10).expand(2, -1)
    key_mask = torch.ones(2, 6, dtype=torch.bool)
    key_mask[1, 2] = False
    logits = attention_logits_from_hidden(
        model.model.layers[0],
        hidden,
        position_ids=torch.arange(LENGTH)[None],
        rotary_emb=model.model.rotary_emb,
        query_positions=torch.tensor([[LENGTH - 1], [LENGTH - 1]]),
        key_positions=keys,
        key_mask=key_mask,
    )
    assert logits.allowed.shape == (2, 1, 1, 6)
    assert not logits.allowed[1, 0, 0, 2] and logits.allowed[0].all()
    assert torch.isinf(logits.logits[1, :, 0, 2]).all()
    logits.logits[torch.isfinite(logits.logits)].sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
