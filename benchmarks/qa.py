"""Benchmark: cost of answering questions about big scenes, per preset, against ``full``.

Model: the random ~220M-parameter LLaVA-shaped benchmark model
(``lrs_core.models.tiny.init_tiny(dir, size="benchmark")``: a ViT-B/14 tower at 336 px and a
12-layer, 768-wide Llama), built once into ``benchmarks/_scratch/`` (git-ignored). Scenes:
synthetic RGB GeoTIFFs of 4000 x 4000 and 27328 x 25207 px (field blocks, roads and planted bright
"vehicles"/"buildings"), written window by window and ingested with
``lrs_core.raster.ingest.ingest_scene``; stores are cached in the scratch folder, so reruns skip
both steps.

For every scene and preset (``thumbnail``, ``full``, ``fastv``, ``parity``, ``default``) a fresh
subprocess loads the model, warms it up (one thumbnail question on a separate feature cache) and
answers the first question on a cold feature cache; ``default`` then answers the other questions
on the same scene with the same engine (feature reuse: 2nd and 10th question times). Reported per
row: wall time of one question, tiles encoded, LLM prefill tokens, FLOPs of the benchmark model
(the engine's own accounting) and of the real 7B configuration (Qwen2-7B + CLIP-L/336,
``KNOWN_DIMS["qwen2-7b"]``) with the same tiles and token counts, ratios against ``full``, and peak
RSS of that subprocess (model weights included).

Where running a preset is infeasible here (its plan exceeds ``--max-measured-tiles`` tiles or
``--max-measured-prefill`` prefill tokens, e.g. ``full``/``fastv`` at the finest level of the 27k
scene: thousands of tiles), its figures come from ``FocusEngine.plan`` (a dry run that counts
tiles, tokens and FLOPs without running a model) and the row says ``planned``; plans of
``thumbnail``/``full``/``fastv`` are exact, plans of ``default``/``parity`` are upper bounds.

Goals (issue 4): ``default`` <= 15% of ``full``'s FLOPs; the 10th question on a scene <= 40% of the
first question's time; peak memory of ``default`` on the 27k scene within 1.5x of the 4k scene.

Run: ``.venv/bin/python benchmarks/qa.py [--quick] [--out results.json]``. ``--quick`` is a smoke
test (< 2 min on an idle machine): the tiny model, 1500 x 1200 and 5000 x 4000 px scenes, 3
questions, 4 new tokens, one subprocess per scene (so its peak RSS covers every preset).
``--prepare-only`` builds the model and the scenes and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCRATCH = ROOT / "benchmarks" / "_scratch"
PRESETS = ("thumbnail", "full", "fastv", "parity", "default")
REUSE_PRESET = "default"
BASELINE_PRESET = "full"
#: Scenes (name, width, height) of the full run and of --quick.
SCENES = (("4k", 4000, 4000), ("27k", 27328, 25207))
QUICK_SCENES = (("q1k", 1500, 1200), ("q5k", 5000, 4000))
QUESTIONS = (
    "How many vehicles are parked along the road?",
    "What is the color of the largest building?",
    "Is there a bright object in the top left part of the image?",
    "Where is the vehicle closest to the crossroads?",
    "How many buildings are there in the image?",
    "Is the road north of the fields paved?",
    "What color is the roof of the building in the center?",
    "Are there any vehicles on the bottom right road?",
    "Which field is the largest?",
    "Is there a vehicle next to the largest building?",
)
QUICK_QUESTIONS = 3
QUICK_MAX_NEW_TOKENS = 4
#: Feasibility limits of measured runs on this CPU (plans above them are reported as planned).
MAX_MEASURED_TILES = 200
MAX_MEASURED_PREFILL = 24_000
#: Goals of issue 4.
GOAL_FLOP_SHARE = 0.15
GOAL_REUSE_SHARE = 0.40
GOAL_MEMORY_RATIO = 1.5
#: Scene content version: bump to regenerate cached scenes.
SCENE_VERSION = 1
BLOCK_PX = 512
ROWS_PER_WRITE = 1024
FIELD_PX = 384
ROAD_EVERY_PX = 2304
ROAD_WIDTH_PX = 24
OBJECT_EVERY_PX = 997
KIB = 1024
MIB = 2**20
SEVEN_B = "qwen2-7b"
#: A Qwen-VL base for the second 7B column: its tower at 336 px tiles (144 tokens each) and its LLM,
#: counted on the same tiles and token counts as the engine's record (the thumbnail keeps the LLaVA
#: geometry's 576 tokens, so the column is what that model would spend on the same sequence).
QWEN_VL_7B = "qwen2.5-vl-7b"


# -- environment -------------------------------------------------------------------------------


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_env() -> dict[str, str]:
    import torch
    import transformers

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "device": f"{device} ({platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, torch threads {torch.get_num_threads()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": git_commit(),
    }


# -- scenes and model --------------------------------------------------------------------------


def _scene_rows(row0: int, height: int, width: int) -> np.ndarray:
    """RGB uint8 (3, height, width) rows [row0, row0 + height) of the synthetic scene."""
    y = np.arange(row0, row0 + height, dtype=np.int32)[:, None]  # every product < 2**31
    x = np.arange(width, dtype=np.int32)[None, :]
    field = (x // FIELD_PX) * 7919 + (y // FIELD_PX) * 104729  # one flat colour per field
    red = 60 + (field * 37) % 90
    green = 80 + (field * 53) % 110
    blue = 40 + (field * 71) % 60
    road = ((x % ROAD_EVERY_PX) < ROAD_WIDTH_PX) | ((y % ROAD_EVERY_PX) < ROAD_WIDTH_PX)
    # planted objects: a bright 12-24 px "vehicle" and a 40-80 px "building" every ~1000 px
    cell_x, cell_y = x // OBJECT_EVERY_PX, y // OBJECT_EVERY_PX
    local_x, local_y = x % OBJECT_EVERY_PX, y % OBJECT_EVERY_PX
    seed = cell_x * 31 + cell_y * 17
    vehicle = (np.abs(local_x - (100 + seed % 700)) < 6 + seed % 7) & (
        np.abs(local_y - (150 + (seed * 3) % 600)) < 12
    )
    building = (np.abs(local_x - (500 + (seed * 5) % 300)) < 20 + seed % 21) & (
        np.abs(local_y - (600 + (seed * 7) % 300)) < 30 + seed % 11
    )
    rgb = np.stack(np.broadcast_arrays(red, green, blue)).astype(np.uint8)
    rgb[:, road] = 128
    rgb[:, vehicle] = np.array([250, 250, 240], dtype=np.uint8)[:, None]
    rgb[:, building] = np.array([200, 60, 50], dtype=np.uint8)[:, None]
    return rgb


def write_scene(path: Path, width: int, height: int) -> Path:
    """Write the synthetic scene as a tiled deflate GeoTIFF, ``ROWS_PER_WRITE`` rows at a time."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(0.3, 0, 500_000, 0, -0.3, 4_600_000),
        "tiled": True,
        "blockxsize": BLOCK_PX,
        "blockysize": BLOCK_PX,
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, ROWS_PER_WRITE):
            rows = min(ROWS_PER_WRITE, height - row)
            dst.write(_scene_rows(row, rows, width), window=Window(0, row, width, rows))
    tmp.rename(path)
    return path


