"""Cost of exact attention rows relative to one SDPA prefill, against eager output_attentions.

Model: the random ~220M-parameter benchmark VLM's parts — a 12-layer, 768-wide Llama-style LLM
(12 heads, SwiGLU 2048, vocab 32000) and, for the parameter count, a ViT-B/14 CLIP tower at 336 px
with an mlp2x projector (built, not run: the measured quantity is LLM-side). Input:
``--text-before`` text tokens, ``--vision-tokens`` vision tokens, ``--text-after`` text tokens
(random embeddings).
Query: the last token; keys: the vision tokens; layer ``--layer``.

Measured in one process, on the same inputs, after one warm-up call each, best of ``--repeats``
rounds; each round runs every variant once, so drifting machine load hits them alike:

* ``sdpa``: one SDPA prefill (LM head on the last token, as ``generate()`` does) — the baseline;
* ``sdpa+recorder``: the same prefill inside :class:`AttentionRowRecorder` (overhead = difference);
* ``recorder work alone``: entering/leaving the recorder and its row computation on q/k of the real
  shapes (the part of the difference that is not noise);
* ``rows_from_hidden``: :func:`attention_rows_from_hidden` on the stored hidden state entering the
  layer (renormalised over the keys, and the full-row flavour);
* ``eager+output_attentions``: the conventional way to get the rows (all layers' full matrices).

Peak memory: CUDA ``max_memory_allocated`` on GPU; on CPU the peak resident-set growth above the
level before the call, sampled every 5 ms (approximate).

Run: ``.venv/bin/python benchmarks/attention_rows.py`` (``--help`` for options).
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
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lrs_core.models.attention_rows import AttentionRowRecorder, attention_rows_from_hidden
from lrs_core.models.flops import count_flops, dims_from_configs


def llm_config(vocab: int) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=vocab,
        max_position_embeddings=16384,
        attn_implementation="sdpa",
    )


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=336,
        patch_size=14,
    )


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, int]:
    """Wall time (s) and peak memory growth (bytes) of one call."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    gc.collect()
    return seconds, memory.peak_bytes


