"""The LLM input sequence as a data structure: which position holds which token (spec §2.5).

The reference sequence is::

    [text before <image>] [thumbnail tokens] [separator ':'] [level tokens + newline per row] [text
    after]

A :class:`SequenceLayout` stores, for every position, the kind of token and where it comes from
(prompt token id, DIP level, tile and token-grid coordinates), so callers select, score and prune
tokens by asking the layout instead of doing index arithmetic.

Coordinates: ``grid_rc`` is (row, col) in a level's **global** token grid (the ``Ht x Wt`` canvas of
pooled tokens over the whole level, newline excluded; for the thumbnail its unpooled ``24 x 24``
grid). ``tile_rc`` is (row, col) of the tile holding that token in the level's tile grid. Newline
tokens carry their row in ``grid_r`` and ``Wt`` in ``grid_c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from lrs_core.models.prompt import PromptIds
from lrs_core.models.vlm import VisionLanguageModel

#: Value of a per-position field that does not apply to that position.
NOT_APPLICABLE = -1
#: ``dip_level`` of thumbnail tokens.
THUMBNAIL_DIP_LEVEL = 0


class TokenKind(Enum):
    """What one position of the LLM input holds."""

    TEXT = 0
    THUMBNAIL = 1
    SEPARATOR = 2
    LEVEL = 3
    NEWLINE = 4


@dataclass(frozen=True, eq=False)
class SequenceLayout:
    """Per-position description of one LLM input sequence of length L.

    Attributes:
        kind: int8 (L,); :class:`TokenKind` values.
        token_id: int64 (L,); vocabulary id for TEXT and SEPARATOR positions, -1 elsewhere.
        dip_level: int64 (L,); -1 text/separator, 0 thumbnail, >= 1 level and newline tokens.
        tile_r: int64 (L,); tile row in the level's tile grid (-1 where not applicable).
        tile_c: int64 (L,); tile column, same convention.
        grid_r: int64 (L,); token row in the level's global token grid (or the thumbnail grid).
        grid_c: int64 (L,); token column, ``Wt`` for newline tokens.
        thumbnail_hw: (rows, cols) of the thumbnail token grid.
        level_grid_hw: (Ht, Wt) of the level's token grid, newline excluded; None without a level.
    """

    kind: np.ndarray
    token_id: np.ndarray
    dip_level: np.ndarray
    tile_r: np.ndarray
    tile_c: np.ndarray
    grid_r: np.ndarray
    grid_c: np.ndarray
    thumbnail_hw: tuple[int, int]
    level_grid_hw: tuple[int, int] | None

    @property
    def length(self) -> int:
        """L, the number of positions."""
        return int(self.kind.shape[0])

    @property
    def query_position(self) -> int:
        """Index of the last prompt token (the RFM's query, spec §3)."""
        return self.length - 1

    def positions_of(self, kind: TokenKind) -> np.ndarray:
        """Return int64 (n,) ascending positions holding tokens of ``kind``."""
        return np.flatnonzero(self.kind == kind.value).astype(np.int64)

    def level_slice(self) -> slice:
        """Return the contiguous span of level and newline tokens (the RFM's keys, spec §3.4).

        Raises:
            ValueError: the layout has no level tokens.
        """
        is_level = (self.kind == TokenKind.LEVEL.value) | (self.kind == TokenKind.NEWLINE.value)
        positions = np.flatnonzero(is_level)
        if positions.size == 0:
            raise ValueError("this layout holds no level tokens")
        start, stop = int(positions[0]), int(positions[-1]) + 1
        if stop - start != positions.size:
            raise ValueError("the level tokens of this layout are not contiguous")
        return slice(start, stop)

    def subset(self, keep: np.ndarray) -> SequenceLayout:
        """Return the layout of the kept positions, in their original order.

        Args:
            keep: bool (L,); True for positions to keep.
        """
        if keep.shape != (self.length,) or keep.dtype != np.bool_:
            raise ValueError(f"keep must be bool ({self.length},); got {keep.dtype} {keep.shape}")
        return SequenceLayout(
            kind=self.kind[keep],
            token_id=self.token_id[keep],
            dip_level=self.dip_level[keep],
            tile_r=self.tile_r[keep],
            tile_c=self.tile_c[keep],
            grid_r=self.grid_r[keep],
            grid_c=self.grid_c[keep],
            thumbnail_hw=self.thumbnail_hw,
            level_grid_hw=self.level_grid_hw,
        )


def build_layout(
    prompt: PromptIds,
    *,
    thumbnail_tokens: int,
    separator_id: int,
    level_grid_hw: tuple[int, int] | None,
    tile_tokens_hw: tuple[int, int],
    dip_level: int = 1,
    level_keep: np.ndarray | None = None,
    include_newline: bool = True,
) -> SequenceLayout:
    """Return the layout of ``[before] [thumbnail] [separator] [level rows + newline] [after]``.

    Args:
        prompt: the prompt's ids around the image.
        thumbnail_tokens: tokens of the thumbnail, a square number (576 at 336 px, unpooled).
        separator_id: vocabulary id of the separator token (``':'``).
        level_grid_hw: (Ht, Wt) pooled tokens of the level over the whole (unpadded) canvas; None
            for a thumbnail-only sequence (no separator, no level).
        tile_tokens_hw: (rows, cols) of pooled tokens per tile (12, 12), maps tokens to tiles.
        dip_level: DIP level of the level tokens (>= 1, coarse to fine).
        level_keep: bool (Ht, Wt); tokens to include (None = all). A row's newline is kept when the
            row keeps at least one token.
        include_newline: end each kept row with the newline token (the reference does).

    Returns:
        The :class:`SequenceLayout`.
    """
    side = math.isqrt(thumbnail_tokens)
    if side * side != thumbnail_tokens or thumbnail_tokens < 1:
        raise ValueError(f"thumbnail_tokens={thumbnail_tokens} is not a positive square number")
    if dip_level < 1:
        raise ValueError(f"dip_level={dip_level} of a level must be >= 1 (0 is the thumbnail)")
    columns: dict[str, list[np.ndarray]] = {
        name: []
        for name in ("kind", "token_id", "dip_level", "tile_r", "tile_c", "grid_r", "grid_c")
    }

    def add(
        n: int,
        *,
        kind: TokenKind,
        token_id: np.ndarray | int = NOT_APPLICABLE,
        level: int = NOT_APPLICABLE,
        tile_r: np.ndarray | int = NOT_APPLICABLE,
        tile_c: np.ndarray | int = NOT_APPLICABLE,
        grid_r: np.ndarray | int = NOT_APPLICABLE,
        grid_c: np.ndarray | int = NOT_APPLICABLE,
    ) -> None:
        columns["kind"].append(np.full(n, kind.value, dtype=np.int8))
        for name, value in (
            ("token_id", token_id),
            ("dip_level", level),
            ("tile_r", tile_r),
            ("tile_c", tile_c),
            ("grid_r", grid_r),
            ("grid_c", grid_c),
        ):
            columns[name].append(np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)).copy())

    add(len(prompt.before_image), kind=TokenKind.TEXT, token_id=np.asarray(prompt.before_image))
    thumb = np.arange(thumbnail_tokens)
    add(
        thumbnail_tokens,
        kind=TokenKind.THUMBNAIL,
        level=THUMBNAIL_DIP_LEVEL,
        grid_r=thumb // side,
        grid_c=thumb % side,
        tile_r=0,
        tile_c=0,
    )
    if level_grid_hw is not None:
        rows, cols = level_grid_hw
        if rows < 1 or cols < 1:
            raise ValueError(f"level_grid_hw={level_grid_hw} must be positive")
        keep = np.ones((rows, cols), dtype=bool) if level_keep is None else level_keep
        if keep.shape != (rows, cols) or keep.dtype != np.bool_:
            raise ValueError(
                f"level_keep must be bool {(rows, cols)}; got {keep.dtype} {keep.shape}"
            )
        add(1, kind=TokenKind.SEPARATOR, token_id=separator_id)
        tile_h, tile_w = tile_tokens_hw
        for row in range(rows):
            kept_cols = np.flatnonzero(keep[row])
            if kept_cols.size == 0:
                continue
            add(
                kept_cols.size,
                kind=TokenKind.LEVEL,
                level=dip_level,
                grid_r=row,
                grid_c=kept_cols,
                tile_r=row // tile_h,
                tile_c=kept_cols // tile_w,
            )
            if include_newline:
                add(
                    1,
                    kind=TokenKind.NEWLINE,
                    level=dip_level,
                    grid_r=row,
                    grid_c=cols,
                    tile_r=row // tile_h,
                )
    add(len(prompt.after_image), kind=TokenKind.TEXT, token_id=np.asarray(prompt.after_image))
    arrays = {name: np.concatenate(parts) for name, parts in columns.items()}
    return SequenceLayout(**arrays, thumbnail_hw=(side, side), level_grid_hw=level_grid_hw)


