r"""LRS-VQA: the question file, image paths inside a data root, and prediction records.

The question file is JSONL, one question a line, with the fields of spec §7.1: ``question_id``
(``"<DATASET>_<n>"``; the prefix before the first ``_`` is the dataset group), ``image`` (a path
relative to the data root, the parent of ``LRS_VQA/``), ``category``, ``text`` (question + answer
suffix), ``ground_truth`` and, for non-count questions, ``hbox``/``rbox``/``abs_size``/``size_bin``.
``image_size`` is ``[W, H]``. Box coordinates are level-0 pixels, x (column) first, corners.

Predictions are JSONL with the reference's fields (spec §7.2): ``question_id``, ``prompt``
(``"<image>\\n" + text + "\\n"``), ``category``, ``text`` (the answer), ``ground_truth``,
``answer_id``, ``model_id``, ``ori_hbox``, ``ori_rbox`` and ``metadata``, plus our own keys (the
answer record under :data:`RECORD_KEY`).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lrs_core.dedupe import first_per_id
from lrs_core.errors import DatasetError

log = logging.getLogger(__name__)

#: Keys of the reference's prediction lines, in the order they are written (ours follow).
REFERENCE_KEYS: tuple[str, ...] = (
    "question_id",
    "prompt",
    "category",
    "text",
    "ground_truth",
    "answer_id",
    "model_id",
    "ori_hbox",
    "ori_rbox",
    "metadata",
)

#: Dataset groups of LRS-VQA, in the order the paper's tables use.
DATASET_GROUPS: tuple[str, ...] = ("FAIR", "GLH-Bridge", "STAR")

#: The eight question categories of spec §7.1.
CATEGORIES: tuple[str, ...] = (
    "rural or urban",
    "count",
    "reasoning",
    "object status",
    "object category",
    "object shape",
    "object color",
    "object background",
)

#: Suffix of non-count questions (a space after the newline, spec §7.1).
ANSWER_SUFFIX = "\n Answer the question using a single word or phrase."
#: Suffix of count questions (no space after the newline).
COUNT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

#: Name of the question file as the reference ships it (``Script/LRS_VQA_merged.jsonl``).
QUESTION_FILE_NAME = "LRS_VQA_merged.jsonl"

#: Key of a prediction line that holds our :class:`lrs_core.records.AnswerRecord` as a dict.
RECORD_KEY = "record"

_HBOX_LEN = 4
_RBOX_LEN = 8


def dataset_of(question_id: str) -> str:
    """Return the dataset group of a question id: the part before the first ``_``."""
    return question_id.split("_")[0]


@dataclass(frozen=True, kw_only=True)
class LrsVqaQuestion:
    """One LRS-VQA question.

    Attributes:
        question_id: ``"<DATASET>_<n>"``.
        image: path relative to the data root (POSIX separators), e.g. ``LRS_VQA/image/1.tif``.
        category: one of :data:`CATEGORIES`.
        text: the question with its answer suffix, as fed to the model.
        ground_truth: the lowercase reference answer.
        hbox: (xmin, ymin, xmax, ymax) level-0 pixel corners of the referred object; None for count.
        rbox: the oriented box's corners (x1, y1, ..., x4, y4) in level-0 pixels; None for count.
        abs_size: ``small``/``medium``/``large``/``giant``; None for count questions.
        size_bin: e.g. ``"64x64"`` or ``">1024x1024"``; None for count questions.
        image_size_wh: (width, height) of the image in pixels, when the file gives it.
    """

    question_id: str
    image: str
    category: str
    text: str
    ground_truth: str
    hbox: tuple[float, float, float, float] | None = None
    rbox: tuple[float, ...] | None = None
    abs_size: str | None = None
    size_bin: str | None = None
    image_size_wh: tuple[int, int] | None = None

    @property
    def dataset(self) -> str:
        """Dataset group (``FAIR``, ``GLH-Bridge``, ``STAR``) taken from the question id."""
        return dataset_of(self.question_id)

    @property
    def prompt(self) -> str:
        r"""The reference's prompt field: ``"<image>\\n" + text + "\\n"``."""
        return "<image>\n" + self.text + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Return the question as a JSON line of the question file (absent fields left out)."""
        data: dict[str, Any] = {
            "question_id": self.question_id,
            "image": self.image,
            "category": self.category,
            "text": self.text,
            "ground_truth": self.ground_truth,
        }
        if self.hbox is not None:
            data["hbox"] = list(self.hbox)
        if self.rbox is not None:
            data["rbox"] = list(self.rbox)
        if self.abs_size is not None:
            data["abs_size"] = self.abs_size
        if self.image_size_wh is not None:
            data["image_size"] = list(self.image_size_wh)
        if self.size_bin is not None:
            data["size_bin"] = self.size_bin
        return data


def _numbers(value: Any, *, length: int, name: str, where: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise DatasetError(
            f"{where}: '{name}' must be a list of {length} finite numbers, got {value!r}"
        )
    return tuple(value)


def parse_question(row: Mapping[str, Any], *, where: str = "<row>") -> LrsVqaQuestion:
    """Validate one question-file row and return it as a :class:`LrsVqaQuestion`.

    Args:
        row: the decoded JSON object.
        where: ``file:line`` used in error messages.

    Raises:
        DatasetError: a required field is missing or has the wrong type, the category is unknown,
            or a box is malformed (wrong length, xmin > xmax, hbox not the bound of rbox).
    """
    if not isinstance(row, Mapping):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("question_id", "image", "category", "text", "ground_truth"):
        if not isinstance(row.get(name), str):
            raise DatasetError(f"{where}: field '{name}' is missing or not a string")
    if row["category"] not in CATEGORIES:
        raise DatasetError(
            f"{where}: unknown category {row['category']!r}; expected one of "
            f"{', '.join(CATEGORIES)}"
        )
    hbox = _numbers(row.get("hbox"), length=_HBOX_LEN, name="hbox", where=where)
    rbox = _numbers(row.get("rbox"), length=_RBOX_LEN, name="rbox", where=where)
    if hbox is not None and (hbox[0] > hbox[2] or hbox[1] > hbox[3]):
        raise DatasetError(f"{where}: hbox {list(hbox)} has xmin > xmax or ymin > ymax")
    if hbox is not None and rbox is not None:
        bound = (min(rbox[0::2]), min(rbox[1::2]), max(rbox[0::2]), max(rbox[1::2]))
        if any(abs(a - b) > 1.0 for a, b in zip(bound, hbox, strict=True)):
            raise DatasetError(f"{where}: hbox {list(hbox)} is not the bound {list(bound)} of rbox")
    size = row.get("image_size")
    image_size_wh: tuple[int, int] | None = None
    if size is not None:
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise DatasetError(
                f"{where}: 'image_size' must be [W, H] positive integers, got {size!r}"
            )
        image_size_wh = (size[0], size[1])
    for name in ("abs_size", "size_bin"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise DatasetError(f"{where}: field '{name}' must be a string, got {row[name]!r}")
    return LrsVqaQuestion(
        question_id=row["question_id"],
        image=row["image"],
        category=row["category"],
        text=row["text"],
        ground_truth=row["ground_truth"],
        hbox=None if hbox is None else (hbox[0], hbox[1], hbox[2], hbox[3]),
        rbox=rbox,
        abs_size=row.get("abs_size"),
        size_bin=row.get("size_bin"),
        image_size_wh=image_size_wh,
    )


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, decoded_object)`` for every non-blank line of a JSONL file.

    Raises:
        DatasetError: the file is missing or a line is not valid JSON.
    """
    try:
        fh = open(path, encoding="utf-8")  # closed by the with below
    except OSError as err:
        raise DatasetError(f"{path}: cannot open ({err.strerror})") from err
    with fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err


