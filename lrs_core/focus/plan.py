"""Dry runs: what a question would cost under a preset, counted without running any model.

Baselines (``thumbnail``, ``grid-N``, ``full``) are planned exactly: the same view, tiles and
sequence the engine builds, so tiles, tokens per level, prefill tokens and FLOPs equal an executed
run's on a cold feature cache (decode steps are taken as ``max_new_tokens``).
``fastv``/``pdrop`` add
the drop schedule's per-layer lengths. ``default``/``parity`` depend on the RFM's scores, so their
plan is an **upper bound**: at each zoom step every tile of the next level (``parity``), or
``tiles_cap`` of them (``default``), further reduced to the most tiles whose pruned tokens fit the
budget; the final level keeps ``keep_ratio`` of those tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lrs_core.dip.plan import DipLevel, plan_pyramid
from lrs_core.focus.select import pruned_size, valid_token_mask
from lrs_core.focus.sequence import build_level_sequence
from lrs_core.models.flops import count_flops
from lrs_core.models.layout import TokenKind
from lrs_core.records import SceneRef

if TYPE_CHECKING:
    from lrs_core.focus.engine import FocusEngine
    from lrs_core.records import AnswerRecord

#: Text of ``preset_params["run"]["plan"]`` for upper-bound plans.
UPPER_BOUND_NOTE = (
    "upper bound: the zoom tiles depend on the RFM's scores; every tile of each reachable level "
    "(capped by tiles_cap and the token budget) is counted"
)


def _scene(target: Any) -> tuple[SceneRef, int, int]:
    if isinstance(target, (tuple, list)):
        width, height = (int(v) for v in target)
        return SceneRef(scene_id="planned", store="", size_wh=(width, height)), width, height
    width, height = target.size_wh
    return target.scene_ref(), int(width), int(height)


def _first_tiles(level: DipLevel, count: int) -> list[tuple[int, int]]:
    rows, cols = level.grid_hw
    return [(r, c) for r in range(rows) for c in range(cols)][:count]


def plan_question(
    engine: FocusEngine, target: Any, question: str, *, question_id: str | None = None
) -> AnswerRecord:
    """Return a planned :class:`AnswerRecord` (``accounting.planned=True``, empty answer).

    Args:
        engine: the engine whose model dimensions, tokenizer and config are used.
        target: an opened pyramid, or a scene size ``(width, height)`` in pixels.
        question: the question text (its token count matters).
        question_id: id for the record.
    """
    from lrs_core.focus.engine import FocusState, ScoredLevel, all_tiles, question_id_of

    cfg = engine.config
    scene, width, height = _scene(target)
    prompt = engine.prompt_ids(question)
    plan = plan_pyramid(width, height, config=engine.dip_config)
    state = FocusState(
        question=question, prompt=prompt, plan=plan, allowance=engine.allowance(prompt)
    )
    state.tiles_encoded = 1  # the thumbnail
    levels: list[ScoredLevel] = []
    extra: dict[str, Any] = {}
    thumb = engine.thumbnail_tokens
    base_level: DipLevel | None = None

    def visit(level: DipLevel, tiles: list[tuple[int, int]]) -> None:
        rows, cols = level.token_grid_hw
        levels.append(
            ScoredLevel(
                level=level,
                tiles_rc=tiles,
                valid=valid_token_mask(level, tiles),
                token_scores=np.zeros((rows, cols), dtype=np.float32),
                newline_scores=np.zeros(rows, dtype=np.float32),
            )
        )
        state.tiles_encoded += len(tiles)

    if cfg.strategy == "focus":
        engine._check_thumbnail_fits(state.allowance, with_level=True)
        extra["plan"] = UPPER_BOUND_NOTE
        level_allowance = state.allowance - thumb - 1
        level = plan.level(1)
        visit(level, all_tiles(level))
        steps = 0
        while True:
            valid = levels[-1].valid
            rows_n = level.token_grid_hw[0]
            if cfg.rfm_gather_valid_only:
                newline_rows = rows_n if cfg.keep_all_newlines else int(valid.any(axis=1).sum())
                length = prompt.n_text_tokens + thumb + 1 + int(valid.sum()) + newline_rows
            else:
                length = prompt.n_text_tokens + thumb + level_view_length(level)
            state.rfm_tokens.append(length)
            next_level, stop_reason = engine.next_zoom_level(plan, level, steps)
            if next_level is None:
                state.stop_reason = stop_reason
                break
            count = (
                next_level.n_tiles
                if cfg.tiles_cap is None or cfg.include_newline_in_selection
                else min(next_level.n_tiles, cfg.tiles_cap)
            )
            while count > 0:
                tiles = _first_tiles(next_level, count)
                mask = valid_token_mask(next_level, tiles)
                need = pruned_size(
                    count * next_level.tokens_per_tile_side**2,
                    next_level.token_grid_hw[0],
                    keep_ratio=cfg.keep_ratio,
                    all_newlines=cfg.keep_all_newlines,
                    total_rows=next_level.token_grid_hw[0],
                )
                if need <= level_allowance and mask.any():
                    break
                count -= 1
            if count == 0:
                state.stop_reason = f"dip_level {next_level.dip_level} does not fit the budget"
                break
            level = next_level
            visit(level, _first_tiles(level, count))
            steps += 1
        last = levels[-1]
        rows_bound = min(
            last.level.token_grid_hw[0], len(last.tiles_rc) * last.level.tokens_per_tile_side
        )
        final = pruned_size(
            int(last.valid.sum()),
            rows_bound,
            keep_ratio=cfg.keep_ratio,
            all_newlines=cfg.keep_all_newlines,
            total_rows=last.level.token_grid_hw[0],
        )
        n_vision = thumb + 1 + min(final, level_allowance)
        n_text = prompt.n_text_tokens
    else:
        base_level = engine.baseline_level(plan, state.allowance, dry_run=True)
        if base_level is None:
            engine._check_thumbnail_fits(state.allowance, with_level=False)
        else:
            visit(base_level, all_tiles(base_level))
        sequence = build_level_sequence(
            prompt,
            thumbnail_tokens=thumb,
            separator_id=engine.separator_id,
            level=base_level,
            newline_rows=None
            if base_level is None
            else engine.newline_rows(np.ones(base_level.token_grid_hw[0], dtype=bool)),
        )
        n_text = int((sequence.layout.kind == TokenKind.TEXT.value).sum())
        n_vision = sequence.length - n_text
    steps_decode = cfg.max_new_tokens
    prefill = n_vision + n_text
    if cfg.strategy in ("fastv", "pdrop"):
        from lrs_core.focus.engine import layer_drop_llm_flops
        from lrs_core.models.layer_drop import LayerDropSchedule

        n_layers = int(engine.model.llm.config.num_hidden_layers)
        if cfg.strategy == "fastv":
            schedule = LayerDropSchedule.fastv(
                layer=cfg.fastv_layer, keep_ratio=cfg.fastv_keep_ratio
            )
        else:
            schedule = LayerDropSchedule.pdrop(
                num_layers=n_layers, keep_ratio=cfg.pdrop_keep_ratio, n_stages=cfg.pdrop_stages
            )
        droppable = n_vision - (1 if base_level is not None else 0)  # the separator is text
        per_layer = schedule.tokens_per_layer(
            num_layers=n_layers, prefill_tokens=prefill, n_vision=droppable
        )
        extra["tokens_per_layer"] = per_layer
        llm_flops = layer_drop_llm_flops(engine.dims, per_layer, decode_steps=steps_decode)
    else:
        llm_flops = count_flops(
            engine.dims, vision_tiles=0, prefill_tokens=prefill, decode_steps=steps_decode
        ).llm_flops
    return engine._record(
        scene=scene,
        question=question,
        question_id=question_id or question_id_of(question),
        answer="",
        state=state,
        llm_input_counts=(n_vision, n_text),
        levels=levels,
        kept=None,
        decode_steps=steps_decode,
        llm_flops=llm_flops,
        peak=0,
        extra=extra,
        planned=True,
    )


def level_view_length(level: DipLevel) -> int:
    """Slots of a whole level in a sequence: separator + ``Ht * (Wt + 1)``."""
    return 1 + level.n_tokens
