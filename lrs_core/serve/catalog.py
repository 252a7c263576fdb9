"""The scenes a server shows: every finished ``<scene_id>.zarr`` store under the stores folder.

Scenes are looked up by id in a dict built from the folder listing, never by joining a request
path onto the folder, so no request can reach a file outside it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from lrs_core.errors import GeoreferenceError, LrsError, SceneNotFoundError
from lrs_core.raster.pyramid import LRS_ATTR, Pyramid, open_pyramid, read_store_attributes

log = logging.getLogger(__name__)

#: Suffix of a scene store folder.
STORE_SUFFIX = ".zarr"


@dataclass(frozen=True, kw_only=True)
class SceneEntry:
    """One servable scene.

    Attributes:
        scene_id: the store name without ``.zarr``.
        store: the store folder.
        size_wh: level-0 (width, height) in pixels.
        bounds_lonlat: (west, south, east, north) in EPSG:4326, or None without georeference.
        is_tileable: True when the scene has a north-up CRS (Web-Mercator tiles can be cut).
    """

    scene_id: str
    store: Path
    size_wh: tuple[int, int]
    bounds_lonlat: tuple[float, float, float, float] | None
    is_tileable: bool


class SceneCatalog:
    """The finished stores directly under one folder, opened lazily and kept open.

    Args:
        stores_dir: the folder holding ``<scene_id>.zarr`` stores (``lrs ingest --out``).
    """

    def __init__(self, stores_dir: Path) -> None:
        self.stores_dir = stores_dir
        self._lock = threading.Lock()
        self._entries: dict[str, SceneEntry] = {}
        self._pyramids: dict[str, Pyramid] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder: add finished stores, drop vanished ones."""
        found: dict[str, SceneEntry] = {}
        for store in sorted(self.stores_dir.glob(f"*{STORE_SUFFIX}")):
            attributes = read_store_attributes(store)
            lrs = None if attributes is None else attributes.get(LRS_ATTR)
            if not isinstance(lrs, dict) or not lrs.get("complete", False):
                continue
            scene_id = str(lrs.get("scene_id", store.name[: -len(STORE_SUFFIX)]))
            with self._lock:
                known = self._entries.get(scene_id)
            if known is not None and known.store == store:
                found[scene_id] = known
                continue
            try:
                pyramid = open_pyramid(store)
                found[scene_id] = _entry(pyramid, store)
            except (LrsError, OSError, KeyError, ValueError) as err:
                log.warning("%s: skipped, cannot be served (%s)", store, err)
                continue
            with self._lock:
                self._pyramids[scene_id] = pyramid
        with self._lock:
            self._entries = found

    def entries(self) -> list[SceneEntry]:
        """Every servable scene, by id."""
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]

    def get(self, scene_id: str) -> SceneEntry:
        """The scene ``scene_id``.

        Raises:
            SceneNotFoundError: no such scene in the folder.
        """
        with self._lock:
            entry = self._entries.get(scene_id)
        if entry is None:
            raise SceneNotFoundError(
                f"scene {scene_id!r} is not in {self.stores_dir}; ingest it there with "
                f"'lrs ingest SCENE --out {self.stores_dir}'"
            )
        return entry

    def pyramid(self, scene_id: str) -> Pyramid:
        """The open pyramid of ``scene_id`` (see :meth:`get` for errors)."""
        entry = self.get(scene_id)
        with self._lock:
            pyramid = self._pyramids.get(scene_id)
        if pyramid is None:
            pyramid = open_pyramid(entry.store)
            with self._lock:
                self._pyramids[scene_id] = pyramid
        return pyramid


def _entry(pyramid: Pyramid, store: Path) -> SceneEntry:
    """The catalogue entry of an open pyramid (EPSG:4326 bounds of its whole footprint)."""
    from lrs_core.raster.pyramid import is_north_up

    width, height = pyramid.size_wh
    bounds: tuple[float, float, float, float] | None = None
    try:
        polygon = pyramid.footprint_lonlat((0.0, 0.0, float(width), float(height)))
    except GeoreferenceError as err:
        log.warning("%s: no EPSG:4326 bounds (%s)", store, err)
        polygon = None
    if polygon is not None:
        west, south, east, north = (float(v) for v in polygon.bounds)
        bounds = (west, south, east, north)
    tileable = pyramid.transform is not None and is_north_up(pyramid.transform)
    return SceneEntry(
        scene_id=pyramid.scene_id,
        store=store,
        size_wh=pyramid.size_wh,
        bounds_lonlat=bounds,
        is_tileable=tileable and bounds is not None,
    )
