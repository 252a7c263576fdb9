"""The LLM-attention and random scorers: checked against eager attention, seeded, in the engine."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lrs_core.errors import ConfigError
from lrs_core.focus.engine import FocusConfig, FocusEngine, ScoreRequest
from lrs_core.focus.scorers import LlmAttentionScorer, RandomScorer
from lrs_core.focus.state import FloatArray, TokenScorer
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.pyramid import Pyramid, open_pyramid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "What is the color of the top-most ship?"
TOL = 1e-5


class Recording:
    """Wraps a scorer and keeps every request and its scores."""

    def __init__(self, inner: TokenScorer) -> None:
        self.inner = inner
        self.calls: list[tuple[ScoreRequest, FloatArray]] = []

    def __call__(self, request: ScoreRequest) -> FloatArray:
        scores = self.inner(request)
        self.calls.append((request, scores))
        return scores


@pytest.fixture(scope="module")
def pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


def _answer(loaded: LoadedModel, pyramid: Pyramid, scorer: TokenScorer) -> None:
    config = FocusConfig.from_preset("default", max_new_tokens=1)
    FocusEngine(loaded, config=config, scorer=scorer).answer(pyramid, QUESTION)


def _eager_rows(loaded: LoadedModel, request: ScoreRequest, layer: int) -> np.ndarray:
    """The same rows from eager ``output_attentions``: full softmax row, renormalised on keys."""
    llm = copy.deepcopy(loaded.model.llm)
    llm.set_attn_implementation("eager")
    with torch.inference_mode():
        out = llm(
            inputs_embeds=request.inputs_embeds,
            position_ids=request.position_ids,
            attention_mask=request.attention_mask,
            output_attentions=True,
        )
    query = int(request.query_positions[0, 0])
    row = out.attentions[layer][0, :, query, :]  # (H, L)
    keys = row[:, request.key_positions[0]].double()  # (H, K)
    keys[:, ~torch.from_numpy(request.key_valid)] = 0.0
    keys = keys / keys.sum(-1, keepdim=True)
    reference: np.ndarray = keys.mean(0).numpy()
    return reference


def test_llm_attention_scorer_equals_eager_attention(
    tiny_model: LoadedModel, pyramid: Pyramid
) -> None:
    scorer = LlmAttentionScorer(tiny_model)
    assert scorer.layer == tiny_model.model.config.rfm_llm_layers[-1]
    recording = Recording(scorer)
    _answer(tiny_model, pyramid, recording)
    assert recording.calls, "the default preset scored no level"
    for request, scores in recording.calls:
        reference = _eager_rows(tiny_model, request, scorer.layer)
        np.testing.assert_allclose(scores, reference, atol=TOL)
        assert np.all(scores[~request.key_valid] == 0)
        assert abs(float(scores.sum()) - 1.0) < 1e-4


def test_llm_attention_scorer_rejects_a_missing_layer(tiny_model: LoadedModel) -> None:
    layers = tiny_model.model.llm.config.num_hidden_layers
    with pytest.raises(ConfigError, match="layer"):
        LlmAttentionScorer(tiny_model, layer=layers)


def test_random_scorer_is_seeded_and_valid(tiny_model: LoadedModel, pyramid: Pyramid) -> None:
    recording = Recording(RandomScorer(seed=3))
    _answer(tiny_model, pyramid, recording)
    assert recording.calls
    for request, scores in recording.calls:
        assert np.array_equal(scores, RandomScorer(seed=3)(request))
        assert not np.array_equal(scores, RandomScorer(seed=4)(request))
        assert np.all(scores[~request.key_valid] == 0)
        assert np.all(scores[request.key_valid] > 0)
        assert abs(float(scores.sum()) - 1.0) < 1e-5
