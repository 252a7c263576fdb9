"""Answer records to GeoParquet, GeoJSON, PNG overlays, heat-map COGs and batch folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import Affine
from shapely.geometry import Polygon, shape

from lrs_core.errors import ConfigError, GeoreferenceError
from lrs_core.outputs.geojson import write_geojson
from lrs_core.outputs.geometry import record_geometries
from lrs_core.outputs.geoparquet import write_geoparquet
from lrs_core.outputs.heatmaps import write_heatmap_cog
from lrs_core.outputs.overlays import write_overlay_png
from lrs_core.outputs.parts import BatchWriter, answered_ids, read_records
from lrs_core.records import (
    Accounting,
    AnswerRecord,
    FlopCount,
    HeatMap,
    SceneRef,
    TileEvidence,
    TokenEvidence,
)
from tests.fixtures.scenes import (
    SCENE_EPSG,
    SCENE_HEIGHT_PX,
    SCENE_ORIGIN_XY,
    SCENE_PIXEL_SIZE_M,
    SCENE_WIDTH_PX,
)

NORTH_UP = (
    SCENE_PIXEL_SIZE_M,
    0.0,
    SCENE_ORIGIN_XY[0],
    0.0,
    -SCENE_PIXEL_SIZE_M,
    SCENE_ORIGIN_XY[1],
)
ROTATION_DEG = 30.0


def rotated_transform() -> tuple[float, float, float, float, float, float]:
    aff = (
        Affine.translation(*SCENE_ORIGIN_XY)
        @ Affine.rotation(ROTATION_DEG)
        @ Affine.scale(SCENE_PIXEL_SIZE_M, -SCENE_PIXEL_SIZE_M)
    )
    return (aff.a, aff.b, aff.c, aff.d, aff.e, aff.f)


def make_scene(transform=NORTH_UP, *, georef: bool = True, scene_id: str = "scene") -> SceneRef:
    return SceneRef(
        scene_id=scene_id,
        store=f"/stores/{scene_id}.zarr",
        size_wh=(SCENE_WIDTH_PX, SCENE_HEIGHT_PX),
        crs_wkt=CRS.from_epsg(SCENE_EPSG).to_wkt() if georef else None,
        transform=transform if georef else None,
    )


def make_record(
    scene: SceneRef, question_id: str = "q1", *, error: str | None = None
) -> AnswerRecord:
    return AnswerRecord(
        question_id=question_id,
        scene=scene,
        question="How many ships are in the harbour?",
        answer="3",
        model_id="tiny-llava",
        preset="default",
        preset_params={"keep_ratio": 0.25},
        evidence_tiles=(
            TileEvidence(dip_level=1, tile_rc=(0, 0), bbox_px=(0, 0, 500, 350), score=0.6),
            TileEvidence(
                dip_level=2, tile_rc=(0, 1), bbox_px=(250, 0, 500, 175), score=0.7, is_final=True
            ),
            TileEvidence(
                dip_level=2, tile_rc=(1, 1), bbox_px=(250, 175, 500, 350), score=0.2, is_final=True
            ),
            TileEvidence(
                dip_level=2, tile_rc=(3, 3), bbox_px=(750, 525, 1000, 700), score=0.1, is_final=True
            ),
        ),
        evidence_tokens=tuple(
            TokenEvidence(
                dip_level=2, grid_rc=(0, i), bbox_px=(250 + 10 * i, 0, 260 + 10 * i, 10), score=s
            )
            for i, s in enumerate([0.1, 0.5, 0.3])
        ),
        heatmap=HeatMap(values=tuple(np.linspace(0.0, 1.0, 12).tolist()), shape_hw=(3, 4)),
        accounting=Accounting(
            vision_tiles_encoded=5,
            tokens_per_level=(576, 1152),
            vision_tokens_to_llm=700,
            llm_text_tokens=20,
            llm_prefill_tokens=720,
            decode_steps=2,
            flops=FlopCount(vision_flops=1e9, llm_flops=2e9, rfm_flops=1e7),
            seconds={"read": 0.1, "total": 1.5},
        ),
        error=error,
    )


class FakePyramid:
    """Test double for the thumbnail part of raster.pyramid.Pyramid: a real gradient image."""

    def __init__(self, size_wh: tuple[int, int] = (SCENE_WIDTH_PX, SCENE_HEIGHT_PX)) -> None:
        self.size_wh = size_wh

    def thumbnail(self, *, max_side_px: int) -> np.ndarray:
        scale = max_side_px / max(self.size_wh)
        w, h = round(self.size_wh[0] * scale), round(self.size_wh[1] * scale)
        cols = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        rows = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        grey = ((rows + cols) / 2).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)


def expected_crs_corners(transform, bbox_px):
    aff = Affine(*transform)
    x0, y0, x1, y1 = bbox_px
    return np.array([aff @ (x0, y0), aff @ (x1, y0), aff @ (x1, y1), aff @ (x0, y1)])


@pytest.mark.parametrize("transform", [NORTH_UP, rotated_transform()], ids=["north-up", "rotated"])
def test_record_geometries_follow_the_full_affine(transform) -> None:
    record = make_record(make_scene(transform))
    rows = record_geometries(record, top_tokens=2)
    tiles = [r for r in rows if r.kind == "tile"]
    tokens = [r for r in rows if r.kind == "token"]
    assert [t.index_rc for t in tiles] == [(0, 1), (1, 1), (3, 3)]  # final level only
    assert [t.score for t in tokens] == [0.5, 0.3]  # top-2 by score
    to_lonlat = Transformer.from_crs(f"EPSG:{SCENE_EPSG}", "EPSG:4326", always_xy=True)
    for row in rows:
        corners = expected_crs_corners(transform, row.bbox_px)
        np.testing.assert_allclose(np.asarray(row.geometry_crs.exterior.coords)[:4], corners)
        assert row.geometry_px.bounds == pytest.approx(row.bbox_px)
        for x, y in corners:  # every scene-CRS corner lands on the lon/lat ring
            lon, lat = to_lonlat.transform(x, y)
            ring = np.asarray(row.geometry_lonlat.exterior.coords)
            assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-9
    if transform != NORTH_UP:  # a rotated tile is not axis-aligned in the scene CRS
        poly = tiles[0].geometry_crs
        assert poly.area == pytest.approx(250 * 175 * SCENE_PIXEL_SIZE_M**2)
        assert poly.envelope.area > poly.area * 1.2


def test_record_geometries_without_georeference_keep_pixels() -> None:
    rows = record_geometries(make_record(make_scene(georef=False)))
    assert rows and all(r.geometry_crs is None and r.geometry_lonlat is None for r in rows)
    assert rows[0].geometry_px.equals(Polygon([(250, 0), (500, 0), (500, 175), (250, 175)]))


def test_bad_crs_is_a_georeference_error() -> None:
    scene = SceneRef(
        scene_id="s", store="s.zarr", size_wh=(10, 10), crs_wkt="NOT A CRS", transform=NORTH_UP
    )
    with pytest.raises(GeoreferenceError, match="cannot be parsed"):
        record_geometries(make_record(scene))


def test_geoparquet_georeferenced_round_trip(tmp_path: Path) -> None:
    records = [
        make_record(make_scene(), "q1"),
        make_record(make_scene(rotated_transform(), scene_id="rot"), "q2"),
    ]
    path = write_geoparquet(records, tmp_path / "answers.parquet")
    frame = geopandas.read_parquet(path)
    assert frame.crs.to_epsg() == 4326
    assert list(frame["question_id"]) == ["q1", "q2"]
    assert frame.loc[0, "total_flops"] == pytest.approx(3.01e9)
    assert frame.loc[0, "seconds_total"] == 1.5 and math.isnan(frame.loc[0, "seconds_vision"])
    assert json.loads(frame.loc[0, "tokens_per_level"]) == [576, 1152]
    evidence = json.loads(frame.loc[0, "evidence_json"])
    assert len(evidence["tiles"]) == 4 and len(evidence["tokens"]) == 3
    # geometry = union of the 3 final tiles: two adjacent ones merge, the far one stays apart
    assert frame.geometry[0].geom_type == "MultiPolygon" and len(frame.geometry[0].geoms) == 2
    lon, lat = Transformer.from_crs(f"EPSG:{SCENE_EPSG}", "EPSG:4326", always_xy=True).transform(
        *SCENE_ORIGIN_XY
    )
    assert frame.geometry[0].bounds[1] < lat and frame.geometry[0].bounds[0] > lon
    assert frame["geometry_px"].iloc[0].bounds == pytest.approx((250, 0, 1000, 700))
    assert AnswerRecord.from_dict(json.loads(frame.loc[1, "record_json"])) == records[1]
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    assert geo["version"].startswith("1.")
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 4326


def test_geoparquet_without_georeference_is_in_pixels(tmp_path: Path) -> None:
    path = write_geoparquet([make_record(make_scene(georef=False))], tmp_path / "a.parquet")
    frame = geopandas.read_parquet(path)
    # the EPSG:4326 column never holds a pixel box: null here; pixels live in geometry_px
    assert frame.crs.to_epsg() == 4326 and frame.geometry.isna()[0]
    assert frame["geometry_px"].crs is None and not frame.loc[0, "is_georeferenced"]
    assert frame["geometry_px"].iloc[0].bounds == pytest.approx((250, 0, 1000, 700))
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert geo["columns"]["geometry_px"]["crs"] is None  # explicit: not GeoParquet's CRS84 default
    assert frame.loc[0, "footprint_scene_wkt"] is None or frame["footprint_scene_wkt"].isna()[0]


def test_geojson_is_a_valid_feature_collection(tmp_path: Path) -> None:
    records = [
        make_record(make_scene(), "q1"),
        make_record(make_scene(georef=False, scene_id="png"), "q2"),
    ]
    path = write_geojson(records, tmp_path / "answers.geojson")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    kinds = [(f["properties"]["question_id"], f["properties"]["kind"]) for f in data["features"]]
    assert kinds.count(("q1", "answer")) == 1 and kinds.count(("q1", "tile")) == 3
    assert kinds.count(("q1", "token")) == 3
    for feature in data["features"]:
        assert feature["type"] == "Feature" and set(feature) == {"type", "geometry", "properties"}
        props = feature["properties"]
        if props["question_id"] == "q2":
            assert feature["geometry"] is None  # no georeference: pixel boxes only
            assert props["bbox_px"] is not None
            continue
        geom = shape(feature["geometry"])
        assert geom.is_valid
        lon_min, lat_min, lon_max, lat_max = geom.bounds
        assert 14 < lon_min < lon_max < 16 and 41 < lat_min < lat_max < 42
        polys = [geom] if geom.geom_type == "Polygon" else list(geom.geoms)
        assert all(p.exterior.is_ccw for p in polys)  # RFC 7946 right-hand rule
    frame = geopandas.read_file(path)  # GDAL's GeoJSON driver accepts it
    assert len(frame) == len(data["features"])


def test_overlay_png_draws_heat_and_tiles(tmp_path: Path) -> None:
    record = make_record(make_scene())
    path = write_overlay_png(
        record, FakePyramid(), tmp_path / "o.png", max_side_px=200, annotated=False
    )
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (140, 200, 3)
    plain = FakePyramid().thumbnail(max_side_px=200)
    changed = np.any(image != plain, axis=2)
    assert changed.mean() > 0.3  # heat map blended over most of the scene
    # final tile (0, 1) spans x 250..500 px -> 50..100 thumb px; its top-left corner is outlined
    assert tuple(image[1, 51]) != tuple(plain[1, 51])
    no_heat = AnswerRecord.from_dict({**record.to_dict(), "heatmap": None})
    bare = np.asarray(
        Image.open(
            write_overlay_png(
                no_heat, FakePyramid(), tmp_path / "b.png", max_side_px=200, annotated=False
            )
        )
    )
    assert np.array_equal(bare[70, 20], plain[70, 20])  # away from every outline, untouched


def test_overlay_rejects_the_wrong_pyramid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="size_wh"):
        write_overlay_png(make_record(make_scene()), FakePyramid((10, 10)), tmp_path / "x.png")


@pytest.mark.parametrize("georef", [True, False])
def test_heatmap_cog_is_aligned_with_the_scene(tmp_path: Path, georef: bool) -> None:
    record = make_record(make_scene(rotated_transform() if georef else NORTH_UP, georef=georef))
    path = write_heatmap_cog(record, FakePyramid(), tmp_path / "heat.tif")
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (src.height, src.width) == (3, 4)
        values = src.read(1)
        # the heat map's far corner is the scene's far corner
        far = src.transform @ (4, 3)
        scene_aff = Affine(*record.scene.transform) if georef else Affine.identity()
        np.testing.assert_allclose(far, scene_aff @ (SCENE_WIDTH_PX, SCENE_HEIGHT_PX))
        assert (src.crs is not None) == georef
    assert values.ravel() == pytest.approx(record.heatmap.values)


def test_batch_writer_appends_parts_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    writer = BatchWriter(out, overlay_side_px=64)
    first = writer.append(
        [make_record(make_scene(), "q1"), make_record(make_scene(), "q2")], pyramid=FakePyramid()
    )
    part0 = Path(first).read_bytes()
    assert answered_ids(out) == {"q1", "q2"}
    # a resumed run (new writer) adds a part and never touches the first one
    again = BatchWriter(out, overlay_side_px=64)
    again.append(
        [make_record(make_scene(), "q3"), make_record(make_scene(), "q4", error="model failed")]
    )
    parts = sorted(p.name for p in (out / "answers.parquet").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet"]
    assert Path(first).read_bytes() == part0
    assert answered_ids(out) == {"q1", "q2", "q3"}
    assert answered_ids(out, include_failed=True) == {"q1", "q2", "q3", "q4"}
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["q1.png", "q2.png"]
    # the retried question succeeds later: geojson keeps one answer per question, the good one
    again.append([make_record(make_scene(), "q4")])
    path = again.finalize()
    features = json.loads(Path(path).read_text())["features"]
    answers = [f["properties"] for f in features if f["properties"]["kind"] == "answer"]
    assert sorted(a["question_id"] for a in answers) == ["q1", "q2", "q3", "q4"]
    assert all(a["error"] is None for a in answers)
    assert not list(out.rglob("*.tmp"))
    frame = geopandas.read_parquet(out / "answers.parquet")  # the parts read as one dataset
    assert len(frame) == 5 and frame.crs.to_epsg() == 4326


def test_batch_writer_on_an_fsspec_url() -> None:
    url = "memory://lrs-test-batch"
    writer = BatchWriter(url)
    writer.append([make_record(make_scene(georef=False), "q1")])
    assert answered_ids(url) == {"q1"}
    assert [r.question_id for r in read_records(url)] == ["q1"]
    import fsspec

    with fsspec.open(f"{url}/answers.geojson", "r") as handle:
        assert json.load(handle)["type"] == "FeatureCollection"
    fsspec.filesystem("memory").rm("/lrs-test-batch", recursive=True)


def test_answered_ids_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert answered_ids(tmp_path / "nothing-yet") == set()


def test_outputs_with_a_real_pyramid(ingested_store: Path, tmp_path: Path) -> None:
    from lrs_core.raster.pyramid import open_pyramid

    pyramid = open_pyramid(ingested_store)
    record = make_record(pyramid.scene_ref())
    rows = record_geometries(record)
    for row in rows:  # the same footprint as the pyramid's own pixel -> CRS mapping
        assert row.geometry_crs.equals_exact(pyramid.footprint(row.bbox_px), 1e-6) or (
            row.geometry_crs.symmetric_difference(pyramid.footprint(row.bbox_px)).area < 1e-6
        )
    path = write_overlay_png(
        record, pyramid, tmp_path / "real.png", max_side_px=100, annotated=False
    )
    image = np.asarray(Image.open(path))
    assert image.shape == (70, 100, 3)
    cog = write_heatmap_cog(record, pyramid, tmp_path / "heat.tif")
    with rasterio.open(cog) as src:
        assert src.crs.to_epsg() == SCENE_EPSG


def test_a_flat_heat_map_leaves_the_scene_visible(tmp_path: Path) -> None:
    record = make_record(make_scene())
    flat = AnswerRecord.from_dict(
        {**record.to_dict(), "heatmap": {"values": [0.5] * 12, "shape_hw": [3, 4]}}
    )
    image = np.asarray(
        Image.open(
            write_overlay_png(
                flat, FakePyramid(), tmp_path / "f.png", max_side_px=200, annotated=False
            )
        )
    )
    plain = FakePyramid().thumbnail(max_side_px=200)
    assert np.array_equal(image[70, 20], plain[70, 20])  # no heat drawn over a flat map
    ramp = AnswerRecord.from_dict(
        {**record.to_dict(), "heatmap": {"values": [0.1] * 11 + [0.1001], "shape_hw": [3, 4]}}
    )
    heat = np.asarray(
        Image.open(
            write_overlay_png(
                ramp, FakePyramid(), tmp_path / "r.png", max_side_px=200, annotated=False
            )
        )
    )
    # min-max normalised: the lone high cell (bottom-right) is tinted, the low top-left is not
    assert np.array_equal(heat[5, 5], plain[5, 5])
    assert not np.array_equal(heat[135, 195], plain[135, 195])
