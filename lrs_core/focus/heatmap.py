"""RFM attention splatted onto a coarse raster over the whole scene (a ``HeatMap``).

Each scored level contributes its tokens' probabilities, divided by that level's largest one (so
levels with different token counts are comparable), written into every cell a token's footprint
overlaps. A cell takes the value of the finest level that scored it (coarser levels fill the
rest); within one level, overlapping tokens combine by maximum. Cells no level scored stay 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lrs_core.dip.plan import DipLevel
from lrs_core.errors import ConfigError
from lrs_core.records import HeatMap

#: Cells along the scene's long side of the default heat map.
DEFAULT_HEATMAP_CELLS = 64


def heatmap_shape_hw(image_hw: tuple[int, int], *, long_side_cells: int) -> tuple[int, int]:
    """Return (rows, cols) of a raster with ``long_side_cells`` along the scene's long side."""
    if long_side_cells < 1:
        raise ConfigError(f"long_side_cells={long_side_cells} must be >= 1")
    height, width = image_hw
    scale = long_side_cells / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def splat_levels(
    scored: Sequence[tuple[DipLevel, npt.NDArray[np.float32], npt.NDArray[np.bool_]]],
    *,
    image_hw: tuple[int, int],
    long_side_cells: int = DEFAULT_HEATMAP_CELLS,
) -> HeatMap:
    """Return the heat map of RFM scores of several levels, coarse first.

    Args:
        scored: per level (coarse to fine): the level, float (Ht, Wt) token scores and bool (Ht, Wt)
            which tokens were scored.
        image_hw: (H, W) of the scene at level 0.
        long_side_cells: cells along the long side.

    Returns:
        The :class:`HeatMap` (row-major values in [0, 1]).
    """
    rows_n, cols_n = heatmap_shape_hw(image_hw, long_side_cells=long_side_cells)
    height, width = image_hw
    cell_h, cell_w = height / rows_n, width / cols_n
    out = np.zeros((rows_n, cols_n), dtype=np.float32)
    for level, scores, valid in scored:
        rows, cols = np.nonzero(valid)
        if rows.size == 0:
            continue
        values = scores[rows, cols].astype(np.float32)
        top = float(values.max())
        if top <= 0:
            continue
        values = values / top
        layer = np.full((rows_n, cols_n), -1.0, dtype=np.float32)
        for row, col, value in zip(rows.tolist(), cols.tolist(), values.tolist(), strict=True):
            x0, y0, x1, y1 = level.token_bbox_px((row, col))
            r0 = min(rows_n - 1, int(y0 // cell_h))
            c0 = min(cols_n - 1, int(x0 // cell_w))
            r1 = max(r0 + 1, min(rows_n, math.ceil(y1 / cell_h)))
            c1 = max(c0 + 1, min(cols_n, math.ceil(x1 / cell_w)))
            block = layer[r0:r1, c0:c1]
            np.maximum(block, value, out=block)
        written = layer >= 0
        out[written] = layer[written]
    return HeatMap(values=tuple(float(v) for v in out.reshape(-1)), shape_hw=(rows_n, cols_n))
