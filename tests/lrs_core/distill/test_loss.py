"""The distillation loss: masks, pairing, image slice, gradients and the recall metric."""

from __future__ import annotations

import pytest
import torch

from lrs_core.distill.config import DistillConfig
from lrs_core.distill.data import build_dataset
from lrs_core.distill.loss import (
    distill_loss,
    distilled_pairs,
    image_slice,
    pair_logits,
    teacher_hidden_states,
    teacher_logits,
)
from lrs_core.distill.metrics import top_fraction_mask, topk_recall
from lrs_core.distill.trainer import trainable_parameters
from lrs_core.errors import ConfigError
from lrs_core.models.loading.loaded import set_attn_implementation
from tests.lrs_core.distill.helpers import build_teacher, feature_grid_records

#: SDPA vs eager accumulate in different orders; hidden states of the 0.2-std model reach ~10.
TOL = 1e-4


def _batch(loaded, n: int, *, seed: int = 3, exclude_newline_keys: bool = True):  # type: ignore[no-untyped-def]
    records = feature_grid_records(n, seed=seed)
    dataset = build_dataset(
        records,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        family=loaded.family,
        exclude_newline_keys=exclude_newline_keys,
    )
    return dataset, dataset.collate(loaded.model, list(range(n)))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_teacher_rows_equal_eager_attention_with_causal_and_padding_masks(batch_size: int) -> None:
    loaded = build_teacher(layers=4, layer_list=(1, 3))
    model = loaded.model
    _, batch = _batch(loaded, batch_size)
    hidden = teacher_hidden_states(model, batch, layers=[1, 3])
    set_attn_implementation(model, "eager")
    with torch.no_grad():
        eager = model.llm(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            output_attentions=True,
            output_hidden_states=True,
        )
    set_attn_implementation(model, "sdpa")
    heads = eager.attentions[0].shape[1]
    length = batch.attention_mask.shape[1]
    for layer in (1, 3):
        torch.testing.assert_close(hidden[layer], eager.hidden_states[layer], atol=TOL, rtol=TOL)
        logits = teacher_logits(model, batch, hidden, layer=layer)
        probs = torch.softmax(logits.logits, dim=-1)
        rows = eager.attentions[layer].gather(
            2, batch.query_positions[:, None, :, None].expand(-1, heads, -1, length)
        )
        valid = batch.query_mask[:, None, :, None]
        torch.testing.assert_close(probs * valid, rows * valid, atol=TOL, rtol=TOL)


def test_exact_prefix_rfm_matches_the_teacher() -> None:
    # llm_layer_list (1, 2, 3): RFM = copies of LLM 0..3, so RFM layer k+1 after RFM 0..k is LLM
    # layer k+1 = llm_layer_list[k] after LLM 0..k: every pair is exact, the loss is ~0.
    loaded = build_teacher(layers=4, layer_list=(1, 2, 3))
    _, batch = _batch(loaded, 3)
    output = distill_loss(loaded.model, batch, config=DistillConfig())
    assert output.terms["distill"] < 1e-6
    assert torch.all(output.topk_recall == 1.0)
    assert output.topk_recall.numel() == int(batch.query_mask.sum())


def test_non_contiguous_student_differs_and_only_the_rfm_gets_gradients() -> None:
    loaded = build_teacher()
    trainable_parameters(loaded.model, "rfm")
    _, batch = _batch(loaded, 3)
    output = distill_loss(loaded.model, batch, config=DistillConfig())
    assert output.terms["distill"] > 1e-3
    assert set(output.terms) == {"loss", "distill", "kl_full", "kl_img", "mse_img"}
    output.loss.backward()
    grads = {n: p.grad for n, p in loaded.model.named_parameters() if p.grad is not None}
    assert grads and all(name.startswith("rfm.") for name in grads)
    # the last RFM layer only contributes q/k (its attention output is never used)
    assert "rfm.layers.2.self_attn.q_proj.weight" in grads
    assert "rfm.layers.2.mlp.up_proj.weight" not in grads


