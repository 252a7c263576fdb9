"""Benchmark: accuracy of a trained model per preset on held-out world scenes, with its cost.

Model: ``--model`` (default ``world``, the packaged trained world model). Scenes: ``lrs world make``
worlds with seeds never used in training (training draws its scenes from other seed streams, see
``lrs_core.world.train``), of 4,096² and 16,384² px by default, ingested once into Zarr stores
(cached in ``--scratch``, git-ignored).

For each scene size and preset (``thumbnail``, ``grid-4``, ``full``, ``fastv``, ``pdrop``,
``parity``, ``default``, and ``default`` again with the LLM's own attention and with a random
scorer in place of the RFM, ``--scorers``) the engine answers every question
(``--max-questions`` per scene caps it) with a shared feature cache per preset, and the script
reports, per preset:

* accuracy overall, per category, and on questions about objects under 32 px (exact lowercase match,
  the LRS-VQA rule without WordNet: world answers are single vocabulary words);
* mean vision tiles encoded, LLM prefill tokens, FLOPs (the engine's accounting) and seconds per
  question;
* evidence coverage (``lrs eval focus``): the mean share of the asked object's hbox covered by the
  final evidence tiles, and the share of answerable questions with full coverage (>= 0.999).

Where running a preset would exceed ``--max-prefill`` tokens (``full``/``fastv``/``pdrop`` at the
finest level of a 16k scene), its cost comes from ``FocusEngine.plan`` (a dry run) and its
accuracy is not measured (``planned``). Same process, same inputs, one warm-up question first.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/accuracy.py [--sizes 4096] [--scenes 2]
[--presets default,thumbnail] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import git_commit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from lrs_core.batch.ask import load_engine  # noqa: E402
from lrs_core.evaluation.focus_metrics import question_focus  # noqa: E402
from lrs_core.focus.engine import FocusEngine  # noqa: E402
from lrs_core.focus.features import FeatureCache  # noqa: E402
from lrs_core.focus.scorers import LlmAttentionScorer, RandomScorer  # noqa: E402
from lrs_core.raster.ingest import ingest_scene  # noqa: E402
from lrs_core.raster.pyramid import open_pyramid  # noqa: E402
from lrs_core.world.make import make_world  # noqa: E402
from lrs_core.world.train import SMALL_OBJECT_PX  # noqa: E402

PRESETS = ("thumbnail", "grid-4", "full", "fastv", "pdrop", "parity", "default")
#: World seed of the benchmark scenes (training never draws world-make seeds).
HELDOUT_SEED = 1000
FULL_COVERAGE = 0.999


def _prepare(scratch: Path, size: int, scenes: int, seed: int) -> tuple[Any, list[Path]]:
    root = scratch / f"world_{size}_seed{seed}_n{scenes}"
    if (root / "LRS_VQA_merged.jsonl").is_file():
        from lrs_core.evaluation.lrs_vqa import read_questions
        from lrs_core.world.generate import generate_scene
        from lrs_core.world.make import WorldSet, scene_seed

        images = tuple(f"LRS_VQA/image/world_{i:03d}.tif" for i in range(scenes))
        world = WorldSet(
            data_root=root,
            question_file=root / "LRS_VQA_merged.jsonl",
            scenes=tuple(
                generate_scene(scene_seed(seed, i), size_wh=(size, size)) for i in range(scenes)
            ),
            images=images,
            questions=tuple(read_questions(root / "LRS_VQA_merged.jsonl")),
        )
    else:
        world = make_world(root, seed=seed, n_scenes=scenes, size_px=size)
    stores = []
    for image in world.images:
        result = ingest_scene(root / image, scratch / "stores" / f"{size}_seed{seed}")
        if result.store is None:
            raise RuntimeError(f"ingesting {root / image} wrote no store")
        stores.append(Path(result.store))
    return world, stores


def _spread(questions: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` questions, taken round-robin over the categories (file order within)."""
    by_category: dict[str, list[Any]] = defaultdict(list)
    for question in questions:
        by_category[question.category].append(question)
    picked: list[Any] = []
    while len(picked) < limit and any(by_category.values()):
        for category in list(by_category):
            if by_category[category] and len(picked) < limit:
                picked.append(by_category[category].pop(0))
    return picked


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row["correct"] is None:
            continue
        by_cat[row["category"]].append(row["correct"])
        by_cat["overall"].append(row["correct"])
        if row["small"]:
            by_cat["small objects"].append(row["correct"])
    coverage = [row["coverage"] for row in rows if row["coverage"] is not None]
    return {
        "n": len(rows),
        "planned": any(row["planned"] for row in rows),
        "accuracy": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_cat.items())},
        "vision_tiles": float(np.mean([r["tiles"] for r in rows])),
        "prefill_tokens": float(np.mean([r["prefill"] for r in rows])),
        "tflops": float(np.mean([r["flops"] for r in rows])) / 1e12,
        "seconds": float(np.mean([r["seconds"] for r in rows])),
        "coverage_mean": round(float(np.mean(coverage)), 4) if coverage else None,
        "coverage_full_share": (
            round(float(np.mean([c >= FULL_COVERAGE for c in coverage])), 4) if coverage else None
        ),
    }


