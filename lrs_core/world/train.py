"""``lrs world train``: train the world model on CPU from scratch, in two stages.

The recipe (measured in issue 13, and what ``docs/world.md`` reports):

1. **Dense auxiliary targets for the vision tower.** The tower and projector learn, per patch
   (12 x 12 per tile) and per pooled token (6 x 6), the object kind, its colour, the background and
   whether a wake is present, from labels the world knows exactly
   (:func:`lrs_core.world.views.cell_labels`). Tiles are the engine's own: the thumbnail and every
   level of the scene's DIP, read with :func:`lrs_core.tiles.read_tiles`.
2. **Answers with the tower frozen.** The LLM (and the image-newline vector) learns the answer
   tokens from the sequences the engine feeds it: ``[text | thumbnail | ':' | level tokens | text]``
   built by :func:`lrs_core.focus_sequence.build_level_sequence` and pruned by
   :func:`lrs_core.focus_select.prune_tokens`, as three views: the thumbnail alone, a whole level
   (``grid``/``full``), and a zoomed level whose tiles hold the evidence (what ``default`` reaches
   when its RFM finds the object), keeping 25 % of their tokens.

Both stages follow a curriculum from large to small objects (``object_scale`` from
``start_object_scale`` down to 1 over the first ``curriculum_share`` of the stage) and have their
own learning rates. Training scenes are drawn from seeds ``SeedSequence([seed, 7, n])`` and the
held-out ones from ``SeedSequence([seed, 9, n])``; neither stream meets the scenes of
``lrs world make`` (``SeedSequence([S, i])``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lrs_core.dip.plan import DipConfig, DipLevel, DipPlan, plan_pyramid
from lrs_core.errors import ConfigError
from lrs_core.evaluation.lrs_vqa import CATEGORIES, LrsVqaQuestion
from lrs_core.focus.select import prune_tokens, valid_token_mask
from lrs_core.focus.sequence import LevelSequence, build_level_sequence, embed_sequence
from lrs_core.focus.state import all_tiles
from lrs_core.focus.tiles import read_thumbnail, read_tiles
from lrs_core.models.attention_rows import attention_rows_from_hidden
from lrs_core.models.generation import generate_from_embeds
from lrs_core.models.layout import TokenKind
from lrs_core.models.loading.project import save_model
from lrs_core.models.prompt import tokenize_prompt
from lrs_core.models.vlm import VisionLanguageModel
from lrs_core.world.generate import WorldScene, generate_scene
from lrs_core.world.make import world_questions
from lrs_core.world.model import WorldModelSize, build_world_model
from lrs_core.world.render import render_scene
from lrs_core.world.views import (
    IGNORE_LABEL,
    ArrayPyramid,
    CellLabels,
    boxes_overlap,
    thumbnail_labels,
    tile_labels,
    token_boxes,
)
from lrs_core.world.vocabulary import BACKGROUNDS, COLOR_NAMES, KIND_NAMES, KINDS

log = logging.getLogger(__name__)

#: Seed-stream tags of training and held-out scenes (see the module docstring).
TRAIN_STREAM = 7
HELDOUT_STREAM = 9
#: Views of the answering stage and how often each is drawn.
VIEW_WEIGHTS: dict[str, float] = {"thumbnail": 0.15, "level": 0.15, "focus": 0.7}
#: Most level tokens of a whole-level ("level") training view.
MAX_LEVEL_VIEW_TOKENS = 700
#: Kept share of the zoomed tiles' tokens (the engine's default ``keep_ratio``).
FOCUS_KEEP_RATIO = 0.25
#: Most evidence tiles and distractor tiles of a zoomed view.
MAX_EVIDENCE_TILES = 12
MAX_DISTRACTOR_TILES = 3
#: Weight of the "no object" class in the per-cell losses (objects are rare).
NO_OBJECT_WEIGHT = 0.2
#: Share of a stage-1 step's tiles that hold an object (exact, so tile counts are floors).
STAGE1_OBJECT_SHARE = Fraction(2, 3)
#: Long side under which an asked object counts as small (the issue's 32 px).
SMALL_OBJECT_PX = 32
#: Answer tokens generated at evaluation.
EVAL_MAX_NEW_TOKENS = 4
#: Share of a stage spent warming the learning rate up, and the floor of its cosine decay.
WARMUP_SHARE = 0.03
MIN_LR_FACTOR = 0.1
#: Weight of the evidence-attention loss of the answering stage (see :func:`_attention_loss`).
ATTENTION_LOSS_WEIGHT = 0.5
#: Floor inside the log of the evidence-attention loss.
ATTENTION_LOSS_EPS = 1e-6
#: World seed of the distillation data: ``seed + DISTILL_SEED_OFFSET`` (away from benchmark seeds).
DISTILL_SEED_OFFSET = 50_000


@dataclass(frozen=True, kw_only=True)
class WorldTrainConfig:
    """Settings of :func:`train_world`.

    Attributes:
        seed: seeds the weights, the scene streams and the data order.
        minutes: wall-clock budget of both stages together (evaluation excluded).
        stage1_share: share of ``minutes`` spent on the tower's auxiliary targets.
        scene_px: (min, max) side of training scenes, level-0 pixels (log-uniform).
        tile_batch: tiles per stage-1 step.
        question_batch: questions per stage-2 step.
        tower_lr: AdamW learning rate of the tower, projector and auxiliary heads.
        llm_lr: AdamW learning rate of the LLM and the image-newline vector.
        attention_weight: weight of the evidence-attention loss of the answering stage (0: off).
        start_object_scale: object size multiplier at the start of each stage's curriculum.
        curriculum_share: share of each stage over which the multiplier falls to 1.
        eval_scenes: held-out scenes of the final evaluation.
        eval_scene_px: side of the held-out scenes, level-0 pixels.
        threads: torch intra-op threads while training (None: leave as is).
        categories: question categories trained and evaluated (empty: all eight).
        stage1_steps: end stage 1 after this many steps instead of at its time share (tests use
            step budgets, which do not depend on the machine's load).
        stage2_steps: the same for stage 2.
        size: the model's widths and depths.
    """

    seed: int = 0
    minutes: float = 30.0
    stage1_share: float = 0.4
    scene_px: tuple[int, int] = (672, 2560)
    tile_batch: int = 12
    question_batch: int = 4
    tower_lr: float = 2e-3
    llm_lr: float = 2e-3
    attention_weight: float = ATTENTION_LOSS_WEIGHT
    start_object_scale: float = 2.5
    curriculum_share: float = 0.3
    eval_scenes: int = 4
    eval_scene_px: int = 2048
    threads: int | None = None
    categories: tuple[str, ...] = ()
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    size: WorldModelSize = field(default_factory=WorldModelSize)

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f"minutes={self.minutes} must be > 0")
        if not 0 < self.stage1_share < 1:
            raise ConfigError(f"stage1_share={self.stage1_share} must be in (0, 1)")
        low, high = self.scene_px
        if not 256 <= low <= high <= 16_384:
            raise ConfigError(f"scene_px={self.scene_px} must satisfy 256 <= min <= max <= 16384")
        for name in ("tile_batch", "question_batch", "eval_scenes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        unknown = set(self.categories) - set(CATEGORIES)
        if unknown:
            raise ConfigError(
                f"categories {sorted(unknown)} are not LRS-VQA categories {CATEGORIES}"
            )
        for name in ("stage1_steps", "stage2_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be >= 1 (or None for the time budget)")
        if self.start_object_scale < 1:
            raise ConfigError(f"start_object_scale={self.start_object_scale} must be >= 1")


@dataclass(frozen=True)
class WorldTrainResult:
    """What :func:`train_world` produced.

    Attributes:
        model_dir: the trained model (project format).
        metrics: the final held-out evaluation (accuracy per view and category, priors).
    """

    model_dir: Path
    metrics: dict[str, Any]


class AuxHeads(nn.Module):
    """Linear per-token classifiers of kind, colour, background and wake (stage 1 only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.kind = nn.Linear(width, len(KIND_NAMES) + 1)
        self.color = nn.Linear(width, len(COLOR_NAMES) + 1)
        self.background = nn.Linear(width, len(BACKGROUNDS))
        self.wake = nn.Linear(width, 2)

    def loss(self, tokens: torch.Tensor, labels: list[CellLabels]) -> dict[str, torch.Tensor]:
        """Per-head cross-entropy of tokens (n, G*G, D) against per-cell labels (row-major)."""
        out: dict[str, torch.Tensor] = {}
        for name in ("kind", "color", "background", "wake"):
            target = torch.from_numpy(np.stack([getattr(lab, name) for lab in labels]))
            target = target.reshape(target.shape[0], -1)
            logits = getattr(self, name)(tokens)
            n_classes = logits.shape[-1]
            weight = torch.ones(n_classes)
            if name != "background":
                weight[0] = NO_OBJECT_WEIGHT
            out[name] = nn.functional.cross_entropy(
                logits.reshape(-1, n_classes),
                target.reshape(-1),
                weight=weight,
                ignore_index=IGNORE_LABEL,
            )
        return out


def scene_stream_seed(seed: int, stream: int, index: int) -> int:
    """Seed of scene ``index`` of a stream (:data:`TRAIN_STREAM` or :data:`HELDOUT_STREAM`)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0] >> 1)


def lr_factor(progress: float) -> float:
    """Learning-rate multiplier after ``progress`` (0..1) of a stage: warm-up, then cosine."""
    if progress < WARMUP_SHARE:
        return max(progress / WARMUP_SHARE, 0.05)
    rest = (progress - WARMUP_SHARE) / (1 - WARMUP_SHARE)
    return MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * min(rest, 1.0)))


def curriculum_scale(config: WorldTrainConfig, progress: float) -> float:
    """Object size multiplier after ``progress`` (0..1) of a stage."""
    share = min(1.0, progress / config.curriculum_share)
    return config.start_object_scale + (1.0 - config.start_object_scale) * share


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class SceneViews:
    """One rendered scene with its DIP, tile reader and cached frozen features."""

    scene: WorldScene
    pyramid: ArrayPyramid
    plan: DipPlan
    thumb_feats: torch.Tensor | None = None
    tile_feats: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)


def dip_config_of(model: VisionLanguageModel) -> DipConfig:
    """The engine's DIP config for a model (default pyramid rule)."""
    vlm = model.config
    return DipConfig.preset(
        "default",
        tile_size_px=vlm.tile_size_px,
        patch_size_px=vlm.patch_size_px,
        tokens_per_tile_side=vlm.pooled_per_side,
    )


def _draw_scene(
    config: WorldTrainConfig, rng: np.random.Generator, seed: int, scale: float
) -> WorldScene:
    low, high = config.scene_px
    width = int(math.exp(rng.uniform(math.log(low), math.log(high))))
    height = int(math.exp(rng.uniform(math.log(low), math.log(high))))
    return generate_scene(seed, size_wh=(width, height), object_scale=scale)


def _views_of(scene: WorldScene, dip: DipConfig) -> SceneViews:
    width, height = scene.size_wh
    return SceneViews(
        scene=scene,
        pyramid=ArrayPyramid(render_scene(scene)),
        plan=plan_pyramid(width, height, config=dip),
    )


# -- stage 1 -----------------------------------------------------------------------------------


def _pool_tokens(model: VisionLanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    """(n, P*P, D) -> (n, (P/s)^2, D): the engine's average pooling after the projector."""
    n_tiles, _, width = tokens.shape
    side = model.config.patches_per_side
    grid = tokens.reshape(n_tiles, side, side, width).permute(0, 3, 1, 2)
    stride = model.config.pool_stride
    pooled = nn.functional.avg_pool2d(grid, kernel_size=stride, stride=stride)
    return pooled.flatten(2).transpose(1, 2)


def _stage1_items(
    views: SceneViews,
    rng: np.random.Generator,
    n: int,
    *,
    object_share: Fraction = STAGE1_OBJECT_SHARE,
) -> list[tuple[DipLevel | None, tuple[int, int]]]:
    """Up to ``n`` tiles of a scene (None level = thumbnail), ``object_share`` with objects."""
    items: list[tuple[DipLevel | None, tuple[int, int]]] = [(None, (0, 0))]
    with_objects: list[tuple[DipLevel | None, tuple[int, int]]] = []
    empty: list[tuple[DipLevel | None, tuple[int, int]]] = []
    centres = [o.center_xy for o in views.scene.objects]
    for k in range(1, views.plan.n_levels + 1):
        level = views.plan.level(k)
        for tile in all_tiles(level):
            x0, y0, x1, y1 = level.tile_bbox_px(tile)
            hit = any(x0 <= cx < x1 and y0 <= cy < y1 for cx, cy in centres)
            (with_objects if hit else empty).append((level, tile))
    rng.shuffle(with_objects)
    rng.shuffle(empty)
    n_obj = min(len(with_objects), int(n * object_share))
    items += with_objects[:n_obj] + empty[: max(0, n - 1 - n_obj)]
    return items[:n]


def _stage1_step(
    model: VisionLanguageModel,
    heads: AuxHeads,
    views: SceneViews,
    items: list[tuple[DipLevel | None, tuple[int, int]]],
) -> dict[str, torch.Tensor]:
    pixels, patch_labels, token_labels = [], [], []
    patch_side = model.config.patches_per_side
    token_side = model.config.pooled_per_side
    for level, tile in items:
        if level is None:
            pixels.append(read_thumbnail(views.pyramid, views.plan.thumbnail))
            patch_labels.append(
                thumbnail_labels(views.scene, views.plan.thumbnail, grid_side=patch_side)
            )
            token_labels.append(
                thumbnail_labels(views.scene, views.plan.thumbnail, grid_side=token_side)
            )
        else:
            pixels.append(read_tiles(views.pyramid, level, [tile])[0])
            patch_labels.append(tile_labels(views.scene, level, tile, grid_side=patch_side))
            token_labels.append(tile_labels(views.scene, level, tile, grid_side=token_side))
    tokens = model.encode_tiles(model.preprocess_tiles(np.stack(pixels)), pooled=False)
    losses = heads.loss(tokens, patch_labels)
    pooled = heads.loss(_pool_tokens(model, tokens), token_labels)
    return {name: losses[name] + pooled[name] for name in losses}


# -- stage 2 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceKeys:
    """Where a view's level tokens sit and which of them show the evidence.

    Attributes:
        positions: int64 (K,); sequence indices of the level tokens (the RFM's keys).
        evidence: bool (K,); True for tokens whose box overlaps an evidence box.
    """

    positions: torch.Tensor
    evidence: torch.Tensor


@dataclass(frozen=True)
class View:
    """One question in one view: the engine's LLM input embeddings and its evidence keys.

    Attributes:
        embeds: float (L, D); the LLM's input, ending with the last prompt token.
        keys: the level tokens and the evidence among them; None for a thumbnail-only view or
            when no level token shows evidence.
    """

    embeds: torch.Tensor
    keys: EvidenceKeys | None


@dataclass(frozen=True)
class Sample:
    """One answering sample: a view and the answer's token ids."""

    view: View
    answer_ids: list[int]


def _thumb_feats(model: VisionLanguageModel, views: SceneViews) -> torch.Tensor:
    if views.thumb_feats is None:
        pixels = read_thumbnail(views.pyramid, views.plan.thumbnail)
        with torch.no_grad():
            views.thumb_feats = model.encode_tiles(
                model.preprocess_tiles(pixels[None]), pooled=False
            )[0]
    return views.thumb_feats


def _tile_feats(
    model: VisionLanguageModel, views: SceneViews, level: DipLevel, tiles: list[tuple[int, int]]
) -> torch.Tensor:
    missing = [t for t in tiles if (level.dip_level, *t) not in views.tile_feats]
    if missing:
        pixels = read_tiles(views.pyramid, level, missing)
        with torch.no_grad():
            feats = model.encode_tiles(model.preprocess_tiles(pixels), pooled=True)
        for tile, feat in zip(missing, feats, strict=True):
            views.tile_feats[(level.dip_level, *tile)] = feat
    return torch.stack([views.tile_feats[(level.dip_level, *t)] for t in tiles])


def evidence_boxes(
    question: LrsVqaQuestion, scene: WorldScene
) -> list[tuple[float, float, float, float]]:
    """Level-0 boxes a question's answer depends on (every object of the kind for counts)."""
    if question.hbox is not None:
        return [question.hbox]
    text = question.text.split("\n")[0]
    for kind in KINDS:
        if f" {kind.plural} " in f" {text} ":
            return [o.hbox for o in scene.objects if o.kind == kind.name]
    return []


def build_view(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    views: SceneViews,
    question: LrsVqaQuestion,
    *,
    view: str,
    rng: np.random.Generator,
    separator_id: int,
) -> View:
    """The engine's LLM input for one question in one view, with its evidence keys.

    ``thumbnail``: the thumbnail alone. ``level``: a whole level (a coarse one that fits
    :data:`MAX_LEVEL_VIEW_TOKENS`). ``focus``: the finest level (sometimes another), the tiles
    holding the evidence plus a few others, pruned to :data:`FOCUS_KEEP_RATIO` with the evidence
    tokens ranked first, as a well-trained RFM would.
    """
    prompt = tokenize_prompt(tokenizer, question.text, template=model.config.chat_template)
    thumb = _thumb_feats(model, views)
    n_thumb = thumb.shape[0]
    plan = views.plan
    if view == "thumbnail":
        sequence = build_level_sequence(
            prompt, thumbnail_tokens=n_thumb, separator_id=separator_id, level=None
        )
        embeds = embed_sequence(
            model, sequence, thumbnail_feats=thumb, level=None, tiles_rc=[], tile_feats=None
        )
        return View(embeds=embeds, keys=None)
    boxes = evidence_boxes(question, views.scene)
    if view == "level":
        fitting = [
            plan.level(k)
            for k in range(1, plan.n_levels + 1)
            if math.prod(plan.level(k).token_grid_hw) <= MAX_LEVEL_VIEW_TOKENS
        ]
        level = fitting[int(rng.integers(len(fitting)))]
        tiles = all_tiles(level)
        sequence = build_level_sequence(
            prompt, thumbnail_tokens=n_thumb, separator_id=separator_id, level=level
        )
    else:
        k = plan.n_levels if rng.random() < 0.75 else int(rng.integers(1, plan.n_levels + 1))
        level = plan.level(k)
        tiles, sequence = _focus_sequence(level, boxes, rng, prompt, n_thumb, separator_id)
    embeds = embed_sequence(
        model,
        sequence,
        thumbnail_feats=thumb,
        level=level,
        tiles_rc=tiles,
        tile_feats=_tile_feats(model, views, level, tiles),
    )
    return View(embeds=embeds, keys=evidence_keys(sequence, level, boxes))


def evidence_keys(
    sequence: LevelSequence, level: DipLevel, boxes: list[tuple[float, float, float, float]]
) -> EvidenceKeys | None:
    """The level tokens of ``sequence`` and which overlap ``boxes`` (None when none does)."""
    layout = sequence.layout
    positions = layout.positions_of(TokenKind.LEVEL)
    token_box = token_boxes(level)[layout.grid_r[positions], layout.grid_c[positions]]
    evidence = np.zeros(len(positions), dtype=bool)
    for box in boxes:
        evidence |= boxes_overlap(token_box, box)
    if not evidence.any():
        return None
    return EvidenceKeys(torch.from_numpy(positions), torch.from_numpy(evidence))


def _focus_sequence(
    level: DipLevel,
    boxes: list[tuple[float, float, float, float]],
    rng: np.random.Generator,
    prompt: Any,
    n_thumb: int,
    separator_id: int,
) -> tuple[list[tuple[int, int]], LevelSequence]:
    every = all_tiles(level)
    hit = [t for t in every if any(_tile_hits(level, t, box) for box in boxes)]
    if len(hit) > MAX_EVIDENCE_TILES:
        keep = rng.choice(len(hit), size=MAX_EVIDENCE_TILES, replace=False)
        hit = [hit[int(i)] for i in sorted(keep)]
    others = [t for t in every if t not in hit]
    n_extra = int(rng.integers(0 if hit else 1, MAX_DISTRACTOR_TILES + 1))
    n_extra = min(n_extra, len(others))
    extra = [others[int(i)] for i in rng.choice(len(others), size=n_extra, replace=False)]
    tiles = sorted(hit + extra)
    valid = valid_token_mask(level, tiles)
    token_box = token_boxes(level)
    scores = rng.uniform(0.0, 0.5, size=valid.shape).astype(np.float32)
    for box in boxes:
        scores[boxes_overlap(token_box, box)] += 1.0
    pruned = prune_tokens(
        scores,
        None,
        valid,
        keep_ratio=FOCUS_KEEP_RATIO,
        newlines_in_ratio=False,
        keep_all_newlines=False,
        allowance=None,
    )
    sequence = build_level_sequence(
        prompt,
        thumbnail_tokens=n_thumb,
        separator_id=separator_id,
        level=level,
        include=pruned.keep,
        newline_rows=pruned.newline_rows,
    )
    return tiles, sequence


def _tile_hits(level: DipLevel, tile: tuple[int, int], box: tuple[float, ...]) -> bool:
    x0, y0, x1, y1 = level.tile_bbox_px(tile)
    return box[0] < x1 and box[2] > x0 and box[1] < y1 and box[3] > y0


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """Token ids of an answer as the assistant says it: `` {answer}`` then EOS."""
    ids = tokenizer(" " + answer, add_special_tokens=False).input_ids
    return [*ids, int(tokenizer.eos_token_id)]


def _lm_loss(
    model: VisionLanguageModel, samples: list[Sample], *, attention_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-entropy of the answer tokens, and the evidence-attention loss.

    Rows are right-padded with compact positions. The attention loss is
    :func:`_attention_loss` over the samples with evidence keys (0 when none has, or when
    ``attention_weight`` is 0).

    Returns:
        (answer loss, attention loss), scalars.
    """
    lengths = [s.view.embeds.shape[0] + len(s.answer_ids) for s in samples]
    longest = max(lengths)
    labels = torch.full((len(samples), longest), IGNORE_LABEL, dtype=torch.long)
    mask = torch.zeros(len(samples), longest, dtype=torch.long)
    rows = []
    for row, sample in enumerate(samples):
        n_prompt = sample.view.embeds.shape[0]
        ids = torch.tensor(sample.answer_ids)
        full = torch.cat([sample.view.embeds, model.embed_text(ids)])
        rows.append(nn.functional.pad(full, (0, 0, 0, longest - full.shape[0])))
        labels[row, n_prompt : n_prompt + len(sample.answer_ids)] = ids
        mask[row, : lengths[row]] = 1
    embeds = torch.stack(rows)
    positions = torch.arange(longest).expand(len(samples), -1)
    supervised = attention_weight > 0 and any(s.view.keys is not None for s in samples)
    out = model.llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        labels=labels,
        output_hidden_states=supervised,
    )
    answer_loss: torch.Tensor = out.loss
    if not supervised:
        return answer_loss, torch.zeros(())
    return answer_loss, _attention_loss(model, samples, out.hidden_states, positions, mask)


def _attention_loss(
    model: VisionLanguageModel,
    samples: list[Sample],
    hidden_states: tuple[torch.Tensor, ...],
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean of ``-log`` (attention mass on evidence tokens) at the RFM's scoring layer.

    The row is the one the RFM scores with (spec §3): the last prompt token's attention over
    the level tokens, heads averaged, softmax over those keys only, at LLM layer
    ``rfm_llm_layers[-1]``. Pulling that mass onto the tokens that show the asked object makes
    the LLM a teacher whose attention means something, for the RFM copied from it and for
    ``train-rfm``'s distillation.
    """
    layer_index = model.config.rfm_llm_layers[-1]
    rows = [i for i, s in enumerate(samples) if s.view.keys is not None]
    keys = [samples[i].view.keys for i in rows]
    assert all(k is not None for k in keys)  # for mypy: filtered above
    width = max(k.positions.shape[0] for k in keys if k is not None)
    key_positions = torch.zeros(len(rows), width, dtype=torch.long)
    key_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    evidence = torch.zeros(len(rows), width, dtype=torch.bool)
    for j, k in enumerate(keys):
        assert k is not None
        n = k.positions.shape[0]
        key_positions[j, :n] = k.positions
        key_mask[j, :n] = True
        evidence[j, :n] = k.evidence
    query = torch.tensor([[samples[i].view.embeds.shape[0] - 1] for i in rows])
    llm_body = model.llm.model
    attention = attention_rows_from_hidden(
        llm_body.layers[layer_index],
        hidden_states[layer_index][rows],
        position_ids=positions[rows],
        rotary_emb=llm_body.rotary_emb,
        query_positions=query,
        key_positions=key_positions,
        key_mask=key_mask,
        sequence_mask=mask[rows].to(torch.bool),
    ).mean[:, 0]
    on_evidence = (attention * evidence).sum(-1)
    return -torch.log(on_evidence + ATTENTION_LOSS_EPS).mean()


def separator_id_of(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The separator token's id, as :class:`lrs_core.focus.engine.FocusEngine` finds it."""
    token = model.config.separator_token
    found: Any = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id:
        found = tokenizer(token, add_special_tokens=False).input_ids[-1]
    return int(found)


# -- evaluation --------------------------------------------------------------------------------


def evaluate_cells(
    model: VisionLanguageModel, heads: AuxHeads, scenes: list[SceneViews], *, max_tiles: int = 48
) -> dict[str, float]:
    """Held-out per-cell accuracy of the auxiliary heads on pooled tokens (the LLM's tokens).

    ``kind``/``color`` are measured on cells holding an object, ``background`` on every cell.
    """
    rng = np.random.default_rng(0)
    hits: dict[str, list[bool]] = defaultdict(list)
    with torch.no_grad():
        for views in scenes:
            items = _stage1_items(views, rng, max_tiles // len(scenes))
            token_side = model.config.pooled_per_side
            for level, tile in items:
                if level is None:
                    pixels = read_thumbnail(views.pyramid, views.plan.thumbnail)
                    labels = thumbnail_labels(
                        views.scene, views.plan.thumbnail, grid_side=token_side
                    )
                else:
                    pixels = read_tiles(views.pyramid, level, [tile])[0]
                    labels = tile_labels(views.scene, level, tile, grid_side=token_side)
                tokens = model.encode_tiles(model.preprocess_tiles(pixels[None]), pooled=True)[0]
                has_object = labels.kind.reshape(-1) > 0
                inside = labels.background.reshape(-1) != IGNORE_LABEL
                for name in ("kind", "color", "background"):
                    predicted = getattr(heads, name)(tokens).argmax(-1).numpy()
                    target = getattr(labels, name).reshape(-1)
                    mask = inside if name == "background" else has_object
                    hits[name].extend((predicted[mask] == target[mask]).tolist())
    return {name: round(float(np.mean(v)), 4) for name, v in hits.items() if v}


def evaluate(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    scenes: list[SceneViews],
    *,
    views: tuple[str, ...] = ("focus", "thumbnail"),
    seed: int = 0,
    categories: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Held-out accuracy per view (overall, per category, small objects) and the answer prior.

    The ``focus`` view is the oracle zoom (evidence tiles kept), i.e. what the engine's ``default``
    reaches when its RFM finds the object; the ``thumbnail`` view is the ``thumbnail`` baseline.
    """
    separator_id = separator_id_of(model, tokenizer)
    pad = int(tokenizer.pad_token_id)
    results: dict[str, Any] = {}
    all_answers: dict[str, Counter[str]] = defaultdict(Counter)
    for view in views:
        rng = np.random.default_rng([seed, 3])
        right: dict[str, list[bool]] = defaultdict(list)
        for index, scene_views in enumerate(scenes):
            questions = world_questions(
                scene_views.scene,
                image="",
                rng=np.random.default_rng([seed, index]),
                next_id=lambda: "WORLD_0",
            )
            for question in questions:
                if categories and question.category not in categories:
                    continue
                with torch.no_grad():
                    embeds = build_view(
                        model,
                        tokenizer,
                        scene_views,
                        question,
                        view=view,
                        rng=rng,
                        separator_id=separator_id,
                    ).embeds
                    generation = generate_from_embeds(
                        model.llm,
                        embeds[None],
                        position_ids=torch.arange(embeds.shape[0])[None],
                        max_new_tokens=EVAL_MAX_NEW_TOKENS,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=pad,
                    )
                answer = str(tokenizer.decode(generation.token_ids[0], skip_special_tokens=True))
                ok = answer.strip().lower() == question.ground_truth
                right[question.category].append(ok)
                right["overall"].append(ok)
                if question.hbox is not None:
                    x0, y0, x1, y1 = question.hbox
                    if max(x1 - x0, y1 - y0) < SMALL_OBJECT_PX:
                        right["small objects"].append(ok)
                if view == views[0]:
                    all_answers[question.category][question.ground_truth] += 1
        results[view] = {k: round(float(np.mean(v)), 4) for k, v in sorted(right.items())}
        results[view]["n"] = len(right["overall"])
    prior = {c: max(v.values()) / sum(v.values()) for c, v in all_answers.items()}
    total = sum(sum(v.values()) for v in all_answers.values())
    prior["overall"] = sum(max(v.values()) for v in all_answers.values()) / max(total, 1)
    results["answer_prior"] = {k: round(v, 4) for k, v in sorted(prior.items())}
    return results


def heldout_scenes(config: WorldTrainConfig, dip: DipConfig) -> list[SceneViews]:
    """The held-out evaluation scenes (seed stream :data:`HELDOUT_STREAM`, real object sizes)."""
    side = config.eval_scene_px
    return [
        _views_of(
            generate_scene(scene_stream_seed(config.seed, HELDOUT_STREAM, i), size_wh=(side, side)),
            dip,
        )
        for i in range(config.eval_scenes)
    ]


# -- the whole run -----------------------------------------------------------------------------


def train_world(
    out_dir: str | Path,
    *,
    config: WorldTrainConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WorldTrainResult:
    """Train the world model and save it (project format) in ``out_dir/model``.

    Writes ``out_dir/metrics.jsonl`` (one line per logged step and the evaluations) and
    ``out_dir/train_config.json``.

    Args:
        out_dir: the run folder.
        config: the settings; default :class:`WorldTrainConfig`.
        progress: called with ``(seconds_done, seconds_total)``.

    Returns:
        The model folder and the final held-out metrics.
    """
    config = config or WorldTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    metrics_file = open(out / "metrics.jsonl", "w", encoding="utf-8")  # closed below

    def record(line: dict[str, Any]) -> None:
        metrics_file.write(json.dumps(line) + "\n")
        metrics_file.flush()

    with _torch_threads(config.threads), metrics_file:
        model, tokenizer = build_world_model(seed=config.seed, size=config.size)
        model.train()
        dip = dip_config_of(model)
        eval_scenes = heldout_scenes(config, dip)
        model.eval()
        untrained = evaluate(
            model, tokenizer, eval_scenes, seed=config.seed, categories=config.categories
        )
        record({"event": "eval", "stage": "untrained", **untrained})
        log.info("untrained: %s", untrained)
        budget = config.minutes * 60.0
        start = time.perf_counter()
        scene_index = 0

        def tick() -> float:
            done = time.perf_counter() - start
            if progress is not None:
                progress(int(done), int(budget))
            return done

        # stage 1: tower + projector on dense targets
        rng = np.random.default_rng([config.seed, 11])
        with torch.random.fork_rng():  # the heads' init must not depend on the caller's RNG
            torch.manual_seed(config.seed)
            heads = AuxHeads(model.hidden_size)
        tower_params = [*model.vision_tower.parameters(), *model.projector.parameters()]
        optimiser = torch.optim.AdamW(
            [*tower_params, *heads.parameters()], lr=config.tower_lr, weight_decay=0.01
        )
        stage1_seconds = budget * config.stage1_share
        step = 0
        model.train()
        stage1_start = tick()

        def progress_1() -> float:
            if config.stage1_steps is not None:
                return step / config.stage1_steps
            return (tick() - stage1_start) / stage1_seconds

        while (done := progress_1()) < 1.0:
            scale = curriculum_scale(config, done)
            seed = scene_stream_seed(config.seed, TRAIN_STREAM, scene_index)
            scene_index += 1
            views = _views_of(_draw_scene(config, rng, seed, scale), dip)
            items = _stage1_items(views, rng, 2 * config.tile_batch)
            for group in optimiser.param_groups:
                group["lr"] = config.tower_lr * lr_factor(done)
            for chunk in (items[: config.tile_batch], items[config.tile_batch :]):
                if not chunk:
                    continue
                losses = _stage1_step(model, heads, views, chunk)
                total = sum(losses.values(), torch.zeros(()))
                optimiser.zero_grad(set_to_none=True)
                total.backward()  # type: ignore[no-untyped-call]  # untyped in torch's stubs
                nn.utils.clip_grad_norm_([*tower_params, *heads.parameters()], 1.0)
                optimiser.step()
                step += 1
                if step % 10 == 0:
                    line = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                    record(
                        {
                            "event": "stage1",
                            "step": step,
                            "t": round(done, 1),
                            "scale": scale,
                            **line,
                        }
                    )
                    log.info("stage 1 step %d t=%.0fs scale=%.2f %s", step, done, scale, line)
        stage1_done = step
        model.eval()
        cells = evaluate_cells(model, heads, eval_scenes)
        record({"event": "eval", "stage": "cells", **cells})
        log.info("held-out per-cell accuracy after stage 1: %s", cells)
        # stage 2: LLM on answers, tower frozen
        for param in tower_params:
            param.requires_grad_(False)
        llm_params = [*model.llm.parameters(), model.image_newline]
        optimiser = torch.optim.AdamW(llm_params, lr=config.llm_lr, weight_decay=0.01)
        separator_id = separator_id_of(model, tokenizer)
        stage2_seconds = budget - stage1_seconds
        view_names = list(VIEW_WEIGHTS)
        view_p = np.asarray([VIEW_WEIGHTS[v] for v in view_names])
        step = 0
        pending: list[Sample] = []
        model.vision_tower.train(False)
        model.llm.train()
        stage2_start = tick()

        def progress_2() -> float:
            if config.stage2_steps is not None:
                return step / config.stage2_steps
            return (tick() - stage2_start) / stage2_seconds

        while progress_2() < 1.0:
            scale = curriculum_scale(config, progress_2())
            seed = scene_stream_seed(config.seed, TRAIN_STREAM, scene_index)
            scene_index += 1
            views = _views_of(_draw_scene(config, rng, seed, scale), dip)
            questions = world_questions(views.scene, image="", rng=rng, next_id=lambda: "WORLD_0")
            for question in questions:
                if config.categories and question.category not in config.categories:
                    continue
                view = view_names[int(rng.choice(len(view_names), p=view_p))]
                sample_view = build_view(
                    model,
                    tokenizer,
                    views,
                    question,
                    view=view,
                    rng=rng,
                    separator_id=separator_id,
                )
                pending.append(Sample(sample_view, answer_ids(tokenizer, question.ground_truth)))
                if len(pending) < config.question_batch:
                    continue
                for group in optimiser.param_groups:
                    group["lr"] = config.llm_lr * lr_factor(progress_2())
                answer_loss, attention_loss = _lm_loss(
                    model, pending, attention_weight=config.attention_weight
                )
                loss = answer_loss + config.attention_weight * attention_loss
                optimiser.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch's stubs
                nn.utils.clip_grad_norm_(llm_params, 1.0)
                optimiser.step()
                pending = []
                step += 1
                if step % 10 == 0:
                    record(
                        {
                            "event": "stage2",
                            "step": step,
                            "t": round(tick(), 1),
                            "scale": scale,
                            "loss": round(float(answer_loss.detach()), 4),
                            "attention_loss": round(float(attention_loss.detach()), 4),
                        }
                    )
                    log.info(
                        "stage 2 step %d loss %.4f attention %.4f scale %.2f",
                        step,
                        float(answer_loss.detach()),
                        float(attention_loss.detach()),
                        scale,
                    )
                if progress_2() >= 1.0:
                    break
        model.eval()
        model.rfm.copy_from_llm(model.llm, model.config.rfm_source_layers)
        final = evaluate(
            model, tokenizer, eval_scenes, seed=config.seed, categories=config.categories
        )
        final["untrained"] = untrained
        final["cells"] = cells
        final["train_seconds"] = round(time.perf_counter() - start, 1)
        final["scenes_seen"] = scene_index
        final["stage1_steps"] = stage1_done
        final["stage2_steps"] = step
        record({"event": "eval", "stage": "final", **final})
        model_dir = save_model(
            model, tokenizer, out / "model", model_id=f"lrs-world-seed{config.seed}"
        )
    return WorldTrainResult(model_dir=model_dir, metrics=final)


def distill_world_rfm(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    steps: int,
    scenes: int = 6,
    scene_px: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Distil the RFM of a trained world model from its own LLM with ``lrs train-rfm``'s trainer.

    The data is a world written by :func:`lrs_core.world.make.make_world` under
    ``out_dir/distill_world`` (seed ``seed + DISTILL_SEED_OFFSET``), answered in multi-GSD views.

    Returns:
        The distilled model's folder (``out_dir/distill/model``).
    """
    from lrs_core.distill import DistillConfig, train_rfm
    from lrs_core.world.make import make_world

    out = Path(out_dir)
    world = make_world(
        out / "distill_world", seed=seed + DISTILL_SEED_OFFSET, n_scenes=scenes, size_px=scene_px
    )
    config = DistillConfig(
        steps=steps,
        batch_size=2,
        lr=5e-4,
        views="multi",
        log_interval=10,
        ckpt_interval=max(steps, 1),
        eval_samples=8,
        seed=seed,
    )
    result = train_rfm(
        model_dir, world.question_file, out / "distill", config=config, progress=progress
    )
    return Path(result.model_dir)
