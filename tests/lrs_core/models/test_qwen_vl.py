"""Qwen2-VL / Qwen2.5-VL as bases: our path against the stock transformers forward (tiny models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.attention_rows import AttentionRowRecorder, attention_rows_from_hidden
from lrs_core.models.families.base import ModelFamily
from lrs_core.models.families.qwen_vl import (
    QwenVlModel,
    image_layout,
    is_qwen_vl_dir,
    load_qwen_vl,
    patchify_tiles,
)
from lrs_core.models.families.qwen_vl_tiny import TINY_QWEN_FAMILIES, init_tiny_qwen_vl
from lrs_core.models.flops import KNOWN_DIMS, count_flops, vision_tile_flops

TOL = 1e-5
#: (height, width) px of the test images, multiples of 28; questions of different lengths.
SIZES = [(56, 84), (84, 56), (112, 112)]
QUESTIONS = ["How many ships?", "Is there a bridge over the river?", "Where is the airport?"]


@pytest.fixture(scope="module", params=TINY_QWEN_FAMILIES)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_tiny_qwen_vl(tmp_path_factory.mktemp(request.param), family=request.param)


@pytest.fixture(scope="module")
def sdpa(model_dir: Path) -> QwenVlModel:
    return load_qwen_vl(model_dir, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def eager(model_dir: Path) -> QwenVlModel:
    return load_qwen_vl(model_dir, attn_implementation="eager")


def _tiles(index: int) -> np.ndarray:
    height, width = SIZES[index]
    return np.random.default_rng(index).integers(0, 256, (1, height, width, 3), dtype=np.uint8)


def _stock_inputs(model: QwenVlModel, index: int) -> dict[str, torch.Tensor]:
    """The stock forward's inputs for image ``index`` and question ``index`` (no padding)."""
    tiles = _tiles(index)
    grid = model.tile_grid_hw(tiles.shape[1:3])
    prompt = model.prompt_ids(QUESTIONS[index])
    ids = [*prompt.before_image, *[model.image_token_id] * (grid[0] * grid[1]), *prompt.after_image]
    input_ids = torch.tensor([ids])
    merge = model.geometry.merge_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == model.image_token_id).int(),
        "pixel_values": patchify_tiles(tiles, model.geometry),
        "image_grid_thw": torch.tensor([[1, grid[0] * merge, grid[1] * merge]]),
    }


