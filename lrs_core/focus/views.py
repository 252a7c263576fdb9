"""Views: what each strategy shows the LLM, behind one small interface.

A :class:`View` decides which DIP levels and tiles a question visits, what the RFM scores at each
visit, and which tokens reach the LLM; it never touches a model. The loop
(:func:`lrs_core.focus.loop.run_view`) drives a view with an executor
(:mod:`lrs_core.focus.executor`) that either runs the model or only counts, so a run and its dry
run are one code path::

    visit = view.first_visit(state)        # budget checks, then the first level's tiles
    while visit:                           # encode its tiles, score them (view.rfm_pass) if
        visit = view.next_visit(...)       # view.scores, then zoom (focus) or stop (baselines)
    view.llm_view(state)                   # the tokens the LLM gets (pruned, or whole)

Views: :class:`FocusView` (coarse to fine with the RFM), :class:`ThumbnailView`,
:class:`GridView` (``grid-N``), :class:`FullView` (a whole DIP level), and :class:`FastVView` and
:class:`PyramidDropView` (layer-drop views: the full view, with vision tokens dropped inside the
LLM). :func:`view_for` maps ``FocusConfig.strategy`` to its view.

Where the next step depends on the RFM's scores (the zoom tiles, the pruned tokens) and the
executor only counted (``ScoredLevel.scored`` is False), :class:`FocusView` takes an **upper
bound**: at each zoom step every tile of the next level (``parity``) or ``tiles_cap`` of them,
reduced to the most tiles whose pruned tokens fit the budget, and ``keep_ratio`` of the last
level's tokens with a newline per row they can occupy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lrs_core.dip.plan import DipConfig, DipLevel, DipPlan, reencoded_level
from lrs_core.errors import TokenBudgetError
from lrs_core.focus.config import FocusConfig
from lrs_core.focus.nodata import drop_nodata_tiles
from lrs_core.focus.select import (
    TileChoice,
    prune_tokens,
    pruned_size,
    select_tiles_parity,
    select_tiles_ranked,
    valid_token_mask,
)
from lrs_core.focus.sequence import LevelSequence, build_level_sequence
from lrs_core.focus.state import (
    BoolArray,
    FocusState,
    ScoredLevel,
    TileRc,
    all_tiles,
    grid_level,
    level_view_tokens,
)
from lrs_core.models.layer_drop import LayerDropSchedule
from lrs_core.models.layout import TokenKind

log = logging.getLogger(__name__)

#: Text of ``preset_params["run"]["plan"]`` for upper-bound plans (views that score).
UPPER_BOUND_NOTE = (
    "upper bound: the zoom tiles depend on the RFM's scores; every tile of each reachable level "
    "(capped by tiles_cap and the token budget) is counted"
)


@dataclass(frozen=True, kw_only=True)
class ViewContext:
    """What a view needs to know of the engine: no model, only geometry and token ids.

    Attributes:
        config: the engine's config.
        dip_config: the DIP rule and tile geometry of the model.
        thumbnail_tokens: tokens of the thumbnail.
        separator_id: id of the token between the thumbnail and the level.
        has_image_newline: whether the model places a newline token after each level row (False
            for Qwen-VL bases).
        n_llm_layers: decoder layers of the LLM (for layer-drop schedules).
    """

    config: FocusConfig
    dip_config: DipConfig
    thumbnail_tokens: int
    separator_id: int
    has_image_newline: bool
    n_llm_layers: int

    def newline_rows(self, rows: BoolArray) -> BoolArray:
        """The rows whose newline token is placed: ``rows``, or none for a model without one."""
        if not self.has_image_newline:
            return np.zeros_like(rows, dtype=bool)
        return rows


@dataclass(frozen=True, kw_only=True)
class Visit:
    """Tiles of one level the loop encodes next.

    Attributes:
        level: the DIP level.
        tiles_rc: tiles to encode, row-major.
        reencode: encode them afresh, bypassing the feature cache (the same level re-selected).
    """

    level: DipLevel
    tiles_rc: list[TileRc]
    reencode: bool = False


@dataclass(frozen=True, eq=False, kw_only=True)
class RfmPass:
    """The sequence of one RFM pass and the keys it scores.

    Attributes:
        level: the scored level.
        tiles_rc: its encoded tiles.
        valid: bool (Ht, Wt); tokens of the encoded tiles.
        sequence: the slots of the pass.
        key_index: int64 (K,) sequence indices of the keys.
        key_grid_rc: int64 (K, 2) token (row, col) of each key; newline keys have col ``Wt``.
        key_is_newline: bool (K,).
        key_valid: bool (K,); False for placeholders.
        positions: int64 (L,) RoPE positions of the pass (``rfm_position_mode``).
    """

    level: DipLevel
    tiles_rc: list[TileRc]
    valid: BoolArray
    sequence: LevelSequence
    key_index: npt.NDArray[np.int64]
    key_grid_rc: npt.NDArray[np.int64]
    key_is_newline: BoolArray
    key_valid: BoolArray
    positions: npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False, kw_only=True)
class LlmView:
    """The tokens the LLM gets.

    Attributes:
        level: the DIP level of the level tokens (None: thumbnail only).
        tiles_rc: the encoded tiles of that level.
        sequence: the slots (None when only counted: an upper bound of a scoring view).
        n_vision: vision tokens (thumbnail, separator, level tokens, newlines).
        n_text: text tokens.
    """

    level: DipLevel | None
    tiles_rc: list[TileRc]
    sequence: LevelSequence | None
    n_vision: int
    n_text: int

    @property
    def n_droppable(self) -> int:
        """Vision tokens a layer-drop schedule ranks: all but the separator (text-like)."""
        if self.sequence is not None:
            kinds = (TokenKind.THUMBNAIL, TokenKind.LEVEL, TokenKind.NEWLINE)
            return int(self.sequence.positions_of(*kinds).size)
        return self.n_vision - (0 if self.level is None else 1)


def whole_llm_view(
    ctx: ViewContext, state: FocusState, level: DipLevel | None, tiles: list[TileRc]
) -> LlmView:
    """The LLM view of a whole level (or the thumbnail alone): every token, a newline per row."""
    sequence = build_level_sequence(
        state.prompt,
        thumbnail_tokens=ctx.thumbnail_tokens,
        separator_id=ctx.separator_id,
        level=level,
        newline_rows=None
        if level is None
        else ctx.newline_rows(np.ones(level.token_grid_hw[0], dtype=bool)),
    )
    n_text = int((sequence.layout.kind == TokenKind.TEXT.value).sum())
    return LlmView(
        level=level,
        tiles_rc=tiles,
        sequence=sequence,
        n_vision=sequence.length - n_text,
        n_text=n_text,
    )


class View:
    """One strategy's view of a scene; subclasses override the few steps that differ.

    Args:
        ctx: the engine's geometry and token ids.
        dry_run: the executor only counts (an over-context view is then logged at DEBUG).
    """

    #: Whether the loop runs the RFM on each visit (and the answer is an upper bound when counted).
    scores: bool = False

    def __init__(self, ctx: ViewContext, *, dry_run: bool = False) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.dry_run = dry_run

    def check_thumbnail_fits(self, allowance: int, *, with_level: bool) -> None:
        """Raise unless the thumbnail (and one level token) fits ``allowance``.

        Raises:
            TokenBudgetError: it does not.
        """
        need = self.ctx.thumbnail_tokens + int(with_level)
        if allowance < need:
            raise TokenBudgetError(
                f"only {allowance} vision tokens fit "
                f"(token_budget={self.config.budget.token_budget}) but the thumbnail needs "
                f"{need}; raise --budget or shorten the question"
            )

    def level(self, plan: DipPlan, allowance: int) -> DipLevel | None:
        """The level this view feeds whole (None = thumbnail only)."""
        return None

    def first_visit(self, state: FocusState) -> Visit | None:
        """Check the budget and return the first tiles to encode (None: the thumbnail only).

        Raises:
            TokenBudgetError: the view does not fit ``state.allowance``.
        """
        level = self.level(state.plan, state.allowance)
        if level is None:
            self.check_thumbnail_fits(state.allowance, with_level=False)
            return None
        return Visit(level=level, tiles_rc=all_tiles(level))

    def rfm_pass(self, state: FocusState, visit: Visit) -> RfmPass:
        """The RFM pass over a visit's tiles (views with ``scores`` only)."""
        raise NotImplementedError(f"{type(self).__name__} runs no RFM")

    def next_visit(self, state: FocusState, scored: ScoredLevel, pyramid: Any) -> Visit | None:
        """The next tiles to encode after ``scored`` (None: stop, ``state.stop_reason`` set)."""
        return None

    def llm_view(self, state: FocusState) -> LlmView:
        """The tokens the LLM gets after the visits in ``state.visited``."""
        last = state.visited[-1] if state.visited else None
        return whole_llm_view(
            self.ctx,
            state,
            None if last is None else last.level,
            [] if last is None else last.tiles_rc,
        )

    def layer_drop(self) -> LayerDropSchedule | None:
        """Where the LLM drops vision tokens (None: it keeps them all)."""
        return None