def test_future_tokens_and_padding_do_not_change_the_loss() -> None:
    loaded = build_teacher()
    _, batch = _batch(loaded, 3)
    config = DistillConfig()
    base = distill_loss(loaded.model, batch, config=config).terms
    # perturb every position after the last query row of each sample (answers, padding)
    embeds = batch.inputs_embeds.clone()
    last_query = (batch.query_positions * batch.query_mask).max(dim=1).values
    for row in range(embeds.shape[0]):
        embeds[row, int(last_query[row]) + 1 :] += 5.0
    perturbed = type(batch)(**{**batch.__dict__, "inputs_embeds": embeds})
    changed = distill_loss(loaded.model, perturbed, config=config).terms
    for name in ("kl_full", "kl_img", "mse_img"):
        assert changed[name] == pytest.approx(base[name], rel=1e-5, abs=1e-7)


def test_image_slice_is_the_same_level_tokens_for_teacher_and_student() -> None:
    loaded = build_teacher()
    dataset, batch = _batch(loaded, 2)
    sample = dataset.prepare(loaded.model, 0)
    kinds = sample.layout.kind[sample.image_positions]
    assert set(kinds.tolist()) == {3}  # TokenKind.LEVEL only (newlines excluded by default)
    rows, cols = sample.level_feats.shape[:2]
    assert sample.image_positions.size == rows * cols
    _, with_newline = _batch(loaded, 2, exclude_newline_keys=False)
    assert int(with_newline.image_mask[0].sum()) == rows * (cols + 1)
    (item,) = pair_logits(loaded.model, batch, llm_layer_list=(3, 6), pairs=[1])
    teacher_img = image_slice(item.teacher, batch)
    student_img = image_slice(item.student, batch)
    assert teacher_img.logits.shape == student_img.logits.shape
    torch.testing.assert_close(teacher_img.allowed, student_img.allowed)


def test_skip_layers_and_terms() -> None:
    assert distilled_pairs((2, 4, 6, 8), skip_layers=(1, 2)) == [0, 3]
    with pytest.raises(ConfigError, match="skips every pair"):
        distilled_pairs((3, 6), skip_layers=(0, 1))
    with pytest.raises(ConfigError, match="names pairs"):
        distilled_pairs((3, 6), skip_layers=(5,))
    loaded = build_teacher()
    _, batch = _batch(loaded, 2)
    only_mse = distill_loss(
        loaded.model, batch, config=DistillConfig(kl_full=False, kl_img=False, distill_weight=2.0)
    )
    assert set(only_mse.terms) == {"loss", "distill", "mse_img"}
    assert only_mse.terms["loss"] == pytest.approx(2.0 * only_mse.terms["distill"], rel=1e-6)


def test_lm_loss_is_added_when_the_llm_trains() -> None:
    loaded = build_teacher()
    trainable_parameters(loaded.model, "all")
    _, batch = _batch(loaded, 2)
    output = distill_loss(loaded.model, batch, config=DistillConfig(trainable="all"))
    assert output.terms["lm"] > 0
    assert output.terms["loss"] == pytest.approx(
        output.terms["distill"] + output.terms["lm"], rel=1e-5
    )
    output.loss.backward()
    assert loaded.model.llm.model.layers[0].mlp.up_proj.weight.grad is not None


def test_topk_recall() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    valid = torch.ones_like(scores, dtype=torch.bool)
    assert topk_recall(scores, scores, valid, fraction=0.25).item() == 1.0
    assert topk_recall(scores, -scores, valid, fraction=0.25).item() == 0.0
    shifted = torch.tensor([[4.0, 0.0, 3.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    assert topk_recall(scores, shifted, valid, fraction=0.25).item() == 0.5
    # padding keys never count; k = ceil(0.25 * 5) = 2
    valid[0, 5:] = False
    mask = top_fraction_mask(-scores, valid, fraction=0.25)
    assert mask[0].tolist() == [False, False, False, True, True, False, False, False]
    empty = torch.zeros_like(valid)
    assert torch.isnan(topk_recall(scores, scores, empty, fraction=0.25)).all()
    with pytest.raises(ValueError):
        topk_recall(scores, scores, valid, fraction=0.0)
