"""Answer questions about ingested scenes: load an engine, read question files, run them.

The library face of ``lrs ask`` (and of batches): :func:`load_engine` builds a
:class:`~lrs_core.focus.engine.FocusEngine` from a model directory and a preset,
:func:`answer_questions` answers a list of :class:`Question` about one scene store, sharing tile
features between them, and
:func:`read_questions_file` reads questions (:func:`lrs_core.batch.requests.read_questions`, the
one reader of question and request files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lrs_core.batch.requests import Question, read_questions
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.focus.features import FeatureCache
from lrs_core.models.loading.auto import load_model, load_model_shapes
from lrs_core.models.loading.files import PROJECT_CONFIG_FILE
from lrs_core.models.loading.registry import resolve_model_dir
from lrs_core.models.runtime import (
    DEVICE_AUTO,
    parse_dtype,
    resolve_device,
)
from lrs_core.raster.pyramid import open_pyramid
from lrs_core.records import AnswerRecord

__all__ = ["Question", "answer_questions", "load_engine", "read_questions_file"]


def load_engine(
    model_dir: str | Path,
    *,
    preset: str = "default",
    budget: int | None = None,
    device: str = DEVICE_AUTO,
    dtype: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    feature_cache: FeatureCache | None = None,
    weights: bool = True,
) -> FocusEngine:
    """Load a model and return an engine for a preset.

    Args:
        model_dir: a model directory or name
            (:func:`~lrs_core.models.loading.registry.resolve_model_dir`;
            any :func:`lrs_core.models.loading.auto.load_model` layout, Hugging Face Qwen2-VL /
            Qwen2.5-VL directories included; the engine calls ``loaded.family``).
        preset: ``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``, ``fastv`` or
            ``pdrop``.
        budget: ``token_budget`` (vision tokens to the LLM); None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
        dtype: ``auto`` (None), ``fp16``, ``bf16``, ``fp32`` (or the long torch names); ``auto``
            is the checkpoint's dtype on CUDA and float32 on CPU.
        overrides: further :class:`FocusConfig` fields. ``max_new_tokens`` defaults to the
            checkpoint's ``generation_config.json`` value when it has one.
        feature_cache: a cache to share between engines (a fresh one if None).
        weights: False builds the model on the ``meta`` device without reading its weights (a
            project-format directory only; other layouts load normally): enough for
            :meth:`FocusEngine.plan`, which needs only the tokenizer and the dimensions.

    Raises:
        ConfigError: unknown preset, field or dtype.
        WeightsError: the model cannot be loaded.
    """
    model_dir = resolve_model_dir(model_dir)
    values = dict(overrides or {})
    if budget is not None:
        values["token_budget"] = budget
    config = FocusConfig.from_preset(preset, **values)
    torch_device = resolve_device(device)  # bad names fail before any loading
    if dtype is not None:
        parse_dtype(dtype)
    if not weights and (Path(model_dir) / PROJECT_CONFIG_FILE).is_file():
        loaded = load_model_shapes(Path(model_dir))
    else:  # every layout, each with its family (``loaded.family``)
        loaded = load_model(model_dir, device=torch_device, dtype=dtype)
    if "max_new_tokens" not in values and loaded.generation.max_new_tokens is not None:
        config = config.override(max_new_tokens=loaded.generation.max_new_tokens)
    return FocusEngine(loaded, config=config, feature_cache=feature_cache)


def answer_questions(
    engine: FocusEngine,
    store: str | Path,
    questions: Sequence[Question],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[AnswerRecord]:
    """Answer questions about one scene store; a failed question gets a record with ``error`` set.

    Raises:
        SceneNotFoundError: the store does not exist.
        IncompletePyramidError: the store's ingest did not finish.
    """
    pyramid = open_pyramid(store)
    return engine.answer_many(
        pyramid, [(q.question_id, q.text) for q in questions], progress=progress
    )


def read_questions_file(path: str | Path) -> list[Question]:
    """Read questions from a JSONL, CSV, Parquet or plain-text file (:func:`read_questions`)."""
    return read_questions(path)
