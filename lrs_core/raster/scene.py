"""Open any raster scene, map its bands to RGB uint8, and place its pixels on the map.

Pixel rule (the whole project follows it): pixel coordinates are ``(x, y)`` = ``(col, row)`` with
(0, 0) the top-left *corner* of the top-left pixel; pixel centres sit at +0.5, so the centre of the
pixel in row ``r``, column ``c`` is ``(c + 0.5, r + 0.5)``. A scene's affine maps pixel corners to
its CRS: ``x_map = a*x + b*y + c``, ``y_map = d*x + e*y + f`` (rasterio / ``affine`` order), and
footprints always go through the full affine, so rotated and sheared grids are exact.

A scene without a CRS (a plain PNG/JPEG/TIFF), or with a CRS but no geotransform, is *not
georeferenced*: its transform is the identity on pixels, its geographic fields are None, and
:class:`~lrs_core.errors.NotGeoreferencedWarning` is issued once by the ingest. A scene with
ground control points only keeps a georeference: an affine fitted to its GCPs (recorded as such).

Band mapping (1-based band indices, as GDAL numbers them): one band is replicated to grey RGB;
three or more bands map the bands tagged red/green/blue, else the first three, unless the caller
picks bands; an alpha band (colour interpretation ``alpha``) becomes part of the validity mask.
Values that are not uint8 are stretched per band from the ``(low, high)`` percentiles of a coarse
sample of valid pixels to 0..255.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.transform import Affine, from_gcps
from rasterio.windows import Window
from shapely.geometry import Polygon

from lrs_core.errors import GeoreferenceError, SceneNotFoundError, SceneReadError
from lrs_core.records import BBoxPx

log = logging.getLogger(__name__)

#: Number of RGB channels every scene is mapped to.
RGB_CHANNELS = 3
#: Largest uint8 value; the top of the stretched range.
UINT8_MAX = 255
#: Points inserted along each footprint edge before reprojecting to EPSG:4326 (curved edges).
FOOTPRINT_EDGE_POINTS = 16
#: EPSG code of longitude/latitude on WGS 84.
LONLAT_EPSG = 4326
#: Fewest ground control points an affine is fitted from (3 fix an affine; more are averaged).
MIN_GCPS = 3
#: Where a scene's transform comes from (see :attr:`SceneInfo.georeference`).
Georeference = Literal["geotransform", "gcps", "none"]
#: Numeric dtypes the ingest maps to uint8 (uint8 as is, the others through the stretch).
SUPPORTED_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
)


@dataclass(frozen=True, kw_only=True)
class Stretch:
    """How source values become uint8: ``out = clip((v - low) * 255 / (high - low), 0, 255)``.

    Attributes:
        method: ``"none"`` (uint8 copied as is) or ``"percentile"`` (per-band linear stretch).
        low_pct: lower percentile of valid sample values (percentile method only).
        high_pct: upper percentile of valid sample values (percentile method only).
        low: per selected band, the source value mapped to 0.
        high: per selected band, the source value mapped to 255.
        sample_hw: (rows, cols) of the coarse sample the percentiles came from; (0, 0) for none.
    """

    method: str
    low_pct: float = 0.0
    high_pct: float = 100.0
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    sample_hw: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        """Return the stretch as JSON-serialisable values (written into the store metadata)."""
        return {
            "method": self.method,
            "low_pct": self.low_pct,
            "high_pct": self.high_pct,
            "low": list(self.low),
            "high": list(self.high),
            "sample_hw": list(self.sample_hw),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stretch:
        """Rebuild a stretch written by :meth:`to_dict`."""
        return cls(
            method=str(data["method"]),
            low_pct=float(data["low_pct"]),
            high_pct=float(data["high_pct"]),
            low=tuple(float(v) for v in data["low"]),
            high=tuple(float(v) for v in data["high"]),
            sample_hw=(int(data["sample_hw"][0]), int(data["sample_hw"][1])),
        )


@dataclass(frozen=True, kw_only=True)
class SceneInfo:
    """What the ingest needs to know about a source raster, read from its header.

    Attributes:
        path: the source file.
        size_wh: (width, height) in pixels.
        band_count: number of bands in the file.
        dtype: numpy dtype name of the bands (``"uint8"``, ``"uint16"``, ``"float32"`` ...).
        band_map: 1-based source bands mapped to (R, G, B); one band is replicated three times.
        alpha_band: 1-based alpha band, or None.
        nodata: the file's nodata value, or None.
        has_dataset_mask: True when the file carries an internal per-dataset mask band.
        crs_wkt: WKT2 of the CRS, or None when not georeferenced.
        epsg: EPSG code of the CRS when it has one.
        transform: level-0 affine, pixel corners -> scene CRS; identity when not georeferenced.
        is_georeferenced: True when the file has a CRS and a geotransform (or GCPs a transform
            was fitted from).
        driver: GDAL driver short name (``"GTiff"``, ``"PNG"`` ...).
        georeference: where the transform comes from: ``"geotransform"`` (the file's own),
            ``"gcps"`` (fitted from the file's ground control points) or ``"none"``.
        georeference_note: one line on the georeference, for metadata and warnings (why there is
            none, or how well the GCP fit holds).
    """

    path: Path
    size_wh: tuple[int, int]
    band_count: int
    dtype: str
    band_map: tuple[int, int, int]
    alpha_band: int | None
    nodata: float | None
    has_dataset_mask: bool
    crs_wkt: str | None
    epsg: int | None
    transform: Affine
    is_georeferenced: bool
    driver: str
    georeference: Georeference = "geotransform"
    georeference_note: str = ""

    @property
    def size_hw(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (self.size_wh[1], self.size_wh[0])


def open_raster(path: str | Path) -> DatasetReader:
    """Open a raster for reading, translating every failure into an lrs error.

    Args:
        path: file path of a GeoTIFF, COG, PNG, JPEG, TIFF or any GDAL-readable raster.

    Returns:
        An open rasterio dataset; close it (or use it as a context manager).

    Raises:
        SceneNotFoundError: the file does not exist.
        SceneReadError: the file is empty, not a raster, or cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise SceneReadError(f"{path}: {symlink_problem(path)}; point the link at a raster")
        raise SceneNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise SceneReadError(f"{path}: is a folder, not a raster file")
    if path.stat().st_size == 0:
        raise SceneReadError(f"{path}: zero-byte file; re-copy or re-download the scene")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        detail = " ".join(str(err).split())
        raise SceneReadError(f"{path}: not a readable raster ({detail})") from err


def symlink_problem(path: Path) -> str:
    """Describe why a symlink leads nowhere: ``"a symlink loop"`` or ``"a broken symlink to X"``."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "a symlink loop"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return f"a broken symlink to {os.readlink(path)}"
    return "a symlink"


def _default_band_map(dataset: DatasetReader) -> tuple[tuple[int, int, int], int | None]:
    """Return the (R, G, B) band map and the alpha band of a dataset, both 1-based."""
    interps = list(dataset.colorinterp)
    alpha = next((i + 1 for i, ci in enumerate(interps) if ci == ColorInterp.alpha), None)
    colour = [i + 1 for i in range(dataset.count) if i + 1 != alpha]
    tagged = {ci: i + 1 for i, ci in enumerate(interps)}
    if all(ci in tagged for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return (tagged[ColorInterp.red], tagged[ColorInterp.green], tagged[ColorInterp.blue]), alpha
    if len(colour) >= RGB_CHANNELS:
        return (colour[0], colour[1], colour[2]), alpha
    return (colour[0], colour[0], colour[0]), alpha


def inspect_scene(
    path: str | Path, *, bands: Sequence[int] | None = None, max_pixels: int
) -> SceneInfo:
    """Read a raster's header and decide how its bands become RGB.

    Args:
        path: the source raster.
        bands: 1-based bands to use: one (grey) or three (R, G, B); None picks the default.
        max_pixels: largest accepted width * height; bigger headers are treated as corrupt.

    Returns:
        The scene's :class:`SceneInfo`.

    Raises:
        SceneNotFoundError, SceneReadError: see :func:`open_raster`; also an absurd size, an
            unsupported dtype, or bands that do not exist.
    """
    path = Path(path)
    with open_raster(path) as dataset:
        width, height = dataset.width, dataset.height
        if width <= 0 or height <= 0 or width * height > max_pixels:
            raise SceneReadError(
                f"{path}: header claims {width} x {height} px, more than the {max_pixels} px "
                "limit (IngestConfig.max_scene_pixels); the file is corrupt or needs a bigger limit"
            )
        dtypes = set(dataset.dtypes)
        if len(dtypes) != 1 or not dtypes <= SUPPORTED_DTYPES:
            raise SceneReadError(
                f"{path}: band dtypes {sorted(dtypes)} are not supported; "
                f"use one of {sorted(SUPPORTED_DTYPES)} for all bands"
            )
        band_map, alpha = _default_band_map(dataset)
        if bands is not None:
            if len(bands) not in (1, RGB_CHANNELS):
                raise SceneReadError(f"{path}: --bands needs 1 or 3 bands, got {list(bands)}")
            bad = [b for b in bands if not 1 <= b <= dataset.count]
            if bad:
                raise SceneReadError(
                    f"{path}: bands {bad} do not exist; the file has bands 1..{dataset.count}"
                )
            band_map = (
                (bands[0], bands[0], bands[0])
                if len(bands) == 1
                else (bands[0], bands[1], bands[2])
            )
            if alpha in band_map:
                alpha = None
        flags = dataset.mask_flag_enums[band_map[0] - 1]
        has_dataset_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        nodata = dataset.nodata
        crs, transform, georeference, note = _georeference(dataset)
        crs_wkt = None if crs is None else crs.to_wkt(version="WKT2_2019")
        epsg = None if crs is None else crs.to_epsg()
        return SceneInfo(
            path=path,
            size_wh=(width, height),
            band_count=dataset.count,
            dtype=dtypes.pop(),
            band_map=band_map,
            alpha_band=alpha,
            nodata=None if nodata is None else float(nodata),
            has_dataset_mask=has_dataset_mask,
            crs_wkt=crs_wkt,
            epsg=epsg,
            transform=transform,
            is_georeferenced=crs is not None,
            driver=dataset.driver,
            georeference=georeference,
            georeference_note=note,
        )


def _georeference(dataset: DatasetReader) -> tuple[Any, Affine, Georeference, str]:
    """Return ``(crs, transform, georeference, note)`` of a dataset; crs None when there is none.

    A CRS alone is not a georeference: without a geotransform (GDAL reports the identity) the
    pixels cannot be placed, so such a file counts as not georeferenced. A file with GCPs and no
    geotransform gets an affine fitted to its GCPs (least squares), with the fit's worst residual
    in the note.
    """
    crs = dataset.crs
    transform = dataset.transform
    has_transform = transform != Affine.identity()
    if crs is not None and has_transform:
        return crs, transform, "geotransform", "the file's geotransform"
    gcps, gcp_crs = dataset.gcps
    if gcps and gcp_crs is not None and len(gcps) >= MIN_GCPS:
        fitted = from_gcps(gcps)
        inverse = ~fitted
        residual = max(math.hypot(*np.subtract(inverse @ (g.x, g.y), (g.col, g.row))) for g in gcps)
        note = (
            f"affine fitted from {len(gcps)} GCPs (worst residual {residual:.3g} px; "
            "the GCPs themselves are not kept)"
        )
        return gcp_crs, fitted, "gcps", note
    if crs is not None:
        note = "a CRS but no geotransform (pixels cannot be placed on the map)"
    elif gcps:
        note = f"{len(gcps)} GCPs without a CRS (or fewer than {MIN_GCPS})"
    elif has_transform:
        note = "a geotransform but no CRS"
    else:
        note = "no CRS and no geotransform"
    return None, Affine.identity(), "none", note


def _unique_bands(info: SceneInfo) -> list[int]:
    """1-based bands to read, without repeats, in band_map order."""
    return list(dict.fromkeys(info.band_map))


def read_valid(
    dataset: DatasetReader,
    info: SceneInfo,
    values: np.ndarray,
    *,
    window: Window | None = None,
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Return the validity of each pixel of ``values`` (nodata, NaN, alpha and internal mask).

    A pixel is invalid when all selected bands equal the nodata value, any selected band is NaN,
    its alpha is 0, or the file's internal mask says so.

    Args:
        dataset: the open source raster.
        info: its :class:`SceneInfo`.
        values: (n_bands, h, w) source values of the unique selected bands.
        window: the level-0 pixel window ``values`` came from (None: whole scene).
        out_hw: (h, w) when ``values`` was a decimated read of ``window``.

    Returns:
        bool (h, w); True where the pixel holds data.
    """
    valid = np.ones(values.shape[1:], dtype=bool)
    if info.nodata is not None and not math.isnan(info.nodata):
        valid &= ~np.all(values == values.dtype.type(info.nodata), axis=0)
    if values.dtype.kind == "f":
        valid &= ~np.any(np.isnan(values), axis=0)
    shape = None if out_hw is None else (1, *out_hw)
    if info.alpha_band is not None:
        alpha = dataset.read(
            [info.alpha_band], window=window, out_shape=shape, resampling=Resampling.nearest
        )
        valid &= alpha[0] > 0
    elif info.has_dataset_mask:
        mask = dataset.read_masks(
            [info.band_map[0]], window=window, out_shape=shape, resampling=Resampling.nearest
        )
        valid &= mask[0] > 0
    return valid


def compute_stretch(
    dataset: DatasetReader,
    info: SceneInfo,
    *,
    low_pct: float,
    high_pct: float,
    sample_long_side_px: int,
) -> Stretch:
    """Derive the uint8 stretch from a coarse overview of the scene.

    uint8 scenes are copied as is. Other dtypes get, per selected band, the ``low_pct`` and
    ``high_pct`` percentiles of the valid values of a nearest-neighbour sample whose long side is
    at most ``sample_long_side_px`` (GDAL serves it from internal overviews when the file has them).

    Returns:
        The :class:`Stretch` to apply to every window.
    """
    if info.dtype == "uint8":
        return Stretch(method="none")
    width, height = info.size_wh
    factor = max(1.0, max(width, height) / sample_long_side_px)
    sample_hw = (max(1, round(height / factor)), max(1, round(width / factor)))
    bands = _unique_bands(info)
    values = dataset.read(bands, out_shape=(len(bands), *sample_hw), resampling=Resampling.nearest)
    valid = read_valid(dataset, info, values, out_hw=sample_hw)
    low: dict[int, float] = {}
    high: dict[int, float] = {}
    for index, band in enumerate(bands):
        samples = values[index][valid].astype(np.float64)
        if samples.size == 0:
            low[band], high[band] = 0.0, 1.0
            continue
        lo, hi = np.percentile(samples, [low_pct, high_pct])
        low[band], high[band] = float(lo), float(hi if hi > lo else lo + 1.0)
    return Stretch(
        method="percentile",
        low_pct=low_pct,
        high_pct=high_pct,
        low=tuple(low[b] for b in info.band_map),
        high=tuple(high[b] for b in info.band_map),
        sample_hw=sample_hw,
    )


def read_rgb_window(
    dataset: DatasetReader,
    info: SceneInfo,
    stretch: Stretch,
    window: Window,
    *,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one level-0 window as RGB uint8 with its validity mask.

    Args:
        dataset: the open source raster.
        info: its :class:`SceneInfo`.
        stretch: the scene's :class:`Stretch`.
        window: level-0 pixel window (inside the scene).
        out: optional ``(rgb, valid)`` arrays of the window's (h, w) to fill (saves a copy).

    Returns:
        ``(rgb, valid)``: uint8 (h, w, 3), 0 where invalid; bool (h, w).
    """
    height, width = int(window.height), int(window.width)
    if out is None:
        rgb = np.empty((height, width, RGB_CHANNELS), dtype=np.uint8)
        valid = np.empty((height, width), dtype=bool)
    else:
        rgb, valid = out
    bands = _unique_bands(info)
    if stretch.method == "none" and len(bands) == RGB_CHANNELS:
        # uint8, three distinct bands: GDAL writes them pixel-interleaved straight into rgb
        # (measured 3x faster than reading planes and copying each into a strided channel).
        planes = rgb.transpose(2, 0, 1)
        dataset.read(bands, window=window, out=planes)
        valid[...] = read_valid(dataset, info, planes, window=window)
        if not valid.all():
            rgb[~valid] = 0
        return rgb, valid
    # Each distinct band is read once into a contiguous buffer and replicated in numpy: a band
    # index repeated in one strided read ([1, 1, 1]) let GDAL's decode threads leave channels
    # unwritten (nodata marked valid, pixels painted red; issue 10).
    values = dataset.read(bands, window=window)
    valid[...] = read_valid(dataset, info, values, window=window)
    position = {band: i for i, band in enumerate(bands)}
    if stretch.method == "none":
        for channel, band in enumerate(info.band_map):
            rgb[..., channel] = values[position[band]]
        if not valid.all():
            rgb[~valid] = 0
        return rgb, valid
    for channel, band in enumerate(info.band_map):
        plane = values[position[band]]
        lo, hi = stretch.low[channel], stretch.high[channel]
        scaled = (plane.astype(np.float32) - np.float32(lo)) * np.float32(UINT8_MAX / (hi - lo))
        np.clip(scaled, 0, UINT8_MAX, out=scaled)
        scaled = np.nan_to_num(scaled, nan=0.0)
        rgb[..., channel] = np.rint(scaled).astype(np.uint8)
    if not valid.all():
        rgb[~valid] = 0
    return rgb, valid


def pixel_to_map(transform: Affine, x_px: float, y_px: float) -> tuple[float, float]:
    """Return the scene-CRS ``(x, y)`` of the level-0 pixel point ``(x_px, y_px)`` (corner rule)."""
    x_map, y_map = transform @ (x_px, y_px)
    return (float(x_map), float(y_map))


def map_to_pixel(transform: Affine, x_map: float, y_map: float) -> tuple[float, float]:
    """Return the fractional level-0 pixel point ``(x_px, y_px)`` of a scene-CRS ``(x, y)``."""
    x_px, y_px = ~transform @ (x_map, y_map)
    return (float(x_px), float(y_px))


def footprint_polygon(transform: Affine, bounds_px: BBoxPx) -> Polygon:
    """Return the scene-CRS polygon of a level-0 pixel box through the full affine.

    Args:
        transform: level-0 affine (pixel corners -> scene CRS).
        bounds_px: (x0, y0, x1, y1) level-0 pixel corners.

    Returns:
        A quadrilateral (a parallelogram under rotation/shear), corners in the order top-left,
        top-right, bottom-right, bottom-left of the pixel box.
    """
    x0, y0, x1, y1 = bounds_px
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return Polygon([pixel_to_map(transform, x, y) for x, y in corners])


def polygon_to_lonlat(polygon: Polygon, crs_wkt: str) -> Polygon:
    """Reproject a scene-CRS polygon to EPSG:4326 (lon, lat), densifying its edges first.

    Raises:
        GeoreferenceError: the CRS cannot be parsed or the reprojection fails.
    """
    try:
        transformer = Transformer.from_crs(
            ProjCRS.from_wkt(crs_wkt), ProjCRS.from_epsg(LONLAT_EPSG), always_xy=True
        )
    except (CRSError, ProjError) as err:
        raise GeoreferenceError(
            f"cannot build a transform from {crs_wkt[:60]!r}...: {err}"
        ) from err
    coords = list(polygon.exterior.coords)
    dense: list[tuple[float, float]] = []
    for (xa, ya), (xb, yb) in zip(coords[:-1], coords[1:], strict=True):
        for step in range(FOOTPRINT_EDGE_POINTS):
            t = step / FOOTPRINT_EDGE_POINTS
            dense.append((xa + (xb - xa) * t, ya + (yb - ya) * t))
    xs, ys = transformer.transform([p[0] for p in dense], [p[1] for p in dense])
    if not np.all(np.isfinite(xs)) or not np.all(np.isfinite(ys)):
        raise GeoreferenceError("footprint does not reproject to EPSG:4326 (outside the CRS area)")
    return Polygon(zip(xs, ys, strict=True))


def file_size(path: str | Path) -> int:
    """Size of a file in bytes."""
    return os.stat(path).st_size
