"""A cache of encoded tile features, so questions about one scene share the vision work.

A tile's projected vision tokens depend only on the scene, the tile's geometry (its level's resized
size and its grid index), the resampler, the model and its dtype, never on the question. The cache
keys on exactly these (:class:`FeatureKey`) and holds CPU tensors ``(tokens, D)`` in an in-memory
LRU bounded in bytes.

Optional persistence (``persist=True``): features of a scene are also written into its store folder
as one safetensors file per tile,
``STORE/features/<model key>/<view key>/<dip_level>_<row>_<col>.safetensors``, written to a
temporary name and renamed (atomic), never rewritten once present, and read back on a memory
miss. The model key
is the model id plus the dtype; the view key names the resampler, the tile size and the level's
resized size, so two pyramids that share a level geometry share its files. A store on a read-only
filesystem simply is not written to (logged at WARNING).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lrs_core.errors import ConfigError

log = logging.getLogger(__name__)

#: Default in-memory capacity of a :class:`FeatureCache`, bytes (512 MiB).
DEFAULT_CAPACITY_BYTES = 512 * 2**20
#: Folder inside a scene store that holds persisted features.
FEATURES_DIR = "features"
#: Name of the tensor inside each persisted file.
TENSOR_NAME = "tokens"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "_"


@dataclass(frozen=True)
class FeatureKey:
    """Identity of one tile's features.

    Attributes:
        scene_key: scene id plus the source checksum (or the store path when the store has none).
        model_key: model id and dtype, e.g. ``"tiny-llava@float32"``.
        view_key: resampler, tile size and the level's resized ``(h, w)``, e.g.
            ``"antialiased-336-1008x1008-pooled"``.
        dip_level: DIP level (0 = thumbnail); informational, the geometry is in ``view_key``.
        tile_rc: (row, col) in the level's tile grid.
    """

    scene_key: str
    model_key: str
    view_key: str
    dip_level: int
    tile_rc: tuple[int, int]

    def relative_path(self) -> Path:
        """Path of the persisted file below ``STORE/features``."""
        row, col = self.tile_rc
        return (
            Path(_safe_name(self.model_key))
            / _safe_name(self.view_key)
            / f"{self.dip_level}_{row}_{col}.safetensors"
        )


class FeatureCache:
    """In-memory LRU of tile features (CPU tensors), optionally persisted into scene stores.

    Not thread-safe: one engine (one thread) uses one cache.

    Attributes:
        capacity_bytes: the most bytes of tensors held in memory.
        persist: whether features are also written to / read from ``STORE/features``.
        hits: lookups answered from memory or disk.
        misses: lookups that found nothing (the caller encoded the tile).
    """

    def __init__(
        self, *, capacity_bytes: int = DEFAULT_CAPACITY_BYTES, persist: bool = False
    ) -> None:
        if (
            isinstance(capacity_bytes, bool)
            or not isinstance(capacity_bytes, int)
            or capacity_bytes < 0
        ):
            raise ConfigError(f"FeatureCache capacity_bytes={capacity_bytes!r} must be an int >= 0")
        self.capacity_bytes = capacity_bytes
        self.persist = persist
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[FeatureKey, torch.Tensor] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of tensors held in memory now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: FeatureKey, *, store: str | Path | None = None) -> torch.Tensor | None:
        """Return the cached CPU tensor ``(tokens, D)`` of a tile, or None (counted as a miss).

        Args:
            key: the tile's identity.
            store: the scene store folder, read when ``persist`` is on and memory misses.
        """
        tensor = self._entries.get(key)
        if tensor is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return tensor
        if self.persist and store is not None:
            path = Path(store) / FEATURES_DIR / key.relative_path()
            if path.is_file():
                tensor = load_file(str(path))[TENSOR_NAME]
                self._insert(key, tensor)
                self.hits += 1
                return tensor
        self.misses += 1
        return None

    def put(
        self, key: FeatureKey, tensor: torch.Tensor, *, store: str | Path | None = None
    ) -> None:
        """Store a tile's features (copied to CPU, detached).

        Args:
            key: the tile's identity.
            tensor: float (tokens, D) on any device.
            store: the scene store folder, written when ``persist`` is on (never rewritten).
        """
        cpu = tensor.detach().to("cpu").contiguous()
        self._insert(key, cpu)
        if self.persist and store is not None:
            self._write(Path(store) / FEATURES_DIR / key.relative_path(), cpu)

    def clear(self) -> None:
        """Drop every in-memory entry (persisted files stay; counters are kept)."""
        self._entries.clear()
        self._bytes = 0

    def _insert(self, key: FeatureKey, tensor: torch.Tensor) -> None:
        size = tensor.element_size() * tensor.numel()
        if size > self.capacity_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.element_size() * old.numel()
        self._entries[key] = tensor
        self._bytes += size
        while self._bytes > self.capacity_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.element_size() * evicted.numel()

    @staticmethod
    def _write(path: Path, tensor: torch.Tensor) -> None:
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(handle)
            try:
                save_file({TENSOR_NAME: tensor}, tmp_name)
                os.replace(tmp_name, path)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)
        except OSError as err:
            log.warning("%s: features not persisted (%s)", path, err)
