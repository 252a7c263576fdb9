"""What a world scene contains: its land-cover map, river, roads and objects, drawn from a seed.

A :class:`WorldScene` is a small value (a few kB even for a 16,384-px scene): the background is a
function of the pixel position (:meth:`WorldScene.background_at`), and objects are a list of
oriented shapes. :mod:`lrs_core.world.render` turns it into pixels window by window.

Frames: ``x``/``y`` are level-0 pixel coordinates of the scene, x (column) first, the origin at the
top-left corner of the top-left pixel (pixel centres at +0.5). Angles are degrees, counter-clockwise
from the +x axis as seen on the image (y grows downwards, so the rotation is applied to ``-y``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from lrs_core.errors import ConfigError
from lrs_core.world.vocabulary import (
    BACKGROUNDS,
    BRIDGE_OVERHANG_PX,
    BRIDGE_WIDTH_PX,
    COLOR_NAMES,
    FIELDS,
    FOREST,
    KIND_BY_NAME,
    ROADS,
    STATUSES,
    URBAN_FABRIC,
    WATER,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Side of one land parcel (fields, forest or urban fabric), level-0 pixels.
PARCEL_PX = 128
#: Width of a road, level-0 pixels.
ROAD_WIDTH_PX = 12
#: Smallest scene side, level-0 pixels.
MIN_SCENE_PX = 256
#: Largest scene side, level-0 pixels.
MAX_SCENE_PX = 16_384
#: Clearance kept between object boxes when placing them, level-0 pixels.
PLACEMENT_GAP_PX = 4
#: Tries to place one object before giving up on it.
PLACEMENT_TRIES = 60
#: Objects per kind in a scene, (min, max) inclusive; independent of the scene size, so large
#: scenes are sparse (the regime the coarse-to-fine method is for).
OBJECTS_PER_KIND: dict[str, tuple[int, int]] = {
    "vehicle": (2, 8),
    "ship": (0, 4),
    "plane": (0, 3),
    "storage tank": (0, 5),
    "building": (1, 6),
    "bridge": (0, 2),
}
#: Parcel class probabilities (fields, forest, urban fabric) per land cover.
PARCEL_MIX: dict[str, tuple[float, float, float]] = {
    "rural": (0.6, 0.35, 0.05),
    "urban": (0.15, 0.05, 0.8),
}


@dataclass(frozen=True, kw_only=True)
class WorldObject:
    """One object of a scene.

    Attributes:
        kind: a :data:`lrs_core.world.vocabulary.KINDS` name.
        color: a :data:`lrs_core.world.vocabulary.COLORS` name.
        status: ``"moving"``/``"stationary"`` for kinds with a status, else ``""``.
        center_xy: (x, y) centre, level-0 pixels.
        length_px: long side along ``angle_deg``.
        width_px: short side.
        angle_deg: orientation of the long side, degrees counter-clockwise from +x.
        background: the background name under the object's centre.
    """

    kind: str
    color: str
    status: str
    center_xy: tuple[float, float]
    length_px: float
    width_px: float
    angle_deg: float
    background: str

    @property
    def shape(self) -> str:
        """The shape word of the object's kind."""
        return KIND_BY_NAME[self.kind].shape

    @property
    def extent_px(self) -> tuple[float, float]:
        """(along, across) full extent of the drawn shape; a plane's wings span its length."""
        if self.shape == "cross":
            return self.length_px, self.length_px
        return self.length_px, self.width_px

    @property
    def rbox(self) -> tuple[float, ...]:
        """The oriented box's corners (x1, y1, ..., x4, y4), level-0 pixels, clockwise on screen."""
        along, across = self.extent_px
        cx, cy = self.center_xy
        theta = math.radians(self.angle_deg)
        ux, uy = math.cos(theta), -math.sin(theta)
        vx, vy = -uy, ux
        corners = []
        for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            corners.append(cx + su * along / 2 * ux + sv * across / 2 * vx)
            corners.append(cy + su * along / 2 * uy + sv * across / 2 * vy)
        return tuple(round(c, 2) for c in corners)

    @property
    def hbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) axis-aligned bound of :attr:`rbox`, level-0 pixel corners."""
        box = self.rbox
        xs, ys = box[0::2], box[1::2]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def area_px(self) -> float:
        """Area of the oriented box, level-0 pixels squared."""
        along, across = self.extent_px
        return along * across

    def local_uv(self, xs: FloatArray, ys: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Return (u, v): point coordinates along and across the object, centred on it.

        Args:
            xs: float (...) x of points, level-0 pixels.
            ys: float (...) y of points, same shape.
        """
        theta = math.radians(self.angle_deg)
        dx, dy = xs - self.center_xy[0], ys - self.center_xy[1]
        u = dx * math.cos(theta) - dy * math.sin(theta)
        v = dx * math.sin(theta) + dy * math.cos(theta)
        return u, v

    def contains(self, xs: FloatArray, ys: FloatArray) -> npt.NDArray[np.bool_]:
        """Return bool (...): which points lie on the object's shape (its wake excluded)."""
        u, v = self.local_uv(xs, ys)
        half_l, half_w = self.length_px / 2, self.width_px / 2
        shape = self.shape
        if shape in ("ellipse", "circle"):
            return np.asarray((u / half_l) ** 2 + (v / max(half_w, 1e-6)) ** 2 <= 1.0)
        if shape == "cross":
            length = self.length_px
            fuselage = (np.abs(u) <= half_l) & (np.abs(v) <= 0.08 * length)
            wings = (np.abs(u - 0.05 * length) <= 0.1 * length) & (np.abs(v) <= half_l)
            tail = (np.abs(u + 0.4 * length) <= 0.05 * length) & (np.abs(v) <= 0.2 * length)
            return np.asarray(fuselage | wings | tail)
        return np.asarray((np.abs(u) <= half_l) & (np.abs(v) <= half_w))

    def wake_contains(self, xs: FloatArray, ys: FloatArray) -> npt.NDArray[np.bool_]:
        """Return bool (...): points on the wake or trail behind a moving object."""
        if self.status != "moving":
            return np.zeros(np.shape(xs), dtype=bool)
        u, v = self.local_uv(xs, ys)
        half_l, half_w = self.length_px / 2, self.width_px / 2
        reach = 1.5 * self.length_px
        behind = -u - half_l
        spread = half_w * (0.4 + behind / reach)
        return np.asarray((behind >= 0) & (behind <= reach) & (np.abs(v) <= spread))

    def wake_hbox(self) -> tuple[float, float, float, float]:
        """Axis-aligned bound of the object and its wake, level-0 pixels."""
        x0, y0, x1, y1 = self.hbox
        if self.status != "moving":
            return (x0, y0, x1, y1)
        pad = 1.5 * self.length_px + self.width_px
        return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


