import numpy as np
import pytest
import torch

from lrs_core.models.layout import TokenKind, assemble_batch, assemble_embeddings, build_layout
from lrs_core.models.prompt import PromptIds

PROMPT = PromptIds(before_image=[1, 10, 11], after_image=[12, 13, 14, 15])
SEPARATOR = 33


def make_layout(**overrides):
    args = dict(
        thumbnail_tokens=16, separator_id=SEPARATOR, level_grid_hw=(3, 5), tile_tokens_hw=(2, 2)
    )
    args.update(overrides)
    return build_layout(PROMPT, **args)


def test_sequence_order_and_counts():
    layout = make_layout()
    # 3 text + 16 thumbnail + 1 separator + 3 rows x (5 + newline) + 4 text
    assert layout.length == 3 + 16 + 1 + 18 + 4
    kinds = [TokenKind(k) for k in layout.kind]
    assert kinds[:3] == [TokenKind.TEXT] * 3
    assert kinds[3:19] == [TokenKind.THUMBNAIL] * 16
    assert kinds[19] == TokenKind.SEPARATOR and layout.token_id[19] == SEPARATOR
    assert kinds[20:26] == [TokenKind.LEVEL] * 5 + [TokenKind.NEWLINE]
    assert layout.level_slice() == slice(20, 38)
    assert layout.query_position == layout.length - 1 and layout.token_id[-1] == 15
    level = layout.positions_of(TokenKind.LEVEL)
    # global raster order: row-major over the whole level, tile coordinates follow the 2x2 tiles
    assert list(zip(layout.grid_r[level][:6], layout.grid_c[level][:6], strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 0),
    ]
    assert list(layout.tile_c[level][:5]) == [0, 0, 1, 1, 2]
    assert (
        list(layout.tile_r[level][5:10]) == [0] * 5 and list(layout.tile_r[level][10:]) == [1] * 5
    )
    assert set(layout.dip_level[level]) == {1}
    assert set(layout.dip_level[layout.positions_of(TokenKind.THUMBNAIL)]) == {0}
    newline = layout.positions_of(TokenKind.NEWLINE)
    assert list(layout.grid_c[newline]) == [5, 5, 5] and list(layout.grid_r[newline]) == [0, 1, 2]


def test_thumbnail_only_and_kept_subsets():
    assert make_layout(level_grid_hw=None).length == 3 + 16 + 4
    keep = np.zeros((3, 5), dtype=bool)
    keep[0, 1] = keep[2, 3] = keep[2, 4] = True
    layout = make_layout(level_keep=keep)
    level = layout.positions_of(TokenKind.LEVEL)
    assert list(zip(layout.grid_r[level], layout.grid_c[level], strict=True)) == [
        (0, 1),
        (2, 3),
        (2, 4),
    ]
    assert len(layout.positions_of(TokenKind.NEWLINE)) == 2  # row 1 keeps nothing
    assert len(make_layout(include_newline=False).positions_of(TokenKind.NEWLINE)) == 0
    full = make_layout()
    sub = full.subset(full.kind != TokenKind.NEWLINE.value)
    assert sub.length == full.length - 3
    with pytest.raises(ValueError):
        full.subset(np.ones(3, dtype=bool))


def features(model, layout, seed):
    generator = torch.Generator().manual_seed(seed)
    thumb = torch.randn(16, model.hidden_size, generator=generator)
    level = torch.randn(*layout.level_grid_hw, model.hidden_size, generator=generator)
    return thumb, level


@torch.no_grad()
def test_assemble_embeddings_places_every_source(tiny_model):
    model = tiny_model.model
    layout = make_layout()
    thumb, level = features(model, layout, 0)
    embeds = assemble_embeddings(model, layout, thumbnail_feats=thumb, level_feats=level)
    assert embeds.shape == (layout.length, model.hidden_size)
    table = model.llm.model.embed_tokens.weight
    torch.testing.assert_close(embeds[0], table[1])
    torch.testing.assert_close(embeds[3:19], thumb)
    torch.testing.assert_close(embeds[19], table[SEPARATOR])
    torch.testing.assert_close(embeds[20:25], level[0])
    torch.testing.assert_close(embeds[25], model.image_newline)
    torch.testing.assert_close(embeds[-1], table[15])


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3])
def test_batched_right_padding_gives_the_same_logits(tiny_model, batch):
    model = tiny_model.model
    layouts = [make_layout(level_grid_hw=hw) for hw in [(3, 5), (2, 2), (4, 3)][:batch]]
    feats = [features(model, layout, seed) for seed, layout in enumerate(layouts)]
    batched = assemble_batch(
        model, layouts, thumbnail_feats=[f[0] for f in feats], level_feats=[f[1] for f in feats]
    )
    assert batched.inputs_embeds.shape[0] == batch
    assert batched.attention_mask.sum(1).tolist() == [layout.length for layout in layouts]
    logits = model.llm(
        inputs_embeds=batched.inputs_embeds, attention_mask=batched.attention_mask
    ).logits
    for i, (layout, (thumb, level)) in enumerate(zip(layouts, feats, strict=True)):
        single = assemble_embeddings(model, layout, thumbnail_feats=thumb, level_feats=level)
        alone = model.llm(inputs_embeds=single[None]).logits[0]
        torch.testing.assert_close(logits[i, : layout.length], alone, atol=1e-5, rtol=1e-5)
