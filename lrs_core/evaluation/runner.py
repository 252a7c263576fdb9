r"""Run the engine over a benchmark: ingest scenes once, answer, write a JSON line per question.

The library face of ``lrs eval run`` and of the ``evaluate`` flow. Both benchmarks go the same way:

1. Read and validate the question file, take chunk ``chunk_idx`` of ``num_chunks`` (the
   reference's contiguous ``ceil(N / K)`` splits), keep the first ``limit`` questions of it.
2. Make the output safe to append to (:func:`~lrs_core.evaluation.lrs_vqa.drop_partial_tail` cuts
   a line a killed run left half-written), skip the questions it already answers, and take the
   failed ones out so they are tried again (their lines are removed; answered lines are kept
   byte for byte).
3. Group the remaining questions by image. Each image is ingested once into ``store_dir`` with
   :func:`lrs_core.raster.ingest.ingest_scene` (a finished store is skipped, so stores are reused
   across runs and chunks), then its questions are answered by one
   :class:`~lrs_core.focus.engine.FocusEngine`, which shares tile features between the questions
   of a scene.
4. Each answer is appended to ``out`` and flushed as soon as it exists. A question that fails (its
   image is missing or unreadable, its text does not fit the context, ...) gets a line with an
   ``error`` field and no answer; the run goes on, and :attr:`RunSummary.n_failed` says how many.

LRS-VQA lines hold the reference's fields (spec §7.2, via
:func:`~lrs_core.evaluation.lrs_vqa.make_prediction`) and our answer record under ``"record"``
(evidence tiles and tokens, accounting, preset; the scene heat map is left out unless
``keep_heatmap``, as it is ~80 KB a line). MME-RealWorld-RS lines are the input item plus
``"Output"`` (spec §8) and the same ``"record"``; a failed MME line has no ``"Output"``, so it
cannot be scored as an answer (the reference's letter rule would read an empty output as "A").

Benchmark images carry no georeference; their stores use pixel coordinates, and the
:class:`~lrs_core.errors.NotGeoreferencedWarning` of each ingest is silenced here (it says nothing
new about a benchmark). Scene ids are the image path relative to the data root with ``/`` and the
extension's dot turned into ``__`` and ``_`` (``LRS_VQA/image/1213.tif`` becomes
``LRS_VQA__image__1213_tif``): LRS-VQA has ``1213.tif`` and ``1213.png``, so the stem is not enough.

Several runs may write different chunk files at the same time (on several GPUs or workers); a
store folder shared between them should be filled first (:func:`ingest_benchmark_scenes`), since
two processes ingesting the same image at once would collide.
:func:`lrs_core.evaluation.merge.merge_predictions` joins the chunk files. One output file has one
writer at a time: a run holds the file's OS lock (:func:`lrs_core.locks.exclusive_writer`, lock
file ``<out>.lock`` beside it) from reading what is done to its last line, so a second run on the
same file fails at once with :class:`~lrs_core.locks.WriterLockedError` naming the holder, or
queues behind it with ``wait=True``. Each line is written with one ``write`` call and fsynced.

Reading a prediction file never yields an id twice: on resume, extra answered lines of an id are
dropped (the first is kept, with a warning), and a line that is not JSON (a torn write) is dropped
with a warning so its question is answered again, instead of blocking the resume for good.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Required, TypedDict, Unpack

from lrs_core.errors import DatasetError, LrsError, NotGeoreferencedWarning
from lrs_core.evaluation.lrs_vqa import ERROR_KEY as LRS_VQA_ERROR_KEY
from lrs_core.evaluation.lrs_vqa import (
    QUESTION_FILE_NAME,
    RECORD_KEY,
    LrsVqaQuestion,
    drop_partial_tail,
    iter_scenes,
    make_prediction,
    read_questions,
    resolve_image_path,
)
from lrs_core.evaluation.mme import build_prompt, parse_item, read_raw_rows
from lrs_core.locks import exclusive_writer
from lrs_core.models.prompt import IMAGE_PLACEHOLDER
from lrs_core.raster.ingest import IngestConfig, IngestResult, ingest_scene

if TYPE_CHECKING:
    from lrs_core.focus.engine import FocusEngine
    from lrs_core.records import AnswerRecord

log = logging.getLogger(__name__)

Benchmark = Literal["lrs-vqa", "mme"]
#: The benchmarks :func:`run_benchmark` knows.
BENCHMARKS: tuple[Benchmark, ...] = ("lrs-vqa", "mme")
#: Name of the MME-RealWorld-RS question file as the reference ships it.
MME_QUESTION_FILE_NAME = "MME_RealWorld_RS.json"
#: Suffix of the default store folder beside the output file (``PRED.jsonl.stores/``).
STORE_DIR_SUFFIX = ".stores"
#: Key of the error message in a failed prediction line.
ERROR_KEY = LRS_VQA_ERROR_KEY
#: Key of the answering model and preset in MME lines (LRS-VQA lines use the reference's
#: ``model_id``).
MME_MODEL_KEY = "model_id"
#: Id and answer keys of each benchmark's prediction lines.
ID_KEYS: dict[Benchmark, str] = {"lrs-vqa": "question_id", "mme": "Question_id"}
ANSWER_KEYS: dict[Benchmark, str] = {"lrs-vqa": "text", "mme": "Output"}
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# -- names and paths ---------------------------------------------------------------------------


def scene_id_for(image: str) -> str:
    """Return the store name of a benchmark image: its relative path, made a safe file name.

    Args:
        image: the image path relative to the data root, e.g. ``LRS_VQA/image/1213.tif``.

    Returns:
        e.g. ``LRS_VQA__image__1213_tif`` (``/`` becomes ``__``; other characters outside
        ``[A-Za-z0-9_-]`` become ``_``).
    """
    parts = PurePosixPath(image).parts
    return "__".join(_UNSAFE_ID_CHARS.sub("_", part) for part in parts)


def default_store_dir(out: Path) -> Path:
    """Return the default store folder of an output file: ``<out>.stores`` beside it."""
    out = Path(out)
    return out.with_name(out.name + STORE_DIR_SUFFIX)


def chunk_output_path(out: Path, *, chunk_idx: int, num_chunks: int) -> Path:
    """Return the prediction file of one chunk beside ``out``: ``pred.chunk1of4.jsonl``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.chunk{chunk_idx}of{num_chunks}{out.suffix}")


