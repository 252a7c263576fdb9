"""Flow ``lrs-demo``: the whole path on one machine, with the tiny random model.

demo scene (a georeferenced GeoTIFF with planted objects) → ``ingest-scenes`` flow → the
``answer-questions`` flow with the demo questions → outputs in ``OUT``::

    OUT/answers.parquet/     GeoParquet parts (one per answer)
    OUT/answers.geojson      evidence footprints in EPSG:4326
    OUT/overlays/*.png       evidence and heat map on the scene thumbnail
    OUT/inputs/              the demo scene, its requests.csv and planted objects
    OUT/stores/              the scene's Zarr pyramid
    OUT/model/               the tiny random model (built on first use; its answers are noise)

``lrs demo --out OUT`` runs it. A rerun reuses the scene, store and model and answers nothing
again (the answer flow is resumable). A run in which some questions failed ends ``Failed`` with
their count (:mod:`flows.outcome`); :func:`run_demo` still returns every row.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.answer import ARTIFACT_KEY_PREFIX, answer_questions
from flows.ingest import ingest_scenes
from flows.outcome import failed_run, run_result
from lrs_core.demo import DEMO_SCENE_WH, DemoScene, write_demo_scene
from lrs_core.models.loading.files import PROJECT_CONFIG_FILE, WEIGHTS_FILE
from lrs_core.models.tiny import init_tiny
from lrs_core.outputs.parts import GEOJSON_NAME, OVERLAYS_DIRNAME, PARTS_DIRNAME

INPUTS_DIRNAME = "inputs"
STORES_DIRNAME = "stores"
MODEL_DIRNAME = "model"
#: Engine preset of the demo: the paper's coarse-to-fine loop with our fixes.
DEMO_PRESET = "default"


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    """Where the demo's outputs are, and how its questions went.

    Attributes:
        out_dir: the output folder.
        answers_parquet: the GeoParquet parts folder.
        answers_geojson: the GeoJSON FeatureCollection.
        overlays: the overlay PNGs written so far, sorted.
        model_dir: the tiny model.
        scene: the demo scene and questions.
        rows: one row per question (``status`` ``answered``, ``skipped`` or ``failed``).
        flow_run_id: id of the ``lrs-demo`` flow run (None when run without Prefect's state).
    """

    out_dir: Path
    answers_parquet: Path
    answers_geojson: Path
    overlays: tuple[Path, ...]
    model_dir: Path
    scene: DemoScene
    rows: tuple[dict[str, Any], ...]
    flow_run_id: str | None = None

    @property
    def n_failed(self) -> int:
        """Questions that failed."""
        return sum(1 for row in self.rows if row["status"] == "failed")


def ensure_tiny_model(model_dir: Path) -> Path:
    """Return ``model_dir``, building the tiny random model there first if it is not complete."""
    if (model_dir / PROJECT_CONFIG_FILE).is_file() and (model_dir / WEIGHTS_FILE).is_file():
        return model_dir
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".model-", dir=model_dir.parent) as scratch:
        built = init_tiny(Path(scratch) / MODEL_DIRNAME)
        if model_dir.exists():
            shutil.rmtree(model_dir)  # an incomplete model folder of an interrupted demo
        os.replace(built, model_dir)
    return model_dir


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
    model_dir = ensure_tiny_model(out / MODEL_DIRNAME)
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
    n_failed = sum(1 for row in rows if row["status"] == "failed")
    if n_failed:
        message = (
            f"{n_failed} of {len(rows)} demo questions failed; see the table artifact "
            f"'{ARTIFACT_KEY_PREFIX}-answers' (answers of the others are in {out})"
        )
        return failed_run(message, result)  # the run's final state says so
    return result


def run_demo(
    out_dir: str | Path,
    *,
    size_wh: tuple[int, int] = DEMO_SCENE_WH,
    preset: str = DEMO_PRESET,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> DemoResult:
    """Run the ``lrs-demo`` flow and return where its outputs are.

    Args:
        out_dir: output folder (created).
        size_wh: (width, height) of the demo scene in pixels.
        preset: engine preset.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: where the model runs (``auto``: CUDA when present, else CPU).
        dtype: the model's dtype (``auto``: the checkpoint's on CUDA, fp32 on CPU).

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
    overlays = out / OVERLAYS_DIRNAME
    return DemoResult(
        out_dir=out,
        answers_parquet=out / PARTS_DIRNAME,
        answers_geojson=out / GEOJSON_NAME,
        overlays=tuple(sorted(overlays.glob("*.png"))) if overlays.is_dir() else (),
        model_dir=Path(result["model_dir"]),
        scene=write_demo_scene(out / INPUTS_DIRNAME, size_wh=size_wh),
        rows=tuple(result["rows"]),
        flow_run_id=str(state.state_details.flow_run_id),
    )


if __name__ == "__main__":
    import sys

    print(run_demo(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