def read_questions(path: Path) -> list[LrsVqaQuestion]:
    """Read and validate an LRS-VQA question file (JSONL).

    Args:
        path: the question file, e.g. ``LRS_VQA_merged.jsonl``.

    Returns:
        The questions in file order.

    Raises:
        DatasetError: the file cannot be read, a row is invalid, or a question id repeats.
    """
    questions: list[LrsVqaQuestion] = []
    first_line: dict[str, int] = {}
    for line_no, row in iter_jsonl(Path(path)):
        question = parse_question(row, where=f"{path}:{line_no}")
        if question.question_id in first_line:
            raise DatasetError(
                f"{path}:{line_no}: question_id {question.question_id!r} repeats line "
                f"{first_line[question.question_id]}"
            )
        first_line[question.question_id] = line_no
        questions.append(question)
    return questions


def resolve_image_path(data_root: Path, image: str, *, must_exist: bool = False) -> Path:
    """Return the absolute path of ``image`` inside ``data_root``, refusing any escape.

    Args:
        data_root: the folder holding ``LRS_VQA/`` (or ``remote_sensing/`` for MME-RealWorld).
        image: a relative path from the question file (``LRS_VQA/image/15565.tif``).
        must_exist: also require the file to exist.

    Raises:
        DatasetError: the path is absolute, climbs out of the root (``..`` or a symbolic link that
            points outside), or is missing while ``must_exist`` is set.
    """
    root = Path(data_root).resolve()
    if not image or PurePosixPath(image).is_absolute() or Path(image).is_absolute():
        raise DatasetError(f"image path {image!r} must be relative to the data root {root}")
    resolved = (root / image).resolve()
    if not resolved.is_relative_to(root):
        raise DatasetError(
            f"image path {image!r} resolves to {resolved}, outside the data root {root}; refused"
        )
    if must_exist and not resolved.is_file():
        raise DatasetError(
            f"{resolved}: image {image!r} is missing from the data root {root}; expected the "
            "shipped layout LRS_VQA/image/*.tif|png"
        )
    return resolved


