"""Executors: the model side of the loop, run (:class:`ModelExecutor`) or only counted.

The loop (:func:`lrs_core.focus.loop.run_view`) asks an executor for the four things that need a
model: the thumbnail's and the visited tiles' features, one RFM pass, the LLM's input and its
generation. :class:`ModelExecutor` reads pixels, runs the vision tower (through the feature
cache), the RFM and the LLM. :class:`CountingExecutor` runs nothing: it counts the tiles it would
encode, records each RFM pass's length, leaves the scores unknown (so the view takes its upper
bound) and counts the LLM's FLOPs for ``max_new_tokens`` decode steps. Both count FLOPs through
:mod:`lrs_core.focus.accounting`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from lrs_core.focus.accounting import layer_drop_llm_flops, llm_flops
from lrs_core.focus.config import FocusConfig
from lrs_core.focus.features import FeatureCache, FeatureKey
from lrs_core.focus.sequence import LevelSequence, embed_sequence
from lrs_core.focus.state import (
    FocusState,
    Generated,
    LlmInput,
    ScoredLevel,
    ScoreRequest,
    TokenScorer,
)
from lrs_core.focus.tiles import PixelDtype, mean_rgb_uint8, read_thumbnail, read_tiles
from lrs_core.focus.views import UPPER_BOUND_NOTE, LlmView, RfmPass, Visit
from lrs_core.models.flops import ModelDims
from lrs_core.models.generation import PackedInputs
from lrs_core.models.layer_drop import LayerDropSchedule, generate_with_layer_drop
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel

Features = torch.Tensor | None


class Executor(Protocol):
    """The model side of the loop; ``counts_only`` executors return no features."""

    counts_only: bool

    def thumbnail(self, state: FocusState, pyramid: Any) -> Features:
        """Unpooled thumbnail features (Nt, D), encoded or cached."""
        ...

    def tiles(self, state: FocusState, pyramid: Any, visit: Visit) -> Features:
        """Pooled features (n, t*t, D) of a visit's tiles, encoded or cached."""
        ...

    def score(self, state: FocusState, rfm_pass: RfmPass, thumb: Features) -> ScoredLevel:
        """One RFM pass over the encoded tiles (``scored`` False when unknown)."""
        ...

    def llm_input(self, llm_view: LlmView, thumb: Features, state: FocusState) -> LlmInput | None:
        """The LLM's embeddings and position ids (None when only counted)."""
        ...

    def generate(
        self,
        state: FocusState,
        llm_view: LlmView,
        llm_input: LlmInput | None,
        schedule: LayerDropSchedule | None,
    ) -> Generated:
        """The answer, or what it would cost."""
        ...


def unscored(visit: Visit | RfmPass, valid: np.ndarray | None = None) -> ScoredLevel:
    """A visited level without scores (all tokens valid unless ``valid`` is given)."""
    rows, cols = visit.level.token_grid_hw
    return ScoredLevel(
        level=visit.level,
        tiles_rc=list(visit.tiles_rc),
        valid=np.ones((rows, cols), dtype=bool) if valid is None else valid,
        token_scores=np.zeros((rows, cols), dtype=np.float32),
        newline_scores=np.zeros(rows, dtype=np.float32),
    )