def prepare_scene(scratch: Path, name: str, width: int, height: int) -> Path:
    """Return the store of a scene, writing and ingesting it only when it is not cached."""
    from lrs_core.errors import LrsError
    from lrs_core.raster.ingest import ingest_scene
    from lrs_core.raster.pyramid import open_pyramid

    scene_id = f"qa-{name}-{width}x{height}-v{SCENE_VERSION}"
    stores = scratch / "stores"
    store = stores / f"{scene_id}.zarr"
    try:
        open_pyramid(store)
        return store
    except LrsError:
        pass
    start = time.perf_counter()
    source = write_scene(scratch / "scenes" / f"{scene_id}.tif", width, height)
    written = time.perf_counter()
    ingest_scene(source, stores, scene_id=scene_id, overwrite=True)
    print(
        f"  scene {name} {width}x{height}: wrote GeoTIFF in {written - start:.0f} s, ingested in "
        f"{time.perf_counter() - written:.0f} s -> {store}",
        flush=True,
    )
    return store


def prepare_model(scratch: Path, size: str) -> Path:
    from lrs_core.models.loading.files import PROJECT_CONFIG_FILE
    from lrs_core.models.tiny import init_tiny

    model_dir = scratch / f"model-{size}"
    if not (model_dir / PROJECT_CONFIG_FILE).exists():  # written last: the model is complete
        start = time.perf_counter()
        init_tiny(model_dir, size=size)  # type: ignore[arg-type]
        print(f"  built the {size} model in {time.perf_counter() - start:.0f} s", flush=True)
    return model_dir