@dataclass(frozen=True, kw_only=True)
class SceneQuestions:
    """All questions about one image, with the image's resolved path.

    Attributes:
        image: the image path as the question file gives it (relative to the data root).
        image_path: absolute path inside the data root.
        questions: the questions about this image, in file order.
    """

    image: str
    image_path: Path
    questions: tuple[LrsVqaQuestion, ...]


def select_chunk(
    questions: Sequence[LrsVqaQuestion], *, num_chunks: int = 1, chunk_idx: int = 0
) -> list[LrsVqaQuestion]:
    """Return chunk ``chunk_idx`` of ``num_chunks`` contiguous ``ceil(N / num_chunks)`` splits.

    This is the reference's ``split_list``/``get_chunk`` (spec §7.2), so merged chunk outputs are
    the same set of questions.

    Raises:
        DatasetError: ``num_chunks < 1`` or ``chunk_idx`` outside ``[0, num_chunks)``.
    """
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise DatasetError(
            f"chunk_idx={chunk_idx} of num_chunks={num_chunks} is invalid; need num_chunks >= 1 "
            "and 0 <= chunk_idx < num_chunks"
        )
    size = math.ceil(len(questions) / num_chunks)
    return list(questions[chunk_idx * size : (chunk_idx + 1) * size])


def group_by_scene(
    questions: Iterable[LrsVqaQuestion], *, data_root: Path, must_exist: bool = False
) -> list[SceneQuestions]:
    """Group questions by image, in order of first appearance, resolving each image path once.

    Args:
        questions: questions, e.g. from :func:`read_questions` (optionally a chunk of them).
        data_root: the folder holding ``LRS_VQA/``.
        must_exist: require every image file to exist.

    Raises:
        DatasetError: an image path escapes the data root, or is missing with ``must_exist``.
    """
    grouped: dict[str, list[LrsVqaQuestion]] = {}
    for question in questions:
        grouped.setdefault(question.image, []).append(question)
    return [
        SceneQuestions(
            image=image,
            image_path=resolve_image_path(data_root, image, must_exist=must_exist),
            questions=tuple(items),
        )
        for image, items in grouped.items()
    ]


