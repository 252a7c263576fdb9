"""``lrs world make``: scenes, their DOTA annotations and an LRS-VQA question file, from a seed.

Layout of a world folder (a data root for ``lrs eval run lrs-vqa --data DIR``)::

    DIR/LRS_VQA/image/world_000.tif        tiled GeoTIFF, EPSG:32633, 0.5 m pixels
    DIR/LRS_VQA/annotations/world_000.txt  DOTA-format oriented boxes (+ color/shape/status/...)
    DIR/LRS_VQA_merged.jsonl               the questions (``WORLD_<n>`` ids)

Scene ``i`` of seed ``S`` is drawn from the seed pair ``(S, i)``, so the same arguments always give
the same bytes, and any (seed, index) scene can be rebuilt in memory without its files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import QUESTION_FILE_NAME, LrsVqaQuestion
from lrs_core.world.annotations import DotaAnnotation, DotaObject, write_dota
from lrs_core.world.generate import MAX_SCENE_PX, MIN_SCENE_PX, WorldScene, generate_scene
from lrs_core.world.qa import WORLD_GROUP, QaConfig, build_questions
from lrs_core.world.render import write_scene_geotiff
from lrs_core.world.vocabulary import KIND_NAMES

#: Image source written into the DOTA header of world scenes.
IMAGE_SOURCE = "lrs-world"
#: Default scene side, level-0 pixels.
DEFAULT_SIZE_PX = 4096


@dataclass(frozen=True, kw_only=True)
class WorldSet:
    """What :func:`make_world` wrote.

    Attributes:
        data_root: the folder.
        question_file: ``DIR/LRS_VQA_merged.jsonl``.
        scenes: the scenes, in index order.
        images: image paths relative to the data root, aligned with ``scenes``.
        questions: every question, in file order.
    """

    data_root: Path
    question_file: Path
    scenes: tuple[WorldScene, ...]
    images: tuple[str, ...]
    questions: tuple[LrsVqaQuestion, ...]


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a world seeded ``seed`` (a 31-bit integer)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def annotation_of(scene: WorldScene) -> DotaAnnotation:
    """The DOTA annotation of a world scene (every object, with its attributes)."""
    objects = []
    for obj in scene.objects:
        attributes = {"color": obj.color, "shape": obj.shape, "background": obj.background}
        if obj.status:
            attributes["status"] = obj.status
        objects.append(
            DotaObject(rbox=obj.rbox, category=obj.kind, difficult=False, attributes=attributes)
        )
    return DotaAnnotation(
        objects=tuple(objects),
        image_source=IMAGE_SOURCE,
        gsd_m=scene.gsd_m,
        headers={"landcover": scene.land_cover},
    )


def world_questions(
    scene: WorldScene,
    *,
    image: str,
    rng: np.random.Generator,
    next_id: Callable[[], str],
) -> list[LrsVqaQuestion]:
    """Questions about one world scene (every kind of the vocabulary is counted)."""
    return build_questions(
        annotation_of(scene),
        image=image,
        image_size_wh=scene.size_wh,
        rng=rng,
        next_id=next_id,
        config=QaConfig(count_categories=KIND_NAMES),
    )


def make_world(
    out_dir: str | Path,
    *,
    seed: int,
    n_scenes: int,
    size_px: int = DEFAULT_SIZE_PX,
    progress: Callable[[int, int], None] | None = None,
) -> WorldSet:
    """Write ``n_scenes`` square scenes of ``size_px``, their annotations and questions.

    Args:
        out_dir: the data root to write (created; files of the same names are replaced).
        seed: the world seed.
        n_scenes: number of scenes (>= 1).
        size_px: side of every scene, level-0 pixels, in [256, 16384].
        progress: called with ``(scenes_done, n_scenes)``.

    Raises:
        ConfigError: bad ``n_scenes`` or ``size_px``.
    """
    if n_scenes < 1:
        raise ConfigError(f"n_scenes={n_scenes} must be >= 1")
    if not MIN_SCENE_PX <= size_px <= MAX_SCENE_PX:
        raise ConfigError(f"size {size_px} px must be in [{MIN_SCENE_PX}, {MAX_SCENE_PX}]")
    root = Path(out_dir)
    counter = [0]

    def next_id() -> str:
        counter[0] += 1
        return f"{WORLD_GROUP}_{counter[0]}"

    scenes, images, questions = [], [], []
    for index in range(n_scenes):
        scene = generate_scene(scene_seed(seed, index), size_wh=(size_px, size_px))
        image = f"LRS_VQA/image/world_{index:03d}.tif"
        write_scene_geotiff(scene, root / image)
        write_dota(annotation_of(scene), root / f"LRS_VQA/annotations/world_{index:03d}.txt")
        rng = np.random.default_rng([seed, index, 1])
        questions.extend(world_questions(scene, image=image, rng=rng, next_id=next_id))
        scenes.append(scene)
        images.append(image)
        if progress is not None:
            progress(index + 1, n_scenes)
    question_file = root / QUESTION_FILE_NAME
    partial = question_file.with_name(question_file.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        for question in questions:
            fh.write(json.dumps(question.to_dict()) + "\n")
    os.replace(partial, question_file)
    return WorldSet(
        data_root=root,
        question_file=question_file,
        scenes=tuple(scenes),
        images=tuple(images),
        questions=tuple(questions),
    )
