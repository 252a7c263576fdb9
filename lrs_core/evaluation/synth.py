"""An offline LRS-VQA-format benchmark: large scenes with planted objects whose answers are known.

``write_synthetic_set(out_dir)`` writes, deterministically from a seed::

    out_dir/LRS_VQA/image/synth_000.tif      tiled GeoTIFF (question ids FAIR_n)
    out_dir/LRS_VQA/image/synth_001.png      PNG (GLH-Bridge_n), then STAR_n, FAIR_n, ...
    out_dir/LRS_VQA_merged.jsonl             questions in the eight categories (spec §7.1 format)
    out_dir/synth_objects.json               the planted objects (ground truth of every scene)

The last scene is the large one (``large_side_px`` long side). Scenes are written in strips of rows,
so memory stays at a few strips whatever the scene size (PNG through a streaming zlib encoder).

Each scene has a rural (green) or urban (grey with a road grid) background and objects of four
kinds, each with one shape (storage tank = circle, building = square, ship = rectangle, vehicle =
triangle), a colour from :data:`COLORS`, a background patch (water, grass or concrete) under it, and
a white wake to its left when it is moving. Box fields follow spec §7.1: ``hbox`` ``[x0, y0, x1,
y1]`` level-0 pixel corners, ``rbox`` its four corners, ``abs_size`` and ``size_bin`` by our rule
(:func:`abs_size_of`, :func:`size_bin_of`; the reference's rule is unknown).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import (
    ANSWER_SUFFIX,
    COUNT_ANSWER_SUFFIX,
    QUESTION_FILE_NAME,
    LrsVqaQuestion,
)

#: Named colours of planted objects, RGB uint8.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "black": (15, 15, 15),
    "orange": (250, 140, 20),
}
#: Background patch colours under objects (the "object background" answers).
PATCH_COLORS: dict[str, tuple[int, int, int]] = {
    "water": (40, 90, 150),
    "grass": (60, 150, 60),
    "concrete": (170, 170, 165),
}
#: Object kinds and their shapes (the "object category" and "object shape" answers).
KIND_SHAPES: dict[str, str] = {
    "storage tank": "circle",
    "building": "square",
    "ship": "rectangle",
    "vehicle": "triangle",
}
#: Background colours per land cover (the "rural or urban" answers).
RURAL_RGB = (95, 125, 70)
URBAN_RGB = (120, 120, 120)
URBAN_ROAD_RGB = (200, 200, 195)
WAKE_RGB = (250, 250, 250)
#: Road grid pitch and width of urban backgrounds, px.
ROAD_PITCH_PX = 256
ROAD_WIDTH_PX = 12
#: Dataset groups assigned to scenes in turn, with their file format.
SCENE_GROUPS: tuple[tuple[str, str], ...] = (
    ("FAIR", "tif"),
    ("GLH-Bridge", "png"),
    ("STAR", "png"),
)
#: GeoTIFF block size, px.
TIFF_BLOCK_PX = 256
#: Upper bound of one strip's RGB bytes (memory bound of the writers).
STRIP_BYTES = 16 * 2**20
#: Patch margin around an object, as a fraction of its size.
PATCH_MARGIN = 0.5
#: Pixel size and origin of the synthetic GeoTIFFs (EPSG:32633, 0.5 m).
TIFF_EPSG = 32633
TIFF_PIXEL_SIZE_M = 0.5
TIFF_ORIGIN_XY = (500_000.0, 4_600_000.0)
#: Size bins (px) of spec §7.1; a box belongs to the first bin its longer side fits.
SIZE_BINS_PX: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
#: abs_size thresholds on sqrt(box area), px: below 32 small, below 96 medium, below 512 large.
ABS_SIZE_LIMITS_PX: tuple[tuple[float, str], ...] = ((32, "small"), (96, "medium"), (512, "large"))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE_RGB = 2
_PNG_BIT_DEPTH = 8
_PNG_IDAT_BYTES = 2**16


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """Sizes and seed of the synthetic set.

    Attributes:
        seed: random seed; the same config gives byte-identical files.
        n_scenes: number of scenes; the last one is the large one.
        side_px: long side of the ordinary scenes, px.
        large_side_px: long side of the last scene, px (> 10000 for the issue's "huge" scene).
        objects_per_scene: objects planted per scene.
        min_object_px: smallest object side, px.
        max_object_px: largest object side, px.
        large_short_side_px: short side of the last scene, px; default half its long side.
        strip_bytes: upper bound of one strip's RGB bytes while writing (memory bound; GeoTIFF
            strips are rounded up to whole block rows).
    """

    seed: int = 0
    n_scenes: int = 3
    side_px: int = 3_000
    large_side_px: int = 10_880
    objects_per_scene: int = 14
    min_object_px: int = 24
    max_object_px: int = 320
    large_short_side_px: int | None = None
    strip_bytes: int = STRIP_BYTES

    def __post_init__(self) -> None:
        if self.n_scenes < 1:
            raise ConfigError(f"n_scenes={self.n_scenes} must be >= 1")
        if self.objects_per_scene < len(KIND_SHAPES):
            raise ConfigError(
                f"objects_per_scene={self.objects_per_scene} must be >= {len(KIND_SHAPES)} "
                "(one per kind)"
            )
        if not 4 <= self.min_object_px <= self.max_object_px:
            raise ConfigError(
                f"min_object_px={self.min_object_px}, max_object_px={self.max_object_px}: need "
                "4 <= min <= max"
            )
        if self.strip_bytes < 1:
            raise ConfigError(f"strip_bytes={self.strip_bytes} must be >= 1")
        large_short = (
            self.large_side_px // 2
            if self.large_short_side_px is None
            else self.large_short_side_px
        )
        smallest_side = min(self.side_px * 2 // 3, large_short)
        if smallest_side < 4 * self.max_object_px:
            raise ConfigError(
                f"side_px={self.side_px}, large_side_px={self.large_side_px}, "
                f"large_short_side_px={self.large_short_side_px} leave a short side "
                f"of {smallest_side} px, too small for objects of max_object_px="
                f"{self.max_object_px} (need >= {4 * self.max_object_px}); raise the sides or "
                "lower max_object_px"
            )


@dataclass(frozen=True, kw_only=True)
class PlantedObject:
    """One planted object.

    Attributes:
        kind: key of :data:`KIND_SHAPES`.
        shape: the kind's shape.
        color: key of :data:`COLORS`.
        background: key of :data:`PATCH_COLORS`.
        is_moving: True when a wake is drawn to its left.
        hbox: (x0, y0, x1, y1) level-0 pixel corners of the object (patch and wake excluded).
    """

    kind: str
    shape: str
    color: str
    background: str
    is_moving: bool
    hbox: tuple[int, int, int, int]

    @property
    def patch_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the background patch (object box grown by :data:`PATCH_MARGIN`)."""
        x0, y0, x1, y1 = self.hbox
        margin = math.ceil(max(x1 - x0, y1 - y0) * PATCH_MARGIN)
        return (x0 - margin, y0 - margin, x1 + margin, y1 + margin)

    @property
    def wake_box(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the wake left of the object, or None when it is not moving."""
        if not self.is_moving:
            return None
        x0, y0, x1, y1 = self.hbox
        third = max(1, (y1 - y0) // 3)
        return (x0 - (x1 - x0), y0 + third, x0, y1 - third)


@dataclass(frozen=True, kw_only=True)
class SynthScene:
    """One written scene.

    Attributes:
        image: path relative to the data root (``LRS_VQA/image/...``).
        dataset: dataset group of its question ids.
        size_wh: (width, height) px.
        land_cover: ``rural`` or ``urban``.
        objects: the planted objects.
    """

    image: str
    dataset: str
    size_wh: tuple[int, int]
    land_cover: str
    objects: tuple[PlantedObject, ...]


@dataclass(frozen=True, kw_only=True)
class SynthSet:
    """What :func:`write_synthetic_set` wrote."""

    data_root: Path
    question_file: Path
    scenes: tuple[SynthScene, ...]
    questions: tuple[LrsVqaQuestion, ...]

    @property
    def n_questions(self) -> int:
        """Number of questions written."""
        return len(self.questions)


def size_bin_of(hbox: tuple[float, float, float, float]) -> str:
    """Return the first ``NxN`` bin of :data:`SIZE_BINS_PX` the box's longer side fits."""
    longest = max(hbox[2] - hbox[0], hbox[3] - hbox[1])
    for bin_px in SIZE_BINS_PX:
        if longest <= bin_px:
            return f"{bin_px}x{bin_px}"
    return f">{SIZE_BINS_PX[-1]}x{SIZE_BINS_PX[-1]}"


def abs_size_of(hbox: tuple[float, float, float, float]) -> str:
    """Return ``small``/``medium``/``large``/``giant`` from sqrt(box area) (ABS_SIZE_LIMITS_PX)."""
    side = math.sqrt(max(0.0, (hbox[2] - hbox[0]) * (hbox[3] - hbox[1])))
    for limit, name in ABS_SIZE_LIMITS_PX:
        if side < limit:
            return name
    return "giant"


def _scene_size(config: SynthConfig, index: int, rng: np.random.Generator) -> tuple[int, int]:
    if index == config.n_scenes - 1:
        short = config.large_short_side_px
        return (config.large_side_px, config.large_side_px // 2 if short is None else short)
    short = int(rng.integers(config.side_px * 2 // 3, config.side_px + 1))
    return (config.side_px, short) if index % 2 == 0 else (short, config.side_px)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _footprint(obj: PlantedObject) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = obj.patch_box
    wake = obj.wake_box
    return (min(x0, wake[0]) if wake else x0, y0, x1, y1)


def _plant_objects(
    config: SynthConfig, size_wh: tuple[int, int], rng: np.random.Generator
) -> tuple[PlantedObject, ...]:
    width, height = size_wh
    kinds = list(KIND_SHAPES)
    objects: list[PlantedObject] = []
    attempts = 0
    max_attempts = 200 * config.objects_per_scene
    while len(objects) < config.objects_per_scene:
        attempts += 1
        if attempts > max_attempts:
            raise ConfigError(
                f"could not place {config.objects_per_scene} objects in a {width}x{height} scene; "
                "lower objects_per_scene or max_object_px"
            )
        kind = kinds[len(objects)] if len(objects) < len(kinds) else str(rng.choice(kinds))
        side = int(rng.integers(config.min_object_px, config.max_object_px + 1))
        w, h = (side * 2, max(4, side // 2)) if kind == "ship" else (side, side)
        margin = math.ceil(max(w, h) * PATCH_MARGIN) + w  # patch and a possible wake
        if width - 2 * margin <= w or height - 2 * margin <= h:
            continue
        x0 = int(rng.integers(margin, width - margin - w))
        y0 = int(rng.integers(margin, height - margin - h))
        candidate = PlantedObject(
            kind=kind,
            shape=KIND_SHAPES[kind],
            color=str(rng.choice(list(COLORS))),
            background=str(rng.choice(list(PATCH_COLORS))),
            is_moving=bool(rng.integers(0, 2)) if kind in ("ship", "vehicle") else False,
            hbox=(x0, y0, x0 + w, y0 + h),
        )
        if any(_overlaps(_footprint(candidate), _footprint(o)) for o in objects):
            continue
        objects.append(candidate)
    return tuple(objects)


def render_strip(scene: SynthScene, row_start: int, row_stop: int) -> np.ndarray:
    """Return uint8 (row_stop - row_start, W, 3) RGB rows ``[row_start, row_stop)`` of a scene.

    Args:
        scene: the scene to draw.
        row_start: first level-0 row (inclusive).
        row_stop: last level-0 row (exclusive).
    """
    width = scene.size_wh[0]
    rows = np.arange(row_start, row_stop)
    strip = np.empty((row_stop - row_start, width, 3), dtype=np.uint8)
    if scene.land_cover == "urban":
        strip[:] = URBAN_RGB
        on_road_row = (rows % ROAD_PITCH_PX) < ROAD_WIDTH_PX
        on_road_col = (np.arange(width) % ROAD_PITCH_PX) < ROAD_WIDTH_PX
        strip[on_road_row[:, None] | on_road_col[None, :]] = URBAN_ROAD_RGB
    else:
        strip[:] = RURAL_RGB

    def fill(box: tuple[int, int, int, int], rgb: tuple[int, int, int], shape: str) -> None:
        x0, y0, x1, y1 = box
        r0, r1 = max(y0, row_start), min(y1, row_stop)
        c0, c1 = max(x0, 0), min(x1, width)
        if r0 >= r1 or c0 >= c1:
            return
        yy = (np.arange(r0, r1) + 0.5)[:, None]
        xx = (np.arange(c0, c1) + 0.5)[None, :]
        if shape == "circle":
            cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        elif shape == "triangle":  # apex at the top centre, base at the bottom
            half_width = (yy - y0) / (y1 - y0) * (x1 - x0) / 2
            mask = np.abs(xx - (x0 + x1) / 2) <= half_width
        else:
            mask = np.ones((r1 - r0, c1 - c0), dtype=bool)
        view = strip[r0 - row_start : r1 - row_start, c0:c1]
        view[mask] = rgb

    for obj in scene.objects:
        fill(obj.patch_box, PATCH_COLORS[obj.background], "rectangle")
        wake = obj.wake_box
        if wake is not None:
            fill(wake, WAKE_RGB, "rectangle")
        fill(obj.hbox, COLORS[obj.color], obj.shape)
    return strip


def _strip_rows(width: int, *, align: int, strip_bytes: int) -> int:
    rows = max(1, strip_bytes // (3 * width))
    return max(align, rows // align * align)


def write_png_streaming(
    path: Path,
    size_wh: tuple[int, int],
    render: Callable[[int, int], np.ndarray],
    *,
    strip_bytes: int = STRIP_BYTES,
) -> None:
    """Write an 8-bit RGB PNG strip by strip with a streaming zlib encoder.

    Args:
        path: output file (written through ``<name>.partial`` and renamed).
        size_wh: (width, height) px.
        render: ``render(row_start, row_stop)`` -> uint8 (rows, W, 3).
        strip_bytes: upper bound of one strip's RGB bytes.
    """
    width, height = size_wh
    partial = path.with_name(path.name + ".partial")

    def chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
        fh.write(struct.pack(">I", len(data)) + kind + data)
        fh.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    with open(partial, "wb") as fh:
        fh.write(_PNG_SIGNATURE)
        header = struct.pack(
            ">IIBBBBB", width, height, _PNG_BIT_DEPTH, _PNG_COLOR_TYPE_RGB, 0, 0, 0
        )
        chunk(fh, b"IHDR", header)
        encoder = zlib.compressobj(level=6)
        pending = bytearray()
        step = _strip_rows(width, align=1, strip_bytes=strip_bytes)
        for row_start in range(0, height, step):
            rows = render(row_start, min(height, row_start + step))
            filtered = np.zeros((rows.shape[0], 1 + 3 * width), dtype=np.uint8)  # filter 0 (None)
            filtered[:, 1:] = rows.reshape(rows.shape[0], -1)
            pending += encoder.compress(filtered.tobytes())
            while len(pending) >= _PNG_IDAT_BYTES:
                chunk(fh, b"IDAT", bytes(pending[:_PNG_IDAT_BYTES]))
                del pending[:_PNG_IDAT_BYTES]
        pending += encoder.flush()
        if pending:
            chunk(fh, b"IDAT", bytes(pending))
        chunk(fh, b"IEND", b"")
    os.replace(partial, path)


def write_geotiff_streaming(
    path: Path,
    size_wh: tuple[int, int],
    render: Callable[[int, int], np.ndarray],
    *,
    strip_bytes: int = STRIP_BYTES,
) -> None:
    """Write a tiled, deflate-compressed RGB GeoTIFF (EPSG:32633, 0.5 m) strip by strip.

    Args:
        path: output file (written through ``<name>.partial`` and renamed).
        size_wh: (width, height) px.
        render: ``render(row_start, row_stop)`` -> uint8 (rows, W, 3).
        strip_bytes: upper bound of one strip's RGB bytes, rounded up to whole block rows.
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.windows import Window

    width, height = size_wh
    partial = path.with_name(path.name + ".partial")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS.from_epsg(TIFF_EPSG),
        "transform": Affine(
            TIFF_PIXEL_SIZE_M, 0, TIFF_ORIGIN_XY[0], 0, -TIFF_PIXEL_SIZE_M, TIFF_ORIGIN_XY[1]
        ),
        "tiled": True,
        "blockxsize": TIFF_BLOCK_PX,
        "blockysize": TIFF_BLOCK_PX,
        "compress": "deflate",
        "photometric": "RGB",
        "BIGTIFF": "IF_SAFER",
    }
    step = _strip_rows(width, align=TIFF_BLOCK_PX, strip_bytes=strip_bytes)
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(partial, "w", **profile) as dst:
        for row_start in range(0, height, step):
            row_stop = min(height, row_start + step)
            rows = render(row_start, row_stop)
            window = Window(0, row_start, width, row_stop - row_start)
            dst.write(np.moveaxis(rows, -1, 0), window=window)
    os.replace(partial, path)


def _extreme(objects: list[PlantedObject], direction: str) -> PlantedObject | None:
    """The unique top-/bottom-/left-/right-most object (None on a tie)."""
    index = {"top": 1, "bottom": 3, "left": 0, "right": 2}[direction]
    sign = 1 if direction in ("top", "left") else -1
    ordered = sorted(objects, key=lambda o: sign * o.hbox[index])
    if len(ordered) > 1 and ordered[0].hbox[index] == ordered[1].hbox[index]:
        return None
    return ordered[0] if ordered else None


def _questions_for_scene(
    scene: SynthScene, rng: np.random.Generator, next_id: Callable[[], str]
) -> list[LrsVqaQuestion]:
    width, height = scene.size_wh
    out: list[LrsVqaQuestion] = []

    def ask(category: str, question: str, answer: str, obj: PlantedObject | None) -> None:
        is_count = category == "count"
        box: tuple[float, float, float, float] | None
        if is_count:
            box = None
        elif obj is None:
            box = (0.0, 0.0, float(width), float(height))
        else:
            box = (float(obj.hbox[0]), float(obj.hbox[1]), float(obj.hbox[2]), float(obj.hbox[3]))
        rbox = (
            None
            if box is None
            else (box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3])
        )
        out.append(
            LrsVqaQuestion(
                question_id=next_id(),
                image=scene.image,
                category=category,
                text=question + (COUNT_ANSWER_SUFFIX if is_count else ANSWER_SUFFIX),
                ground_truth=answer,
                hbox=box,
                rbox=rbox,
                abs_size=None if box is None else abs_size_of(box),
                size_bin=None if box is None else size_bin_of(box),
                image_size_wh=(width, height),
            )
        )

    directions = ("top", "bottom", "left", "right")
    objects = list(scene.objects)
    ask("rural or urban", "Is this area rural or urban?", scene.land_cover, None)
    for kind in KIND_SHAPES:
        same_kind = [o for o in objects if o.kind == kind]
        plural = kind + "s" if not kind.endswith("s") else kind
        ask("count", f"How many {plural} are there in the image?", str(len(same_kind)), None)
        direction = directions[int(rng.integers(0, len(directions)))]
        obj = _extreme(same_kind, direction)
        if obj is None:
            continue
        ref = f"the {direction}-most {kind}"
        ask("object color", f"What is the color of {ref}?", obj.color, obj)
        ask("object background", f"What is the background around {ref}?", obj.background, obj)
        other = [c for c in COLORS if c != obj.color]
        asked = obj.color if rng.integers(0, 2) else other[int(rng.integers(0, len(other)))]
        ask("reasoning", f"Is {ref} {asked}?", "yes" if asked == obj.color else "no", obj)
        if kind in ("ship", "vehicle"):
            status = "moving" if obj.is_moving else "stationary"
            ask("object status", f"Is {ref} moving or stationary?", status, obj)
    for color in COLORS:
        same_color = [o for o in objects if o.color == color]
        direction = directions[int(rng.integers(0, len(directions)))]
        obj = _extreme(same_color, direction)
        if obj is None:
            continue
        ask(
            "object shape",
            f"What is the shape of the {direction}-most {color} object?",
            obj.shape,
            obj,
        )
        ask(
            "object category",
            f"What is the category of the {direction}-most {color} object?",
            obj.kind,
            obj,
        )
    return out


def write_synthetic_set(
    out_dir: Path,
    *,
    config: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSet:
    """Write a synthetic LRS-VQA-format benchmark under ``out_dir`` (see the module docstring).

    Args:
        out_dir: the data root to create; existing files of the set are overwritten.
        config: sizes and seed; default :class:`SynthConfig`.
        progress: called with ``(scenes_done, n_scenes)`` after each scene.

    Returns:
        The scenes and questions written.
    """
    config = config or SynthConfig()
    rng = np.random.default_rng(config.seed)
    out_dir = Path(out_dir)
    image_dir = out_dir / "LRS_VQA" / "image"
    image_dir.mkdir(parents=True, exist_ok=True)
    counters: dict[str, int] = {}
    scenes: list[SynthScene] = []
    questions: list[LrsVqaQuestion] = []
    for index in range(config.n_scenes):
        dataset, extension = SCENE_GROUPS[index % len(SCENE_GROUPS)]
        size_wh = _scene_size(config, index, rng)
        scene = SynthScene(
            image=f"LRS_VQA/image/synth_{index:03d}.{extension}",
            dataset=dataset,
            size_wh=size_wh,
            land_cover="urban" if rng.integers(0, 2) else "rural",
            objects=_plant_objects(config, size_wh, rng),
        )

        def render(row_start: int, row_stop: int, scene: SynthScene = scene) -> np.ndarray:
            return render_strip(scene, row_start, row_stop)

        path = out_dir / scene.image
        if extension == "tif":
            write_geotiff_streaming(path, size_wh, render, strip_bytes=config.strip_bytes)
        else:
            write_png_streaming(path, size_wh, render, strip_bytes=config.strip_bytes)

        def next_id(dataset: str = dataset) -> str:
            counters[dataset] = counters.get(dataset, 0) + 1
            return f"{dataset}_{counters[dataset]}"

        questions.extend(_questions_for_scene(scene, rng, next_id))
        scenes.append(scene)
        if progress is not None:
            progress(index + 1, config.n_scenes)
    question_file = out_dir / QUESTION_FILE_NAME
    partial = question_file.with_name(question_file.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        for question in questions:
            fh.write(json.dumps(question.to_dict()) + "\n")
    os.replace(partial, question_file)
    manifest = {
        "config": asdict(config),
        "scenes": [
            {**asdict(scene), "objects": [asdict(o) for o in scene.objects]} for scene in scenes
        ],
    }
    (out_dir / "synth_objects.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return SynthSet(
        data_root=out_dir,
        question_file=question_file,
        scenes=tuple(scenes),
        questions=tuple(questions),
    )