class ThumbnailView(View):
    """The thumbnail alone."""


class GridView(View):
    """The scene resized to ``grid_n`` tiles along its long side, fed whole (LLaVA-style)."""

    def level(self, plan: DipPlan, allowance: int) -> DipLevel | None:
        """The ``grid-N`` level, if its view fits an explicit budget.

        Raises:
            TokenBudgetError: an explicit ``token_budget`` is too small for the view.
        """
        grid = grid_level(plan.image_hw, self.config.baseline.grid_n, config=self.ctx.dip_config)
        return self._fitting([grid], allowance)

    def _fitting(self, candidates: list[DipLevel], allowance: int) -> DipLevel:
        """The first candidate whose view fits an explicit budget; over the context: a log line.

        Raises:
            TokenBudgetError: none fits an explicit ``token_budget``.
        """
        budget = self.config.budget.token_budget
        for level in candidates:
            need = self.ctx.thumbnail_tokens + level_view_tokens(level)
            if budget is None or need <= allowance:
                if need > allowance:
                    log.log(
                        logging.DEBUG if self.dry_run else logging.WARNING,
                        "the %s view needs %d vision tokens, over the %d left in the context",
                        self.config.preset,
                        need,
                        allowance,
                    )
                return level
        raise TokenBudgetError(
            f"the {self.config.preset} view needs "
            f"{self.ctx.thumbnail_tokens + level_view_tokens(candidates[-1])} "
            f"vision tokens but token_budget={budget} allows {allowance}; raise --budget or use a "
            "pruning preset (default, parity)"
        )


