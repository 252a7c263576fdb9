"""The FastAPI application of ``lrs serve``: scenes, tiles, answers, monitoring and the page.

Routes (all read-only):

* ``GET /`` – the map page (``static/index.html``, MapLibre GL JS vendored in ``static/vendor``).
* ``GET /api/scenes`` – ``[{"id", "bounds" (EPSG:4326 or null), "size_wh", "tilejson"}]``.
* ``GET /api/scenes/{id}/tilejson.json`` and ``/api/scenes/{id}/tiles/{z}/{x}/{y}.png``.
* ``GET /api/answers`` (panel rows, newest first, at most ``limit``) and ``/api/answers.geojson``
  (EPSG:4326 footprints), both filtered by ``scene``, ``run``, ``preset``, ``status`` and ``text``
  (and ``question_id``).
* ``GET /api/runs/{run}/answers/{question_id}/heat/tilejson.json`` and ``.../heat/{z}/{x}/{y}.png``.
* ``GET /api/monitor`` – answered / failed / pending per run and scene over time.

Every name in a path is looked up in the catalogue or the answer index, never joined onto a folder,
so nothing outside the configured folders can be reached; unknown names and bad tile
coordinates get 404.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from lrs_core.errors import ConfigError, LrsError, SceneNotFoundError
from lrs_core.serve.answers import (
    AnswerFilter,
    AnswerIndex,
    answer_summary,
    feature_collection,
    full_baselines,
    monitor,
)
from lrs_core.serve.catalog import SceneCatalog, SceneEntry
from lrs_core.serve.tiles import (
    TILE_SIZE_PX,
    TMS_ID,
    SceneTiler,
    TileNotFoundError,
    encode_png,
    render_heat,
)

log = logging.getLogger(__name__)

#: Loopback only unless the user asks for more.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Seconds a browser may reuse a tile (stores are immutable once complete).
TILE_MAX_AGE_S = 3600
TILEJSON_VERSION = "3.0.0"
PNG_MEDIA_TYPE = "image/png"
GEOJSON_MEDIA_TYPE = "application/geo+json"
#: Answers the panel lists at most (newest first); ``?limit=`` changes it.
DEFAULT_ANSWERS_LIMIT = 1000


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What ``lrs serve`` shows and where it listens.

    Attributes:
        stores_dir: folder of ``<scene_id>.zarr`` stores.
        answer_dirs: answer folders (batch outputs), one run each.
        host: interface to bind (loopback by default).
        port: TCP port.
    """

    stores_dir: Path
    answer_dirs: tuple[Path, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not self.stores_dir.is_dir():
            raise ConfigError(
                f"stores_dir={self.stores_dir} is not a folder; pass the --out folder of "
                "'lrs ingest' with --stores"
            )
        for folder in self.answer_dirs:
            if not folder.is_dir():
                raise ConfigError(
                    f"answer folder {folder} does not exist; pass the --out folder of "
                    "'lrs ask'/'lrs demo'/the answer flow with --answers"
                )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port} is outside [0, 65535]")


def static_dir() -> Path:
    """The folder of the page's files (``index.html``, ``app.js``, ``vendor/``)."""
    return Path(str(resources.files("lrs_core.serve") / "static"))


def _parse_tile(z: str, x: str, y: str) -> tuple[int, int, int]:
    try:
        return int(z), int(x), int(y)
    except ValueError:
        raise HTTPException(404, f"tile {z}/{x}/{y} is not z/x/y integers") from None


def _png(data: bytes) -> Response:
    return Response(
        data,
        media_type=PNG_MEDIA_TYPE,
        headers={"Cache-Control": f"public, max-age={TILE_MAX_AGE_S}"},
    )


