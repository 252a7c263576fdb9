"""``lrs serve``'s HTTP API over a store and an answers folder written by the suite."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from morecantile import tms as tms_registry
from PIL import Image
from pyproj import Transformer

from lrs_core.raster.pyramid import open_pyramid
from lrs_core.serve import ServeConfig, create_app
from lrs_core.serve.tiles import SceneTiler
from tests.fixtures.scenes import SCENE_ORIGIN_XY, SCENE_PIXEL_SIZE_M
from tests.fixtures.serve import (
    NODATA_COLLAR_PX,
    PENDING_ID,
    PLAIN_SCENE_ID,
    RUN_ID,
    SERVED_SCENE_ID,
    ServedFolders,
)

WEB_MERCATOR = tms_registry.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def client(served_folders: ServedFolders) -> TestClient:
    config = ServeConfig(stores_dir=served_folders.stores, answer_dirs=(served_folders.answers,))
    return TestClient(create_app(config))


def _scene_lonlat(x_px: float, y_px: float) -> tuple[float, float]:
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    x = SCENE_ORIGIN_XY[0] + x_px * SCENE_PIXEL_SIZE_M
    y = SCENE_ORIGIN_XY[1] - y_px * SCENE_PIXEL_SIZE_M
    lon, lat = to_lonlat.transform(x, y)
    return float(lon), float(lat)


def _png(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def test_scenes_list_bounds_and_tilejson(client: TestClient) -> None:
    scenes = {s["id"]: s for s in client.get("/api/scenes").json()}
    assert set(scenes) == {SERVED_SCENE_ID, PLAIN_SCENE_ID}
    plain = scenes[PLAIN_SCENE_ID]
    assert plain["bounds"] is None and plain["tilejson"] is None and plain["size_wh"] == [160, 120]
    served = scenes[SERVED_SCENE_ID]
    assert served["size_wh"] == [1000, 700]
    west, north = _scene_lonlat(0, 0)
    east, south = _scene_lonlat(1000, 700)
    assert served["bounds"] == pytest.approx([west, south, east, north], abs=1e-4)
    tilejson = client.get(served["tilejson"]).json()
    assert tilejson["tiles"][0].endswith(
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/{{z}}/{{x}}/{{y}}.png"
    )
    assert tilejson["minzoom"] < tilejson["maxzoom"]


def test_tiles_come_from_the_level_that_fits_the_zoom(served_folders: ServedFolders) -> None:
    tiler = SceneTiler(open_pyramid(served_folders.stores / f"{SERVED_SCENE_ID}.zarr"))
    lon, lat = _scene_lonlat(600, 350)
    minzoom, maxzoom = tiler.zoom_range()
    levels = []
    for z in range(minzoom, maxzoom + 1):
        tile = WEB_MERCATOR.tile(lon, lat, z)
        levels.append(tiler.render(tile.z, tile.x, tile.y).store_level)
    assert levels[0] == tiler.n_levels - 1 > 0  # zoomed out: the coarsest level, never 0
    assert levels == sorted(levels, reverse=True) and levels[-1] == 0


def test_tile_is_opaque_on_data_and_transparent_on_nodata(client: TestClient) -> None:
    lon, lat = _scene_lonlat(NODATA_COLLAR_PX, 350)  # the collar's edge in the middle
    tilejson = client.get(f"/api/scenes/{SERVED_SCENE_ID}/tilejson.json").json()
    z = tilejson["maxzoom"] - 2
    tile = WEB_MERCATOR.tile(lon, lat, z)
    rgba = _png(client.get(f"/api/scenes/{SERVED_SCENE_ID}/tiles/{z}/{tile.x}/{tile.y}.png"))
    alpha = rgba[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    left, right = alpha[:, :64], alpha[:, -64:]
    assert (left == 0).mean() > 0.9 and (right == 255).mean() > 0.9


@pytest.mark.parametrize(
    "path",
    [
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/-1/0/0.png",
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/3/8/0.png",
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/99/0/0.png",
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/a/b/c.png",
        f"/api/scenes/{SERVED_SCENE_ID}/tiles/10/0/0.png",  # valid, but far from the scene
        f"/api/scenes/{PLAIN_SCENE_ID}/tiles/0/0/0.png",  # no CRS: no tiles
        "/api/scenes/nope/tilejson.json",
        "/api/scenes/..%2F..%2Fetc%2Fpasswd/tilejson.json",
        "/api/scenes/%2e%2e/tilejson.json",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/app.py",
        f"/api/runs/{RUN_ID}/answers/..%2F..%2Fx/heat/tilejson.json",
        "/api/runs/..%2Fstores/answers/x/heat/tilejson.json",
    ],
)
def test_bad_coordinates_and_traversal_get_404(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_answers_rows_filters_and_savings(client: TestClient) -> None:
    rows = client.get("/api/answers").json()
    assert len(rows) == 4 and {r["run"] for r in rows} == {RUN_ID}
    default = client.get("/api/answers", params={"preset": "default"}).json()
    assert {r["question_id"] for r in default} == {"q-roof-default", "q-lake-default"}
    for row in default:
        assert row["status"] == "answered" and row["scene_id"] == SERVED_SCENE_ID
        assert row["token_saving"] is not None and 0 < row["token_saving"] < 1
        west, south, east, north = row["evidence_bounds_lonlat"]
        assert west < east and south < north
    assert client.get("/api/answers", params={"text": "LAKE"}).json()[0]["question"] == (
        "Is there a lake?"
    )
    assert len(client.get("/api/answers", params={"text": "lake"}).json()) == 2
    assert client.get("/api/answers", params={"status": "failed"}).json() == []
    assert client.get("/api/answers", params={"scene": PLAIN_SCENE_ID}).json() == []
    assert client.get("/api/answers", params={"run": "other"}).json() == []
    assert len(client.get("/api/answers", params={"limit": 1}).json()) == 1


def test_answers_geojson_is_lonlat_footprints(client: TestClient) -> None:
    response = client.get("/api/answers.geojson", params={"preset": "default", "text": "roof"})
    assert response.headers["content-type"].startswith("application/geo+json")
    features = response.json()["features"]
    kinds = {f["properties"]["kind"] for f in features}
    assert kinds >= {"answer", "tile"}
    assert {f["properties"]["question_id"] for f in features} == {"q-roof-default"}
    (west, south), (east, north) = _scene_lonlat(0, 700), _scene_lonlat(1000, 0)
    for feature in features:
        assert feature["properties"]["run"] == RUN_ID
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert (ring[:, 0] >= west - 1e-6).all() and (ring[:, 0] <= east + 1e-6).all()
        assert (ring[:, 1] >= south - 1e-6).all() and (ring[:, 1] <= north + 1e-6).all()


def test_heat_tiles_are_masked_to_valid_pixels(client: TestClient) -> None:
    url = f"/api/runs/{RUN_ID}/answers/q-roof-default/heat/tilejson.json"
    tilejson = client.get(url).json()
    z = tilejson["maxzoom"] - 2
    lon, lat = _scene_lonlat(NODATA_COLLAR_PX, 350)
    tile = WEB_MERCATOR.tile(lon, lat, z)
    heat_url = tilejson["tiles"][0].format(z=z, x=tile.x, y=tile.y)
    heat = _png(client.get(heat_url))
    scene = _png(client.get(f"/api/scenes/{SERVED_SCENE_ID}/tiles/{z}/{tile.x}/{tile.y}.png"))
    assert not heat[..., 3][scene[..., 3] == 0].any()
    assert heat[..., 3].any()


def test_monitor_counts_answered_failed_pending(client: TestClient) -> None:
    groups = client.get("/api/monitor").json()["groups"]
    served = next(g for g in groups if g["scene_id"] == SERVED_SCENE_ID)
    assert served["run"] == RUN_ID and served["answered"] == 4 and served["failed"] == 0
    assert served["pending"] == 1  # PENDING_ID of requests.csv
    assert served["timeline"][-1]["answered"] == 4
    assert PENDING_ID


def test_page_and_vendored_map_library_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    # Every script and stylesheet comes from this server (no CDN at run time).
    assert "http://" not in page.text and "https://" not in page.text
    for path in ("static/vendor/ol/ol.js", "static/vendor/ol/ol.css", "static/app.js"):
        assert path in page.text or path == "static/app.js"
        response = client.get(f"/{path}")
        assert response.status_code == 200 and len(response.content) > 1000
    assert client.get("/static/vendor/ol/LICENSE.md").status_code == 200


def test_geojson_filters_by_question_id(client: TestClient) -> None:
    params = {"run": RUN_ID, "question_id": "q-lake-full"}
    features = client.get("/api/answers.geojson", params=params).json()["features"]
    assert features and {f["properties"]["question_id"] for f in features} == {"q-lake-full"}


def test_config_refuses_missing_folders(tmp_path: Path) -> None:
    from lrs_core.errors import ConfigError

    assert ServeConfig(stores_dir=tmp_path).host == "127.0.0.1"  # loopback unless asked
    with pytest.raises(ConfigError, match="--stores"):
        ServeConfig(stores_dir=tmp_path / "none")
    with pytest.raises(ConfigError, match="--answers"):
        ServeConfig(stores_dir=tmp_path, answer_dirs=(tmp_path / "none",))


def test_cli_refuses_a_missing_stores_folder_with_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lrs_core.cli import build_app

    result = CliRunner().invoke(build_app(), ["serve", "--stores", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "--stores" in result.output and "Traceback" not in result.output
