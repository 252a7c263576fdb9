"""``parity`` reproduces the released code's quirks; ``default`` keeps the correct behaviour.

One test per quirk of issue 11 (each fails on the code before the fix):

* pass-2 placeholder logits get ``+1.0`` instead of ``-inf`` (the reference casts its 4-D float
  mask to bool before adding it);
* a single tiled level is re-encoded with its token grid unpadded against ``resize_hw``;
* parity pixels are resized on floats and padded with exactly 0 after normalisation;
* the padding colour is the model's own image mean (a SigLIP model pads with 0.5 grey).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lrs_core.dip.plan import DipConfig, plan_pyramid, reencoded_level
from lrs_core.focus.engine import FocusConfig, FocusEngine
from lrs_core.focus.rfm import RfmConfig, score_level_tokens
from lrs_core.focus.tiles import resample_parity
from lrs_core.models.config import SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.raster.ingest import IngestConfig, ingest_scene
from lrs_core.raster.pyramid import Pyramid, open_pyramid
from tests.fixtures.scenes import make_rgb_pattern, write_geotiff

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTION = "How many ships are in the harbour?"
#: A scene size whose single level unpads differently against (W, H) and resize_hw (issue 11).
ODD_WIDTH_PX, ODD_HEIGHT_PX = 343, 358
LENGTH = 40
KEYS = slice(10, 30)
PLACEHOLDERS = slice(15, 21)


@pytest.fixture(scope="module")
def large_pyramid(large_store: Path) -> Pyramid:
    return open_pyramid(large_store)


@pytest.fixture(scope="module")
def odd_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Pyramid:
    root = tmp_path_factory.mktemp("odd_store")
    source = write_geotiff(root / "odd.tif", make_rgb_pattern(ODD_HEIGHT_PX, ODD_WIDTH_PX, seed=3))
    result = ingest_scene(source, root / "stores", config=IngestConfig(n_workers=1))
    assert result.store is not None
    return open_pyramid(Path(result.store))


def _capture_pixels(monkeypatch: pytest.MonkeyPatch, loaded: LoadedModel) -> list[torch.Tensor]:
    """Record every pixel batch the engine gives the vision tower (thumbnail first)."""
    seen: list[torch.Tensor] = []
    model: Any = loaded.model
    original: Callable[..., torch.Tensor] = model.encode_tiles

    def encode(pixels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        seen.append(pixels.detach().clone())
        return original(pixels, **kwargs)

    monkeypatch.setattr(model, "encode_tiles", encode)
    return seen


# -- 1. pass-2 placeholder logits ----------------------------------------------------------------


def _scores_by_hand(
    loaded: LoadedModel, embeds: torch.Tensor, mask: torch.Tensor, *, bias: float
) -> torch.Tensor:
    """Layers 0..n-2 with placeholders masked, then the last layer's q.k + bias at placeholders."""
    rfm: Any = loaded.model.rfm
    positions = torch.arange(LENGTH)[None]
    hidden = rfm(
        embeds, attention_mask=mask, num_layers=len(rfm.layers) - 1, position_ids=positions
    )
    layer = rfm.layers[-1]
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(x).view(1, LENGTH, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, LENGTH, -1, attn.head_dim).transpose(1, 2)
    cos, sin = rfm.rotary_emb(x, positions)
    half = attn.head_dim // 2

    def rope(t: torch.Tensor) -> torch.Tensor:
        rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        out: torch.Tensor = t * cos[:, None] + rotated * sin[:, None]
        return out

    q, k = rope(q), rope(k)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q[:, :, -1:] @ k[:, :, KEYS].transpose(-1, -2)).float() * attn.scaling
    logits = logits + bias * (mask[:, KEYS] == 0).float()[:, None, None, :]
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0]


def test_parity_adds_one_to_placeholder_logits_before_the_head_mean(
    tiny_model: LoadedModel,
) -> None:
    embeds = torch.randn(1, LENGTH, tiny_model.model.hidden_size, generator=torch.Generator())
    mask = torch.ones(1, LENGTH, dtype=torch.int64)
    mask[:, PLACEHOLDERS] = 0
    keys = torch.arange(KEYS.start, KEYS.stop)[None]
    args: dict[str, Any] = {
        "position_ids": torch.arange(LENGTH)[None],
        "attention_mask": mask,
        "query_positions": torch.tensor([[LENGTH - 1]]),
        "key_positions": keys,
    }
    with torch.inference_mode():
        quirk = score_level_tokens(
            tiny_model.model, embeds, config=RfmConfig(placeholder_logit_bias=1.0), **args
        )
        expected = _scores_by_hand(tiny_model, embeds, mask, bias=1.0)
        correct = score_level_tokens(
            tiny_model.model, embeds, key_mask=mask[:, KEYS].bool(), **args
        )
    torch.testing.assert_close(quirk, expected, rtol=1e-5, atol=1e-6)
    placeholder = slice(PLACEHOLDERS.start - KEYS.start, PLACEHOLDERS.stop - KEYS.start)
    assert float(quirk[0, placeholder].sum()) > 0  # placeholders took part in the softmax
    assert float(correct[0, placeholder].sum()) == 0  # default masks them
    valid = torch.ones(KEYS.stop - KEYS.start, dtype=torch.bool)
    valid[placeholder] = False
    assert not torch.allclose(quirk[0, valid], correct[0, valid])

    parity = FocusConfig.from_preset("parity")
    assert parity.loop.rfm_placeholder_logit_bias == 1.0
    assert FocusConfig.from_preset("default").loop.rfm_placeholder_logit_bias is None
    engine: Any = FocusEngine(tiny_model, config=parity)
    assert engine.scorer.config.placeholder_logit_bias == 1.0


