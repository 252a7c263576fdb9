"""Sparse LLM/RFM input sequences over one DIP level, and their embeddings.

The reference sequence of a level is (spec §2.5)::

    [before <image>] [thumbnail] [':'] [row 0 tokens, nl] ... [row Ht-1 tokens, nl] [after]

Every slot of that *full* sequence has a position ``0..L_full-1``. The engine rarely materialises
it: at fine levels only a few tiles are encoded, so :func:`build_level_sequence` lists just the
included slots (a :class:`~lrs_core.models.layout.SequenceLayout`) together with their positions in
the full sequence. Those positions are the RFM's gapped position ids (spec §5.5, §11.9) and the
LLM's ``original`` position mode; the ``compact`` mode renumbers them ``0..L-1``.

:func:`embed_sequence` fills the embeddings from per-tile features, so memory stays proportional to
the selected tiles (never a whole-level canvas). Placeholder slots (tokens of unselected tiles kept
in a full-canvas pass, spec §5.1) get zero embeddings, as the reference's zero canvas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from lrs_core.dip.plan import DipLevel
from lrs_core.models.layout import (
    NOT_APPLICABLE,
    THUMBNAIL_DIP_LEVEL,
    SequenceLayout,
    TokenKind,
    fill_text_and_thumbnail,
)
from lrs_core.models.prompt import PromptIds
from lrs_core.models.vlm import VisionLanguageModel

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class LevelSequence:
    """Some slots of a level's full sequence.

    Attributes:
        layout: per-slot description (kinds, ids, grid coordinates), in sequence order.
        positions: int64 (L,); each slot's position in the full sequence (ascending, gaps allowed).
        is_placeholder: bool (L,); True for level tokens whose tile was not encoded (zero embedding,
            masked as keys).
    """

    layout: SequenceLayout
    positions: IntArray
    is_placeholder: BoolArray

    @property
    def length(self) -> int:
        """L, the number of slots."""
        return self.layout.length

    def positions_of(self, *kinds: TokenKind) -> IntArray:
        """Return int64 (n,) sequence indices of slots of any of ``kinds``."""
        mask = np.isin(self.layout.kind, [k.value for k in kinds])
        return np.flatnonzero(mask).astype(np.int64)


def build_level_sequence(
    prompt: PromptIds,
    *,
    thumbnail_tokens: int,
    separator_id: int,
    level: DipLevel | None,
    include: BoolArray | None = None,
    newline_rows: BoolArray | None = None,
    placeholder: BoolArray | None = None,
) -> LevelSequence:
    """Return the included slots of ``[before][thumbnail][':'][level rows + newline][after]``.

    Args:
        prompt: the prompt's ids around the image.
        thumbnail_tokens: tokens of the thumbnail, a square number (576).
        separator_id: vocabulary id of the separator.
        level: the DIP level; None for a thumbnail-only sequence (no separator, no level).
        include: bool (Ht, Wt); level tokens present in the sequence (None = all).
        newline_rows: bool (Ht,); rows whose newline is present (None = all).
        placeholder: bool (Ht, Wt); included tokens that are placeholders (None = none).

    Returns:
        The :class:`LevelSequence`; positions count every slot of the full sequence.
    """
    side = int(round(thumbnail_tokens**0.5))
    n_before, n_after = len(prompt.before_image), len(prompt.after_image)
    parts: dict[str, list[np.ndarray]] = {
        name: []
        for name in (
            "kind",
            "token_id",
            "dip_level",
            "tile_r",
            "tile_c",
            "grid_r",
            "grid_c",
            "pos",
            "ph",
        )
    }

    def add(kind: TokenKind, pos: np.ndarray, **fields: np.ndarray | int) -> None:
        n = pos.shape[0]
        parts["kind"].append(np.full(n, kind.value, dtype=np.int8))
        parts["pos"].append(pos.astype(np.int64))
        for name in ("token_id", "dip_level", "tile_r", "tile_c", "grid_r", "grid_c"):
            value = fields.get(name, NOT_APPLICABLE)
            parts[name].append(np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)).copy())
        placeholder_part = fields.get("ph", 0)
        parts["ph"].append(np.broadcast_to(np.asarray(placeholder_part, dtype=bool), (n,)).copy())

    add(
        TokenKind.TEXT,
        np.arange(n_before),
        token_id=np.asarray(prompt.before_image, dtype=np.int64),
    )
    thumb = np.arange(thumbnail_tokens)
    add(
        TokenKind.THUMBNAIL,
        n_before + thumb,
        dip_level=THUMBNAIL_DIP_LEVEL,
        grid_r=thumb // side,
        grid_c=thumb % side,
        tile_r=0,
        tile_c=0,
    )
    cursor = n_before + thumbnail_tokens
    grid_hw = None
    if level is not None:
        rows_n, cols_n = level.token_grid_hw
        grid_hw = (rows_n, cols_n)
        include = np.ones((rows_n, cols_n), dtype=bool) if include is None else include
        newline_rows = np.ones(rows_n, dtype=bool) if newline_rows is None else newline_rows
        placeholder = np.zeros((rows_n, cols_n), dtype=bool) if placeholder is None else placeholder
        add(TokenKind.SEPARATOR, np.asarray([cursor]), token_id=separator_id)
        base = cursor + 1
        per_tile = level.tokens_per_tile_side
        # slots in raster order: token (r, c) sits at r * (Wt + 1) + c, the newline of r at c = Wt
        grid = np.zeros((rows_n, cols_n + 1), dtype=bool)
        grid[:, :cols_n] = include
        grid[:, cols_n] = newline_rows
        rows, cols = np.nonzero(grid)
        is_newline = cols == cols_n
        offsets = rows * (cols_n + 1) + cols
        kinds = np.where(is_newline, TokenKind.NEWLINE.value, TokenKind.LEVEL.value).astype(np.int8)
        n = rows.size
        parts["kind"].append(kinds)
        parts["pos"].append((base + offsets).astype(np.int64))
        parts["token_id"].append(np.full(n, NOT_APPLICABLE, dtype=np.int64))
        parts["dip_level"].append(np.full(n, level.dip_level, dtype=np.int64))
        parts["tile_r"].append((rows // per_tile).astype(np.int64))
        parts["tile_c"].append(
            np.where(is_newline, NOT_APPLICABLE, cols // per_tile).astype(np.int64)
        )
        parts["grid_r"].append(rows.astype(np.int64))
        parts["grid_c"].append(cols.astype(np.int64))
        ph = np.zeros(n, dtype=bool)
        ph[~is_newline] = placeholder[rows[~is_newline], cols[~is_newline]]
        parts["ph"].append(ph)
        cursor = base + rows_n * (cols_n + 1)
    add(
        TokenKind.TEXT,
        cursor + np.arange(n_after),
        token_id=np.asarray(prompt.after_image, dtype=np.int64),
    )
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    layout = SequenceLayout(
        kind=arrays["kind"],
        token_id=arrays["token_id"],
        dip_level=arrays["dip_level"],
        tile_r=arrays["tile_r"],
        tile_c=arrays["tile_c"],
        grid_r=arrays["grid_r"],
        grid_c=arrays["grid_c"],
        thumbnail_hw=(side, side),
        level_grid_hw=grid_hw,
    )
    return LevelSequence(layout=layout, positions=arrays["pos"], is_placeholder=arrays["ph"])


def embed_sequence(
    model: VisionLanguageModel,
    sequence: LevelSequence,
    *,
    thumbnail_feats: torch.Tensor,
    level: DipLevel | None,
    tiles_rc: Sequence[tuple[int, int]],
    tile_feats: torch.Tensor | None,
) -> torch.Tensor:
    """Return the embeddings of a sequence's slots.

    Args:
        model: the VLM (embedding table, ``image_newline``).
        sequence: the slots.
        thumbnail_feats: float (Nt, D) unpooled thumbnail tokens, row-major.
        level: the DIP level of the level slots (None for a thumbnail-only sequence).
        tiles_rc: the encoded tiles, aligned with ``tile_feats``.
        tile_feats: float (n_tiles, t*t, D) pooled tokens per tile, row-major inside the tile.

    Returns:
        float (L, D) on the model's device and dtype; placeholders are 0.
    """
    layout = sequence.layout
    device, dtype = model.device, model.dtype
    out = torch.zeros(layout.length, model.hidden_size, device=device, dtype=dtype)
    fill_text_and_thumbnail(out, model, layout, thumbnail_feats=thumbnail_feats)
    newline_pos = layout.positions_of(TokenKind.NEWLINE)
    if newline_pos.size:
        out[torch.from_numpy(newline_pos).to(device)] = model.image_newline.to(dtype)
    level_pos = layout.positions_of(TokenKind.LEVEL)
    level_pos = level_pos[~sequence.is_placeholder[level_pos]]
    if level_pos.size:
        if level is None or tile_feats is None:
            raise ValueError("the sequence holds level tokens but no level features were given")
        lookup = np.full(level.grid_hw, -1, dtype=np.int64)
        for index, (row, col) in enumerate(tiles_rc):
            lookup[row, col] = index
        tile_index = lookup[layout.tile_r[level_pos], layout.tile_c[level_pos]]
        if (tile_index < 0).any():
            raise ValueError("a non-placeholder level token belongs to a tile that was not encoded")
        side = level.tokens_per_tile_side
        local = (layout.grid_r[level_pos] % side) * side + layout.grid_c[level_pos] % side
        flat = tile_feats.reshape(-1, tile_feats.shape[-1]).to(device, dtype)
        rows = torch.from_numpy(tile_index * tile_feats.shape[1] + local).to(device)
        out[torch.from_numpy(level_pos).to(device)] = flat[rows]
    return out