def chunk_bounds(n_items: int, *, num_chunks: int, chunk_idx: int) -> tuple[int, int]:
    """Return ``(start, stop)`` of chunk ``chunk_idx``: contiguous ``ceil(N / K)`` splits.

    The reference's ``split_list``/``get_chunk`` (spec §7.2); the last chunks may be short or
    empty.

    Raises:
        DatasetError: ``num_chunks < 1`` or ``chunk_idx`` outside ``[0, num_chunks)``.
    """
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise DatasetError(
            f"chunk_idx={chunk_idx} of num_chunks={num_chunks} is invalid; need num_chunks >= 1 "
            "and 0 <= chunk_idx < num_chunks"
        )
    size = math.ceil(n_items / num_chunks)
    return min(chunk_idx * size, n_items), min((chunk_idx + 1) * size, n_items)


def resolve_question_file(
    questions: Path, *, data_root: Path | None, default_name: str
) -> tuple[Path, Path]:
    """Return ``(question_file, data_root)`` from a question file or a data root.

    Args:
        questions: the question file, or a data root holding ``default_name``.
        data_root: the folder image paths are relative to; None: the question file's folder (the
            shipped layout keeps ``LRS_VQA_merged.jsonl`` beside ``LRS_VQA/``).
        default_name: the question file's name inside a data root.

    Raises:
        DatasetError: the question file does not exist.
    """
    questions = Path(questions)
    question_file = questions / default_name if questions.is_dir() else questions
    if not question_file.is_file():
        raise DatasetError(
            f"{question_file}: question file not found; pass --questions FILE or a data root "
            f"that holds {default_name}"
        )
    return question_file, Path(data_root) if data_root is not None else question_file.parent


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class QuestionFailure:
    """A question whose line was written with an error.

    Attributes:
        question_id: the question's id.
        image: its image path, relative to the data root.
        error: ``"<ErrorClass>: <message>"``.
    """

    question_id: str
    image: str
    error: str


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What one run of a benchmark chunk did.

    Attributes:
        benchmark: ``lrs-vqa`` or ``mme``.
        question_file: the question file read.
        out: the prediction file appended to.
        store_dir: the folder of scene stores.
        model_id: model and preset written into each line (``<model_id>/<preset>``).
        num_chunks: number of chunks the question file is split into.
        chunk_idx: the chunk this run answered.
        n_selected: questions in the chunk after ``limit``.
        n_already_done: of those, questions an earlier run answered (skipped).
        n_retried: failed lines of an earlier run taken out to be tried again.
        n_answered: questions answered by this run without error.
        n_failed: questions of this run written with an error.
        n_scenes: images this run ingested or reused.
        seconds: wall time of the run.
        failures: the failed questions of this run.
    """

    benchmark: Benchmark
    question_file: Path
    out: Path
    store_dir: Path
    model_id: str
    num_chunks: int
    chunk_idx: int
    n_selected: int
    n_already_done: int
    n_retried: int
    n_answered: int
    n_failed: int
    n_scenes: int
    seconds: float
    failures: tuple[QuestionFailure, ...] = ()

    @property
    def is_complete(self) -> bool:
        """Whether every selected question now has an answer without error."""
        return self.n_failed == 0 and self.n_already_done + self.n_answered == self.n_selected

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as plain JSON values (paths as strings)."""
        return {
            "benchmark": self.benchmark,
            "question_file": str(self.question_file),
            "out": str(self.out),
            "store_dir": str(self.store_dir),
            "model_id": self.model_id,
            "num_chunks": self.num_chunks,
            "chunk_idx": self.chunk_idx,
            "n_selected": self.n_selected,
            "n_already_done": self.n_already_done,
            "n_retried": self.n_retried,
            "n_answered": self.n_answered,
            "n_failed": self.n_failed,
            "n_scenes": self.n_scenes,
            "seconds": self.seconds,
            "failures": [
                {"question_id": f.question_id, "image": f.image, "error": f.error}
                for f in self.failures
            ],
        }


