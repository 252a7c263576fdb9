"""Benchmark: N questions about one scene, answered in one batched LLM pass vs one by one.

``FocusEngine.answer_many`` runs the coarse-to-fine loop per question and then the LLM once over
all questions (left padded; prefill and decode batched). ``FocusEngine.answer`` runs the LLM once
per question. Both share the feature cache, which a warm-up question fills first, so the
comparison isolates the LLM (the RFM passes run per question in both modes).

In one run and one process, alternating the two modes ``--repeats`` times (the best time of each
counts, which damps the load of a shared machine), the script prints per mode the wall time for all
questions, the LLM seconds summed over the records, and the ratio one-by-one / batched; and checks
that both modes give the same answers (greedy decoding).

Model: ``lrs_core.models.tiny.init_tiny(dir, size=...)`` (``tiny`` by default, ``benchmark`` is the
~220M LLaVA-shaped one), built once into ``benchmarks/_scratch/`` (git-ignored), as the scene (a
synthetic GeoTIFF ingested by ``benchmarks/qa.py``'s helpers).

Run: ``.venv/bin/python benchmarks/qa_batch.py [--size tiny|benchmark] [--questions 8]
[--new-tokens 16] [--repeats 2] [--out results.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import qa  # noqa: E402  # benchmarks/ is on sys.path when run as a script

DEFAULT_QUESTIONS = 8
DEFAULT_NEW_TOKENS = 16
DEFAULT_REPEATS = 2
DEFAULT_PRESET = "default"
#: The scene: the quick 1500 x 1200 px scene of benchmarks/qa.py.
SCENE = qa.QUICK_SCENES[0]


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lrs_core.focus.engine import FocusConfig, FocusEngine
    from lrs_core.models.loading.auto import load_model
    from lrs_core.raster.pyramid import open_pyramid

    scratch = Path(args.scratch)
    model_dir = qa.prepare_model(scratch, args.size)
    store = qa.prepare_scene(scratch, *SCENE)
    loaded = load_model(model_dir, device="cpu")
    config = FocusConfig.from_preset(args.preset, max_new_tokens=args.new_tokens)
    engine = FocusEngine(loaded, config=config)
    pyramid = open_pyramid(store)
    questions = [(f"q{i + 1:02d}", qa.QUESTIONS[i % len(qa.QUESTIONS)]) for i in range(args.n)]
    with torch.inference_mode():
        engine.answer(pyramid, "Warm-up: what is in the image?")  # fills the feature cache
    times: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    llm: dict[str, list[float]] = {"one_by_one": [], "batched": []}
    answers: dict[str, list[str]] = {}
    steps: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        alone = [engine.answer(pyramid, text, question_id=qid) for qid, text in questions]
        times["one_by_one"].append(time.perf_counter() - start)
        llm["one_by_one"].append(sum(r.accounting.seconds["llm"] for r in alone))
        start = time.perf_counter()
        many = engine.answer_many(pyramid, questions, batch_size=args.n)
        times["batched"].append(time.perf_counter() - start)
        llm["batched"].append(sum(r.accounting.seconds["llm"] for r in many))
        answers = {"one_by_one": [r.answer for r in alone], "batched": [r.answer for r in many]}
        steps = {
            "one_by_one": [r.accounting.decode_steps for r in alone],
            "batched": [r.accounting.decode_steps for r in many],
        }
    best = {mode: min(values) for mode, values in times.items()}
    best_llm = {mode: min(values) for mode, values in llm.items()}
    return {
        "env": {**qa.describe_env(), "loadavg_1_5_15": list(os.getloadavg())},
        "model": f"{args.size} ({model_dir.name})",
        "scene": f"{SCENE[1]}x{SCENE[2]}",
        "preset": args.preset,
        "questions": args.n,
        "max_new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "seconds": times,
        "llm_seconds": llm,
        "best_seconds": best,
        "best_llm_seconds": best_llm,
        "ratio_total": best["one_by_one"] / best["batched"],
        "ratio_llm": best_llm["one_by_one"] / best_llm["batched"],
        "same_answers": answers["one_by_one"] == answers["batched"],
        "decode_steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=("tiny", "benchmark"))
    parser.add_argument("--questions", dest="n", type=int, default=DEFAULT_QUESTIONS)
    parser.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--scratch", default=str(qa.DEFAULT_SCRATCH))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1 or args.new_tokens < 1:
        parser.error("--questions, --repeats and --new-tokens must be >= 1")
    result = _run(args)
    env = result["env"]
    print(f"device: {env['device']}; load average {env['loadavg_1_5_15']}; commit {env['commit']}")
    print(
        f"{result['questions']} questions, {result['scene']} scene, model {result['model']}, "
        f"preset {result['preset']}, {result['max_new_tokens']} new tokens, best of "
        f"{result['repeats']}"
    )
    print(f"{'mode':<12} {'total s':>9} {'LLM s':>9}")
    for mode in ("one_by_one", "batched"):
        print(
            f"{mode:<12} {result['best_seconds'][mode]:>9.2f} "
            f"{result['best_llm_seconds'][mode]:>9.2f}"
        )
    print(
        f"ratio one-by-one / batched: total {result['ratio_total']:.2f}x, "
        f"LLM {result['ratio_llm']:.2f}x; same answers: {result['same_answers']}"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