# -- FLOPs of the 7B configuration -------------------------------------------------------------


def seven_b_flops(record: Any, config: str = SEVEN_B) -> dict[str, float]:
    """FLOPs of a 7B configuration (``KNOWN_DIMS[config]``) with this record's tiles and tokens."""
    from lrs_core.models.flops import KNOWN_DIMS, count_flops, count_llm_flops_per_layer
    from lrs_core.models.layer_drop import LayerDropSchedule

    dims = KNOWN_DIMS[config]
    acc = record.accounting
    params = record.preset_params
    run = params.get("run", {})
    vision = count_flops(dims, vision_tiles=acc.vision_tiles_encoded, prefill_tokens=0).vision_flops
    rfm = sum(
        count_flops(dims, vision_tiles=0, prefill_tokens=0, rfm_tokens=int(n)).rfm_flops
        for n in run.get("rfm_tokens", [])
    )
    strategy = params.get("strategy")
    if strategy in ("fastv", "pdrop"):
        layers = dims.llm.layers
        if strategy == "fastv":
            schedule = LayerDropSchedule.fastv(
                layer=params["fastv_layer"], keep_ratio=params["fastv_keep_ratio"]
            )
        else:
            schedule = LayerDropSchedule.pdrop(
                num_layers=layers,
                keep_ratio=params["pdrop_keep_ratio"],
                n_stages=params["pdrop_stages"],
            )
        droppable = acc.vision_tokens_to_llm - (1 if len(acc.tokens_per_level) > 1 else 0)
        per_layer = schedule.tokens_per_layer(
            num_layers=layers, prefill_tokens=acc.llm_prefill_tokens, n_vision=droppable
        )
        llm = count_llm_flops_per_layer(dims, per_layer, decode_steps=acc.decode_steps)
    else:
        llm = count_flops(
            dims,
            vision_tiles=0,
            prefill_tokens=acc.llm_prefill_tokens,
            decode_steps=acc.decode_steps,
        ).llm_flops
    return {"vision": vision, "llm": llm, "rfm": rfm, "total": vision + llm + rfm}


def summarize(record: Any, *, wall_s: float | None) -> dict[str, Any]:
    acc = record.accounting
    return {
        "question_id": record.question_id,
        "planned": bool(acc.planned),
        "wall_s": wall_s,
        "seconds": dict(acc.seconds),
        "tiles_encoded": acc.vision_tiles_encoded,
        "tiles_cached": acc.vision_tiles_cached,
        "tokens_per_level": list(acc.tokens_per_level),
        "vision_tokens_to_llm": acc.vision_tokens_to_llm,
        "llm_prefill_tokens": acc.llm_prefill_tokens,
        "decode_steps": acc.decode_steps,
        "flops": {
            "vision": acc.flops.vision_flops,
            "llm": acc.flops.llm_flops,
            "rfm": acc.flops.rfm_flops,
            "total": acc.flops.total_flops,
        },
        "flops_7b": seven_b_flops(record),
        "flops_qwen_vl_7b": seven_b_flops(record, QWEN_VL_7B),
        "engine_peak_bytes": acc.peak_memory_bytes,
        "stop_reason": record.preset_params.get("run", {}).get("stop_reason"),
        "answer": record.answer,
    }


