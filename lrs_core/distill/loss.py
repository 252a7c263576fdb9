"""The distillation loss: the LLM's attention rows teach the RFM's (spec §4, fixed per §11.12).

Teacher: for each LLM layer ``L`` in ``llm_layer_list`` the pre-softmax logits ``q . k / sqrt(d)``
of the query rows (the token before each answer span, one per conversation turn) over every key,
recomputed from the hidden state entering layer ``L`` with that layer's own norm, projections and
RoPE (:func:`lrs_core.models.attention_rows.attention_logits_from_hidden`). The LLM itself runs on
SDPA; no ``(H, L, L)`` matrix is ever built. Unlike the reference, the causal and padding masks are
applied (the reference's softmax over all keys includes future tokens and padding, spec §11.12).

Student: the RFM runs on the same input embeddings; after its layer ``k`` the logits of its layer
``k + 1`` (the copy of ``llm_layer_list[k]``) are paired with the teacher's layer
``llm_layer_list[k]``. The image slice (the level tokens, newlines optional) is the same for both.

Per distilled pair ``k`` (``k`` not in ``skip_layers``), averaged over heads and query rows::

    KL_full = KL(softmax(T) || softmax(S))                     over every visible key
    KL_img  = KL(softmax(T_img / tau) || softmax(S_img / tau))   over the image keys
    MSE_img = mean((S_img / tau - T_img / tau) ** 2)             over the image keys
    L_distill = mean of every enabled term of every pair
    loss = distill_weight * L_distill (+ lm_weight * LM cross-entropy when the LLM trains)

Shapes: ``B`` batch, ``L`` sequence length, ``D`` hidden size, ``H`` query heads, ``Q`` query rows
per sample (padded; ``query_mask``), ``N`` image keys per sample (padded; ``image_mask``).
Sequences are right-padded, so RoPE positions are ``0 .. L-1`` for every row; M-RoPE models
(Qwen-VL) carry their (3, B, L) ids in ``DistillBatch.position_ids`` instead, used by teacher and
student alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lrs_core.distill.config import DistillConfig
from lrs_core.distill.metrics import topk_recall
from lrs_core.errors import ConfigError
from lrs_core.models import hf_compat
from lrs_core.models.attention_rows import AttentionLogits, attention_logits_from_hidden
from lrs_core.models.vlm import VisionLanguageModel

#: Finite stand-in for a masked logit inside the loss (exp underflows to 0 in float32), so rows with
#: no visible key give finite values and gradients instead of NaN.
MASKED_LOGIT = -1e9
#: Label value ignored by the LM cross-entropy (the Hugging Face convention).
IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class DistillBatch:
    """One right-padded micro-batch, as the loss needs it.

    Attributes:
        inputs_embeds: float (B, L, D); the LLM input embeddings (padding rows are 0).
        attention_mask: int64 (B, L); 1 real token, 0 padding.
        query_positions: int64 (B, Q); sequence indices of the query rows (token before each
            answer span); padded slots hold 0.
        query_mask: bool (B, Q); True for real query rows.
        image_positions: int64 (B, N); sequence indices of the image (level) tokens; padded 0.
        image_mask: bool (B, N); True for real image tokens.
        labels: int64 (B, L) LM targets (answer token ids, ``-100`` elsewhere) or None.
        position_ids: int64 (3, B, L) M-RoPE ids of every slot (padding 0), or None for plain
            RoPE at ``0 .. L-1``.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    query_positions: torch.Tensor
    query_mask: torch.Tensor
    image_positions: torch.Tensor
    image_mask: torch.Tensor
    labels: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> DistillBatch:
        """Return the batch on ``device``."""
        return DistillBatch(
            inputs_embeds=self.inputs_embeds.to(device),
            attention_mask=self.attention_mask.to(device),
            query_positions=self.query_positions.to(device),
            query_mask=self.query_mask.to(device),
            image_positions=self.image_positions.to(device),
            image_mask=self.image_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            position_ids=None if self.position_ids is None else self.position_ids.to(device),
        )