def fill_text_and_thumbnail(
    out: torch.Tensor,
    model: VisionLanguageModel,
    layout: SequenceLayout,
    *,
    thumbnail_feats: torch.Tensor,
) -> None:
    """Write the text/separator embeddings and the thumbnail tokens of a layout into ``out``.

    Args:
        out: float (L, D) on the model's device and dtype; written in place at those slots.
        model: the VLM (its embedding table).
        layout: the sequence layout.
        thumbnail_feats: float (Nt, D) unpooled thumbnail tokens in row-major grid order.
    """
    device, dtype = out.device, out.dtype
    is_text = np.isin(layout.kind, [TokenKind.TEXT.value, TokenKind.SEPARATOR.value])
    text_pos = np.flatnonzero(is_text)
    if text_pos.size:
        ids = torch.from_numpy(layout.token_id[text_pos]).to(device)
        out[torch.from_numpy(text_pos).to(device)] = model.embed_text(ids).to(dtype)
    thumb_pos = layout.positions_of(TokenKind.THUMBNAIL)
    if thumb_pos.size:
        index = layout.grid_r[thumb_pos] * layout.thumbnail_hw[1] + layout.grid_c[thumb_pos]
        out[torch.from_numpy(thumb_pos).to(device)] = thumbnail_feats.to(device, dtype)[
            torch.from_numpy(index).to(device)
        ]