# -- the worker (one subprocess per scene and preset) ------------------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set of this process (``VmHWM``; unlike ``ru_maxrss`` it does not inherit the
    parent's peak across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Plan, and measure where feasible, each preset of ``job["presets"]`` on one scene."""
    import torch

    from lrs_core.focus.engine import FocusConfig, FocusEngine
    from lrs_core.focus.features import FeatureCache
    from lrs_core.models.loading.auto import load_model
    from lrs_core.raster.pyramid import open_pyramid

    torch.manual_seed(0)
    loaded = load_model(job["model_dir"])
    pyramid = open_pyramid(job["store"])
    overrides = {} if job["max_new_tokens"] is None else {"max_new_tokens": job["max_new_tokens"]}
    questions: list[str] = job["questions"]
    warm = FocusEngine(
        loaded,
        config=FocusConfig.from_preset("thumbnail", max_new_tokens=2),
        feature_cache=FeatureCache(),
    )
    warmed = False
    results: dict[str, Any] = {}
    for preset in job["presets"]:
        engine = FocusEngine(
            loaded,
            config=FocusConfig.from_preset(preset, **overrides),
            feature_cache=FeatureCache(),
        )
        plan = engine.plan(pyramid, questions[0], question_id="q01")
        out: dict[str, Any] = {"plan": summarize(plan, wall_s=None), "questions": []}
        feasible = (
            plan.accounting.vision_tiles_encoded <= job["max_tiles"]
            and plan.accounting.llm_prefill_tokens <= job["max_prefill"]
        )
        if preset in job["measure"] and feasible:
            if not warmed:
                warm.answer(pyramid, "Warm up.", question_id="warmup")
                warmed = True
            n_questions = job["n_questions"] if preset == REUSE_PRESET else 1
            for index, text in enumerate(questions[:n_questions]):
                start = time.perf_counter()
                record = engine.answer(pyramid, text, question_id=f"q{index + 1:02d}")
                out["questions"].append(summarize(record, wall_s=time.perf_counter() - start))
        results[preset] = out
    return {"presets": results, "peak_rss_bytes": peak_rss_bytes()}


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker {job['scene']}/{job['presets']} failed ({proc.returncode}):\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report --------------------------------------------------------------------------------