@dataclass(frozen=True, eq=False)
class DistillOutput:
    """The loss of one micro-batch and what the trainer logs.

    Attributes:
        loss: float32 scalar with a graph (``distill_weight * distill + lm_weight * lm``).
        terms: detached floats: ``loss``, ``distill``, and each enabled term (``kl_full``,
            ``kl_img``, ``mse_img``, averaged over pairs), ``lm`` when the LLM trains.
        topk_recall: float32 (R,); recall of the teacher's top vision tokens within the
            student's, for every real query row of the batch, at the last distilled pair.
    """

    loss: torch.Tensor
    terms: dict[str, float]
    topk_recall: torch.Tensor


@dataclass(frozen=True, eq=False)
class PairLogits:
    """Teacher and student logits of one distilled pair over every key of the sequence.

    Attributes:
        pair: index ``k`` into ``llm_layer_list``.
        teacher: logits (B, H, Q, L) of LLM layer ``llm_layer_list[k]`` (no graph).
        student: logits (B, H, Q, L) of RFM layer ``k + 1`` (graph to the RFM).
    """

    pair: int
    teacher: AttentionLogits
    student: AttentionLogits


def distilled_pairs(llm_layer_list: Sequence[int], *, skip_layers: Sequence[int]) -> list[int]:
    """Return the pair indices ``k`` that are distilled.

    Raises:
        ConfigError: ``skip_layers`` names a pair the list does not have, or skips every pair.
    """
    n_pairs = len(llm_layer_list)
    bad = [k for k in skip_layers if k >= n_pairs]
    if bad:
        raise ConfigError(
            f"skip_layers={list(skip_layers)} names pairs {bad} but llm_layer_list="
            f"{list(llm_layer_list)} has pairs 0..{n_pairs - 1}; drop them"
        )
    pairs = [k for k in range(n_pairs) if k not in set(skip_layers)]
    if not pairs:
        raise ConfigError(
            f"skip_layers={list(skip_layers)} skips every pair of llm_layer_list="
            f"{list(llm_layer_list)}; nothing would be distilled"
        )
    return pairs


def _all_keys(batch: DistillBatch) -> torch.Tensor:
    size, length = batch.attention_mask.shape
    return torch.arange(length, device=batch.attention_mask.device).expand(size, -1)


def _position_ids(batch: DistillBatch) -> torch.Tensor:
    if batch.position_ids is not None:
        return batch.position_ids
    return _all_keys(batch)


