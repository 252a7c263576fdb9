"""Answer questions about ingested scenes: load an engine, read question files, run them.

The library face of ``lrs ask`` (and of the ask flow): :func:`load_engine` builds a
:class:`~lrs_core.focus.engine.FocusEngine` from a model directory and a preset, :func:`answer_questions`
answers a list of :class:`Question` about one scene store, sharing tile features between them, and
:func:`read_questions_file` reads questions from JSONL, CSV or plain text.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.focus.features import FeatureCache
from lrs_core.models.families.engine_model import load_qwen_vl_engine
from lrs_core.models.families.qwen_vl import is_qwen_vl_dir
from lrs_core.models.io import (
    PROJECT_CONFIG_FILE,
    LoadedModel,
    configs_from_header,
    default_attn_implementation,
    load_model,
    load_tokenizer,
    read_json,
)
from lrs_core.models.runtime import (
    DEVICE_AUTO,
    GenerationSettings,
    parse_dtype,
    resolve_device,
    resolve_dtype,
)
from lrs_core.models.vlm import VisionLanguageModel
from lrs_core.raster.pyramid import open_pyramid
from lrs_core.records import AnswerRecord

#: Column / key names accepted for the question id and text (first match wins).
ID_KEYS = ("question_id", "id", "qid")
TEXT_KEYS = ("question", "text")


@dataclass(frozen=True)
class Question:
    """One question about a scene.

    Attributes:
        question_id: id carried into the answer record.
        text: the question.
    """

    question_id: str
    text: str


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
        model_dir: a model directory (:func:`lrs_core.models.io.load_model` layouts, or a Hugging
            Face Qwen2-VL / Qwen2.5-VL directory, loaded by
            :func:`lrs_core.models.families.engine_model.load_qwen_vl_engine`).
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
    values = dict(overrides or {})
    if budget is not None:
        values["token_budget"] = budget
    config = FocusConfig.from_preset(preset, **values)
    torch_device = resolve_device(device)  # bad names fail before any loading
    if dtype is not None:
        parse_dtype(dtype)
    if not weights and (Path(model_dir) / PROJECT_CONFIG_FILE).is_file():
        loaded = _load_without_weights(Path(model_dir))
    elif is_qwen_vl_dir(model_dir):  # a Hugging Face Qwen2-VL / Qwen2.5-VL directory
        loaded = load_qwen_vl_engine(
            model_dir,
            device=torch_device,
            dtype=resolve_dtype(dtype, torch_device, model_dir),
            attn_implementation=default_attn_implementation(torch_device),
        )
    else:
        loaded = load_model(model_dir, device=torch_device, dtype=dtype)
    if "max_new_tokens" not in values and loaded.generation.max_new_tokens is not None:
        config = config.override(max_new_tokens=loaded.generation.max_new_tokens)
    return FocusEngine(loaded, config=config, feature_cache=feature_cache)


def _load_without_weights(source: Path) -> LoadedModel:
    """Build a project-format model on the ``meta`` device (shapes only) with its tokenizer."""
    header = read_json(source / PROJECT_CONFIG_FILE)
    config, vision_config, llm_config = configs_from_header(header, source=source)
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=False, device="meta"
    )
    return LoadedModel(
        model=model.eval(),
        tokenizer=load_tokenizer(source),
        model_id=str(header.get("model_id", source.name)),
        source_dir=source,
        generation=GenerationSettings.read(source),
    )


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


def _pick(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return row[key]
    return None


def _question_from_row(row: Mapping[str, Any], *, path: Path, line: int) -> Question:
    text = _pick(row, TEXT_KEYS)
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(
            f"{path}:{line}: no question text; give a '{TEXT_KEYS[0]}' (or 'text') field"
        )
    qid = _pick(row, ID_KEYS)
    return Question(question_id=str(qid) if qid is not None else f"q{line}", text=text.strip())


def read_questions_file(path: str | Path) -> list[Question]:
    """Read questions from a JSONL, CSV or plain-text file.

    * ``.jsonl`` / ``.json``: one JSON object per line with ``question`` (or ``text``) and an
      optional ``question_id`` (or ``id``/``qid``).
    * ``.csv``: a header row naming the same columns.
    * anything else: one question per non-empty line; ids are ``q<line number>``.

    Lines without an id get ``q<line number>``. Blank lines are skipped.

    Raises:
        DatasetError: the file is missing, empty, or a row is malformed (naming file and line).
    """
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: questions file not found")
    suffix = source.suffix.lower()
    questions: list[Question] = []
    text = source.read_text(encoding="utf-8")
    if suffix in (".jsonl", ".json"):
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{source}:{line_no}: not a JSON object ({err.msg})") from err
            if not isinstance(row, dict):
                raise DatasetError(
                    f"{source}:{line_no}: expected a JSON object, got {type(row).__name__}"
                )
            questions.append(_question_from_row(row, path=source, line=line_no))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or not set(reader.fieldnames) & set(TEXT_KEYS):
            raise DatasetError(
                f"{source}:1: the CSV header must name a 'question' (or 'text') column"
            )
        for line_no, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            questions.append(_question_from_row(row, path=source, line=line_no))
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                questions.append(Question(question_id=f"q{line_no}", text=line.strip()))
    if not questions:
        raise DatasetError(f"{source}: no questions found")
    seen: set[str] = set()
    for question in questions:
        if question.question_id in seen:
            raise DatasetError(f"{source}: question_id {question.question_id!r} appears twice")
        seen.add(question.question_id)
    return questions
