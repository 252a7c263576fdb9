"""The coarse-to-fine engine: Dynamic Image Pyramid + Region Focus Module, and its baselines.

Reads top to bottom with the modules it composes: the config (:mod:`lrs_core.focus.config`), the
views (:mod:`lrs_core.focus.views`: what each strategy shows the LLM), the executors
(:mod:`lrs_core.focus.executor`: run the model, or only count), the one loop
(:mod:`lrs_core.focus.loop`) and the records (:mod:`lrs_core.focus.record`). One question goes
through these stages::

    thumbnail + all tiles of dip_level 1 -> RFM scores -> tiles of the next level (zoom)
        -> encode only those tiles -> RFM on their tokens -> ... -> prune at the last level
        -> LLM on [text | thumbnail | ':' | kept tokens, raster order, newline per row | text]

Baselines (``thumbnail``, ``grid-N``, ``full``, ``fastv``, ``pdrop``) are other views through the
same loop. Every answer is an :class:`~lrs_core.records.AnswerRecord` with evidence tiles of every
level, kept tokens, a heat map and the accounting. :meth:`FocusEngine.plan` runs the same loop
with a counting executor.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lrs_core.dip.plan import DipConfig, DipLevel, DipPlan, plan_pyramid
from lrs_core.errors import ConfigError, LrsError, TokenBudgetError
from lrs_core.focus.accounting import layer_drop_llm_flops
from lrs_core.focus.config import DEFAULT_QA_BATCH, FocusConfig
from lrs_core.focus.executor import CountingExecutor, ModelExecutor, pack_llm_inputs
from lrs_core.focus.features import FeatureCache
from lrs_core.focus.loop import BuiltView, run_view
from lrs_core.focus.nodata import restrict_to_data
from lrs_core.focus.record import QuestionOutcome, RecordSource, build_record
from lrs_core.focus.rfm import RfmConfig
from lrs_core.focus.state import (
    STAGES,
    BoolArray,
    FocusState,
    Generated,
    LlmInput,
    MemoryProbe,
    RfmScorer,
    ScoredLevel,
    ScoreRequest,
    TokenScorer,
    all_tiles,
    grid_level,
    level_view_tokens,
    question_id_of,
)
from lrs_core.focus.views import View, ViewContext, view_for
from lrs_core.models.flops import ModelDims
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.models.prompt import PromptIds
from lrs_core.records import AnswerRecord, SceneRef

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
    "pack_llm_inputs",
    "question_id_of",
]

log = logging.getLogger(__name__)


def _scene_of(target: Any) -> tuple[SceneRef, int, int]:
    """The scene a dry run is about: an opened pyramid, or a bare ``(width, height)``."""
    if isinstance(target, (tuple, list)):
        width, height = (int(v) for v in target)
        return SceneRef(scene_id="planned", store="", size_wh=(width, height)), width, height
    width, height = target.size_wh
    return target.scene_ref(), int(width), int(height)


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

    Raises:
        ConfigError: the parity preset (or newline selection) asked of a family without it
            (``supports_parity`` False: Qwen-VL).
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
        vlm = self.model.config
        self.dip_config = DipConfig.preset(
            config.view.pyramid_rule,
            tile_size_px=vlm.tile_size_px,
            patch_size_px=vlm.patch_size_px,
            tokens_per_tile_side=vlm.pooled_per_side,
        )
        self.feature_cache = FeatureCache() if feature_cache is None else feature_cache
        rfm_config = RfmConfig(
            exclude_newline_keys=not config.loop.include_newline_in_selection,
            placeholder_logit_bias=config.loop.rfm_placeholder_logit_bias,
        )
        self.scorer: TokenScorer = scorer or RfmScorer(loaded, config=rfm_config)
        self.thumbnail_tokens = self.dip_config.thumbnail_tokens
        separator: Any = self.tokenizer.convert_tokens_to_ids(vlm.separator_token)
        if separator is None or separator == self.tokenizer.unk_token_id:
            separator = self.tokenizer(vlm.separator_token, add_special_tokens=False).input_ids[-1]
        self.separator_id = int(separator)
        # the family interface: prompt, positions, RFM, generation, FLOPs dims, newline, parity
        self.family = loaded.family
        if not self.family.supports_parity and (
            config.preset == "parity" or config.loop.include_newline_in_selection
        ):
            raise ConfigError(
                f"the parity preset reproduces the released LLaVA code, which has no "
                f"{self.family.family} path (and {self.family.family} has no image "
                "newline to select); use the default preset"
            )
        own_dims = dims or self.family.flops_dims(
            rfm_layers=len(self.model.rfm.layers) - 1, tile_px=vlm.tile_size_px
        )
        executor = ModelExecutor(
            loaded,
            config=config,
            feature_cache=self.feature_cache,
            scorer=self.scorer,
            dims=own_dims,
        )
        self.executor = executor
        n_layers = int(self.model.llm.config.num_hidden_layers)
        self.view_context = ViewContext(
            config=config,
            dip_config=self.dip_config,
            thumbnail_tokens=self.thumbnail_tokens,
            separator_id=self.separator_id,
            has_image_newline=self.family.has_image_newline,
            n_llm_layers=n_layers,
        )
        self.view: View = view_for(self.view_context)
        self.counter = CountingExecutor(config, dims=own_dims, n_llm_layers=n_layers)
        self.record_source = RecordSource(
            model_id=loaded.model_id,
            config=config,
            dims=own_dims,
            thumbnail_tokens=self.thumbnail_tokens,
        )

    @property
    def dims(self) -> ModelDims:
        """Model dimensions of the FLOP counts (settable: count another model's FLOPs)."""
        return self.record_source.dims

    @dims.setter
    def dims(self, dims: ModelDims) -> None:
        self.executor.dims = dims
        self.counter.dims = dims
        self.record_source = dataclasses.replace(self.record_source, dims=dims)

    # -- prompt and budget ---------------------------------------------------------------------

    def prompt_ids(self, question: str) -> PromptIds:
        """The question's prompt ids around the image (the model's template)."""
        return self.family.prompt_ids(question)

    def newline_rows(self, rows: BoolArray) -> BoolArray:
        """The rows whose newline token is placed: ``rows``, or none for a model without one."""
        return self.view_context.newline_rows(rows)

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
        budget = self.config.budget.token_budget
        return left if budget is None else min(budget, left)

    def baseline_level(
        self, plan: DipPlan, allowance: int, *, dry_run: bool = False
    ) -> DipLevel | None:
        """The level this engine's view feeds whole (None: thumbnail only, or a zooming view).

        An over-context view is logged as a WARNING when running and at DEBUG for a ``dry_run``.

        Raises:
            TokenBudgetError: an explicit ``token_budget`` is too small for the view.
        """
        return view_for(self.view_context, dry_run=dry_run).level(plan, allowance)

    # -- the loop ------------------------------------------------------------------------------

    def _state(self, question: str, width: int, height: int) -> FocusState:
        prompt = self.prompt_ids(question)
        plan = plan_pyramid(int(width), int(height), config=self.dip_config)
        return FocusState(
            question=question, prompt=prompt, plan=plan, allowance=self.allowance(prompt)
        )

    def _build(
        self, pyramid: Any, question: str, probe: MemoryProbe
    ) -> tuple[FocusState, BuiltView]:
        """Run the loop with the model up to the LLM (inside ``torch.inference_mode``)."""
        width, height = pyramid.size_wh
        state = self._state(question, width, height)
        built = run_view(self.view, self.executor, state, pyramid)
        probe.sample()
        return state, built

    def _outcome(
        self,
        pyramid: Any,
        question_id: str,
        state: FocusState,
        built: BuiltView,
        generated: Generated,
        probe: MemoryProbe,
    ) -> AnswerRecord:
        probe.sample()
        outcome = QuestionOutcome(
            scene=pyramid.scene_ref(),
            question_id=question_id,
            state=state,
            llm_view=built.llm_view,
            generated=generated,
            peak_bytes=probe.peak_bytes(),
        )
        record = build_record(self.record_source, outcome)
        return restrict_to_data(record, pyramid, max_nodata_share=self.config.loop.max_nodata_share)

    # -- public API ----------------------------------------------------------------------------

    def answer(
        self, pyramid: Any, question: str, *, question_id: str | None = None
    ) -> AnswerRecord:
        """Answer one question about a scene.

        Args:
            pyramid: an opened scene store (:func:`lrs_core.raster.pyramid.open_pyramid`).
            question: the question text.
            question_id: id for the record (default: a hash of the text).

        Raises:
            TokenBudgetError: the text alone does not fit the context, or a non-pruning view
                exceeds ``token_budget``.
        """
        start = time.perf_counter()
        probe = MemoryProbe(self.model.device)
        with torch.inference_mode():
            state, built = self._build(pyramid, question, probe)
            generated = self.executor.generate(
                state, built.llm_view, built.llm_input, self.view.layer_drop()
            )
        state.seconds["total"] = time.perf_counter() - start
        qid = question_id or question_id_of(question)
        return self._outcome(pyramid, qid, state, built, generated, probe)

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
            self.view.layer_drop() is None
            and not self.config.generation.do_sample
            and self.family.supports_batched_decode
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
        built: list[tuple[int, FocusState, BuiltView, float, MemoryProbe]] = []
        for index, (question_id, text) in enumerate(questions):
            start = time.perf_counter()
            probe = MemoryProbe(self.model.device)
            try:
                with torch.inference_mode():
                    state, one = self._build(pyramid, text, probe)
            except LrsError as err:
                results[index] = self._failed(pyramid, question_id, text, err)
                continue
            built.append((index, state, one, time.perf_counter() - start, probe))
        if built:
            start = time.perf_counter()
            with torch.inference_mode():
                outputs = self.executor.generate_many([_input_of(b[2]) for b in built])
            share = (time.perf_counter() - start) / len(built)
            for (index, state, one, build_seconds, probe), output in zip(
                built, outputs, strict=True
            ):
                state.seconds["llm"] += share
                state.seconds["total"] = build_seconds + share
                generated = Generated(
                    answer=output.answer,
                    decode_steps=output.decode_steps,
                    llm_flops=output.llm_flops,
                    extra={"llm_batch": len(built)},
                )
                results[index] = self._outcome(
                    pyramid, questions[index][0], state, one, generated, probe
                )
        return [results[i] for i in range(len(questions))]

    def generate_many(self, llm_inputs: Sequence[LlmInput]) -> list[tuple[str, int, float]]:
        """Answer several LLM inputs in one left-padded batch (greedy, or seeded sampling).

        Each row keeps its own kept tokens and position ids; padding slots sit on the left with
        attention mask 0, a zero embedding and position id 0 (:func:`pack_llm_inputs`), so every
        row's last prompt token is in the last column and decoding continues each row's own
        positions.

        Args:
            llm_inputs: from :meth:`prepare`, one per question.

        Returns:
            Per input: (answer text, decode steps, LLM FLOPs of that row).
        """
        with torch.inference_mode():
            outputs = self.executor.generate_many(llm_inputs)
        return [(g.answer, g.decode_steps, g.llm_flops) for g in outputs]

    def prepare(self, pyramid: Any, question: str) -> LlmInput:
        """Run everything up to the LLM and return its input (for tests and inspection)."""
        probe = MemoryProbe(self.model.device)
        with torch.inference_mode():
            _, built = self._build(pyramid, question, probe)
        return _input_of(built)

    def plan(
        self, pyramid_or_size_wh: Any, question: str, *, question_id: str | None = None
    ) -> AnswerRecord:
        """Count tiles, tokens and FLOPs of a question without running any model (a dry run).

        The same loop as :meth:`answer` with a :class:`~lrs_core.focus.executor.CountingExecutor`.
        Exact for ``thumbnail``, ``grid-N``, ``full`` on a cold feature cache; ``fastv``/``pdrop``
        add the schedule's per-layer lengths. For ``focus`` presets the zoom tiles depend on the
        RFM, so the plan is an upper bound: every tile of each reachable level, capped by
        ``tiles_cap`` and the budget (``preset_params["run"]["plan"]`` says so). Decode steps are
        ``max_new_tokens``.

        Args:
            pyramid_or_size_wh: an opened pyramid, or a scene size ``(width, height)`` in pixels.
            question: the question text (its token count matters).
            question_id: id for the record.
        """
        scene, width, height = _scene_of(pyramid_or_size_wh)
        state = self._state(question, width, height)
        view = view_for(self.view_context, dry_run=True)
        pyramid = None if isinstance(pyramid_or_size_wh, (tuple, list)) else pyramid_or_size_wh
        built = run_view(view, self.counter, state, pyramid)
        generated = self.counter.generate(state, built.llm_view, None, view.layer_drop())
        outcome = QuestionOutcome(
            scene=scene,
            question_id=question_id or question_id_of(question),
            state=state,
            llm_view=built.llm_view,
            generated=generated,
            planned=True,
        )
        return build_record(self.record_source, outcome)


def _input_of(built: BuiltView) -> LlmInput:
    if built.llm_input is None:
        raise ValueError("the model executor built no LLM input")
    return built.llm_input