def _mask_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Ids for the mask builder: none for M-RoPE ids (the 2-D mask rules, as in stock Qwen-VL).

    M-RoPE ids repeat and jump, so they must never be read as packed sequences.
    """
    return None if position_ids.ndim == 3 else position_ids


def teacher_hidden_states(
    model: VisionLanguageModel,
    batch: DistillBatch,
    *,
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Hidden states entering the given LLM layers, from a truncated SDPA forward (no graph).

    Only LLM layers ``0 .. max(layers) - 1`` run; the LM head never does.

    Returns:
        {layer index: float (B, L, D)}.
    """
    inner: Any = model.llm.model  # stock decoder, untyped upstream
    embeds = batch.inputs_embeds.detach()
    position_ids = _position_ids(batch)
    mask = hf_compat.causal_mask(
        model.llm.config,
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        cache=None,
        position_ids=_mask_position_ids(position_ids),
    )
    position_embeddings = inner.rotary_emb(embeds, position_ids)
    wanted = set(layers)
    out: dict[int, torch.Tensor] = {}
    hidden = embeds
    with torch.no_grad():
        for index in range(max(wanted) + 1):
            if index in wanted:
                out[index] = hidden
            if index == max(wanted):
                break
            hidden = inner.layers[index](
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
    return out


def teacher_logits(
    model: VisionLanguageModel,
    batch: DistillBatch,
    hidden: dict[int, torch.Tensor],
    *,
    layer: int,
) -> AttentionLogits:
    """Masked logits (B, H, Q, L) of LLM layer ``layer`` for the batch's query rows (no graph)."""
    inner: Any = model.llm.model
    with torch.no_grad():
        return attention_logits_from_hidden(
            inner.layers[layer],
            hidden[layer].detach(),
            position_ids=_position_ids(batch),
            rotary_emb=inner.rotary_emb,
            query_positions=batch.query_positions,
            key_positions=_all_keys(batch),
            sequence_mask=batch.attention_mask.bool(),
        )


def student_logits(
    model: VisionLanguageModel,
    batch: DistillBatch,
    *,
    pairs: Sequence[int],
) -> dict[int, AttentionLogits]:
    """Masked logits (B, H, Q, L) of RFM layer ``k + 1`` after RFM layers ``0..k``, per pair k.

    RFM layers run on SDPA over the whole sequence; only the query rows' logits are recomputed
    (no eager attention). Layers after the last requested pair never run.
    """
    rfm: Any = model.rfm
    embeds = batch.inputs_embeds
    position_ids = _position_ids(batch)
    mask = hf_compat.causal_mask(
        rfm.config,
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        cache=None,
        position_ids=_mask_position_ids(position_ids),
    )
    position_embeddings = rfm.rotary_emb(embeds, position_ids)
    wanted = set(pairs)
    out: dict[int, AttentionLogits] = {}
    hidden = embeds
    for k in range(max(wanted) + 1):
        hidden = rfm.layers[k](
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
        )
        if k in wanted:
            out[k] = attention_logits_from_hidden(
                rfm.layers[k + 1],
                hidden,
                position_ids=position_ids,
                rotary_emb=rfm.rotary_emb,
                query_positions=batch.query_positions,
                key_positions=_all_keys(batch),
                sequence_mask=batch.attention_mask.bool(),
            )
    return out


def image_slice(logits: AttentionLogits, batch: DistillBatch) -> AttentionLogits:
    """Return the logits over the batch's image keys: (B, H, Q, N), padded keys not allowed."""
    size, heads, queries, _ = logits.logits.shape
    index = batch.image_positions[:, None, None, :]
    values = logits.logits.gather(-1, index.expand(size, heads, queries, -1))
    allowed = logits.allowed.gather(-1, index.expand(size, 1, queries, -1))
    allowed = allowed & batch.image_mask[:, None, None, :]
    return AttentionLogits(logits=values.masked_fill(~allowed, float("-inf")), allowed=allowed)


def _row_weights(allowed: torch.Tensor, query_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Return float (B, H, Q): 1 for real query rows with a visible key, normalised to sum 1."""
    rows = (query_mask[:, None, :] & allowed.any(dim=-1)).expand(-1, heads, -1).float()
    return rows / rows.sum().clamp(min=1.0)


def kl_divergence(
    teacher: AttentionLogits,
    student: AttentionLogits,
    *,
    query_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over real rows and heads of ``KL(softmax(T / tau) || softmax(S / tau))`` (scalar).

    Masked keys (``allowed`` False) take no probability in either distribution.
    """
    allowed = teacher.allowed & student.allowed
    t = torch.where(allowed, teacher.logits, MASKED_LOGIT) / temperature
    s = torch.where(allowed, student.logits, MASKED_LOGIT) / temperature
    log_p = F.log_softmax(t.float(), dim=-1)
    log_q = F.log_softmax(s.float(), dim=-1)
    per_key = torch.where(allowed, log_p.exp() * (log_p - log_q), 0.0)
    per_row = per_key.sum(dim=-1)  # (B, H, Q)
    weights = _row_weights(allowed, query_mask, per_row.shape[1])
    return (per_row * weights).sum()


def logit_mse(
    teacher: AttentionLogits,
    student: AttentionLogits,
    *,
    query_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean of ``(S / tau - T / tau) ** 2`` over allowed keys of real query rows (scalar)."""
    allowed = teacher.allowed & student.allowed & query_mask[:, None, :, None]
    diff = torch.where(allowed, student.logits - teacher.logits, 0.0).float() / temperature
    count = allowed.expand_as(diff).sum().clamp(min=1)
    return (diff**2).sum() / count


def image_attention(logits: AttentionLogits) -> torch.Tensor:
    """Head-mean softmax over the image keys (the RFM's score, spec §3): float32 (B, Q, N)."""
    probs = torch.softmax(torch.where(logits.allowed, logits.logits, MASKED_LOGIT).float(), -1)
    return torch.where(logits.allowed, probs, 0.0).mean(dim=1)


def batch_topk_recall(
    teacher_img: AttentionLogits,
    student_img: AttentionLogits,
    batch: DistillBatch,
    *,
    fraction: float,
) -> torch.Tensor:
    """Recall of teacher top vision tokens within the student's, per real query row: float (R,)."""
    with torch.no_grad():
        teacher = image_attention(teacher_img)  # (B, Q, N)
        student = image_attention(student_img)
        valid = teacher_img.allowed[:, 0]  # (B, Q, N)
        rows = batch.query_mask & valid.any(dim=-1)
        return topk_recall(teacher[rows], student[rows], valid[rows], fraction=fraction)


def lm_loss(model: VisionLanguageModel, batch: DistillBatch) -> torch.Tensor:
    """LM cross-entropy of the answer tokens (the LLM's full forward, with a graph)."""
    if batch.labels is None:
        raise ConfigError("the LLM trains (trainable='all') but the batch carries no labels")
    if batch.position_ids is not None:
        raise ConfigError(
            "training the LLM (trainable='all') is not supported on M-RoPE (Qwen-VL) models; "
            "use trainable='rfm'"
        )
    output = model.llm(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
        use_cache=False,
    )
    loss: torch.Tensor = output.loss
    return loss


def pair_logits(
    model: VisionLanguageModel,
    batch: DistillBatch,
    *,
    llm_layer_list: Sequence[int],
    pairs: Sequence[int],
) -> list[PairLogits]:
    """Teacher and student logits of every distilled pair (teacher without a graph)."""
    teacher_layers = [llm_layer_list[k] for k in pairs]
    hidden = teacher_hidden_states(model, batch, layers=teacher_layers)
    students = student_logits(model, batch, pairs=pairs)
    return [
        PairLogits(
            pair=k,
            teacher=teacher_logits(model, batch, hidden, layer=llm_layer_list[k]),
            student=students[k],
        )
        for k in pairs
    ]


def loss_from_pairs(
    items: Sequence[PairLogits],
    batch: DistillBatch,
    *,
    config: DistillConfig,
) -> DistillOutput:
    """Return the distillation loss of teacher/student logits already computed (no LM term).

    Args:
        items: the distilled pairs, in ascending ``pair`` order (the last one gives the recall).
        batch: the micro-batch the logits belong to.
        config: loss terms, temperature, weight and top-k fraction.
    """
    tau = config.temperature
    sums: dict[str, list[torch.Tensor]] = {"kl_full": [], "kl_img": [], "mse_img": []}
    recall = torch.zeros(0)
    for item in items:
        teacher_img = image_slice(item.teacher, batch)
        student_img = image_slice(item.student, batch)
        if config.kl_full:
            sums["kl_full"].append(
                kl_divergence(item.teacher, item.student, query_mask=batch.query_mask)
            )
        if config.kl_img:
            sums["kl_img"].append(
                kl_divergence(
                    teacher_img, student_img, query_mask=batch.query_mask, temperature=tau
                )
            )
        if config.mse_img:
            sums["mse_img"].append(
                logit_mse(teacher_img, student_img, query_mask=batch.query_mask, temperature=tau)
            )
        if item is items[-1]:
            recall = batch_topk_recall(
                teacher_img, student_img, batch, fraction=config.topk_fraction
            )
    collected = [term for values in sums.values() for term in values]
    distill = torch.stack(collected).mean()
    loss = config.distill_weight * distill
    terms = {"distill": float(distill.detach())}
    for name, values in sums.items():
        if values:
            terms[name] = float(torch.stack(values).detach().mean())
    terms["loss"] = float(loss.detach())
    return DistillOutput(loss=loss, terms=terms, topk_recall=recall)


def distill_loss(
    model: VisionLanguageModel,
    batch: DistillBatch,
    *,
    config: DistillConfig,
) -> DistillOutput:
    """Return the loss of one micro-batch (spec §4 with the §11.12 fixes; see module docstring).

    Args:
        model: the VLM; ``model.config.rfm_llm_layers`` is the layer list.
        batch: the micro-batch (on the model's device).
        config: loss terms, temperature, weights, skipped pairs, top-k fraction.

    Returns:
        The :class:`DistillOutput`.

    Raises:
        ConfigError: ``skip_layers`` is incompatible with the model's layer list.
    """
    llm_layer_list = model.config.rfm_llm_layers
    pairs = distilled_pairs(llm_layer_list, skip_layers=config.skip_layers)
    items = pair_logits(model, batch, llm_layer_list=llm_layer_list, pairs=pairs)
    output = loss_from_pairs(items, batch, config=config)
    if not config.trains_llm:
        return output
    lm = lm_loss(model, batch)
    loss = output.loss + config.lm_weight * lm
    terms = {**output.terms, "lm": float(lm.detach()), "loss": float(loss.detach())}
    return DistillOutput(loss=loss, terms=terms, topk_recall=output.topk_recall)