def create_app(config: ServeConfig) -> FastAPI:
    """Build the application over ``config``'s folders (scanned now and on each scene listing)."""
    catalog = SceneCatalog(config.stores_dir)
    index = AnswerIndex(list(config.answer_dirs))
    tilers: dict[str, SceneTiler] = {}
    tilers_lock = threading.Lock()
    app = FastAPI(title="lrs serve", docs_url="/api/docs", redoc_url=None, openapi_url="/api")
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    def scene_or_404(scene_id: str) -> SceneEntry:
        try:
            return catalog.get(scene_id)
        except SceneNotFoundError as err:
            raise HTTPException(404, str(err)) from None

    def tiler_or_404(scene_id: str) -> SceneTiler:
        entry = scene_or_404(scene_id)
        if not entry.is_tileable:
            raise HTTPException(404, f"scene {scene_id!r} has no north-up CRS: no map tiles")
        with tilers_lock:
            tiler = tilers.get(scene_id)
        if tiler is None:
            tiler = SceneTiler(catalog.pyramid(scene_id))
            with tilers_lock:
                tilers[scene_id] = tiler
        return tiler

    def tilejson(entry: SceneEntry, tiles_url: str) -> dict[str, Any]:
        tiler = tiler_or_404(entry.scene_id)
        minzoom, maxzoom = tiler.zoom_range()
        assert entry.bounds_lonlat is not None  # tileable scenes have bounds
        west, south, east, north = entry.bounds_lonlat
        return {
            "tilejson": TILEJSON_VERSION,
            "name": entry.scene_id,
            "scheme": "xyz",
            "tiles": [tiles_url],
            "tileSize": TILE_SIZE_PX,
            "tileMatrixSet": TMS_ID,
            "minzoom": minzoom,
            "maxzoom": maxzoom,
            "bounds": [west, south, east, north],
            "center": [(west + east) / 2, (south + north) / 2, max(minzoom, maxzoom - 3)],
        }

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static_dir() / "index.html")

    @app.get("/api/scenes")
    def scenes(request: Request) -> list[dict[str, Any]]:
        catalog.refresh()
        return [
            {
                "id": entry.scene_id,
                "bounds": None if entry.bounds_lonlat is None else list(entry.bounds_lonlat),
                "size_wh": list(entry.size_wh),
                "tilejson": str(request.url_for("scene_tilejson", scene_id=entry.scene_id))
                if entry.is_tileable
                else None,
            }
            for entry in catalog.entries()
        ]

    @app.get("/api/scenes/{scene_id}/tilejson.json", name="scene_tilejson")
    def scene_tilejson(request: Request, scene_id: str) -> dict[str, Any]:
        entry = scene_or_404(scene_id)
        base = str(request.url_for("scene_tilejson", scene_id=scene_id))
        return tilejson(entry, base.replace("tilejson.json", "tiles/{z}/{x}/{y}.png"))

    @app.get("/api/scenes/{scene_id}/tiles/{z}/{x}/{y}.png")
    def scene_tile(scene_id: str, z: str, x: str, y: str) -> Response:
        tiler = tiler_or_404(scene_id)
        try:
            return _png(encode_png(tiler.render(*_parse_tile(z, x, y)).rgba))
        except TileNotFoundError as err:
            raise HTTPException(404, str(err)) from None

    def filter_from(
        scene: str | None,
        run: str | None,
        preset: str | None,
        status: str | None,
        text: str | None,
        question_id: str | None = None,
    ) -> AnswerFilter:
        return AnswerFilter(
            scene=scene, run=run, preset=preset, status=status, text=text, question_id=question_id
        )

    @app.get("/api/answers")
    def answers(
        scene: str | None = None,
        run: str | None = None,
        preset: str | None = None,
        status: str | None = None,
        text: str | None = None,
        limit: int = DEFAULT_ANSWERS_LIMIT,
    ) -> list[dict[str, Any]]:
        everything = index.latest()
        baselines = full_baselines(everything)
        where = filter_from(scene, run, preset, status, text)
        chosen = [item for item in everything if where.matches(item)]
        chosen.sort(key=lambda item: item.written, reverse=True)
        return [
            answer_summary(item, baselines, bounds_lonlat=index.bounds_lonlat(item))
            for item in chosen[: max(0, limit)]
        ]

    @app.get("/api/answers.geojson")
    def answers_geojson(
        scene: str | None = None,
        run: str | None = None,
        preset: str | None = None,
        status: str | None = None,
        text: str | None = None,
        question_id: str | None = None,
    ) -> JSONResponse:
        items = index.latest(filter_from(scene, run, preset, status, text, question_id))
        return JSONResponse(feature_collection(items), media_type=GEOJSON_MEDIA_TYPE)

    def answer_or_404(run: str, question_id: str) -> Any:
        if run not in index.runs:
            raise HTTPException(404, f"run {run!r} is not served")
        item = index.find(run, question_id)
        if item is None:
            raise HTTPException(404, f"run {run!r} has no answer {question_id!r}")
        return item

    @app.get("/api/runs/{run}/answers/{question_id}/heat/tilejson.json", name="heat_tilejson")
    def heat_tilejson(request: Request, run: str, question_id: str) -> dict[str, Any]:
        item = answer_or_404(run, question_id)
        if item.record.heatmap is None:
            raise HTTPException(404, f"answer {question_id!r} has no heat map")
        entry = scene_or_404(item.record.scene.scene_id)
        base = str(request.url_for("heat_tilejson", run=run, question_id=question_id))
        return tilejson(entry, base.replace("tilejson.json", "{z}/{x}/{y}.png"))

    @app.get("/api/runs/{run}/answers/{question_id}/heat/{z}/{x}/{y}.png")
    def heat_tile(run: str, question_id: str, z: str, x: str, y: str) -> Response:
        item = answer_or_404(run, question_id)
        tiler = tiler_or_404(item.record.scene.scene_id)
        try:
            rgba = render_heat(item.record, tiler, *_parse_tile(z, x, y)).rgba
        except TileNotFoundError as err:
            raise HTTPException(404, str(err)) from None
        return _png(encode_png(rgba))

    @app.get("/api/monitor")
    def monitoring() -> dict[str, Any]:
        return monitor(index)

    @app.exception_handler(LrsError)
    def lrs_error(request: Request, err: LrsError) -> JSONResponse:
        # Not-found errors are the client's (404); any other LrsError describes data the server
        # cannot show (a store or record it cannot read): 422 with the message, never a traceback.
        log.warning("%s: %s", request.url.path, err)
        status = 404 if isinstance(err, (SceneNotFoundError, TileNotFoundError)) else 422
        return JSONResponse({"detail": str(err)}, status_code=status)

    return app
