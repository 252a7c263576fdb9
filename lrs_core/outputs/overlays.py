"""Overlay PNGs that stand alone: evidence and heat map on the thumbnail, framed and labelled.

:func:`render_overlay` draws the evidence on the thumbnail (tiles of every DIP level outlined in
that level's colour, the top tokens in magenta, the heat map blended); :func:`annotate_overlay`
frames that picture so it can be read without the record:

* a header with the question, the answer and the preset;
* the corner coordinates of the scene (EPSG:4326, degrees) above and below the picture, when the
  scene is georeferenced;
* a scale bar on the picture (ground metres from pyproj's geodesic, so projected and geographic
  CRSs both work), when georeferenced;
* a legend: the outline colour of each DIP level drawn, the top-token colour, and the heat ramp.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrs_core.errors import ConfigError
from lrs_core.fsio import write_bytes_atomic
from lrs_core.outputs.geometry import DEFAULT_TOP_TOKENS, ThumbnailSource, corner_lonlat
from lrs_core.outputs.heatmaps import HEATMAP_RAMP_RGB, heat_rgba
from lrs_core.records import AnswerRecord, BBoxPx

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

#: Longest side of the thumbnail an overlay is drawn on, in pixels.
DEFAULT_OVERLAY_SIDE_PX = 768
#: Outline width of final-level evidence tiles / of coarser-level tiles / of tokens, in overlay px.
FINAL_TILE_OUTLINE_PX = 3
TILE_OUTLINE_PX = 1
#: Outline colours of the DIP levels (cycled), RGB; level 0 is the thumbnail and has no tiles.
LEVEL_COLOURS_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 200, 255),
    (255, 220, 0),
    (255, 60, 60),
    (120, 255, 80),
)
TOKEN_COLOUR_RGB = (255, 0, 255)
#: Text size of the header, coordinates and legend, in pixels.
FONT_PX = 13
#: Padding around the picture and between blocks, in pixels.
PAD_PX = 8
#: Height of one text line (font plus leading), in pixels.
LINE_PX = FONT_PX + 4
#: Lines of the question and of the answer shown at most (the rest is cut with an ellipsis).
MAX_TEXT_LINES = 3
#: The scale bar spans about this share of the picture's width.
SCALE_BAR_SHARE = 0.25
SCALE_BAR_HEIGHT_PX = 6
#: Sizes of the swatches and of the heat ramp in the legend, in pixels.
SWATCH_PX = 12
RAMP_WIDTH_PX = 100
BACKGROUND_RGB = (255, 255, 255)
TEXT_RGB = (20, 24, 28)
MUTED_RGB = (90, 96, 104)
#: Degrees printed in corner coordinates (1e-5 degree is about 1 m).
COORD_DECIMALS = 5
#: Mantissas of "round" scale-bar lengths.
NICE_STEPS = (1, 2, 5)


def render_overlay(
    record: AnswerRecord, pyramid: ThumbnailSource, *, max_side_px: int = DEFAULT_OVERLAY_SIDE_PX
) -> np.ndarray:
    """Scene thumbnail with the heat map blended and the evidence drawn.

    Tiles of every DIP level are outlined in that level's colour (final-level tiles thicker);
    the top-scored tokens are outlined in magenta.

    Args:
        record: the answer.
        pyramid: the scene's pyramid (its level-0 size must match ``record.scene.size_wh``).
        max_side_px: longest side of the thumbnail.

    Returns:
        uint8 (h, w, 3) RGB image.

    Raises:
        ConfigError: ``max_side_px`` < 1, or the pyramid is not the record's scene.
    """
    from PIL import Image, ImageDraw

    if max_side_px < 1:
        raise ConfigError(f"max_side_px={max_side_px} must be >= 1")
    if tuple(pyramid.size_wh) != tuple(record.scene.size_wh):
        raise ConfigError(
            f"{record.question_id}: pyramid size_wh={tuple(pyramid.size_wh)} differs from the "
            f"record's scene {record.scene.scene_id!r} size_wh={record.scene.size_wh}; pass the "
            f"pyramid of {record.scene.store}"
        )
    thumb = np.asarray(pyramid.thumbnail(max_side_px=max_side_px))
    if thumb.dtype != np.uint8 or thumb.ndim != 3 or thumb.shape[2] != 3:
        raise ConfigError(
            f"thumbnail must be uint8 (h, w, 3); got {thumb.dtype} {thumb.shape} from {pyramid!r}"
        )
    height, width = thumb.shape[:2]
    image = Image.fromarray(thumb, mode="RGB").convert("RGBA")
    heat = heat_rgba(record, (width, height))
    if heat is not None:
        image = Image.alpha_composite(image, Image.fromarray(heat, mode="RGBA"))
    draw = ImageDraw.Draw(image)
    scale_x = width / record.scene.size_wh[0]
    scale_y = height / record.scene.size_wh[1]

    def outline(bbox_px: BBoxPx, colour: tuple[int, int, int], line_px: int) -> None:
        x0, y0, x1, y1 = bbox_px
        box = (
            x0 * scale_x,
            y0 * scale_y,
            max(x0 * scale_x, x1 * scale_x - 1),
            max(y0 * scale_y, y1 * scale_y - 1),
        )
        draw.rectangle(box, outline=(*colour, 255), width=line_px)

    for tile in sorted(record.evidence_tiles, key=lambda t: (t.is_final, t.dip_level)):
        colour = LEVEL_COLOURS_RGB[tile.dip_level % len(LEVEL_COLOURS_RGB)]
        outline(tile.bbox_px, colour, FINAL_TILE_OUTLINE_PX if tile.is_final else TILE_OUTLINE_PX)
    for token in sorted(record.evidence_tokens, key=lambda t: -t.score)[:DEFAULT_TOP_TOKENS]:
        outline(token.bbox_px, TOKEN_COLOUR_RGB, TILE_OUTLINE_PX)
    return np.asarray(image.convert("RGB"))


def write_overlay_png(
    record: AnswerRecord,
    pyramid: ThumbnailSource,
    path: str | os.PathLike[str],
    *,
    max_side_px: int = DEFAULT_OVERLAY_SIDE_PX,
    annotated: bool = True,
) -> Path:
    """Write :func:`render_overlay` as a PNG at ``path`` (local path or fsspec URL); return it.

    With ``annotated`` (the default) the picture is framed with the question, the answer, a
    legend and, for a georeferenced scene, a scale bar and corner coordinates
    (:func:`annotate_overlay`); otherwise it is the bare picture.
    """
    from PIL import Image

    picture = render_overlay(record, pyramid, max_side_px=max_side_px)
    if annotated:
        picture = annotate_overlay(record, picture)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


def _font(size_px: int = FONT_PX) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size_px)


def _wrap(text: str, *, width_px: int, prefix: str) -> list[str]:
    """``prefix + text`` wrapped to ``width_px`` (about 7 px per character), at most a few lines."""
    chars = max(10, width_px // 7)
    flat = " ".join(str(text).split()) or "—"
    lines = textwrap.wrap(prefix + flat, width=chars) or [prefix]
    if len(lines) > MAX_TEXT_LINES:
        lines = lines[:MAX_TEXT_LINES]
        lines[-1] = lines[-1][: max(0, chars - 1)] + "…"
    return lines


def nice_length_m(max_m: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above ``max_m`` (``max_m`` > 0)."""
    exponent = math.floor(math.log10(max_m))
    best = 10.0**exponent
    for step in NICE_STEPS:
        if step * 10.0**exponent <= max_m:
            best = step * 10.0**exponent
    return best