def _our_batch(
    model: QwenVlModel, indices: list[int], keeps: list[np.ndarray | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded embeddings, mask, (3, B, L) positions and lengths of our path."""
    rows, positions = [], []
    for index, keep in zip(indices, keeps, strict=True):
        encoded = model.encode_tiles(_tiles(index))
        layout = image_layout(model.prompt_ids(QUESTIONS[index]), encoded.grid_hw, keep)
        grid_tokens = encoded.tokens[0].view(*encoded.grid_hw, -1)
        rows.append(model.assemble(layout, image_tokens=grid_tokens))
        positions.append(model.position_ids(layout))
    lengths = [row.shape[0] for row in rows]
    longest = max(lengths)
    embeds = torch.zeros(len(rows), longest, model.hidden_size)
    mask = torch.zeros(len(rows), longest, dtype=torch.int64)
    pos = torch.zeros(3, len(rows), longest, dtype=torch.int64)
    for b, (row, position) in enumerate(zip(rows, positions, strict=True)):
        embeds[b, : row.shape[0]], mask[b, : row.shape[0]], pos[:, b, : row.shape[0]] = (
            row,
            1,
            position,
        )
    return embeds, mask, pos, lengths


def test_is_a_model_family(sdpa: QwenVlModel) -> None:
    assert isinstance(sdpa, ModelFamily)
    assert sdpa.token_px == 28
    assert sdpa.tile_grid_hw((336, 336)) == (12, 12)


def test_patchify_equals_the_stock_image_processor(sdpa: QwenVlModel) -> None:
    tiles = np.concatenate([_tiles(0), _tiles(0)[:, ::-1]])
    stock = Qwen2VLImageProcessorPil(do_resize=False)(images=list(tiles), return_tensors="pt")
    ours = patchify_tiles(tiles, sdpa.geometry)
    assert ours.shape == stock["pixel_values"].shape
    torch.testing.assert_close(ours, stock["pixel_values"].float(), atol=1e-6, rtol=0)


def test_tiles_off_the_patch_grid_are_refused(sdpa: QwenVlModel) -> None:
    with pytest.raises(ConfigError, match="multiples of 28"):
        sdpa.encode_tiles(np.zeros((1, 50, 56, 3), dtype=np.uint8))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_positions_equal_the_stock_rope_index(sdpa: QwenVlModel, index: int) -> None:
    stock = _stock_inputs(sdpa, index)
    expected, _ = sdpa.hf.model.get_rope_index(
        stock["input_ids"],
        mm_token_type_ids=stock["mm_token_type_ids"],
        image_grid_thw=stock["image_grid_thw"],
    )
    _, _, ours, _ = _our_batch(sdpa, [index], [None])
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("indices", [[0], [0, 1, 2]])
def test_unpruned_logits_equal_the_stock_forward(sdpa: QwenVlModel, indices: list[int]) -> None:
    embeds, mask, pos, lengths = _our_batch(sdpa, indices, [None] * len(indices))
    with torch.no_grad():
        ours = sdpa.llm_logits(embeds, attention_mask=mask, position_ids=pos)
        for b, index in enumerate(indices):
            stock = sdpa.hf(**_stock_inputs(sdpa, index)).logits[0]
            assert stock.shape[0] == lengths[b]
            torch.testing.assert_close(ours[b, : lengths[b]], stock, atol=TOL, rtol=0)


def _keep(index: int) -> np.ndarray:
    rows, cols = SIZES[index][0] // 28, SIZES[index][1] // 28
    keep = np.random.default_rng(100 + index).random((rows, cols)) < 0.5
    keep[0, 0] = True
    keep[-1, :] = False  # a dropped last row: text after still continues from the full image
    return keep


@pytest.mark.parametrize("indices", [[1], [0, 1, 2]])
def test_pruned_logits_equal_a_kept_token_reference(sdpa: QwenVlModel, indices: list[int]) -> None:
    keeps: list[np.ndarray | None] = [_keep(index) for index in indices]
    embeds, mask, pos, lengths = _our_batch(sdpa, indices, keeps)
    with torch.no_grad():
        ours = sdpa.llm_logits(embeds, attention_mask=mask, position_ids=pos)
        for b, index in enumerate(indices):
            stock = _stock_inputs(sdpa, index)
            full_pos, _ = sdpa.hf.model.get_rope_index(
                stock["input_ids"],
                mm_token_type_ids=stock["mm_token_type_ids"],
                image_grid_thw=stock["image_grid_thw"],
            )
            image = sdpa.hf.model.get_image_features(
                stock["pixel_values"], stock["image_grid_thw"]
            ).pooler_output[0]
            full = sdpa.hf.get_input_embeddings()(stock["input_ids"])[0]
            is_image = stock["mm_token_type_ids"][0].bool()
            full[is_image] = image
            slot_keep = ~is_image
            slot_keep[is_image] = torch.from_numpy(keeps[b].reshape(-1))  # type: ignore[union-attr]
            reference = sdpa.hf.model.language_model(
                inputs_embeds=full[slot_keep][None],
                attention_mask=torch.ones(1, int(slot_keep.sum()), dtype=torch.int64),
                position_ids=full_pos[:, :, slot_keep],
                use_cache=False,
            ).last_hidden_state
            expected = sdpa.hf.lm_head(reference)[0]
            assert expected.shape[0] == lengths[b]
            torch.testing.assert_close(ours[b, : lengths[b]], expected, atol=TOL, rtol=0)


def _eager_rows(eager: QwenVlModel, indices: list[int], layer: int) -> dict[str, Any]:
    embeds, mask, pos, lengths = _our_batch(eager, indices, [_keep(i) for i in indices])
    with torch.no_grad():
        out = eager.hf.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
        )
    query = torch.tensor([[n - 1] for n in lengths])
    keys = torch.stack([torch.arange(n - 9, n - 1) for n in lengths])
    attn = out.attentions[layer]  # (B, H, L, L)
    expected = torch.stack(
        [attn[b, :, query[b]][:, :, keys[b]] for b in range(len(lengths))]
    )  # (B, H, 1, K)
    return {
        "embeds": embeds,
        "mask": mask,
        "pos": pos,
        "query": query,
        "keys": keys,
        "hidden": out.hidden_states[layer],
        "expected": expected,
    }


@pytest.mark.parametrize("indices", [[2], [0, 1, 2]])
def test_attention_rows_with_mrope_equal_eager(
    sdpa: QwenVlModel, eager: QwenVlModel, indices: list[int]
) -> None:
    layer = 2
    case = _eager_rows(eager, indices, layer)
    decoder: Any = sdpa.decoder()
    with torch.no_grad():
        rows = attention_rows_from_hidden(
            decoder.layers[layer],
            case["hidden"],
            position_ids=case["pos"],
            rotary_emb=decoder.rotary_emb,
            query_positions=case["query"],
            key_positions=case["keys"],
            sequence_mask=case["mask"].bool(),
            renormalize_over_keys=False,
        )
    torch.testing.assert_close(rows.per_head, case["expected"], atol=TOL, rtol=0)
    with (
        torch.no_grad(),
        AttentionRowRecorder(
            sdpa.decoder(),  # type: ignore[arg-type]
            layers=[layer],
            query_positions=case["query"],
            key_positions=case["keys"],
            renormalize_over_keys=False,
        ) as recorder,
    ):
        sdpa.llm_logits(case["embeds"], attention_mask=case["mask"], position_ids=case["pos"])
    torch.testing.assert_close(recorder.rows[layer].per_head, case["expected"], atol=TOL, rtol=0)


def test_rfm_layer_copies_run_like_the_llm(sdpa: QwenVlModel) -> None:
    rfm = sdpa.rfm_from_llm((1, 2))  # copies of LLM layers 0, 1, 2
    embeds, mask, pos, _ = _our_batch(sdpa, [0, 2], [None, _keep(2)])
    with torch.no_grad():
        ours = rfm(embeds, attention_mask=mask, position_ids=pos)
        llm = sdpa.hf.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            output_hidden_states=True,
            use_cache=False,
        )
    real = mask.bool()
    torch.testing.assert_close(ours[real], llm.hidden_states[3][real], atol=TOL, rtol=0)
    with pytest.raises(ConfigError, match="outside the LLM"):
        sdpa.rfm_from_llm((4,))


def test_vision_flops_formula_matches_a_flop_counter(eager: QwenVlModel) -> None:
    # eager attention: FlopCounterMode does not see the CPU SDPA kernel
    tile_px = 112
    dims = eager.flops_dims(rfm_layers=2, tile_px=tile_px)
    tiles = np.zeros((1, tile_px, tile_px, 3), dtype=np.uint8)
    with FlopCounterMode(display=False) as counter:
        eager.encode_tiles(tiles)
    assert counter.get_total_flops() == pytest.approx(vision_tile_flops(dims.vision), rel=1e-9)


@pytest.mark.parametrize("name", ["qwen2-vl-7b", "qwen2-vl-2b", "qwen2.5-vl-7b", "qwen2.5-vl-3b"])
def test_known_qwen_vl_dims(name: str) -> None:
    dims = KNOWN_DIMS[name]
    assert dims.vision.patches_per_tile // dims.vision.merge_size**2 == 144  # 336 px tiles
    count = count_flops(dims, vision_tiles=10, prefill_tokens=2000, decode_steps=4)
    assert count.vision_flops == 10 * vision_tile_flops(dims.vision)
    assert count.llm_flops > 0
    if name == "qwen2-vl-7b":  # by hand: T = 576 patches, W = 1280, M = 5120, 32 layers
        macs = (
            576 * 3 * 2 * 14 * 14 * 1280  # Conv3d patch embedding (temporal patch 2)
            + 32 * (4 * 576 * 1280**2 + 2 * 576 * 1280 * 5120)  # QKV/O projections + MLP
            + 32 * 2 * 576 * 576 * 1280  # QK^T and AV
            + 144 * (5120 * 5120 + 5120 * 3584)  # merger on 144 merged tokens
        )
        assert vision_tile_flops(dims.vision) == 2 * macs
    if name.startswith("qwen2.5"):  # windowed attention makes the 2.5 tower cheaper per tile
        assert vision_tile_flops(dims.vision) < vision_tile_flops(KNOWN_DIMS["qwen2-vl-7b"].vision)


def test_loading_refuses_other_directories(model_dir: Path, tmp_path: Path) -> None:
    assert is_qwen_vl_dir(model_dir)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert not is_qwen_vl_dir(other)
    with pytest.raises(WeightsError, match="model_type='llava'"):
        load_qwen_vl(other)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(WeightsError, match="only pickled weights"):
        load_qwen_vl(pickled)


@pytest.mark.parametrize("family", TINY_QWEN_FAMILIES)
def test_cli_init_tiny_writes_a_loadable_hugging_face_directory(
    tmp_path: Path, family: str
) -> None:
    from typer.testing import CliRunner

    from lrs_core.cli import build_app

    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(
        build_app(), ["model", "init-tiny", "--out", str(out), "--family", family]
    )
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        assert (out / name).is_file()
    assert json.loads((out / "preprocessor_config.json").read_text())["merge_size"] == 2
    loaded = load_qwen_vl(out)
    assert loaded.family == family
    assert loaded.hf.generation_config.do_sample is False
    info = runner.invoke(build_app(), ["model", "info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["layout"] == "qwen_vl" and described["config"]["family"] == family
    assert described["tokens_per_tile"] == 144 and described["rfm_source_layers"] == [0, 1]
    bad = runner.invoke(
        build_app(),
        ["model", "init-tiny", "--out", str(out), "--family", family, "--size", "benchmark"],
    )
    assert bad.exit_code == 2 and "only --size tiny" in bad.output


@pytest.mark.parametrize("indices", [[0], [0, 1, 2]])
def test_greedy_generation_equals_the_stock_generate(sdpa: QwenVlModel, indices: list[int]) -> None:
    from lrs_core.models.families.mrope_run import generate_greedy_mrope

    eos = sdpa.tokenizer.convert_tokens_to_ids("<|im_end|>")
    embeds, mask, pos, _ = _our_batch(sdpa, indices, [None] * len(indices))
    ours = generate_greedy_mrope(
        sdpa, embeds, attention_mask=mask, position_ids=pos, max_new_tokens=6, eos_token_id=eos
    )
    for b, index in enumerate(indices):
        stock_inputs = _stock_inputs(sdpa, index)
        with torch.no_grad():
            stock = sdpa.hf.generate(
                **stock_inputs, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0
            )
        new = stock[0, stock_inputs["input_ids"].shape[1] :].tolist()
        end = next((i for i, token in enumerate(new) if token == eos), None)
        assert ours.token_ids[b] == (new if end is None else new[:end])
        assert ours.decode_steps[b] == (len(new) if end is None else end + 1)


def test_rfm_scores_with_mrope_equal_eager_rows(sdpa: QwenVlModel, eager: QwenVlModel) -> None:
    from lrs_core.models.families.mrope_run import score_tokens_mrope

    indices = [0, 1, 2]
    embeds, mask, pos, lengths = _our_batch(sdpa, indices, [_keep(i) for i in indices])
    query = torch.tensor([[n - 1] for n in lengths])
    keys = torch.stack([torch.arange(n - 9, n - 1) for n in lengths])
    key_mask = torch.ones_like(keys, dtype=torch.bool)
    key_mask[1, :3] = False
    rfm = sdpa.rfm_from_llm((1, 2))
    with torch.no_grad():
        scores = score_tokens_mrope(
            rfm,
            embeds,
            position_ids=pos,
            attention_mask=mask,
            query_positions=query,
            key_positions=keys,
            key_mask=key_mask,
        )
        # reference: eager attention of LLM layer 2 (the RFM's last layer is its copy), the row
        # restricted to the valid keys and renormalised, heads averaged
        out = eager.hf.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=pos,
            output_attentions=True,
            use_cache=False,
        )
    for b, n in enumerate(lengths):
        row = out.attentions[2][b, :, n - 1, keys[b]] * key_mask[b]  # (H, K)
        expected = (row / row.sum(dim=-1, keepdim=True)).mean(dim=0)
        torch.testing.assert_close(scores[b], expected, atol=TOL, rtol=0)
    assert torch.all(scores[1, :3] == 0)


@pytest.mark.parametrize("penalty", [1.0, 3.0])
def test_layer_drop_keeping_everything_equals_plain_generation(
    sdpa: QwenVlModel, penalty: float
) -> None:
    eos = int(sdpa.tokenizer.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[arg-type]
    embeds, mask, pos, lengths = _our_batch(sdpa, [2], [_keep(2)])
    prompt = sdpa.prompt_ids(QUESTIONS[2])
    vision = torch.arange(len(prompt.before_image), lengths[0] - len(prompt.after_image))
    previous = sdpa.hf.generation_config.repetition_penalty
    sdpa.hf.generation_config.repetition_penalty = penalty  # both decoders apply it
    try:
        _compare_layer_drop(sdpa, embeds, mask, pos, vision, eos)
    finally:
        sdpa.hf.generation_config.repetition_penalty = previous


def _compare_layer_drop(
    sdpa: QwenVlModel,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    vision: torch.Tensor,
    eos: int,
) -> None:
    from lrs_core.models.families.engine_model import QwenVlCausalLm
    from lrs_core.models.families.mrope_run import generate_greedy_mrope
    from lrs_core.models.layer_drop import LayerDropSchedule, generate_with_layer_drop

    result = generate_with_layer_drop(
        QwenVlCausalLm(sdpa),
        embeds,
        vision_positions=vision,
        schedule=LayerDropSchedule.fastv(layer=2, keep_ratio=1.0),
        max_new_tokens=8,
        eos_token_id=eos,
        pad_token_id=0,
        position_ids=pos,
    )
    plain = generate_greedy_mrope(
        sdpa, embeds, attention_mask=mask, position_ids=pos, max_new_tokens=8, eos_token_id=eos
    )
    assert result.generation.token_ids == plain.token_ids
    with torch.no_grad():
        logits = sdpa.llm_logits(embeds, attention_mask=mask, position_ids=pos)[0, -1]
    torch.testing.assert_close(result.last_logits, logits.float(), atol=TOL, rtol=0)


def test_sharded_checkpoints_with_an_index_load_the_same_model(
    sdpa: QwenVlModel, model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "sharded"
    sdpa.hf.save_pretrained(str(out), max_shard_size="100KB")
    for path in model_dir.iterdir():
        if not path.name.startswith("model") and path.name != "config.json":
            shutil.copy(path, out / path.name)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert any(key.startswith("visual.") for key in index["weight_map"])  # released key layout
    sharded = load_qwen_vl(out)
    embeds, mask, pos, _ = _our_batch(sdpa, [0], [None])
    with torch.no_grad():
        expected = sdpa.llm_logits(embeds, attention_mask=mask, position_ids=pos)
        ours = sharded.llm_logits(embeds, attention_mask=mask, position_ids=pos)
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    assert sharded.chat_template == sdpa.chat_template
