"""The demo scene: a georeferenced GeoTIFF with planted objects and a few questions about it.

``lrs demo`` (and ``flows.demo.run_demo``) writes this scene, ingests it, answers its questions
with the tiny random model and writes the outputs. The scene comes from the synthetic benchmark
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
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lrs_core.errors import ConfigError
from lrs_core.evaluation.synth import SynthConfig, write_synthetic_set

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
