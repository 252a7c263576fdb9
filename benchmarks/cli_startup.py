"""Benchmark: how fast ``lrs`` answers when no model runs (help, usage errors, a dry run).

Usage::

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5] [--workdir DIR] [--json]

Each case runs in a fresh subprocess (a cold interpreter, warm OS file cache), ``--repeats`` times;
the median wall time is reported, with its ratio to the baseline ``python -c "import torch,
transformers"`` measured in the same run (so a busy machine shifts both alike). Cases:

* ``lrs --help`` and ``lrs ask --help``;
* a usage error found by ``lrs`` itself (``lrs ask`` without a question, exit 2);
* ``lrs ask --dry-run`` on a tiny model and a small ingested scene (counts tiles, tokens and
  FLOPs; the weights are not read, but the model is built on torch's ``meta`` device, so this
  case imports torch and transformers).

The tiny model and scene are built once in ``--workdir`` (default: a temporary folder) before
timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Side in pixels of the scene the dry run plans (small: its ingest is not what is timed).
SCENE_SIDE_PX = 1200
#: The target of the issue: help, usage errors and the dry run answer within this many seconds.
TARGET_S = 2.0


def lrs_command(*args: str) -> list[str]:
    """``lrs ARGS`` through this interpreter (the console script of the same environment)."""
    return [sys.executable, "-c", "from lrs_core.cli import main; main()", *args]


def run_once(command: list[str], *, expect: int) -> float:
    """Wall seconds of one run of ``command`` (which must exit with ``expect``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}, expected {expect}:\n{done.stderr}"
        )
    return seconds


def prepare(workdir: Path) -> tuple[Path, Path]:
    """Build the tiny model and ingest a small scene once (not timed)."""
    model, stores = workdir / "tiny", workdir / "stores"
    scene = stores / "synth_000.zarr"
    if not model.is_dir():
        run_once(lrs_command("model", "init-tiny", "--out", str(model)), expect=0)
    if not scene.is_dir():
        synth = workdir / "synth"
        side = str(SCENE_SIDE_PX)
        run_once(
            lrs_command(
                "eval", "synth", "--out", str(synth), "--scenes", "1", "--large-side", side
            ),
            expect=0,
        )
        image = synth / "LRS_VQA" / "image" / "synth_000.tif"
        run_once(lrs_command("ingest", str(image), "--out", str(stores)), expect=0)
    return model, scene


def main() -> None:
    """Time the cases and print medians and ratios to the torch + transformers import."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs per case (median).")
    parser.add_argument("--workdir", type=Path, default=None, help="Folder for model and scene.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lrs-cli-startup-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model, scene = prepare(workdir)
    ask = ["ask", "--scene", str(scene), "--model", str(model)]
    cases: dict[str, tuple[list[str], int]] = {
        "baseline: import torch, transformers": (
            [sys.executable, "-c", "import torch, transformers"],
            0,
        ),
        "lrs --help": (lrs_command("--help"), 0),
        "lrs ask --help": (lrs_command("ask", "--help"), 0),
        "lrs ask (usage error)": (lrs_command(*ask), 2),
        "lrs ask --dry-run": (lrs_command(*ask, "--question", "How many ships?", "--dry-run"), 0),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so load on the machine hits every case alike
        for name, (command, expect) in cases.items():
            times[name].append(run_once(command, expect=expect))
    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline = medians["baseline: import torch, transformers"]
    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "median_s": medians,
        "ratio_to_baseline": {name: medians[name] / baseline for name in medians},
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"median of {args.repeats} fresh processes (target: under {TARGET_S:.0f} s)")
    for name, seconds in medians.items():
        print(f"  {name:40s} {seconds:6.2f} s   {seconds / baseline:5.2f} x baseline")


if __name__ == "__main__":
    main()