def _engine(model: str, preset: str, scorer: str) -> FocusEngine:
    """The preset's engine with the RFM (``rfm``), the LLM's attention (``llm``) or ``random``."""
    engine = load_engine(model, preset=preset, feature_cache=FeatureCache())
    if scorer == "rfm":
        return engine
    chosen = LlmAttentionScorer(engine.loaded) if scorer == "llm" else RandomScorer(seed=0)
    return FocusEngine(
        engine.loaded, config=engine.config, feature_cache=engine.feature_cache, scorer=chosen
    )


def run_preset(
    model: str,
    preset: str,
    world: Any,
    stores: list[Path],
    *,
    max_questions: int,
    max_prefill: int,
    scorer: str = "rfm",
) -> dict[str, Any]:
    engine = _engine(model, preset, scorer)
    rows: list[dict[str, Any]] = []
    warmed = False
    for image, store in zip(world.images, stores, strict=True):
        pyramid = open_pyramid(store)
        questions = _spread([q for q in world.questions if q.image == image], max_questions)
        for question in questions:
            plan = engine.plan(pyramid, question.text)
            planned = plan.accounting.llm_prefill_tokens > max_prefill
            if planned:
                record = plan
            else:
                if not warmed:
                    engine.answer(pyramid, question.text)
                    warmed = True
                start = time.perf_counter()
                record = engine.answer(pyramid, question.text, question_id=question.question_id)
                seconds = time.perf_counter() - start
            acc = record.accounting
            focus = None if planned else question_focus(question, record)
            small = question.hbox is not None and (
                max(question.hbox[2] - question.hbox[0], question.hbox[3] - question.hbox[1])
                < SMALL_OBJECT_PX
            )
            rows.append(
                {
                    "category": question.category,
                    "correct": None
                    if planned
                    else record.answer.strip().lower() == question.ground_truth,
                    "small": small,
                    "planned": planned,
                    "tiles": acc.vision_tiles_encoded + acc.vision_tiles_cached,
                    "prefill": acc.llm_prefill_tokens,
                    "flops": acc.flops.total_flops,
                    "seconds": float("nan") if planned else seconds,
                    "coverage": None if focus is None else focus.box_coverage,
                }
            )
    return _summary(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="world")
    parser.add_argument("--sizes", default="4096,16384")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--max-questions", type=int, default=40)
    parser.add_argument("--max-prefill", type=int, default=6000)
    parser.add_argument("--scratch", type=Path, default=ROOT / "benchmarks" / "_scratch")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--scorers",
        default="rfm,llm,random",
        help="token scorers of the default preset: rfm (the model's RFM), llm (the LLM's own "
        "attention at the RFM's layer), random (seeded); other presets use the RFM",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {
        "commit": git_commit(),
        "machine": f"{platform.machine()} {platform.processor()} torch {torch.__version__} "
        f"threads {torch.get_num_threads()}",
        "model": args.model,
        "seed": args.seed,
        "sizes": {},
    }
    for size in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        world, stores = _prepare(args.scratch, size, args.scenes, args.seed)
        print(
            f"# {size} px: {len(world.questions)} questions, prepared in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        per_preset = {}
        runs = [(preset, "rfm") for preset in args.presets.split(",")]
        if "default" in args.presets.split(","):
            runs += [("default", s) for s in args.scorers.split(",") if s != "rfm"]
        for preset, scorer in runs:
            start = time.perf_counter()
            name = preset if scorer == "rfm" else f"{preset}/{scorer}"
            per_preset[name] = run_preset(
                args.model,
                preset,
                world,
                stores,
                max_questions=args.max_questions,
                max_prefill=args.max_prefill,
                scorer=scorer,
            )
            summary = per_preset[name]
            print(
                f"{size} {name:15s} acc {summary['accuracy'].get('overall')} small "
                f"{summary['accuracy'].get('small objects')} tiles {summary['vision_tiles']:.1f} "
                f"prefill {summary['prefill_tokens']:.0f} TFLOPs {summary['tflops']:.4f} "
                f"s/q {summary['seconds']:.3f} coverage {summary['coverage_mean']} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        results["sizes"][str(size)] = per_preset
    text = json.dumps(results, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
