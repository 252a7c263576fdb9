"""Attention rows (from hidden states and recorded under SDPA) against eager output_attentions."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AttentionInterface,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface

from lrs_core.errors import ConfigError
from lrs_core.models.attention_rows import (
    AttentionRowRecorder,
    AttentionRows,
    attention_rows_from_hidden,
)

TOL = 1e-5
LENGTH = 20


def _tiny(family: str) -> torch.nn.Module:
    common = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,  # GQA: 3 query heads per KV head
        vocab_size=128,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))  # q/k/v biases
        with torch.no_grad():  # random init leaves biases at 0; make them matter
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_()
                layer.self_attn.k_proj.bias.normal_()
    return model.float().eval()


def _case(batch: int, with_key_mask: bool) -> dict[str, torch.Tensor]:
    """Inputs, masks and the query/key indices of one case (left padding, unequal lengths)."""
    gen = torch.Generator().manual_seed(batch * 10 + int(with_key_mask))
    lengths = [LENGTH, LENGTH - 5, LENGTH - 9][:batch]
    ids = torch.randint(0, 128, (batch, LENGTH), generator=gen)
    valid = torch.zeros(batch, LENGTH, dtype=torch.bool)
    for b, n in enumerate(lengths):
        valid[b, LENGTH - n :] = True
    position_ids = (valid.long().cumsum(-1) - 1).clamp(min=0)
    # keys: a "level" slice ending before the prompt tail; queries: the last two tokens
    key_positions = torch.arange(LENGTH - 10, LENGTH - 2).expand(batch, -1).clone()
    query_positions = torch.tensor([LENGTH - 2, LENGTH - 1]).expand(batch, -1).clone()
    key_mask = torch.ones_like(key_positions, dtype=torch.bool)
    sequence_valid = valid.clone()
    if with_key_mask:  # placeholders: masked for every query (spec §5.1 pass 2)
        key_mask[:, 1::3] = False
        sequence_valid.scatter_(1, key_positions[:, 1::3], False)
    causal = torch.tril(torch.ones(LENGTH, LENGTH, dtype=torch.bool))
    allowed = causal[None] & sequence_valid[:, None, :]
    additive = torch.zeros(batch, 1, LENGTH, LENGTH).masked_fill(
        ~allowed[:, None], torch.finfo(torch.float32).min
    )
    return dict(
        ids=ids,
        valid=valid,
        position_ids=position_ids,
        key_positions=key_positions,
        query_positions=query_positions,
        key_mask=key_mask,
        sequence_valid=sequence_valid,
        additive=additive,
    )


def _model_mask(case: dict[str, torch.Tensor], with_key_mask: bool) -> torch.Tensor:
    """2D padding mask normally; a 4D additive mask (padding + placeholders) with key masking."""
    return case["additive"] if with_key_mask else case["valid"].long()


def _eager_reference(model: torch.nn.Module, case: dict[str, torch.Tensor], mask: torch.Tensor):
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(
            input_ids=case["ids"],
            attention_mask=mask,
            position_ids=case["position_ids"],
            output_attentions=True,
            output_hidden_states=True,
        )
    model.set_attn_implementation("sdpa")
    return out


def _expected(full: torch.Tensor, case: dict[str, torch.Tensor], renormalize: bool) -> torch.Tensor:
    """Eager (B, H, L, L) -> (B, H, Q, K) rows, optionally renormalised over the chosen keys."""
    batch, heads = full.shape[:2]
    q = case["query_positions"][:, None, :, None].expand(batch, heads, -1, LENGTH)
    rows = full.gather(2, q)
    k = case["key_positions"][:, None, None, :].expand(batch, heads, rows.shape[2], -1)
    rows = rows.gather(3, k).masked_fill(~case["key_mask"][:, None, None, :], 0.0)
    if renormalize:
        rows = rows / rows.sum(-1, keepdim=True)
    return rows


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_key_mask", [False, True])
def test_rows_match_eager(family: str, batch: int, with_key_mask: bool) -> None:
    model = _tiny(family)
    case = _case(batch, with_key_mask)
    mask = _model_mask(case, with_key_mask)
    eager = _eager_reference(model, case, mask)

    for renormalize in (True, False):
        # 1) recomputed from the hidden states entering each layer
        for layer_index, layer in enumerate(model.model.layers):
            with torch.no_grad():
                rows = attention_rows_from_hidden(
                    layer,
                    eager.hidden_states[layer_index],
                    position_ids=case["position_ids"],
                    rotary_emb=model.model.rotary_emb,
                    query_positions=case["query_positions"],
                    key_positions=case["key_positions"],
                    key_mask=case["key_mask"] if with_key_mask else None,
                    sequence_mask=case["sequence_valid"],
                    renormalize_over_keys=renormalize,
                )
            want = _expected(eager.attentions[layer_index], case, renormalize)
            assert rows.per_head.dtype == torch.float32
            assert rows.per_head.shape == (batch, 6, 2, 8)
            assert (rows.per_head - want).abs().max() <= TOL
            assert (rows.mean - want.mean(1)).abs().max() <= TOL

        # 2) recorded during an SDPA forward of the same model
        with AttentionRowRecorder(
            model,
            layers=[0, 1],
            query_positions=case["query_positions"],
            key_positions=case["key_positions"],
            key_mask=case["key_mask"] if with_key_mask else None,
            renormalize_over_keys=renormalize,
        ) as recorder:
            assert model.config._attn_implementation.startswith("lrs_attention_rows_")
            with torch.no_grad():
                sdpa_out = model(
                    input_ids=case["ids"], attention_mask=mask, position_ids=case["position_ids"]
                )
        assert model.config._attn_implementation == "sdpa"
        valid_rows = case["valid"][:, :, None]
        assert torch.allclose(sdpa_out.logits * valid_rows, eager.logits * valid_rows, atol=1e-4), (
            "the recorder must not change the model output"
        )
        for layer_index in (0, 1):
            want = _expected(eager.attentions[layer_index], case, renormalize)
            got = recorder.rows[layer_index]
            assert (got.per_head - want).abs().max() <= TOL


def test_padding_mask_reaches_the_recorder() -> None:
    """Without the mask-interface registration the padding would be dropped: check it is not."""
    model = _tiny("llama")
    case = _case(3, with_key_mask=False)
    # query the first real token of the shortest row: only padding lies before it
    first = int((~case["valid"][2]).sum())
    query = torch.full((3, 1), first)
    keys = torch.arange(0, first + 1).expand(3, -1).clone()
    with AttentionRowRecorder(model, layers=[0], query_positions=query, key_positions=keys) as rec:
        with torch.no_grad():
            model(input_ids=case["ids"], attention_mask=case["valid"].long())
    row = rec.rows[0].per_head[2, :, 0]  # (H, K)
    assert torch.all(row[:, :first] == 0.0)
    assert torch.allclose(row[:, first], torch.ones(6))


def test_recorder_leaves_no_registry_entries_and_restores_on_error() -> None:
    model = _tiny("qwen2")
    before_attn = set(AttentionInterface._global_mapping)
    before_mask = set(AttentionMaskInterface._global_mapping)
    q = torch.tensor([[3]])
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRowRecorder(model, layers=[1], query_positions=q, key_positions=q):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert set(AttentionInterface._global_mapping) == before_attn
    assert set(AttentionMaskInterface._global_mapping) == before_mask


def test_recorder_ignores_decode_steps_and_rejects_bad_input() -> None:
    model = _tiny("llama")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    q, k = torch.tensor([[5]]), torch.arange(6)[None]
    with AttentionRowRecorder(model, layers=[0], query_positions=q, key_positions=k) as rec:
        with torch.no_grad():
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert rec.rows[0].per_head.shape == (1, 6, 1, 6)
    assert torch.allclose(rec.rows[0].per_head.sum(-1), torch.ones(1, 6, 1))
    with pytest.raises(ConfigError, match="outside"):
        AttentionRowRecorder(model, layers=[2], query_positions=q, key_positions=k)
    model.set_attn_implementation("eager")
    with pytest.raises(ConfigError, match="eager"):
        with AttentionRowRecorder(model, layers=[0], query_positions=q, key_positions=k):
            pass
    with pytest.raises(ConfigError, match="sequence indices"):
        attention_rows_from_hidden(
            model.model.layers[0],
            torch.zeros(1, 6, 48),
            position_ids=torch.arange(6)[None],
            rotary_emb=model.model.rotary_emb,
            query_positions=torch.tensor([[6]]),
            key_positions=k,
        )


def test_mean_is_head_average() -> None:
    per_head = torch.rand(2, 4, 3, 5)
    assert torch.equal(AttentionRows(per_head=per_head).mean, per_head.mean(1))
