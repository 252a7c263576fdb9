"""DistillConfig: defaults, validation, presets and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from lrs_core.distill.config import REFERENCE_SKIP_LAYERS, DistillConfig
from lrs_core.errors import ConfigError


def test_defaults_and_round_trip() -> None:
    config = DistillConfig()
    assert config.temperature == 2.0
    assert config.topk_fraction == 0.25
    assert config.skip_layers == ()
    assert config.trainable == "rfm" and not config.trains_llm
    assert config.effective_eval_interval == config.log_interval
    again = DistillConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert DistillConfig(skip_layers=(2, 1, 2)).skip_layers == (1, 2)


def test_parity_preset() -> None:
    parity = DistillConfig.preset("parity", steps=5)
    assert parity.skip_layers == REFERENCE_SKIP_LAYERS
    assert not parity.exclude_newline_keys and parity.steps == 5
    assert DistillConfig.preset("default") == DistillConfig()
    with pytest.raises(ConfigError, match="preset"):
        DistillConfig.preset("paper")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 0.0, "temperature"),
        ("lr", -1.0, "lr"),
        ("steps", 0, "steps"),
        ("batch_size", 1.5, "batch_size"),
        ("grad_accum", True, "grad_accum"),
        ("trainable", "llm", "trainable"),
        ("precision", "fp16", "precision"),
        ("views", "all", "views"),
        ("topk_fraction", 1.5, "topk_fraction"),
        ("skip_layers", (-1,), "skip_layers"),
        ("distill_weight", float("nan"), "distill_weight"),
        ("kl_full", 1, "kl_full"),
    ],
)
def test_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**{field: value})  # type: ignore[arg-type]  # invalid on purpose


def test_at_least_one_term_and_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="all off"):
        DistillConfig(kl_full=False, kl_img=False, mse_img=False)
    with pytest.raises(ConfigError, match="unknown fields"):
        DistillConfig.from_dict({"temprature": 2.0})
