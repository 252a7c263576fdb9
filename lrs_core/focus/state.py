"""State, seams and small helpers of the coarse-to-fine engine (:mod:`lrs_core.focus.engine`).

The scorer seam (:class:`TokenScorer`, :class:`ScoreRequest`, the RFM as :class:`RfmScorer`), the
loop state passed explicitly from stage to stage (:class:`FocusState`, :class:`ScoredLevel`), the
LLM input (:class:`LlmInput`), what the LLM produced (:class:`Generated`), and the level helpers
of the views (:mod:`lrs_core.focus.views`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import psutil
import torch

from lrs_core.dip.plan import DipConfig, DipLevel, DipPlan, resized_hw, unpadded_token_grid_hw
from lrs_core.focus.rfm import RfmConfig
from lrs_core.focus.sequence import LevelSequence
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.loaded import LoadedModel
from lrs_core.models.prompt import PromptIds

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
TileRc = tuple[int, int]
#: Stages timed in ``Accounting.seconds`` (``total`` is added).
STAGES = ("read", "vision", "rfm", "llm")


# -- the scorer seam ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScoreRequest:
    """One RFM pass: a level's sequence and the keys to score (batch of one question).

    Attributes:
        level: the DIP level being scored.
        key_grid_rc: int64 (K, 2) token (row, col) of each key; newline keys have col ``Wt``.
        key_is_newline: bool (K,).
        key_valid: bool (K,); False for placeholders (they must score 0).
        inputs_embeds: float (1, L, D).
        position_ids: int64 (1, L).
        attention_mask: int64 (1, L); 0 for placeholders.
        query_positions: int64 (1, 1); the last prompt token.
        key_positions: int64 (1, K).
        question: the question text.
    """

    level: DipLevel
    key_grid_rc: npt.NDArray[np.int64]
    key_is_newline: BoolArray
    key_valid: BoolArray
    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    query_positions: torch.Tensor
    key_positions: torch.Tensor
    question: str


class TokenScorer(Protocol):
    """Scores the keys of a :class:`ScoreRequest`: float32 (K,), 0 at invalid keys."""

    def __call__(self, request: ScoreRequest) -> FloatArray:
        """Return float32 (K,) scores."""
        ...


class RfmScorer:
    """The Region Focus Module as a :class:`TokenScorer` (spec §3)."""

    def __init__(self, loaded: LoadedModel, *, config: RfmConfig | None = None) -> None:
        self.model = loaded.model
        self.family = loaded.family
        self.config = config or RfmConfig()

    def __call__(self, request: ScoreRequest) -> FloatArray:
        """Return the RFM probabilities of the request's keys, float32 (K,)."""
        scores = self.family.score_rfm(
            request.inputs_embeds,
            position_ids=request.position_ids,
            attention_mask=request.attention_mask,
            query_positions=request.query_positions,
            key_positions=request.key_positions,
            # under the placeholder quirk, placeholders join the softmax via attention_mask
            key_mask=(
                torch.from_numpy(request.key_valid)[None]
                if self.config.placeholder_logit_bias is None
                else None
            ),
            placeholder_logit_bias=self.config.placeholder_logit_bias,
        )
        return scores[0].float().cpu().numpy()


# -- loop state --------------------------------------------------------------------------------


@dataclass
class ScoredLevel:
    """One level the loop visited: its encoded tiles and the RFM scores of their tokens.

    Attributes:
        level: the DIP level.
        tiles_rc: encoded tiles, row-major.
        valid: bool (Ht, Wt); tokens of the encoded tiles.
        token_scores: float32 (Ht, Wt); RFM probabilities (0 where not scored).
        newline_scores: float32 (Ht,); newline probabilities (0 unless newlines are keys).
        scored: whether the RFM ran on it.
    """

    level: DipLevel
    tiles_rc: list[TileRc]
    valid: BoolArray
    token_scores: FloatArray
    newline_scores: FloatArray
    scored: bool = False