# -- the shared answering loop -----------------------------------------------------------------

#: Builds a prediction line from ``(model_id, record or None, error or None)``.
RowBuilder = Callable[[str, "AnswerRecord | None", "str | None"], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class PendingQuestion:
    """One question still to answer.

    Attributes:
        question_id: the benchmark's id.
        text: what the engine is asked (without the ``<image>`` placeholder; the chat template
            adds it).
        build_row: turns the outcome into the prediction line.
    """

    question_id: str
    text: str
    build_row: RowBuilder


@dataclass(frozen=True, kw_only=True)
class PendingScene:
    """The questions still to answer about one image.

    Attributes:
        image: the image path as the question file gives it.
        image_path: the absolute path inside the data root (it may not exist).
        questions: the questions, in file order.
    """

    image: str
    image_path: Path
    questions: tuple[PendingQuestion, ...]


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """How to build the engine, kept apart so it is loaded only when something is left to do.

    Attributes:
        model_dir: model directory.
        preset: focus preset name.
        budget: ``token_budget`` override; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        dtype: ``auto``/None (checkpoint dtype on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        overrides: further :class:`~lrs_core.focus.engine.FocusConfig` fields.
    """

    model_dir: Path
    preset: str = "default"
    budget: int | None = None
    device: str = "auto"
    dtype: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> FocusEngine:
        """Load the model and return the engine (see :func:`lrs_core.batch.ask.load_engine`)."""
        from lrs_core.batch.ask import load_engine

        return load_engine(
            self.model_dir,
            preset=self.preset,
            budget=self.budget,
            device=self.device,
            dtype=self.dtype,
            overrides=dict(self.overrides),
        )


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def ingest_image(
    image_path: Path, *, image: str, store_dir: Path, config: IngestConfig
) -> IngestResult:
    """Ingest one benchmark image into ``store_dir`` (skipped when already done).

    Raises:
        SceneNotFoundError: the image is missing.
        SceneReadError: it cannot be decoded.
        StoreConflictError: the store holds another image.
    """
    with warnings.catch_warnings():
        # Benchmark images are plain PNG/TIFF: no georeference is expected, so none is missing.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # Chunks of one run share the store cache: queue behind a chunk ingesting the same image.
        return ingest_scene(
            image_path, store_dir, scene_id=scene_id_for(image), config=config, wait=True
        )


def prepare_output(out: Path, *, id_key: str) -> tuple[set[str], int]:
    """Make ``out`` ready to resume; return ``(ids answered without error, failed lines removed)``.

    A half-written last line is cut (:func:`drop_partial_tail`). Lines with an ``error`` field
    are taken out so the run tries their questions again; so are lines that are not JSON (a torn
    write; warned) and repeated answers of an id (the first is kept; warned). The file is then
    rewritten atomically, the kept lines unchanged. An empty file is a file with nothing done.

    Raises:
        DatasetError: a JSON line has no string ``id_key`` (not a prediction file of this
            benchmark).
    """
    out = Path(out)
    if not out.exists():
        return set(), 0
    drop_partial_tail(out)
    done: set[str] = set()
    kept: list[str] = []
    n_failed = n_torn = n_repeated = 0
    with open(out, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            n_torn += 1
            continue
        key = row.get(id_key) if isinstance(row, dict) else None
        if not isinstance(key, str):
            raise DatasetError(f"{out}:{line_no}: no string '{id_key}'; is this the right file?")
        if row.get(ERROR_KEY) is not None:
            n_failed += 1
            continue
        if key in done:
            n_repeated += 1
            continue
        done.add(key)
        kept.append(line)
    if n_torn:
        log.warning(
            "%s: %d line(s) that are not JSON (torn writes) dropped; their questions are "
            "answered again",
            out,
            n_torn,
        )
    if n_repeated:
        log.warning(
            "%s: %d repeated answer(s) of an id already answered dropped (the first is kept)",
            out,
            n_repeated,
        )
    if n_failed:
        log.info("%s: %d failed lines taken out to be tried again", out, n_failed)
    if n_failed or n_torn or n_repeated:
        partial = out.with_name(out.name + ".partial")
        with open(partial, "w", encoding="utf-8") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, out)
    return done, n_failed


def answer_scenes(
    scenes: Sequence[PendingScene],
    *,
    engine_spec: EngineSpec,
    out: Path,
    store_dir: Path,
    ingest_config: IngestConfig,
    keep_heatmap: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, list[QuestionFailure], str]:
    """Ingest and answer pending scenes, appending one line per question to ``out``.

    Errors of one scene or question (:class:`LrsError`, ``OSError``) become ``error`` lines;
    anything else (a bug, running out of memory) stops the run, and a rerun resumes after the last
    written line.

    Returns:
        ``(n_answered, failures, model_id)``; the model is loaded only if a question is pending.

    Raises:
        ConfigError: unknown preset or field. WeightsError: the model does not load.
    """
    from lrs_core.raster.pyramid import open_pyramid

    total = sum(len(scene.questions) for scene in scenes)
    if total == 0:
        return 0, [], f"-/{engine_spec.preset}"
    if progress is not None:
        progress(0, total)  # the total is known before the model loads and the first answer
    engine = engine_spec.load()
    model_id = f"{engine.loaded.model_id}/{engine.config.preset}"
    failures: list[QuestionFailure] = []
    n_answered = 0
    done = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab", buffering=0) as fh:

        def write(row: dict[str, Any]) -> None:
            # One write of the whole line on an O_APPEND file, then fsync: a line is on disk
            # whole (or, after a kill, is a partial last line that the next run cuts).
            data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fh.fileno(), view) :]
            os.fsync(fh.fileno())

        for scene in scenes:
            pyramid: Any = None
            scene_error: str | None = None
            try:
                ingest_image(
                    scene.image_path, image=scene.image, store_dir=store_dir, config=ingest_config
                )
                pyramid = open_pyramid(store_dir / f"{scene_id_for(scene.image)}.zarr")
            except (LrsError, OSError) as err:
                scene_error = _describe(err)
                log.warning("%s: cannot ingest (%s); its questions fail", scene.image, scene_error)
            for question in scene.questions:
                record: AnswerRecord | None = None
                error = scene_error
                if pyramid is not None:
                    try:
                        record = engine.answer(
                            pyramid, question.text, question_id=question.question_id
                        )
                    except (LrsError, OSError) as err:
                        error = _describe(err)
                        log.warning("%s: question failed: %s", question.question_id, error)
                if record is not None and not keep_heatmap:
                    record = replace(record, heatmap=None)
                write(question.build_row(model_id, record, error))
                if error is None:
                    n_answered += 1
                else:
                    failures.append(
                        QuestionFailure(
                            question_id=question.question_id, image=scene.image, error=error
                        )
                    )
                done += 1
                if progress is not None:
                    progress(done, total)
    return n_answered, failures, model_id


