"""The answer folders a server shows: records per run, GeoJSON of their footprints, progress.

Each folder given to ``lrs serve --answers`` is one *run* (its id is the folder name, made unique
with ``-2``, ``-3`` ... when two folders share a name). Its answers are read with the batch-output
layout of :mod:`lrs_core.outputs.parts` (``answers.parquet/part-*.parquet``, each record in the
``record_json`` column); a part's modification time dates its answers. A run folder may hold the
requests it was given (``requests.csv``, ``requests.jsonl`` or ``inputs/requests.csv`` with an
``id``/``question_id`` column, as ``lrs demo`` writes): their ids not yet answered count as pending.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lrs_core.errors import LrsError
from lrs_core.outputs.geojson import geojson_features
from lrs_core.outputs.parts import PARTS_DIRNAME
from lrs_core.records import AnswerRecord

log = logging.getLogger(__name__)

#: Files of a run folder whose ids are the run's requests (first present wins; ``lrs demo``
#: writes ``inputs/requests.csv``).
REQUEST_FILES = ("requests.csv", "requests.jsonl", "inputs/requests.csv")
#: Column names of a request's id (first present wins), as the answer flow reads them.
REQUEST_ID_KEYS = ("id", "question_id", "qid")
REQUEST_SCENE_KEYS = ("scene_id", "scene")
#: The preset every saving is measured against.
BASELINE_PRESET = "full"
PART_GLOB = "part-*.parquet"

Status = Literal["answered", "failed", "pending"]


@dataclass(frozen=True, kw_only=True)
class RunAnswer:
    """One answer of one run.

    Attributes:
        run_id: the run (answer folder) it belongs to.
        record: the answer record.
        written: when its part was written (UTC, ISO 8601).
    """

    run_id: str
    record: AnswerRecord
    written: str

    @property
    def status(self) -> Status:
        """``failed`` when the record carries an error, else ``answered``."""
        return "failed" if self.record.error is not None else "answered"


@dataclass(frozen=True, kw_only=True)
class AnswerFilter:
    """Which answers a request wants; None matches everything.

    Attributes:
        scene: scene id. run: run id. preset: engine preset. status: answered / failed.
        text: case-insensitive substring of the question or the answer.
        question_id: the answer's question id.
    """

    scene: str | None = None
    run: str | None = None
    preset: str | None = None
    status: str | None = None
    text: str | None = None
    question_id: str | None = None

    def matches(self, item: RunAnswer) -> bool:
        """True when ``item`` passes every given criterion."""
        record = item.record
        if self.scene is not None and record.scene.scene_id != self.scene:
            return False
        if self.run is not None and item.run_id != self.run:
            return False
        if self.preset is not None and record.preset != self.preset:
            return False
        if self.status is not None and item.status != self.status:
            return False
        if self.question_id is not None and record.question_id != self.question_id:
            return False
        if self.text:
            needle = self.text.casefold()
            return needle in record.question.casefold() or needle in record.answer.casefold()
        return True


@dataclass(frozen=True)
class _PartKey:
    path: str
    mtime_ns: int
    size: int


class AnswerIndex:
    """The answers of several run folders, re-read when a part appears or changes.

    Args:
        answer_dirs: the run folders (local paths).
    """

    def __init__(self, answer_dirs: Sequence[Path]) -> None:
        self.runs: dict[str, Path] = {}
        for folder in answer_dirs:
            run_id, n = folder.name or "answers", 1
            while run_id in self.runs:
                n += 1
                run_id = f"{folder.name}-{n}"
            self.runs[run_id] = folder
        self._lock = threading.Lock()
        self._parts: dict[_PartKey, tuple[list[AnswerRecord], str]] = {}
        self._bounds: dict[tuple[str, str, str], list[float] | None] = {}

    def _read_part(self, path: Path) -> tuple[list[AnswerRecord], str]:
        import pyarrow.parquet as pq

        stat = path.stat()
        key = _PartKey(str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._parts.get(key)
        if cached is not None:
            return cached
        table = pq.read_table(path, columns=["record_json"])
        records = [AnswerRecord.from_dict(json.loads(t)) for t in table["record_json"].to_pylist()]
        written = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
        with self._lock:
            self._parts[key] = (records, written)
        return records, written

    def all_answers(self) -> list[RunAnswer]:
        """Every record of every run, in part order; unreadable parts are logged and skipped."""
        found: list[RunAnswer] = []
        for run_id, folder in self.runs.items():
            parts = sorted((folder / PARTS_DIRNAME).glob(PART_GLOB))
            for part in parts:
                try:
                    records, written = self._read_part(part)
                except (OSError, ValueError, KeyError, LrsError) as err:
                    log.warning("%s: skipped an unreadable answers part (%s)", part, err)
                    continue
                found.extend(RunAnswer(run_id=run_id, record=r, written=written) for r in records)
        return found

    def latest(self, where: AnswerFilter | None = None) -> list[RunAnswer]:
        """One answer per (run, question id): the last successful one, else the last; filtered."""
        chosen: dict[tuple[str, str], RunAnswer] = {}
        for item in self.all_answers():
            key = (item.run_id, item.record.question_id)
            previous = chosen.get(key)
            if previous is None or item.status == "answered" or previous.status == "failed":
                chosen[key] = item
        items = list(chosen.values())
        return items if where is None else [item for item in items if where.matches(item)]

    def bounds_lonlat(self, item: RunAnswer) -> list[float] | None:
        """:func:`evidence_bounds_lonlat` of an answer, computed once per written answer."""
        key = (item.run_id, item.record.question_id, item.written)
        with self._lock:
            if key in self._bounds:
                return self._bounds[key]
        bounds = evidence_bounds_lonlat(item.record)
        with self._lock:
            self._bounds[key] = bounds
        return bounds

    def find(self, run_id: str, question_id: str) -> RunAnswer | None:
        """The latest answer of ``question_id`` in ``run_id``; None when there is none."""
        for item in self.latest(AnswerFilter(run=run_id)):
            if item.record.question_id == question_id:
                return item
        return None

    def requests(self, run_id: str) -> list[tuple[str, str | None]]:
        """(question id, scene id or None) of the run's requests file; empty without one."""
        folder = self.runs[run_id]
        for name in REQUEST_FILES:
            path = folder / name
            if path.is_file():
                try:
                    return _read_request_ids(path)
                except (OSError, ValueError) as err:
                    log.warning("%s: cannot read the requests (%s)", path, err)
                    return []
        return []


