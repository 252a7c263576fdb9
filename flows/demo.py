"""Flow ``lrs-demo``: the demo through the ingest and answer flows, seen in the Prefect UI.

The same demo as ``lrs demo`` (:func:`lrs_core.demo.run_demo`, which needs no Prefect): the demo
scene from :mod:`lrs_core.demo` and the packaged world model, then the ``ingest-scenes`` flow and
the ``answer-questions`` flow with the demo questions; outputs in ``OUT`` as listed in
:mod:`lrs_core.demo`. A rerun answers nothing again (the answer flow is resumable). A run in which
some questions failed ends ``Failed`` with their count (:mod:`flows.outcome`); :func:`run_demo`
still returns every row. Run it with ``python -m flows.demo OUT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.answer import answer_questions, answers_artifact_note
from flows.ingest import ingest_scenes
from flows.outcome import outcome_of, run_result
from lrs_core.demo import (
    DEMO_MODEL,
    DEMO_PRESET,
    DEMO_SCENE_WH,
    INPUTS_DIRNAME,
    STORES_DIRNAME,
    DemoResult,
    demo_result,
    write_demo_scene,
)
from lrs_core.models.loading.registry import resolve_model_dir

#: Where ``prefect server start`` serves the UI by default.
PREFECT_UI_URL = "http://127.0.0.1:4200"
#: Seconds Prefect may take to start its temporary server (its default, 20 s, is too short for a
#: fresh PREFECT_HOME on a busy 2-core machine, where the first start migrates the database).
EPHEMERAL_STARTUP_TIMEOUT_S = 180
#: Environment for a Prefect run of the demo from a shell (telemetry off, a patient temporary
#: server). Prefect reads it when first imported: export it before starting Python.
PREFECT_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S),
}


@flow(name="lrs-demo")
def demo(
    out_dir: str,
    size_wh: tuple[int, int] = DEMO_SCENE_WH,
    preset: str = DEMO_PRESET,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Write the demo scene, ingest it, answer its questions; outputs land in ``out_dir``.

    Args:
        out_dir: output folder (created).
        size_wh: (width, height) of the demo scene in pixels.
        preset: engine preset.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (the checkpoint dtype on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.

    Returns:
        ``scene`` (the ingest row), ``rows`` (one per question) and ``model_dir``. When a
        question failed the run ends ``Failed`` with this dict in its
        :class:`~flows.outcome.QuestionsFailedError` (read it with
        :func:`flows.outcome.run_result`).
    """
    logger = get_run_logger()
    out = Path(out_dir).resolve()
    scene = write_demo_scene(out / INPUTS_DIRNAME, size_wh=tuple(size_wh))  # type: ignore[arg-type]  # a JSON list from the API
    model_dir = resolve_model_dir(DEMO_MODEL)
    logger.info("demo scene %s, model %s", scene.scene_path, model_dir)
    (ingested,) = ingest_scenes(sources=[str(scene.scene_path)], store=str(out / STORES_DIRNAME))
    rows = run_result(  # also the rows of a run in which some questions failed
        answer_questions(
            requests=str(scene.requests_path),
            model=str(model_dir),
            preset=preset,
            out=str(out),
            store=str(out / STORES_DIRNAME),
            budget=budget,
            device=device,
            dtype=dtype,
            return_state=True,
        )
    )
    result = {"scene": ingested, "rows": rows, "model_dir": str(model_dir)}
    return outcome_of(  # the run's final state says when some questions failed
        rows,
        result,
        what="demo questions",
        see=answers_artifact_note(str(out)),
    )


def run_demo(
    out_dir: str | Path,
    *,
    size_wh: tuple[int, int] = DEMO_SCENE_WH,
    preset: str = DEMO_PRESET,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> DemoResult:
    """Run the ``lrs-demo`` flow and return where its outputs are (``run_id``: the flow run).

    Its arguments are those of :func:`lrs_core.demo.run_demo`, all but ``progress``.

    Raises:
        LrsError: the demo could not run at all (per-question failures are in ``rows``).
    """
    out = Path(out_dir).resolve()
    state = demo(
        str(out),
        size_wh=size_wh,
        preset=preset,
        budget=budget,
        device=device,
        dtype=dtype,
        return_state=True,
    )
    result = run_result(state)  # raises the flow's error if it could not run at all
    return demo_result(
        out,
        scene=write_demo_scene(out / INPUTS_DIRNAME, size_wh=size_wh),
        model_dir=Path(result["model_dir"]),
        rows=tuple(result["rows"]),
        run_id=str(state.state_details.flow_run_id),
    )


if __name__ == "__main__":
    import sys

    print(run_demo(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