def _row_of(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one (scene, preset): the first measured question, else the plan."""
    measured = result["questions"]
    row = dict(measured[0] if measured else result["plan"])
    row["mode"] = "measured" if measured else ("planned" if result["plan"] else "?")
    row["peak_rss_bytes"] = result["peak_rss_bytes"] if measured else None
    return row


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}"


def _qwen_vl_cells(row: dict[str, Any], base: dict[str, Any]) -> str:
    """The Qwen2.5-VL-7B TFLOP and ratio cells ("—" for results saved before the column)."""
    if "flops_qwen_vl_7b" not in row or "flops_qwen_vl_7b" not in base:
        return f"{'—':>12} {'—':>7}"
    total, base_total = row["flops_qwen_vl_7b"]["total"], base["flops_qwen_vl_7b"]["total"]
    return f"{total / 1e12:>12.2f} {_fmt_ratio(total / base_total):>7}"


def report(
    results: dict[str, dict[str, dict[str, Any]]], scenes: list[tuple[str, int, int]]
) -> str:
    lines: list[str] = []
    header = (
        f"{'scene':5} {'preset':9} {'mode':8} {'s/question':>10} {'tiles':>6} {'prefill':>8} "
        f"{'GFLOP bench':>12} {'x full':>7} {'TFLOP 7B':>9} {'x full':>7} "
        f"{'TFLOP Q2.5VL':>12} {'x full':>7} {'s x full':>8} "
        f"{'peak RSS MiB':>12} {'engine MiB':>10}"
    )
    lines += [header, "-" * len(header)]
    for name, _, _ in scenes:
        rows = {preset: _row_of(results[name][preset]) for preset in PRESETS}
        base = rows[BASELINE_PRESET]
        for preset in PRESETS:
            row = rows[preset]
            time_ratio = (
                row["wall_s"] / base["wall_s"]
                if row["wall_s"] is not None and base["wall_s"] is not None
                else None
            )
            rss = row["peak_rss_bytes"]
            lines.append(
                f"{name:5} {preset:9} {row['mode']:8} "
                f"{'—' if row['wall_s'] is None else format(row['wall_s'], '.1f'):>10} "
                f"{row['tiles_encoded']:>6} {row['llm_prefill_tokens']:>8} "
                f"{row['flops']['total'] / 1e9:>12.1f} "
                f"{_fmt_ratio(row['flops']['total'] / base['flops']['total']):>7} "
                f"{row['flops_7b']['total'] / 1e12:>9.2f} "
                f"{_fmt_ratio(row['flops_7b']['total'] / base['flops_7b']['total']):>7} "
                f"{_qwen_vl_cells(row, base)} "
                f"{_fmt_ratio(time_ratio):>8} "
                f"{'—' if rss is None else format(rss / MIB, '.0f'):>12} "
                f"{'—' if rss is None else format(row['engine_peak_bytes'] / MIB, '.0f'):>10}"
            )
    lines.append("")
    lines.append(f"feature reuse ({REUSE_PRESET}, same engine and feature cache, one scene):")
    reuse_ratios: dict[str, tuple[int, float]] = {}
    for name, _, _ in scenes:
        questions = results[name][REUSE_PRESET]["questions"]
        if not questions:
            continue
        times = [q["wall_s"] for q in questions]
        cached = [q["tiles_cached"] for q in questions]
        encoded = [q["tiles_encoded"] for q in questions]
        last = len(times)
        reuse_ratios[name] = (last, times[-1] / times[0])
        parts = [f"q1 {times[0]:.1f} s ({encoded[0]} tiles encoded)"]
        for index in sorted({1, last - 1} & set(range(1, last))):
            parts.append(
                f"q{index + 1} {times[index]:.1f} s ({encoded[index]} encoded, "
                f"{cached[index]} cached)"
            )
        ratio = f"; q{last}/q1 = {times[-1] / times[0]:.2f}" if last >= 2 else ""
        lines.append(f"  {name}: {', '.join(parts)}{ratio}")
        lines.append(f"    every question (s): {', '.join(f'{t:.1f}' for t in times)}")
    lines.append("")
    lines.append("goals:")
    for name, _, _ in scenes:
        rows = {p: _row_of(results[name][p]) for p in (REUSE_PRESET, BASELINE_PRESET)}
        bench = rows[REUSE_PRESET]["flops"]["total"] / rows[BASELINE_PRESET]["flops"]["total"]
        seven = rows[REUSE_PRESET]["flops_7b"]["total"] / rows[BASELINE_PRESET]["flops_7b"]["total"]
        lines.append(
            f"  {name}: default/full FLOPs = {_fmt_ratio(seven)} (7B), {_fmt_ratio(bench)} "
            "(benchmark model); "
            f"goal <= {GOAL_FLOP_SHARE}: {'met' if seven <= GOAL_FLOP_SHARE else 'NOT met'} (7B), "
            f"{'met' if bench <= GOAL_FLOP_SHARE else 'NOT met'} (benchmark model) "
            f"[full {rows[BASELINE_PRESET]['mode']}]"
        )
    for name, (last, ratio) in reuse_ratios.items():
        verdict = "met" if ratio <= GOAL_REUSE_SHARE else "NOT met"
        if last < len(QUESTIONS):
            verdict = f"not assessed: only {last} questions"
        lines.append(
            f"  {name}: question {last} / question 1 time = {ratio:.2f}; goal (10th) <= "
            f"{GOAL_REUSE_SHARE}: {verdict}"
        )
    small, big = scenes[0][0], scenes[-1][0]
    rss_small = _row_of(results[small][REUSE_PRESET])["peak_rss_bytes"]
    rss_big = _row_of(results[big][REUSE_PRESET])["peak_rss_bytes"]
    if rss_small and rss_big and small != big:
        ratio = rss_big / rss_small
        lines.append(
            f"  peak RSS of {REUSE_PRESET}, {big} / {small} = {rss_big / MIB:.0f} / "
            f"{rss_small / MIB:.0f} MiB = {ratio:.2f}; goal <= {GOAL_MEMORY_RATIO}: "
            f"{'met' if ratio <= GOAL_MEMORY_RATIO else 'NOT met'}"
        )
    return "\n".join(lines)


def print_saved(paths: list[Path]) -> None:
    """Print the table of one or more ``--out`` files (their scenes merged, in order)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    scenes: list[tuple[str, int, int]] = []
    for path in paths:
        data = json.loads(path.read_text())
        print(f"{path}: " + "; ".join(f"{k}: {v}" for k, v in data["env"].items()))
        results.update(data["results"])
        scenes += [(s["name"], *s["size_wh"]) for s in data["scenes"]]
    print()
    print(report(results, scenes))


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, small scenes")
    parser.add_argument("--prepare-only", action="store_true", help="build model and scenes only")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    parser.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH)
    parser.add_argument("--questions", type=int, help="questions for the reuse run (default 10)")
    parser.add_argument(
        "--presets",
        nargs="*",
        default=list(PRESETS),
        choices=PRESETS,
        help="presets to measure (the others are only planned)",
    )
    parser.add_argument("--scenes", nargs="*", default=[], help="scene names to run (default all)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="override the presets' max_new_tokens (default 32)"
    )
    parser.add_argument("--max-measured-tiles", type=int, default=MAX_MEASURED_TILES)
    parser.add_argument("--max-measured-prefill", type=int, default=MAX_MEASURED_PREFILL)
    parser.add_argument(
        "--report-from",
        type=Path,
        nargs="*",
        help="print the table of earlier --out files (e.g. one per scene) and exit",
    )
    args = parser.parse_args()
    if args.report_from:
        print_saved(args.report_from)
        return
    scenes = [
        s
        for s in (QUICK_SCENES if args.quick else SCENES)
        if s[0] in args.scenes or not args.scenes
    ]
    n_questions = args.questions or (QUICK_QUESTIONS if args.quick else len(QUESTIONS))
    size = "tiny" if args.quick else "benchmark"
    max_new_tokens = args.max_new_tokens or (QUICK_MAX_NEW_TOKENS if args.quick else None)
    started = time.perf_counter()

    env = describe_env()
    for key, value in env.items():
        print(f"{key}: {value}")
    scratch: Path = args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(scratch, size)
    stores = {name: prepare_scene(scratch, name, w, h) for name, w, h in scenes}
    if args.prepare_only:
        return
    print(
        f"model: {size} ({model_dir}); questions for reuse: {n_questions}; max_new_tokens: "
        f"{max_new_tokens or 'preset default'}",
        flush=True,
    )

    results: dict[str, dict[str, dict[str, Any]]] = {}
    # one subprocess per (scene, preset) so each peak RSS is that preset's own; --quick: per scene
    groups = [[preset] for preset in PRESETS] if not args.quick else [list(PRESETS)]
    for name, width, height in scenes:
        results[name] = {}
        for presets in groups:
            job = {
                "scene": name,
                "presets": presets,
                "model_dir": str(model_dir),
                "store": str(stores[name]),
                "questions": list(QUESTIONS[:n_questions]),
                "n_questions": n_questions,
                "measure": list(args.presets),
                "max_tiles": args.max_measured_tiles,
                "max_prefill": args.max_measured_prefill,
                "max_new_tokens": max_new_tokens,
            }
            start = time.perf_counter()
            result = run_worker(job)
            for preset, figures in result["presets"].items():
                results[name][preset] = {**figures, "peak_rss_bytes": result["peak_rss_bytes"]}
                mode = "measured" if figures["questions"] else "planned"
                print(f"  {name} {width}x{height} {preset}: {mode}", flush=True)
            print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)
    print()
    table = report(results, scenes)
    print(table)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "env": env,
                    "model": size,
                    "scenes": [{"name": n, "size_wh": [w, h]} for n, w, h in scenes],
                    "results": results,
                    "table": table,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.stdout.write(json.dumps(worker(json.loads(sys.argv[2]))) + "\n")
    else:
        main()
