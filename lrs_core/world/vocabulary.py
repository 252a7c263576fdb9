"""The fixed vocabulary of the miniature world: backgrounds, object kinds, colours, statuses.

Everything a world scene can contain, and every word a world question or answer can use, is listed
here; ``docs/world.md`` prints the same tables. The vocabulary is fixed on purpose: a model trained
on one seed's scenes understands the questions of any other seed.

Sizes are level-0 pixels (the scene's full resolution); an object's *length* is its long side along
its orientation, its *width* the short side. Colours are uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True, kw_only=True)
class BackgroundSpec:
    """One background class of the land-cover map.

    Attributes:
        name: the answer word of "object background" questions (``"urban fabric"``...).
        rgb: base colour; a per-parcel tint and per-pixel noise are added when rendering.
        land_cover: ``"rural"``, ``"urban"`` or ``""`` (water and roads belong to neither).
    """

    name: str
    rgb: RGB
    land_cover: str


@dataclass(frozen=True, kw_only=True)
class KindSpec:
    """One object kind.

    Attributes:
        name: the category word (DOTA category and "object category" answers).
        plural: the plural used in count questions.
        shape: the answer word of "object shape" questions; one shape per kind.
        length_px: (min, max) long side, level-0 pixels.
        width_ratio: short side / long side.
        has_status: whether the object can be moving (ships, vehicles).
    """

    name: str
    plural: str
    shape: str
    length_px: tuple[int, int]
    width_ratio: float
    has_status: bool = False


#: Background classes, in label order (label ``i`` is ``BACKGROUNDS[i]``).
BACKGROUNDS: tuple[BackgroundSpec, ...] = (
    BackgroundSpec(name="fields", rgb=(150, 160, 80), land_cover="rural"),
    BackgroundSpec(name="forest", rgb=(40, 85, 45), land_cover="rural"),
    BackgroundSpec(name="urban fabric", rgb=(135, 130, 125), land_cover="urban"),
    BackgroundSpec(name="water", rgb=(35, 75, 125), land_cover=""),
    BackgroundSpec(name="roads", rgb=(75, 75, 80), land_cover=""),
)
BACKGROUND_NAMES: tuple[str, ...] = tuple(b.name for b in BACKGROUNDS)
FIELDS, FOREST, URBAN_FABRIC, WATER, ROADS = range(len(BACKGROUNDS))

#: Object kinds, in label order (label ``i + 1`` is ``KINDS[i]``; label 0 is "no object").
KINDS: tuple[KindSpec, ...] = (
    KindSpec(
        name="vehicle",
        plural="vehicles",
        shape="rectangle",
        length_px=(8, 24),
        width_ratio=0.45,
        has_status=True,
    ),
    KindSpec(
        name="ship",
        plural="ships",
        shape="ellipse",
        length_px=(30, 110),
        width_ratio=0.3,
        has_status=True,
    ),
    KindSpec(name="plane", plural="planes", shape="cross", length_px=(40, 110), width_ratio=1.0),
    KindSpec(
        name="storage tank",
        plural="storage tanks",
        shape="circle",
        length_px=(16, 60),
        width_ratio=1.0,
    ),
    KindSpec(
        name="building", plural="buildings", shape="square", length_px=(24, 90), width_ratio=1.0
    ),
    KindSpec(name="bridge", plural="bridges", shape="strip", length_px=(0, 0), width_ratio=0.0),
)
KIND_NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
KIND_BY_NAME: dict[str, KindSpec] = {k.name: k for k in KINDS}
#: Label of "no object" in per-pixel and per-cell kind/colour labels.
NO_OBJECT = 0

#: The colour palette of objects, in label order (label ``i + 1`` is the ``i``-th colour).
COLORS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "blue": (40, 70, 230),
    "yellow": (245, 220, 40),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
    "orange": (250, 135, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

#: Status words of objects that can move (the "object status" answers).
STATUSES: tuple[str, ...] = ("moving", "stationary")
#: Colour of the wake (ships) or motion trail (vehicles) behind a moving object.
WAKE_RGB: RGB = (235, 240, 245)
#: Land-cover words (the "rural or urban" answers).
LAND_COVERS: tuple[str, ...] = ("rural", "urban")
#: Direction words of referring expressions (``the top-most ship``).
DIRECTIONS: tuple[str, ...] = ("top", "bottom", "left", "right")
#: Yes/no answers (reasoning questions).
YES_NO: tuple[str, ...] = ("yes", "no")
#: Largest count answered in words of the vocabulary (counts are written as digits).
MAX_COUNT_ANSWER = 20

#: Width of a bridge deck, level-0 pixels (min, max).
BRIDGE_WIDTH_PX = (10, 18)
#: How far a bridge reaches past each river bank, level-0 pixels.
BRIDGE_OVERHANG_PX = 12


def answer_words() -> tuple[str, ...]:
    """Every answer the world's questions can have, in a fixed order."""
    counts = tuple(str(n) for n in range(MAX_COUNT_ANSWER + 1))
    return (
        *KIND_NAMES,
        *COLOR_NAMES,
        *(k.shape for k in KINDS),
        *STATUSES,
        *LAND_COVERS,
        *BACKGROUND_NAMES,
        *YES_NO,
        *counts,
    )