def _format_m(length_m: float) -> str:
    return f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"


def _draw_scale_bar(
    draw: ImageDraw.ImageDraw,
    *,
    corners: dict[str, tuple[float, float]],
    origin_xy: tuple[int, int],
    picture_wh: tuple[int, int],
) -> None:
    """Draw a black-and-white scale bar in the picture's bottom-left corner."""
    from pyproj import Geod

    (lon0, lat0), (lon1, lat1) = corners["ll"], corners["lr"]
    _, _, ground_m = Geod(ellps="WGS84").inv(lon0, lat0, lon1, lat1)
    width, height = picture_wh
    if not ground_m > 0:
        return
    metres_per_px = ground_m / width
    length_m = nice_length_m(metres_per_px * width * SCALE_BAR_SHARE)
    length_px = max(1, round(length_m / metres_per_px))
    x0 = origin_xy[0] + PAD_PX
    y1 = origin_xy[1] + height - PAD_PX
    y0 = y1 - SCALE_BAR_HEIGHT_PX
    label = _format_m(length_m)
    font = _font()
    box = draw.textbbox((x0, y0 - LINE_PX), label, font=font)
    draw.rectangle(
        (x0 - 3, box[1] - 3, max(x0 + length_px, box[2]) + 3, y1 + 3), fill=(*BACKGROUND_RGB, 200)
    )
    half = length_px // 2
    draw.rectangle((x0, y0, x0 + half, y1), fill=(0, 0, 0))
    draw.rectangle((x0 + half, y0, x0 + length_px, y1), fill=BACKGROUND_RGB, outline=(0, 0, 0))
    draw.text((x0, y0 - LINE_PX), label, fill=TEXT_RGB, font=font)