def assemble_embeddings(
    model: VisionLanguageModel,
    layout: SequenceLayout,
    *,
    thumbnail_feats: torch.Tensor,
    level_feats: torch.Tensor | None,
) -> torch.Tensor:
    """Return the LLM input embeddings of one sequence.

    Args:
        model: the VLM (its embedding table and ``image_newline``).
        layout: the sequence layout.
        thumbnail_feats: float (Nt, D) unpooled thumbnail tokens in row-major grid order.
        level_feats: float (Ht, Wt, D) the level's token canvas; None when the layout has no level.

    Returns:
        float (L, D) on the model's device and dtype.
    """
    device, dtype = model.device, model.dtype
    out = torch.empty(layout.length, model.hidden_size, device=device, dtype=dtype)
    fill_text_and_thumbnail(out, model, layout, thumbnail_feats=thumbnail_feats)
    level_pos = layout.positions_of(TokenKind.LEVEL)
    if level_pos.size:
        if level_feats is None or layout.level_grid_hw is None:
            raise ValueError("the layout has level tokens but level_feats is None")
        if tuple(level_feats.shape[:2]) != layout.level_grid_hw:
            raise ValueError(
                f"level_feats has grid {tuple(level_feats.shape[:2])}, "
                f"the layout {layout.level_grid_hw}"
            )
        rows = torch.from_numpy(layout.grid_r[level_pos]).to(device)
        cols = torch.from_numpy(layout.grid_c[level_pos]).to(device)
        out[torch.from_numpy(level_pos).to(device)] = level_feats.to(device, dtype)[rows, cols]
    newline_pos = layout.positions_of(TokenKind.NEWLINE)
    if newline_pos.size:
        out[torch.from_numpy(newline_pos).to(device)] = model.image_newline.to(dtype)
    return out


@dataclass(frozen=True)
class BatchedEmbeddings:
    """Several sequences right-padded to one length.

    Attributes:
        inputs_embeds: float (B, L_max, D); padding positions are zeros.
        attention_mask: int64 (B, L_max); 1 for real positions, 0 for padding (on the right).
        lengths: int64 (B,) real length of each sequence.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor


def assemble_batch(
    model: VisionLanguageModel,
    layouts: list[SequenceLayout],
    *,
    thumbnail_feats: list[torch.Tensor],
    level_feats: list[torch.Tensor | None],
) -> BatchedEmbeddings:
    """Return the right-padded embeddings of several sequences (see :func:`assemble_embeddings`).

    Right padding keeps each sequence's positions ``0..len-1`` unchanged, so a padded row gives the
    same result as the row alone once the attention mask hides the padding; generation from a batch
    should use left padding instead (done by the generation module).
    """
    if not (len(layouts) == len(thumbnail_feats) == len(level_feats)) or not layouts:
        raise ValueError(
            "layouts, thumbnail_feats and level_feats must be non-empty and equally long"
        )
    rows = [
        assemble_embeddings(model, layout, thumbnail_feats=thumb, level_feats=level)
        for layout, thumb, level in zip(layouts, thumbnail_feats, level_feats, strict=True)
    ]
    lengths = torch.tensor([row.shape[0] for row in rows], dtype=torch.int64)
    longest = int(lengths.max())
    embeds = torch.zeros(
        len(rows), longest, model.hidden_size, device=model.device, dtype=model.dtype
    )
    mask = torch.zeros(len(rows), longest, dtype=torch.int64, device=model.device)
    for index, row in enumerate(rows):
        embeds[index, : row.shape[0]] = row
        mask[index, : row.shape[0]] = 1
    return BatchedEmbeddings(inputs_embeds=embeds, attention_mask=mask, lengths=lengths)
