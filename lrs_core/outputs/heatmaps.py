"""The RFM heat map of an answer: its colour ramp, the RGBA layer of overlays and a COG.

The ramp and opacity constants here are shared by the overlays (:mod:`lrs_core.outputs.overlays`)
and the heat-map tiles of ``lrs serve`` (:mod:`lrs_core.serve.tiles`), so all three look alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_core.errors import ConfigError
from lrs_core.records import AnswerRecord

if TYPE_CHECKING:
    from lrs_core.outputs.geometry import ThumbnailSource

#: Opacity of the heat map at its (min-max normalised) maximum; 0 leaves the thumbnail as it is.
HEATMAP_MAX_ALPHA = 0.6
#: Opacity grows as ``HEATMAP_MAX_ALPHA * v**HEATMAP_ALPHA_GAMMA`` of the normalised value ``v``,
#: so low-attention areas stay see-through and the scene stays readable under a flat heat map.
HEATMAP_ALPHA_GAMMA = 2.0
#: Heat maps whose max - min is below this are flat: nothing to show, no heat is drawn.
HEATMAP_FLAT_RANGE = 1e-6
#: Perceptual colour ramp of the heat map (matplotlib's "inferno" sampled at 0, 0.25, ... 1), as
#: (normalised value, RGB) stops interpolated linearly.
HEATMAP_RAMP_RGB: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)


def heat_rgba(record: AnswerRecord, size_wh: tuple[int, int]) -> np.ndarray | None:
    """Return the uint8 (h, w, 4) heat layer at ``size_wh``; None without a heat map.

    The values are min-max normalised to ``v`` in [0, 1], coloured with :data:`HEATMAP_RAMP_RGB`
    and given alpha ``HEATMAP_MAX_ALPHA * v**HEATMAP_ALPHA_GAMMA``; a flat map (range below
    :data:`HEATMAP_FLAT_RANGE`) is fully transparent.
    """
    from PIL import Image

    heat = record.heatmap
    if heat is None:
        return None
    rows, cols = heat.shape_hw
    if rows * cols != len(heat.values) or rows <= 0 or cols <= 0:
        raise ConfigError(
            f"{record.question_id}: heat map shape_hw={heat.shape_hw} does not hold "
            f"{len(heat.values)} values; the record is malformed"
        )
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    low, high = float(values.min()), float(values.max())
    if not high - low >= HEATMAP_FLAT_RANGE:  # also catches NaN
        return np.zeros((size_wh[1], size_wh[0], 4), dtype=np.uint8)
    values = (values - low) / (high - low)
    resized = np.clip(
        np.asarray(
            Image.fromarray(values, mode="F").resize(size_wh, resample=Image.Resampling.BILINEAR)
        ),
        0.0,
        1.0,
    )
    stops = np.array([stop for stop, _ in HEATMAP_RAMP_RGB], dtype=np.float32)
    layer = np.zeros((size_wh[1], size_wh[0], 4), dtype=np.uint8)
    for channel in range(3):
        ramp = np.array([rgb[channel] for _, rgb in HEATMAP_RAMP_RGB], dtype=np.float32)
        layer[..., channel] = np.interp(resized, stops, ramp).astype(np.uint8)
    alpha = HEATMAP_MAX_ALPHA * resized**HEATMAP_ALPHA_GAMMA
    layer[..., 3] = np.clip(255 * alpha, 0, 255).astype(np.uint8)
    return layer


def write_heatmap_cog(
    record: AnswerRecord, pyramid: ThumbnailSource, path: str | os.PathLike[str]
) -> Path:
    """Write the heat map as a float32 Cloud-Optimized GeoTIFF aligned with the scene.

    Cell (r, c) of the heat map covers level-0 pixels ``[c*W/w, (c+1)*W/w) x [r*H/h, (r+1)*H/h)``,
    so the COG's affine is the scene's level-0 affine scaled by ``(W/w, H/h)``, in the scene CRS.
    A scene without georeference gets that scaling in pixel units and no CRS.

    Args:
        record: the answer; must have a heat map.
        pyramid: the scene's pyramid (checked against ``record.scene.size_wh``).
        path: local path of the ``.tif`` to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: the record has no heat map, or the pyramid is not its scene.
    """
    import rasterio
    from rasterio.transform import Affine

    heat = record.heatmap
    if heat is None:
        raise ConfigError(f"{record.question_id}: the record has no heat map to write as a COG")
    if tuple(pyramid.size_wh) != tuple(record.scene.size_wh):
        raise ConfigError(
            f"{record.question_id}: pyramid size_wh={tuple(pyramid.size_wh)} differs from the "
            f"record's scene size_wh={record.scene.size_wh}"
        )
    rows, cols = heat.shape_hw
    values = np.asarray(heat.values, dtype=np.float32).reshape(rows, cols)
    width_px, height_px = record.scene.size_wh
    scale = Affine.scale(width_px / cols, height_px / rows)
    # SceneRef.transform is (a, b, c, d, e, f) of x = a*col + b*row + c: Affine's own order.
    base = (
        Affine(*record.scene.transform) if record.scene.transform is not None else Affine.identity()
    )
    profile: dict[str, Any] = {
        "driver": "COG",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": "float32",
        "transform": base @ scale,
    }
    if record.scene.crs_wkt is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(record.scene.crs_wkt)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values, 1)
    return Path(path)
