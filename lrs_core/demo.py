"""The demo: a miniature-world scene, ingested and answered by the trained world model.

:func:`run_demo` (``lrs demo``) writes the demo scene (a scene of the miniature world,
:mod:`lrs_core.world`), its DOTA annotations and its requests, and answers the requests with the
model trained on that world and shipped in the package (``--model world``,
``lrs_core/world/weights/``), through the library's batch (:func:`lrs_core.batch.run.run_batch`),
which ingests the scene first; no Prefect is involved (the ``lrs-demo`` flow in ``flows/demo.py``
does the same through the ingest and answer flows). Outputs land in ``OUT``::

    OUT/answers.parquet/     GeoParquet parts (one per answer)
    OUT/answers.geojson      evidence footprints in EPSG:4326
    OUT/overlays/*.png       evidence and heat map on the scene thumbnail
    OUT/inputs/              the demo scene, its DOTA annotations, requests.csv and questions
    OUT/stores/              the scene's Zarr pyramid

A rerun reuses the scene and store and answers nothing again. The scene is a tiled RGB GeoTIFF in
EPSG:32633 at 0.5 m pixels, so the answers' evidence footprints land on a real map. Files written
into ``inputs_dir``::

    inputs_dir/demo_scene.tif       the scene (3000 x 2000 px by default)
    inputs_dir/demo_scene.txt       its objects, DOTA format (the ground truth)
    inputs_dir/requests.csv         one ``scene,question,id`` row per demo question
    inputs_dir/demo_questions.json  the questions, their answers and the asked objects' boxes
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrs_core.batch.run import BatchSettings, run_batch
from lrs_core.errors import ConfigError
from lrs_core.evaluation.focus_metrics import union_coverage
from lrs_core.models.loading.registry import resolve_model_dir
from lrs_core.outputs.parts import GEOJSON_NAME, OVERLAYS_DIRNAME, PARTS_DIRNAME, read_records
from lrs_core.world.annotations import write_dota
from lrs_core.world.generate import generate_scene
from lrs_core.world.make import annotation_of, scene_seed, world_questions
from lrs_core.world.render import write_scene_geotiff

#: (width, height) of the demo scene in pixels: big enough for a three-level pyramid.
DEMO_SCENE_WH = (3000, 2000)
#: World seed of the demo scene (away from the benchmark's held-out world seed 1000).
DEMO_WORLD_SEED = 7
#: Question categories asked in the demo, in this order (the first question of each).
DEMO_CATEGORIES = ("object color", "object category", "rural or urban")
DEMO_SCENE_NAME = "demo_scene.tif"
ANNOTATION_NAME = "demo_scene.txt"
REQUESTS_NAME = "requests.csv"
QUESTIONS_NAME = "demo_questions.json"
INPUTS_DIRNAME = "inputs"
STORES_DIRNAME = "stores"
#: The model the demo answers with: the trained world model shipped in the package.
DEMO_MODEL = "world"
#: Engine preset of the demo: the paper's coarse-to-fine loop with our fixes.
DEMO_PRESET = "default"


@dataclass(frozen=True, kw_only=True)
class DemoQuestion:
    """One demo question and the answer a perfect model would give.

    Attributes:
        question_id: id of the question (``demo-1``, ``demo-2``...).
        text: the question, in the LRS-VQA prompt form.
        category: LRS-VQA category of the question.
        ground_truth: the right answer.
        hbox: level-0 pixel box (x0, y0, x1, y1) of the object asked about; None when the question
            is about no single object.
    """

    question_id: str
    text: str
    category: str
    ground_truth: str
    hbox: tuple[float, float, float, float] | None = None


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
    inputs_dir: str | Path, *, size_wh: tuple[int, int] = DEMO_SCENE_WH, seed: int = DEMO_WORLD_SEED
) -> DemoScene:
    """Write the demo scene, its annotations and requests (kept as they are when already written).

    Args:
        inputs_dir: folder to write into (created).
        size_wh: (width, height) of the scene in pixels (landscape, each side in the world's
            range).
        seed: world seed of the scene; the same seed and size give the same files.

    Returns:
        The scene, its requests file and the questions.

    Raises:
        ConfigError: ``size_wh`` is not landscape or out of the world's range, or the scene has
            no question of a demo category.
    """
    width, height = size_wh
    if width < height:
        raise ConfigError(f"size_wh={size_wh}: the demo scene must be landscape (width >= height)")
    folder = Path(inputs_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    scene_path = folder / DEMO_SCENE_NAME
    requests_path = folder / REQUESTS_NAME
    questions_path = folder / QUESTIONS_NAME
    if not (scene_path.is_file() and requests_path.is_file() and questions_path.is_file()):
        scene = generate_scene(scene_seed(seed, 0), size_wh=(width, height))
        counter = itertools.count(1)
        asked = world_questions(
            scene,
            image=DEMO_SCENE_NAME,
            rng=np.random.default_rng([seed, 0, 1]),
            next_id=lambda: f"world-{next(counter)}",
        )
        questions = []
        for index, category in enumerate(DEMO_CATEGORIES, start=1):
            first = next((q for q in asked if q.category == category), None)
            if first is None:
                raise ConfigError(
                    f"the demo scene (seed {seed}, {width} x {height} px) has no "
                    f"{category!r} question; choose another seed or size"
                )
            questions.append(
                DemoQuestion(
                    question_id=f"demo-{index}",
                    text=first.text,
                    category=first.category,
                    ground_truth=first.ground_truth,
                    hbox=first.hbox,
                )
            )
        with tempfile.TemporaryDirectory(prefix=".demo-", dir=folder) as scratch:
            written = write_scene_geotiff(scene, Path(scratch) / DEMO_SCENE_NAME)
            write_dota(annotation_of(scene), folder / ANNOTATION_NAME)
            os.replace(written, scene_path)
        _write_text_atomic(
            questions_path, json.dumps([asdict(q) for q in questions], indent=1) + "\n"
        )
        _write_text_atomic(requests_path, _requests_csv(scene_path, tuple(questions)))
    stored = json.loads(questions_path.read_text())
    return DemoScene(
        scene_path=scene_path,
        requests_path=requests_path,
        questions=tuple(
            DemoQuestion(**{**q, "hbox": None if q["hbox"] is None else tuple(q["hbox"])})
            for q in stored
        ),
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
        model_dir: the model that answered (the packaged world model).
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

    def checks(self) -> list[DemoCheck]:
        """How each answered question went against the scene's ground truth (file order)."""
        records = {r.question_id: r for r in read_records(self.out_dir)}
        checks = []
        for question in self.scene.questions:
            record = records.get(question.question_id)
            if record is None:
                continue
            final = [tile.bbox_px for tile in record.evidence_tiles if tile.is_final]
            checks.append(
                DemoCheck(
                    question_id=question.question_id,
                    answer=record.answer,
                    ground_truth=question.ground_truth,
                    correct=record.answer.strip().lower() == question.ground_truth.lower(),
                    evidence_coverage=(
                        None if question.hbox is None else union_coverage(question.hbox, final)
                    ),
                )
            )
        return checks


@dataclass(frozen=True, kw_only=True)
class DemoCheck:
    """One demo answer against the ground truth.

    Attributes:
        question_id: the question.
        answer: what the model answered.
        ground_truth: the right answer (from the scene's annotations).
        correct: exact match, case and surrounding spaces ignored.
        evidence_coverage: share of the asked object's box covered by the final evidence tiles;
            None for a question about no single object.
    """

    question_id: str
    answer: str
    ground_truth: str
    correct: bool
    evidence_coverage: float | None


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
    model_dir = resolve_model_dir(DEMO_MODEL)
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
