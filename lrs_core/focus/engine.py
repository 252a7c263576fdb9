"""The coarse-to-fine engine: Dynamic Image Pyramid + Region Focus Module, and its baselines.

Reads top to bottom: the config (:mod:`lrs_core.focus.config`), the scorer seam, the loop state,
then :class:`FocusEngine`. One question goes through these stages::

    thumbnail + all tiles of dip_level 1 -> RFM scores -> tiles of the next level (zoom)
        -> encode only those tiles -> RFM on their tokens -> ... -> prune at the last level
        -> LLM on [text | thumbnail | ':' | kept tokens, raster order, newline per row | text]

Baselines (``thumbnail``, ``grid-N``, ``full``, ``fastv``, ``pdrop``) share the tile reading,
feature cache, sequence building and accounting. Every answer is an
:class:`~lrs_core.records.AnswerRecord` with evidence tiles of every level, kept tokens, a heat map
and the accounting. ``plan`` counts the same figures without running a model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from lrs_core.dip.plan import (
    DipConfig,
    DipLevel,
    DipPlan,
    plan_pyramid,
    reencoded_level,
)
from lrs_core.errors import ConfigError, LrsError, TokenBudgetError
from lrs_core.focus.config import DEFAULT_QA_BATCH, FocusConfig
from lrs_core.focus.features import FeatureCache, FeatureKey
from lrs_core.focus.nodata import drop_nodata_tiles, restrict_to_data
from lrs_core.focus.record import build_record, layer_drop_llm_flops
from lrs_core.focus.rfm import RfmConfig
from lrs_core.focus.select import (
    TileChoice,
    prune_tokens,
    pruned_size,
    select_tiles_parity,
    select_tiles_ranked,
    valid_token_mask,
)
from lrs_core.focus.sequence import LevelSequence, build_level_sequence, embed_sequence
from lrs_core.focus.state import (
    STAGES,
    BoolArray,
    FocusState,
    LlmInput,
    MemoryProbe,
    RfmScorer,
    ScoredLevel,
    ScoreRequest,
    TileRc,
    TokenScorer,
    all_tiles,
    grid_level,
    level_view_tokens,
    question_id_of,
)
from lrs_core.focus.tiles import PixelDtype, mean_rgb_uint8, read_thumbnail, read_tiles
from lrs_core.models.families.engine_model import QwenVlEngineModel
from lrs_core.models.flops import ModelDims, count_flops, dims_from_configs
from lrs_core.models.generation import PackedInputs, generate_from_embeds
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.models.prompt import PromptIds, tokenize_prompt
from lrs_core.records import (
    AnswerRecord,
)

__all__ = [
    "STAGES",
    "FocusConfig",
    "FocusEngine",
    "FocusState",
    "LlmInput",
    "RfmScorer",
    "ScoreRequest",
    "ScoredLevel",
    "TokenScorer",
    "all_tiles",
    "grid_level",
    "layer_drop_llm_flops",
    "level_view_tokens",
    "question_id_of",
]

log = logging.getLogger(__name__)


# -- the engine --------------------------------------------------------------------------------


class FocusEngine:
    """Answers questions about scenes with one model and one :class:`FocusConfig`.

    Args:
        loaded: the model and tokenizer (:func:`lrs_core.models.loading.auto.load_model`).
        config: the preset and its parameters.
        feature_cache: tile features shared across questions (a fresh 512 MiB cache if None).
        scorer: the token scorer; None = :class:`RfmScorer` (inject another to test the loop).
        dims: model dimensions for the FLOP counts; None = this model's own. Pass
            ``KNOWN_DIMS["qwen2-7b"]`` to count (or plan) what a 7B model with the same geometry
            would spend on the same tiles and tokens.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        config: FocusConfig,
        feature_cache: FeatureCache | None = None,
        scorer: TokenScorer | None = None,
        dims: ModelDims | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = config
        # M-RoPE bases (Qwen-VL): the engine dispatches on this object (prompt, positions, RFM,
        # generation, FLOPs dims; no image newline). None for the LLaVA-style models.
        untyped_model: Any = loaded.model
        self.mrope: QwenVlEngineModel | None = (
            untyped_model if isinstance(untyped_model, QwenVlEngineModel) else None
        )
        if self.mrope is not None and (
            config.preset == "parity" or config.include_newline_in_selection
        ):
            raise ConfigError(
                f"the parity preset reproduces the released LLaVA code, which has no "
                f"{self.mrope.config.family} path (and {self.mrope.config.family} has no image "
                "newline to select); use the default preset"
            )
        vlm = self.model.config
        self.dip_config = DipConfig.preset(
            config.pyramid_rule,
            tile_size_px=vlm.tile_size_px,
            patch_size_px=vlm.patch_size_px,
            tokens_per_tile_side=vlm.pooled_per_side,
        )
        self.feature_cache = FeatureCache() if feature_cache is None else feature_cache
        rfm_config = RfmConfig(
            exclude_newline_keys=not config.include_newline_in_selection,
            placeholder_logit_bias=config.rfm_placeholder_logit_bias,
        )
        self.scorer: TokenScorer = scorer or RfmScorer(loaded, config=rfm_config)
        vision_config: Any = self.model.vision_tower.config
        if dims is None and self.mrope is not None:
            dims = self.mrope.flops_dims()
        self.dims: ModelDims = dims or dims_from_configs(
            vision_config,
            self.model.llm.config,
            rfm_layers=len(self.model.rfm.layers) - 1,
            projector_in=int(vision_config.hidden_size),
        )
        self.thumbnail_tokens = self.dip_config.thumbnail_tokens
        # Pixels as the reference makes them under parity: unrounded floats, padding exactly 0
        # after normalisation (spec §1.1); otherwise uint8 padded with this model's own mean.
        self.pixel_dtype: PixelDtype = "float32" if config.resampler == "parity" else "uint8"
        self.pad_rgb = mean_rgb_uint8(vlm.image_mean)
        # feature-cache view keys: float parity pixels differ from the uint8 ones of older caches
        self._pixel_key = config.resampler + ("-f32" if self.pixel_dtype == "float32" else "")
        separator: Any = self.tokenizer.convert_tokens_to_ids(vlm.separator_token)
        if separator is None or separator == self.tokenizer.unk_token_id:
            separator = self.tokenizer(vlm.separator_token, add_special_tokens=False).input_ids[-1]
        self.separator_id = int(separator)

    # -- public API ----------------------------------------------------------------------------

    def prompt_ids(self, question: str) -> PromptIds:
        """The question's prompt ids around the image (the model's template)."""
        if self.mrope is not None:
            return self.mrope.prompt_ids(question)
        return tokenize_prompt(self.tokenizer, question, template=self.model.config.chat_template)

    def newline_rows(self, rows: BoolArray) -> BoolArray:
        """The rows whose newline token is placed: ``rows``, or none for a model without one."""
        if self.mrope is not None:
            return np.zeros_like(rows, dtype=bool)
        return rows

    def _position_ids(self, sequence: LevelSequence, positions: np.ndarray) -> torch.Tensor:
        """Position ids of a sequence: (1, L) from ``positions``, or M-RoPE (3, 1, L)."""
        if self.mrope is not None:
            return self.mrope.sequence_position_ids(sequence.layout)
        return torch.from_numpy(positions)[None].to(self.model.device)

    def answer(
        self, pyramid: Any, question: str, *, question_id: str | None = None
    ) -> AnswerRecord:
        """Answer one question about a scene.

        Args:
            pyramid: an opened scene store (:func:`lrs_core.pyramid.open_pyramid`).
            question: the question text.
            question_id: id for the record (default: a hash of the text).

        Raises:
            TokenBudgetError: the text alone does not fit the context, or a non-pruning view
                exceeds ``token_budget``.
        """
        start = time.perf_counter()
        probe = MemoryProbe(self.model.device)
        with torch.inference_mode():
            state, llm_input, evidence_levels = self._build(pyramid, question, probe)
            answer, decode_steps, llm_flops, extra = self._generate(state, llm_input)
        probe.sample()
        state.seconds["total"] = time.perf_counter() - start
        record = self._record(
            scene=pyramid.scene_ref(),
            question=question,
            question_id=question_id or question_id_of(question),
            answer=answer,
            state=state,
            llm_input_counts=(llm_input.n_vision, llm_input.n_text),
            levels=evidence_levels,
            kept=llm_input,
            decode_steps=decode_steps,
            llm_flops=llm_flops,
            peak=probe.peak_bytes(),
            extra=extra,
            planned=False,
        )
        return restrict_to_data(record, pyramid, max_nodata_share=self.config.max_nodata_share)

    def answer_many(
        self,
        pyramid: Any,
        questions: Sequence[tuple[str, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
        batch_size: int = DEFAULT_QA_BATCH,
    ) -> list[AnswerRecord]:
        """Answer several ``(question_id, text)`` questions about one scene, sharing tile features.

        The thumbnail and every tile are encoded once per scene (the feature cache). The coarse-to-
        fine loop runs per question; the LLM then answers up to ``batch_size`` questions in one
        left-padded pass (prefill and decode, per-row position ids and kept tokens,
        :meth:`generate_many`), which gives the same tokens as one by one under greedy decoding.
        ``fastv``/``pdrop``, sampling and Qwen-VL (M-RoPE) models answer one by one. A question
        that fails with an :class:`LrsError` gets a record with ``error`` set and an empty answer.

        Each record's ``seconds["llm"]`` is its share of its batch's LLM time (the batch time over
        the rows); ``preset_params["run"]["llm_batch"]`` is the number of rows of that batch.

        Raises:
            ConfigError: ``batch_size`` < 1.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
        batchable = (
            self.config.strategy not in ("fastv", "pdrop")
            and not self.config.do_sample
            and self.mrope is None  # M-RoPE (Qwen-VL) rows have no batched decode path yet
        )
        step = batch_size if batchable else 1
        records: list[AnswerRecord] = []
        for chunk_start in range(0, len(questions), step):
            chunk = questions[chunk_start : chunk_start + step]
            if step == 1:
                (question_id, text) = chunk[0]
                try:
                    records.append(self.answer(pyramid, text, question_id=question_id))
                except LrsError as err:
                    records.append(self._failed(pyramid, question_id, text, err))
            else:
                records.extend(self._answer_batch(pyramid, chunk))
            if progress is not None:
                for done in range(chunk_start + 1, chunk_start + len(chunk) + 1):
                    progress(done, len(questions))
        return records

    def _failed(self, pyramid: Any, question_id: str, text: str, err: LrsError) -> AnswerRecord:
        log.warning("%s: question %s failed: %s", getattr(pyramid, "store", "?"), question_id, err)
        return AnswerRecord(
            question_id=question_id,
            scene=pyramid.scene_ref(),
            question=text,
            answer="",
            model_id=self.loaded.model_id,
            preset=self.config.preset,
            preset_params=self.config.to_dict(),
            error=f"{type(err).__name__}: {err}",
        )

    def _answer_batch(
        self, pyramid: Any, questions: Sequence[tuple[str, str]]
    ) -> list[AnswerRecord]:
        """Build every question's LLM input, then run the LLM once over all of them."""
        results: dict[int, AnswerRecord] = {}
        built: list[tuple[int, FocusState, LlmInput, list[ScoredLevel], float, MemoryProbe]] = []
        for index, (question_id, text) in enumerate(questions):
            start = time.perf_counter()
            probe = MemoryProbe(self.model.device)
            try:
                with torch.inference_mode():
                    state, llm_input, levels = self._build(pyramid, text, probe)
            except LrsError as err:
                results[index] = self._failed(pyramid, question_id, text, err)
                continue
            built.append((index, state, llm_input, levels, time.perf_counter() - start, probe))
        if built:
            start = time.perf_counter()
            with torch.inference_mode():
                outputs = self.generate_many([b[2] for b in built])
            share = (time.perf_counter() - start) / len(built)
            for (index, state, llm_input, levels, build_seconds, probe), output in zip(
                built, outputs, strict=True
            ):
                answer, steps, llm_flops = output
                probe.sample()
                state.seconds["llm"] += share
                state.seconds["total"] = build_seconds + share
                question_id, text = questions[index]
                results[index] = self._record(
                    scene=pyramid.scene_ref(),
                    question=text,
                    question_id=question_id,
                    answer=answer,
                    state=state,
                    llm_input_counts=(llm_input.n_vision, llm_input.n_text),
                    levels=levels,
                    kept=llm_input,
                    decode_steps=steps,
                    llm_flops=llm_flops,
                    peak=probe.peak_bytes(),
                    extra={"llm_batch": len(built)},
                    planned=False,
                )
        return [results[i] for i in range(len(questions))]

    def generate_many(self, llm_inputs: Sequence[LlmInput]) -> list[tuple[str, int, float]]:
        """Answer several LLM inputs in one left-padded batch (greedy, or seeded sampling).

        Each row keeps its own kept tokens and position ids; padding slots sit on the left with
        attention mask 0, a zero embedding and position id 0 (as
        :func:`lrs_core.models.generation.pack_kept`), so every row's last prompt token is in the
        last column and decoding continues each row's own positions.

        Args:
            llm_inputs: from :meth:`prepare` (or the loop), one per question.

        Returns:
            Per input: (answer text, decode steps, LLM FLOPs of that row).
        """
        if not llm_inputs:
            return []
        cfg, tokenizer = self.config, self.tokenizer
        packed = pack_llm_inputs(llm_inputs)
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        generator = torch.Generator().manual_seed(cfg.seed) if cfg.do_sample else None
        generation = generate_from_embeds(
            self.model.llm,
            packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=int(pad),
            do_sample=cfg.do_sample,
            generator=generator,
        )
        out = []
        for row, llm_input in enumerate(llm_inputs):
            steps = generation.decode_steps[row]
            flops = count_flops(
                self.dims,
                vision_tiles=0,
                prefill_tokens=llm_input.sequence.length,
                decode_steps=steps,
            ).llm_flops
            text = tokenizer.decode(generation.token_ids[row], skip_special_tokens=True)
            out.append((str(text).strip(), steps, flops))
        return out

    def prepare(self, pyramid: Any, question: str) -> LlmInput:
        """Run everything up to the LLM and return its input (for tests and inspection)."""
        probe = MemoryProbe(self.model.device)
        with torch.inference_mode():
            _, llm_input, _ = self._build(pyramid, question, probe)
        return llm_input

    def plan(
        self, pyramid_or_size_wh: Any, question: str, *, question_id: str | None = None
    ) -> AnswerRecord:
        """Count tiles, tokens and FLOPs of a question without running any model (a dry run).

        Exact for ``thumbnail``, ``grid-N``, ``full``; ``fastv``/``pdrop`` add the schedule's
        per-layer lengths. For ``focus`` presets the zoom tiles depend on the RFM, so the plan is an
        upper bound: every tile of each reachable level, capped by ``tiles_cap`` and the budget
        (``preset_params["run"]["plan"]`` says so). Decode steps are ``max_new_tokens``.
        """
        from lrs_core.focus.plan import plan_question

        return plan_question(self, pyramid_or_size_wh, question, question_id=question_id)

    # -- tiles and features --------------------------------------------------------------------

    def _scene_key(self, pyramid: Any) -> str:
        lrs = getattr(pyramid, "attributes", {}).get("lrs", {})
        checksum = lrs.get("checksum") if isinstance(lrs, dict) else None
        return f"{pyramid.scene_id}:{checksum or pyramid.store}"

    def _model_key(self) -> str:
        return f"{self.loaded.model_id}@{str(self.model.dtype).removeprefix('torch.')}"

    @contextmanager
    def _timed(self, state: FocusState, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            state.seconds[stage] += time.perf_counter() - start

    def _encode(self, state: FocusState, tiles: np.ndarray, *, pooled: bool) -> torch.Tensor:
        with self._timed(state, "vision"):
            pixels = self.model.preprocess_tiles(tiles)
            feats = self.model.encode_tiles(
                pixels, pooled=pooled, batch_size=self.config.vision_batch_size
            )
        state.tiles_encoded += tiles.shape[0]
        return feats

    def _thumbnail_feats(self, state: FocusState, pyramid: Any) -> torch.Tensor:
        thumb = state.plan.thumbnail
        key = FeatureKey(
            scene_key=self._scene_key(pyramid),
            model_key=self._model_key(),
            view_key=f"{self._pixel_key}-thumbnail-{thumb.resize_hw[0]}x{thumb.resize_hw[1]}",
            dip_level=0,
            tile_rc=(0, 0),
        )
        cached = self.feature_cache.get(key, store=pyramid.store)
        if cached is not None:
            state.tiles_cached += 1
            return cached.to(self.model.device, self.model.dtype)
        with self._timed(state, "read"):
            pixels = read_thumbnail(
                pyramid,
                thumb,
                resampler=self.config.resampler,
                pad_rgb=self.pad_rgb,
                dtype=self.pixel_dtype,
            )
        feats = self._encode(state, pixels[None], pooled=False)[0]
        self.feature_cache.put(key, feats, store=pyramid.store)
        return feats

    def _tile_feats(
        self,
        state: FocusState,
        pyramid: Any,
        level: DipLevel,
        tiles_rc: list[TileRc],
        *,
        bypass_cache: bool = False,
    ) -> torch.Tensor:
        """Float (n, 144, D) tile features of a level, from the cache or encoded (read lazily)."""
        rows, cols = level.resize_hw
        view_key = f"{self._pixel_key}-{level.tile_size_px}-{rows}x{cols}"
        keys = [
            FeatureKey(
                scene_key=self._scene_key(pyramid),
                model_key=self._model_key(),
                view_key=view_key,
                dip_level=level.dip_level,
                tile_rc=tile,
            )
            for tile in tiles_rc
        ]
        found: dict[int, torch.Tensor] = {}
        if not bypass_cache:
            for index, key in enumerate(keys):
                cached = self.feature_cache.get(key, store=pyramid.store)
                if cached is not None:
                    found[index] = cached
        state.tiles_cached += len(found)
        missing = [i for i in range(len(tiles_rc)) if i not in found]
        if missing:
            with self._timed(state, "read"):
                pixels = read_tiles(
                    pyramid,
                    level,
                    [tiles_rc[i] for i in missing],
                    resampler=self.config.resampler,
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

    # -- budget --------------------------------------------------------------------------------

    def allowance(self, prompt: PromptIds) -> int:
        """Vision tokens the LLM may receive: ``min(token_budget, context - text)``.

        Raises:
            TokenBudgetError: the text alone does not fit the model's context.
        """
        context = self.model.config.max_context_tokens
        left = context - prompt.n_text_tokens
        if left < 0:
            raise TokenBudgetError(
                f"the prompt holds {prompt.n_text_tokens} text tokens but the model's context is "
                f"{context}; shorten the question (vision tokens are already prunable, text is not)"
            )
        budget = self.config.token_budget
        return left if budget is None else min(budget, left)

    def _check_thumbnail_fits(self, allowance: int, *, with_level: bool) -> None:
        need = self.thumbnail_tokens + int(with_level)
        if allowance < need:
            raise TokenBudgetError(
                f"only {allowance} vision tokens fit (token_budget={self.config.token_budget}, "
                f"context {self.model.config.max_context_tokens}) but the thumbnail needs {need}; "
                "raise --budget or shorten the question"
            )

    # -- the loop ------------------------------------------------------------------------------

    def _build(
        self, pyramid: Any, question: str, probe: MemoryProbe
    ) -> tuple[FocusState, LlmInput, list[ScoredLevel]]:
        prompt = self.prompt_ids(question)
        width, height = pyramid.size_wh
        plan = plan_pyramid(int(width), int(height), config=self.dip_config)
        state = FocusState(
            question=question, prompt=prompt, plan=plan, allowance=self.allowance(prompt)
        )
        strategy = self.config.strategy
        if strategy == "focus":
            self._check_thumbnail_fits(state.allowance, with_level=True)
            thumb = self._thumbnail_feats(state, pyramid)
            self._focus_loop(state, pyramid, thumb)
            probe.sample()
            last = state.visited[-1]
            pruned = prune_tokens(
                last.token_scores,
                last.newline_scores,
                last.valid,
                keep_ratio=self.config.keep_ratio,
                newlines_in_ratio=self.config.include_newline_in_selection,
                keep_all_newlines=self.config.keep_all_newlines,
                allowance=state.allowance - self.thumbnail_tokens - 1,
            )
            sequence = build_level_sequence(
                prompt,
                thumbnail_tokens=self.thumbnail_tokens,
                separator_id=self.separator_id,
                level=last.level,
                include=pruned.keep,
                newline_rows=self.newline_rows(pruned.newline_rows),
            )
            llm_input = self._llm_input(
                sequence, thumb, last.level, last.tiles_rc, state.tile_feats
            )
            return state, llm_input, state.visited
        level = self.baseline_level(plan, state.allowance)
        if level is None:
            self._check_thumbnail_fits(state.allowance, with_level=False)
        thumb = self._thumbnail_feats(state, pyramid)
        tiles = [] if level is None else all_tiles(level)
        feats = None if level is None else self._tile_feats(state, pyramid, level, tiles)
        probe.sample()
        sequence = build_level_sequence(
            prompt,
            thumbnail_tokens=self.thumbnail_tokens,
            separator_id=self.separator_id,
            level=level,
            newline_rows=None
            if level is None
            else self.newline_rows(np.ones(level.token_grid_hw[0], dtype=bool)),
        )
        llm_input = self._llm_input(sequence, thumb, level, tiles, feats)
        visited = []
        if level is not None:
            rows, cols = level.token_grid_hw
            visited.append(
                ScoredLevel(
                    level=level,
                    tiles_rc=tiles,
                    valid=np.ones((rows, cols), dtype=bool),
                    token_scores=np.zeros((rows, cols), dtype=np.float32),
                    newline_scores=np.zeros(rows, dtype=np.float32),
                )
            )
        return state, llm_input, visited

    def baseline_level(
        self, plan: DipPlan, allowance: int, *, dry_run: bool = False
    ) -> DipLevel | None:
        """The level a baseline feeds whole (None = thumbnail only).

        ``grid``: the ``grid-N`` view. ``full``/``fastv``/``pdrop``: the finest level ``default``
        would reach (``max_zoom_steps`` counted from level 1), stepping down to the finest level
        that fits an explicit ``token_budget``. A view over the context is logged as a WARNING
        when running and at DEBUG for a ``dry_run`` plan (where it is expected).

        Raises:
            TokenBudgetError: an explicit ``token_budget`` is too small for the view.
        """
        strategy, budget = self.config.strategy, self.config.token_budget
        if strategy == "thumbnail":
            return None
        if strategy == "grid":
            level = grid_level(plan.image_hw, self.config.grid_n, config=self.dip_config)
            candidates = [level]
        else:
            steps = self.config.max_zoom_steps
            finest = plan.n_levels if steps is None else min(plan.n_levels, 1 + steps)
            candidates = [plan.level(k) for k in range(finest, 0, -1)]
        for level in candidates:
            need = self.thumbnail_tokens + level_view_tokens(level)
            if budget is None or need <= allowance:
                if need > allowance:
                    log.log(
                        logging.DEBUG if dry_run else logging.WARNING,
                        "the %s view needs %d vision tokens, over the %d left in the context",
                        self.config.preset,
                        need,
                        allowance,
                    )
                return level
        raise TokenBudgetError(
            f"the {self.config.preset} view needs "
            f"{self.thumbnail_tokens + level_view_tokens(candidates[-1])} "
            f"vision tokens but token_budget={budget} allows {allowance}; raise --budget or use a "
            "pruning preset (default, parity)"
        )

    def next_zoom_level(
        self, plan: DipPlan, level: DipLevel, zoom_steps: int
    ) -> tuple[DipLevel | None, str]:
        """The level the focus loop zooms into after ``level``, or None and why it stops.

        Stops after ``max_zoom_steps`` zooms and at the finest level; a single-level plan with
        ``reencode_single_level`` zooms into the same level again, its token grid unpadded against
        its ``resize_hw`` as the reference's pass 2 does
        (:func:`lrs_core.dip.plan.reencoded_level`).
        """
        cfg = self.config
        if cfg.max_zoom_steps is not None and zoom_steps >= cfg.max_zoom_steps:
            return None, f"max_zoom_steps={cfg.max_zoom_steps} reached"
        if level.dip_level < plan.n_levels:
            return plan.level(level.dip_level + 1), ""
        if cfg.reencode_single_level and plan.n_levels == 1 and zoom_steps == 0:
            return reencoded_level(level), ""
        return None, "finest level reached"

    def _focus_loop(self, state: FocusState, pyramid: Any, thumb: torch.Tensor) -> None:
        cfg, plan = self.config, state.plan
        level = plan.level(1)
        tiles = all_tiles(level)
        state.tile_feats = self._tile_feats(state, pyramid, level, tiles)
        level_allowance = state.allowance - self.thumbnail_tokens - 1
        zoom_steps = 0
        while True:
            current = self._score(state, level, tiles, thumb)
            state.visited.append(current)
            next_level, stop_reason = self.next_zoom_level(plan, level, zoom_steps)
            if next_level is None:
                state.stop_reason = stop_reason
                break
            choice = self._choose_tiles(current, next_level, pyramid)
            next_tiles = sorted(choice.tiles_rc)
            valid = valid_token_mask(next_level, next_tiles)
            need = pruned_size(
                int(valid.sum()),
                int(valid.any(axis=1).sum()),
                keep_ratio=cfg.keep_ratio,
                all_newlines=cfg.keep_all_newlines,
                total_rows=next_level.token_grid_hw[0],
            )
            if not next_tiles or need > level_allowance:
                state.stop_reason = (
                    f"dip_level {next_level.dip_level} would need {need} vision tokens after "
                    "pruning, "
                    f"over the {level_allowance} allowed"
                )
                break
            same_level = next_level.dip_level == level.dip_level
            level, tiles = next_level, next_tiles
            state.tile_feats = self._tile_feats(
                state, pyramid, level, tiles, bypass_cache=same_level
            )
            zoom_steps += 1

    def _choose_tiles(self, current: ScoredLevel, next_level: DipLevel, pyramid: Any) -> TileChoice:
        cfg = self.config
        if cfg.include_newline_in_selection:
            choice = select_tiles_parity(
                current.token_scores,
                current.newline_scores,
                current.valid,
                level=current.level,
                next_level=next_level,
                ratio=cfg.select_ratio,
            )
            cap = None
        else:
            # Ranked and expanded without the cap: tiles in nodata are dropped first, then capped.
            choice = select_tiles_ranked(
                current.token_scores,
                current.valid,
                level=current.level,
                next_level=next_level,
                ratio=cfg.select_ratio,
                tiles_cap=None,
                neighbour_expansion=cfg.neighbour_expansion,
            )
            cap = cfg.tiles_cap
        return drop_nodata_tiles(
            choice, next_level, pyramid, max_nodata_share=cfg.max_nodata_share, tiles_cap=cap
        )

    def _score(
        self, state: FocusState, level: DipLevel, tiles: list[TileRc], thumb: torch.Tensor
    ) -> ScoredLevel:
        """One RFM pass over a level's encoded tiles (spec §3, §5.1)."""
        cfg = self.config
        rows_n, cols_n = level.token_grid_hw
        valid = valid_token_mask(level, tiles)
        newline_rows: BoolArray = np.asarray(
            np.ones(rows_n, dtype=bool) if cfg.keep_all_newlines else valid.any(axis=1), dtype=bool
        )
        if cfg.rfm_gather_valid_only:
            sequence = build_level_sequence(
                state.prompt,
                thumbnail_tokens=self.thumbnail_tokens,
                separator_id=self.separator_id,
                level=level,
                include=valid,
                newline_rows=self.newline_rows(newline_rows),
            )
        else:
            sequence = build_level_sequence(
                state.prompt,
                thumbnail_tokens=self.thumbnail_tokens,
                separator_id=self.separator_id,
                level=level,
                newline_rows=self.newline_rows(np.ones(rows_n, dtype=bool)),
                placeholder=~valid,
            )
        kinds = (
            (TokenKind.LEVEL, TokenKind.NEWLINE)
            if cfg.include_newline_in_selection
            else (TokenKind.LEVEL,)
        )
        key_index = sequence.positions_of(*kinds)
        layout = sequence.layout
        key_rc = np.stack([layout.grid_r[key_index], layout.grid_c[key_index]], axis=1)
        is_newline = layout.kind[key_index] == TokenKind.NEWLINE.value
        key_valid = ~sequence.is_placeholder[key_index]
        rfm_positions = (
            sequence.positions
            if cfg.rfm_position_mode == "original"
            else np.arange(sequence.length, dtype=np.int64)
        )
        with self._timed(state, "rfm"):
            embeds = embed_sequence(
                self.model,
                sequence,
                thumbnail_feats=thumb,
                level=level,
                tiles_rc=tiles,
                tile_feats=state.tile_feats,
            )
            device = self.model.device
            request = ScoreRequest(
                level=level,
                key_grid_rc=key_rc,
                key_is_newline=is_newline,
                key_valid=key_valid,
                inputs_embeds=embeds[None],
                position_ids=self._position_ids(sequence, rfm_positions),
                attention_mask=torch.from_numpy((~sequence.is_placeholder).astype(np.int64))[
                    None
                ].to(device),
                query_positions=torch.tensor([[sequence.length - 1]], device=device),
                key_positions=torch.from_numpy(key_index)[None].to(device),
                question=state.question,
            )
            scores = np.asarray(self.scorer(request), dtype=np.float32)
        state.rfm_tokens.append(sequence.length)
        scores = np.where(key_valid, scores, 0.0).astype(np.float32)
        token_scores = np.zeros((rows_n, cols_n), dtype=np.float32)
        newline_scores = np.zeros(rows_n, dtype=np.float32)
        token_scores[key_rc[~is_newline, 0], key_rc[~is_newline, 1]] = scores[~is_newline]
        newline_scores[key_rc[is_newline, 0]] = scores[is_newline]
        return ScoredLevel(
            level=level,
            tiles_rc=list(tiles),
            valid=valid,
            token_scores=token_scores,
            newline_scores=newline_scores,
            scored=True,
        )

    # -- the LLM -------------------------------------------------------------------------------

    def _llm_input(
        self,
        sequence: LevelSequence,
        thumb: torch.Tensor,
        level: DipLevel | None,
        tiles: list[TileRc],
        feats: torch.Tensor | None,
    ) -> LlmInput:
        embeds = embed_sequence(
            self.model,
            sequence,
            thumbnail_feats=thumb,
            level=level,
            tiles_rc=tiles,
            tile_feats=feats,
        )
        if self.config.position_mode == "original":
            positions = sequence.positions
        else:
            positions = np.arange(sequence.length, dtype=np.int64)
        return LlmInput(
            sequence=sequence,
            inputs_embeds=embeds[None],
            position_ids=self._position_ids(sequence, positions),
            level=level,
        )

    def _generate(
        self, state: FocusState, llm_input: LlmInput
    ) -> tuple[str, int, float, dict[str, Any]]:
        """Run the LLM; return (answer, decode steps, LLM FLOPs, extra record fields)."""
        cfg = self.config
        tokenizer = self.tokenizer
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        mask = torch.ones(
            llm_input.inputs_embeds.shape[:2], dtype=torch.int64, device=self.model.device
        )
        extra: dict[str, Any] = {}
        with self._timed(state, "llm"):
            if cfg.strategy in ("fastv", "pdrop"):
                from lrs_core.models.layer_drop import LayerDropSchedule, generate_with_layer_drop

                n_layers = int(self.model.llm.config.num_hidden_layers)
                if cfg.strategy == "fastv":
                    schedule = LayerDropSchedule.fastv(
                        layer=cfg.fastv_layer, keep_ratio=cfg.fastv_keep_ratio
                    )
                else:
                    schedule = LayerDropSchedule.pdrop(
                        num_layers=n_layers,
                        keep_ratio=cfg.pdrop_keep_ratio,
                        n_stages=cfg.pdrop_stages,
                    )
                vision = llm_input.sequence.positions_of(
                    TokenKind.THUMBNAIL, TokenKind.LEVEL, TokenKind.NEWLINE
                )
                result = generate_with_layer_drop(
                    self.model.llm,
                    llm_input.inputs_embeds,
                    vision_positions=torch.from_numpy(vision).to(self.model.device),
                    schedule=schedule,
                    max_new_tokens=cfg.max_new_tokens,
                    eos_token_id=self.loaded.stop_token_ids,
                    pad_token_id=int(pad),
                    attention_mask=mask,
                    position_ids=None if self.mrope is None else llm_input.position_ids,
                )
                generation = result.generation
                tokens_per_layer = list(result.tokens_per_layer)
                extra["tokens_per_layer"] = tokens_per_layer
                extra["schedule"] = [list(s) for s in schedule.stages]
                steps = generation.decode_steps[0]
                llm_flops = layer_drop_llm_flops(self.dims, tokens_per_layer, decode_steps=steps)
            elif self.mrope is not None:
                if cfg.do_sample:
                    raise ConfigError(
                        f"{self.mrope.config.family} models decode greedily here; "
                        "set do_sample=False"
                    )
                generation = self.mrope.generate(
                    llm_input.inputs_embeds,
                    position_ids=llm_input.position_ids,
                    max_new_tokens=cfg.max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                )
                steps = generation.decode_steps[0]
                llm_flops = count_flops(
                    self.dims,
                    vision_tiles=0,
                    prefill_tokens=llm_input.sequence.length,
                    decode_steps=steps,
                ).llm_flops
            else:
                generator = torch.Generator().manual_seed(cfg.seed) if cfg.do_sample else None
                generation = generate_from_embeds(
                    self.model.llm,
                    llm_input.inputs_embeds,
                    attention_mask=mask,
                    position_ids=llm_input.position_ids,
                    max_new_tokens=cfg.max_new_tokens,
                    eos_token_id=self.loaded.stop_token_ids,
                    pad_token_id=int(pad),
                    do_sample=cfg.do_sample,
                    generator=generator,
                )
                steps = generation.decode_steps[0]
                llm_flops = count_flops(
                    self.dims,
                    vision_tiles=0,
                    prefill_tokens=llm_input.sequence.length,
                    decode_steps=steps,
                ).llm_flops
        answer = str(tokenizer.decode(generation.token_ids[0], skip_special_tokens=True)).strip()
        return answer, steps, llm_flops, extra

    def _record(self, **fields: Any) -> AnswerRecord:
        return build_record(self, **fields)


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