@dataclass(frozen=True, kw_only=True)
class River:
    """A meandering river band: ``|across - centre(along)| <= half_width``.

    Attributes:
        vertical: True: the river runs top to bottom (``along`` is y); False: left to right.
        offset_px: mean centre line position across the flow, level-0 pixels.
        amplitude_px: meander amplitude, level-0 pixels.
        period_px: meander wavelength, level-0 pixels.
        phase: meander phase, radians.
        half_width_px: half the river's width, level-0 pixels.
    """

    vertical: bool
    offset_px: float
    amplitude_px: float
    period_px: float
    phase: float
    half_width_px: float

    def centre(self, along: FloatArray) -> FloatArray:
        """Centre line position across the flow at ``along`` (level-0 pixels)."""
        return np.asarray(
            self.offset_px
            + self.amplitude_px * np.sin(2 * math.pi * along / self.period_px + self.phase)
        )

    def contains(self, xs: FloatArray, ys: FloatArray) -> npt.NDArray[np.bool_]:
        """Return bool (...): points on the water."""
        along, across = (ys, xs) if self.vertical else (xs, ys)
        return np.asarray(np.abs(across - self.centre(along)) <= self.half_width_px)

    def flow_angle_deg(self, along: float) -> float:
        """Direction of the river's flow at ``along``, degrees counter-clockwise from +x."""
        slope = (
            self.amplitude_px
            * 2
            * math.pi
            / self.period_px
            * math.cos(2 * math.pi * along / self.period_px + self.phase)
        )
        if self.vertical:  # along = y (down on screen), across = x
            return math.degrees(math.atan2(-1.0, slope))
        return math.degrees(math.atan2(-slope, 1.0))