class FullView(GridView):
    """A whole DIP level: the finest ``default`` would reach, or the finest that fits a budget."""

    def level(self, plan: DipPlan, allowance: int) -> DipLevel | None:
        """The finest level ``max_zoom_steps`` below level 1, stepping down to fit a budget.

        Raises:
            TokenBudgetError: an explicit ``token_budget`` is too small for level 1.
        """
        steps = self.config.budget.max_zoom_steps
        finest = plan.n_levels if steps is None else min(plan.n_levels, 1 + steps)
        return self._fitting([plan.level(k) for k in range(finest, 0, -1)], allowance)


class LayerDropView(FullView):
    """The full view, with vision tokens dropped inside the LLM (FastV or PyramidDrop)."""

    def layer_drop(self) -> LayerDropSchedule:
        """Where the LLM drops vision tokens."""
        raise NotImplementedError


class FastVView(LayerDropView):
    """The full view under FastV: one drop after layer K (Chen et al., 2024)."""

    def layer_drop(self) -> LayerDropSchedule:
        """FastV's schedule: ``fastv_layer`` and ``fastv_keep_ratio``."""
        baseline = self.config.baseline
        return LayerDropSchedule.fastv(
            layer=baseline.fastv_layer, keep_ratio=baseline.fastv_keep_ratio
        )


class PyramidDropView(LayerDropView):
    """The full view under PyramidDrop: drops at equal depths (Xing et al., 2024)."""

    def layer_drop(self) -> LayerDropSchedule:
        """PyramidDrop's schedule: ``pdrop_stages`` drops of ``pdrop_keep_ratio`` each."""
        baseline = self.config.baseline
        return LayerDropSchedule.pdrop(
            num_layers=self.ctx.n_llm_layers,
            keep_ratio=baseline.pdrop_keep_ratio,
            n_stages=baseline.pdrop_stages,
        )


