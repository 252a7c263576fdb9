r"""Distillation samples: conversations about an image, as RFM/LLM input batches.

Sources (:func:`read_records`):

* LLaVA-style conversation JSON (``.json``): a list of ``{"id", "image", "conversations":
  [{"from": "human", "value": "<image>\n..."}, {"from": "gpt", "value": "..."}, ...]}``; several
  turns allowed.
* LRS-VQA-style JSONL (``.jsonl``): one question per line with ``question_id``, ``image``, ``text``
  and ``ground_truth`` (or ``answer``), spec §7.1; one turn per line.

``image`` is a path relative to the data root (default: the data file's folder). It may be an
ingested Zarr scene store (a folder, read lazily with
:func:`lrs_core.raster.pyramid.open_pyramid`) or an image file (GeoTIFF, PNG, JPEG...), which is
ingested once into a store cache folder and then read the same way, so a huge scene is never held
in memory.

Views (multi-GSD, the paper's training on one scene at several ground sample distances): each record
becomes one sample per DIP level (``views="multi"``: every level of the scene's pyramid whose token
count fits ``max_level_tokens``) or one sample of the coarsest tiled level (``views="single"``).
A sample's LLM input is the reference sequence (spec §2.5)::

    [text before <image>] [thumbnail tokens] [':'] [level rows + newline] [rest of the conversation]

For fast tests and synthetic studies, :class:`FeatureGridRecord` carries projected features directly
(a thumbnail grid and a level grid) instead of an image.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lrs_core.dip.plan import DipConfig, DipLevel, DipPlan, plan_pyramid
from lrs_core.distill.loss import IGNORE_INDEX, DistillBatch
from lrs_core.errors import DatasetError, NotGeoreferencedWarning
from lrs_core.evaluation.lrs_vqa import iter_jsonl
from lrs_core.focus.tiles import mean_rgb_uint8, read_thumbnail, read_tiles
from lrs_core.models.families.base import EngineFamily
from lrs_core.models.layout import SequenceLayout, TokenKind, assemble_batch, build_layout
from lrs_core.models.prompt import IMAGE_PLACEHOLDER, PromptIds, tokenize_prompt
from lrs_core.models.vlm import VisionLanguageModel
from lrs_core.raster.pyramid import Pyramid, open_pyramid

log = logging.getLogger(__name__)

#: Default in-memory budget of cached (frozen) vision features, bytes (1 GiB).
DEFAULT_FEATURE_CACHE_BYTES = 2**30
#: Roles of LLaVA conversation turns.
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
#: Text of a later turn's question and of an answer, per chat template (turn 1 is the spec §2.6
#: prompt from :func:`lrs_core.models.prompt.tokenize_prompt`). LLaVA's conventions.
_NEXT_QUESTION = {
    "vicuna_v1": "USER: {question} ASSISTANT:",
    "chatml": "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
}
_ANSWER = {"vicuna_v1": " {answer}</s>", "chatml": "{answer}<|im_end|>\n"}


@dataclass(frozen=True)
class Turn:
    """One question and its answer."""

    question: str
    answer: str


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """A conversation about one image.

    Attributes:
        sample_id: the source's id (for messages and logs).
        image: the image file or Zarr store, absolute path.
        turns: the question/answer turns, in order (at least one).
    """

    sample_id: str
    image: Path
    turns: tuple[Turn, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class FeatureGridRecord:
    """A conversation about an image given as projected features (no vision tower involved).

    Attributes:
        sample_id: an id for messages.
        thumbnail_feats: float (Nt, D), Nt a square number; thumbnail tokens in row-major order.
        level_feats: float (Ht, Wt, D); the level's token canvas, row-major.
        turns: the question/answer turns.
    """

    sample_id: str
    thumbnail_feats: torch.Tensor
    level_feats: torch.Tensor
    turns: tuple[Turn, ...]


Record = ImageRecord | FeatureGridRecord


@dataclass(frozen=True)
class View:
    """One training sample: a record seen at one DIP level (``dip_level`` 0 for feature grids)."""

    record: int
    dip_level: int


@dataclass(frozen=True, eq=False)
class Conversation:
    """Token ids of a conversation split at the image, with its answer spans.

    Attributes:
        prompt: ids before the image, and every id after it (questions and answers).
        answer_mask: bool (len(prompt.after_image),); True for answer tokens (LM targets).
        answer_starts: indices into ``prompt.after_image`` where each answer span starts.
    """

    prompt: PromptIds
    answer_mask: np.ndarray
    answer_starts: tuple[int, ...]


def _text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    turns: Sequence[Turn],
    *,
    template: str,
    first_prompt: PromptIds | None = None,
) -> Conversation:
    """Return the ids of a multi-turn conversation in the reference's chat template.

    Turn 1 is exactly the inference prompt (spec §2.6), so the token before the first answer is
    the query token the RFM uses at inference; later turns follow LLaVA's templates.

    Args:
        tokenizer: the model's tokenizer.
        turns: the question/answer turns.
        template: the chat template's name (later turns and answers).
        first_prompt: the first turn's prompt ids when the model renders them itself (Qwen-VL);
            None tokenizes it with :func:`lrs_core.models.prompt.tokenize_prompt`.

    Raises:
        DatasetError: no turns, or an unknown template.
    """
    if not turns:
        raise DatasetError("a conversation needs at least one question/answer turn")
    if template not in _ANSWER:
        raise DatasetError(f"chat template {template!r} is not one of {sorted(_ANSWER)}")
    first = first_prompt or tokenize_prompt(tokenizer, turns[0].question, template=template)
    after = list(first.after_image)
    mask: list[bool] = [False] * len(after)
    starts: list[int] = []
    for index, turn in enumerate(turns):
        if index > 0:
            question = _text_ids(tokenizer, _NEXT_QUESTION[template].format(question=turn.question))
            after += question
            mask += [False] * len(question)
        answer = _text_ids(tokenizer, _ANSWER[template].format(answer=turn.answer))
        if not answer:
            raise DatasetError(f"the answer {turn.answer!r} tokenizes to nothing")
        starts.append(len(after))
        after += answer
        mask += [True] * len(answer)
    return Conversation(
        prompt=PromptIds(before_image=list(first.before_image), after_image=after),
        answer_mask=np.asarray(mask, dtype=bool),
        answer_starts=tuple(starts),
    )


# -- readers --------------------------------------------------------------------------------------


def _resolve(root: Path, image: Any, where: str) -> Path:
    if not isinstance(image, str) or not image:
        raise DatasetError(f"{where}: 'image' is missing or not a string")
    if PurePosixPath(image).is_absolute() or Path(image).is_absolute():
        return Path(image)
    return (root / image).resolve()


def _llava_turns(conversations: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise DatasetError(f"{where}: 'conversations' must be a list of human/gpt messages")
    turns: list[Turn] = []
    for offset in range(0, len(conversations) - 1, 2):
        human, gpt = conversations[offset], conversations[offset + 1]
        if not (
            isinstance(human, dict)
            and isinstance(gpt, dict)
            and human.get("from") in HUMAN_ROLES
            and gpt.get("from") in ASSISTANT_ROLES
            and isinstance(human.get("value"), str)
            and isinstance(gpt.get("value"), str)
        ):
            raise DatasetError(
                f"{where}: messages {offset} and {offset + 1} must be a human then a gpt turn "
                "with string 'value's"
            )
        question = human["value"].replace(IMAGE_PLACEHOLDER, "").strip("\n").strip()
        turns.append(Turn(question=question, answer=gpt["value"].strip()))
    return tuple(turns)


def read_records(path: str | Path, *, data_root: str | Path | None = None) -> list[ImageRecord]:
    """Read LLaVA-style JSON (``.json``) or LRS-VQA-style JSONL (``.jsonl``) training records.

    Args:
        path: the data file.
        data_root: folder image paths are relative to (default: the data file's folder).

    Raises:
        DatasetError: unreadable file, unknown suffix, or a malformed record.
    """
    source = Path(path)
    root = Path(data_root) if data_root is not None else source.parent
    records: list[ImageRecord] = []
    if source.suffix == ".jsonl":
        for line_no, row in iter_jsonl(source):
            where = f"{source}:{line_no}"
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            answer = row.get("ground_truth", row.get("answer"))
            if not isinstance(row.get("text"), str) or not isinstance(answer, str):
                raise DatasetError(
                    f"{where}: 'text' and 'ground_truth' (or 'answer') must be strings"
                )
            records.append(
                ImageRecord(
                    sample_id=str(row.get("question_id", line_no)),
                    image=_resolve(root, row.get("image"), where),
                    turns=(Turn(question=row["text"], answer=answer),),
                )
            )
    elif source.suffix == ".json":
        try:
            rows = json.loads(source.read_text(encoding="utf-8"))
        except OSError as err:
            raise DatasetError(f"{source}: cannot read ({err.strerror})") from err
        except json.JSONDecodeError as err:
            raise DatasetError(f"{source}: not valid JSON ({err.msg})") from err
        if not isinstance(rows, list):
            raise DatasetError(f"{source}: expected a JSON list of LLaVA conversation records")
        for index, row in enumerate(rows):
            where = f"{source}[{index}]"
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            records.append(
                ImageRecord(
                    sample_id=str(row.get("id", index)),
                    image=_resolve(root, row.get("image"), where),
                    turns=_llava_turns(row.get("conversations"), where),
                )
            )
    else:
        raise DatasetError(
            f"{source}: unknown data format {source.suffix!r}; use LLaVA-style .json or "
            "LRS-VQA-style .jsonl"
        )
    if not records:
        raise DatasetError(f"{source}: holds no records")
    return records


# -- scenes ---------------------------------------------------------------------------------------


def open_scene(image: Path, *, store_dir: Path) -> Pyramid:
    """Open an image as a scene store: a Zarr store as is, a file via a one-time ingest.

    Args:
        image: a store folder or an image file.
        store_dir: where ingested stores of image files live (re-used on later calls).

    Raises:
        SceneNotFoundError, SceneReadError: the image is missing or unreadable.
    """
    if image.is_dir():
        return open_pyramid(image)
    from lrs_core.raster.ingest import ingest_scene

    stem = "_".join(image.with_suffix("").parts[-2:]) if len(image.parts) > 1 else image.stem
    with warnings.catch_warnings():
        # Training needs pixels only; a plain PNG's missing georeference does not matter here.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        result = ingest_scene(image, store_dir, scene_id=stem, wait=True)  # a shared cache
    if result.store is None:
        raise DatasetError(f"{image}: ingest gave no store (status {result.status!r})")
    return open_pyramid(result.store)


def dip_config_of(model: VisionLanguageModel) -> DipConfig:
    """The DIP sizes that match the model's vision tower (tile, patch and pooled-token sides)."""
    return DipConfig(
        tile_size_px=model.config.tile_size_px,
        patch_size_px=model.config.patch_size_px,
        tokens_per_tile_side=model.config.pooled_per_side,
    )


def training_levels(plan: DipPlan, *, views: str, max_level_tokens: int) -> list[DipLevel]:
    """The DIP levels a scene is trained at: the coarsest, or every level that fits."""
    levels = [lvl for lvl in plan.levels if lvl.n_tokens <= max_level_tokens]
    if not levels:
        levels = [plan.levels[0]]
    return levels[:1] if views == "single" else levels


def encode_view(
    model: VisionLanguageModel, pyramid: Pyramid, level: DipLevel, plan: DipPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the thumbnail tokens (Nt, D) and the level's token canvas (Ht, Wt, D) of a scene.

    Every tile of the level is read (antialiased) and encoded; the pooled tile tokens are laid
    out over the level's padded canvas and cropped to its unpadded grid (spec §2.2-2.3).
    """
    pad = mean_rgb_uint8(model.config.image_mean)  # this model's padding colour
    thumb = read_thumbnail(pyramid, plan.thumbnail, pad_rgb=pad)
    thumb_feats = model.encode_tiles(model.preprocess_tiles(thumb[None]), pooled=False)[0]
    rows, cols = level.grid_hw
    tiles = [(r, c) for r in range(rows) for c in range(cols)]
    pixels = read_tiles(pyramid, level, tiles, pad_rgb=pad)
    feats = model.encode_tiles(model.preprocess_tiles(pixels), pooled=True)
    side = level.tokens_per_tile_side
    canvas = feats.view(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4)
    canvas = canvas.reshape(rows * side, cols * side, -1)
    height, width = level.token_grid_hw
    return thumb_feats, canvas[:height, :width]


# -- the dataset ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreparedSample:
    """One view, ready to batch: its layout, features and where the queries and image are.

    Attributes:
        layout: the sequence layout (length L).
        thumbnail_feats: float (Nt, D).
        level_feats: float (Ht, Wt, D).
        query_positions: int64 (Q,); the token before each answer span.
        image_positions: int64 (N,); the level tokens (and newlines unless excluded).
        labels: int64 (L,); answer token ids, ``-100`` elsewhere.
    """

    layout: SequenceLayout
    thumbnail_feats: torch.Tensor
    level_feats: torch.Tensor
    query_positions: np.ndarray
    image_positions: np.ndarray
    labels: np.ndarray


@dataclass(eq=False)
class DistillDataset:
    """Records expanded into views, with their sequence lengths, turned into batches on demand.

    Not thread-safe. Features of frozen vision parts are cached in memory (``cache_features``)
    up to ``feature_cache_bytes``.

    Attributes:
        records: the source records.
        views: the samples, ``(record, dip_level)``.
        lengths: the LLM sequence length of each view (for bucketing).
    """

    records: list[Record]
    views: list[View]
    lengths: list[int]
    tokenizer: PreTrainedTokenizerBase
    template: str
    separator_id: int
    dip_config: DipConfig
    store_dir: Path | None = None
    exclude_newline_keys: bool = True
    cache_features: bool = True
    prompt_of: Callable[[str], PromptIds] | None = None
    image_newline: bool = True
    family: EngineFamily | None = None
    feature_cache_bytes: int = DEFAULT_FEATURE_CACHE_BYTES
    _cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=OrderedDict)
    _cache_bytes: int = 0
    _pyramids: dict[Path, Pyramid] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.views)

    def conversation(self, index: int) -> Conversation:
        """Token ids of view ``index``'s conversation."""
        record = self.records[self.views[index].record]
        first = None if self.prompt_of is None else self.prompt_of(record.turns[0].question)
        return tokenize_conversation(
            self.tokenizer, record.turns, template=self.template, first_prompt=first
        )

    def prepare(self, model: VisionLanguageModel, index: int) -> PreparedSample:
        """Return view ``index`` with its features (encoded, or from the cache)."""
        view = self.views[index]
        record = self.records[view.record]
        conversation = self.conversation(index)
        thumb, level_feats = self._features(model, index)
        rows, cols = int(level_feats.shape[0]), int(level_feats.shape[1])
        tile_side = (
            self.dip_config.tokens_per_tile_side if isinstance(record, ImageRecord) else rows
        )
        layout = build_layout(
            conversation.prompt,
            thumbnail_tokens=int(thumb.shape[0]),
            separator_id=self.separator_id,
            level_grid_hw=(rows, cols),
            tile_tokens_hw=(tile_side, max(tile_side, 1)),
            dip_level=max(view.dip_level, 1),
            include_newline=self.image_newline,
        )
        after_start = layout.length - len(conversation.prompt.after_image)
        queries = np.asarray(conversation.answer_starts, dtype=np.int64) + after_start - 1
        kinds = (
            [TokenKind.LEVEL] if self.exclude_newline_keys else [TokenKind.LEVEL, TokenKind.NEWLINE]
        )
        image = np.flatnonzero(np.isin(layout.kind, [k.value for k in kinds])).astype(np.int64)
        labels = np.full(layout.length, IGNORE_INDEX, dtype=np.int64)
        after_ids = np.asarray(conversation.prompt.after_image, dtype=np.int64)
        labels[after_start:][conversation.answer_mask] = after_ids[conversation.answer_mask]
        return PreparedSample(
            layout=layout,
            thumbnail_feats=thumb,
            level_feats=level_feats,
            query_positions=queries,
            image_positions=image,
            labels=labels,
        )

    def _features(
        self, model: VisionLanguageModel, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        view = self.views[index]
        record = self.records[view.record]
        if isinstance(record, FeatureGridRecord):
            return record.thumbnail_feats, record.level_feats
        cached = self._cache.get(index) if self.cache_features else None
        if cached is not None:
            self._cache.move_to_end(index)
            return cached[0].to(model.device), cached[1].to(model.device)
        pyramid = self._pyramid(record.image)
        width, height = pyramid.size_wh
        plan = plan_pyramid(int(width), int(height), config=self.dip_config)
        level = plan.level(view.dip_level)
        if self.cache_features:
            with torch.no_grad():
                thumb, level_feats = encode_view(model, pyramid, level, plan)
            self._remember(index, thumb.detach().cpu(), level_feats.detach().cpu())
            return thumb, level_feats
        return encode_view(model, pyramid, level, plan)

    def _pyramid(self, image: Path) -> Pyramid:
        """The scene of an image, opened (and, for a file, ingested) once per dataset."""
        if image not in self._pyramids:
            if self.store_dir is None:
                raise DatasetError("image records need a store_dir for ingested image files")
            self._pyramids[image] = open_scene(image, store_dir=self.store_dir)
        return self._pyramids[image]

    def _remember(self, index: int, thumb: torch.Tensor, level_feats: torch.Tensor) -> None:
        size = (
            thumb.numel() * thumb.element_size() + level_feats.numel() * level_feats.element_size()
        )
        if size > self.feature_cache_bytes:
            return
        self._cache[index] = (thumb, level_feats)
        self._cache_bytes += size
        while self._cache_bytes > self.feature_cache_bytes and self._cache:
            _, (old_thumb, old_level) = self._cache.popitem(last=False)
            self._cache_bytes -= (
                old_thumb.numel() * old_thumb.element_size()
                + old_level.numel() * old_level.element_size()
            )

    def collate(self, model: VisionLanguageModel, indices: Sequence[int]) -> DistillBatch:
        """Return the right-padded batch of the given views on the model's device."""
        samples = [self.prepare(model, i) for i in indices]
        return collate(model, samples, family=self.family)


def collate(
    model: VisionLanguageModel,
    samples: Sequence[PreparedSample],
    *,
    family: EngineFamily | None = None,
) -> DistillBatch:
    """Right-pad prepared samples into a :class:`DistillBatch` on the model's device.

    ``family`` numbers the rows' positions (:meth:`EngineFamily.batch_position_ids`); None (or a
    rank-1 family) leaves ``position_ids`` None, ``0 .. L-1`` per row.
    """
    embedded = assemble_batch(
        model,
        [s.layout for s in samples],
        thumbnail_feats=[s.thumbnail_feats for s in samples],
        level_feats=[s.level_feats for s in samples],
    )
    device = model.device
    size, length = embedded.attention_mask.shape

    def pad(arrays: list[np.ndarray], width: int, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.full((size, width), fill, dtype=torch.int64)
        mask = torch.zeros(size, width, dtype=torch.bool)
        for row, array in enumerate(arrays):
            values[row, : array.shape[0]] = torch.from_numpy(array)
            mask[row, : array.shape[0]] = True
        return values.to(device), mask.to(device)

    queries, query_mask = pad(
        [s.query_positions for s in samples], max(len(s.query_positions) for s in samples), 0
    )
    image, image_mask = pad(
        [s.image_positions for s in samples], max(len(s.image_positions) for s in samples), 0
    )
    labels, _ = pad([s.labels for s in samples], length, IGNORE_INDEX)
    position_ids = (
        None if family is None else family.batch_position_ids([s.layout for s in samples], length)
    )
    return DistillBatch(
        inputs_embeds=embedded.inputs_embeds,
        attention_mask=embedded.attention_mask,
        query_positions=queries,
        query_mask=query_mask,
        image_positions=image,
        image_mask=image_mask,
        labels=labels,
        position_ids=position_ids,
    )


def _sequence_length(
    conversation: Conversation, *, thumbnail_tokens: int, level_tokens: int
) -> int:
    return conversation.prompt.n_text_tokens + thumbnail_tokens + 1 + level_tokens


def build_dataset(
    records: Sequence[Record],
    *,
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    family: EngineFamily,
    views: str = "multi",
    max_level_tokens: int = 4096,
    store_dir: Path | None = None,
    exclude_newline_keys: bool = True,
    cache_features: bool = True,
) -> DistillDataset:
    """Expand records into views (one per training DIP level) and measure their lengths.

    Image records are opened (files ingested into ``store_dir`` once) to plan their pyramids;
    no pixels are read here. ``family`` (``loaded.family``) renders the first prompt when it has
    its own template, numbers the batches' positions and says whether rows end with a newline.

    Raises:
        DatasetError: a record's image is missing or unreadable, or ``store_dir`` is needed.
    """
    config = dip_config_of(model)
    separator = tokenizer.convert_tokens_to_ids(model.config.separator_token)
    if not isinstance(separator, int):
        raise DatasetError(f"separator token {model.config.separator_token!r} is not one token")
    separator_id = separator
    template = family.turn_template  # later turns and answers (turn 1: below)
    # the family renders its own first prompt, numbers positions, and has a newline or not
    prompt_of = family.prompt_ids if family.renders_own_prompt else None
    out_views: list[View] = []
    lengths: list[int] = []
    pyramids: dict[Path, Pyramid] = {}
    for index, record in enumerate(records):
        conversation = tokenize_conversation(
            tokenizer,
            record.turns,
            template=template,
            first_prompt=None if prompt_of is None else prompt_of(record.turns[0].question),
        )
        if isinstance(record, FeatureGridRecord):
            rows, cols = int(record.level_feats.shape[0]), int(record.level_feats.shape[1])
            out_views.append(View(record=index, dip_level=0))
            lengths.append(
                _sequence_length(
                    conversation,
                    thumbnail_tokens=int(record.thumbnail_feats.shape[0]),
                    level_tokens=rows * (cols + 1),
                )
            )
            continue
        if store_dir is None:
            raise DatasetError("image records need a store_dir for ingested image files")
        if record.image not in pyramids:
            pyramids[record.image] = open_scene(record.image, store_dir=store_dir)
        width, height = pyramids[record.image].size_wh
        plan = plan_pyramid(int(width), int(height), config=config)
        for level in training_levels(plan, views=views, max_level_tokens=max_level_tokens):
            out_views.append(View(record=index, dip_level=level.dip_level))
            lengths.append(
                _sequence_length(
                    conversation,
                    thumbnail_tokens=plan.thumbnail.tokens,
                    level_tokens=level.n_tokens,
                )
            )
    return DistillDataset(
        records=list(records),
        views=out_views,
        lengths=lengths,
        tokenizer=tokenizer,
        template=template,
        separator_id=separator_id,
        dip_config=config,
        store_dir=store_dir,
        exclude_newline_keys=exclude_newline_keys,
        cache_features=cache_features,
        prompt_of=prompt_of,
        image_newline=family.has_image_newline,
        family=family,
        _pyramids=pyramids,
    )


def subset(dataset: DistillDataset, records: Sequence[int]) -> list[int]:
    """Return the indices of the views whose record is in ``records``."""
    wanted = set(records)
    return [i for i, view in enumerate(dataset.views) if view.record in wanted]
