"""Per-cell labels of the world's tiles: who labels a cell, and the visibility rule."""

from __future__ import annotations

import numpy as np

from lrs_core.world.generate import WorldObject, WorldScene, generate_scene
from lrs_core.world.views import IGNORE_LABEL, MIN_VISIBLE_PX, CellLabels, cell_labels
from lrs_core.world.vocabulary import COLOR_NAMES, KIND_NAMES

GRID = 6
SCENE_PX = 2048
#: Level-0 span of the labelled tile (inside the object's 300-px isolation radius).
TILE_SPAN_PX = 576.0


def _isolated_object() -> tuple[WorldScene, WorldObject]:
    """A scene and one of its objects with no other object within 300 px."""
    scene = generate_scene(11, size_wh=(SCENE_PX, SCENE_PX))
    for obj in scene.objects:
        cx, cy = obj.center_xy
        others = [o for o in scene.objects if o is not obj]
        if all(np.hypot(o.center_xy[0] - cx, o.center_xy[1] - cy) > 300 for o in others):
            if 200 < cx < SCENE_PX - 200 and 200 < cy < SCENE_PX - 200:
                return scene, obj
    raise AssertionError("no isolated object in the test scene")


def _labels_around(scale: float) -> tuple[WorldObject, CellLabels]:
    """Labels of a GRID x GRID tile centred on the object, at ``scale`` level-0 px per level px.

    The tile spans 576 level-0 px whatever the scale, so no other object is in view.
    """
    scene, obj = _isolated_object()
    cell_px = TILE_SPAN_PX / GRID / scale
    cx, cy = obj.center_xy
    origin = (cx / scale - cell_px * GRID / 2, cy / scale - cell_px * GRID / 2)
    labels = cell_labels(
        scene,
        origin_px=origin,
        cell_px=cell_px,
        scale_xy=(scale, scale),
        grid_side=GRID,
        content_hw=(int(cell_px * GRID), int(cell_px * GRID)),
    )
    return obj, labels


def test_a_visible_object_labels_the_cell_of_its_centre() -> None:
    obj, labels = _labels_around(1.0)
    centre = (GRID // 2, GRID // 2)
    assert labels.kind[centre] == KIND_NAMES.index(obj.kind) + 1
    assert labels.color[centre] == COLOR_NAMES.index(obj.color) + 1
    assert (labels.kind == 0).sum() >= GRID * GRID - 4  # the rest is empty ground
    assert (labels.background >= 0).all()


def test_an_object_too_small_at_the_tile_scale_is_ignored_not_taught() -> None:
    scene_obj, _ = _labels_around(1.0)
    scale = max(scene_obj.extent_px) / (MIN_VISIBLE_PX / 2)  # long side: 2 px at this scale
    obj, labels = _labels_around(scale)
    ignored = labels.kind == IGNORE_LABEL
    assert 1 <= ignored.sum() <= 4  # the cells the object touches
    assert np.array_equal(ignored, labels.color == IGNORE_LABEL)
    assert (labels.background != IGNORE_LABEL).all()  # the ground is still taught
    assert not (labels.kind == KIND_NAMES.index(obj.kind) + 1).any()  # the object is not taught
