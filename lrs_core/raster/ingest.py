"""Ingest raster scenes into Zarr multiscale stores: streamed, resumable, one store per scene.

How a scene is written (see ``docs/pyramid.md``):

1. The source header is inspected (:func:`lrs_core.raster.scene.inspect_scene`), the stretch is
   derived from a coarse overview, and an empty, *incomplete* store with all metadata is created.
2. Pass 0 splits level 0 into square blocks of ``IngestConfig.block_px`` pixels. One task per block
   reads the block from the source once, writes it as level 0 and reduces it in memory to the next
   ``levels_per_pass`` levels (2x2 nodata-aware integer mean), writing each. Blocks are aligned to
   whole shards (or chunks) of every level they write, so tasks never write the same chunk.
3. Pass ``p > 0`` does the same from the last level of pass ``p - 1`` (already 1/64 of the pixels
   with the defaults), until the coarsest level.
4. Each finished block leaves a marker in ``_lrs_progress/``; a rerun skips marked blocks, so a
   killed ingest resumes. ``lrs.complete`` is set last, then the markers are removed.

Tasks run on dask: the local threaded scheduler by default, or a ``dask.distributed`` scheduler
when an address is given. Memory is bounded by ``block_px`` and the number of workers, never by
the scene size.

Checksum: blake2b (128-bit) of the whole source file, streamed in 8 MiB pieces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
import zarr
from rasterio.windows import Window
from shapely.geometry import Polygon

from lrs_core.errors import (
    ConfigError,
    GeoreferenceError,
    LrsError,
    LrsWarning,
    NoLonLatFootprintWarning,
    NotGeoreferencedWarning,
    OutputNotWritableError,
    SceneNotFoundError,
    SceneReadError,
    StoreConflictError,
    StoreIntegrityError,
)
from lrs_core.fsio import write_bytes_atomic
from lrs_core.locks import exclusive_writer
from lrs_core.raster.integrity import (
    Region,
    digests_attribute,
    region_digest,
    write_region_digests,
)
from lrs_core.raster.pyramid import (
    DIGESTS_ATTR,
    LRS_ATTR,
    MULTISCALES_CONVENTION,
    PROGRESS_DIR,
    PROJ_CONVENTION,
    SPATIAL_CONVENTION,
    STORE_FORMAT_VERSION,
    StoreArraysSpec,
    create_store,
    level_shapes_hw,
    level_transform,
    mark_complete,
    multiscales_attributes,
    read_store_attributes,
    reduce_2x2,
    rgb_path,
    update_lrs_attributes,
    valid_path,
    write_region,
)
from lrs_core.raster.scene import (
    SceneInfo,
    Stretch,
    compute_stretch,
    footprint_polygon,
    inspect_scene,
    open_raster,
    polygon_to_lonlat,
    read_rgb_window,
    symlink_problem,
)

log = logging.getLogger(__name__)

#: Bytes read per step when hashing a source file.
CHECKSUM_PIECE_BYTES = 8 * 1024 * 1024
#: Bytes per MB. rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64, i.e. bytes.
BYTES_PER_MB = 1024 * 1024
#: Rows read from the source per request. A whole 4096 px block read band by band overflows a
#: 64 MB GDAL cache and decodes each pixel-interleaved tile up to 3 times (measured 2-3x slower).
READ_STRIP_PX = 512
#: Digest size of the blake2b source checksum, in bytes.
CHECKSUM_DIGEST_BYTES = 16
#: File suffixes :func:`expand_sources` treats as rasters inside a folder.
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt"})
#: Suffix of the STAC item written beside each store.
STAC_SUFFIX = ".stac.json"

#: GDAL drivers that decode rows sequentially from the top (no tiles, no strip index).
SEQUENTIAL_DRIVERS = frozenset({"PNG", "JPEG", "GIF"})

IngestStatus = Literal["ingested", "skipped", "failed"]


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """How scenes are turned into stores.

    Attributes:
        chunk_px: side of a square Zarr chunk (random 336 px windows touch at most 4 chunks).
        shard_px: side of a square shard (a multiple of ``chunk_px``), or None for unsharded.
        levels_per_pass: levels reduced in memory from one read (block side = write unit * 2**this).
        min_long_side_px: the coarsest level is the first whose long side is at most this.
        stretch_low_pct: lower percentile of the uint8 stretch of non-uint8 scenes.
        stretch_high_pct: upper percentile of that stretch.
        stretch_sample_long_side_px: long side of the coarse overview the percentiles come from.
        bands: 1-based source bands to map to RGB (1 for grey or 3), or None for the default.
        compressor: ``"zstd"`` (zarr's zstd codec), ``"lz4"`` (Blosc) or ``"none"``.
        compression_level: compression level 1..9.
        gdal_cache_mb: GDAL block cache per process, in MB.
        gdal_decode_threads: threads GDAL decodes the tiles of one read with
            (``GDAL_NUM_THREADS``; 1: in the calling thread).
        n_workers: local dask threads (1 runs synchronously, in the calling thread).
        max_scene_pixels: headers claiming more pixels than this are rejected as corrupt.
    """

    chunk_px: int = 512
    shard_px: int | None = None
    levels_per_pass: int = 3
    min_long_side_px: int = 336
    stretch_low_pct: float = 2.0
    stretch_high_pct: float = 98.0
    stretch_sample_long_side_px: int = 1024
    bands: tuple[int, ...] | None = None
    compressor: Literal["zstd", "lz4", "none"] = "lz4"  # measured: docs/pyramid.md
    compression_level: int = 3
    gdal_cache_mb: int = 64
    gdal_decode_threads: int = 2
    n_workers: int = 2
    max_scene_pixels: int = 1 << 34

    def __post_init__(self) -> None:
        if not 16 <= self.chunk_px <= 8192:
            raise ConfigError(f"chunk_px={self.chunk_px} is outside [16, 8192]")
        if self.shard_px is not None and (
            self.shard_px < self.chunk_px or self.shard_px % self.chunk_px
        ):
            raise ConfigError(
                f"shard_px={self.shard_px} must be a multiple of chunk_px={self.chunk_px} (or None)"
            )
        if not 1 <= self.levels_per_pass <= 6:
            raise ConfigError(f"levels_per_pass={self.levels_per_pass} is outside [1, 6]")
        if self.min_long_side_px < 1:
            raise ConfigError(f"min_long_side_px={self.min_long_side_px} must be >= 1")
        if not 0.0 <= self.stretch_low_pct < self.stretch_high_pct <= 100.0:
            raise ConfigError(
                f"stretch percentiles ({self.stretch_low_pct}, {self.stretch_high_pct}) must "
                "satisfy 0 <= low < high <= 100"
            )
        if self.stretch_sample_long_side_px < 16:
            raise ConfigError(
                f"stretch_sample_long_side_px={self.stretch_sample_long_side_px} must be >= 16"
            )
        if self.bands is not None and (
            len(self.bands) not in (1, 3) or any(b < 1 for b in self.bands)
        ):
            raise ConfigError(f"bands={self.bands} must be 1 or 3 band numbers counted from 1")
        if self.compressor not in ("zstd", "lz4", "none"):
            raise ConfigError(f"compressor={self.compressor!r} is not one of zstd, lz4, none")
        if not 1 <= self.compression_level <= 9:
            raise ConfigError(f"compression_level={self.compression_level} is outside [1, 9]")
        if self.gdal_cache_mb < 1:
            raise ConfigError(f"gdal_cache_mb={self.gdal_cache_mb} must be >= 1")
        if self.gdal_decode_threads < 1:
            raise ConfigError(f"gdal_decode_threads={self.gdal_decode_threads} must be >= 1")
        if self.n_workers < 1:
            raise ConfigError(f"n_workers={self.n_workers} must be >= 1")
        if self.max_scene_pixels < 1:
            raise ConfigError(f"max_scene_pixels={self.max_scene_pixels} must be >= 1")

    @property
    def write_unit_px(self) -> int:
        """Side of the smallest independently writable square (a shard, else a chunk)."""
        return self.shard_px if self.shard_px is not None else self.chunk_px

    @property
    def block_px(self) -> int:
        """Side of one task's block, in pixels of the pass's base level."""
        return int(self.write_unit_px * 2**self.levels_per_pass)

    def arrays_spec(self) -> StoreArraysSpec:
        """Chunking and compression of the store's arrays."""
        return StoreArraysSpec(
            chunk_px=self.chunk_px,
            shard_px=self.shard_px,
            compressor=self.compressor,
            compression_level=self.compression_level,
        )

    def store_layout(self) -> dict[str, Any]:
        """The fields that fix a store's layout (a resume must use the same ones)."""
        return {
            "chunk_px": self.chunk_px,
            "shard_px": self.shard_px,
            "levels_per_pass": self.levels_per_pass,
            "min_long_side_px": self.min_long_side_px,
            "stretch_low_pct": self.stretch_low_pct,
            "stretch_high_pct": self.stretch_high_pct,
            "stretch_sample_long_side_px": self.stretch_sample_long_side_px,
            "bands": None if self.bands is None else list(self.bands),
            "compressor": self.compressor,
            "compression_level": self.compression_level,
        }


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """What happened to one source.

    Attributes:
        scene_id: the scene id (store name without ``.zarr``).
        source: the source path as given.
        store: path of the store; None when the scene failed before a store was made.
        status: ``ingested``, ``skipped`` (same checksum already complete) or ``failed``.
        error: one-line reason when failed.
        level_shapes: (height, width) per store level, level 0 first.
        stac_item: path of the STAC item JSON, when written.
        warnings: messages of the warnings the ingest issued (georeference), one line each.
    """

    scene_id: str
    source: str
    store: str | None
    status: IngestStatus
    error: str | None = None
    level_shapes: tuple[tuple[int, int], ...] = ()
    stac_item: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (level shapes as lists)."""
        data = asdict(self)
        data["level_shapes"] = [list(s) for s in self.level_shapes]
        data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True, kw_only=True)
class BlockTask:
    """One unit of work: a block of a pass's base level, written to the next levels.

    Attributes:
        store: the store folder.
        source: the source raster (read when ``base_level`` is 0).
        base_level: store level the block is read from (0: the source).
        block_rc: (row, col) of the block in the pass's block grid.
        window: the block, in pixels of ``base_level``.
        top_level: last store level this block writes.
        info: the source's :class:`SceneInfo`.
        stretch: the scene's stretch.
        level_shapes: (height, width) of every store level.
        arrays: the store's chunking and compression.
        gdal_cache_mb: GDAL cache for reading the source.
        gdal_decode_threads: GDAL_NUM_THREADS for reading the source.
    """

    store: Path
    source: Path
    base_level: int
    block_rc: tuple[int, int]
    window: Window
    top_level: int
    info: SceneInfo
    stretch: Stretch
    level_shapes: tuple[tuple[int, int], ...]
    arrays: StoreArraysSpec
    gdal_cache_mb: int = field(default=64)
    gdal_decode_threads: int = field(default=1)

    @property
    def marker(self) -> Path:
        """Resume marker written when the block is done."""
        row, col = self.block_rc
        return self.store / PROGRESS_DIR / f"pass{self.base_level}-r{row}-c{col}"


@dataclass(frozen=True, kw_only=True)
class BlockMarker:
    """What a finished block leaves in ``_lrs_progress/`` (JSON).

    Attributes:
        n_valid: valid level-0 pixels of the block (pass 0; 0 for later passes).
        regions: ``(store_level, region)`` for every region the block wrote, with its digests
            (:func:`lrs_core.raster.integrity.region_digest`).
    """

    n_valid: int
    regions: tuple[tuple[int, Region], ...]


def read_marker(path: Path, *, warn: bool = True) -> BlockMarker | None:
    """Return a block's resume marker, or None when it is absent.

    A zero-byte, unreadable or malformed marker (a crash while it was written, a damaged disk,
    an lrs from before markers carried digests) counts as absent: the block is simply done
    again. ``warn`` logs a warning for such a marker.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        if warn:
            log.warning("%s: unreadable resume marker (%s); redoing its block", path, err)
        return None
    try:
        data = json.loads(text)
        return BlockMarker(
            n_valid=int(data["n_valid"]),
            regions=tuple((int(level), list(region)) for level, region in data["regions"]),
        )
    except (ValueError, KeyError, TypeError):
        if warn:
            log.warning("%s: damaged resume marker %r; redoing its block", path, text[:20])
        return None


def write_marker(path: Path, marker: BlockMarker) -> None:
    """Write a block's resume marker durably (temp file, fsync, rename, fsync of the folder)."""
    document = {"n_valid": marker.n_valid, "regions": [list(r) for r in marker.regions]}
    write_bytes_atomic(path, json.dumps(document).encode(), durable=True)


def file_checksum(path: Path) -> str:
    """Return ``blake2b-128:<hex>`` of a file's bytes, streamed in 8 MiB pieces."""
    digest = hashlib.blake2b(digest_size=CHECKSUM_DIGEST_BYTES)
    with open(path, "rb") as handle:
        while piece := handle.read(CHECKSUM_PIECE_BYTES):
            digest.update(piece)
    return f"blake2b-128:{digest.hexdigest()}"


#: Called with ``(first_row, rgb_rows, valid_rows)``: block rows read and ready to write.
RowsReady = Callable[[int, np.ndarray, np.ndarray], None]


def _read_in_strips(
    dataset: rasterio.io.DatasetReader,
    task: BlockTask,
    window: Window,
    *,
    on_rows: RowsReady | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a level-0 window strip by strip (see READ_STRIP_PX) into one RGB block and mask.

    ``on_rows`` is called each time a whole number of write units (shard or chunk rows) has been
    read, and once for the rest, so the caller can encode those rows while the next strips decode.
    """
    height, width = int(window.height), int(window.width)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    valid = np.empty((height, width), dtype=bool)
    unit = task.arrays.shard_px if task.arrays.shard_px is not None else task.arrays.chunk_px
    flushed = 0
    for top in range(0, height, READ_STRIP_PX):
        rows = min(READ_STRIP_PX, height - top)
        strip = Window(window.col_off, window.row_off + top, width, rows)
        read_rgb_window(
            dataset,
            task.info,
            task.stretch,
            strip,
            out=(rgb[top : top + rows], valid[top : top + rows]),
        )
        ready = height if top + rows == height else (top + rows) // unit * unit
        if on_rows is not None and ready > flushed:
            on_rows(flushed, rgb[flushed:ready], valid[flushed:ready])
            flushed = ready
    return rgb, valid


def _read_base_block(
    task: BlockTask, *, on_rows: RowsReady | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a block of the pass's base level: from the source (pass 0) or from the store.

    ``on_rows`` (pass 0 only): as in :func:`_read_in_strips`.
    """
    window = task.window
    if task.base_level == 0:
        with (
            rasterio.Env(
                GDAL_CACHEMAX=task.gdal_cache_mb * BYTES_PER_MB,
                # Tiles of one strip decode in parallel (GDAL >= 3.6): measured 1.23 s ->
                # 0.66-0.95 s wall for the strips of an 8192^2 deflate GeoTIFF (loaded 2 cores).
                GDAL_NUM_THREADS=str(task.gdal_decode_threads),
            ),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            try:
                with open_raster(task.source) as dataset:
                    return _read_in_strips(dataset, task, window, on_rows=on_rows)
            except rasterio.errors.RasterioError as err:
                detail = " ".join(str(err).split())
                raise SceneReadError(
                    f"{task.source}: cannot decode pixels {window} (truncated or corrupt: {detail})"
                ) from err
    rows = slice(window.row_off, window.row_off + window.height)
    cols = slice(window.col_off, window.col_off + window.width)
    rgb_array = zarr.open_array(str(task.store), path=rgb_path(task.base_level), mode="r")
    valid_array = zarr.open_array(str(task.store), path=valid_path(task.base_level), mode="r")
    return np.asarray(rgb_array[rows, cols, :]), np.asarray(valid_array[rows, cols])


def run_block(task: BlockTask) -> int:
    """Process one block: read it, write it and its reductions, then leave its resume marker.

    Writes (encode + file I/O, which release the GIL) run behind on one writer thread: level-0
    rows are written while the next strips of the source decode, each reduced level while the
    next one is computed. Every write has finished (or raised) before the marker is written.

    Returns:
        Number of valid level-0 pixels in the block for pass 0 (0 for later passes).
    """
    if read_marker(task.marker, warn=False) is not None:
        return -1
    block_row0, block_col0 = int(task.window.row_off), int(task.window.col_off)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrs-write") as writer:
        writes: list[Future[Any]] = []
        digests: list[Future[tuple[int, Region]]] = []

        def digest(
            store_level: int, top: int, left: int, rgb: np.ndarray, valid: np.ndarray
        ) -> tuple[int, Region]:
            return store_level, region_digest(top, left, rgb, valid)

        def write(
            store_level: int, top: int, left: int, rgb: np.ndarray, valid: np.ndarray
        ) -> None:
            # The digest of exactly the pixels written, taken in memory (no read-back).
            digests.append(writer.submit(digest, store_level, top, left, rgb, valid))
            for array_path, data in (
                (rgb_path(store_level), rgb),
                (valid_path(store_level), valid),
            ):
                writes.append(
                    writer.submit(
                        write_region,
                        task.store,
                        array_path,
                        data,
                        origin_rc=(top, left),
                        level_shape_hw=task.level_shapes[store_level],
                        arrays=task.arrays,
                    )
                )

        def level0_rows(first: int, rgb_rows: np.ndarray, valid_rows: np.ndarray) -> None:
            write(0, block_row0 + first, block_col0, rgb_rows, valid_rows)

        rgb, valid = _read_base_block(task, on_rows=level0_rows)
        n_valid = int(np.count_nonzero(valid)) if task.base_level == 0 else 0
        row0, col0 = block_row0, block_col0
        for store_level in range(task.base_level + 1, task.top_level + 1):
            rgb, valid = reduce_2x2(rgb, valid)
            row0, col0 = row0 // 2, col0 // 2
            write(store_level, row0, col0, rgb, valid)
        for future in writes:
            future.result()
        regions = tuple(future.result() for future in digests)
    write_marker(task.marker, BlockMarker(n_valid=n_valid, regions=regions))
    return n_valid


def _marker(task: BlockTask) -> BlockMarker:
    """The marker of a block that has just run (it must be there and readable)."""
    marker = read_marker(task.marker)
    if marker is None:
        raise StoreIntegrityError(
            f"{task.marker}: block marker missing or unreadable right after its block ran; "
            "check the disk and re-run the ingest"
        )
    return marker


def is_sequential(info: SceneInfo) -> bool:
    """True for formats without random row access (PNG, JPEG, GIF): opens decode from row 0."""
    return info.driver in SEQUENTIAL_DRIVERS


def plan_passes(
    *,
    store: Path,
    info: SceneInfo,
    stretch: Stretch,
    level_shapes: Sequence[tuple[int, int]],
    config: IngestConfig,
) -> list[list[BlockTask]]:
    """Split the ingest into passes of independent block tasks (pass ``p`` needs pass ``p - 1``)."""
    passes: list[list[BlockTask]] = []
    last_level = len(level_shapes) - 1
    base_level = 0
    while True:
        top_level = min(base_level + config.levels_per_pass, last_level)
        height, width = level_shapes[base_level]
        block = config.block_px
        # Sequential formats decode from the first row on every open: read whole-width bands.
        block_w = width if base_level == 0 and is_sequential(info) else block
        tasks = [
            BlockTask(
                store=store,
                source=info.path,
                base_level=base_level,
                block_rc=(row // block, col // block_w),
                window=Window(col, row, min(block_w, width - col), min(block, height - row)),
                top_level=top_level,
                info=info,
                stretch=stretch,
                level_shapes=tuple(level_shapes),
                arrays=config.arrays_spec(),
                gdal_cache_mb=config.gdal_cache_mb,
                gdal_decode_threads=config.gdal_decode_threads,
            )
            for row in range(0, height, block)
            for col in range(0, width, block_w)
        ]
        passes.append(tasks)
        if top_level == last_level:
            return passes
        base_level = top_level


def _run_tasks(
    tasks: Sequence[BlockTask],
    *,
    config: IngestConfig,
    dask_address: str | None,
    on_done: Callable[[], None],
) -> list[int]:
    """Run block tasks on dask (local threads or a distributed scheduler); return their results."""
    pending = [t for t in tasks if read_marker(t.marker) is None]
    for _ in range(len(tasks) - len(pending)):
        on_done()
    if not pending:
        return []
    if dask_address is not None:
        from distributed import Client

        # dask and distributed ship no type hints: hence the untyped-call ignores below.
        with Client(dask_address, set_as_default=False) as client:  # type: ignore[no-untyped-call]
            futures = [client.submit(run_block, t, pure=False) for t in pending]
            results = []
            # In submission order: progress may lag a little behind the workers, never lead them.
            for future in futures:
                results.append(int(future.result()))
                on_done()
            return results
    from dask.base import compute
    from dask.callbacks import Callback
    from dask.delayed import delayed

    block_tasks = [delayed(run_block, pure=False)(t) for t in pending]
    keys = {d.key for d in block_tasks}

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in keys:
            on_done()

    scheduler = "synchronous" if config.n_workers == 1 else "threads"
    with Callback(posttask=posttask):  # type: ignore[no-untyped-call]
        computed = compute(  # type: ignore[no-untyped-call]
            *block_tasks, scheduler=scheduler, num_workers=config.n_workers
        )
    return [int(r) for r in computed]


def _root_attributes(
    *,
    scene_id: str,
    info: SceneInfo,
    stretch: Stretch,
    checksum: str | None,
    level_shapes: Sequence[tuple[int, int]],
    config: IngestConfig,
    lonlat_footprint: bool,
) -> dict[str, Any]:
    """Root attributes of a new (incomplete) store: GeoZarr conventions and lrs metadata."""
    conventions = [MULTISCALES_CONVENTION, SPATIAL_CONVENTION]
    attributes: dict[str, Any] = {
        "zarr_conventions": conventions,
        "multiscales": multiscales_attributes(level_shapes=level_shapes, transform=info.transform),
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": list(level_shapes[0]),
        "spatial:transform": list(info.transform)[:6],
        "spatial:registration": "pixel",
    }
    if info.is_georeferenced:
        conventions.insert(1, PROJ_CONVENTION)
        attributes["proj:wkt2"] = info.crs_wkt
        attributes["proj:code"] = None if info.epsg is None else f"EPSG:{info.epsg}"
    attributes[LRS_ATTR] = {
        "format_version": STORE_FORMAT_VERSION,
        "complete": False,
        "scene_id": scene_id,
        "size_wh": list(info.size_wh),
        "layout": "(y, x, band) uint8 RGB per level in <level>/rgb; bool (y, x) in <level>/valid",
        "source": str(info.path.resolve()),
        "checksum": checksum,
        "georeference": info.georeference,
        "georeference_note": info.georeference_note,
        "lonlat_footprint": lonlat_footprint,
        "source_driver": info.driver,
        "source_dtype": info.dtype,
        "source_band_count": info.band_count,
        "band_map": list(info.band_map),
        "alpha_band": info.alpha_band,
        "nodata": info.nodata,
        "stretch": stretch.to_dict(),
        "config": config.store_layout(),
        "started": datetime.now(UTC).isoformat(),
    }
    return attributes


def lonlat_footprint(info: SceneInfo) -> Polygon | None:
    """The scene's EPSG:4326 footprint, or None when it has none (checked before any pixel pass).

    Warns:
        NoLonLatFootprintWarning: georeferenced, but the footprint does not reproject to
            EPSG:4326 (a geostationary full disk reaching past the Earth's limb, a CRS pyproj
            cannot transform). The store keeps its CRS and transform; lon/lat fields are null.
    """
    if not info.is_georeferenced or info.crs_wkt is None:
        return None
    width, height = info.size_wh
    footprint = footprint_polygon(info.transform, (0.0, 0.0, float(width), float(height)))
    try:
        return polygon_to_lonlat(footprint, info.crs_wkt)
    except GeoreferenceError as err:
        warnings.warn(
            f"{info.path}: its footprint has no EPSG:4326 form ({err}); the store keeps its "
            "CRS and transform, with null lon/lat bbox and geometry",
            NoLonLatFootprintWarning,
            stacklevel=3,
        )
        return None


def write_stac_item(
    *,
    path: Path,
    scene_id: str,
    store: Path,
    info: SceneInfo,
    checksum: str,
    lonlat: Polygon | None,
) -> Path:
    """Write a STAC item (projection extension; EPSG:4326 bbox/geometry when there is one).

    The file is replaced atomically (temporary file and rename), so a symlink planted at
    ``path`` is replaced, never written through.

    Args:
        path: the ``<scene_id>.stac.json`` file.
        scene_id: the item id.
        store: the store it describes.
        info: the source's :class:`SceneInfo`.
        checksum: the source checksum.
        lonlat: the EPSG:4326 footprint (:func:`lonlat_footprint`), or None.

    Returns:
        The path written.
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    width, height = info.size_wh
    geometry: dict[str, Any] | None = None
    bbox: list[float] | None = None
    if lonlat is not None:
        geometry = lonlat.__geo_interface__
        bbox = list(lonlat.bounds)
    acquired = datetime.fromtimestamp(info.path.stat().st_mtime, tz=UTC)
    item = pystac.Item(
        id=scene_id,
        geometry=geometry,
        bbox=bbox,
        datetime=acquired,
        properties={
            "lrs:checksum": checksum,
            "lrs:datetime_source": "file modification time",
            "lrs:georeference": info.georeference,
        },
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.apply(
        epsg=info.epsg if info.is_georeferenced else None,
        wkt2=info.crs_wkt,
        shape=[height, width],
        transform=list(info.transform)[:6] if info.is_georeferenced else None,
    )
    item.add_asset(
        "pyramid",
        pystac.Asset(
            href=f"./{store.name}",
            media_type="application/vnd+zarr",
            roles=["data"],
            title="RGB uint8 multiscale pyramid (Zarr v3, GeoZarr conventions)",
        ),
    )
    item.add_asset(
        "source",
        pystac.Asset(href=str(info.path.resolve()), roles=["source"], title="ingested raster"),
    )
    document = item.to_dict(include_self_link=False, transform_hrefs=False)
    write_bytes_atomic(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def _existing_state(
    store: Path, checksum: str | None, config: IngestConfig, *, overwrite: bool, source: str
) -> Literal["new", "resume", "complete"]:
    """Decide what to do with whatever is already at ``store``.

    ``checksum`` may be None only when the answer cannot depend on it (no store, or
    ``overwrite``). ``source`` is the path as recorded in ``lrs.source``.
    """
    if not store.exists():
        return "new"
    attributes = read_store_attributes(store)
    lrs = None if attributes is None else attributes.get(LRS_ATTR)
    if overwrite:
        if store.is_dir():
            shutil.rmtree(store)
        else:
            store.unlink()
        return "new"
    if not store.is_dir():
        raise StoreConflictError(
            f"{store}: exists and is not a folder; remove it or pass --overwrite"
        )
    if not isinstance(lrs, dict):
        if attributes is None and not any(store.iterdir()):
            return "new"
        raise StoreConflictError(
            f"{store}: exists but is not an lrs store; remove it or pass --overwrite"
        )
    recorded = lrs.get("source")
    same_path = isinstance(recorded, str) and Path(recorded).resolve() == Path(source).resolve()
    if lrs.get("checksum") is None and not lrs.get("complete") and same_path:
        # An ingest of this path killed before its checksum pass finished (see ingest_scene):
        # nothing in it can be verified, so it starts over.
        log.info("%s: unfinished and unverified (no checksum recorded); starting over", store)
        shutil.rmtree(store)
        return "new"
    if lrs.get("checksum") != checksum:
        raise StoreConflictError(
            f"{store}: holds {lrs.get('source')} ({lrs.get('checksum')}), not this source "
            f"({checksum}); pick another --id or pass --overwrite"
        )
    if lrs.get("complete"):
        if lrs.get(DIGESTS_ATTR) is None:
            # Written before stores carried their own digests: it cannot be verified, and
            # open_pyramid refuses it, so the same source rewrites it.
            log.info("%s: complete but without content digests; ingesting it again", store)
            shutil.rmtree(store)
            return "new"
        return "complete"
    if lrs.get("config") != config.store_layout():
        raise StoreConflictError(
            f"{store}: an unfinished ingest used another layout {lrs.get('config')}; "
            "rerun with the same settings or pass --overwrite"
        )
    return "resume"


def _record_checksum(store: Path, hashing: Future[str]) -> str:
    """Wait for the source checksum and record it as ``lrs.checksum`` of the store; return it."""
    checksum = hashing.result()
    update_lrs_attributes(store, {"checksum": checksum})
    return checksum


def ingest_scene(
    source: str | Path,
    out_dir: str | Path,
    *,
    scene_id: str | None = None,
    config: IngestConfig = IngestConfig(),  # noqa: B008 -- frozen, immutable default
    overwrite: bool = False,
    dask_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    wait: bool = False,
) -> IngestResult:
    """Ingest one raster into ``out_dir/<scene_id>.zarr`` and a STAC item beside it.

    The whole ingest of a store (``--overwrite`` deletes included) holds the store's writer lock
    (:func:`lrs_core.locks.exclusive_writer`, ``<scene_id>.zarr.lock`` beside it). The last
    steps record a content digest per level, then ``lrs.complete`` (fsynced).

    Args:
        source: a GeoTIFF/COG/PNG/JPEG/TIFF file.
        out_dir: folder of stores (created if missing).
        scene_id: store name; defaults to the file stem.
        config: layout, stretch and resource settings.
        overwrite: replace a store that holds another source (or any store) under this id.
        dask_address: ``tcp://host:port`` of a dask.distributed scheduler; None: local threads.
        progress: called with (blocks done, blocks total) as blocks finish.
        wait: when another process writes this store, wait for it instead of failing.

    Returns:
        ``status="ingested"``, or ``"skipped"`` when the same source is already complete.

    Raises:
        SceneNotFoundError: the source is missing.
        SceneReadError: the source is corrupt, not a raster, absurdly sized or all nodata.
        StoreConflictError: the store holds another source and ``overwrite`` is False, or the
            store path is a symlink.
        OutputNotWritableError: ``out_dir`` is a file or cannot be written.
        WriterLockedError: another process writes this store (and ``wait`` is False).

    Warns:
        NotGeoreferencedWarning: the source has no CRS, or a CRS without a geotransform
            (pixel coordinates only).
        NoLonLatFootprintWarning: the footprint does not reproject to EPSG:4326.
    """
    source = Path(source)
    out_dir = Path(out_dir)
    scene_id = scene_id or source.stem
    store = out_dir / f"{scene_id}.zarr"
    info = inspect_scene(source, bands=config.bands, max_pixels=config.max_scene_pixels)
    issued: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LrsWarning)
        if not info.is_georeferenced:
            warnings.warn(
                f"{source}: not georeferenced ({info.georeference_note}); the store uses pixel "
                "coordinates and null geographic fields",
                NotGeoreferencedWarning,
                stacklevel=2,
            )
        elif info.georeference == "gcps":
            log.info("%s: georeference is an %s", source, info.georeference_note)
        # Before any pixel is written: a footprint without an EPSG:4326 form is known now.
        lonlat = lonlat_footprint(info)
    for caught_warning in caught:
        if issubclass(caught_warning.category, LrsWarning):
            issued.append(str(caught_warning.message))
        warnings.warn_explicit(
            caught_warning.message,
            caught_warning.category,
            caught_warning.filename,
            caught_warning.lineno,
        )
    prepare_out_dir(out_dir)
    if store.is_symlink():
        raise StoreConflictError(
            f"{store}: is a symlink (to {os.readlink(store)}); ingest never writes through a "
            "link, with or without --overwrite: remove the link or pick another --out"
        )
    with exclusive_writer(store, purpose=f"ingest {source}", wait=wait):
        result = _ingest_locked(
            source,
            info,
            store,
            scene_id=scene_id,
            lonlat=lonlat,
            config=config,
            overwrite=overwrite,
            dask_address=dask_address,
            progress=progress,
        )
    return replace(result, warnings=tuple(issued))


def prepare_out_dir(out_dir: Path) -> None:
    """Create the folder of stores, or say in one line why it cannot be written.

    Raises:
        OutputNotWritableError: ``out_dir`` is a file, cannot be created, or is not writable.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputNotWritableError(
            f"{out_dir}: --out is an existing file, not a folder; pick a folder path"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputNotWritableError(
            f"{out_dir}: cannot create the output folder ({err.strerror or err}); "
            "pick a writable --out"
        ) from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputNotWritableError(
            f"{out_dir}: the output folder is not writable; pick a writable --out or fix its "
            "permissions"
        )


def _ingest_locked(
    source: Path,
    info: SceneInfo,
    store: Path,
    *,
    scene_id: str,
    lonlat: Polygon | None,
    config: IngestConfig,
    overwrite: bool,
    dask_address: str | None,
    progress: Callable[[int, int], None] | None,
) -> IngestResult:
    """The body of :func:`ingest_scene`, run while holding the store's writer lock."""
    out_dir = store.parent
    stac_path = out_dir / f"{scene_id}{STAC_SUFFIX}"
    level_shapes = level_shapes_hw(info.size_hw, min_long_side_px=config.min_long_side_px)
    # The blake2b pass over the source (~0.5 s for 167 MB; hashlib releases the GIL) overlaps
    # pass 0 when the store is new whatever the checksum: absent, or replaced (--overwrite).
    # The checksum is recorded in the root as soon as it is known; until then the store says
    # ``lrs.checksum = null`` and a rerun of the same path starts it over (_existing_state).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrs-checksum") as hasher:
        hashing = hasher.submit(file_checksum, source)
        fresh = overwrite or not store.exists()
        checksum = None if fresh else hashing.result()
        state = _existing_state(
            store, checksum, config, overwrite=overwrite, source=str(info.path.resolve())
        )
        if state == "complete":
            log.info("%s: already ingested from the same source (%s); skipped", store, checksum)
            attributes = read_store_attributes(store) or {}
            layout = attributes.get("multiscales", {}).get("layout", [])
            level_shapes = tuple(
                (int(e["spatial:shape"][0]), int(e["spatial:shape"][1])) for e in layout
            )
            return IngestResult(
                scene_id=scene_id,
                source=str(source),
                store=str(store),
                status="skipped",
                level_shapes=tuple(level_shapes),
                stac_item=str(stac_path) if stac_path.exists() else None,
            )
        recorded: Future[str] | None = None
        if state == "new":
            with (
                rasterio.Env(GDAL_CACHEMAX=config.gdal_cache_mb * BYTES_PER_MB),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with open_raster(source) as dataset:
                    try:
                        stretch = compute_stretch(
                            dataset,
                            info,
                            low_pct=config.stretch_low_pct,
                            high_pct=config.stretch_high_pct,
                            sample_long_side_px=config.stretch_sample_long_side_px,
                        )
                    except rasterio.errors.RasterioError as err:
                        detail = " ".join(str(err).split())
                        raise SceneReadError(f"{source}: cannot decode pixels ({detail})") from err
            out_dir.mkdir(parents=True, exist_ok=True)
            create_store(
                store,
                level_shapes=level_shapes,
                arrays=config.arrays_spec(),
                root_attributes=_root_attributes(
                    scene_id=scene_id,
                    info=info,
                    stretch=stretch,
                    checksum=checksum,
                    level_shapes=level_shapes,
                    config=config,
                    lonlat_footprint=lonlat is not None or not info.is_georeferenced,
                ),
                level_transforms=[
                    level_transform(info.transform, k) for k in range(len(level_shapes))
                ],
            )
            recorded = hasher.submit(_record_checksum, store, hashing)
        else:
            existing = read_store_attributes(store)
            assert existing is not None  # _existing_state found them
            stretch = Stretch.from_dict(existing[LRS_ATTR]["stretch"])
            (store / PROGRESS_DIR).mkdir(exist_ok=True)
            log.info("%s: resuming an unfinished ingest", store)

        passes = plan_passes(
            store=store, info=info, stretch=stretch, level_shapes=level_shapes, config=config
        )
        total = sum(len(p) for p in passes)
        done = 0

        def on_done() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        try:
            for pass_index, tasks in enumerate(passes):
                # Bands of a sequential format run one at a time: each open decodes from row 0 down
                # to its band (cost grows with the band index), but only one band is in memory.
                pass_config = (
                    replace(config, n_workers=1)
                    if pass_index == 0 and is_sequential(info)
                    else config
                )
                _run_tasks(tasks, config=pass_config, dask_address=dask_address, on_done=on_done)
                if pass_index == 0:
                    n_valid = sum(_marker(t).n_valid for t in tasks)
                    if n_valid == 0:
                        raise SceneReadError(
                            f"{source}: every pixel is nodata (or alpha 0); nothing to ingest"
                        )
        except SceneReadError:
            # Bad input: a rerun cannot finish this store, so leave nothing that could look usable
            # (once the checksum writer is done with it).
            if recorded is not None:
                wait([recorded])
            shutil.rmtree(store, ignore_errors=True)
            raise
        checksum = recorded.result() if recorded is not None else checksum
        assert checksum is not None  # hashed above, or recorded in the store being resumed
        regions_by_level: list[list[Region]] = [[] for _ in level_shapes]
        for task in (t for tasks in passes for t in tasks):
            for store_level, region in _marker(task).regions:
                regions_by_level[store_level].append(region)
        write_region_digests(store, regions_by_level)
        digests = digests_attribute(regions_by_level)
        write_stac_item(
            path=stac_path,
            scene_id=scene_id,
            store=store,
            info=info,
            checksum=checksum,
            lonlat=lonlat,
        )
        mark_complete(
            store, extra={"finished": datetime.now(UTC).isoformat(), DIGESTS_ATTR: digests}
        )
        shutil.rmtree(store / PROGRESS_DIR, ignore_errors=True)
        log.info("%s: ingested %s, levels %s", store, source, list(level_shapes))
        return IngestResult(
            scene_id=scene_id,
            source=str(source),
            store=str(store),
            status="ingested",
            level_shapes=tuple(level_shapes),
            stac_item=str(stac_path),
        )


@dataclass(frozen=True, kw_only=True)
class SourceScan:
    """Sources expanded from files and folders, and what the expansion left out.

    Attributes:
        paths: raster files to ingest, in order (files given directly pass through as given).
        skipped: ``(path, reason)`` for each entry of a folder that is not ingested.
    """

    paths: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]


def _skip_reason(path: Path, *, recursive: bool) -> str | None:
    """Why a folder entry is not ingested, or None when it is a raster file to ingest."""
    if path.is_symlink() and not path.exists():
        return symlink_problem(path)
    if path.is_dir():
        if path.suffix == ".zarr":
            return "a Zarr store (ingest output)"
        return None if recursive else "a subfolder; pass --recursive to ingest the rasters inside"
    if not path.is_file():
        return "not a regular file"
    if path.name.startswith("."):
        return "a hidden file"
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return f"not a raster suffix ({', '.join(sorted(RASTER_SUFFIXES))})"
    return None


def scan_sources(sources: Sequence[str | Path], *, recursive: bool = False) -> SourceScan:
    """Expand folders to the rasters inside them (sorted), saying what was left out and why.

    Args:
        sources: files and/or folders. Files pass through as given, even without a raster
            suffix (the ingest then says what is wrong with them).
        recursive: also descend into subfolders (symlinked folders are not followed, so a link
            loop cannot recurse; ``*.zarr`` stores are never entered).

    Returns:
        The :class:`SourceScan`.
    """
    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            reason = _skip_reason(entry, recursive=recursive)
            if reason is None and entry.is_dir():
                if entry.is_symlink():
                    skipped.append((entry, "a symlinked folder (not followed)"))
                else:
                    walk(entry)
            elif reason is None:
                paths.append(entry)
            else:
                skipped.append((entry, reason))

    for source in sources:
        path = Path(source)
        if path.is_dir():
            walk(path)
        else:
            paths.append(path)
    return SourceScan(paths=tuple(paths), skipped=tuple(skipped))


def expand_sources(sources: Sequence[str | Path], *, recursive: bool = False) -> list[Path]:
    """Expand folders to the rasters inside them (see :func:`scan_sources`); files as given."""
    skipped = scan_sources(sources, recursive=recursive)
    for path, reason in skipped.skipped:
        log.info("%s: skipped, %s", path, reason)
    return list(skipped.paths)


def ingest_many(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    scene_id: str | None = None,
    config: IngestConfig = IngestConfig(),  # noqa: B008 -- frozen, immutable default
    overwrite: bool = False,
    dask_address: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_scene: Callable[[Path], None] | None = None,
    wait: bool = False,
    recursive: bool = False,
) -> list[IngestResult]:
    """Ingest several sources (folders expanded); one bad scene never stops the others.

    Args:
        sources: files and/or folders.
        out_dir: folder of stores.
        scene_id: store name; only allowed when ``sources`` expand to exactly one file.
        config: as in :func:`ingest_scene`.
        overwrite: as in :func:`ingest_scene`.
        dask_address: as in :func:`ingest_scene`.
        progress: as in :func:`ingest_scene` (restarts for each scene).
        on_scene: called with each source before it is ingested (e.g. to relabel a progress bar).
        wait: as in :func:`ingest_scene`.
        recursive: as in :func:`scan_sources`.

    Returns:
        One :class:`IngestResult` per source; failures carry ``status="failed"`` and the error.

    Raises:
        ConfigError: ``scene_id`` given for more than one source.
    """
    paths = expand_sources(sources, recursive=recursive)
    if scene_id is not None and len(paths) != 1:
        raise ConfigError(f"--id {scene_id!r} needs exactly one source, got {len(paths)}")
    results: list[IngestResult] = []
    for path in paths:
        if on_scene is not None:
            on_scene(path)
        name = scene_id or path.stem
        try:
            results.append(
                ingest_scene(
                    path,
                    out_dir,
                    scene_id=name,
                    config=config,
                    overwrite=overwrite,
                    dask_address=dask_address,
                    progress=progress,
                    wait=wait,
                )
            )
        except LrsError as err:
            message = str(err) if str(path) in str(err) else f"{path}: {err}"
            log.warning("ingest failed: %s", message)
            store = Path(out_dir) / f"{name}.zarr"
            results.append(
                IngestResult(
                    scene_id=name,
                    source=str(path),
                    store=str(store) if store.exists() else None,
                    status="failed",
                    error=" ".join(message.split()),
                )
            )
    return results


__all__ = [
    "IngestConfig",
    "IngestResult",
    "SceneNotFoundError",
    "SourceScan",
    "expand_sources",
    "file_checksum",
    "ingest_many",
    "ingest_scene",
    "scan_sources",
]
