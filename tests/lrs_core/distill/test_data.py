"""Distillation data: conversations, readers and scene views (image files and Zarr stores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrs_core.distill.data import (
    ImageRecord,
    Turn,
    build_dataset,
    read_records,
    tokenize_conversation,
)
from lrs_core.errors import DatasetError
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel
from tests.fixtures.scenes import make_rgb_pattern

#: A scene whose default DIP has two tiled levels: 925 and 1836 tokens (newlines included).
PNG_WIDTH_PX, PNG_HEIGHT_PX = 1400, 1000
LEVEL_TOKENS = (925, 1836)


def write_png(path: Path, *, seed: int = 0) -> Path:
    """A plain RGB PNG of PNG_WIDTH_PX x PNG_HEIGHT_PX (gradients plus noise)."""
    pixels = make_rgb_pattern(PNG_HEIGHT_PX, PNG_WIDTH_PX, seed=seed).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(path)
    return path


def write_llava_json(path: Path, image: str, *, n: int = 3) -> Path:
    """LLaVA-style records about one image: record 0 has two turns."""
    rows = []
    for index in range(n):
        conversations = [
            {"from": "human", "value": "<image>\nHow many ships are in the harbour?"},
            {"from": "gpt", "value": "two"},
        ]
        if index == 0:
            conversations += [
                {"from": "human", "value": "What is the color of the roof?"},
                {"from": "gpt", "value": "red"},
            ]
        rows.append({"id": f"s{index}", "image": image, "conversations": conversations})
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("family", ["llava", "qwen2"])
def test_conversation_queries_are_the_token_before_each_answer(
    family: str, tiny_model: LoadedModel, tiny_qwen2_model_dir: Path
) -> None:
    from lrs_core.models.loading.auto import load_model
    from lrs_core.models.prompt import tokenize_prompt

    loaded = tiny_model if family == "llava" else load_model(tiny_qwen2_model_dir)
    tokenizer, template = loaded.tokenizer, loaded.model.config.chat_template
    turns = (Turn("How many ships are in the harbour?", "two"), Turn("Where is the port?", "left"))
    conversation = tokenize_conversation(tokenizer, turns, template=template)
    first = tokenize_prompt(tokenizer, turns[0].question, template=template)
    after = conversation.prompt.after_image
    # turn 1 is exactly the inference prompt, so query 1 is the RFM's inference query token
    assert conversation.prompt.before_image == first.before_image
    assert after[: len(first.after_image)] == first.after_image
    assert conversation.answer_starts[0] == len(first.after_image)
    assert len(conversation.answer_starts) == 2
    for start in conversation.answer_starts:
        assert conversation.answer_mask[start] and not conversation.answer_mask[start - 1]
    spans = np.flatnonzero(np.diff(conversation.answer_mask.astype(int)) == 1) + 1
    assert tuple(spans.tolist()) == conversation.answer_starts
    answers = tokenizer.decode(
        [i for i, m in zip(after, conversation.answer_mask, strict=True) if m]
    )
    assert "two" in answers and "left" in answers
    with pytest.raises(DatasetError):
        tokenize_conversation(tokenizer, (), template=template)


def test_read_llava_json_and_lrs_vqa_jsonl(tmp_path: Path) -> None:
    write_llava_json(tmp_path / "train.json", "img/a.png")
    records = read_records(tmp_path / "train.json")
    assert [r.sample_id for r in records] == ["s0", "s1", "s2"]
    assert records[0].image == (tmp_path / "img" / "a.png").resolve()
    assert records[0].turns == (
        Turn("How many ships are in the harbour?", "two"),
        Turn("What is the color of the roof?", "red"),
    )
    lines = [
        {
            "question_id": "FAIR_1",
            "image": "LRS_VQA/image/1.tif",
            "text": "Q?",
            "ground_truth": "a",
        },
        {"question_id": "FAIR_2", "image": "LRS_VQA/image/1.tif", "text": "R?", "answer": "b"},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    jsonl = read_records(tmp_path / "q.jsonl", data_root=tmp_path / "root")
    assert [r.turns for r in jsonl] == [(Turn("Q?", "a"),), (Turn("R?", "b"),)]
    assert jsonl[0].image == (tmp_path / "root" / "LRS_VQA" / "image" / "1.tif").resolve()
    bad = [{"id": "x", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="conversations"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unknown data format"):
        read_records(tmp_path / "data.csv")


def test_scene_views_from_a_png_file_and_a_zarr_store(
    tmp_path: Path, tiny_model: LoadedModel, ingested_store: Path
) -> None:
    png = write_png(tmp_path / "scene.png")
    turns = (Turn("How many ships are in the harbour?", "two"),)
    records = [
        ImageRecord(sample_id="png", image=png, turns=turns),
        ImageRecord(sample_id="zarr", image=ingested_store, turns=turns),
    ]
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    multi = build_dataset(
        records,
        model=model,
        tokenizer=tokenizer,
        family=tiny_model.family,
        store_dir=tmp_path / "stores",
        views="multi",
    )
    # the PNG is ingested once into the store folder and seen at both of its DIP levels
    assert [(v.record, v.dip_level) for v in multi.views][:2] == [(0, 1), (0, 2)]
    assert len(list((tmp_path / "stores").glob("*.zarr"))) == 1
    text = tokenize_conversation(tokenizer, turns, template=model.config.chat_template)
    n_text = text.prompt.n_text_tokens
    assert multi.lengths[:2] == [n_text + 576 + 1 + n for n in LEVEL_TOKENS]
    single = build_dataset(
        records,
        model=model,
        tokenizer=tokenizer,
        family=tiny_model.family,
        store_dir=tmp_path / "stores",
        views="single",
    )
    assert [(v.record, v.dip_level) for v in single.views] == [(0, 1), (1, 1)]
    capped = build_dataset(
        records,
        model=model,
        tokenizer=tokenizer,
        family=tiny_model.family,
        store_dir=tmp_path / "stores",
        max_level_tokens=LEVEL_TOKENS[0],
    )
    assert [v.dip_level for v in capped.views if v.record == 0] == [1]
    with torch.no_grad():
        batch = single.collate(model, [0, 1])
    assert batch.inputs_embeds.shape[:2] == (2, max(single.lengths))
    assert batch.attention_mask.sum(dim=1).tolist() == single.lengths
    sample = single.prepare(model, 0)
    assert sample.layout.length == single.lengths[0]
    assert sample.level_feats.shape[:2] == (25, 36)
    kinds = sample.layout.kind
    assert (kinds[sample.image_positions] == TokenKind.LEVEL.value).all()
    # the query row is the last prompt token: the one right before the first answer token
    assert (sample.labels[sample.query_positions] == -100).all()
    assert (sample.labels[sample.query_positions + 1] != -100).all()