# -- 2. single-level re-encode -------------------------------------------------------------------


def test_single_level_reencode_unpads_against_resize_hw(
    tiny_model: LoadedModel, odd_pyramid: Pyramid
) -> None:
    plan = plan_pyramid(ODD_WIDTH_PX, ODD_HEIGHT_PX, config=DipConfig.preset("parity"))
    level = plan.level(1)
    assert plan.n_levels == 1 and level.token_grid_hw == (24, 22)  # against (W, H) = 343 x 358
    assert reencoded_level(level).token_grid_hw == (24, 23)  # against resize_hw = 644 x 672
    default_level = plan_pyramid(ODD_WIDTH_PX, ODD_HEIGHT_PX).level(1)
    assert reencoded_level(default_level) == default_level

    engine = FocusEngine(tiny_model, config=FocusConfig.from_preset("parity", max_new_tokens=1))
    llm_input = engine.prepare(odd_pyramid, QUESTION)
    assert llm_input.level is not None and llm_input.level.token_grid_hw == (24, 23)
    record = engine.answer(odd_pyramid, QUESTION)
    # pass 2 runs over the full canvas unpadded against resize_hw: 24 x (23 + newline) = 576 level
    # tokens, one column more than pass 1's 24 x (22 + newline) = 552
    run = record.preset_params["run"]
    assert run["rfm_passes"] == 2
    assert run["rfm_tokens"][1] - run["rfm_tokens"][0] == 576 - 552


# -- 3. parity pixels ----------------------------------------------------------------------------


def test_parity_pixels_are_unrounded_and_padded_with_exact_zero(
    tiny_model: LoadedModel, large_pyramid: Pyramid, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _capture_pixels(monkeypatch, tiny_model)
    engine = FocusEngine(tiny_model, config=FocusConfig.from_preset("parity", max_new_tokens=1))
    engine.prepare(large_pyramid, QUESTION)
    thumb = plan_pyramid(2100, 1400, config=engine.dip_config).thumbnail
    rows, cols = thumb.resize_hw
    pixels = seen[0][0]  # (3, S, S), the thumbnail
    assert rows < pixels.shape[1]
    assert torch.equal(pixels[:, rows:, :], torch.zeros_like(pixels[:, rows:, :]))
    values = resample_parity(large_pyramid, resize_hw=(rows, cols), rows=(0, rows), cols=(0, cols))
    mean = torch.tensor(tiny_model.model.config.image_mean).view(3, 1, 1)
    std = torch.tensor(tiny_model.model.config.image_std).view(3, 1, 1)
    expected = (torch.from_numpy(values).permute(2, 0, 1) / 255 - mean) / std
    torch.testing.assert_close(pixels[:, :rows, :cols], expected, rtol=0, atol=1e-5)
    rounded = (torch.from_numpy(np.rint(values)).permute(2, 0, 1) / 255 - mean) / std
    assert float((pixels[:, :rows, :cols] - rounded).abs().max()) > 1e-3  # not rounded to uint8


# -- 4. padding colour of the model --------------------------------------------------------------


def test_padding_is_the_models_own_mean(
    tiny_model: LoadedModel, large_pyramid: Pyramid, monkeypatch: pytest.MonkeyPatch
) -> None:
    siglip = dataclasses.replace(
        tiny_model.model.config, image_mean=SIGLIP_IMAGE_MEAN, image_std=SIGLIP_IMAGE_STD
    )
    monkeypatch.setattr(tiny_model.model, "config", siglip)
    seen = _capture_pixels(monkeypatch, tiny_model)
    engine = FocusEngine(tiny_model, config=FocusConfig.from_preset("default", max_new_tokens=1))
    engine.prepare(large_pyramid, QUESTION)
    rows = plan_pyramid(2100, 1400, config=engine.dip_config).thumbnail.resize_hw[0]
    padding = seen[0][0][:, rows:, :]
    # uint8 128 is within half a grey level of SigLIP's 0.5 mean: |x| <= 0.5 / 255 / 0.5
    assert float(padding.abs().max()) <= 1 / 255 + 1e-6
