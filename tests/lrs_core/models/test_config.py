import json

import pytest

from lrs_core.errors import ConfigError
from lrs_core.models.config import VlmConfig


def make(**overrides):
    values = dict(
        llm_family="qwen2",
        vision_family="clip",
        chat_template="chatml",
        rfm_llm_layers=(4, 8, 12),
        max_context_tokens=8192,
    )
    values.update(overrides)
    return VlmConfig(**values)


def test_derived_sizes_of_the_reference_geometry():
    config = make()
    assert config.patches_per_side == 24
    assert config.tokens_per_tile_unpooled == 576
    assert config.pooled_per_side == 12
    assert config.tokens_per_tile == 144
    assert config.rfm_num_layers == 4
    assert config.rfm_source_layers == (3, 4, 8, 12)


def test_round_trips_through_json():
    config = make(rfm_llm_layers=[2, 5], image_mean=[0.5, 0.5, 0.5])
    assert config.rfm_llm_layers == (2, 5)
    again = VlmConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("llm_family", "mistral"),
        ("chat_template", "llama3"),
        ("rfm_llm_layers", ()),
        ("rfm_llm_layers", (0, 3)),
        ("rfm_llm_layers", (3, 3)),
        ("tile_size_px", 330),
        ("pool_stride", 5),
        ("image_std", (0.5, 0.0, 0.5)),
        ("max_context_tokens", 0),
    ],
)
def test_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        make(**{field: value})


def test_siglip_has_no_cls_to_drop():
    with pytest.raises(ConfigError, match="drop_cls"):
        make(vision_family="siglip")
    assert make(vision_family="siglip", drop_cls=False).drop_cls is False


def test_from_dict_rejects_unknown_fields():
    data = make().to_dict() | {"typo": 1}
    with pytest.raises(ConfigError, match="typo"):
        VlmConfig.from_dict(data)