@dataclass(frozen=True, kw_only=True)
class WorldScene:
    """One scene of the world: its size, land cover, background layout and objects.

    Attributes:
        seed: the seed it was drawn from (also seeds the texture noise).
        size_wh: (width, height), level-0 pixels.
        land_cover: ``"rural"`` or ``"urban"``.
        parcels: int8 (ceil(H / PARCEL_PX), ceil(W / PARCEL_PX)) background class of each parcel.
        tints: int16 (same shape) brightness offset of each parcel.
        river: the river, or None.
        roads_y: y of the centre lines of horizontal roads, level-0 pixels.
        roads_x: x of the centre lines of vertical roads.
        objects: the objects, in drawing order.
        gsd_m: ground sample distance, metres per pixel.
    """

    seed: int
    size_wh: tuple[int, int]
    land_cover: str
    parcels: npt.NDArray[np.int8] = field(repr=False)
    tints: npt.NDArray[np.int16] = field(repr=False)
    river: River | None
    roads_y: tuple[float, ...]
    roads_x: tuple[float, ...]
    objects: tuple[WorldObject, ...]
    gsd_m: float = 0.5

    def background_at(self, xs: FloatArray, ys: FloatArray) -> npt.NDArray[np.int8]:
        """Return int8 (...) background labels (indices into ``BACKGROUNDS``) at points.

        Args:
            xs: float (...) x, level-0 pixels (inside the scene).
            ys: float (...) y, same shape.
        """
        rows = np.clip((ys // PARCEL_PX).astype(np.int64), 0, self.parcels.shape[0] - 1)
        cols = np.clip((xs // PARCEL_PX).astype(np.int64), 0, self.parcels.shape[1] - 1)
        labels = self.parcels[rows, cols].copy()
        if self.river is not None:
            labels[self.river.contains(xs, ys)] = WATER
        half = ROAD_WIDTH_PX / 2
        for y in self.roads_y:
            labels[np.abs(ys - y) <= half] = ROADS
        for x in self.roads_x:
            labels[np.abs(xs - x) <= half] = ROADS
        return labels

    def background_name_at(self, x: float, y: float) -> str:
        """Background name at one point (level-0 pixels)."""
        label = self.background_at(np.asarray([x], dtype=np.float64), np.asarray([y], float))
        return BACKGROUNDS[int(label[0])].name


def _check_size(size_wh: tuple[int, int]) -> None:
    for side in size_wh:
        if not MIN_SCENE_PX <= side <= MAX_SCENE_PX:
            raise ConfigError(
                f"scene size {size_wh[0]}x{size_wh[1]} px: each side must be in "
                f"[{MIN_SCENE_PX}, {MAX_SCENE_PX}]; choose another --size"
            )


def generate_scene(
    seed: int,
    *,
    size_wh: tuple[int, int],
    object_scale: float = 1.0,
    objects_per_kind: dict[str, tuple[int, int]] | None = None,
) -> WorldScene:
    """Draw one scene from a seed (the same arguments always give the same scene).

    Args:
        seed: the scene's seed.
        size_wh: (width, height) in level-0 pixels, each side in [256, 16384].
        object_scale: multiplies every object's size range (training curricula use > 1 first).
        objects_per_kind: (min, max) objects per kind; default :data:`OBJECTS_PER_KIND`.

    Raises:
        ConfigError: a side is out of range or ``object_scale`` is not positive.
    """
    _check_size(size_wh)
    if not object_scale > 0:
        raise ConfigError(f"object_scale={object_scale} must be > 0")
    rng = np.random.default_rng([seed, 0x57_0D])
    width, height = size_wh
    land_cover = "urban" if rng.random() < 0.5 else "rural"
    grid_hw = (-(-height // PARCEL_PX), -(-width // PARCEL_PX))
    mix = np.asarray(PARCEL_MIX[land_cover])
    parcels = rng.choice(
        np.asarray([FIELDS, FOREST, URBAN_FABRIC], dtype=np.int8), size=grid_hw, p=mix
    ).astype(np.int8)
    tints = rng.integers(-18, 19, size=grid_hw).astype(np.int16)
    short = min(width, height)
    river: River | None = None
    if rng.random() < 0.8:
        vertical = bool(rng.random() < 0.5)
        across_len = width if vertical else height
        along_len = height if vertical else width
        half_width = float(np.clip(short * 0.025, 14, 160)) * float(rng.uniform(0.8, 1.3))
        river = River(
            vertical=vertical,
            offset_px=float(rng.uniform(0.3, 0.7) * across_len),
            amplitude_px=float(rng.uniform(0.02, 0.08) * across_len),
            period_px=float(rng.uniform(0.6, 1.5) * along_len),
            phase=float(rng.uniform(0, 2 * math.pi)),
            half_width_px=half_width,
        )
    n_roads = (1, 3) if land_cover == "rural" else (2, 5)
    roads_y = tuple(
        sorted(float(v) for v in rng.uniform(0.05, 0.95, rng.integers(*n_roads)) * height)
    )
    roads_x = tuple(
        sorted(float(v) for v in rng.uniform(0.05, 0.95, rng.integers(*n_roads)) * width)
    )
    scene = WorldScene(
        seed=seed,
        size_wh=(width, height),
        land_cover=land_cover,
        parcels=parcels,
        tints=tints,
        river=river,
        roads_y=roads_y,
        roads_x=roads_x,
        objects=(),
    )
    objects = _place_objects(scene, rng, object_scale, objects_per_kind or OBJECTS_PER_KIND)
    return replace(scene, objects=tuple(objects))


def _overlaps(box: tuple[float, float, float, float], placed: list[WorldObject]) -> bool:
    gap = PLACEMENT_GAP_PX
    for other in placed:
        ox0, oy0, ox1, oy1 = other.wake_hbox()
        if box[0] < ox1 + gap and ox0 < box[2] + gap and box[1] < oy1 + gap and oy0 < box[3] + gap:
            return True
    return False


def _inside(box: tuple[float, float, float, float], size_wh: tuple[int, int]) -> bool:
    return box[0] >= 1 and box[1] >= 1 and box[2] <= size_wh[0] - 1 and box[3] <= size_wh[1] - 1


def _place_objects(
    scene: WorldScene,
    rng: np.random.Generator,
    object_scale: float,
    per_kind: dict[str, tuple[int, int]],
) -> list[WorldObject]:
    width, height = scene.size_wh
    placed: list[WorldObject] = []
    # bridges first (they depend on the river), then large things, vehicles last
    for kind_name in ("bridge", "ship", "plane", "storage tank", "building", "vehicle"):
        low, high = per_kind.get(kind_name, (0, 0))
        count = int(rng.integers(low, high + 1))
        spec = KIND_BY_NAME[kind_name]
        for _ in range(count):
            for _try in range(PLACEMENT_TRIES):
                candidate = _candidate(scene, rng, kind_name, spec.length_px, object_scale)
                if candidate is None:
                    continue
                box = candidate.wake_hbox()
                if _inside(box, (width, height)) and not _overlaps(box, placed):
                    placed.append(candidate)
                    break
    return placed


def _candidate(
    scene: WorldScene,
    rng: np.random.Generator,
    kind: str,
    length_range: tuple[int, int],
    object_scale: float,
) -> WorldObject | None:
    width, height = scene.size_wh
    spec = KIND_BY_NAME[kind]
    color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    status = STATUSES[int(rng.integers(2))] if spec.has_status else ""
    length = float(rng.uniform(*length_range)) * object_scale
    width_px = length * spec.width_ratio
    river = scene.river
    if kind == "bridge":
        if river is None:
            return None
        along_len = height if river.vertical else width
        along = float(rng.uniform(0.1, 0.9) * along_len)
        centre_across = float(river.centre(np.asarray([along]))[0])
        flow = river.flow_angle_deg(along)
        length = (
            2
            * (river.half_width_px + BRIDGE_OVERHANG_PX)
            / max(abs(math.sin(math.radians(flow - (0 if river.vertical else 90)))), 0.5)
        )
        width_px = float(rng.uniform(*BRIDGE_WIDTH_PX))
        cx, cy = (centre_across, along) if river.vertical else (along, centre_across)
        if scene.background_name_at(cx, cy) != BACKGROUNDS[WATER].name:
            return None  # a road crosses here: draw again
        return WorldObject(
            kind=kind,
            color=color,
            status="",
            center_xy=(cx, cy),
            length_px=length,
            width_px=width_px,
            angle_deg=(0.0 if river.vertical else 90.0),
            background=BACKGROUNDS[WATER].name,
        )
    if kind == "ship":
        if river is None:
            return None
        along_len = height if river.vertical else width
        along = float(rng.uniform(0.05, 0.95) * along_len)
        room = max(river.half_width_px - width_px, 0.0) * 0.8
        across = float(river.centre(np.asarray([along]))[0] + rng.uniform(-room, room))
        angle = river.flow_angle_deg(along) + (180.0 if rng.random() < 0.5 else 0.0)
        length = min(length, 4 * river.half_width_px)
        cx, cy = (across, along) if river.vertical else (along, across)
        if scene.background_name_at(cx, cy) != BACKGROUNDS[WATER].name:
            return None
        return WorldObject(
            kind=kind,
            color=color,
            status=status,
            center_xy=(cx, cy),
            length_px=length,
            width_px=length * spec.width_ratio,
            angle_deg=angle,
            background=BACKGROUNDS[WATER].name,
        )
    if kind == "vehicle":
        roads = [("y", y) for y in scene.roads_y] + [("x", x) for x in scene.roads_x]
        if not roads:
            return None
        axis, line = roads[int(rng.integers(len(roads)))]
        lane = float(rng.choice([-1.0, 1.0])) * ROAD_WIDTH_PX / 4
        flip = 180.0 if rng.random() < 0.5 else 0.0
        if axis == "y":
            cx, cy, angle = float(rng.uniform(0, width)), line + lane, 0.0 + flip
        else:
            cx, cy, angle = line + lane, float(rng.uniform(0, height)), 90.0 + flip
        background = scene.background_name_at(cx, cy)
        return WorldObject(
            kind=kind,
            color=color,
            status=status,
            center_xy=(cx, cy),
            length_px=length,
            width_px=width_px,
            angle_deg=angle,
            background=background,
        )
    cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    angle = float(rng.uniform(0, 180)) if kind != "storage tank" else 0.0
    if kind == "building":
        angle = float(rng.choice([0.0, 90.0])) + float(rng.uniform(-10, 10))
    # the whole footprint must be on land (no water, no road)
    probe = WorldObject(
        kind=kind,
        color=color,
        status=status,
        center_xy=(cx, cy),
        length_px=length,
        width_px=width_px,
        angle_deg=angle,
        background="",
    )
    x0, y0, x1, y1 = probe.hbox
    xs = np.asarray([cx, x0, x1, x0, x1], dtype=np.float64)
    ys = np.asarray([cy, y0, y0, y1, y1], dtype=np.float64)
    labels = scene.background_at(np.clip(xs, 0, width - 1), np.clip(ys, 0, height - 1))
    if np.isin(labels, (WATER, ROADS)).any():
        return None  # not on land: the caller draws again
    return WorldObject(
        kind=kind,
        color=color,
        status=status,
        center_xy=(cx, cy),
        length_px=length,
        width_px=width_px,
        angle_deg=angle,
        background=BACKGROUNDS[int(labels[0])].name,
    )
