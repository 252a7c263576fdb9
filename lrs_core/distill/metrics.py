"""Agreement metrics between the teacher's (LLM) and the student's (RFM) attention rows."""

from __future__ import annotations

import math

import torch


def top_fraction_mask(
    scores: torch.Tensor, valid: torch.Tensor, *, fraction: float
) -> torch.Tensor:
    """Return which valid keys are in each row's top ``ceil(fraction * n_valid)``.

    Ties are broken by key index (the lower index wins), so the result is deterministic.

    Args:
        scores: float (N, K); larger is more attended.
        valid: bool (N, K); keys that count (padding False).
        fraction: share of the valid keys to mark, in (0, 1].

    Returns:
        bool (N, K); exactly ``ceil(fraction * n_valid)`` True entries per row with a valid key.
    """
    n_valid = valid.sum(dim=-1)
    k = torch.clamp(torch.ceil(n_valid.float() * fraction), min=1).long()
    masked = scores.float().masked_fill(~valid, float("-inf"))
    order = torch.argsort(masked, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < k[:, None]) & valid


def topk_recall(
    teacher: torch.Tensor, student: torch.Tensor, valid: torch.Tensor, *, fraction: float
) -> torch.Tensor:
    """Recall of the teacher's top vision tokens within the student's top tokens, per row.

    With ``k = ceil(fraction * n_valid)``: ``|top_k(teacher) & top_k(student)| / k``. Chance level
    (a student unrelated to the teacher) is about ``fraction``; 1 is perfect agreement.

    Args:
        teacher: float (N, K); teacher attention over the vision tokens (probabilities or logits).
        student: float (N, K); the student's, same keys.
        valid: bool (N, K); keys that count.
        fraction: share of the valid keys, in (0, 1] (0.25 in the issue and spec §5.4).

    Returns:
        float32 (N,); NaN for rows without a valid key.
    """
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"fraction={fraction} is outside (0, 1]")
    if teacher.shape != student.shape or teacher.shape != valid.shape or teacher.ndim != 2:
        raise ValueError(
            f"teacher {tuple(teacher.shape)}, student {tuple(student.shape)} and valid "
            f"{tuple(valid.shape)} must be the same (N, K) shape"
        )
    top_teacher = top_fraction_mask(teacher, valid, fraction=fraction)
    top_student = top_fraction_mask(student, valid, fraction=fraction)
    hits = (top_teacher & top_student).sum(dim=-1).float()
    size = top_teacher.sum(dim=-1).float()
    recall = hits / size.clamp(min=1)
    return recall.masked_fill(valid.sum(dim=-1) == 0, float("nan"))
