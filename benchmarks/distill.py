"""RFM distillation training step: our attention-row teacher against eager ``output_attentions``.

Model: the random ~220M-parameter benchmark VLM (``build_tiny(size="benchmark")``: a ViT-B/14 CLIP
tower at 336 px, a 12-layer 768-wide Llama LLM with 12 query / 4 KV heads, RFM list (4, 8) so the
RFM holds copies of LLM layers 3, 4, 8). Input: ``--batch-size`` synthetic samples, each a
thumbnail of 576 tokens and a level grid of ``--level-rows`` x ``--level-cols`` tokens (plus one
newline per row) inside the vicuna_v1 prompt with a one-turn answer (random projected features; the
vision tower is not run, as in training with cached features).

One optimizer step of the RFM (``trainable="rfm"``, AdamW, the default loss: KL over all keys, KL
and MSE over the image tokens at tau=2), in two variants that differ only in the teacher:

* ``ours``: the LLM runs on SDPA only up to the last distilled layer; the teacher logits of the
  query rows are recomputed from the hidden states entering each distilled layer
  (:func:`lrs_core.models.attention_rows.attention_logits_from_hidden`);
* ``eager``: the teacher is the stock LLM decoder (no LM head) run with
  ``attn_implementation="eager"`` and ``output_attentions=True``, which materialises every layer's
  (B, H, L, L) matrix; its query rows are gathered and ``log(p)`` stands in for the logits (exact
  for the KL terms; the MSE term then sees logits shifted by the row's log-sum-exp).

The student (the RFM on SDPA), the loss terms and the optimizer step are the same code in both.
Measured in one process after one warm-up step each, interleaved rounds, best time per variant;
peak memory is the resident-set growth above the level before the step, sampled every 5 ms (CPU)
or ``max_memory_allocated`` (CUDA).

Run: ``.venv/bin/python benchmarks/distill.py --steps 3`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from _common import GIB, PeakMemory, git_commit

from lrs_core.distill.config import DistillConfig
from lrs_core.distill.data import FeatureGridRecord, Turn, build_dataset
from lrs_core.distill.loss import (
    DistillBatch,
    PairLogits,
    distill_loss,
    distilled_pairs,
    loss_from_pairs,
    student_logits,
)
from lrs_core.distill.trainer import trainable_parameters
from lrs_core.models.attention_rows import AttentionLogits
from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.loading.loaded import set_attn_implementation
from lrs_core.models.tiny import build_tiny
from lrs_core.models.vlm import VisionLanguageModel

THUMBNAIL_TOKENS = 576


def eager_pairs(
    model: VisionLanguageModel, batch: DistillBatch, *, pairs: list[int]
) -> list[PairLogits]:
    """Teacher rows from eager ``output_attentions`` (log-probabilities), student as in ours."""
    layer_list = model.config.rfm_llm_layers
    set_attn_implementation(model, "eager")
    try:
        with torch.no_grad():
            out = model.llm.model(
                inputs_embeds=batch.inputs_embeds.detach(),
                attention_mask=batch.attention_mask,
                output_attentions=True,
                use_cache=False,
            )
    finally:
        set_attn_implementation(model, "sdpa")
    students = student_logits(model, batch, pairs=pairs)
    items = []
    for k in pairs:
        probs = out.attentions[layer_list[k]]  # (B, H, L, L)
        heads, length = probs.shape[1], probs.shape[-1]
        rows = probs.gather(
            2, batch.query_positions[:, None, :, None].expand(-1, heads, -1, length)
        ).float()
        allowed = students[k].allowed
        logits = torch.log(rows).masked_fill(~allowed, float("-inf"))
        items.append(
            PairLogits(
                pair=k,
                teacher=AttentionLogits(logits=logits, allowed=allowed),
                student=students[k],
            )
        )
    del out
    return items


def make_batch(
    model: VisionLanguageModel, tokenizer: Any, *, batch_size: int, rows: int, cols: int
) -> DistillBatch:
    generator = torch.Generator().manual_seed(0)
    width = model.hidden_size
    records = [
        FeatureGridRecord(
            sample_id=f"bench-{i}",
            thumbnail_feats=torch.randn(THUMBNAIL_TOKENS, width, generator=generator),
            level_feats=torch.randn(rows, cols, width, generator=generator),
            turns=(Turn("How many ships are in the harbour?", "two"),),
        )
        for i in range(batch_size)
    ]
    dataset = build_dataset(
        records, model=model, tokenizer=tokenizer, family=LlavaFamily(model, tokenizer)
    )
    with torch.no_grad():
        return dataset.collate(model, list(range(batch_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="measured rounds (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--level-rows", type=int, default=24)
    parser.add_argument("--level-cols", type=int, default=36)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer = build_tiny(family="llava", size="benchmark", seed=0)
    model.to(device)
    set_attn_implementation(model, "sdpa")
    n_params = sum(p.numel() for p in model.parameters())
    config = DistillConfig()
    params = [p for _, p in trainable_parameters(model, config.trainable)]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    batch = make_batch(
        model, tokenizer, batch_size=args.batch_size, rows=args.level_rows, cols=args.level_cols
    )
    pairs = distilled_pairs(model.config.rfm_llm_layers, skip_layers=config.skip_layers)

    def step_ours() -> float:
        output = distill_loss(model, batch, config=config)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return output.terms["loss"]

    def step_eager() -> float:
        output = loss_from_pairs(eager_pairs(model, batch, pairs=pairs), batch, config=config)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return output.terms["loss"]

    variants: dict[str, Callable[[], float]] = {"ours": step_ours, "eager": step_eager}
    for fn in variants.values():
        fn()
    best = {name: (float("inf"), 0) for name in variants}
    for _ in range(args.steps):
        for name, fn in variants.items():
            with PeakMemory(device) as memory:
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            gc.collect()
            best[name] = (min(best[name][0], seconds), max(best[name][1], memory.peak_bytes))

    length = int(batch.attention_mask.shape[1])
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), threads "
        f"{torch.get_num_threads()}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; commit {git_commit()}"
    )
    print(
        f"model: {n_params / 1e6:.0f}M parameters, LLM 12 x 768, RFM list "
        f"{list(model.config.rfm_llm_layers)}; batch {args.batch_size} x {length} tokens; "
        f"{args.steps} measured steps each (best of)"
    )
    print(f"{'variant':<8} {'step s':>8} {'steps/s':>8} {'peak GiB':>9}")
    for name, (seconds, peak) in best.items():
        print(f"{name:<8} {seconds:>8.3f} {1 / seconds:>8.2f} {peak / GIB:>9.3f}")
    ours, eager = best["ours"], best["eager"]
    print(
        f"ratio eager/ours: time {eager[0] / ours[0]:.2f}x, "
        f"peak memory {eager[1] / max(ours[1], 1):.2f}x"
    )


if __name__ == "__main__":
    main()
