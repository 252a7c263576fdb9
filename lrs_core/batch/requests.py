"""Read questions and requests: the one reader of CSV / JSONL / Parquet / text / lists of dicts.

Two shapes of input are read here, by the same row reader (:func:`read_rows`):

* **requests** (:func:`read_requests`): ``scene,question[,id]`` rows, one question about one
  scene each, for ``lrs batch`` and the answer flow. Rows that cannot be used are returned as
  :class:`RequestProblem` (the batch answers the others and reports them), never raised.
* **questions** (:func:`read_questions`): ``question[,id]`` rows about a scene given elsewhere, for
  ``lrs ask`` and the standing questions of the watch flow. A bad row is a :class:`DatasetError`
  naming the file and line.

Accepted files: ``.csv`` (a header row), ``.jsonl`` / ``.json`` (one JSON object per line),
``.parquet``; questions also read plain text (one question per non-empty line). Column names, first
present wins: the scene in ``scene``/``scene_id``/``store``/``image``, the question in
``question``/``text``, the id in ``id``/``question_id``/``qid``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError
from lrs_core.raster.ingest import RASTER_SUFFIXES

#: Column / key names accepted for each field (first present wins).
SCENE_KEYS = ("scene", "scene_id", "store", "image")
QUESTION_KEYS = ("question", "text")
ID_KEYS = ("id", "question_id", "qid")
#: Table formats read as rows; anything else is read as plain text by :func:`read_questions`.
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
#: Hex digits of the question hash in generated request ids (``<scene name>-<hash>``).
GENERATED_ID_DIGITS = 12
STORE_SUFFIX = ".zarr"

RowsLike = str | os.PathLike[str] | Sequence[Mapping[str, Any]]
QuestionsLike = str | os.PathLike[str] | Sequence[str | Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class SourceRow:
    """One row of an input, before validation.

    Attributes:
        where: ``<file>:<line>`` (``<file>:row <n>`` for Parquet, ``<name>[<i>]`` for a list),
            the prefix of every message about the row.
        number: 1-based line (CSV, JSONL, text) or row (Parquet, list) number.
        fields: the row's fields; None when the row does not parse.
        problem: why the row does not parse (with ``where``), else None.
    """

    where: str
    number: int
    fields: Mapping[str, Any] | None
    problem: str | None = None


@dataclass(frozen=True)
class Question:
    """One question about a scene.

    Attributes:
        question_id: id carried into the answer record.
        text: the question.
    """

    question_id: str
    text: str


@dataclass(frozen=True, kw_only=True)
class AnswerRequest:
    """One question about one scene.

    Attributes:
        scene: as the request gave it (store path, scene id or raster path).
        question: the question text.
        question_id: the given id, or ``<scene name>-<hash of the question>`` (stable across
            reruns, so resuming finds it).
    """

    scene: str
    question: str
    question_id: str


@dataclass(frozen=True, kw_only=True)
class RequestProblem:
    """A request row that cannot be answered, and why.

    Attributes:
        where: the row's place (see :attr:`SourceRow.where`).
        question_id: the row's id, or ``row-<n>`` when it has none.
        scene: the scene the row names, if any.
        question: the question the row asks, if any.
        error: one line saying what is wrong and what to do.
    """

    where: str
    question_id: str
    scene: str | None
    question: str | None
    error: str


def pick(row: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    """Return the first non-blank value of ``keys`` in ``row`` as stripped text, else None."""
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def generated_id(scene: str, question: str) -> str:
    """Return the id of a request without one: ``<scene name>-<first hex digits of sha1>``.

    The scene name drops folders, ``.zarr`` and raster suffixes, so the same question about
    ``stores/b.zarr``, ``b.tif`` and ``b`` gets the same id.
    """
    name = Path(scene.rstrip("/")).name.removesuffix(STORE_SUFFIX)
    name = Path(name).stem if Path(name).suffix.lower() in RASTER_SUFFIXES else name
    digest = hashlib.sha1(f"{name}\n{question}".encode()).hexdigest()[:GENERATED_ID_DIGITS]
    return f"{name}-{digest}"


def _csv_rows(path: Path, text: str, *, required: Sequence[Sequence[str]]) -> list[SourceRow]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    fields = set(reader.fieldnames or ())
    if any(not fields & set(keys) for keys in required):
        need = " and ".join(f"a {keys[0]!r} (or {'/'.join(keys[1:])})" for keys in required)
        raise DatasetError(
            f"{path}:1: the CSV header {sorted(fields)} must name {need} column; an "
            f"{ID_KEYS[0]!r} column is optional"
        )
    rows: list[SourceRow] = []
    for row in reader:
        if not any(str(v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        rows.append(
            SourceRow(where=f"{path}:{reader.line_num}", number=reader.line_num, fields=row)
        )
    return rows


def _jsonl_rows(path: Path, text: str) -> list[SourceRow]:
    rows: list[SourceRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(
                SourceRow(
                    where=where,
                    number=number,
                    fields=None,
                    problem=f"{where}: not a JSON object ({err.msg}); write one object per line",
                )
            )
            continue
        if not isinstance(value, dict):
            rows.append(
                SourceRow(
                    where=where,
                    number=number,
                    fields=None,
                    problem=f"{where}: expected a JSON object, got {type(value).__name__}",
                )
            )
            continue
        rows.append(SourceRow(where=where, number=number, fields=value))
    return rows


def read_rows(
    source: RowsLike,
    *,
    required: Sequence[Sequence[str]],
    what: str,
    plain_text: bool = False,
) -> list[SourceRow]:
    """Return the rows of a table file or a list of dicts, unvalidated.

    Args:
        source: a ``.csv`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, or a list of mappings.
        required: key groups a CSV header must name one of each (e.g. scene and question keys).
        what: what the file holds, for messages (``"requests"``, ``"questions"``).
        plain_text: read any other suffix as one question per non-empty line (field
            ``question``); without it, another suffix is an error.

    Returns:
        Rows in order; blank lines are skipped; a row that does not parse carries its problem.

    Raises:
        DatasetError: the file is missing, of an unknown format, unreadable, or a CSV header
            lacks a required column.
    """
    if not isinstance(source, (str, os.PathLike)):
        rows: list[SourceRow] = []
        for index, item in enumerate(source):
            where = f"{what}[{index}]"
            if isinstance(item, Mapping):
                rows.append(SourceRow(where=where, number=index + 1, fields=item))
            else:
                rows.append(
                    SourceRow(
                        where=where,
                        number=index + 1,
                        fields=None,
                        problem=f"{where}: expected a mapping, got {type(item).__name__}",
                    )
                )
        return rows
    path = Path(source)
    if not path.is_file():
        raise DatasetError(
            f"{path}: {what} file not found; give a CSV, JSONL or Parquet file of "
            f"{'/'.join(keys[0] for keys in required)}[,id] rows"
        )
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES and not plain_text:
        raise DatasetError(
            f"{path}: unknown {what} format {suffix!r}; use one of {list(TABLE_SUFFIXES)}"
        )
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pylist()
            return [
                SourceRow(where=f"{path}:row {i}", number=i, fields=row)
                for i, row in enumerate(table, start=1)
            ]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(
            f"{path}: cannot read the {what} file ({err}); check its format"
        ) from err
    if suffix == ".csv":
        return _csv_rows(path, text, required=required)
    if suffix in (".jsonl", ".json"):
        return _jsonl_rows(path, text)
    return [
        SourceRow(where=f"{path}:{number}", number=number, fields={QUESTION_KEYS[0]: line})
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def read_requests(requests: RowsLike) -> tuple[list[AnswerRequest], list[RequestProblem]]:
    """Read requests; rows that cannot be used become problems, not errors.

    Args:
        requests: a ``.csv`` (header row), ``.jsonl`` or ``.parquet`` file, or a list of dicts,
            with a scene, a question and optionally an id (see the module docstring).

    Returns:
        The usable requests in order, and the problems: rows that do not parse, rows without a
        scene or question, and repeats of an id already used.

    Raises:
        DatasetError: the file is missing, of an unknown format, or unreadable as a whole.
    """
    found: list[AnswerRequest] = []
    problems: list[RequestProblem] = []
    seen: set[str] = set()
    for row in read_rows(requests, required=(SCENE_KEYS, QUESTION_KEYS), what="requests"):
        if row.fields is None:
            problems.append(
                RequestProblem(
                    where=row.where,
                    question_id=f"row-{row.number}",
                    scene=None,
                    question=None,
                    error=row.problem or f"{row.where}: unreadable row",
                )
            )
            continue
        scene, question = pick(row.fields, SCENE_KEYS), pick(row.fields, QUESTION_KEYS)
        given_id = pick(row.fields, ID_KEYS)
        if scene is None or question is None:
            missing = [name for name, v in (("scene", scene), ("question", question)) if v is None]
            problems.append(
                RequestProblem(
                    where=row.where,
                    question_id=given_id or f"row-{row.number}",
                    scene=scene,
                    question=question,
                    error=f"{row.where}: the row has no {' and no '.join(missing)}; fill it in",
                )
            )
            continue
        question_id = given_id or generated_id(scene, question)
        if question_id in seen:
            problems.append(
                RequestProblem(
                    where=row.where,
                    question_id=question_id,
                    scene=scene,
                    question=question,
                    error=f"{row.where}: id {question_id!r} is used by an earlier row; give it "
                    "its own",
                )
            )
            continue
        seen.add(question_id)
        found.append(AnswerRequest(scene=scene, question=question, question_id=question_id))
    return found, problems


def read_questions(source: QuestionsLike) -> list[Question]:
    """Read questions (no scene); every row must be usable.

    Args:
        source: a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file of ``question[,id]``
            rows, a text file of one question per line, or a list of question strings or
            ``{"question", "id"}`` mappings. Rows without an id get ``q<line number>`` (``q<n>``
            for the n-th list item).

    Returns:
        The questions in order.

    Raises:
        DatasetError: the file is missing or empty, a row is malformed or has no text, or an
            id repeats (naming file and line).
    """
    if isinstance(source, (str, os.PathLike)):
        rows = read_rows(source, required=(QUESTION_KEYS,), what="questions", plain_text=True)
        name = os.fspath(source)
    else:
        items = [{QUESTION_KEYS[0]: i} if isinstance(i, str) else i for i in source]
        rows = read_rows(items, required=(QUESTION_KEYS,), what="questions")
        name = "the questions"
    questions: list[Question] = []
    for row in rows:
        if row.fields is None:
            raise DatasetError(row.problem or f"{row.where}: unreadable row")
        text = pick(row.fields, QUESTION_KEYS)
        if text is None:
            raise DatasetError(
                f"{row.where}: no question text; give a '{QUESTION_KEYS[0]}' (or 'text') field"
            )
        question_id = pick(row.fields, ID_KEYS) or f"q{row.number}"
        questions.append(Question(question_id=question_id, text=text))
    if not questions:
        raise DatasetError(f"{name}: no questions found; write one question per row")
    seen: set[str] = set()
    for question in questions:
        if question.question_id in seen:
            raise DatasetError(
                f"{name}: question_id {question.question_id!r} appears twice; ids must be unique"
            )
        seen.add(question.question_id)
    return questions


def standing_requests(
    scenes: Sequence[tuple[str, str]],
    questions: Sequence[Question],
    *,
    answered: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, str]]:
    """Return the requests asking every standing question about every scene, once.

    Args:
        scenes: ``(scene_id, store path)`` of each scene.
        questions: the standing questions.
        answered: ids already answered (left out).

    Returns:
        ``{"scene", "question", "id"}`` request dicts, id ``<scene_id>-<question_id>``, in scene
        then question order, without the ids in ``answered``.
    """
    return [
        {"scene": store, "question": question.text, "id": f"{scene_id}-{question.question_id}"}
        for scene_id, store in scenes
        for question in questions
        if f"{scene_id}-{question.question_id}" not in answered
    ]