# -- LRS-VQA -----------------------------------------------------------------------------------


def _answer_pending(
    benchmark: Benchmark,
    pending: list[PendingScene],
    *,
    question_file: Path,
    out: Path,
    stores: Path,
    n_selected: int,
    n_retried: int,
    started: float,
    engine_spec: EngineSpec,
    ingest_config: IngestConfig | None,
    keep_heatmap: bool,
    progress: Callable[[int, int], None] | None,
    num_chunks: int,
    chunk_idx: int,
) -> RunSummary:
    """Answer the pending scenes of a run and count it (``started``: its perf_counter start)."""
    n_answered, failures, model_id = answer_scenes(
        pending,
        engine_spec=engine_spec,
        out=out,
        store_dir=stores,
        ingest_config=ingest_config or IngestConfig(),
        keep_heatmap=keep_heatmap,
        progress=progress,
    )
    n_pending = sum(len(scene.questions) for scene in pending)
    return RunSummary(
        benchmark=benchmark,
        question_file=question_file,
        out=out,
        store_dir=stores,
        model_id=model_id,
        num_chunks=num_chunks,
        chunk_idx=chunk_idx,
        n_selected=n_selected,
        n_already_done=n_selected - n_pending,
        n_retried=n_retried,
        n_answered=n_answered,
        n_failed=len(failures),
        n_scenes=len(pending),
        seconds=time.perf_counter() - started,
        failures=tuple(failures),
    )