def _pick(row: dict[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _read_request_ids(path: Path) -> list[tuple[str, str | None]]:
    """(id, scene id) of each request row with an id (a scene path becomes its file stem)."""
    text = path.read_text(encoding="utf-8")
    rows: list[dict[str, Any]]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    found: list[tuple[str, str | None]] = []
    for row in rows:
        question_id = _pick(row, REQUEST_ID_KEYS)
        if question_id is None:
            continue
        scene = _pick(row, REQUEST_SCENE_KEYS)
        found.append((question_id, None if scene is None else Path(scene).stem))
    return found


BaselineKey = tuple[str, str]


def full_baselines(answers: Iterable[RunAnswer]) -> dict[BaselineKey, AnswerRecord]:
    """Successful ``full``-preset answers by (scene id, question text); the last one wins."""
    return {
        (item.record.scene.scene_id, item.record.question): item.record
        for item in answers
        if item.record.preset == BASELINE_PRESET and item.status == "answered"
    }


def savings_vs_full(
    item: RunAnswer, baselines: dict[BaselineKey, AnswerRecord]
) -> dict[str, float | None]:
    """Token and FLOP savings of an answer against a ``full`` answer of the same question.

    Args:
        item: the answer.
        baselines: :func:`full_baselines` of every served answer (any run).

    Returns:
        ``token_saving`` and ``flop_saving``, each ``1 - ours / full``; None without a baseline.
    """
    record = item.record
    base = baselines.get((record.scene.scene_id, record.question))
    if base is None or record.preset == BASELINE_PRESET or item.status != "answered":
        return {"token_saving": None, "flop_saving": None}
    full_tokens = base.accounting.vision_tokens_to_llm
    full_flops = base.accounting.flops.total_flops
    tokens = record.accounting.vision_tokens_to_llm
    flops = record.accounting.flops.total_flops
    return {
        "token_saving": 1.0 - tokens / full_tokens if full_tokens else None,
        "flop_saving": 1.0 - flops / full_flops if full_flops else None,
    }


def answer_summary(
    item: RunAnswer,
    baselines: dict[BaselineKey, AnswerRecord],
    *,
    bounds_lonlat: list[float] | None,
) -> dict[str, Any]:
    """The JSON row of the answers panel: ids, texts, preset, status, savings, evidence bounds."""
    record = item.record
    return {
        "run": item.run_id,
        "question_id": record.question_id,
        "scene_id": record.scene.scene_id,
        "question": record.question,
        "answer": record.answer,
        "preset": record.preset,
        "status": item.status,
        "error": record.error,
        "written": item.written,
        "vision_tokens_to_llm": record.accounting.vision_tokens_to_llm,
        "has_heatmap": record.heatmap is not None,
        "evidence_bounds_lonlat": bounds_lonlat,
        **savings_vs_full(item, baselines),
    }


def evidence_bounds_lonlat(record: AnswerRecord) -> list[float] | None:
    """(west, south, east, north) of the final evidence tiles in EPSG:4326; None if not georef."""
    from shapely.geometry import shape

    for feature in geojson_features(record):
        if feature["properties"].get("kind") == "answer":
            geometry = feature["geometry"]
            return None if geometry is None else [float(v) for v in shape(geometry).bounds]
    return None


def feature_collection(items: Iterable[RunAnswer]) -> dict[str, Any]:
    """GeoJSON (EPSG:4326) of answers and their evidence footprints, with ``run`` and ``status``."""
    features: list[dict[str, Any]] = []
    for item in items:
        for feature in geojson_features(item.record):
            feature["properties"] |= {"run": item.run_id, "status": item.status}
            features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def monitor(index: AnswerIndex) -> dict[str, Any]:
    """Answered / failed / pending per run and scene, with a cumulative timeline per part.

    Returns:
        ``{"generated": ISO time, "groups": [{"run", "scene_id", "answered", "failed",
        "pending", "timeline": [{"time", "answered", "failed"}, ...]}, ...]}``.
    """
    latest = index.latest()
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}

    def group(run_id: str, scene_id: str | None) -> dict[str, Any]:
        key = (run_id, scene_id)
        if key not in groups:
            groups[key] = {
                "run": run_id,
                "scene_id": scene_id,
                "answered": 0,
                "failed": 0,
                "pending": 0,
                "timeline": [],
            }
        return groups[key]

    done: dict[str, set[str]] = {run_id: set() for run_id in index.runs}
    for item in sorted(latest, key=lambda i: i.written):
        entry = group(item.run_id, item.record.scene.scene_id)
        entry[item.status] += 1
        done[item.run_id].add(item.record.question_id)
        timeline = entry["timeline"]
        point = {"time": item.written, "answered": entry["answered"], "failed": entry["failed"]}
        if timeline and timeline[-1]["time"] == item.written:
            timeline[-1] = point
        else:
            timeline.append(point)
    for run_id in index.runs:
        for question_id, scene_id in index.requests(run_id):
            if question_id not in done[run_id]:
                group(run_id, scene_id)["pending"] += 1
    return {
        "generated": datetime.now(UTC).isoformat(),
        "groups": sorted(groups.values(), key=lambda g: (g["run"], g["scene_id"] or "")),
    }