def measure_rounds(
    variants: dict[str, Callable[[], Any]], *, repeats: int, device: torch.device
) -> dict[str, tuple[float, int]]:
    """Best time and largest peak per variant over interleaved rounds, after one warm-up each."""
    for fn in variants.values():
        fn()
    best = {name: (float("inf"), 0) for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            seconds, peak = timed(fn, device)
            best[name] = (min(best[name][0], seconds), max(best[name][1], peak))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision-tokens", type=int, default=2300)
    parser.add_argument("--text-before", type=int, default=20)
    parser.add_argument("--text-after", type=int, default=20)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-repeats", type=int, default=1)
    parser.add_argument("--skip-eager", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    llm = LlamaForCausalLM(llm_config(args.vocab)).to(device=device, dtype=dtype).eval()
    tower = CLIPVisionModel(vision_config())
    projector = torch.nn.Sequential(
        torch.nn.Linear(768, 768), torch.nn.GELU(), torch.nn.Linear(768, 768)
    )
    n_llm = sum(p.numel() for p in llm.parameters())
    n_vision = sum(p.numel() for p in tower.parameters()) + sum(
        p.numel() for p in projector.parameters()
    )
    del tower, projector

    length = args.text_before + args.vision_tokens + args.text_after
    x = torch.randn(1, length, 768, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    positions = torch.arange(length, device=device)[None]
    query = torch.tensor([[length - 1]], device=device)
    keys = torch.arange(args.text_before, args.text_before + args.vision_tokens, device=device)[
        None
    ]

    print(
        f"device: {device} ({platform.processor() or platform.machine()}), dtype {args.dtype}, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"transformers {transformers.__version__}, commit {git_commit()}"
    )
    print(
        f"model: LLM {n_llm / 1e6:.1f}M + ViT-B/14@336 tower+projector {n_vision / 1e6:.1f}M "
        f"= {(n_llm + n_vision) / 1e6:.1f}M parameters"
    )
    print(
        f"sequence: {length} tokens ({args.vision_tokens} vision), layer {args.layer}, "
        f"1 query row x {args.vision_tokens} keys; "
        f"best of {args.repeats} interleaved rounds after 1 warm-up"
    )

    with torch.no_grad():
        hidden = llm(inputs_embeds=x, output_hidden_states=True).hidden_states[args.layer]

    def sdpa() -> None:
        with torch.no_grad():
            llm(inputs_embeds=x, logits_to_keep=1)

    recorded: dict[str, Any] = {}

    def sdpa_with_recorder() -> None:
        with AttentionRowRecorder(
            llm, layers=[args.layer], query_positions=query, key_positions=keys
        ) as recorder:
            with torch.no_grad():
                llm(inputs_embeds=x, logits_to_keep=1)
        recorded["rows"] = recorder.rows[args.layer]

    def rows(renormalize: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                recorded[f"hidden_{renormalize}"] = attention_rows_from_hidden(
                    llm.model.layers[args.layer],
                    hidden,
                    position_ids=positions,
                    rotary_emb=llm.model.rotary_emb,
                    query_positions=query,
                    key_positions=keys,
                    renormalize_over_keys=renormalize,
                )

        return run

    # the recorder's own work, free of prefill noise: enter/exit plus the row computation on q/k
    # of the real shapes (what its wrapper adds to the kernel call of the recorded layer)
    heads, head_dim = llm.config.num_attention_heads, 768 // llm.config.num_attention_heads
    q_states = torch.randn(1, heads, length, head_dim, device=device, dtype=dtype)
    k_states = torch.randn(1, llm.config.num_key_value_heads, length, head_dim, device=device)
    k_states = k_states.to(dtype)

    def recorder_work() -> None:
        with AttentionRowRecorder(
            llm, layers=[args.layer], query_positions=query, key_positions=keys
        ) as recorder:
            recorder._record(
                llm.model.layers[args.layer].self_attn,
                q_states,
                k_states,
                None,
                {"scaling": head_dim**-0.5},
            )

    results = measure_rounds(
        {
            "sdpa": sdpa,
            "sdpa+recorder": sdpa_with_recorder,
            "recorder work alone": recorder_work,
            "rows_from_hidden (renormalised)": rows(True),
            "rows_from_hidden (full row)": rows(False),
        },
        repeats=args.repeats,
        device=device,
    )
    eager_rows = None
    if not args.skip_eager:
        llm.set_attn_implementation("eager")

        def eager() -> None:
            nonlocal eager_rows
            with torch.no_grad():
                out = llm(inputs_embeds=x, logits_to_keep=1, output_attentions=True)
            eager_rows = out.attentions[args.layer][:, :, -1:, keys[0]].float()
            del out

        results["eager+output_attentions"] = min(
            timed(eager, device) for _ in range(args.eager_repeats)
        )
        llm.set_attn_implementation("sdpa")

    base_time, base_peak = results["sdpa"]
    print(f"\n{'variant':34s} {'time s':>9s} {'/ sdpa':>8s} {'peak GiB':>9s}")
    for name, (seconds, peak) in results.items():
        print(f"{name:34s} {seconds:9.3f} {seconds / base_time:8.3f} {peak / GIB:9.2f}")
    overhead = results["sdpa+recorder"][0] - base_time
    print(
        f"\nrecorder overhead: {overhead:+.3f} s = {100 * overhead / base_time:+.1f}% of a prefill"
    )
    for flavour in ("renormalised", "full row"):
        share = results[f"rows_from_hidden ({flavour})"][0] / base_time
        print(f"rows_from_hidden ({flavour}): {100 * share:.2f}% of a prefill (goal <= 5%)")

    recorder_rows = recorded["rows"].per_head
    hidden_rows = recorded["hidden_True"].per_head
    print(f"\nmax |recorder - rows_from_hidden| = {(recorder_rows - hidden_rows).abs().max():.2e}")
    if eager_rows is not None:
        renormalised = eager_rows / eager_rows.sum(-1, keepdim=True)
        full = recorded["hidden_False"].per_head
        print(
            f"max |rows_from_hidden - eager| (renormalised) = "
            f"{(hidden_rows - renormalised).abs().max():.2e}, (full row) = "
            f"{(full - eager_rows).abs().max():.2e}"
        )

    dims = dims_from_configs(vision_config(), llm.config, rfm_layers=0, projector_in=768)
    prefill = count_flops(dims, vision_tiles=0, prefill_tokens=length).llm_flops
    head_dim = 768 // 12
    row_macs = 768 * 768 + args.vision_tokens * 768 * 768 + 12 * args.vision_tokens * head_dim
    print(
        f"analytic: prefill {prefill / 1e12:.3f} TFLOPs, one renormalised row extraction "
        f"{2 * row_macs / 1e9:.2f} GFLOPs ({100 * 2 * row_macs / prefill:.2f}%)"
    )


if __name__ == "__main__":
    main()
