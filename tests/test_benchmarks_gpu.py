"""``benchmarks/gpu.py`` runs at tiny dimensions on CPU (the GPU benchmark's smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 2


def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu.py"),
            "--tiny",
            "--device",
            "cpu",
            "--scratch",
            str(tmp_path),
            "--scenes",
            "700x700,1200x1100",
            "--questions",
            "1",
            "--max-new-tokens",
            str(MAX_NEW_TOKENS),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["tiny"] and summary["device"] == "cpu"
    rows = summary["rows"]
    assert {(r["scene"], r["preset"]) for r in rows} == {
        (scene, preset)
        for scene in ("700x700", "1200x1100")
        for preset in ("thumbnail", "default", "parity", "full")
    }
    for row in rows:
        assert row["status"] == "measured", row
        assert row["seconds_per_question"] > 0 and row["peak_memory_bytes"] > 0
        assert row["vision_tiles"] >= 1 and row["prefill_tokens"] > 0
        assert row["decode_steps"] == MAX_NEW_TOKENS  # EOS ignored: fixed decode cost
    by_preset = {r["preset"]: r for r in rows if r["scene"] == "1200x1100"}
    assert by_preset["thumbnail"]["vision_tiles"] == 1
    assert by_preset["full"]["prefill_tokens"] > by_preset["default"]["prefill_tokens"]
