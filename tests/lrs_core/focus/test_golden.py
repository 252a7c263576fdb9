"""Golden records: the engine's answers and plans stay identical across refactors of the loop.

Each case runs a preset on the 2100 x 1400 test scene with the tiny model and compares the
record (timings, memory, the store path and the answer text left out; floats rounded to 6
significant digits) with the digest recorded in ``golden_records.json``. The digests were
recorded before the loop became one loop over views and executors (issue 12), so a change of
any count, tile, score, heat-map cell or config field in a record fails here. Since then only
``plan-parity`` was regenerated, when the parity dry run became a true upper bound of its kept
tokens (993 -> 1001 vision tokens).

``LRS_GOLDEN_DUMP=DIR`` also writes the compared records as JSON, to diff. Regenerate (only for
an intended change of the records, and say why in the commit):
``LRS_REGENERATE_GOLDEN=1 python -m pytest tests/lrs_core/focus/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lrs_core.focus.engine import FocusConfig, FocusEngine, ScoreRequest
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.pyramid import Pyramid, open_pyramid
from lrs_core.records import AnswerRecord

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOLDEN = Path(__file__).with_name("golden_records.json")
QUESTION = "How many ships are in the harbour?"
QUESTIONS = (("a", QUESTION), ("b", "Is there a bridge?"), ("c", "Which colour is the roof?"))
NEW_TOKENS = 2
#: Level-0 pixel box the planted scorer favours.
PLANTED_BOX = (1500.0, 900.0, 1560.0, 960.0)
#: Significant digits kept of every float (the tiny model's numerics, not their last bits).
DIGITS = 6

#: case -> (preset, overrides, planted scorer?, what to run).
CASES: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "default-planted": ("default", {}, True, "answer"),
    "default-rfm": ("default", {"max_zoom_steps": 1}, False, "answer"),
    "default-budget": ("default", {"token_budget": 900}, True, "answer"),
    "default-neighbours": ("default", {"neighbour_expansion": 1, "tiles_cap": 5}, True, "answer"),
    "default-original": (
        "default",
        {"position_mode": "original", "rfm_gather_valid_only": False},
        True,
        "answer",
    ),
    "parity-planted": ("parity", {}, True, "answer"),
    "parity-rfm": ("parity", {}, False, "answer"),
    "thumbnail": ("thumbnail", {}, False, "answer"),
    "grid-3": ("grid-3", {}, False, "answer"),
    "full": ("full", {"max_zoom_steps": 1}, False, "answer"),
    "fastv": ("fastv", {"max_zoom_steps": 0}, False, "answer"),
    "pdrop": ("pdrop", {"max_zoom_steps": 0}, False, "answer"),
    "default-many": ("default", {"max_zoom_steps": 1}, True, "many"),
    "plan-default": ("default", {}, True, "plan"),
    "plan-default-budget": ("default", {"token_budget": 900}, True, "plan"),
    "plan-parity": ("parity", {}, True, "plan"),
    "plan-thumbnail": ("thumbnail", {}, True, "plan"),
    "plan-grid-3": ("grid-3", {}, True, "plan"),
    "plan-full": ("full", {}, True, "plan"),
    "plan-fastv": ("fastv", {"max_zoom_steps": 1}, True, "plan"),
    "plan-pdrop": ("pdrop", {"max_zoom_steps": 1}, True, "plan"),
    "plan-size": ("default", {}, True, "plan-size"),
}


def _overlaps(box: tuple[float, ...], other: tuple[float, ...]) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


def planted(request: ScoreRequest) -> np.ndarray:
    """Score 1 over the planted box, 0.001 elsewhere, 0 at newlines and placeholders."""
    scores = np.zeros(len(request.key_grid_rc), dtype=np.float32)
    for index, (row, col) in enumerate(request.key_grid_rc.tolist()):
        if request.key_is_newline[index] or not request.key_valid[index]:
            continue
        bbox = request.level.token_bbox_px((row, col))
        scores[index] = 1.0 if _overlaps(bbox, PLANTED_BOX) else 0.001
    return scores


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def comparable(record: AnswerRecord) -> dict[str, Any]:
    """The record as a dict without what varies between runs or machines."""
    data = record.to_dict()
    data["accounting"].pop("seconds")
    data["accounting"].pop("peak_memory_bytes")
    data["scene"].pop("store")
    data.pop("answer")
    return dict(_round(data))


def digest(records: list[AnswerRecord]) -> str:
    """SHA-256 of the comparable records as canonical JSON."""
    text = json.dumps([comparable(r) for r in records], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_case(loaded: LoadedModel, pyramid: Pyramid, case: str) -> list[AnswerRecord]:
    """Run one case on a fresh engine (cold feature cache)."""
    preset, overrides, use_planted, what = CASES[case]
    config = FocusConfig.from_preset(preset, max_new_tokens=NEW_TOKENS, **overrides)
    engine = FocusEngine(loaded, config=config, scorer=planted if use_planted else None)
    if what == "answer":
        return [engine.answer(pyramid, QUESTION)]
    if what == "many":
        return engine.answer_many(pyramid, QUESTIONS)
    if what == "plan":
        return [engine.plan(pyramid, QUESTION)]
    return [engine.plan((2100, 1400), QUESTION)]


@pytest.fixture(scope="module")
def large_pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


@pytest.fixture(scope="module")
def golden() -> dict[str, str]:
    return dict(json.loads(GOLDEN.read_text())) if GOLDEN.exists() else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_records_equal_the_golden_ones(
    tiny_model: LoadedModel, large_pyramid: Pyramid, golden: dict[str, str], case: str
) -> None:
    records = run_case(tiny_model, large_pyramid, case)
    found = digest(records)
    dump = os.environ.get("LRS_GOLDEN_DUMP")  # a folder: write the compared records, to diff
    if dump:
        text = json.dumps([comparable(r) for r in records], sort_keys=True, indent=1)
        (Path(dump) / f"{case}.json").write_text(text)
    if os.environ.get("LRS_REGENERATE_GOLDEN"):
        golden[case] = found
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
        return
    assert case in golden, f"no golden digest for {case}; regenerate (see the module docstring)"
    assert found == golden[case], f"{case}: the record changed"
