"""The page of ``lrs serve`` in a real headless Chromium (Debian's package, driven by Playwright).

Starts ``lrs serve`` on a free loopback port over the suite's store and answers folder, loads the
page, waits for the tiles (every tile request must answer 200 with a PNG), clicks an answer and
checks the map moved to its evidence footprint, saves screenshots, and compares one tile the
browser received with the same tile computed independently from the source GeoTIFF with
``rasterio.warp.reproject``. Skips (with the reason) only when Chromium or Playwright is absent;
``make install`` installs Debian's ``chromium``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_bounds
from rasterio.warp import Resampling, reproject

from lrs_core.outputs.parts import BatchWriter, read_records
from tests.fixtures.net import free_port
from tests.fixtures.serve import SERVED_SCENE_ID, ServedFolders

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 90.0
PAGE_TIMEOUT_MS = 60_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Half the side of the Web-Mercator square, in metres (EPSG:3857's extent).
MERCATOR_HALF_SIDE_M = 20037508.342789244
TILE_PX = 256

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium; make install)"
)


@dataclass(frozen=True)
class Server:
    url: str
    answers: Path


@pytest.fixture(scope="module")
def server(
    served_folders: ServedFolders, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``lrs serve`` over the suite's stores and a copy of its run (the test appends to it)."""
    port = free_port()
    lrs = shutil.which("lrs", path=str(Path(sys.executable).parent)) or "lrs"
    root = tmp_path_factory.mktemp("serve_browser")
    answers = root / served_folders.answers.name
    shutil.copytree(served_folders.answers, answers)
    log = root / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    with log.open("w") as log_handle:
        process = subprocess.Popen(
            [lrs, "serve", "--stores", str(served_folders.stores), "--answers",
             str(answers), "--port", str(port)],
            stdout=log_handle, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + SERVER_START_S
        try:
            while True:
                try:
                    urllib.request.urlopen(url + "api/scenes", timeout=5).read()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"lrs serve did not start: {log.read_text()}"
                        ) from None
                    time.sleep(0.5)
            yield Server(url=url, answers=answers)
        finally:
            process.terminate()
            process.wait(timeout=30)