def iter_scenes(
    question_file: Path,
    *,
    data_root: Path,
    limit: int | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    skip_ids: Iterable[str] = (),
    must_exist: bool = True,
) -> Iterator[SceneQuestions]:
    """Yield the questions of a question file grouped by scene, ready for the engine.

    Order of operations: read and validate, take chunk ``chunk_idx`` of ``num_chunks``, keep the
    first ``limit`` questions, drop already answered ``skip_ids`` (resume), then group by image.

    Args:
        question_file: an LRS-VQA question file.
        data_root: the folder holding ``LRS_VQA/``.
        limit: keep at most this many questions of the chunk (None: all).
        num_chunks: number of contiguous chunks the file is split into.
        chunk_idx: which chunk to yield.
        skip_ids: question ids already answered (see :func:`answered_ids`).
        must_exist: require every image file to exist before anything is yielded.

    Raises:
        DatasetError: the file is invalid, an image escapes the root or is missing, or the chunk
            arguments are invalid.
    """
    if limit is not None and limit < 0:
        raise DatasetError(f"limit={limit} must be >= 0")
    questions = select_chunk(
        read_questions(question_file), num_chunks=num_chunks, chunk_idx=chunk_idx
    )
    if limit is not None:
        questions = questions[:limit]
    done = set(skip_ids)
    pending = [q for q in questions if q.question_id not in done]
    yield from group_by_scene(pending, data_root=data_root, must_exist=must_exist)


