"""A second process for the writer-lock tests: a real writer of an answers folder or predictions.

Run as ``python -m tests.lrs_core.writer_proc KIND TARGET ...`` (see :func:`main`). The writer
takes the lock through the library's own entry point, touches ``READY`` once it holds it, waits
for ``RELEASE`` to exist, then writes its answers. A refused writer prints the error on standard
error and exits 1, as the CLI does.

* ``answers OUT QIDS READY RELEASE [--wait]``: :class:`lrs_core.outputs.parts.BatchWriter` as a
  context manager (the answer task's pattern: read the answered ids, answer the others, append).
* ``predictions QUESTIONS OUT READY RELEASE [--wait]``: :func:`run_lrs_vqa` on real ingested
  images, with a stand-in engine that answers "yes" at once (the model is not what is tested).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: Seconds a writer waits for its release file before giving up (a test that hangs fails).
RELEASE_TIMEOUT_S = 120.0
POLL_S = 0.05


def _hold(ready: Path, release: Path) -> None:
    ready.touch()
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while not release.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{release} never appeared")
        time.sleep(POLL_S)


def _answers(out: str, qids: str, ready: Path, release: Path, wait: bool) -> None:
    from lrs_core.outputs.parts import BatchWriter
    from lrs_core.records import AnswerRecord, SceneRef, TileEvidence

    scene = SceneRef(scene_id="s", store="/stores/s.zarr", size_wh=(100, 100))
    with BatchWriter(out, purpose="writer_proc answers", wait=wait) as writer:
        _hold(ready, release)
        done = writer.answered_ids()
        for qid in qids.split(","):
            if qid in done:
                continue
            record = AnswerRecord(
                question_id=qid,
                scene=scene,
                question="q?",
                answer=f"answer of pid {__import__('os').getpid()}",
                model_id="m",
                preset="p",
                evidence_tiles=(
                    TileEvidence(
                        dip_level=1, tile_rc=(0, 0), bbox_px=(0, 0, 50, 50), is_final=True
                    ),
                ),
            )
            writer.append([record])


class _InstantEngine:
    """Answers every question with "yes" at once (stands in for the model)."""

    loaded = SimpleNamespace(model_id="instant")
    config = SimpleNamespace(preset="thumbnail")

    def answer(self, pyramid: Any, text: str, *, question_id: str) -> Any:
        from lrs_core.records import AnswerRecord

        return AnswerRecord(
            question_id=question_id,
            scene=pyramid.scene_ref(),
            question=text,
            answer="yes",
            model_id="instant",
            preset="thumbnail",
        )


def _predictions(questions: str, out: str, ready: Path, release: Path, wait: bool) -> None:
    from lrs_core.evaluation import runner
    from lrs_core.raster.ingest import IngestConfig

    runner.EngineSpec.load = lambda self: _InstantEngine()  # type: ignore[assignment,method-assign,return-value]
    held = False

    def progress(done: int, total: int) -> None:
        nonlocal held
        if not held and done > 0:  # the first line is written (0: the start): hold mid-run
            held = True
            _hold(ready, release)

    runner.run_lrs_vqa(
        Path(questions),
        model_dir=Path("unused"),
        out=Path(out),
        ingest_config=IngestConfig(chunk_px=128, n_workers=1, min_long_side_px=128),
        progress=progress,
        wait=wait,
    )


def main(argv: list[str]) -> int:
    """Run one writer; return the exit status (1 when another writer holds the target)."""
    import warnings

    from lrs_core.errors import NotGeoreferencedWarning
    from lrs_core.locks import WriterLockedError

    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    kind, first, second, ready, release, *rest = argv
    wait = "--wait" in rest
    try:
        if kind == "answers":
            _answers(first, second, Path(ready), Path(release), wait)
        else:
            _predictions(first, second, Path(ready), Path(release), wait)
    except WriterLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
