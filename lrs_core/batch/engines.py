"""One loaded engine per process, reused across scenes and runs, and the ``full`` baseline.

Loading a model costs seconds to minutes; a batch answers many scenes with one model, and a
worker answers many batches. :func:`cached_engine` keeps the last engine loaded in this process,
keyed by the model directory (and its files' sizes and modification times, so a rebuilt model is
reloaded), the preset, the budget, the device and the dtype, with a lock that serialises its use by
threads. :func:`baseline_engine` is the ``full`` preset over the same loaded model and feature
cache, whose dry-run plan is what a batch's token and FLOP savings are measured against.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from lrs_core.batch.ask import load_engine
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.models.loading.registry import resolve_model_dir

#: Engines kept loaded per process (one model per GPU: a new key evicts the old engine).
ENGINE_CACHE_SIZE = 1
#: The preset whose dry-run plan is the baseline of the token and FLOP savings.
BASELINE_PRESET = "full"

ModelFingerprint = tuple[tuple[str, int, int], ...]


def model_fingerprint(model_dir: str | os.PathLike[str]) -> ModelFingerprint:
    """Return ``(name, size, mtime_ns)`` of the files of a model directory (the cache key part).

    A rebuilt or retrained model under the same path gets a new fingerprint, so the cache
    reloads it. A missing directory gives ``()``; loading then fails with the library's error.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@functools.lru_cache(maxsize=ENGINE_CACHE_SIZE)
def _load_engine_cached(
    model_dir: str,
    fingerprint: ModelFingerprint,
    preset: str,
    budget: int | None,
    device: str,
    dtype: str,
) -> tuple[FocusEngine, threading.Lock]:
    """Load an engine, with a lock serialising its use by the threads of this process.

    ``fingerprint`` is only part of the cache key. The arguments are immutable, so the cache is a
    pure memo of the loader (as the style guide allows).
    """
    del fingerprint
    engine = load_engine(model_dir, preset=preset, budget=budget, device=device, dtype=dtype)
    return engine, threading.Lock()


def cached_engine(
    model: str | os.PathLike[str],
    *,
    preset: str = "default",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> tuple[FocusEngine, threading.Lock]:
    """Return this process's engine for a model and preset, loading it on first use.

    Args:
        model: a model directory or name
            (:func:`~lrs_core.models.loading.registry.resolve_model_dir`).
        preset: engine preset (``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``...).
        budget: vision-token budget; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.

    Returns:
        The engine and the lock to hold while using it (threads of one process share the engine).

    Raises:
        ConfigError: unknown preset or invalid budget.
        WeightsError: the model does not load.
    """
    path = os.fspath(resolve_model_dir(model).resolve())
    return _load_engine_cached(path, model_fingerprint(path), preset, budget, device, dtype)


def baseline_engine(engine: FocusEngine) -> FocusEngine:
    """Return the ``full`` baseline over ``engine``'s model and feature cache (for its plan)."""
    return FocusEngine(
        engine.loaded,
        config=FocusConfig.from_preset(BASELINE_PRESET),
        feature_cache=engine.feature_cache,
    )
