"""Many questions about one scene in one LLM pass equal the one-by-one answers (tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lrs_core.errors import ConfigError
from lrs_core.focus.engine import FocusConfig, FocusEngine, ScoreRequest, pack_llm_inputs
from lrs_core.models.generation import prefill_logits
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.pyramid import Pyramid, open_pyramid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Long enough for the rows to finish at different steps, short enough to stay fast.
NEW_TOKENS = 6
#: Three questions of unequal lengths, each drawn to another region of the 2100 x 1400 scene.
QUESTIONS = (
    ("short", "Any ships?"),
    ("medium", "How many storage tanks stand next to the river bend?"),
    (
        "long",
        "Looking at the whole scene from the top left to the bottom right, which colour is the "
        "largest building near the airport runway and is there a bridge close to it?",
    ),
)
#: Level-0 boxes the scorer favours per question: one, two and several tiles' worth of area.
BOXES = {
    "Any ships?": [(100.0, 100.0, 160.0, 160.0)],
    QUESTIONS[1][1]: [(1500.0, 900.0, 1560.0, 960.0), (300.0, 1100.0, 360.0, 1160.0)],
    QUESTIONS[2][1]: [
        (x, y, x + 60.0, y + 60.0) for x in (200.0, 1000.0, 1800.0) for y in (200.0, 1200.0)
    ],
}


def _overlaps(box: tuple[float, ...], other: tuple[float, ...]) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


class PerQuestionScorer:
    """Scores 1 for tokens over the question's boxes, 0.001 elsewhere (so kept sets differ)."""

    def __call__(self, request: ScoreRequest) -> np.ndarray:
        scores = np.zeros(len(request.key_grid_rc), dtype=np.float32)
        for index, (row, col) in enumerate(request.key_grid_rc.tolist()):
            if request.key_is_newline[index] or not request.key_valid[index]:
                continue
            bbox = request.level.token_bbox_px((row, col))
            hit = any(_overlaps(bbox, box) for box in BOXES[request.question])
            scores[index] = 1.0 if hit else 0.001
        return scores


@pytest.fixture(scope="module")
def large_pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


def _engine(loaded: LoadedModel, preset: str = "default") -> FocusEngine:
    config = FocusConfig.from_preset(preset, max_new_tokens=NEW_TOKENS, max_zoom_steps=1)
    return FocusEngine(loaded, config=config, scorer=PerQuestionScorer())


def test_three_questions_in_one_pass_equal_one_by_one(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    engine = _engine(tiny_model)
    alone = [engine.answer(large_pyramid, text, question_id=qid) for qid, text in QUESTIONS]
    inputs = [engine.prepare(large_pyramid, text) for _, text in QUESTIONS]
    assert len({x.n_vision for x in inputs}) == 3  # different kept-token counts
    assert len({x.sequence.length for x in inputs}) == 3  # unequal lengths: left padding used
    ticks: list[tuple[int, int]] = []
    batched = engine.answer_many(
        large_pyramid, QUESTIONS, progress=lambda done, total: ticks.append((done, total))
    )
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    for one, many in zip(alone, batched, strict=True):
        assert many.question_id == one.question_id and many.error is None
        assert many.answer == one.answer
        assert many.accounting.decode_steps == one.accounting.decode_steps
        assert many.accounting.vision_tokens_to_llm == one.accounting.vision_tokens_to_llm
        assert many.accounting.flops.llm_flops == one.accounting.flops.llm_flops
        assert many.preset_params["run"]["llm_batch"] == 3
    # next-token logits of the packed batch equal each question's own prefill, and differ between
    # questions (so a row mix-up, a wrong pad side or shifted positions would show)
    packed = pack_llm_inputs(inputs)
    assert packed.attention_mask.sum(dim=1).tolist() == [x.sequence.length for x in inputs]
    with torch.inference_mode():
        batch_logits = prefill_logits(
            tiny_model.model.llm,
            packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
        )[:, -1]
        single_logits = torch.cat(
            [
                prefill_logits(
                    tiny_model.model.llm,
                    x.inputs_embeds,
                    attention_mask=torch.ones_like(x.position_ids),
                    position_ids=x.position_ids,
                )[:, -1]
                for x in inputs
            ]
        )
    torch.testing.assert_close(batch_logits, single_logits, rtol=1e-4, atol=1e-4)
    assert float((single_logits[0] - single_logits[1]).abs().max()) > 1e-2
    # the generator's rows equal the single-row answers token for token
    rows = engine.generate_many(inputs)
    singles = [engine.generate_many([x])[0] for x in inputs]
    assert rows == singles
    assert [r[0] for r in rows] == [a.answer for a in alone]


def test_batches_split_and_layer_drop_answers_one_by_one(
    tiny_model: LoadedModel, large_pyramid: Pyramid
) -> None:
    engine = _engine(tiny_model)
    records = engine.answer_many(large_pyramid, QUESTIONS, batch_size=2)
    assert [r.preset_params["run"]["llm_batch"] for r in records] == [2, 2, 1]
    too_long = " ".join(["ship"] * (tiny_model.model.config.max_context_tokens + 10))
    failed, answered = engine.answer_many(
        large_pyramid, [("too-long", too_long), QUESTIONS[0]], batch_size=2
    )
    assert failed.error is not None and "TokenBudgetError" in failed.error and not failed.answer
    assert answered.error is None and answered.answer == records[0].answer
    assert answered.preset_params["run"]["llm_batch"] == 1
    fastv = FocusEngine(
        tiny_model, config=FocusConfig.from_preset("fastv", max_new_tokens=1, max_zoom_steps=0)
    )
    (record,) = fastv.answer_many(large_pyramid, QUESTIONS[:1])
    assert "llm_batch" not in record.preset_params["run"]
    with pytest.raises(ConfigError, match="batch_size"):
        engine.answer_many(large_pyramid, QUESTIONS, batch_size=0)
