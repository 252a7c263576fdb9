"""Answer records of the coarse-to-fine engine: evidence, heat map, accounting and FLOPs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lrs_core.focus.heatmap import splat_levels
from lrs_core.focus.select import top_indices
from lrs_core.focus.state import STAGES, FocusState, LlmInput, ScoredLevel
from lrs_core.models.flops import ModelDims, count_flops
from lrs_core.models.layout import TokenKind
from lrs_core.records import (
    Accounting,
    AnswerRecord,
    FlopCount,
    SceneRef,
    TileEvidence,
    TokenEvidence,
)

if TYPE_CHECKING:
    from lrs_core.focus.engine import FocusEngine


def build_record(
    engine: FocusEngine,
    *,
    scene: SceneRef,
    question: str,
    question_id: str,
    answer: str,
    state: FocusState,
    llm_input_counts: tuple[int, int],
    levels: list[ScoredLevel],
    kept: LlmInput | None,
    decode_steps: int,
    llm_flops: float,
    peak: int,
    extra: dict[str, Any],
    planned: bool,
) -> AnswerRecord:
    """Return the :class:`AnswerRecord` of one question (answered or planned).

    Evidence tiles: every tile of every visited level, ``score`` = the RFM mass of the tile's own
    tokens at its level (0 where the level was not scored), ``is_final`` on the last level. FLOPs:
    vision for the tiles actually encoded (cache hits are free), RFM per pass, LLM as given.
    """
    n_vision, n_text = llm_input_counts
    tiles_evidence = []
    for index, visited in enumerate(levels):
        level = visited.level
        side = level.tokens_per_tile_side
        for tile in visited.tiles_rc:
            block = visited.token_scores[
                tile[0] * side : (tile[0] + 1) * side, tile[1] * side : (tile[1] + 1) * side
            ]
            tiles_evidence.append(
                TileEvidence(
                    dip_level=level.dip_level,
                    tile_rc=(int(tile[0]), int(tile[1])),
                    bbox_px=level.tile_bbox_px(tile),
                    score=float(block.sum()),
                    is_final=index == len(levels) - 1,
                )
            )
    tokens_evidence = token_evidence(levels, kept, cap=engine.config.evidence_tokens_cap)
    scored = [(v.level, v.token_scores, v.valid) for v in levels if v.scored]
    heatmap = (
        splat_levels(
            scored, image_hw=state.plan.image_hw, long_side_cells=engine.config.heatmap_cells
        )
        if scored
        else None
    )
    vision_flops = count_flops(
        engine.dims, vision_tiles=state.tiles_encoded, prefill_tokens=0
    ).vision_flops
    rfm_flops = sum(
        count_flops(engine.dims, vision_tiles=0, prefill_tokens=0, rfm_tokens=n).rfm_flops
        for n in state.rfm_tokens
    )
    tokens_per_level = (engine.thumbnail_tokens, *(int(v.valid.sum()) for v in levels))
    seconds = dict(state.seconds)
    seconds.setdefault("total", sum(seconds.get(s, 0.0) for s in STAGES))
    run = {
        "levels": [
            {
                "dip_level": v.level.dip_level,
                "resize_hw": list(v.level.resize_hw),
                "tiles": len(v.tiles_rc),
            }
            for v in levels
        ],
        "n_tiled_levels": state.plan.n_levels,
        "stop_reason": state.stop_reason,
        "rfm_passes": len(state.rfm_tokens),
        "rfm_tokens": list(state.rfm_tokens),
        "vision_allowance": state.allowance,
        **extra,
    }
    return AnswerRecord(
        question_id=question_id,
        scene=scene,
        question=question,
        answer=answer,
        model_id=engine.loaded.model_id,
        preset=engine.config.preset,
        preset_params={**engine.config.to_dict(), "run": run},
        evidence_tiles=tuple(tiles_evidence),
        evidence_tokens=tokens_evidence,
        heatmap=heatmap,
        accounting=Accounting(
            vision_tiles_encoded=state.tiles_encoded,
            vision_tiles_cached=state.tiles_cached,
            tokens_per_level=tokens_per_level,
            vision_tokens_to_llm=n_vision,
            llm_text_tokens=n_text,
            llm_prefill_tokens=n_vision + n_text,
            decode_steps=decode_steps,
            flops=FlopCount(vision_flops=vision_flops, llm_flops=llm_flops, rfm_flops=rfm_flops),
            seconds=seconds,
            peak_memory_bytes=peak,
            planned=planned,
        ),
    )


def token_evidence(
    levels: list[ScoredLevel], kept: LlmInput | None, *, cap: int
) -> tuple[TokenEvidence, ...]:
    """Return the kept tokens of the last scored level with their scores, the ``cap`` best."""
    if kept is None or kept.level is None or not levels or not levels[-1].scored:
        return ()
    last = levels[-1]
    layout = kept.sequence.layout
    index = layout.positions_of(TokenKind.LEVEL)
    rows, cols = layout.grid_r[index], layout.grid_c[index]
    values = last.token_scores[rows, cols]
    best = top_indices(values, cap)
    return tuple(
        TokenEvidence(
            dip_level=last.level.dip_level,
            grid_rc=(int(rows[i]), int(cols[i])),
            bbox_px=last.level.token_bbox_px((int(rows[i]), int(cols[i]))),
            score=float(values[i]),
        )
        for i in best.tolist()
    )


def layer_drop_llm_flops(
    dims: ModelDims, tokens_per_layer: Sequence[int], *, decode_steps: int
) -> float:
    """LLM FLOPs of a prefill whose layers see different lengths (FastV/PDrop), plus decoding.

    Each layer is counted as a one-layer model on its own length (dense attention, as
    :func:`count_flops`); the LM head is counted once for the prefill's last token and once per
    decode step. Decode step t of layer l attends over ``tokens_per_layer[l] + t`` keys.
    """
    one_layer = dataclasses.replace(dims, llm=dataclasses.replace(dims.llm, layers=1))
    head = 2.0 * dims.llm.hidden * dims.llm.vocab
    head_count = 1 + max(0, decode_steps - 1)
    total = 0.0
    for length in tokens_per_layer:
        total += count_flops(
            one_layer, vision_tiles=0, prefill_tokens=length, decode_steps=decode_steps
        ).llm_flops
        total -= head * head_count
    return total + head * head_count
