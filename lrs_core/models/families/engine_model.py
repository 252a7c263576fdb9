"""A Qwen-VL model shaped for the coarse-to-fine engine (``FocusEngine``).

The engine was written against :class:`~lrs_core.models.vlm.VisionLanguageModel`. This module wraps
a :class:`~lrs_core.models.families.qwen_vl.QwenVlModel` in an object with the same surface for the
parts that are the same (tile encoding, text embeddings, device/dtype, ``llm`` and ``rfm``,
:class:`QwenVlEngineModel`), and puts the parts that differ behind the
:class:`~lrs_core.models.families.base.EngineFamily` interface (:class:`QwenVlEngineFamily`, the
``family`` of the loaded model): the prompt, M-RoPE position ids, generation, RFM scoring, FLOPs
dimensions, saving, no image newline, no ``parity``, no batched decoding.

Geometry seen by the engine (:class:`QwenVlEngineConfig`): 336 px tiles whose "patch" is one LLM
token of 28 px (14 px patches merged 2 x 2), so a tile and the 336 px thumbnail both have 12 x 12 =
144 tokens and nothing is pooled afterwards.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lrs_core.errors import ConfigError, WeightsError
from lrs_core.models.families.base import ROPE_RANK_MROPE, Decoder, TileTokens
from lrs_core.models.families.mrope_run import generate_greedy_mrope, score_tokens_mrope
from lrs_core.models.families.qwen_vl import MropeRfmLayers, QwenVlModel, load_qwen_vl
from lrs_core.models.flops import QWEN_VL_TILE_PX, ModelDims
from lrs_core.models.generation import GenerationResult
from lrs_core.models.layout import SequenceLayout
from lrs_core.models.prompt import PromptIds

#: The token whose embedding separates thumbnail and level (as the LLaVA path, spec §2.5).
SEPARATOR_TOKEN = ":"
#: A trained RFM saved beside a Hugging Face directory: its weights and its layer list.
RFM_WEIGHTS_FILE = "lrs_rfm.safetensors"
RFM_CONFIG_FILE = "lrs_rfm.json"
#: ``config.chat_template`` of Qwen-VL models: the model's own Jinja template renders turn 1.
QWEN_VL_TEMPLATE = "qwen-vl"
#: The project template of training turns after the first (which the model's template renders).
QWEN_VL_TURN_TEMPLATE = "chatml"


def default_llm_layer_list(num_layers: int) -> tuple[int, ...]:
    """The RFM list of an LLM without one: ``(1, ..., max(1, num_layers // 4))`` (as convert)."""
    return tuple(range(1, max(1, num_layers // 4) + 1))


@dataclass(frozen=True, kw_only=True)
class QwenVlEngineConfig:
    """The geometry and budget the engine reads from ``model.config``.

    Attributes:
        family: ``"qwen2-vl"`` or ``"qwen2.5-vl"``.
        tile_size_px: tile side fed to the tower (a multiple of 28; 336).
        patch_size_px: pixels per LLM token side (28); the DIP's "patch".
        pool_stride: 1 (tokens are not pooled after the merger).
        rfm_llm_layers: the RFM's LLM layer list.
        separator_token: token between thumbnail and level.
        max_context_tokens: the LLM's context (``max_position_embeddings``).
        chat_template: :data:`QWEN_VL_TEMPLATE` (the model's own Jinja template renders prompts).
        image_mean: per-channel mean of [0, 1] pixels (the checkpoint's preprocessor; tiles are
            padded with it).
        image_std: per-channel standard deviation of [0, 1] pixels.
    """

    family: str
    tile_size_px: int = QWEN_VL_TILE_PX
    patch_size_px: int = 28
    pool_stride: int = 1
    rfm_llm_layers: tuple[int, ...]
    separator_token: str = SEPARATOR_TOKEN
    max_context_tokens: int
    chat_template: str = QWEN_VL_TEMPLATE
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def pooled_per_side(self) -> int:
        """LLM tokens along one side of a tile (12)."""
        return self.tile_size_px // self.patch_size_px

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens of one tile (144)."""
        return self.pooled_per_side**2

    @property
    def rfm_source_layers(self) -> tuple[int, ...]:
        """LLM layers the RFM layers are copied from: ``[first - 1, *list]``."""
        return (self.rfm_llm_layers[0] - 1, *self.rfm_llm_layers)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["rfm_llm_layers"] = list(self.rfm_llm_layers)
        return out


class QwenVlCausalLm(nn.Module):
    """The Qwen-VL LLM seen as a decoder-only causal LM (``.model``, ``.lm_head``, ``.config``).

    Layer-drop generation and planning read these attributes; ``.model`` is the stock text model.
    """

    def __init__(self, family: QwenVlModel) -> None:
        super().__init__()
        self.model = family.hf.model.language_model
        self.lm_head = family.hf.lm_head
        self.config = family.text_config
        self.generation_config = family.hf.generation_config

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding table."""
        table: nn.Module = self.model.embed_tokens
        return table


class QwenVlEngineModel(nn.Module):
    """A Qwen-VL model with the :class:`VisionLanguageModel` surface the engine uses.

    Attributes:
        family: the wrapped :class:`QwenVlModel`.
        config: :class:`QwenVlEngineConfig`.
        llm: :class:`QwenVlCausalLm`.
        rfm: :class:`MropeRfmLayers` copied from the LLM.
        rope_rank: 3 (M-RoPE).
        has_image_newline: False.
    """

    rope_rank = ROPE_RANK_MROPE
    has_image_newline = False

    def __init__(
        self, family: QwenVlModel, *, llm_layer_list: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        text = family.text_config
        layers = llm_layer_list or default_llm_layer_list(int(text.num_hidden_layers))
        self.family = family
        self.config = QwenVlEngineConfig(
            family=family.family,
            patch_size_px=family.token_px,
            rfm_llm_layers=tuple(layers),
            max_context_tokens=int(text.max_position_embeddings),
            image_mean=family.geometry.image_mean,
            image_std=family.geometry.image_std,
        )
        family.tile_grid_hw((self.config.tile_size_px, self.config.tile_size_px))
        self.hf = family.hf
        self.llm = QwenVlCausalLm(family)
        self.rfm = family.rfm_from_llm(self.config.rfm_llm_layers)
        self.vision_tower = family.hf.model.visual

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        return self.family.hidden_size

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.family.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.family.dtype

    @property
    def image_newline(self) -> torch.Tensor:
        """Qwen-VL has no image newline; the engine never places one (see the module docstring)."""
        raise ConfigError("Qwen-VL models have no image newline; build sequences without one")

    def preprocess_tiles(self, tiles: np.ndarray) -> torch.Tensor:
        """Return the uint8 tiles as a tensor (patching happens in :meth:`encode_tiles`).

        Args:
            tiles: uint8 (n, S, S, 3), ``S == config.tile_size_px``.
        """
        size = self.config.tile_size_px
        if tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[1:] != (size, size, 3):
            raise ConfigError(
                f"tiles must be uint8 (n, {size}, {size}, 3); got {tiles.dtype} {tiles.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(tiles))

    def encode_tiles(
        self, pixels: torch.Tensor, *, pooled: bool = True, batch_size: int = 16
    ) -> torch.Tensor:
        """Return float (n, 144, D) LLM tokens per tile (``pooled`` is moot: nothing is pooled)."""
        del pooled
        return self.family.encode_tiles(pixels.cpu().numpy(), batch_size=batch_size).tokens

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return float (..., D) input embeddings."""
        return self.family.embed_text(input_ids)

    # -- what the engine dispatches on ---------------------------------------------------------

    def prompt_ids(self, question: str) -> PromptIds:
        """The prompt's ids split at the image (the model's chat template)."""
        return self.family.prompt_ids(question)

    def sequence_position_ids(self, layout: SequenceLayout) -> torch.Tensor:
        """Return int64 (3, 1, L) M-RoPE ids of a sequence (kept tokens keep their ids)."""
        return self.family.position_ids(layout)[:, None]

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
    ) -> GenerationResult:
        """Greedy generation of one or more right-padded rows with M-RoPE ids (3, B, L)."""
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.int64, device=inputs_embeds.device)
        return generate_greedy_mrope(
            self.family,
            inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
        )

    def score(
        self,
        inputs_embeds: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """RFM probabilities of the query over the keys, float32 (B, K) (spec §3, with M-RoPE)."""
        rfm: MropeRfmLayers = self.rfm
        return score_tokens_mrope(
            rfm,
            inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            query_positions=query_positions,
            key_positions=key_positions,
            key_mask=key_mask,
        )

    def flops_dims(self) -> ModelDims:
        """Analytic-FLOPs dimensions at the engine's tile size."""
        return self.family.flops_dims(
            rfm_layers=len(self.rfm.layers) - 1, tile_px=self.config.tile_size_px
        )


def load_qwen_vl_engine(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    llm_layer_list: tuple[int, ...] | None = None,
) -> Any:
    """Load a Qwen-VL directory as a :class:`~lrs_core.models.loading.loaded.LoadedModel`.

    A trained RFM saved by :func:`save_qwen_vl_engine` (``lrs_rfm.json`` and
    ``lrs_rfm.safetensors``) replaces the LLM-layer copies, with its own layer list.

    Returns:
        A ``LoadedModel`` whose ``model`` is a :class:`QwenVlEngineModel` (typed ``Any`` until
        ``LoadedModel.model`` becomes a model-family type).

    Raises:
        WeightsError: unreadable directory or RFM files that do not fit the model.
    """
    from lrs_core.models.loading.files import read_json
    from lrs_core.models.loading.loaded import LoadedModel

    source = Path(path)
    family = load_qwen_vl(
        source, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    rfm_config = source / RFM_CONFIG_FILE
    header = read_json(rfm_config) if rfm_config.is_file() else {}
    if llm_layer_list is None and "llm_layer_list" in header:
        llm_layer_list = tuple(int(i) for i in header["llm_layer_list"])
    model = QwenVlEngineModel(family, llm_layer_list=llm_layer_list)
    engine_family = QwenVlEngineFamily(model)
    if header:
        weights = load_file(str(source / RFM_WEIGHTS_FILE), device=str(model.device))
        try:
            model.rfm.load_state_dict(weights)
        except RuntimeError as err:
            raise WeightsError(
                f"{source / RFM_WEIGHTS_FILE}: the RFM weights do not fit this model ({err}); "
                f"delete {RFM_CONFIG_FILE} to start from LLM-layer copies"
            ) from err
        model.rfm.to(dtype=model.dtype)
    return LoadedModel(
        model=model,  # type: ignore[arg-type]  # a VisionLanguageModel-shaped stand-in
        tokenizer=family.tokenizer,
        model_id=str(header.get("model_id", source.name)),
        source_dir=source,
        family=engine_family,
    )


class QwenVlEngineFamily:
    """A loaded Qwen-VL engine model as an :class:`~lrs_core.models.families.base.EngineFamily`.

    The :class:`~lrs_core.models.families.base.ModelFamily` operations are the wrapped
    :class:`QwenVlModel`'s; the engine's are :class:`QwenVlEngineModel`'s (M-RoPE ids from the
    layout, greedy M-RoPE decoding, M-RoPE RFM scoring, a Hugging Face directory plus the RFM).

    Attributes:
        engine: the :class:`QwenVlEngineModel` (``loaded.model``).
        family: ``"qwen2-vl"`` or ``"qwen2.5-vl"``.
        tokenizer: its tokenizer.
        token_px: tile pixels per token side (28).
        rope_rank: 3 (M-RoPE).
        has_image_newline: False.
        supports_parity: False (the released code is LLaVA's).
        supports_batched_decode: False (rows are decoded one by one).
        renders_own_prompt: True (the model's own chat template renders turn 1).
        turn_template: ``"chatml"`` (Qwen-VL's template is ChatML after the first turn).
    """

    rope_rank = ROPE_RANK_MROPE
    has_image_newline = False
    supports_parity = False
    supports_batched_decode = False
    renders_own_prompt = True
    turn_template = QWEN_VL_TURN_TEMPLATE

    def __init__(self, engine: QwenVlEngineModel) -> None:
        self.engine = engine
        self.base: QwenVlModel = engine.family
        self.family: str = engine.config.family
        self.tokenizer = self.base.tokenizer
        self.token_px: int = self.base.token_px

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.base.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.base.dtype

    @property
    def hidden_size(self) -> int:
        """D, the LLM hidden size."""
        return self.base.hidden_size

    def tile_grid_hw(self, tile_hw_px: tuple[int, int]) -> tuple[int, int]:
        """Return (Gh, Gw) tokens of a tile (:meth:`QwenVlModel.tile_grid_hw`)."""
        return self.base.tile_grid_hw(tile_hw_px)

    def encode_tiles(self, tiles: np.ndarray) -> TileTokens:
        """Vision-encode uint8 (n, H, W, 3) tiles (:meth:`QwenVlModel.encode_tiles`)."""
        return self.base.encode_tiles(tiles)

    def prompt_ids(self, question: str) -> PromptIds:
        """The prompt's ids split at the image (the model's chat template)."""
        return self.engine.prompt_ids(question)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return float (..., D) input embeddings."""
        return self.base.embed_text(input_ids)

    def position_ids(self, layout: SequenceLayout) -> torch.Tensor:
        """Return int64 (3, L) M-RoPE ids of a layout's slots."""
        return self.base.position_ids(layout)

    def llm_logits(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Return float (B, L, V) logits; ``position_ids`` int64 (3, B, L)."""
        return self.base.llm_logits(
            inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
        )

    def decoder(self) -> Decoder:
        """Return the stock text decoder."""
        return self.base.decoder()

    def rfm_from_llm(self, llm_layer_list: tuple[int, ...]) -> nn.Module:
        """Return M-RoPE RFM layers copied from LLM layers ``[first - 1, *llm_layer_list]``."""
        return self.base.rfm_from_llm(llm_layer_list)

    def flops_dims(self, *, rfm_layers: int, tile_px: int) -> ModelDims:
        """Return the analytic-FLOPs dimensions at square tiles of ``tile_px``."""
        return self.base.flops_dims(rfm_layers=rfm_layers, tile_px=tile_px)

    # -- what the engine, distillation and the CLI call (EngineFamily) ---------------------------

    def sequence_position_ids(self, layout: SequenceLayout, positions: np.ndarray) -> torch.Tensor:
        """Return int64 (3, 1, L) M-RoPE ids from the layout (kept tokens keep their ids)."""
        del positions
        return self.engine.sequence_position_ids(layout)

    def batch_position_ids(
        self, layouts: Sequence[SequenceLayout], length: int
    ) -> torch.Tensor | None:
        """Return int64 (3, B, L) M-RoPE ids of right-padded rows, zero in the padding."""
        device = self.device
        position_ids = torch.zeros(3, len(layouts), length, dtype=torch.int64, device=device)
        for row, layout in enumerate(layouts):
            ids = self.engine.sequence_position_ids(layout)[:, 0]
            position_ids[:, row, : ids.shape[1]] = ids.to(device)
        return position_ids

    def layer_drop_position_ids(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Return the M-RoPE ids as they are (layer drop keeps each kept token's ids)."""
        return position_ids

    def generate(
        self,
        inputs_embeds: torch.Tensor,
        *,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        pad_token_id: int,
        do_sample: bool,
        generator: torch.Generator | None,
    ) -> GenerationResult:
        """Greedy M-RoPE decoding of right-padded rows (:meth:`QwenVlEngineModel.generate`).

        Raises:
            ConfigError: ``do_sample`` (these models decode greedily here).
        """
        del attention_mask, pad_token_id, generator
        if do_sample:
            raise ConfigError(f"{self.family} models decode greedily here; set do_sample=False")
        return self.engine.generate(
            inputs_embeds,
            position_ids=position_ids,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
        )

    def score_rfm(
        self,
        inputs_embeds: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        key_mask: torch.Tensor | None,
        placeholder_logit_bias: float | None,
    ) -> torch.Tensor:
        """RFM probabilities with M-RoPE ids (3, B, L), float32 (B, K).

        Raises:
            ConfigError: a placeholder logit bias (the reference's quirk is LLaVA code only).
        """
        if placeholder_logit_bias is not None or key_mask is None:
            raise ConfigError(
                f"{self.family} models have no placeholder-bias RFM quirk (parity only); "
                "use the default preset"
            )
        return self.engine.score(
            inputs_embeds,
            position_ids=position_ids,
            attention_mask=attention_mask,
            query_positions=query_positions,
            key_positions=key_positions,
            key_mask=key_mask,
        )

    def save(self, out_dir: str | Path, *, model_id: str) -> Path:
        """Save as a Hugging Face directory plus the RFM (:func:`save_qwen_vl_engine`)."""
        return save_qwen_vl_engine(self.engine, out_dir, model_id=model_id)

    def info(self) -> dict[str, Any]:
        """Config, sizes, RFM source layers, tokens per tile, vocabulary and parameter counts."""
        model = self.engine
        text, vision = self.base.text_config, self.base.hf.config.vision_config
        return {
            "config": model.config.to_dict(),
            "hidden_size": model.hidden_size,
            "llm_layers": text.num_hidden_layers,
            "vision_layers": vision.depth,
            "rfm_source_layers": list(model.config.rfm_source_layers),
            "tokens_per_tile": model.config.tokens_per_tile,
            "vocab_size": len(self.tokenizer),
            "parameters": {
                name: sum(p.numel() for p in part.parameters())
                for name, part in (
                    ("vision_tower", model.vision_tower),
                    ("llm", model.llm),
                    ("rfm", model.rfm),
                )
            },
        }


def save_qwen_vl_engine(
    model: QwenVlEngineModel, out_dir: str | Path, *, model_id: str | None = None
) -> Path:
    """Save the model as a Hugging Face directory plus its RFM (``lrs_rfm.*``).

    The stock parts go through ``save_pretrained`` (weights, config, generation config), with the
    tokenizer, the chat template and the preprocessor settings; the RFM's weights and layer list
    are written last, so a directory with ``lrs_rfm.json`` is complete.

    Returns:
        The directory, loadable by :func:`load_qwen_vl_engine` and ``lrs ask``.
    """
    from lrs_core.models.hf_compat import qwen2_vl_image_processor_class

    Qwen2VLImageProcessorPil = qwen2_vl_image_processor_class()  # noqa: N806  # a class

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    family = model.family
    family.hf.save_pretrained(str(out))
    family.tokenizer.chat_template = family.chat_template
    family.tokenizer.save_pretrained(str(out))
    geometry = family.geometry
    Qwen2VLImageProcessorPil(
        patch_size=geometry.patch_size,
        temporal_patch_size=geometry.temporal_patch_size,
        merge_size=geometry.merge_size,
        image_mean=list(geometry.image_mean),
        image_std=list(geometry.image_std),
    ).save_pretrained(str(out))
    state = {name: tensor.detach().contiguous() for name, tensor in model.rfm.state_dict().items()}
    save_file(state, str(out / RFM_WEIGHTS_FILE), metadata={"format": "pt"})
    header = {
        "model_id": model_id or out.name,
        "family": model.config.family,
        "llm_layer_list": list(model.config.rfm_llm_layers),
    }
    (out / RFM_CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
    return out
