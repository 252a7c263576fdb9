"""Benchmark: warm XYZ tile latency of ``lrs serve`` against TiTiler on a COG of the same pixels.

Scene: a synthetic 27328 x 25207 px RGB uint8 GeoTIFF (EPSG:32633, 0.5 m pixels; gradients,
field blocks and noise), written window by window, then (a) ingested with
``lrs_core.raster.ingest.ingest_scene`` into the Zarr store that ``lrs serve`` reads, and (b)
copied to a Cloud-Optimized GeoTIFF with GDAL's COG driver (internal overviews, ``average``
resampling, the driver's default LZW compression, 512 px blocks) that TiTiler reads. uint8 sources
are stored as is, so both hold the same level-0 pixels.
Everything is cached in ``benchmarks/_scratch/tiles/`` (git-ignored).

Both services run in this process as ASGI apps behind Starlette's ``TestClient`` (no sockets, same
request path): ours is ``create_app`` over the stores folder; the baseline is a FastAPI app with
``titiler.core``'s ``TilerFactory`` (``/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url=<cog>``). Tiles
are drawn at random (fixed seed) over the scene at every zoom from the coarsest to the deepest
level-0 zoom; a separate warm-up set is requested first by both; then the measured tiles are
requested alternately (ours, TiTiler, ours, ...), each once per service, so both share the
machine's noise. Reported: p50/p90/p99 latency per service and the ratios ours / TiTiler.

Goals (issue 15): p50 <= 1.0x TiTiler's, p99 <= 2x.

Run: ``.venv/bin/python benchmarks/tiles.py [--tiles 300] [--quick]`` (``--quick``: a 4096 x 3072
scene, 100 tiles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_SCRATCH = ROOT / "benchmarks" / "_scratch" / "tiles"
FULL_SIZE_WH = (27328, 25207)
QUICK_SIZE_WH = (4096, 3072)
PIXEL_SIZE_M = 0.5
ORIGIN_XY = (500_000.0, 4_600_000.0)
EPSG = 32633
WRITE_ROWS = 1024
BLOCK_PX = 512
SEED = 0
WARMUP_TILES = 30
GOAL_P50 = 1.0
GOAL_P99 = 2.0
SCENE_VERSION = 1


def _rows(row0: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (3, height, width): gradients, 256 px field blocks and noise (cheap, non-constant)."""
    rows = np.arange(row0, row0 + height, dtype=np.uint32)[:, None]
    cols = np.arange(width, dtype=np.uint32)[None, :]
    field = ((rows // 256) * 7 + (cols // 256) * 13) % 97
    red = (rows * 255 // FULL_SIZE_WH[1] + field).astype(np.uint8)
    green = (cols * 255 // FULL_SIZE_WH[0] + 2 * field).astype(np.uint8)
    blue = ((red.astype(np.uint16) + green) // 2).astype(np.uint8)
    noise = rng.integers(0, 16, size=(height, width), dtype=np.uint8)
    return np.stack([red + noise, green + noise, blue + noise])


def write_scene(path: Path, width: int, height: int) -> Path:
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if path.exists():
        return path
    tmp = path.with_suffix(".partial.tif")
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": f"EPSG:{EPSG}", "tiled": True, "blockxsize": BLOCK_PX, "blockysize": BLOCK_PX,
        "transform": Affine(PIXEL_SIZE_M, 0, ORIGIN_XY[0], 0, -PIXEL_SIZE_M, ORIGIN_XY[1]),
        "BIGTIFF": "YES",
    }  # fmt: skip
    rng = np.random.default_rng(SEED)
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, height, WRITE_ROWS):
            rows = min(WRITE_ROWS, height - row)
            dst.write(_rows(row, rows, width, rng), window=Window(0, row, width, rows))
    os.replace(tmp, path)
    return path


def write_cog(source: Path, path: Path) -> Path:
    from rasterio.shutil import copy

    if path.exists():
        return path
    tmp = path.with_suffix(".partial.tif")
    copy(
        str(source), str(tmp), driver="COG", BLOCKSIZE=BLOCK_PX, OVERVIEW_RESAMPLING="AVERAGE",
        BIGTIFF="YES", NUM_THREADS="ALL_CPUS",
    )  # fmt: skip
    os.replace(tmp, path)
    return path


def prepare(scratch: Path, width: int, height: int) -> tuple[Path, Path, dict[str, float]]:
    from lrs_core.raster.ingest import IngestConfig, ingest_scene

    scratch.mkdir(parents=True, exist_ok=True)
    name = f"scene{width}x{height}v{SCENE_VERSION}"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    source = write_scene(scratch / f"{name}.tif", width, height)
    seconds["write_source"] = time.perf_counter() - t0
    stores = scratch / f"stores_{name}"
    t0 = time.perf_counter()
    if not (stores / f"{name}.zarr").exists():
        ingest_scene(source, stores, config=IngestConfig(n_workers=2))
    seconds["ingest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cog = write_cog(source, scratch / f"{name}.cog.tif")
    seconds["cog"] = time.perf_counter() - t0
    return stores, cog, seconds


def titiler_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI
    from titiler.core.factory import TilerFactory

    app = FastAPI()
    app.include_router(TilerFactory().router)
    return app


def pick_tiles(bounds_lonlat, minzoom: int, maxzoom: int, n: int, rng: random.Random):  # type: ignore[no-untyped-def]
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    west, south, east, north = bounds_lonlat
    # Keep the tiles inside the scene (edge tiles are partly empty for both services alike).
    tiles = []
    for _ in range(n):
        z = rng.randint(minzoom, maxzoom)
        lon = west + (east - west) * rng.uniform(0.02, 0.98)
        lat = south + (north - south) * rng.uniform(0.02, 0.98)
        tile = tms.tile(lon, lat, z)
        tiles.append((tile.z, tile.x, tile.y))
    return tiles


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=DEFAULT_SCRATCH)
    parser.add_argument("--tiles", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    width, height = QUICK_SIZE_WH if args.quick else FULL_SIZE_WH
    n_tiles = 100 if args.quick else args.tiles
    stores, cog, prep_s = prepare(args.scratch, width, height)
    print(f"prepared in {json.dumps({k: round(v, 1) for k, v in prep_s.items()})}", flush=True)
    if args.prepare_only:
        return

    from fastapi.testclient import TestClient

    from lrs_core.serve import ServeConfig, create_app

    ours = TestClient(create_app(ServeConfig(stores_dir=stores)))
    theirs = TestClient(titiler_app())
    (scene,) = ours.get("/api/scenes").json()
    tilejson = ours.get(scene["tilejson"]).json()
    minzoom, maxzoom = tilejson["minzoom"], tilejson["maxzoom"]
    rng = random.Random(SEED)
    warmup = pick_tiles(scene["bounds"], minzoom, maxzoom, WARMUP_TILES, rng)
    measured = pick_tiles(scene["bounds"], minzoom, maxzoom, n_tiles, rng)

    def ours_url(z: int, x: int, y: int) -> str:
        return f"/api/scenes/{scene['id']}/tiles/{z}/{x}/{y}.png"

    def theirs_url(z: int, x: int, y: int) -> str:
        return f"/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={cog}"

    def fetch(client: TestClient, url: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        response = client.get(url)
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        return elapsed, len(response.content)

    for tile in warmup:
        fetch(ours, ours_url(*tile))
        fetch(theirs, theirs_url(*tile))
    times: dict[str, list[float]] = {"lrs": [], "titiler": []}
    sizes: dict[str, list[int]] = {"lrs": [], "titiler": []}
    for i, tile in enumerate(measured):
        order = [("lrs", ours, ours_url), ("titiler", theirs, theirs_url)]
        for name, client, url in order if i % 2 == 0 else order[::-1]:
            elapsed, size = fetch(client, url(*tile))
            times[name].append(elapsed)
            sizes[name].append(size)
    import rio_tiler
    import titiler.core

    import lrs_core

    result = {
        "scene_wh": [width, height],
        "zooms": [minzoom, maxzoom],
        "tiles": n_tiles,
        "warmup_tiles": WARMUP_TILES,
        "prepare_s": prep_s,
        "versions": {
            "lrs": lrs_core.__version__,
            "titiler.core": titiler.core.__version__,
            "rio-tiler": rio_tiler.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    for name in times:
        result[name] = {
            "p50_ms": percentile_ms(times[name], 50),
            "p90_ms": percentile_ms(times[name], 90),
            "p99_ms": percentile_ms(times[name], 99),
            "mean_png_bytes": float(np.mean(sizes[name])),
        }
    result["ratio_p50"] = result["lrs"]["p50_ms"] / result["titiler"]["p50_ms"]
    result["ratio_p99"] = result["lrs"]["p99_ms"] / result["titiler"]["p99_ms"]
    result["goals_met"] = result["ratio_p50"] <= GOAL_P50 and result["ratio_p99"] <= GOAL_P99
    try:
        import subprocess

        result["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        result["commit"] = "unknown"
    print(json.dumps(result, indent=2))
    print(
        f"lrs serve p50 {result['lrs']['p50_ms']:.1f} ms, p99 {result['lrs']['p99_ms']:.1f} ms | "
        f"TiTiler p50 {result['titiler']['p50_ms']:.1f} ms, p99 {result['titiler']['p99_ms']:.1f} "
        f"ms | ratio p50 {result['ratio_p50']:.2f}x (goal <= {GOAL_P50}), p99 "
        f"{result['ratio_p99']:.2f}x (goal <= {GOAL_P99})"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
