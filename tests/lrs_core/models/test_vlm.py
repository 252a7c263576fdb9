import numpy as np
import pytest
import torch

from lrs_core.errors import ConfigError
from lrs_core.models.vlm import RfmLayers


def random_tiles(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_preprocess_normalises_with_the_config_mean_and_std(tiny_model):
    model = tiny_model.model
    size = model.config.tile_size_px
    tiles = random_tiles(2, size)
    pixels = model.preprocess_tiles(tiles)
    assert pixels.shape == (2, 3, size, size) and pixels.dtype == model.dtype
    expected = (tiles[1, 5, 7, 2] / 255.0 - model.config.image_mean[2]) / model.config.image_std[2]
    assert pixels[1, 2, 5, 7].item() == pytest.approx(expected, abs=1e-6)
    floats = tiles.astype(np.float32)
    floats[0, :, size // 2 :] = np.nan  # padding of float tiles: exactly 0 once normalised
    normalised = model.preprocess_tiles(floats)
    assert torch.equal(normalised[0, :, :, size // 2 :], torch.zeros(3, size, size - size // 2))
    torch.testing.assert_close(normalised[1], pixels[1])
    with pytest.raises(ValueError, match="uint8 or float32"):
        model.preprocess_tiles(tiles.astype(np.float64))


@torch.no_grad()
def test_encode_tiles_pools_after_the_projector_and_drops_cls(tiny_model):
    model = tiny_model.model
    config = model.config
    pixels = model.preprocess_tiles(random_tiles(3, config.tile_size_px))
    unpooled = model.encode_tiles(pixels, pooled=False)
    pooled = model.encode_tiles(pixels)
    assert unpooled.shape == (3, config.tokens_per_tile_unpooled, model.hidden_size)
    assert pooled.shape == (3, config.tokens_per_tile, model.hidden_size)
    hidden = model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    manual = model.projector(hidden[config.vision_select_layer][:, 1:])
    torch.testing.assert_close(unpooled, manual)
    side = config.patches_per_side
    grid = manual.view(3, side, side, -1)
    # pooled token (r, c) is the mean of the 2x2 block at (2r, 2c).
    r, c = 4, 7
    block = grid[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(dim=(1, 2))
    torch.testing.assert_close(pooled[:, r * config.pooled_per_side + c], block)


@torch.no_grad()
@pytest.mark.parametrize("batch_size", [1, 3])
def test_encode_tiles_does_not_depend_on_the_batch_size(tiny_model, batch_size):
    model = tiny_model.model
    pixels = model.preprocess_tiles(random_tiles(3, model.config.tile_size_px, seed=1))
    reference = torch.cat([model.encode_tiles(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(model.encode_tiles(pixels, batch_size=batch_size), reference)
    assert model.encode_tiles(pixels[:0]).shape == (
        0,
        model.config.tokens_per_tile,
        model.hidden_size,
    )


@torch.no_grad()
def test_embed_text_uses_the_llm_table(tiny_model):
    model = tiny_model.model
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    embeds = model.embed_text(ids)
    assert embeds.shape == (2, 3, model.hidden_size)
    torch.testing.assert_close(embeds[1, 2], model.llm.model.embed_tokens.weight[6])


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3])
def test_rfm_copied_from_a_prefix_reproduces_the_llm_hidden_states(tiny_model, batch):
    llm = tiny_model.model.llm
    rfm = RfmLayers.from_llm(llm, [1, 2])  # copies of LLM layers 0, 1, 2
    assert type(rfm.layers[0]) is type(llm.model.layers[0])
    lengths = [9, 5, 7][:batch]
    embeds = torch.randn(
        batch, max(lengths), llm.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    mask = torch.zeros(batch, max(lengths), dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    hidden = rfm(embeds, attention_mask=mask)
    reference = llm(
        inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True
    ).hidden_states[3]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(hidden[i, :n], reference[i, :n])
    torch.testing.assert_close(rfm.norm.weight, llm.model.norm.weight)


def test_rfm_rejects_layers_outside_the_llm(tiny_model):
    with pytest.raises(ConfigError, match="outside"):
        RfmLayers.from_llm(tiny_model.model.llm, [3, 4])


def test_model_rfm_holds_copies_of_the_configured_layers(tiny_model):
    model = tiny_model.model
    for rfm_layer, source in zip(model.rfm.layers, model.config.rfm_source_layers, strict=True):
        for (name, value), (_, original) in zip(
            rfm_layer.state_dict().items(),
            model.llm.model.layers[source].state_dict().items(),
            strict=True,
        ):
            torch.testing.assert_close(value, original, msg=name)


@torch.no_grad()
def test_siglip_tower_has_no_cls_and_gives_the_same_geometry(tiny_model):
    from transformers import SiglipVisionConfig

    from lrs_core.models.config import SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD, VlmConfig
    from lrs_core.models.vlm import VisionLanguageModel

    llm_config = tiny_model.model.llm.config
    config = VlmConfig(
        llm_family="llama",
        vision_family="siglip",
        chat_template="vicuna_v1",
        drop_cls=False,
        rfm_llm_layers=(1,),
        image_mean=SIGLIP_IMAGE_MEAN,
        image_std=SIGLIP_IMAGE_STD,
        max_context_tokens=4096,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=336,
        patch_size=14,
    )
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=True
    )
    pixels = model.preprocess_tiles(random_tiles(2, 336))
    assert model.encode_tiles(pixels).shape == (2, 144, llm_config.hidden_size)
    with pytest.raises(ConfigError, match="CLIPVisionConfig"):
        VisionLanguageModel(
            config.__class__(**{**config.__dict__, "vision_family": "clip", "drop_cls": True}),
            vision_config=vision_config,
            llm_config=llm_config,
        )
