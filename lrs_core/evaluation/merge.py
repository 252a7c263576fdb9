"""Merge prediction files of chunks and reruns into one, one line per question id."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.errors import DatasetError
from lrs_core.evaluation.lrs_vqa import iter_jsonl
from lrs_core.evaluation.runner import ANSWER_KEYS, ERROR_KEY


@dataclass(frozen=True, kw_only=True)
class MergeSummary:
    """What :func:`merge_predictions` wrote.

    Attributes:
        out: the merged file.
        n_rows: lines written (one per question id).
        n_duplicates: identical or superseded duplicate lines dropped.
        n_failed: lines written that carry an ``error``.
    """

    out: Path
    n_rows: int
    n_duplicates: int
    n_failed: int


def merge_predictions(paths: Sequence[Path], out: Path) -> MergeSummary:
    """Merge prediction files (chunks, reruns) into ``out``, one line per question id.

    Works for both benchmarks (ids from ``question_id`` or ``Question_id``). Lines keep the order
    of first appearance. A duplicate id is dropped when it gives the same answer or carries an
    ``error`` (an answered line supersedes a failed one). ``out`` is written atomically and may be
    one of the inputs. Inputs are only read: a half-written last line (a chunk still running, or
    killed) is an error here; rerun that chunk first, which repairs it.

    Raises:
        DatasetError: a file is unreadable, a line has no id, or two lines answer the same id
            differently (which run is right is not ours to guess).
    """
    merged: dict[str, tuple[dict[str, Any], str]] = {}
    n_duplicates = 0
    for path in paths:
        for line_no, row in iter_jsonl(Path(path)):
            where = f"{path}:{line_no}"
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            if isinstance(row.get("question_id"), str):
                key, answer_key = row["question_id"], ANSWER_KEYS["lrs-vqa"]
            elif isinstance(row.get("Question_id"), str):
                key, answer_key = row["Question_id"], ANSWER_KEYS["mme"]
            else:
                raise DatasetError(f"{where}: no 'question_id' or 'Question_id'")
            if key not in merged:
                merged[key] = (row, where)
                continue
            n_duplicates += 1
            first, first_where = merged[key]
            if row.get(ERROR_KEY) is not None:
                continue
            if first.get(ERROR_KEY) is not None:
                merged[key] = (row, where)
                continue
            if first.get(answer_key) != row.get(answer_key):
                raise DatasetError(
                    f"{key!r} is answered differently in {first_where} "
                    f"({first.get(answer_key)!r}) and {where} ({row.get(answer_key)!r}); "
                    "keep one of the two lines"
                )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        for row, _ in merged.values():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, out)
    return MergeSummary(
        out=out,
        n_rows=len(merged),
        n_duplicates=n_duplicates,
        n_failed=sum(1 for row, _ in merged.values() if row.get(ERROR_KEY) is not None),
    )
