"""DOTA-format oriented-box annotations: read and write.

A DOTA label file (DOTA v1.0/v1.5 ``labelTxt``) is::

    imagesource:GoogleEarth
    gsd:0.146343590398
    x1 y1 x2 y2 x3 y3 x4 y4 category difficult
    ...

``x1 y1 ... x4 y4`` are the four corners of the oriented box in level-0 pixels (x first), the
category is one word (DOTA joins words with ``-``: ``storage-tank``), and ``difficult`` is 0 or 1.

This module also reads and writes two compatible extensions, ignored by ordinary DOTA tools (which
split a line on whitespace and read only the first ten fields, and skip lines with fewer fields):

* extra header lines ``key:value`` (the world writes ``landcover:urban``);
* trailing ``key=value`` attributes on an object line (the world writes ``color=red``,
  ``status=moving``, ``background=water``; spaces inside values are written as ``-``).

Categories and attribute values are returned with ``-`` turned back into spaces.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lrs_core.errors import DatasetError

#: Fields of a DOTA object line before the optional attributes: 8 coordinates, category, difficult.
DOTA_FIELDS = 10
#: The corner count of an oriented box.
RBOX_CORNERS = 4


@dataclass(frozen=True, kw_only=True)
class DotaObject:
    """One annotated object.

    Attributes:
        rbox: the four corners (x1, y1, ..., x4, y4), level-0 pixels.
        category: the category, words separated by spaces (``"storage tank"``).
        difficult: DOTA's difficult flag.
        attributes: extra ``key=value`` attributes (``color``, ``status``, ``background``...).
    """

    rbox: tuple[float, ...]
    category: str
    difficult: bool = False
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def hbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) axis-aligned bound of the corners, level-0 pixels."""
        xs, ys = self.rbox[0::2], self.rbox[1::2]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def center_xy(self) -> tuple[float, float]:
        """(x, y) mean of the corners, level-0 pixels."""
        return (sum(self.rbox[0::2]) / RBOX_CORNERS, sum(self.rbox[1::2]) / RBOX_CORNERS)

    @property
    def area_px(self) -> float:
        """Area of the oriented box (shoelace formula), level-0 pixels squared."""
        xs, ys = self.rbox[0::2], self.rbox[1::2]
        total = 0.0
        for i in range(RBOX_CORNERS):
            j = (i + 1) % RBOX_CORNERS
            total += xs[i] * ys[j] - xs[j] * ys[i]
        return abs(total) / 2

    @property
    def length_px(self) -> float:
        """The longer side of the oriented box, level-0 pixels."""
        xs, ys = self.rbox[0::2], self.rbox[1::2]
        side_a = math.hypot(xs[1] - xs[0], ys[1] - ys[0])
        side_b = math.hypot(xs[2] - xs[1], ys[2] - ys[1])
        return max(side_a, side_b)


@dataclass(frozen=True, kw_only=True)
class DotaAnnotation:
    """The annotations of one image.

    Attributes:
        objects: the objects, in file order.
        image_source: the ``imagesource:`` header ("" when absent).
        gsd_m: the ``gsd:`` header in metres per pixel (None when absent or ``null``).
        headers: every other ``key:value`` header line (e.g. ``landcover``).
    """

    objects: tuple[DotaObject, ...]
    image_source: str = ""
    gsd_m: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _word(text: str) -> str:
    return text.strip().replace(" ", "-")


def _unword(text: str) -> str:
    return text.replace("-", " ")


def format_dota(annotation: DotaAnnotation) -> str:
    """Return the text of a DOTA label file (header lines, then one object a line)."""
    lines = [f"imagesource:{annotation.image_source}"]
    lines.append(f"gsd:{'null' if annotation.gsd_m is None else repr(annotation.gsd_m)}")
    lines.extend(f"{key}:{_word(value)}" for key, value in annotation.headers.items())
    for obj in annotation.objects:
        if len(obj.rbox) != 2 * RBOX_CORNERS:
            raise ValueError(f"rbox {obj.rbox!r} must hold 8 numbers")
        coords = " ".join(f"{value:.1f}" for value in obj.rbox)
        attributes = "".join(f" {key}={_word(value)}" for key, value in obj.attributes.items())
        lines.append(f"{coords} {_word(obj.category)} {int(obj.difficult)}{attributes}")
    return "\n".join(lines) + "\n"


def write_dota(annotation: DotaAnnotation, path: str | Path) -> Path:
    """Write a DOTA label file (through ``<name>.partial``, renamed when complete)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(format_dota(annotation), encoding="utf-8")
    os.replace(partial, out)
    return out


def parse_dota(text: str, *, where: str = "<text>") -> DotaAnnotation:
    """Parse the text of a DOTA label file.

    Args:
        text: the file's text.
        where: the file name, for error messages.

    Raises:
        DatasetError: a line is neither a header nor a valid object line.
    """
    objects: list[DotaObject] = []
    image_source = ""
    gsd: float | None = None
    headers: dict[str, str] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1 and ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "imagesource":
                image_source = value.strip()
            elif key == "gsd":
                gsd = _parse_gsd(value.strip(), where=f"{where}:{line_no}")
            else:
                headers[key] = _unword(value.strip())
            continue
        if len(parts) < DOTA_FIELDS:
            raise DatasetError(
                f"{where}:{line_no}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category difficult', got "
                f"{len(parts)} fields ({line[:60]!r}); fix or remove the line"
            )
        try:
            rbox = tuple(float(v) for v in parts[:8])
        except ValueError as err:
            raise DatasetError(
                f"{where}:{line_no}: the first 8 fields must be numbers ({line[:60]!r})"
            ) from err
        if not all(math.isfinite(v) for v in rbox):
            raise DatasetError(f"{where}:{line_no}: corner coordinates must be finite")
        if parts[9] not in ("0", "1"):
            raise DatasetError(f"{where}:{line_no}: difficult must be 0 or 1, got {parts[9]!r}")
        attributes: dict[str, str] = {}
        for extra in parts[DOTA_FIELDS:]:
            key, sep, value = extra.partition("=")
            if not sep or not key:
                raise DatasetError(
                    f"{where}:{line_no}: extra field {extra!r} is not key=value; remove it"
                )
            attributes[key] = _unword(value)
        objects.append(
            DotaObject(
                rbox=rbox,
                category=_unword(parts[8]),
                difficult=parts[9] == "1",
                attributes=attributes,
            )
        )
    return DotaAnnotation(
        objects=tuple(objects), image_source=image_source, gsd_m=gsd, headers=headers
    )


def _parse_gsd(value: str, *, where: str) -> float | None:
    if value.lower() in ("", "null", "none"):
        return None
    try:
        return float(value)
    except ValueError as err:
        raise DatasetError(f"{where}: gsd {value!r} is not a number or 'null'") from err


def read_dota(path: str | Path) -> DotaAnnotation:
    """Read a DOTA label file.

    Raises:
        DatasetError: the file is missing or malformed.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DatasetError(f"{source}: annotation file not found; check the path") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{source}: cannot read ({err})") from err
    return parse_dota(text, where=str(source))