class CountingExecutor:
    """Runs no model: counts tiles, RFM lengths, tokens and FLOPs (a dry run).

    Args:
        config: the engine's config (decode steps).
        dims: model dimensions for the FLOP counts.
        n_llm_layers: decoder layers of the LLM (layer-drop schedules).
    """

    counts_only = True

    def __init__(self, config: FocusConfig, *, dims: ModelDims, n_llm_layers: int) -> None:
        self.config = config
        self.dims = dims
        self.n_llm_layers = n_llm_layers

    def thumbnail(self, state: FocusState, pyramid: Any) -> Features:
        """Count the thumbnail as encoded."""
        state.tiles_encoded += 1
        return None

    def tiles(self, state: FocusState, pyramid: Any, visit: Visit) -> Features:
        """Count every tile of the visit as encoded."""
        state.tiles_encoded += len(visit.tiles_rc)
        return None

    def score(self, state: FocusState, rfm_pass: RfmPass, thumb: Features) -> ScoredLevel:
        """Record the pass's length; its scores stay unknown."""
        state.rfm_tokens.append(rfm_pass.sequence.length)
        return unscored(rfm_pass, rfm_pass.valid)

    def llm_input(self, llm_view: LlmView, thumb: Features, state: FocusState) -> LlmInput | None:
        """No input: nothing runs."""
        return None

    def generate(
        self,
        state: FocusState,
        llm_view: LlmView,
        llm_input: LlmInput | None,
        schedule: LayerDropSchedule | None,
    ) -> Generated:
        """Count the LLM for ``max_new_tokens`` decode steps (per layer under a schedule)."""
        steps = self.config.generation.max_new_tokens
        prefill = llm_view.n_vision + llm_view.n_text
        extra: dict[str, Any] = {}
        if llm_view.sequence is None:
            extra["plan"] = UPPER_BOUND_NOTE
        if schedule is None:
            flops = llm_flops(self.dims, prefill_tokens=prefill, decode_steps=steps)
        else:
            per_layer = schedule.tokens_per_layer(
                num_layers=self.n_llm_layers,
                prefill_tokens=prefill,
                n_vision=llm_view.n_droppable,
            )
            extra["tokens_per_layer"] = per_layer
            flops = layer_drop_llm_flops(self.dims, per_layer, decode_steps=steps)
        return Generated(answer="", decode_steps=steps, llm_flops=flops, extra=extra)


