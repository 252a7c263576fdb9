"""Pixels of world scenes, rendered window by window, and their tiled GeoTIFF files.

:func:`render_window` draws any level-0 pixel window of a :class:`WorldScene` from its description
alone, so a 16,384-px scene is written in strips of rows with memory bounded by one strip
(:func:`write_scene_geotiff`). Rendering is deterministic: the texture noise is a hash of the pixel
position and the scene seed, so the same scene always gives the same bytes, whatever the windows.

Pixel rule: pixel (row, col) covers ``[col, col + 1) x [row, row + 1)`` in level-0 pixel
coordinates, and its value is the scene sampled at its centre ``(col + 0.5, row + 0.5)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from lrs_core.world.generate import WorldScene
from lrs_core.world.vocabulary import BACKGROUNDS, COLORS, WAKE_RGB, WATER

UInt8Array = npt.NDArray[np.uint8]

#: Amplitude of the per-pixel texture noise, intensity levels (uint8 scale).
NOISE_LEVELS = 24
#: Background base colours, int16 (n_backgrounds, 3), label order.
_BACKGROUND_RGB = np.asarray([b.rgb for b in BACKGROUNDS], dtype=np.int16)


def _noise(
    xs: npt.NDArray[np.int64], ys: npt.NDArray[np.int64], seed: int
) -> npt.NDArray[np.int16]:
    """Int16 (h, w) hash noise in ``[-NOISE_LEVELS/2, NOISE_LEVELS/2)`` of integer pixel indices."""
    with np.errstate(over="ignore"):
        h = (
            xs.astype(np.uint32) * np.uint32(374_761_393)
            + ys.astype(np.uint32) * np.uint32(668_265_263)
            + np.uint32(seed * 1_442_695_041 % 2**32)
        )
        h = (h ^ (h >> np.uint32(13))) * np.uint32(1_274_126_177)
        h = h ^ (h >> np.uint32(16))
    return ((h % np.uint32(NOISE_LEVELS)).astype(np.int16) - NOISE_LEVELS // 2).astype(np.int16)


def render_window(scene: WorldScene, *, rows: tuple[int, int], cols: tuple[int, int]) -> UInt8Array:
    """Return uint8 (h, w, 3) RGB of the level-0 window ``rows`` x ``cols`` (half-open).

    Args:
        scene: the scene.
        rows: (row_start, row_stop) level-0 pixel rows, inside the scene.
        cols: (col_start, col_stop) level-0 pixel columns, inside the scene.
    """
    (r0, r1), (c0, c1) = rows, cols
    row_idx = np.arange(r0, r1, dtype=np.int64)[:, None]
    col_idx = np.arange(c0, c1, dtype=np.int64)[None, :]
    ys = np.broadcast_to(row_idx + 0.5, (r1 - r0, c1 - c0))
    xs = np.broadcast_to(col_idx + 0.5, (r1 - r0, c1 - c0))
    labels = scene.background_at(xs, ys)
    rgb = _BACKGROUND_RGB[labels]
    parcel_r = np.clip(row_idx // 128, 0, scene.tints.shape[0] - 1)
    parcel_c = np.clip(col_idx // 128, 0, scene.tints.shape[1] - 1)
    tint = np.where(labels == WATER, 0, scene.tints[parcel_r, parcel_c])
    noise = _noise(
        np.broadcast_to(col_idx, labels.shape), np.broadcast_to(row_idx, labels.shape), scene.seed
    )
    rgb = rgb + (tint + noise)[..., None]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.wake_hbox()
        if x1 <= c0 or x0 >= c1 or y1 <= r0 or y0 >= r1:
            continue
        rr0, rr1 = max(r0, int(np.floor(y0))), min(r1, int(np.ceil(y1)) + 1)
        cc0, cc1 = max(c0, int(np.floor(x0))), min(c1, int(np.ceil(x1)) + 1)
        sub_y = ys[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        sub_x = xs[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        view = rgb[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
        wake = obj.wake_contains(sub_x, sub_y)
        if wake.any():
            view[wake] = np.asarray(WAKE_RGB, dtype=np.int16)
        body = obj.contains(sub_x, sub_y)
        if body.any():
            sub_noise = noise[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0][body] // 3
            view[body] = np.asarray(COLORS[obj.color], dtype=np.int16) + sub_noise[:, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render_scene(scene: WorldScene) -> UInt8Array:
    """Return uint8 (H, W, 3): the whole scene in memory (small scenes and tests only)."""
    width, height = scene.size_wh
    return render_window(scene, rows=(0, height), cols=(0, width))


def write_scene_geotiff(scene: WorldScene, path: str | Path) -> Path:
    """Write the scene as a tiled, deflate-compressed RGB GeoTIFF (EPSG:32633), strip by strip.

    The file goes through ``<name>.partial`` and is renamed when complete; memory stays at one strip
    of rows (see :func:`lrs_core.evaluation.synth.write_geotiff_streaming`).

    Returns:
        The path written.
    """
    from lrs_core.evaluation.synth import write_geotiff_streaming

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    width, _ = scene.size_wh

    def render(row_start: int, row_stop: int) -> UInt8Array:
        return render_window(scene, rows=(row_start, row_stop), cols=(0, width))

    write_geotiff_streaming(out, scene.size_wh, render)
    return out