def annotate_overlay(record: AnswerRecord, picture: np.ndarray) -> np.ndarray:
    """Frame an overlay picture with the question, answer, coordinates, scale bar and legend.

    Args:
        record: the answer the picture shows.
        picture: uint8 (h, w, 3) from :func:`render_overlay`.

    Returns:
        uint8 (H, W, 3) RGB, larger than ``picture`` (which is pasted unchanged, but for the
        scale bar drawn on its bottom-left corner).
    """
    from PIL import Image, ImageDraw

    height, width = picture.shape[:2]
    font = _font()
    text_w = max(width, 360)
    header = _wrap(record.question, width_px=text_w, prefix="Q: ")
    header += _wrap(record.answer, width_px=text_w, prefix="A: ")
    header.append(f"preset {record.preset} · model {record.model_id} · {record.question_id}")
    corners = corner_lonlat(record)
    coord_rows = 1 if corners is not None else 0
    legend_rows = 2
    canvas_w = max(width, text_w) + 2 * PAD_PX
    top = PAD_PX + len(header) * LINE_PX + PAD_PX + coord_rows * LINE_PX
    canvas_h = top + height + coord_rows * LINE_PX + PAD_PX + legend_rows * LINE_PX + PAD_PX
    canvas = Image.new("RGB", (canvas_w, canvas_h), BACKGROUND_RGB)
    canvas.paste(Image.fromarray(picture, mode="RGB"), (PAD_PX, top))
    draw = ImageDraw.Draw(canvas, "RGBA")
    y = PAD_PX
    for index, line in enumerate(header):
        colour = MUTED_RGB if index == len(header) - 1 else TEXT_RGB
        draw.text((PAD_PX, y), line, fill=colour, font=font)
        y += LINE_PX
    if corners is not None:

        def label(name: str) -> str:
            lon, lat = corners[name]
            north_south = "N" if lat >= 0 else "S"
            east_west = "E" if lon >= 0 else "W"
            return (
                f"{abs(lat):.{COORD_DECIMALS}f}°{north_south} "
                f"{abs(lon):.{COORD_DECIMALS}f}°{east_west}"
            )

        above, below = top - LINE_PX, top + height + 2
        draw.text((PAD_PX, above), label("ul"), fill=MUTED_RGB, font=font)
        draw.text((PAD_PX + width, above), label("ur"), fill=MUTED_RGB, font=font, anchor="ra")
        draw.text((PAD_PX, below), label("ll"), fill=MUTED_RGB, font=font)
        draw.text((PAD_PX + width, below), label("lr"), fill=MUTED_RGB, font=font, anchor="ra")
        _draw_scale_bar(draw, corners=corners, origin_xy=(PAD_PX, top), picture_wh=(width, height))
    y = top + height + coord_rows * LINE_PX + PAD_PX
    x = PAD_PX
    levels = sorted({tile.dip_level for tile in record.evidence_tiles})
    for dip_level in levels:
        colour = LEVEL_COLOURS_RGB[dip_level % len(LEVEL_COLOURS_RGB)]
        draw.rectangle((x, y, x + SWATCH_PX, y + SWATCH_PX), outline=(0, 0, 0), fill=colour)
        text = f"level {dip_level}"
        draw.text((x + SWATCH_PX + 4, y), text, fill=TEXT_RGB, font=font)
        x += SWATCH_PX + 12 + int(draw.textlength(text, font=font))
    if record.evidence_tokens:
        draw.rectangle((x, y, x + SWATCH_PX, y + SWATCH_PX), outline=TOKEN_COLOUR_RGB, width=2)
        draw.text((x + SWATCH_PX + 4, y), "top tokens", fill=TEXT_RGB, font=font)
    y += LINE_PX
    if record.heatmap is not None:
        stops = np.array([stop for stop, _ in HEATMAP_RAMP_RGB])
        for offset in range(RAMP_WIDTH_PX):
            value = offset / (RAMP_WIDTH_PX - 1)
            rgb = tuple(
                int(np.interp(value, stops, [c[channel] for _, c in HEATMAP_RAMP_RGB]))
                for channel in range(3)
            )
            draw.line((PAD_PX + offset, y, PAD_PX + offset, y + SWATCH_PX), fill=rgb)
        draw.text(
            (PAD_PX + RAMP_WIDTH_PX + 6, y),
            "heat: RFM attention, low to high (final-level tiles drawn thick)",
            fill=TEXT_RGB,
            font=font,
        )
    return np.asarray(canvas)
