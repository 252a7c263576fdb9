"""Annotations to questions: LRS-VQA-format questions built from DOTA-format oriented boxes.

:func:`build_questions` reads one image's :class:`~lrs_core.world.annotations.DotaAnnotation` and
writes questions in the eight LRS-VQA categories, each with the ``hbox``/``rbox`` of the object it
is about (count questions have none, as in LRS-VQA). It needs only what DOTA gives plus optional
attributes, so it works on a user's own annotated scenes as well as on the world's:

* count: "How many {plural} are there in the image?" (categories only);
* object color: "What is the color of the {ref}?" (attribute ``color=``);
* object category: "What is the category of the {dir}-most {color} object?" (``color=``);
* object shape: "What is the shape of the {dir}-most {color} object?" (``shape=``);
* object status: "Is the {ref} moving or stationary?" (``status=``);
* object background: "What is the background around the {ref}?" (``background=``);
* rural or urban: "Is the area around the {ref} rural or urban?" (header ``landcover:``);
* reasoning: "Is the {ref} to the {left|right} of the {ref2}?" or "Is the {ref} larger than the
  {ref2}?" (categories only).

``{ref}`` is ``{dir}-most {category}`` (``top-most ship``), used only when that object is unique
(no tie on the box edge). Answers are lowercase words of the annotations (counts are digits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lrs_core.evaluation.lrs_vqa import ANSWER_SUFFIX, COUNT_ANSWER_SUFFIX, LrsVqaQuestion
from lrs_core.evaluation.synth import abs_size_of, size_bin_of
from lrs_core.world.annotations import DotaAnnotation, DotaObject

#: Direction words and the hbox edge (index into (x0, y0, x1, y1)) that decides "most".
_EDGES: dict[str, tuple[int, int]] = {
    "top": (1, 1),
    "bottom": (3, -1),
    "left": (0, 1),
    "right": (2, -1),
}
#: Question-id prefix (the "dataset group" of LRS-VQA scoring) of world questions.
WORLD_GROUP = "WORLD"


@dataclass(frozen=True, kw_only=True)
class QaConfig:
    """What the QA builder asks.

    Attributes:
        count_categories: categories asked in count questions (their count may be 0); empty =
            every category present in the annotation.
        max_count: count questions whose answer exceeds this are left out.
        skip_difficult: leave objects flagged ``difficult`` out of referring questions.
    """

    count_categories: tuple[str, ...] = ()
    max_count: int = 20
    skip_difficult: bool = True


def plural_of(category: str) -> str:
    """English plural of a category (``storage tank`` -> ``storage tanks``)."""
    if category.endswith(("s", "x", "sh", "ch")):
        return category + "es"
    if category.endswith("y") and category[-2:-1] not in "aeiou":
        return category[:-1] + "ies"
    return category + "s"


def extreme(objects: Sequence[DotaObject], direction: str) -> DotaObject | None:
    """The unique ``direction``-most object by its hbox edge (None when empty or tied)."""
    index, sign = _EDGES[direction]
    ordered = sorted(objects, key=lambda o: sign * o.hbox[index])
    if not ordered:
        return None
    if len(ordered) > 1 and abs(ordered[0].hbox[index] - ordered[1].hbox[index]) < 1.0:
        return None
    return ordered[0]


def build_questions(
    annotation: DotaAnnotation,
    *,
    image: str,
    image_size_wh: tuple[int, int],
    rng: np.random.Generator,
    next_id: Callable[[], str],
    config: QaConfig | None = None,
) -> list[LrsVqaQuestion]:
    """Return LRS-VQA questions about one annotated image.

    Args:
        annotation: the image's DOTA annotation.
        image: the image path relative to the data root (written into each question).
        image_size_wh: (width, height) of the image, pixels.
        rng: chooses directions and yes/no alternatives (seeded by the caller).
        next_id: returns the next question id (``WORLD_<n>``).
        config: what to ask; default :class:`QaConfig`.
    """
    config = config or QaConfig()
    out: list[LrsVqaQuestion] = []
    objects = [o for o in annotation.objects if not (config.skip_difficult and o.difficult)]
    categories = sorted({o.category for o in annotation.objects})

    def ask(category: str, question: str, answer: str, obj: DotaObject | None) -> None:
        is_count = obj is None
        out.append(
            LrsVqaQuestion(
                question_id=next_id(),
                image=image,
                category=category,
                text=question + (COUNT_ANSWER_SUFFIX if is_count else ANSWER_SUFFIX),
                ground_truth=answer.lower(),
                hbox=None if obj is None else tuple(round(v, 1) for v in obj.hbox),  # type: ignore[arg-type]  # 4 values
                rbox=None if obj is None else tuple(round(v, 1) for v in obj.rbox),
                abs_size=None if obj is None else abs_size_of(obj.hbox),
                size_bin=None if obj is None else size_bin_of(obj.hbox),
                image_size_wh=image_size_wh,
            )
        )

    def pick_direction() -> str:
        return tuple(_EDGES)[int(rng.integers(len(_EDGES)))]

    for category in config.count_categories or tuple(categories):
        n = sum(1 for o in annotation.objects if o.category == category)
        if n <= config.max_count:
            ask("count", f"How many {plural_of(category)} are there in the image?", str(n), None)
    land_cover = annotation.headers.get("landcover", "")
    referred: list[tuple[str, DotaObject]] = []
    for category in categories:
        direction = pick_direction()
        obj = extreme([o for o in objects if o.category == category], direction)
        if obj is None:
            continue
        ref = f"{direction}-most {category}"
        referred.append((ref, obj))
        attrs = obj.attributes
        if "color" in attrs:
            ask("object color", f"What is the color of the {ref}?", attrs["color"], obj)
        if attrs.get("status"):
            ask("object status", f"Is the {ref} moving or stationary?", attrs["status"], obj)
        if "background" in attrs:
            ask(
                "object background",
                f"What is the background around the {ref}?",
                attrs["background"],
                obj,
            )
        if land_cover:
            ask("rural or urban", f"Is the area around the {ref} rural or urban?", land_cover, obj)
    colors = sorted({o.attributes["color"] for o in objects if "color" in o.attributes})
    for color in colors:
        direction = pick_direction()
        obj = extreme([o for o in objects if o.attributes.get("color") == color], direction)
        if obj is None:
            continue
        ask(
            "object category",
            f"What is the category of the {direction}-most {color} object?",
            obj.category,
            obj,
        )
        if "shape" in obj.attributes:
            ask(
                "object shape",
                f"What is the shape of the {direction}-most {color} object?",
                obj.attributes["shape"],
                obj,
            )
    _ask_reasoning(referred, rng, ask)
    return out


def _ask_reasoning(
    referred: list[tuple[str, DotaObject]],
    rng: np.random.Generator,
    ask: Callable[[str, str, str, DotaObject | None], None],
) -> None:
    """Relative position and size of pairs of referred objects (yes/no)."""
    if len(referred) < 2:
        return
    order = rng.permutation(len(referred))
    for first, second in zip(order[0::2], order[1::2], strict=False):
        (ref_a, obj_a), (ref_b, obj_b) = referred[int(first)], referred[int(second)]
        if rng.random() < 0.5:
            side = ("left", "right")[int(rng.integers(2))]
            ax, bx = obj_a.center_xy[0], obj_b.center_xy[0]
            if abs(ax - bx) < 1.0:
                continue
            truth = ax < bx if side == "left" else ax > bx
            ask(
                "reasoning",
                f"Is the {ref_a} to the {side} of the {ref_b}?",
                "yes" if truth else "no",
                obj_a,
            )
        else:
            if abs(obj_a.area_px - obj_b.area_px) < 1.0:
                continue
            truth = obj_a.area_px > obj_b.area_px
            ask(
                "reasoning",
                f"Is the {ref_a} larger than the {ref_b}?",
                "yes" if truth else "no",
                obj_a,
            )
