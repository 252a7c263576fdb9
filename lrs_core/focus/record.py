"""Answer records of the coarse-to-fine engine: evidence, heat map, accounting and FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

from lrs_core.focus.accounting import rfm_flops, vision_flops
from lrs_core.focus.config import FocusConfig
from lrs_core.focus.heatmap import splat_levels
from lrs_core.focus.select import top_indices
from lrs_core.focus.state import STAGES, FocusState, Generated, ScoredLevel
from lrs_core.focus.views import LlmView
from lrs_core.models.flops import ModelDims
from lrs_core.models.layout import TokenKind
from lrs_core.records import (
    Accounting,
    AnswerRecord,
    FlopCount,
    SceneRef,
    TileEvidence,
    TokenEvidence,
)


@dataclass(frozen=True, kw_only=True)
class RecordSource:
    """What every record of one engine shares: the model and the config.

    Attributes:
        model_id: the model's name.
        config: the engine's config (the record's preset and ``preset_params``).
        dims: model dimensions for the FLOP counts.
        thumbnail_tokens: tokens of the thumbnail.
    """

    model_id: str
    config: FocusConfig
    dims: ModelDims
    thumbnail_tokens: int


@dataclass(frozen=True, eq=False, kw_only=True)
class QuestionOutcome:
    """One question's loop and LLM, answered or planned.

    Attributes:
        scene: the scene.
        question_id: the record's id.
        state: the loop's state (question, visited levels, tiles, RFM passes, timings).
        llm_view: the tokens the LLM got (or would get).
        generated: the answer, decode steps, LLM FLOPs and extra run fields.
        peak_bytes: peak memory of the question (0 when planned).
        planned: counted without running a model.
    """

    scene: SceneRef
    question_id: str
    state: FocusState
    llm_view: LlmView
    generated: Generated
    peak_bytes: int = 0
    planned: bool = False


def build_record(source: RecordSource, outcome: QuestionOutcome) -> AnswerRecord:
    """Return the :class:`AnswerRecord` of one question (answered or planned).

    Evidence tiles: every tile of every visited level, ``score`` = the RFM mass of the tile's own
    tokens at its level (0 where the level was not scored), ``is_final`` on the last level. FLOPs:
    vision for the tiles actually encoded (cache hits are free), RFM per pass, LLM as given.
    """
    config, state, llm_view = source.config, outcome.state, outcome.llm_view
    levels = state.visited
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
    tokens_evidence = token_evidence(levels, llm_view, cap=config.output.evidence_tokens_cap)
    scored = [(v.level, v.token_scores, v.valid) for v in levels if v.scored]
    heatmap = (
        splat_levels(
            scored, image_hw=state.plan.image_hw, long_side_cells=config.output.heatmap_cells
        )
        if scored
        else None
    )
    tokens_per_level = (source.thumbnail_tokens, *(int(v.valid.sum()) for v in levels))
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
        **outcome.generated.extra,
    }
    n_vision, n_text = llm_view.n_vision, llm_view.n_text
    return AnswerRecord(
        question_id=outcome.question_id,
        scene=outcome.scene,
        question=state.question,
        answer=outcome.generated.answer,
        model_id=source.model_id,
        preset=config.preset,
        preset_params={**config.to_dict(), "run": run},
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
            decode_steps=outcome.generated.decode_steps,
            flops=FlopCount(
                vision_flops=vision_flops(source.dims, tiles_encoded=state.tiles_encoded),
                llm_flops=outcome.generated.llm_flops,
                rfm_flops=rfm_flops(source.dims, state.rfm_tokens),
            ),
            seconds=seconds,
            peak_memory_bytes=outcome.peak_bytes,
            planned=outcome.planned,
        ),
    )


def token_evidence(
    levels: list[ScoredLevel], kept: LlmView, *, cap: int
) -> tuple[TokenEvidence, ...]:
    """Return the kept tokens of the last scored level with their scores, the ``cap`` best."""
    if kept.sequence is None or kept.level is None or not levels or not levels[-1].scored:
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
