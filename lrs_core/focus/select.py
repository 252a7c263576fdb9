"""Model-free rules of the coarse-to-fine loop: which tiles to zoom into, which tokens to keep.

Pure numpy over token grids of :class:`~lrs_core.dip.plan.DipLevel` (``grid_rc`` = (row, col) in a
level's
unpadded token grid; the newline column is ``Wt``). Ties in scores are broken by raster order
(stable sorts), so a run is deterministic.

Two selection rules (spec §5.2, §11.6):

* :func:`select_tiles_parity`: the reference. Top ``ratio`` of *all* keys (newline tokens included),
  union every newline token, map through ``floor(r * hb / Ht), floor(c * wb / (Wt + 1))``, keep
  every
  tile hit, row-major. The newline column maps to the last tile column, which is therefore always
  selected.
* :func:`select_tiles_ranked`: ours. Top ``ratio`` of the valid image tokens (no newline), each
  mapped through its footprint centre to the tile of the next level holding it; tiles ranked by the
  attention mass of the selected tokens they hold, optional neighbour expansion, optional cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lrs_core.dip.plan import DipLevel, map_tokens_to_next_level_parity, map_tokens_to_tiles
from lrs_core.errors import ConfigError

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
TileRc = tuple[int, int]


def top_indices(scores: FloatArray, count: int) -> IntArray:
    """Return the indices of the ``count`` largest scores, best first (ties: lower index first).

    Args:
        scores: float (n,).
        count: how many (clipped to 0..n).

    Returns:
        int64 (min(count, n),).
    """
    count = max(0, min(int(count), scores.shape[0]))
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return order[:count].astype(np.int64)


@dataclass(frozen=True)
class TileChoice:
    """Tiles of the next level chosen for a zoom step.

    Attributes:
        tiles_rc: chosen (row, col) tiles, in the order the rule ranks them.
        mass: attention mass per chosen tile (sum of the selecting tokens' scores; 0 for tiles
            added only by neighbour expansion), aligned with ``tiles_rc``.
        n_selected_tokens: tokens whose footprints picked the tiles.
    """

    tiles_rc: list[TileRc]
    mass: list[float]
    n_selected_tokens: int


def select_tiles_parity(
    token_scores: FloatArray,
    newline_scores: FloatArray,
    token_valid: BoolArray,
    *,
    level: DipLevel,
    next_level: DipLevel,
    ratio: float,
) -> TileChoice:
    """The reference's tile selection (spec §5.1 ``S1`` and §5.2), newline tokens included.

    Args:
        token_scores: float (Ht, Wt) RFM scores of the level's image tokens.
        newline_scores: float (Ht,) scores of the newline tokens.
        token_valid: bool (Ht, Wt); tokens that were keys (placeholders excluded).
        level: the scored level.
        next_level: the level whose tiles are chosen (may equal ``level``).
        ratio: share of the keys selected (``int(N * ratio)``, N = valid tokens + newlines).

    Returns:
        Every tile hit, row-major, with the mass of the tokens that hit it.
    """
    rows_n, cols_n = level.token_grid_hw
    grid = np.full((rows_n, cols_n + 1), -np.inf, dtype=np.float64)
    grid[:, :cols_n] = np.where(token_valid, token_scores, -np.inf)
    grid[:, cols_n] = newline_scores
    flat_valid = np.isfinite(grid).reshape(-1)
    flat_scores = grid.reshape(-1)
    candidates = np.flatnonzero(flat_valid)
    count = int(candidates.size * ratio)
    chosen = candidates[top_indices(flat_scores[candidates].astype(np.float32), count)]
    newline_flat = np.arange(rows_n) * (cols_n + 1) + cols_n
    selected = np.union1d(chosen, newline_flat)
    token_rc = np.stack([selected // (cols_n + 1), selected % (cols_n + 1)], axis=1)
    tiles = map_tokens_to_next_level_parity(token_rc, level, next_level)
    mass: dict[TileRc, float] = {}
    for (row, col), flat in zip(tiles.tolist(), selected.tolist(), strict=True):
        mass[(row, col)] = mass.get((row, col), 0.0) + float(flat_scores[flat])
    ordered = sorted(mass)
    return TileChoice(
        tiles_rc=ordered, mass=[mass[t] for t in ordered], n_selected_tokens=int(selected.size)
    )


def neighbours(tile_rc: TileRc, grid_hw: tuple[int, int], distance: int) -> list[TileRc]:
    """Return the tiles within Chebyshev ``distance`` of a tile (itself excluded), row-major."""
    row, col = tile_rc
    found = []
    for r in range(max(0, row - distance), min(grid_hw[0], row + distance + 1)):
        for c in range(max(0, col - distance), min(grid_hw[1], col + distance + 1)):
            if (r, c) != (row, col):
                found.append((r, c))
    return found


def select_tiles_ranked(
    token_scores: FloatArray,
    token_valid: BoolArray,
    *,
    level: DipLevel,
    next_level: DipLevel,
    ratio: float,
    tiles_cap: int | None,
    neighbour_expansion: int,
) -> TileChoice:
    """Our tile selection: footprint mapping, mass ranking, neighbour expansion, cap (spec §11.6).

    Args:
        token_scores: float (Ht, Wt) RFM scores of the level's image tokens.
        token_valid: bool (Ht, Wt); tokens that were scored.
        level: the scored level.
        next_level: the finer level whose tiles are chosen.
        ratio: share of the valid tokens selected (at least one).
        tiles_cap: most tiles chosen (None = no cap).
        neighbour_expansion: add tiles within this Chebyshev distance of each selected tile,
            ranked after every selected tile.

    Returns:
        Tiles ranked by mass (ties row-major), expansion tiles last, cut to ``tiles_cap``.
    """
    rows, cols = np.nonzero(token_valid)
    if rows.size == 0:
        return TileChoice(tiles_rc=[], mass=[], n_selected_tokens=0)
    values = token_scores[rows, cols].astype(np.float32)
    count = max(1, int(rows.size * ratio))
    chosen = top_indices(values, count)
    token_rc = np.stack([rows[chosen], cols[chosen]], axis=1).astype(np.int64)
    tiles = map_tokens_to_tiles(token_rc, level, next_level)
    mass: dict[TileRc, float] = {}
    for (row, col), value in zip(tiles.tolist(), values[chosen].tolist(), strict=True):
        mass[(row, col)] = mass.get((row, col), 0.0) + float(value)
    ranked = sorted(mass, key=lambda t: (-mass[t], t))
    masses = [mass[t] for t in ranked]
    if neighbour_expansion > 0:
        seen = set(ranked)
        for tile in list(ranked):
            for extra in neighbours(tile, next_level.grid_hw, neighbour_expansion):
                if extra not in seen:
                    seen.add(extra)
                    ranked.append(extra)
                    masses.append(0.0)
    if tiles_cap is not None:
        ranked, masses = ranked[:tiles_cap], masses[:tiles_cap]
    return TileChoice(tiles_rc=ranked, mass=masses, n_selected_tokens=int(count))


def valid_token_mask(level: DipLevel, tiles_rc: list[TileRc]) -> BoolArray:
    """Return bool (Ht, Wt): the tokens of the given tiles inside the unpadded grid."""
    rows_n, cols_n = level.token_grid_hw
    side = level.tokens_per_tile_side
    mask = np.zeros((rows_n, cols_n), dtype=bool)
    for row, col in tiles_rc:
        mask[row * side : (row + 1) * side, col * side : (col + 1) * side] = True
    return mask


def pruned_size(
    n_tokens: int, n_rows: int, *, keep_ratio: float, all_newlines: bool, total_rows: int
) -> int:
    """Vision tokens a level contributes after pruning (kept tokens + newlines), before a budget.

    Args:
        n_tokens: valid image tokens of the level.
        n_rows: token rows holding valid tokens (an upper bound on the newlines of kept rows).
        keep_ratio: share kept.
        all_newlines: every row's newline is kept (parity) instead of those of kept rows.
        total_rows: Ht.
    """
    kept = max(1, int(n_tokens * keep_ratio)) if n_tokens else 0
    return kept + (total_rows if all_newlines else min(n_rows, kept))


@dataclass(frozen=True)
class PruneResult:
    """Tokens of the last level kept for the LLM.

    Attributes:
        keep: bool (Ht, Wt); kept image tokens.
        newline_rows: bool (Ht,); rows whose newline token is kept.
        n_candidates: tokens (and, under parity, newlines) the ratio was applied to.
    """

    keep: BoolArray
    newline_rows: BoolArray
    n_candidates: int

    @property
    def n_vision_tokens(self) -> int:
        """Kept image tokens plus kept newlines."""
        return int(self.keep.sum()) + int(self.newline_rows.sum())


def prune_tokens(
    token_scores: FloatArray,
    newline_scores: FloatArray | None,
    token_valid: BoolArray,
    *,
    keep_ratio: float,
    newlines_in_ratio: bool,
    keep_all_newlines: bool,
    allowance: int | None,
) -> PruneResult:
    """Keep the top ``keep_ratio`` of the last level's tokens, within an allowance (spec §5.4).

    Parity (``newlines_in_ratio``, ``keep_all_newlines``): ``k = int(|V| * ratio)`` with V the valid
    tokens plus every newline, top-k over V, union every newline. Ours:
    ``k = max(1, int(n * ratio))``
    over the valid image tokens, newline only for rows holding a kept token.

    Budget: when kept tokens plus newlines exceed ``allowance``, tokens are taken in score order
    while they fit, each new row costing its newline too (all-newline mode then falls back to
    newlines of kept rows only).

    Args:
        token_scores: float (Ht, Wt).
        newline_scores: float (Ht,) or None (needed when ``newlines_in_ratio``).
        token_valid: bool (Ht, Wt); candidate tokens.
        keep_ratio: share kept, in (0, 1].
        newlines_in_ratio: count newline tokens among the candidates of the top-k (parity).
        keep_all_newlines: keep every row's newline (parity).
        allowance: most vision tokens (image + newline) this level may contribute; None = no cap.

    Returns:
        The kept tokens and newline rows.
    """
    rows_n, cols_n = token_valid.shape
    rows, cols = np.nonzero(token_valid)
    values = token_scores[rows, cols].astype(np.float32)
    if newlines_in_ratio:
        if newline_scores is None:
            raise ConfigError("prune_tokens: newlines_in_ratio=True needs newline_scores")
        n_candidates = rows.size + rows_n
        count = int(n_candidates * keep_ratio)
        all_scores = np.concatenate([values, newline_scores.astype(np.float32)])
        # raster order of the candidates, so ties resolve as the reference's sorted flat indices
        flat = np.concatenate(
            [rows * (cols_n + 1) + cols, np.arange(rows_n) * (cols_n + 1) + cols_n]
        )
        raster = np.argsort(flat, kind="stable")
        picked = raster[top_indices(all_scores[raster], count)]
        order = picked[picked < rows.size]
    else:
        n_candidates = rows.size
        count = max(1, int(rows.size * keep_ratio)) if rows.size else 0
        order = top_indices(values, count)
    keep = np.zeros((rows_n, cols_n), dtype=bool)
    newline_rows = np.zeros(rows_n, dtype=bool)
    if keep_all_newlines and (allowance is None or order.size + rows_n <= allowance):
        keep[rows[order], cols[order]] = True
        newline_rows[:] = True
        return PruneResult(keep=keep, newline_rows=newline_rows, n_candidates=int(n_candidates))
    if allowance is None or order.size + np.unique(rows[order]).size <= allowance:
        keep[rows[order], cols[order]] = True
        newline_rows[np.unique(rows[order])] = True
        return PruneResult(keep=keep, newline_rows=newline_rows, n_candidates=int(n_candidates))
    used = 0
    for index in order.tolist():
        row = int(rows[index])
        cost = 1 if newline_rows[row] else 2
        if used + cost > allowance:
            continue
        keep[row, cols[index]] = True
        newline_rows[row] = True
        used += cost
    return PruneResult(keep=keep, newline_rows=newline_rows, n_candidates=int(n_candidates))