@dataclass
class FocusState:
    """Everything one question's loop carries from stage to stage (passed explicitly).

    Attributes:
        question: the question text.
        prompt: its token ids around the image.
        plan: the scene's DIP.
        allowance: vision tokens the LLM may receive (thumbnail + separator included).
        visited: levels visited, coarse to fine.
        tile_feats: float (n, 144, D) features of the current level's tiles (aligned with
            ``visited[-1].tiles_rc``).
        tiles_encoded: vision-tower tile passes run (thumbnail included).
        tiles_cached: tiles served by the feature cache.
        rfm_tokens: RFM sequence length of each pass.
        stop_reason: why zooming stopped.
        seconds: wall time per stage.
    """

    question: str
    prompt: PromptIds
    plan: DipPlan
    allowance: int
    visited: list[ScoredLevel] = field(default_factory=list)
    tile_feats: torch.Tensor | None = None
    tiles_encoded: int = 0
    tiles_cached: int = 0
    rfm_tokens: list[int] = field(default_factory=list)
    stop_reason: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


@dataclass(frozen=True, eq=False)
class LlmInput:
    """The sequence the LLM gets and what it is made of.

    Attributes:
        sequence: the kept slots (layout + full-sequence positions).
        inputs_embeds: float (1, L, D).
        position_ids: int64 (1, L) in the configured position mode.
        level: the DIP level of the level tokens (None for thumbnail only).
    """

    sequence: LevelSequence
    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    level: DipLevel | None

    @property
    def n_text(self) -> int:
        """Text tokens (separator excluded)."""
        return int((self.sequence.layout.kind == TokenKind.TEXT.value).sum())

    @property
    def n_vision(self) -> int:
        """Vision tokens: thumbnail, separator, level tokens and newlines."""
        return self.sequence.length - self.n_text


class MemoryProbe:
    """Peak memory of a question: CUDA ``max_memory_allocated``, else sampled RSS growth."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.process = psutil.Process()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start = self.process.memory_info().rss
        self.peak = self.start

    def sample(self) -> None:
        """Record the current resident memory."""
        self.peak = max(self.peak, self.process.memory_info().rss)

    def peak_bytes(self) -> int:
        """Peak bytes: CUDA peak allocation, else peak sampled RSS minus the RSS at the start."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        self.sample()
        return int(self.peak - self.start)


def question_id_of(text: str) -> str:
    """A stable id for a question without one: ``q-`` + 12 hex digits of its SHA-256."""
    return "q-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def grid_level(image_hw: tuple[int, int], n: int, *, config: DipConfig) -> DipLevel:
    """The ``grid-N`` view: the scene resized so its long side is N tiles, fill-to-grid (§1.3)."""
    tile = config.tile_size_px
    ratio = n * tile / max(image_hw)
    resize = resized_hw(image_hw[0], image_hw[1], ratio, tile_size_px=tile)
    grid_h, grid_w = -(-resize[0] // tile), -(-resize[1] // tile)
    canvas = (grid_h * config.tokens_per_tile_side, grid_w * config.tokens_per_tile_side)
    return DipLevel(
        dip_level=1,
        ratio=ratio,
        image_hw=image_hw,
        resize_hw=resize,
        token_grid_hw=unpadded_token_grid_hw(canvas, resize),
        tile_size_px=tile,
        tokens_per_tile_side=config.tokens_per_tile_side,
    )


def all_tiles(level: DipLevel) -> list[TileRc]:
    """Every tile of a level, row-major."""
    rows, cols = level.grid_hw
    return [(r, c) for r in range(rows) for c in range(cols)]


def level_view_tokens(level: DipLevel) -> int:
    """Slots of a whole level in a sequence: separator + ``Ht * (Wt + 1)`` (newlines included)."""
    return 1 + level.n_tokens


@dataclass(frozen=True, kw_only=True)
class Generated:
    """What the LLM produced for one question (or, counted, would at most).

    Attributes:
        answer: the decoded text ("" when only counted).
        decode_steps: generated tokens (``max_new_tokens`` when only counted).
        llm_flops: LLM FLOPs of the prefill and the decode steps.
        extra: fields added to ``preset_params["run"]`` (a layer-drop schedule's lengths...).
    """

    answer: str
    decode_steps: int
    llm_flops: float
    extra: dict[str, Any] = field(default_factory=dict)
