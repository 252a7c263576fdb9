"""Helpers shared by the benchmark scripts: the git commit and peak-memory measurement.

The scripts run as ``.venv/bin/python benchmarks/<name>.py``, so this folder is on ``sys.path``
and they import this module as ``_common``.
"""

from __future__ import annotations

import gc
import subprocess
import threading
import time
from pathlib import Path

import psutil
import torch

GIB = 2**30
#: Seconds between CPU resident-set samples of :class:`PeakMemory`.
RSS_SAMPLE_S = 0.005


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class PeakMemory:
    """Peak memory growth of a block (CUDA allocator, or sampled CPU RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._process = psutil.Process()
        self._base = self._process.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(RSS_SAMPLE_S)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_bytes = self._peak - self._base