def _lrs_vqa_row(question: LrsVqaQuestion) -> RowBuilder:
    def build(model_id: str, record: AnswerRecord | None, error: str | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if record is not None:
            extra[RECORD_KEY] = record.to_dict()
        if error is not None:
            extra[ERROR_KEY] = error
        answer = "" if record is None or error is not None else record.answer
        return make_prediction(question, answer=answer, model_id=model_id, extra=extra).to_dict()

    return build


class RunOptions(TypedDict, total=False):
    """Keyword arguments of :func:`run_lrs_vqa` and :func:`run_mme` (and :func:`run_benchmark`).

    Attributes:
        model_dir: model directory (:func:`lrs_core.models.loading.auto.load_model` layouts).
        out: prediction JSONL, appended to; a rerun resumes it (see the module docstring).
        data_root: folder the image paths are relative to (for LRS-VQA the parent of
            ``LRS_VQA/``); None: the question file's folder.
        preset: focus preset (``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``, ...).
        store_dir: folder of scene stores; None: ``<out>.stores`` (:func:`default_store_dir`).
        limit: answer at most the first ``limit`` questions of the chunk.
        num_chunks: contiguous chunks the question file is split into.
        chunk_idx: the chunk to answer.
        budget: ``token_budget`` (vision tokens to the LLM); None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        dtype: ``auto``/None (checkpoint dtype on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        overrides: further :class:`~lrs_core.focus.engine.FocusConfig` fields (e.g.
            ``max_new_tokens``).
        ingest_config: how images become stores; None: :class:`IngestConfig` defaults.
        keep_heatmap: keep the scene heat map in each line's record.
        progress: called with ``(questions done, questions pending)``: once with 0 before the
            model loads, then after each question.
        wait: queue behind another run writing ``out`` instead of failing at once.
    """

    model_dir: Required[Path]
    out: Required[Path]
    data_root: Path | None
    preset: str
    store_dir: Path | None
    limit: int | None
    num_chunks: int
    chunk_idx: int
    budget: int | None
    device: str
    dtype: str | None
    overrides: Mapping[str, Any] | None
    ingest_config: IngestConfig | None
    keep_heatmap: bool
    progress: Callable[[int, int], None] | None
    wait: bool


#: Builds a chunk's pending scenes from the ids already answered: ``(scenes, questions selected)``.
PendingBuilder = Callable[[set[str]], tuple[list[PendingScene], int]]
#: Reads and validates a chunk of a question file before the output is touched:
#: ``(question file, data root, limit, num_chunks, chunk_idx) -> builder of its pending scenes``.
ChunkReader = Callable[[Path, Path, int | None, int, int], PendingBuilder]


def _run_chunk(
    benchmark: Benchmark,
    questions: Path,
    read_chunk: ChunkReader,
    *,
    default_name: str,
    model_dir: Path,
    out: Path,
    data_root: Path | None = None,
    preset: str = "default",
    store_dir: Path | None = None,
    limit: int | None = None,
    num_chunks: int = 1,
    chunk_idx: int = 0,
    budget: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    ingest_config: IngestConfig | None = None,
    keep_heatmap: bool = False,
    progress: Callable[[int, int], None] | None = None,
    wait: bool = False,
) -> RunSummary:
    """Answer (a chunk of) a benchmark's question file (see :class:`RunOptions`)."""
    start = time.perf_counter()
    question_file, root = resolve_question_file(
        questions, data_root=data_root, default_name=default_name
    )
    out = Path(out)
    stores = (Path(store_dir) if store_dir is not None else default_store_dir(out)).absolute()
    build_pending = read_chunk(question_file, root, limit, num_chunks, chunk_idx)
    with exclusive_writer(
        out, purpose=f"lrs eval run {benchmark} chunk {chunk_idx} of {num_chunks}", wait=wait
    ):  # one writer per prediction file, from reading what is done to the last line
        done_ids, n_retried = prepare_output(out, id_key=ID_KEYS[benchmark])
        pending, n_selected = build_pending(done_ids)
        return _answer_pending(
            benchmark,
            pending,
            question_file=question_file,
            out=out,
            stores=stores,
            n_selected=n_selected,
            n_retried=n_retried,
            started=start,
            engine_spec=EngineSpec(
                model_dir=Path(model_dir),
                preset=preset,
                budget=budget,
                device=device,
                dtype=dtype,
                overrides=dict(overrides or {}),
            ),
            ingest_config=ingest_config,
            keep_heatmap=keep_heatmap,
            progress=progress,
            num_chunks=num_chunks,
            chunk_idx=chunk_idx,
        )


def _read_lrs_vqa_chunk(
    question_file: Path, root: Path, limit: int | None, num_chunks: int, chunk_idx: int
) -> PendingBuilder:
    selected = list(  # validated (and escapes refused) before the output is touched
        iter_scenes(
            question_file,
            data_root=root,
            limit=limit,
            num_chunks=num_chunks,
            chunk_idx=chunk_idx,
            must_exist=False,
        )
    )

    def build(done_ids: set[str]) -> tuple[list[PendingScene], int]:
        pending = [
            PendingScene(
                image=scene.image,
                image_path=scene.image_path,
                questions=tuple(
                    PendingQuestion(
                        question_id=q.question_id, text=q.text, build_row=_lrs_vqa_row(q)
                    )
                    for q in scene.questions
                    if q.question_id not in done_ids
                ),
            )
            for scene in selected
        ]
        n_selected = sum(len(scene.questions) for scene in selected)
        return [scene for scene in pending if scene.questions], n_selected

    return build


def run_lrs_vqa(questions: Path, **options: Unpack[RunOptions]) -> RunSummary:
    """Answer (a chunk of) LRS-VQA with one engine; append one prediction line per question.

    Args:
        questions: the question file, or a data root holding ``LRS_VQA_merged.jsonl``.
        **options: :class:`RunOptions` (``model_dir`` and ``out`` required); ``data_root`` is the
            parent of ``LRS_VQA/``, the folder the ``image`` paths are relative to.

    Returns:
        The run's counts; ``n_failed > 0`` means some lines carry an ``error``.

    Raises:
        WriterLockedError: another run writes ``out`` (and ``wait`` is off).
        DatasetError: the question file or the output is invalid, an image path escapes the data
            root, or the chunk arguments are invalid.
        ConfigError: unknown preset or field. WeightsError: the model does not load.
    """
    return _run_chunk(
        "lrs-vqa",
        questions,
        _read_lrs_vqa_chunk,
        default_name=QUESTION_FILE_NAME,
        **options,
    )


# -- MME-RealWorld-RS --------------------------------------------------------------------------


def read_mme_rows(path: Path) -> list[dict[str, Any]]:
    """Read MME-RealWorld items as raw dicts (JSON list or JSONL), validating each one.

    Raises:
        DatasetError: the file cannot be read or parsed, or an item is invalid.
    """
    pairs = read_raw_rows(path)
    seen: set[str] = set()
    for place, row in pairs:
        item = parse_item(row, where=place)
        if item.question_id in seen:
            raise DatasetError(f"{place}: Question_id {item.question_id!r} repeats")
        seen.add(item.question_id)
    return [dict(row) for _, row in pairs]


def mme_question_text(row: Mapping[str, Any]) -> str:
    r"""Return what the engine is asked for an MME item: spec §8's prompt without ``<image>\\n``.

    The chat template puts ``"<image>\\n" + text + "\\n"`` into the user turn, so the model sees
    the reference's prompt followed by one newline the reference does not add.
    """
    return build_prompt(parse_item(row)).removeprefix(IMAGE_PLACEHOLDER + "\n")


def _mme_row(item: Mapping[str, Any]) -> RowBuilder:
    def build(model_id: str, record: AnswerRecord | None, error: str | None) -> dict[str, Any]:
        row = {k: v for k, v in item.items() if k not in ("Output", ERROR_KEY, RECORD_KEY)}
        if error is None and record is not None:
            row["Output"] = record.answer.strip()
        row[MME_MODEL_KEY] = model_id
        if record is not None:
            row[RECORD_KEY] = record.to_dict()
        if error is not None:
            row[ERROR_KEY] = error
        return row

    return build


def _read_mme_chunk(
    question_file: Path, root: Path, limit: int | None, num_chunks: int, chunk_idx: int
) -> PendingBuilder:
    if limit is not None and limit < 0:
        raise DatasetError(f"limit={limit} must be >= 0")
    rows = read_mme_rows(question_file)
    begin, stop = chunk_bounds(len(rows), num_chunks=num_chunks, chunk_idx=chunk_idx)
    rows = rows[begin:stop][:limit]
    # Resolved (and escapes refused) before the output is touched.
    image_paths = {row["Image"]: resolve_image_path(root, row["Image"]) for row in rows}

    def build(done_ids: set[str]) -> tuple[list[PendingScene], int]:
        grouped: dict[str, list[PendingQuestion]] = {}
        for row in rows:
            if row["Question_id"] in done_ids:
                continue
            grouped.setdefault(row["Image"], []).append(
                PendingQuestion(
                    question_id=row["Question_id"],
                    text=mme_question_text(row),
                    build_row=_mme_row(row),
                )
            )
        pending = [
            PendingScene(image=image, image_path=image_paths[image], questions=tuple(items))
            for image, items in grouped.items()
        ]
        return pending, len(rows)

    return build


def run_mme(json_path: Path, **options: Unpack[RunOptions]) -> RunSummary:
    """Answer (a chunk of) MME-RealWorld-RS; append the item plus ``"Output"`` per question.

    Args:
        json_path: ``MME_RealWorld_RS.json`` (JSON list or JSONL), or a data root holding it.
        **options: :class:`RunOptions` (``model_dir`` and ``out`` required); ``data_root`` is the
            folder the ``Image`` paths are relative to.

    Returns:
        The run's counts.

    Raises:
        WriterLockedError: another run writes ``out`` (and ``wait`` is off).
        DatasetError: invalid items or output, an image path escaping the data root, bad chunks.
        ConfigError: unknown preset or field. WeightsError: the model does not load.
    """
    return _run_chunk(
        "mme", json_path, _read_mme_chunk, default_name=MME_QUESTION_FILE_NAME, **options
    )


def run_benchmark(benchmark: Benchmark, questions: Path, **kwargs: Any) -> RunSummary:
    """Dispatch to :func:`run_lrs_vqa` or :func:`run_mme` by name.

    Raises:
        ConfigError: unknown benchmark name.
    """
    from lrs_core.errors import ConfigError

    if benchmark == "lrs-vqa":
        return run_lrs_vqa(questions, **kwargs)
    if benchmark == "mme":
        return run_mme(questions, **kwargs)
    raise ConfigError(f"benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")


# -- preparing stores ahead of parallel chunks -------------------------------------------------


def benchmark_images(
    benchmark: Benchmark,
    questions: Path,
    *,
    data_root: Path | None = None,
    limit: int | None = None,
    num_chunks: int = 1,
) -> tuple[Path, Path, list[tuple[str, Path]]]:
    """Return ``(question_file, data_root, [(image, image_path)])`` of the chunks' questions.

    With ``limit``, each of the ``num_chunks`` chunks contributes its first ``limit`` questions,
    as the runs will.

    Raises:
        DatasetError: invalid question file or an image path escaping the data root.
    """
    name = QUESTION_FILE_NAME if benchmark == "lrs-vqa" else MME_QUESTION_FILE_NAME
    question_file, root = resolve_question_file(questions, data_root=data_root, default_name=name)
    if limit is not None and limit < 0:
        raise DatasetError(f"limit={limit} must be >= 0")
    if benchmark == "lrs-vqa":
        image_of = [q.image for q in read_questions(question_file)]
    else:
        image_of = [row["Image"] for row in read_mme_rows(question_file)]
    images: dict[str, Path] = {}
    for chunk_idx in range(num_chunks):
        begin, stop = chunk_bounds(len(image_of), num_chunks=num_chunks, chunk_idx=chunk_idx)
        for image in image_of[begin:stop][:limit]:
            if image not in images:
                images[image] = resolve_image_path(root, image)
    return question_file, root, list(images.items())


def ingest_benchmark_scenes(
    images: Iterable[tuple[str, Path]],
    *,
    store_dir: Path,
    ingest_config: IngestConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[IngestResult]:
    """Ingest benchmark images into ``store_dir`` one after the other (before parallel chunks).

    A failing image gets a ``failed`` result (its questions will fail in the runs) and the others
    go on.

    Args:
        images: ``(image, image_path)`` pairs, e.g. from :func:`benchmark_images`.
        store_dir: the folder of stores the runs will share.
        ingest_config: how images become stores; None: defaults.
        progress: called with ``(images done, images total)``.
    """
    config = ingest_config or IngestConfig()
    pairs = list(images)
    results: list[IngestResult] = []
    for index, (image, image_path) in enumerate(pairs):
        try:
            results.append(
                ingest_image(image_path, image=image, store_dir=store_dir, config=config)
            )
        except (LrsError, OSError) as err:
            log.warning("%s: cannot ingest: %s", image, _describe(err))
            results.append(
                IngestResult(
                    scene_id=scene_id_for(image),
                    source=str(image_path),
                    store=None,
                    status="failed",
                    error=_describe(err),
                )
            )
        if progress is not None:
            progress(index + 1, len(pairs))
    return results