class FocusView(View):
    """Coarse to fine: level 1 whole, then the tiles the RFM points at, pruned at the last level."""

    scores = True

    def first_visit(self, state: FocusState) -> Visit | None:
        """Every tile of level 1, once the thumbnail and a level token fit.

        Raises:
            TokenBudgetError: the thumbnail does not fit.
        """
        self.check_thumbnail_fits(state.allowance, with_level=True)
        level = state.plan.level(1)
        return Visit(level=level, tiles_rc=all_tiles(level))

    def level_allowance(self, state: FocusState) -> int:
        """Vision tokens left for the level after the thumbnail and the separator."""
        return state.allowance - self.ctx.thumbnail_tokens - 1

    def rfm_pass(self, state: FocusState, visit: Visit) -> RfmPass:
        """The RFM sequence of a level's encoded tiles and its keys (spec §3, §5.1)."""
        loop, level = self.config.loop, visit.level
        rows_n = level.token_grid_hw[0]
        valid = valid_token_mask(level, visit.tiles_rc)
        if loop.rfm_gather_valid_only:
            rows = np.ones(rows_n, dtype=bool) if loop.keep_all_newlines else valid.any(axis=1)
            sequence = build_level_sequence(
                state.prompt,
                thumbnail_tokens=self.ctx.thumbnail_tokens,
                separator_id=self.ctx.separator_id,
                level=level,
                include=valid,
                newline_rows=self.ctx.newline_rows(np.asarray(rows, dtype=bool)),
            )
        else:
            sequence = build_level_sequence(
                state.prompt,
                thumbnail_tokens=self.ctx.thumbnail_tokens,
                separator_id=self.ctx.separator_id,
                level=level,
                newline_rows=self.ctx.newline_rows(np.ones(rows_n, dtype=bool)),
                placeholder=~valid,
            )
        kinds = (
            (TokenKind.LEVEL, TokenKind.NEWLINE)
            if loop.include_newline_in_selection
            else (TokenKind.LEVEL,)
        )
        key_index = sequence.positions_of(*kinds)
        layout = sequence.layout
        return RfmPass(
            level=level,
            tiles_rc=list(visit.tiles_rc),
            valid=valid,
            sequence=sequence,
            key_index=key_index,
            key_grid_rc=np.stack([layout.grid_r[key_index], layout.grid_c[key_index]], axis=1),
            key_is_newline=layout.kind[key_index] == TokenKind.NEWLINE.value,
            key_valid=~sequence.is_placeholder[key_index],
            positions=(
                sequence.positions
                if loop.rfm_position_mode == "original"
                else np.arange(sequence.length, dtype=np.int64)
            ),
        )

    def next_level(
        self, plan: DipPlan, level: DipLevel, zoom_steps: int
    ) -> tuple[DipLevel | None, str]:
        """The level the loop zooms into after ``level``, or None and why it stops.

        Stops after ``max_zoom_steps`` zooms and at the finest level; a single-level plan with
        ``reencode_single_level`` zooms into the same level again, its token grid unpadded
        against its ``resize_hw`` as the reference's pass 2 does
        (:func:`lrs_core.dip.plan.reencoded_level`).
        """
        steps = self.config.budget.max_zoom_steps
        if steps is not None and zoom_steps >= steps:
            return None, f"max_zoom_steps={steps} reached"
        if level.dip_level < plan.n_levels:
            return plan.level(level.dip_level + 1), ""
        if self.config.loop.reencode_single_level and plan.n_levels == 1 and zoom_steps == 0:
            return reencoded_level(level), ""
        return None, "finest level reached"

    def next_visit(self, state: FocusState, scored: ScoredLevel, pyramid: Any) -> Visit | None:
        """The next level's tiles the scores point at, if their pruned tokens fit the budget."""
        loop = self.config.loop
        next_level, stop_reason = self.next_level(state.plan, scored.level, len(state.visited) - 1)
        if next_level is None:
            state.stop_reason = stop_reason
            return None
        if scored.scored:
            tiles = sorted(self.choose_tiles(scored, next_level, pyramid).tiles_rc)
        else:
            tiles = self.upper_bound_tiles(state, next_level)
        valid = valid_token_mask(next_level, tiles)
        need = pruned_size(
            int(valid.sum()),
            int(valid.any(axis=1).sum()),
            keep_ratio=loop.keep_ratio,
            all_newlines=loop.keep_all_newlines,
            total_rows=next_level.token_grid_hw[0],
        )
        allowance = self.level_allowance(state)
        if not tiles or need > allowance:
            state.stop_reason = (
                f"dip_level {next_level.dip_level} would need {need} vision tokens after "
                f"pruning, over the {allowance} allowed"
            )
            return None
        return Visit(
            level=next_level,
            tiles_rc=tiles,
            reencode=next_level.dip_level == scored.level.dip_level,
        )

    def choose_tiles(self, scored: ScoredLevel, next_level: DipLevel, pyramid: Any) -> TileChoice:
        """The next level's tiles under the scored tokens (parity or ranked), off nodata."""
        loop = self.config.loop
        if loop.include_newline_in_selection:
            choice = select_tiles_parity(
                scored.token_scores,
                scored.newline_scores,
                scored.valid,
                level=scored.level,
                next_level=next_level,
                ratio=loop.select_ratio,
            )
            cap = None
        else:
            # Ranked and expanded without the cap: tiles in nodata are dropped first, then capped.
            choice = select_tiles_ranked(
                scored.token_scores,
                scored.valid,
                level=scored.level,
                next_level=next_level,
                ratio=loop.select_ratio,
                tiles_cap=None,
                neighbour_expansion=loop.neighbour_expansion,
            )
            cap = self.config.budget.tiles_cap
        return drop_nodata_tiles(
            choice, next_level, pyramid, max_nodata_share=loop.max_nodata_share, tiles_cap=cap
        )

    def upper_bound_tiles(self, state: FocusState, next_level: DipLevel) -> list[TileRc]:
        """Unscored: the most leading tiles (``tiles_cap``, parity all) whose tokens fit.

        Falls back to one tile when none fits, so the loop stops with the budget's reason.
        """
        loop, cap = self.config.loop, self.config.budget.tiles_cap
        everything = all_tiles(next_level)
        count = (
            len(everything)
            if cap is None or loop.include_newline_in_selection
            else min(len(everything), cap)
        )
        rows = next_level.token_grid_hw[0]
        while count > 0:
            tiles = everything[:count]
            need = pruned_size(
                count * next_level.tokens_per_tile_side**2,
                rows,
                keep_ratio=loop.keep_ratio,
                all_newlines=loop.keep_all_newlines,
                total_rows=rows,
            )
            if need <= self.level_allowance(state) and valid_token_mask(next_level, tiles).any():
                return tiles
            count -= 1
        return everything[:1]

    def pruned_bound(self, n_tokens: int, n_rows: int, level: DipLevel) -> int:
        """Most vision tokens pruning can keep of ``n_tokens`` valid tokens in ``n_rows`` rows.

        With newlines among the candidates (parity, spec §5.4) the ratio applies to tokens plus
        every newline, and all of the picks may be image tokens.
        """
        loop, total_rows = self.config.loop, level.token_grid_hw[0]
        if not loop.include_newline_in_selection:
            return pruned_size(
                n_tokens,
                n_rows,
                keep_ratio=loop.keep_ratio,
                all_newlines=loop.keep_all_newlines,
                total_rows=total_rows,
            )
        kept = min(n_tokens, int((n_tokens + total_rows) * loop.keep_ratio))
        return kept + (total_rows if loop.keep_all_newlines else min(n_rows, kept))

    def llm_view(self, state: FocusState) -> LlmView:
        """The last level's tokens pruned by score (or, unscored, their upper bound)."""
        loop, last = self.config.loop, state.visited[-1]
        allowance = self.level_allowance(state)
        if not last.scored:
            side = last.level.tokens_per_tile_side
            rows_bound = min(last.level.token_grid_hw[0], len(last.tiles_rc) * side)
            final = self.pruned_bound(int(last.valid.sum()), rows_bound, last.level)
            return LlmView(
                level=last.level,
                tiles_rc=last.tiles_rc,
                sequence=None,
                n_vision=self.ctx.thumbnail_tokens + 1 + min(final, allowance),
                n_text=state.prompt.n_text_tokens,
            )
        pruned = prune_tokens(
            last.token_scores,
            last.newline_scores,
            last.valid,
            keep_ratio=loop.keep_ratio,
            newlines_in_ratio=loop.include_newline_in_selection,
            keep_all_newlines=loop.keep_all_newlines,
            allowance=allowance,
        )
        sequence = build_level_sequence(
            state.prompt,
            thumbnail_tokens=self.ctx.thumbnail_tokens,
            separator_id=self.ctx.separator_id,
            level=last.level,
            include=pruned.keep,
            newline_rows=self.ctx.newline_rows(pruned.newline_rows),
        )
        n_text = int((sequence.layout.kind == TokenKind.TEXT.value).sum())
        return LlmView(
            level=last.level,
            tiles_rc=last.tiles_rc,
            sequence=sequence,
            n_vision=sequence.length - n_text,
            n_text=n_text,
        )


#: ``FocusConfig.strategy`` -> its view.
VIEWS: dict[str, Callable[..., View]] = {
    "focus": FocusView,
    "thumbnail": ThumbnailView,
    "grid": GridView,
    "full": FullView,
    "fastv": FastVView,
    "pdrop": PyramidDropView,
}


def view_for(ctx: ViewContext, *, dry_run: bool = False) -> View:
    """The view of ``ctx.config.strategy``."""
    return VIEWS[ctx.config.strategy](ctx, dry_run=dry_run)
