"""Benchmark: ``lrs`` ingest vs GDAL overviews (the conventional baseline), wall time and peak RSS.

Usage::

    .venv/bin/python benchmarks/ingest.py [--workdir DIR] [--main-px 16384] [--extra-px 4096 27328]

It writes a ``main_px``^2 RGB uint8 tiled deflate GeoTIFF and, each in a fresh subprocess (so peak
RSS is that run's own), times (a) ``lrs`` ingest into a Zarr pyramid and (b) GDAL
``build_overviews`` (average, factors 2..256) through rasterio on a copy of the same file. It prints
both wall times, input MB/s, peak RSS, and the ratio lrs/GDAL (<= 1.0: lrs is at least as fast).
Then it ingests the ``extra_px`` scenes and prints their peak RSS (flat = bounded memory).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE_PX = 512
OVERVIEW_FACTORS = [2, 4, 8, 16, 32, 64, 128, 256]
KIB_PER_MIB = 1024


def write_scene(path: Path, side_px: int) -> Path:
    """Stream a side_px^2 RGB uint8 GeoTIFF (gradients + hash noise), window by window."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    profile = {
        "driver": "GTiff",
        "width": side_px,
        "height": side_px,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_600_000),
        "tiled": True,
        "blockxsize": TILE_PX,
        "blockysize": TILE_PX,
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }
    tmp = path.with_suffix(".part.tif")
    band_rows = 2048
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, side_px, band_rows):
            height = min(band_rows, side_px - row)
            y = np.arange(row, row + height, dtype=np.uint32)[:, None]
            x = np.arange(side_px, dtype=np.uint32)[None, :]
            noise = (((x * np.uint32(73856093)) ^ (y * np.uint32(19349663))) >> 11) & np.uint32(63)
            red = (y * 255 // side_px + noise).astype(np.uint8)
            green = (x * 255 // side_px + noise).astype(np.uint8)
            blue = ((x + y) * 127 // side_px + 2 * noise).astype(np.uint8)
            dst.write(np.stack([red, green, blue]), window=Window(0, row, side_px, height))
    tmp.rename(path)
    return path


def worker_lrs(source: str, out_dir: str) -> dict[str, float]:
    """Ingest in this process; return wall seconds."""
    import dask.base  # noqa: F401 -- imported before timing, like rasterio for GDAL
    import distributed  # noqa: F401 -- imported before timing, like rasterio for GDAL
    import pystac  # noqa: F401

    from lrs_core.raster.ingest import IngestConfig, ingest_scene

    start = time.perf_counter()
    result = ingest_scene(source, out_dir, config=IngestConfig(), overwrite=True)
    wall = time.perf_counter() - start
    assert result.status == "ingested", result
    return {"wall_s": wall, "levels": len(result.level_shapes)}


def worker_gdal(source: str) -> dict[str, float]:
    """Build GDAL average overviews 2..256 on ``source`` in this process; return wall seconds."""
    import rasterio
    from rasterio.enums import Resampling

    start = time.perf_counter()
    with rasterio.open(source, "r+") as dataset:
        dataset.build_overviews(OVERVIEW_FACTORS, Resampling.average)
    return {"wall_s": time.perf_counter() - start, "levels": len(OVERVIEW_FACTORS) + 1}


def run_worker(args: list[str]) -> dict[str, float]:
    """Run this script as a worker subprocess; return its JSON line plus its peak RSS (MiB)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` of its own memory map.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec, so a
    worker started after the parent generated a scene (~1 GB of temporaries for 27328^2) would
    report the parent's peak instead of its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KIB_PER_MIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def _worker_main(argv: list[str]) -> None:
    kind = argv[0]
    out = worker_lrs(argv[1], argv[2]) if kind == "lrs" else worker_gdal(argv[1])
    out["peak_rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(out) + "\n")


def measure_reads(store: Path, *, n_reads: int = 40, window_px: int = 336) -> None:
    """Print the median latency of random window reads at every store level (handles kept open)."""
    from rasterio.windows import Window

    from lrs_core.raster.pyramid import open_pyramid

    start = time.perf_counter()
    pyramid = open_pyramid(store)
    print(f"open_pyramid: {(time.perf_counter() - start) * 1e3:.1f} ms")
    rng = np.random.default_rng(0)
    for level in pyramid.levels:
        height, width = level.shape_hw
        side_h, side_w = min(window_px, height), min(window_px, width)
        times = []
        for _ in range(n_reads):
            row = int(rng.integers(0, height - side_h + 1))
            col = int(rng.integers(0, width - side_w + 1))
            start = time.perf_counter()
            pyramid.read_window(level.store_level, Window(col, row, side_w, side_h))
            times.append(time.perf_counter() - start)
        print(
            f"  store_level {level.store_level} {height}x{width}: random {side_h}x{side_w} read "
            f"median {np.median(times) * 1e3:.1f} ms"
        )
    width, height = pyramid.size_wh
    times = []
    for _ in range(n_reads):
        side = int(rng.integers(window_px, max(window_px + 1, min(width, height) // 2)))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        start = time.perf_counter()
        pyramid.read_region((x0, y0, x0 + side, y0 + side), out_hw=(window_px, window_px))
        times.append(time.perf_counter() - start)
    print(f"  read_region random square -> {window_px}^2: median {np.median(times) * 1e3:.1f} ms")


def describe_env() -> str:
    import dask
    import rasterio
    import zarr

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"host: {platform.processor() or platform.machine()}, {_cpu_count()} cores; python "
        f"{platform.python_version()}; rasterio {rasterio.__version__} (GDAL "
        f"{rasterio.__gdal_version__}); zarr {zarr.__version__}; dask {dask.__version__}; "
        f"commit {commit}"
    )


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lrs-bench-ingest"))
    parser.add_argument("--main-px", type=int, default=16384)
    parser.add_argument("--extra-px", type=int, nargs="*", default=[4096, 27328])
    parser.add_argument("--keep", action="store_true", help="keep generated files")
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(describe_env())

    main_src = write_scene(work / f"scene_{args.main_px}.tif", args.main_px)
    size_mb = main_src.stat().st_size / 1e6
    raw_mb = args.main_px**2 * 3 / 1e6
    copy = work / f"gdal_copy_{args.main_px}.tif"
    shutil.copyfile(main_src, copy)
    # Warm the page cache for both inputs alike.
    for path in (main_src, copy):
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass
    lrs = run_worker(["lrs", str(main_src), str(work / "stores")])
    gdal = run_worker(["gdal", str(copy)])
    print(f"input {args.main_px}^2 RGB uint8: {size_mb:.0f} MB on disk, {raw_mb:.0f} MB raw")
    for name, res in (("lrs ingest", lrs), ("GDAL build_overviews", gdal)):
        print(
            f"{name:22s} wall {res['wall_s']:7.2f} s  {raw_mb / res['wall_s']:7.1f} MB/s (raw)  "
            f"peak RSS {res['peak_rss_mib']:7.0f} MiB  levels {int(res['levels'])}"
        )
    print(f"ratio lrs/GDAL wall: {lrs['wall_s'] / gdal['wall_s']:.2f}")
    measure_reads(work / "stores" / f"{main_src.stem}.zarr")
    copy.unlink()
    if not args.keep:
        shutil.rmtree(work / "stores", ignore_errors=True)

    for side in args.extra_px:
        src = write_scene(work / f"scene_{side}.tif", side)
        res = run_worker(["lrs", str(src), str(work / "stores")])
        print(
            f"lrs ingest {side}^2: wall {res['wall_s']:7.2f} s  "
            f"{side**2 * 3 / 1e6 / res['wall_s']:7.1f} MB/s (raw)  "
            f"peak RSS {res['peak_rss_mib']:7.0f} MiB"
        )
        if not args.keep:
            shutil.rmtree(work / "stores", ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2:])
    else:
        main()