@dataclass(frozen=True, kw_only=True)
class PredictionRecord:
    r"""One line of a prediction file (spec §7.2 fields plus ``extra`` keys of our own).

    Attributes:
        question_id: the question's id.
        prompt: ``"<image>\\n" + text + "\\n"``.
        category: the question's category.
        text: the model's answer, stripped.
        ground_truth: the reference answer.
        model_id: name of the model (and preset) that answered.
        answer_id: a unique id of this answer.
        ori_hbox: the question's hbox (None for count questions).
        ori_rbox: the question's rbox (None for count questions).
        metadata: free-form metadata (the reference writes ``{}``).
        extra: further top-level keys (accounting, evidence under :data:`RECORD_KEY`).
    """

    question_id: str
    prompt: str
    category: str
    text: str
    ground_truth: str
    model_id: str
    answer_id: str
    ori_hbox: tuple[float, ...] | None = None
    ori_rbox: tuple[float, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON line: the reference's keys first, then ``extra``."""
        data: dict[str, Any] = {
            "question_id": self.question_id,
            "prompt": self.prompt,
            "category": self.category,
            "text": self.text,
            "ground_truth": self.ground_truth,
            "answer_id": self.answer_id,
            "model_id": self.model_id,
            "ori_hbox": None if self.ori_hbox is None else list(self.ori_hbox),
            "ori_rbox": None if self.ori_rbox is None else list(self.ori_rbox),
            "metadata": dict(self.metadata),
        }
        clash = set(data) & set(self.extra)
        if clash:
            raise DatasetError(f"extra keys {sorted(clash)} clash with the reference's fields")
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<row>") -> PredictionRecord:
        """Rebuild a record from a prediction line.

        Raises:
            DatasetError: ``question_id`` is missing or a reference field has the wrong type.
        """
        if not isinstance(data.get("question_id"), str):
            raise DatasetError(f"{where}: prediction has no string 'question_id'")
        known = set(REFERENCE_KEYS)
        for name in known - {"ori_hbox", "ori_rbox", "metadata"}:
            if data.get(name) is not None and not isinstance(data[name], str):
                raise DatasetError(f"{where}: field '{name}' must be a string, got {data[name]!r}")
        hbox, rbox = data.get("ori_hbox"), data.get("ori_rbox")
        return cls(
            question_id=data["question_id"],
            prompt=data.get("prompt") or "",
            category=data.get("category") or "",
            text=data.get("text") or "",
            ground_truth=data.get("ground_truth") or "",
            model_id=data.get("model_id") or "",
            answer_id=data.get("answer_id") or "",
            ori_hbox=None if hbox is None else tuple(hbox),
            ori_rbox=None if rbox is None else tuple(rbox),
            metadata=dict(data.get("metadata") or {}),
            extra={k: v for k, v in data.items() if k not in known},
        )


#: Key of the error message in a failed prediction line.
ERROR_KEY = "error"


def unique_prediction_rows(
    rows: Iterable[Mapping[str, Any]], *, id_key: str, source: str
) -> list[Mapping[str, Any]]:
    """Keep one prediction line per ``id_key`` (see :func:`lrs_core.dedupe.first_per_id`).

    Rows without a string ``id_key`` are kept as they are (the scorer reports them).
    """
    rows = list(rows)
    return first_per_id(
        rows,
        id_of=lambda row: row[id_key] if isinstance(row.get(id_key), str) else id(row),
        failed=lambda row: row.get(ERROR_KEY) is not None,
        source=source,
    )


def make_prediction(
    question: LrsVqaQuestion,
    *,
    answer: str,
    model_id: str,
    answer_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PredictionRecord:
    """Return the prediction line for ``question`` answered with ``answer`` (stripped).

    Args:
        question: the question answered.
        answer: the model's raw answer; surrounding whitespace is stripped as the reference does.
        model_id: model (and preset) name.
        answer_id: a unique id; default a random UUID hex (the reference uses shortuuid).
        extra: our own keys, e.g. ``{RECORD_KEY: answer_record.to_dict()}``.
    """
    return PredictionRecord(
        question_id=question.question_id,
        prompt=question.prompt,
        category=question.category,
        text=answer.strip(),
        ground_truth=question.ground_truth,
        model_id=model_id,
        answer_id=uuid.uuid4().hex if answer_id is None else answer_id,
        ori_hbox=question.hbox,
        ori_rbox=question.rbox,
        extra=dict(extra or {}),
    )


def append_predictions(path: Path, records: Iterable[PredictionRecord]) -> int:
    """Append prediction lines to ``path`` (created if absent), flushing each; return the count.

    Appending line by line keeps a crashed run's finished answers, and :func:`answered_ids`
    lets the rerun skip them.
    """
    count = 0
    with open(path, "a", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            count += 1
    return count


def read_predictions(path: Path) -> list[PredictionRecord]:
    """Read a prediction file (JSONL) into records, one per question id.

    A repeated id keeps its first line without an ``error`` (else its first line); extra answered
    lines are dropped with a warning (:func:`lrs_core.dedupe.first_per_id`).

    Raises:
        DatasetError: the file is missing, a line is not JSON (a trailing partial line included),
            or a line lacks ``question_id``.
    """
    records = [
        PredictionRecord.from_dict(row, where=f"{path}:{line_no}")
        for line_no, row in iter_jsonl(Path(path))
    ]
    return first_per_id(
        records,
        id_of=lambda r: r.question_id,
        failed=lambda r: r.extra.get(ERROR_KEY) is not None,
        source=str(path),
    )


def drop_partial_tail(path: Path) -> bool:
    """Make a prediction file safe to append to after a crash; return True if it was changed.

    A run killed while writing can leave a last line without its newline. If that line is not
    valid JSON it is cut off (its question is answered again); if it is valid, the newline is
    added. Earlier lines are never touched.
    """
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return False
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: dropping a partial last line of %d bytes", path, len(data) - cut)
            fh.truncate(cut)
            return True
        fh.write(b"\n")
        return True


def answered_ids(path: Path) -> set[str]:
    """Return the question ids already present in a prediction file (empty if it does not exist)."""
    if not Path(path).exists():
        return set()
    return {record.question_id for record in read_predictions(path)}