def _tile_bounds_3857(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """XYZ tile bounds from the textbook formula (independent of morecantile)."""
    side = 2 * MERCATOR_HALF_SIDE_M / 2**z
    left = -MERCATOR_HALF_SIDE_M + x * side
    top = MERCATOR_HALF_SIDE_M - y * side
    return (left, top - side, left + side, top)


def _independent_tile(source: Path, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (3, 256, 256) RGB and bool (256, 256) validity of a tile warped from the GeoTIFF."""
    bounds = _tile_bounds_3857(z, x, y)
    rgb = np.zeros((3, TILE_PX, TILE_PX), np.uint8)
    valid = np.zeros((TILE_PX, TILE_PX), np.uint8)
    with rasterio.open(source) as src:
        data = src.read()
        mask = src.dataset_mask()
        kwargs = {
            "src_transform": src.transform, "src_crs": src.crs,
            "dst_transform": from_bounds(*bounds, TILE_PX, TILE_PX), "dst_crs": "EPSG:3857",
            "resampling": Resampling.nearest,
        }  # fmt: skip
        reproject(data, rgb, src_nodata=None, dst_nodata=None, **kwargs)
        reproject(mask, valid, src_nodata=None, dst_nodata=None, **kwargs)
    return rgb, valid > 0


def test_page_shows_tiles_and_answers_in_chromium(
    server: Server, served_folders: ServedFolders, tmp_path: Path
) -> None:
    tile_responses: list[tuple[str, int, str, bytes]] = []
    with playwright_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "user-data"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))

            def on_response(response) -> None:  # type: ignore[no-untyped-def]
                if response.url.endswith(".png") and "/api/" in response.url:
                    body = response.body() if response.status == 200 else b""
                    kind = response.headers.get("content-type", "")
                    tile_responses.append((response.url, response.status, kind, body))

            page.on("response", on_response)
            page.goto(server.url)
            page.wait_for_function("window.lrs && window.lrs.scenesReady")
            page.wait_for_function("window.lrs.tilesLoaded > 0")
            page.wait_for_selector("#answers li")
            page.wait_for_function("window.lrs.tilesPending === 0")
            before = tmp_path / "map.png"
            page.screenshot(path=str(before))
            print(f"screenshot: {before}")
            assert tile_responses, "the page requested no tiles"
            for url, status, kind, body in tile_responses:
                assert status == 200 and kind == "image/png" and body.startswith(PNG_SIGNATURE), url
            assert page.evaluate("window.lrs.tileErrors.length") == 0
            assert not errors, errors

            # Click an answer: the map fits its evidence footprint and shows its heat map.
            answers = {row["question_id"]: row for row in page.evaluate("window.lrs.answers")}
            target = answers["q-roof-default"]
            zoom_before = page.evaluate("window.lrs.map.getView().getZoom()")
            assert target["has_heatmap"]

            def is_heat_tile(response) -> bool:  # type: ignore[no-untyped-def]
                return "/heat/" in response.url and response.url.endswith(".png")

            with page.expect_response(is_heat_tile) as heat_response:
                page.click("#answers li[data-question-id='q-roof-default']")
            heat = heat_response.value
            assert heat.status == 200 and heat.body().startswith(PNG_SIGNATURE)
            page.wait_for_function("window.lrs.lastFitLonLat !== null")
            page.wait_for_function("window.lrs.tilesPending === 0")
            lon, lat = page.evaluate("ol.proj.toLonLat(window.lrs.map.getView().getCenter())")
            west, south, east, north = target["evidence_bounds_lonlat"]
            assert west <= lon <= east and south <= lat <= north
            view = page.evaluate(
                "ol.proj.transformExtent(window.lrs.map.getView().calculateExtent(), "
                "'EPSG:3857', 'EPSG:4326')"
            )
            assert view[0] <= west and view[2] >= east and view[1] <= south and view[3] >= north
            assert page.evaluate("window.lrs.map.getView().getZoom()") >= zoom_before
            assert page.evaluate("window.lrs.evidence.getFeatures().length") > 0
            page.wait_for_function("window.lrs.heatTilesLoaded > 0")
            after = tmp_path / "answer.png"
            page.screenshot(path=str(after))
            print(f"screenshot: {after}")
            page.wait_for_function("window.lrs.tilesPending === 0")
            for url, status, kind, body in tile_responses:
                assert status == 200 and kind == "image/png" and body.startswith(PNG_SIGNATURE), url
            assert page.evaluate("window.lrs.tileErrors.length") == 0

            # The monitoring view lists the run with its counts.
            page.click("#tab-monitor")
            page.wait_for_selector("#monitor tbody tr")
            assert page.inner_text("#monitor tbody td.answered") == "4"
            assert page.inner_text("#monitor tbody td.failed") == "0"
            # A new answers part lands (a failed question): the page shows it without a reload.
            (done,) = [r for r in read_records(server.answers) if r.question_id == "q-lake-full"]
            failed = dataclasses.replace(done, question_id="q-new", answer="", error="boom")
            BatchWriter(server.answers).append([failed])
            page.wait_for_function(
                "document.querySelector('#monitor tbody td.failed').innerText === '1'"
            )
            page.screenshot(path=str(tmp_path / "monitor.png"))
            page.click("#tab-answers")
            page.wait_for_selector("#answers li[data-question-id='q-new']")
        finally:
            context.close()

    # One tile the browser got equals the same tile warped independently from the source.
    scene_tiles = [
        (url, body)
        for url, status, _, body in tile_responses
        if f"/scenes/{SERVED_SCENE_ID}/" in url
    ]
    url, body = max(scene_tiles, key=lambda item: int(item[0].rsplit("/", 3)[-3]))
    z, x, y = (int(v) for v in url.removesuffix(".png").rsplit("/", 3)[-3:])
    rendered = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))
    rgb, valid = _independent_tile(served_folders.source, z, x, y)
    alpha = rendered[..., 3] == 255
    both = alpha & valid
    assert both.sum() > 0.1 * TILE_PX * TILE_PX, f"tile {z}/{x}/{y} barely covers the scene"
    assert (alpha == valid).mean() > 0.99
    expected = rgb.transpose(1, 2, 0)[both].astype(int)
    got = rendered[..., :3][both].astype(int)
    same = (np.abs(expected - got).max(axis=1) == 0).mean()
    assert same > 0.99 and math.isclose(float(np.abs(expected - got).mean()), 0.0, abs_tol=1.0)
