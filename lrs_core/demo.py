"""The demo: a georeferenced scene with planted objects, ingested and answered by the tiny model.

:func:`run_demo` (``lrs demo``) writes the demo scene and its requests, builds the tiny random
model, and answers the requests with the library's batch (:func:`lrs_core.batch.run.run_batch`),
which ingests the scene first; no Prefect is involved (the ``lrs-demo`` flow in ``flows/demo.py``
does the same through the ingest and answer flows). Outputs land in ``OUT``::

    OUT/answers.parquet/     GeoParquet parts (one per answer)
    OUT/answers.geojson      evidence footprints in EPSG:4326
    OUT/overlays/*.png       evidence and heat map on the scene thumbnail
    OUT/inputs/              the demo scene, its requests.csv and planted objects
    OUT/stores/              the scene's Zarr pyramid
    OUT/model/               the tiny random model (built on first use; its answers are noise)

A rerun reuses the scene, store and model and answers nothing again. The scene comes from the
synthetic benchmark
(:mod:`lrs_core.evaluation.synth`): a tiled RGB GeoTIFF in EPSG:32633 at 0.5 m pixels, so the
answers' evidence footprints land on a real map. Files written into ``inputs_dir``::

    inputs_dir/demo_scene.tif       the scene (3000 x 2000 px by default)
    inputs_dir/requests.csv         one ``scene,question,id`` row per demo question
    inputs_dir/demo_objects.json    the planted objects (the ground truth)
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrs_core.batch.run import BatchSettings, run_batch
from lrs_core.errors import ConfigError
from lrs_core.evaluation.synth import SynthConfig, write_synthetic_set
from lrs_core.models.loading.files import PROJECT_CONFIG_FILE, WEIGHTS_FILE
from lrs_core.models.tiny import init_tiny
from lrs_core.outputs.parts import GEOJSON_NAME, OVERLAYS_DIRNAME, PARTS_DIRNAME

#: (width, height) of the demo scene in pixels: big enough for a three-level pyramid.
DEMO_SCENE_WH = (3000, 2000)
#: Objects planted in the demo scene, and their side range in pixels.
DEMO_OBJECTS = 8
DEMO_MIN_OBJECT_PX = 40
DEMO_MAX_OBJECT_PX = 160
#: Question categories of the synthetic set asked in the demo, in this order (first of each).
DEMO_CATEGORIES = ("object color", "count", "rural or urban")
DEMO_SCENE_NAME = "demo_scene.tif"
REQUESTS_NAME = "requests.csv"
OBJECTS_NAME = "demo_objects.json"
INPUTS_DIRNAME = "inputs"
STORES_DIRNAME = "stores"
MODEL_DIRNAME = "model"
#: Engine preset of the demo: the paper's coarse-to-fine loop with our fixes.
DEMO_PRESET = "default"


@dataclass(frozen=True, kw_only=True)
class DemoQuestion:
    """One demo question and the answer a perfect model would give.

    Attributes:
        question_id: id of the question (``demo-1``, ``demo-2``...).
        text: the question, in the LRS-VQA prompt form.
        category: LRS-VQA category of the question.
        ground_truth: the planted answer.
    """

    question_id: str
    text: str
    category: str
    ground_truth: str


@dataclass(frozen=True, kw_only=True)
class DemoScene:
    """What :func:`write_demo_scene` wrote.

    Attributes:
        scene_path: the GeoTIFF.
        requests_path: CSV of ``scene,question,id`` rows (scene = the GeoTIFF path).
        questions: the demo questions.
        size_wh: (width, height) of the scene in pixels.
    """

    scene_path: Path
    requests_path: Path
    questions: tuple[DemoQuestion, ...]
    size_wh: tuple[int, int]


def write_demo_scene(
    inputs_dir: str | Path, *, size_wh: tuple[int, int] = DEMO_SCENE_WH, seed: int = 0
) -> DemoScene:
    """Write the demo scene and its requests file (kept as they are when already written).

    Args:
        inputs_dir: folder to write into (created).
        size_wh: (width, height) of the scene in pixels; the short side must be at least four
            times :data:`DEMO_MAX_OBJECT_PX`.
        seed: seed of the scene layout; the same seed gives the same files.

    Returns:
        The scene, its requests file and the questions.

    Raises:
        ConfigError: ``size_wh`` is too small for the planted objects.
    """
    width, height = size_wh
    if width < height:
        raise ConfigError(f"size_wh={size_wh}: the demo scene must be landscape (width >= height)")
    folder = Path(inputs_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    scene_path = folder / DEMO_SCENE_NAME
    requests_path = folder / REQUESTS_NAME
    objects_path = folder / OBJECTS_NAME
    config = SynthConfig(
        seed=seed,
        n_scenes=1,
        large_side_px=width,
        large_short_side_px=height,
        objects_per_scene=DEMO_OBJECTS,
        min_object_px=DEMO_MIN_OBJECT_PX,
        max_object_px=DEMO_MAX_OBJECT_PX,
    )
    if not (scene_path.is_file() and requests_path.is_file() and objects_path.is_file()):
        with tempfile.TemporaryDirectory(prefix=".demo-", dir=folder) as scratch:
            synth = write_synthetic_set(Path(scratch), config=config)
            (scene,) = synth.scenes
            questions = tuple(
                DemoQuestion(
                    question_id=f"demo-{index}",
                    text=first.text,
                    category=first.category,
                    ground_truth=first.ground_truth,
                )
                for index, first in enumerate(
                    (next(q for q in synth.questions if q.category == c) for c in DEMO_CATEGORIES),
                    start=1,
                )
            )
            objects = json.loads((synth.data_root / "synth_objects.json").read_text())
            objects["questions"] = [q.__dict__ for q in questions]
            os.replace(synth.data_root / scene.image, scene_path)
            _write_text_atomic(objects_path, json.dumps(objects, indent=1))
            _write_text_atomic(requests_path, _requests_csv(scene_path, questions))
    stored = json.loads(objects_path.read_text())
    return DemoScene(
        scene_path=scene_path,
        requests_path=requests_path,
        questions=tuple(DemoQuestion(**q) for q in stored["questions"]),
        size_wh=(width, height),
    )


def _requests_csv(scene_path: Path, questions: tuple[DemoQuestion, ...]) -> str:
    lines: list[list[str]] = [["scene", "question", "id"]]
    lines += [[str(scene_path), q.text, q.question_id] for q in questions]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(lines)
    return buffer.getvalue()


def _write_text_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


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
        rows: one row per question (``status`` ``answered``, ``skipped`` or ``failed``; see
            :mod:`lrs_core.batch.run`).
        run_id: id of the orchestration run that answered them, when one did (the ``lrs-demo``
            flow run); None for :func:`run_demo`.
    """

    out_dir: Path
    answers_parquet: Path
    answers_geojson: Path
    overlays: tuple[Path, ...]
    model_dir: Path
    scene: DemoScene
    rows: tuple[dict[str, Any], ...]
    run_id: str | None = None

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