class ModelExecutor:
    """Runs the vision tower, the RFM and the LLM of one model.

    Args:
        loaded: the model and tokenizer.
        config: the engine's config (pixels, positions, decoding, vision batch).
        feature_cache: tile features shared across questions.
        scorer: the token scorer of RFM passes.
        dims: model dimensions for the FLOP counts.
    """

    counts_only = False

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        config: FocusConfig,
        feature_cache: FeatureCache,
        scorer: TokenScorer,
        dims: ModelDims,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = config
        self.feature_cache = feature_cache
        self.scorer = scorer
        self.dims = dims
        # positions and generation go through the family interface (no family branches here)
        self.family = loaded.family
        # Pixels as the reference makes them under parity: unrounded floats, padding exactly 0
        # after normalisation (spec §1.1); otherwise uint8 padded with this model's own mean.
        resampler = config.view.resampler
        self.pixel_dtype: PixelDtype = "float32" if resampler == "parity" else "uint8"
        self.pad_rgb = mean_rgb_uint8(self.model.config.image_mean)
        # feature-cache view keys: float parity pixels differ from the uint8 ones of older caches
        self.pixel_key = resampler + ("-f32" if self.pixel_dtype == "float32" else "")

    # -- features ------------------------------------------------------------------------------

    def scene_key(self, pyramid: Any) -> str:
        """The feature-cache key of a scene: its id and checksum (or store path)."""
        lrs = getattr(pyramid, "attributes", {}).get("lrs", {})
        checksum = lrs.get("checksum") if isinstance(lrs, dict) else None
        return f"{pyramid.scene_id}:{checksum or pyramid.store}"

    def model_key(self) -> str:
        """The feature-cache key of the model: its id and dtype."""
        return f"{self.loaded.model_id}@{str(self.model.dtype).removeprefix('torch.')}"

    @contextmanager
    def timed(self, state: FocusState, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``state.seconds[stage]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            state.seconds[stage] += time.perf_counter() - start

    def _encode(self, state: FocusState, tiles: np.ndarray, *, pooled: bool) -> torch.Tensor:
        with self.timed(state, "vision"):
            pixels = self.model.preprocess_tiles(tiles)
            feats = self.model.encode_tiles(
                pixels, pooled=pooled, batch_size=self.config.performance.vision_batch_size
            )
        state.tiles_encoded += tiles.shape[0]
        return feats

    def thumbnail(self, state: FocusState, pyramid: Any) -> torch.Tensor:
        """Float (Nt, D) unpooled thumbnail features, from the cache or encoded."""
        thumb = state.plan.thumbnail
        key = FeatureKey(
            scene_key=self.scene_key(pyramid),
            model_key=self.model_key(),
            view_key=f"{self.pixel_key}-thumbnail-{thumb.resize_hw[0]}x{thumb.resize_hw[1]}",
            dip_level=0,
            tile_rc=(0, 0),
        )
        cached = self.feature_cache.get(key, store=pyramid.store)
        if cached is not None:
            state.tiles_cached += 1
            return cached.to(self.model.device, self.model.dtype)
        with self.timed(state, "read"):
            pixels = read_thumbnail(
                pyramid,
                thumb,
                resampler=self.config.view.resampler,
                pad_rgb=self.pad_rgb,
                dtype=self.pixel_dtype,
            )
        feats = self._encode(state, pixels[None], pooled=False)[0]
        self.feature_cache.put(key, feats, store=pyramid.store)
        return feats

    def tiles(self, state: FocusState, pyramid: Any, visit: Visit) -> torch.Tensor:
        """Float (n, t*t, D) features of a visit's tiles, cached or encoded (read lazily)."""
        level, tiles_rc = visit.level, visit.tiles_rc
        rows, cols = level.resize_hw
        view_key = f"{self.pixel_key}-{level.tile_size_px}-{rows}x{cols}"
        keys = [
            FeatureKey(
                scene_key=self.scene_key(pyramid),
                model_key=self.model_key(),
                view_key=view_key,
                dip_level=level.dip_level,
                tile_rc=tile,
            )
            for tile in tiles_rc
        ]
        found: dict[int, torch.Tensor] = {}
        if not visit.reencode:
            for index, key in enumerate(keys):
                cached = self.feature_cache.get(key, store=pyramid.store)
                if cached is not None:
                    found[index] = cached
        state.tiles_cached += len(found)
        missing = [i for i in range(len(tiles_rc)) if i not in found]
        if missing:
            with self.timed(state, "read"):
                pixels = read_tiles(
                    pyramid,
                    level,
                    [tiles_rc[i] for i in missing],
                    resampler=self.config.view.resampler,
                    pad_rgb=self.pad_rgb,
                    dtype=self.pixel_dtype,
                )
            feats = self._encode(state, pixels, pooled=True)
            for row, index in enumerate(missing):
                found[index] = feats[row]
                self.feature_cache.put(keys[index], feats[row], store=pyramid.store)
        device, dtype = self.model.device, self.model.dtype
        if not tiles_rc:
            per_tile = level.tokens_per_tile_side**2
            return torch.zeros(0, per_tile, self.model.hidden_size, device=device, dtype=dtype)
        return torch.stack([found[i].to(device, dtype) for i in range(len(tiles_rc))])

    # -- the RFM -------------------------------------------------------------------------------

    def position_ids(self, sequence: LevelSequence, positions: np.ndarray) -> torch.Tensor:
        """Position ids of a sequence by the family: (1, L) from ``positions``, or (3, 1, L)."""
        return self.family.sequence_position_ids(sequence.layout, positions)

    def score(self, state: FocusState, rfm_pass: RfmPass, thumb: Features) -> ScoredLevel:
        """Run the scorer on one RFM pass; float32 scores on the level's token grid."""
        sequence, level = rfm_pass.sequence, rfm_pass.level
        rows_n, cols_n = level.token_grid_hw
        if thumb is None:
            raise ValueError("ModelExecutor.score needs the thumbnail's features")
        with self.timed(state, "rfm"):
            embeds = embed_sequence(
                self.model,
                sequence,
                thumbnail_feats=thumb,
                level=level,
                tiles_rc=rfm_pass.tiles_rc,
                tile_feats=state.tile_feats,
            )
            device = self.model.device
            request = ScoreRequest(
                level=level,
                key_grid_rc=rfm_pass.key_grid_rc,
                key_is_newline=rfm_pass.key_is_newline,
                key_valid=rfm_pass.key_valid,
                inputs_embeds=embeds[None],
                position_ids=self.position_ids(sequence, rfm_pass.positions),
                attention_mask=torch.from_numpy((~sequence.is_placeholder).astype(np.int64))[
                    None
                ].to(device),
                query_positions=torch.tensor([[sequence.length - 1]], device=device),
                key_positions=torch.from_numpy(rfm_pass.key_index)[None].to(device),
                question=state.question,
            )
            scores = np.asarray(self.scorer(request), dtype=np.float32)
        state.rfm_tokens.append(sequence.length)
        scores = np.where(rfm_pass.key_valid, scores, 0.0).astype(np.float32)
        key_rc, is_newline = rfm_pass.key_grid_rc, rfm_pass.key_is_newline
        token_scores = np.zeros((rows_n, cols_n), dtype=np.float32)
        newline_scores = np.zeros(rows_n, dtype=np.float32)
        token_scores[key_rc[~is_newline, 0], key_rc[~is_newline, 1]] = scores[~is_newline]
        newline_scores[key_rc[is_newline, 0]] = scores[is_newline]
        return ScoredLevel(
            level=level,
            tiles_rc=list(rfm_pass.tiles_rc),
            valid=rfm_pass.valid,
            token_scores=token_scores,
            newline_scores=newline_scores,
            scored=True,
        )

    # -- the LLM -------------------------------------------------------------------------------

    def llm_input(self, llm_view: LlmView, thumb: Features, state: FocusState) -> LlmInput:
        """Embeddings and position ids (``position_mode``) of the view's kept slots."""
        sequence = llm_view.sequence
        if sequence is None or thumb is None:
            raise ValueError("ModelExecutor.llm_input needs a built sequence and the thumbnail")
        embeds = embed_sequence(
            self.model,
            sequence,
            thumbnail_feats=thumb,
            level=llm_view.level,
            tiles_rc=llm_view.tiles_rc,
            tile_feats=state.tile_feats if llm_view.level is not None else None,
        )
        if self.config.view.position_mode == "original":
            positions = sequence.positions
        else:
            positions = np.arange(sequence.length, dtype=np.int64)
        return LlmInput(
            sequence=sequence,
            inputs_embeds=embeds[None],
            position_ids=self.position_ids(sequence, positions),
            level=llm_view.level,
        )

    def _pad_id(self) -> int:
        tokenizer = self.tokenizer
        pad = tokenizer.pad_token_id
        return int(tokenizer.eos_token_id if pad is None else pad)

    def generate(
        self,
        state: FocusState,
        llm_view: LlmView,
        llm_input: LlmInput | None,
        schedule: LayerDropSchedule | None,
    ) -> Generated:
        """Run the LLM on one input: the family's decoding, or dropping tokens by ``schedule``.

        Raises:
            ConfigError: sampling asked of a family that decodes greedily (Qwen-VL).
        """
        if llm_input is None:
            raise ValueError("ModelExecutor.generate needs the LLM input")
        gen = self.config.generation
        mask = torch.ones(
            llm_input.inputs_embeds.shape[:2], dtype=torch.int64, device=self.model.device
        )
        extra: dict[str, Any] = {}
        length = llm_input.sequence.length
        with self.timed(state, "llm"):
            if schedule is not None:
                vision = llm_input.sequence.positions_of(
                    TokenKind.THUMBNAIL, TokenKind.LEVEL, TokenKind.NEWLINE
                )
                result = generate_with_layer_drop(
                    self.model.llm,
                    llm_input.inputs_embeds,
                    vision_positions=torch.from_numpy(vision).to(self.model.device),
                    schedule=schedule,
                    max_new_tokens=gen.max_new_tokens,
                    eos_token_id=self.loaded.stop_token_ids,
                    pad_token_id=self._pad_id(),
                    attention_mask=mask,
                    position_ids=self.family.layer_drop_position_ids(llm_input.position_ids),
                )
                generation = result.generation
                tokens_per_layer = list(result.tokens_per_layer)
                extra["tokens_per_layer"] = tokens_per_layer
                extra["schedule"] = [list(s) for s in schedule.stages]
                steps = generation.decode_steps[0]
                flops = layer_drop_llm_flops(self.dims, tokens_per_layer, decode_steps=steps)
            else:
                generator = torch.Generator().manual_seed(gen.seed) if gen.do_sample else None
                generation = self.family.generate(
                    llm_input.inputs_embeds,
                    attention_mask=mask,
                    position_ids=llm_input.position_ids,
                    max_new_tokens=gen.max_new_tokens,
                    eos_token_id=self.loaded.stop_token_ids,
                    pad_token_id=self._pad_id(),
                    do_sample=gen.do_sample,
                    generator=generator,
                )
                steps = generation.decode_steps[0]
                flops = llm_flops(self.dims, prefill_tokens=length, decode_steps=steps)
        text = self.tokenizer.decode(generation.token_ids[0], skip_special_tokens=True)
        return Generated(answer=str(text).strip(), decode_steps=steps, llm_flops=flops, extra=extra)

    def generate_many(self, llm_inputs: Sequence[LlmInput]) -> list[Generated]:
        """Answer several LLM inputs in one left-padded batch (greedy, or seeded sampling).

        Each row keeps its own kept tokens and position ids; padding slots sit on the left with
        attention mask 0, a zero embedding and position id 0 (:func:`pack_llm_inputs`), so every
        row's last prompt token is in the last column and decoding continues each row's own
        positions.
        """
        if not llm_inputs:
            return []
        gen = self.config.generation
        packed = pack_llm_inputs(llm_inputs)
        generator = torch.Generator().manual_seed(gen.seed) if gen.do_sample else None
        generation = self.family.generate(
            packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            max_new_tokens=gen.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self._pad_id(),
            do_sample=gen.do_sample,
            generator=generator,
        )
        out = []
        for row, llm_input in enumerate(llm_inputs):
            steps = generation.decode_steps[row]
            flops = llm_flops(
                self.dims, prefill_tokens=llm_input.sequence.length, decode_steps=steps
            )
            text = self.tokenizer.decode(generation.token_ids[row], skip_special_tokens=True)
            out.append(Generated(answer=str(text).strip(), decode_steps=steps, llm_flops=flops))
        return out


def pack_llm_inputs(llm_inputs: Sequence[LlmInput]) -> PackedInputs:
    """Left pad several questions' LLM inputs into one batch.

    Row ``b`` holds its own embeddings and position ids in its last ``L_b`` slots; padding slots
    have a zero embedding, attention mask 0 and position id 0 (the convention of
    :func:`lrs_core.models.generation.pack_kept`).

    Args:
        llm_inputs: one per question, each (1, L_b, D) embeddings and (1, L_b) position ids.

    Returns:
        (B, max L_b, D) embeddings, int64 (B, max L_b) attention mask and position ids.
    """
    width = max(x.sequence.length for x in llm_inputs)
    first = llm_inputs[0].inputs_embeds
    batch = len(llm_inputs)
    embeds = first.new_zeros(batch, width, first.shape[-1])
    mask = torch.zeros(batch, width, dtype=torch.int64, device=first.device)
    positions = torch.zeros(batch, width, dtype=torch.int64, device=first.device)
    for row, llm_input in enumerate(llm_inputs):
        length = llm_input.sequence.length
        embeds[row, width - length :] = llm_input.inputs_embeds[0]
        mask[row, width - length :] = 1
        positions[row, width - length :] = llm_input.position_ids[0].to(first.device)
    return PackedInputs(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
