"""Flow ``answer-questions``: answer a batch of (scene, question) requests; resumable.

Reads the requests (a CSV / JSONL / Parquet file of ``scene,question[,id]`` rows, or a list of
dicts), resolves each scene (a store path, a scene id inside ``store``, or a raster file, which is
ingested first with the ingest task), groups the questions by scene so tile features are shared,
and runs one :func:`tasks.answer.answer_scene_task` per scene. Each answer is appended to ``out``
when it exists; a rerun (after a kill, or to add rows) answers only the ids ``out`` does not hold,
and finished answers are never rewritten.

Bad input fails the item, not the batch: an unreadable row, a duplicate id, a missing scene, a
scene path outside the data root or a scene that does not ingest becomes a ``failed`` row with its
reason, listed in the run's summary artifact, while the other questions are answered and written.
The run then ends ``Failed`` with the message "N of M questions failed; see ..." (never a green
``Completed``), after every other answer is written. Bad run settings fail the run before any
output is written: an unreadable requests file, a model directory that does not load, an unknown
preset, an output folder that cannot be written, or one that another run is writing
(:class:`~lrs_core.locks.WriterLockedError`, naming its pid, host and start; ``wait=True`` queues
behind it instead).

Scene paths of requests are confined to the data root (the ``data_root`` parameter, else the
``LRS_DATA_ROOT`` environment variable; without either, paths are not confined): relative paths
are read from it, and a path that resolves (symbolic links followed) outside it and outside
``store`` is refused for its row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.outcome import failed_run
from lrs_core.errors import DatasetError, OutputNotWritableError
from lrs_core.locks import WriterLockedError
from lrs_core.outputs.parts import BatchCounts, BatchWriter, answered_ids, batch_lock
from lrs_core.raster.ingest import RASTER_SUFFIXES
from tasks.answer import answer_scene_task, cached_engine
from tasks.artifacts import progress_reporter, publish_answer_artifacts
from tasks.ingest import ingest_scene_task

#: Raster scenes ingested at the same time (answers run one scene at a time: one model, one GPU).
MAX_CONCURRENT_INGESTS = 4
#: Column / key names accepted for each request field (first present wins).
SCENE_KEYS = ("scene", "scene_id", "store", "image")
QUESTION_KEYS = ("question", "text")
ID_KEYS = ("id", "question_id", "qid")
#: Hex digits of the question hash in generated ids (``<scene>-<hash>``).
GENERATED_ID_DIGITS = 12
STORE_SUFFIX = ".zarr"
ARTIFACT_KEY_PREFIX = "answer-questions"
REQUEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
#: Environment variable naming the data root when the flow's ``data_root`` is not given.
DATA_ROOT_ENV = "LRS_DATA_ROOT"

RequestsLike = str | os.PathLike[str] | list[dict[str, Any]]


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
    """A request row that cannot be answered, and why."""

    where: str
    question_id: str
    scene: str | None
    question: str | None
    error: str


def _pick(row: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def generated_id(scene: str, question: str) -> str:
    """Return the id of a request without one: ``<scene name>-<first hex digits of sha1>``."""
    name = Path(scene.rstrip("/")).name.removesuffix(STORE_SUFFIX)
    name = Path(name).stem if Path(name).suffix.lower() in RASTER_SUFFIXES else name
    digest = hashlib.sha1(f"{name}\n{question}".encode()).hexdigest()[:GENERATED_ID_DIGITS]
    return f"{name}-{digest}"


def _raw_rows(requests: RequestsLike) -> list[tuple[str, Any]]:
    """Return ``(where, row)`` pairs; a row that cannot be parsed is a string saying why."""
    if isinstance(requests, list):
        return [(f"requests[{i}]", row) for i, row in enumerate(requests)]
    path = Path(requests)
    if not path.is_file():
        raise DatasetError(
            f"{path}: requests file not found; give a CSV, JSONL or Parquet file of "
            "scene,question[,id] rows"
        )
    suffix = path.suffix.lower()
    if suffix not in REQUEST_SUFFIXES:
        raise DatasetError(
            f"{path}: unknown requests format {suffix!r}; use one of {list(REQUEST_SUFFIXES)}"
        )
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return [(f"{path}:row {i + 1}", row) for i, row in enumerate(table.to_pylist())]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read the requests file ({err})") from err
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        fields = set(reader.fieldnames or ())
        if not fields & set(SCENE_KEYS) or not fields & set(QUESTION_KEYS):
            raise DatasetError(
                f"{path}:1: the header {sorted(fields)} must name a 'scene' and a 'question' "
                "column (and optionally 'id')"
            )
        rows: list[tuple[str, Any]] = []
        for row in reader:
            if not any(str(v or "").strip() for v in row.values()):
                continue
            rows.append((f"{path}:{reader.line_num}", row))
        return rows
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{line_no}", json.loads(line)))
        except json.JSONDecodeError as err:
            rows.append((f"{path}:{line_no}", f"not a JSON object ({err.msg})"))
    return rows


def read_requests(requests: RequestsLike) -> tuple[list[AnswerRequest], list[RequestProblem]]:
    """Read the requests; rows that cannot be used become problems, not errors.

    Args:
        requests: a ``.csv`` (header row), ``.jsonl`` or ``.parquet`` file, or a list of dicts,
            with the fields ``scene`` (or ``scene_id``/``store``/``image``), ``question`` (or
            ``text``) and optionally ``id`` (or ``question_id``/``qid``).

    Returns:
        The usable requests in order, and the problems: rows that do not parse, rows without a
        scene or question, and repeats of an id already used.

    Raises:
        DatasetError: the file is missing, of an unknown format, or unreadable as a whole.
    """
    found: list[AnswerRequest] = []
    problems: list[RequestProblem] = []
    seen: set[str] = set()
    for index, (where, row) in enumerate(_raw_rows(requests), start=1):
        if not isinstance(row, Mapping):
            reason = row if isinstance(row, str) else f"not a mapping ({type(row).__name__})"
            problems.append(
                RequestProblem(
                    where=where, question_id=f"row-{index}", scene=None, question=None, error=reason
                )
            )
            continue
        scene, question = _pick(row, SCENE_KEYS), _pick(row, QUESTION_KEYS)
        given_id = _pick(row, ID_KEYS)
        if scene is None or question is None:
            missing = [name for name, v in (("scene", scene), ("question", question)) if v is None]
            problems.append(
                RequestProblem(
                    where=where,
                    question_id=given_id or f"row-{index}",
                    scene=scene,
                    question=question,
                    error=f"{where}: the row has no {' and no '.join(missing)}",
                )
            )
            continue
        question_id = given_id or generated_id(scene, question)
        if question_id in seen:
            problems.append(
                RequestProblem(
                    where=where,
                    question_id=question_id,
                    scene=scene,
                    question=question,
                    error=f"{where}: id {question_id!r} is used by an earlier row; give it its own",
                )
            )
            continue
        seen.add(question_id)
        found.append(AnswerRequest(scene=scene, question=question, question_id=question_id))
    return found, problems


def check_output_writable(out: str) -> None:
    """Make sure ``out`` (a local folder) can be created and written; URLs are left to the writer.

    Raises:
        OutputNotWritableError: the folder (or its ``answers.parquet``) cannot be written.
    """
    if "://" in out and not out.startswith("file://"):
        return
    folder = Path(out.removeprefix("file://"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for target in (folder, folder / "answers.parquet"):
            if target.is_dir():
                handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=target)
                os.close(handle)
                os.unlink(probe)
    except OSError as err:
        raise OutputNotWritableError(
            f"{out}: the output folder cannot be written ({err.strerror or err}); choose another "
            "'out' folder or fix its permissions (nothing was written)"
        ) from err


def _failed_row(
    question_id: str, scene: str | None, question: str | None, error: str
) -> dict[str, Any]:
    return {
        "question_id": question_id,
        "scene": scene,
        "scene_id": None,
        "question": question,
        "status": "failed",
        "answer": None,
        "error": error,
    }


def data_root_of(data_root: str | None) -> Path | None:
    """Return the data root requests are confined to: ``data_root``, else ``$LRS_DATA_ROOT``.

    None (neither is set) leaves request paths unconfined.
    """
    chosen = data_root if data_root else os.environ.get(DATA_ROOT_ENV) or None
    return None if chosen is None else Path(chosen).resolve()


def _confined(path: Path, *, allowed: tuple[Path, ...], scene: str) -> str | None:
    """Return an error when ``path`` resolves outside every ``allowed`` root, else None."""
    resolved = path.resolve()
    if any(resolved.is_relative_to(root) for root in allowed):
        return None
    return (
        f"scene {scene!r} resolves to {resolved}, outside the data root {allowed[0]}; refused "
        "(put the scene under the data root, or run with a data_root that holds it)"
    )


def _resolve_scene(scene: str, store: str, data_root: Path | None = None) -> tuple[str, str] | str:
    """Return ``("store", path)`` or ``("raster", path)``, or an error message.

    With a ``data_root``, a relative ``scene`` path is read from it, and any path that resolves
    outside both ``data_root`` and ``store`` is refused (an error message, not an exception).
    """
    path = Path(scene)
    allowed: tuple[Path, ...] = ()
    if data_root is not None:
        allowed = (data_root, Path(store).resolve())
        if not path.is_absolute():
            path = data_root / path
    in_store = Path(store) / f"{scene}{STORE_SUFFIX}"
    if path.suffix == STORE_SUFFIX or path.is_dir():
        if allowed and (escape := _confined(path, allowed=allowed, scene=scene)) is not None:
            return escape
        if path.is_dir():
            return ("store", str(path))
        return f"scene store {scene} does not exist; ingest the scene first or fix the path"
    if in_store.is_dir():
        if allowed and (escape := _confined(in_store, allowed=allowed, scene=scene)) is not None:
            return escape
        return ("store", str(in_store))
    if path.suffix.lower() in RASTER_SUFFIXES:
        if allowed and (escape := _confined(path, allowed=allowed, scene=scene)) is not None:
            return escape
        return ("raster", str(path))  # a missing file fails its ingest task with a clear error
    return (
        f"scene {scene!r} is neither a store path, nor a scene id in {store} (no {in_store}), "
        f"nor a raster file ({', '.join(sorted(RASTER_SUFFIXES))}); ingest it first or give "
        "its path"
    )


@flow(
    name="answer-questions",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_INGESTS),  # type: ignore[arg-type]  # Prefect's generic runner typing
)
def answer_questions(
    requests: str | list[dict[str, Any]],
    model: str,
    preset: str = "default",
    out: str = "answers",
    store: str = "stores",
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    data_root: str | None = None,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Answer every request that ``out`` does not hold yet; report each question's outcome.

    Args:
        requests: a CSV / JSONL / Parquet file of ``scene,question[,id]`` rows, or a list of dicts
            with those keys (see :func:`read_requests`).
        model: the model directory.
        preset: engine preset (``default``, ``parity``, ``thumbnail``, ``grid-N``, ``full``...).
        out: batch output folder (local path or fsspec URL): ``answers.parquet/``,
            ``answers.geojson``, ``overlays/``.
        store: folder of scene stores: where scene ids are looked up and rasters are ingested.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        data_root: folder request scene paths are confined to (relative ones are read from it);
            None: ``$LRS_DATA_ROOT``, or unconfined when that is unset too.
        wait: queue behind another run writing ``out`` instead of failing at once.

    Returns:
        One row per request (see :mod:`tasks.artifacts`): ``answered``, ``skipped`` (already in
        ``out``) or ``failed`` with its ``error``; ``BatchCounts.from_rows(rows).failed`` counts
        the failures. Published as the artifacts
        ``answer-questions-answers`` (table), ``-summary`` and ``-overlays`` (markdown). When a
        row failed the run ends ``Failed`` ("N of M questions failed; see ...") after writing
        every answer it could; ``state.result(raise_on_failure=False)`` of a
        ``return_state=True`` call is then a :class:`~flows.outcome.QuestionsFailedError` holding
        the rows (:func:`flows.outcome.run_result` returns them either way).

    Raises:
        QuestionsFailedError: (called without ``return_state=True``) a row failed; the answers of
            the other rows are written, and the error's ``result`` holds every row.
        DatasetError: the requests file cannot be read.
        WeightsError, ConfigError: the model does not load, or the preset/budget is invalid.
        OutputNotWritableError: ``out`` cannot be written.
        WriterLockedError: another run writes ``out`` (and ``wait`` is off).
    """
    logger = get_run_logger()
    root = data_root_of(data_root)
    items, problems = read_requests(requests)
    done = answered_ids(out) if items else set()
    pending = [item for item in items if item.question_id not in done]
    logger.info(
        "%d requests (%d already answered in %s), %d unusable rows",
        len(items),
        len(items) - len(pending),
        out,
        len(problems),
    )
    if pending:  # fail on a bad model before anything is written
        cached_engine(model, preset=preset, budget=budget, device=device, dtype=dtype)
    check_output_writable(out)
    with batch_lock(out, purpose="answer-questions", wait=wait):
        pass  # fail now, before any ingest, when another run writes ``out``; tasks lock it again

    rows_by_id: dict[str, dict[str, Any]] = {}
    for problem in problems:
        logger.warning("unusable request %s: %s", problem.where, problem.error)
        rows_by_id[problem.question_id] = _failed_row(
            problem.question_id, problem.scene, problem.question, problem.error
        )

    for item in items:
        if item.question_id in done:
            rows_by_id[item.question_id] = {
                **_failed_row(item.question_id, item.scene, item.question, ""),
                "status": "skipped",
                "error": None,
            }

    # Ingest the raster scenes still to answer (concurrently) first, so that requests naming the
    # same scene by its id in this batch find the new store; then resolve the other scenes.
    store_of_scene: dict[str, str] = {}
    ingests: dict[str, PrefectFuture[dict[str, Any]]] = {}
    scene_errors: dict[str, str] = {}
    scenes = list(dict.fromkeys(item.scene for item in pending))
    for scene in scenes:
        resolved = _resolve_scene(scene, store, root)
        if not isinstance(resolved, str) and resolved[0] == "raster":
            ingests[scene] = ingest_scene_task.submit(resolved[1], store)
    for scene, future in ingests.items():
        future.wait()
        outcome = future.result(raise_on_failure=False)
        if future.state.is_completed():
            store_of_scene[scene] = str(outcome["store"])
        else:
            scene_errors[scene] = f"ingest of {scene} failed: " + " ".join(str(outcome).split())
    for scene in scenes:
        if scene in ingests:
            continue
        resolved = _resolve_scene(scene, store, root)
        if isinstance(resolved, str):
            scene_errors[scene] = resolved
        else:
            store_of_scene[scene] = resolved[1]

    groups: dict[str, list[AnswerRequest]] = {}
    for item in pending:
        if item.scene in scene_errors:
            logger.warning("request %s: %s", item.question_id, scene_errors[item.scene])
            rows_by_id[item.question_id] = _failed_row(
                item.question_id, item.scene, item.question, scene_errors[item.scene]
            )
        else:
            groups.setdefault(store_of_scene[item.scene], []).append(item)

    # One scene at a time: a GPU holds one model, and the scene's tiles stay in its cache.
    progress = progress_reporter(f"questions answered into {out}")
    finished = 0
    for store_path, group in groups.items():
        scene_id = Path(store_path).name.removesuffix(STORE_SUFFIX)
        state = answer_scene_task(
            store_path,
            [
                {"question_id": i.question_id, "question": i.question, "scene": i.scene}
                for i in group
            ],
            model,
            out,
            scene_id=scene_id,
            preset=preset,
            budget=budget,
            device=device,
            wait=wait,
            dtype=dtype,
            return_state=True,
        )
        if state.is_completed():
            for row in state.result():
                rows_by_id[row["question_id"]] = row
        else:
            error = " ".join(str(state.result(raise_on_failure=False)).split())
            logger.warning("answers about %s failed: %s", scene_id, error)
            for item in group:
                rows_by_id[item.question_id] = _failed_row(
                    item.question_id, item.scene, item.question, error
                )
        finished += len(group)
        if progress is not None:
            progress(finished, len(pending))

    if any(row["status"] == "answered" for row in rows_by_id.values()):
        try:
            with BatchWriter(
                out, refresh_geojson=False, purpose="answer-questions", wait=wait
            ) as writer:
                writer.finalize()
        except WriterLockedError as err:  # the run now writing ``out`` finalizes it in turn
            logger.warning("answers.geojson not refreshed: %s", err)
    order = [item.question_id for item in items] + [p.question_id for p in problems]
    rows = [rows_by_id[question_id] for question_id in dict.fromkeys(order)]
    counts = BatchCounts.from_rows(rows)
    logger.info("answers in %s: %s", out, counts.to_dict())
    publish_answer_artifacts(
        rows, out=out, model=model, preset=preset, key_prefix=ARTIFACT_KEY_PREFIX
    )
    if not counts.all_ok:
        message = (
            f"{counts.failed} of {len(rows)} questions failed; see the table artifact "
            f"'{ARTIFACT_KEY_PREFIX}-answers' (answers of the others are in {out})"
        )
        return failed_run(message, rows)  # finished answers are written; the run ends Failed
    return rows


if __name__ == "__main__":
    import sys

    answer_questions(requests=sys.argv[1], model=sys.argv[2], out=sys.argv[3])