def demo_result(
    out_dir: Path,
    *,
    scene: DemoScene,
    model_dir: Path,
    rows: tuple[dict[str, Any], ...],
    run_id: str | None = None,
) -> DemoResult:
    """Return the :class:`DemoResult` of a demo answered into ``out_dir``."""
    overlays = out_dir / OVERLAYS_DIRNAME
    return DemoResult(
        out_dir=out_dir,
        answers_parquet=out_dir / PARTS_DIRNAME,
        answers_geojson=out_dir / GEOJSON_NAME,
        overlays=tuple(sorted(overlays.glob("*.png"))) if overlays.is_dir() else (),
        model_dir=model_dir,
        scene=scene,
        rows=rows,
        run_id=run_id,
    )


def run_demo(
    out_dir: str | Path,
    *,
    size_wh: tuple[int, int] = DEMO_SCENE_WH,
    preset: str = DEMO_PRESET,
    budget: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Write the demo scene, ingest it, answer its questions; outputs land in ``out_dir``.

    Args:
        out_dir: output folder (created).
        size_wh: (width, height) of the demo scene in pixels.
        preset: engine preset.
        budget: vision tokens sent to the LLM; None keeps the preset's.
        device: where the model runs (``auto``: CUDA when present, else CPU).
        dtype: the model's dtype (``auto``: the checkpoint's on CUDA, fp32 on CPU).
        progress: called with (questions done, questions to answer).

    Returns:
        Where the outputs are, and one row per question (per-question failures are rows).

    Raises:
        LrsError: the demo could not run at all (a bad preset, an unwritable folder...).
    """
    out = Path(out_dir).resolve()
    scene = write_demo_scene(out / INPUTS_DIRNAME, size_wh=size_wh)
    model_dir = ensure_tiny_model(out / MODEL_DIRNAME)
    settings = BatchSettings(
        model=str(model_dir),
        out=str(out),
        stores=str(out / STORES_DIRNAME),
        preset=preset,
        budget=budget,
        device=device,
        dtype=dtype,
    )
    result = run_batch(scene.requests_path, settings, progress=progress)
    return demo_result(out, scene=scene, model_dir=model_dir, rows=result.rows)
