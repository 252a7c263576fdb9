"""Analytic FLOP counts of the vision tower, projector, RFM and LLM (one multiply-add = 2 FLOPs).

Only matrix products are counted (as ``torch.utils.flop_counter.FlopCounterMode`` does): linear
layers, the patch-embedding convolution, and the two attention products. Norms, activations,
softmax, RoPE, residual adds and biases are ignored (each is O(tokens x width), under 1% here).

Accounting rules, stated once:

* **Vision tower** (per tile of ``tokens_per_tile`` tokens, class token included): patch embedding
  ``patches x (C*p*p) x W``; per layer the Q/K/V/O projections ``4 x T x W^2``, the bidirectional
  attention products ``QK^T`` and ``AV`` with ``T x T x W`` each, and the GELU MLP's two matmuls
  ``2 x T x W x M``. Every layer counts: LLaVA runs the whole tower and reads the penultimate layer.
* **Projector** (``mlp2x_gelu``): ``in -> hidden -> out`` on the patch tokens (class token dropped).
* **LLM layer** on n new tokens over a KV length m: Q and O projections ``n x D x (Hq*hd)`` each,
  K and V ``n x D x (Hkv*hd)`` each (GQA aware), attention ``QK^T`` and ``AV`` with
  ``Hq x n x m x hd`` each, SwiGLU MLP with three matmuls ``n x D x I``. Prefill attention is
  counted **dense** (``m = n = L``, what SDPA kernels without causal skipping and FlopCounterMode
  report) unless ``causal_attention=True``, which counts the ``L(L+1)/2`` unmasked pairs only.
* **LM head** ``D x V`` per token: in the prefill on the **last token only** by default (what
  ``generate()`` computes), on all L with ``prefill_lm_head="all"`` (what a plain forward does).
* **Decoding**: n generated tokens = the prefill (which yields token 1) + n-1 single-token passes,
  pass t attending over ``L + t`` keys, each with its LM head.
* **RFM** (spec §3): ``rfm_layers`` full decoder layers on the RFM sequence, then the scoring
  layer's ``q_proj`` on the query rows, ``k_proj`` on the keys and ``QK^T`` for those rows (the
  reference also runs the scoring layer fully and a final norm and discards them; not counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from lrs_core.errors import ConfigError
from lrs_core.records import FlopCount

#: FLOPs per multiply-add.
FLOPS_PER_MAC = 2
#: RGB input channels of the vision towers.
RGB_CHANNELS = 3


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{owner}.{name}={value} must be >= 1")


@dataclass(frozen=True, kw_only=True)
class VisionDims:
    """Sizes of a ViT tower and its ``mlp2x_gelu`` projector.

    Attributes:
        layers: encoder layers run per tile.
        width: hidden size W.
        mlp: MLP intermediate size M.
        heads: attention heads (the FLOPs do not depend on it; kept for the record).
        tokens_per_tile: tokens per tile entering the encoder, class token included (577 for
            CLIP ViT-L/14 at 336 px: 24 x 24 patches + CLS).
        has_class_token: whether one of ``tokens_per_tile`` is a class token (CLIP yes, SigLIP no).
        patch_size: patch side in pixels.
        channels: input channels.
        projector_in: projector input width.
        projector_hidden: projector hidden width.
        projector_out: projector output width (the LLM hidden size).
        temporal_patch_size: frames per patch of the patch embedding (Qwen-VL: 2, an image is
            repeated; CLIP/SigLIP: 1).
        mlp_matmuls: matrix products of one encoder MLP (2 for GELU MLPs, 3 for SwiGLU).
        merge_size: patches merged per side before the projector (Qwen-VL: 2, the projector runs
            on ``patches / merge_size**2`` tokens of width ``projector_in``); 1: one per patch.
        window_tokens: tokens per attention window of the windowed encoder layers (Qwen2.5-VL:
            8 x 8 = 64 patches); 0: every layer attends over the whole tile.
        full_attention_layers: layers that attend over the whole tile when ``window_tokens`` > 0.
    """

    layers: int
    width: int
    mlp: int
    heads: int
    tokens_per_tile: int
    has_class_token: bool = True
    patch_size: int
    channels: int = RGB_CHANNELS
    projector_in: int
    projector_hidden: int
    projector_out: int
    temporal_patch_size: int = 1
    mlp_matmuls: int = 2
    merge_size: int = 1
    window_tokens: int = 0
    full_attention_layers: int = 0

    def __post_init__(self) -> None:
        if self.window_tokens < 0 or not 0 <= self.full_attention_layers <= self.layers:
            raise ConfigError(
                f"VisionDims.window_tokens={self.window_tokens} must be >= 0 and "
                f"full_attention_layers={self.full_attention_layers} within 0..{self.layers}"
            )
        _check_positive(
            "VisionDims",
            temporal_patch_size=self.temporal_patch_size,
            mlp_matmuls=self.mlp_matmuls,
            merge_size=self.merge_size,
        )
        _check_positive(
            "VisionDims",
            layers=self.layers,
            width=self.width,
            mlp=self.mlp,
            heads=self.heads,
            tokens_per_tile=self.tokens_per_tile,
            patch_size=self.patch_size,
            channels=self.channels,
            projector_in=self.projector_in,
            projector_hidden=self.projector_hidden,
            projector_out=self.projector_out,
        )

    @property
    def patches_per_tile(self) -> int:
        """Patch tokens per tile (class token excluded)."""
        return self.tokens_per_tile - int(self.has_class_token)


@dataclass(frozen=True, kw_only=True)
class LlmDims:
    """Sizes of a Llama/Qwen2-style decoder.

    Attributes:
        layers: decoder layers.
        hidden: hidden size D.
        intermediate: SwiGLU intermediate size I.
        q_heads: query heads Hq.
        kv_heads: key/value heads Hkv (GQA when < Hq).
        head_dim: per-head size hd.
        vocab: vocabulary size V (LM head width).
    """

    layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def __post_init__(self) -> None:
        _check_positive(
            "LlmDims",
            layers=self.layers,
            hidden=self.hidden,
            intermediate=self.intermediate,
            q_heads=self.q_heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab=self.vocab,
        )
        if self.q_heads % self.kv_heads:
            raise ConfigError(
                f"LlmDims.q_heads={self.q_heads} is not a multiple of kv_heads={self.kv_heads}"
            )


@dataclass(frozen=True, kw_only=True)
class ModelDims:
    """Everything :func:`count_flops` needs about one VLM.

    Attributes:
        vision: the vision tower and projector.
        llm: the language model.
        rfm_layers: full decoder layers the RFM runs before its scoring layer
            (``len(llm_layer_list)``, spec §3); 0 for a model without RFM.
    """

    vision: VisionDims
    llm: LlmDims
    rfm_layers: int

    def __post_init__(self) -> None:
        if self.rfm_layers < 0:
            raise ConfigError(f"ModelDims.rfm_layers={self.rfm_layers} must be >= 0")


# CLIP ViT-L/14 at 336 px, `openai/clip-vit-large-patch14-336` config.json (vision_config):
# hidden_size 1024, intermediate_size 4096, num_hidden_layers 24, num_attention_heads 16,
# image_size 336, patch_size 14 -> (336/14)^2 = 576 patches + 1 CLS = 577 tokens. It is the tower of
# both released checkpoints (spec §0); the projector is mlp2x_gelu: Linear(1024, D), GELU,
# Linear(D, D).
def _clip_l14_336(llm_hidden: int) -> VisionDims:
    return VisionDims(
        layers=24,
        width=1024,
        mlp=4096,
        heads=16,
        tokens_per_tile=577,
        patch_size=14,
        projector_in=1024,
        projector_hidden=llm_hidden,
        projector_out=llm_hidden,
    )


# The spec's default for llm_layer_list is unknown ([CONFIG], spec §3); 4 layers is its example.
_DEFAULT_RFM_LAYERS = 4

#: Tile side, pixels, at which the Qwen-VL entries of :data:`KNOWN_DIMS` are counted: the engine's
#: 336 px tile gives 24 x 24 patches merged into 12 x 12 = 144 LLM tokens, as LLaVA's pooled tile.
QWEN_VL_TILE_PX = 336
_QWEN_VL_PATCH_PX = 14
_QWEN_VL_MERGE = 2
_QWEN_VL_TEMPORAL_PATCH = 2
_SWIGLU_MATMULS = 3


def _qwen_vl_vision(
    *,
    family: str,
    width: int,
    mlp: int,
    heads: int,
    layers: int,
    llm_hidden: int,
    tile_px: int,
    patch_size: int = _QWEN_VL_PATCH_PX,
    merge_size: int = _QWEN_VL_MERGE,
    temporal_patch_size: int = _QWEN_VL_TEMPORAL_PATCH,
    window_px: int = 0,
    full_attention_layers: int = 0,
) -> VisionDims:
    """The Qwen-VL tower at square ``tile_px`` tiles and its patch merger.

    The merger is ``ln -> Linear(4C, 4C) -> GELU -> Linear(4C, D)`` on merged tokens; Qwen2.5-VL
    has a SwiGLU MLP and windowed attention.
    """
    if tile_px % (patch_size * merge_size):
        raise ConfigError(
            f"tile_px={tile_px} is not a multiple of {patch_size * merge_size} px; "
            "use a tile size such as 336"
        )
    patches = (tile_px // patch_size) ** 2
    merged_width = width * merge_size**2
    return VisionDims(
        layers=layers,
        width=width,
        mlp=mlp,
        heads=heads,
        tokens_per_tile=patches,
        has_class_token=False,
        patch_size=patch_size,
        projector_in=merged_width,
        projector_hidden=merged_width,
        projector_out=llm_hidden,
        temporal_patch_size=temporal_patch_size,
        mlp_matmuls=_SWIGLU_MATMULS if family == "qwen2.5-vl" else 2,
        merge_size=merge_size,
        window_tokens=(window_px // patch_size) ** 2,
        full_attention_layers=full_attention_layers,
    )


# Qwen2-VL tower (`Qwen/Qwen2-VL-7B-Instruct` and `-2B-Instruct` config.json, vision_config):
# depth 32, embed_dim 1280, mlp_ratio 4 (MLP 5120, quick_gelu), num_heads 16, patch_size 14,
# spatial_merge_size 2, temporal_patch_size 2; hidden_size = the LLM's.
def _qwen2_vl_tower(llm_hidden: int, tile_px: int = QWEN_VL_TILE_PX) -> VisionDims:
    return _qwen_vl_vision(
        family="qwen2-vl",
        width=1280,
        mlp=5120,
        heads=16,
        layers=32,
        llm_hidden=llm_hidden,
        tile_px=tile_px,
    )


# Qwen2.5-VL tower (`Qwen/Qwen2.5-VL-7B-Instruct` and `-3B-Instruct` config.json, vision_config):
# depth 32, hidden_size 1280, intermediate_size 3420 (SwiGLU), num_heads 16, window_size 112 px
# (8 x 8 patches), fullatt_block_indexes [7, 15, 23, 31]; out_hidden_size = the LLM's.
_QWEN25_VL_WINDOW_PX = 112
_QWEN25_VL_FULL_ATTENTION_LAYERS = 4


def _qwen25_vl_tower(llm_hidden: int, tile_px: int = QWEN_VL_TILE_PX) -> VisionDims:
    return _qwen_vl_vision(
        family="qwen2.5-vl",
        width=1280,
        mlp=3420,
        heads=16,
        layers=32,
        llm_hidden=llm_hidden,
        tile_px=tile_px,
        window_px=_QWEN25_VL_WINDOW_PX,
        full_attention_layers=_QWEN25_VL_FULL_ATTENTION_LAYERS,
    )


# Qwen2-7B / Qwen2.5-7B decoder (the LLM of Qwen2-VL-7B and Qwen2.5-VL-7B): hidden_size 3584,
# intermediate_size 18944, 28 layers, 28 heads, 4 KV heads, vocab_size 152064; head_dim 128.
_QWEN_7B_LLM = LlmDims(
    layers=28, hidden=3584, intermediate=18944, q_heads=28, kv_heads=4, head_dim=128, vocab=152064
)
# Qwen2-VL-2B's decoder: hidden_size 1536, intermediate_size 8960, 28 layers, 12 heads, 2 KV heads,
# vocab_size 151936; head_dim 128.
_QWEN2_VL_2B_LLM = LlmDims(
    layers=28, hidden=1536, intermediate=8960, q_heads=12, kv_heads=2, head_dim=128, vocab=151936
)
# Qwen2.5-VL-3B's decoder: hidden_size 2048, intermediate_size 11008, 36 layers, 16 heads,
# 2 KV heads, vocab_size 151936; head_dim 128.
_QWEN25_VL_3B_LLM = LlmDims(
    layers=36, hidden=2048, intermediate=11008, q_heads=16, kv_heads=2, head_dim=128, vocab=151936
)

#: Dimensions of the paper's two released models, written down from their public config.json files.
KNOWN_DIMS: Mapping[str, ModelDims] = MappingProxyType(
    {
        # Qwen2-7B (`Qwen/Qwen2-7B-Instruct` config.json; see the decoder note above).
        "qwen2-7b": ModelDims(
            vision=_clip_l14_336(3584),
            llm=_QWEN_7B_LLM,
            rfm_layers=_DEFAULT_RFM_LAYERS,
        ),
        # Vicuna-7B v1.5 (`lmsys/vicuna-7b-v1.5` config.json, a Llama-2-7B): hidden_size 4096,
        # intermediate_size 11008, num_hidden_layers 32, num_attention_heads 32 (no GQA),
        # vocab_size 32000; head_dim = 128.
        "vicuna-7b": ModelDims(
            vision=_clip_l14_336(4096),
            llm=LlmDims(
                layers=32,
                hidden=4096,
                intermediate=11008,
                q_heads=32,
                kv_heads=32,
                head_dim=128,
                vocab=32000,
            ),
            rfm_layers=_DEFAULT_RFM_LAYERS,
        ),
        # Qwen-VL bases, counted at QWEN_VL_TILE_PX tiles (see the tower and decoder notes above).
        "qwen2-vl-7b": ModelDims(
            vision=_qwen2_vl_tower(3584), llm=_QWEN_7B_LLM, rfm_layers=_DEFAULT_RFM_LAYERS
        ),
        "qwen2-vl-2b": ModelDims(
            vision=_qwen2_vl_tower(1536), llm=_QWEN2_VL_2B_LLM, rfm_layers=_DEFAULT_RFM_LAYERS
        ),
        "qwen2.5-vl-7b": ModelDims(
            vision=_qwen25_vl_tower(3584), llm=_QWEN_7B_LLM, rfm_layers=_DEFAULT_RFM_LAYERS
        ),
        "qwen2.5-vl-3b": ModelDims(
            vision=_qwen25_vl_tower(2048), llm=_QWEN25_VL_3B_LLM, rfm_layers=_DEFAULT_RFM_LAYERS
        ),
    }
)


def qwen_vl_dims(
    vision_config: Any, text_config: Any, *, family: str, tile_px: int, rfm_layers: int
) -> ModelDims:
    """Dimensions of a Qwen2-VL / Qwen2.5-VL model from its Hugging Face configs.

    Args:
        vision_config: ``Qwen2VLVisionConfig`` or ``Qwen2_5_VLVisionConfig``.
        text_config: the LLM's text config.
        family: ``"qwen2-vl"`` or ``"qwen2.5-vl"``.
        tile_px: side of the square tiles fed to the tower (a multiple of 28).
        rfm_layers: full decoder layers of the RFM before its scoring layer.

    Raises:
        ConfigError: unknown family or a tile size off the patch grid.
    """
    if family == "qwen2-vl":
        width = int(vision_config.embed_dim)
        mlp = width * int(vision_config.mlp_ratio)
        window_px, full_layers = 0, 0
    elif family == "qwen2.5-vl":
        width = int(vision_config.hidden_size)
        mlp = int(vision_config.intermediate_size)
        window_px = int(vision_config.window_size)
        full_layers = len(vision_config.fullatt_block_indexes)
    else:
        raise ConfigError(f"family={family!r} is not 'qwen2-vl' or 'qwen2.5-vl'")
    llm = dims_from_configs_llm(text_config)
    vision = _qwen_vl_vision(
        family=family,
        width=width,
        mlp=mlp,
        heads=int(vision_config.num_heads),
        layers=int(vision_config.depth),
        llm_hidden=llm.hidden,
        tile_px=tile_px,
        patch_size=int(vision_config.patch_size),
        merge_size=int(vision_config.spatial_merge_size),
        temporal_patch_size=int(vision_config.temporal_patch_size),
        window_px=window_px,
        full_attention_layers=full_layers,
    )
    return ModelDims(vision=vision, llm=llm, rfm_layers=rfm_layers)


def dims_from_configs_llm(llm_config: Any) -> LlmDims:
    """The :class:`LlmDims` of a Llama / Qwen2-style Hugging Face LLM config."""
    hidden = int(llm_config.hidden_size)
    q_heads = int(llm_config.num_attention_heads)
    head_dim = getattr(llm_config, "head_dim", None) or hidden // q_heads
    return LlmDims(
        layers=int(llm_config.num_hidden_layers),
        hidden=hidden,
        intermediate=int(llm_config.intermediate_size),
        q_heads=q_heads,
        kv_heads=int(getattr(llm_config, "num_key_value_heads", None) or q_heads),
        head_dim=int(head_dim),
        vocab=int(llm_config.vocab_size),
    )


def dims_from_configs(
    vision_config: Any, llm_config: Any, *, rfm_layers: int, projector_in: int
) -> ModelDims:
    """Dimensions of a model built from Hugging Face config objects.

    Args:
        vision_config: a ``CLIPVisionConfig`` or ``SiglipVisionConfig`` (SigLIP has no class token).
        llm_config: a ``LlamaConfig`` or ``Qwen2Config``.
        rfm_layers: full decoder layers of the RFM before its scoring layer.
        projector_in: width of the features entering the projector (the tower width, or more when
            several layers are concatenated).

    Returns:
        The dimensions; the projector is ``mlp2x_gelu`` into the LLM hidden size.
    """
    image_size = int(vision_config.image_size)
    patch_size = int(vision_config.patch_size)
    has_class_token = "siglip" not in str(getattr(vision_config, "model_type", "")).lower()
    patches = (image_size // patch_size) ** 2
    hidden = int(llm_config.hidden_size)
    q_heads = int(llm_config.num_attention_heads)
    head_dim = getattr(llm_config, "head_dim", None) or hidden // q_heads
    return ModelDims(
        vision=VisionDims(
            layers=int(vision_config.num_hidden_layers),
            width=int(vision_config.hidden_size),
            mlp=int(vision_config.intermediate_size),
            heads=int(vision_config.num_attention_heads),
            tokens_per_tile=patches + int(has_class_token),
            has_class_token=has_class_token,
            patch_size=patch_size,
            channels=int(getattr(vision_config, "num_channels", RGB_CHANNELS)),
            projector_in=projector_in,
            projector_hidden=hidden,
            projector_out=hidden,
        ),
        llm=LlmDims(
            layers=int(llm_config.num_hidden_layers),
            hidden=hidden,
            intermediate=int(llm_config.intermediate_size),
            q_heads=q_heads,
            kv_heads=int(getattr(llm_config, "num_key_value_heads", None) or q_heads),
            head_dim=int(head_dim),
            vocab=int(llm_config.vocab_size),
        ),
        rfm_layers=rfm_layers,
    )


def vision_tile_flops(vision: VisionDims) -> float:
    """FLOPs of one tile through the tower and the projector.

    Windowed layers (``window_tokens`` > 0) count ``T x min(window, T)`` attended pairs, exact when
    the tile is a whole number of windows (Qwen2.5-VL's 112 px windows on 336 px tiles).
    """
    tokens, width = vision.tokens_per_tile, vision.width
    patch_embed = (
        vision.patches_per_tile
        * vision.channels
        * vision.temporal_patch_size
        * vision.patch_size**2
        * width
    )
    dense = 4 * tokens * width * width + vision.mlp_matmuls * tokens * width * vision.mlp
    full_layers = vision.layers if vision.window_tokens == 0 else vision.full_attention_layers
    window = min(vision.window_tokens, tokens)
    attention = 2 * width * tokens * (full_layers * tokens + (vision.layers - full_layers) * window)
    projector = (vision.patches_per_tile // vision.merge_size**2) * (
        vision.projector_in * vision.projector_hidden
        + vision.projector_hidden * vision.projector_out
    )
    return float(FLOPS_PER_MAC * (patch_embed + vision.layers * dense + attention + projector))


def _layer_macs(llm: LlmDims, *, new_tokens: int, attended_pairs: int) -> int:
    """Multiply-adds of one decoder layer (projections + attention products + SwiGLU MLP)."""
    q_width, kv_width = llm.q_heads * llm.head_dim, llm.kv_heads * llm.head_dim
    projections = new_tokens * llm.hidden * (2 * q_width + 2 * kv_width)
    attention = 2 * llm.q_heads * attended_pairs * llm.head_dim
    mlp = 3 * new_tokens * llm.hidden * llm.intermediate
    return projections + attention + mlp


def _prefill_pairs(tokens: int, *, causal: bool) -> int:
    return tokens * (tokens + 1) // 2 if causal else tokens * tokens


def count_flops(
    dims: ModelDims,
    *,
    vision_tiles: int,
    prefill_tokens: int,
    decode_steps: int = 0,
    rfm_tokens: int = 0,
    rfm_query_rows: int = 1,
    causal_attention: bool = False,
    prefill_lm_head: Literal["last", "all"] = "last",
) -> FlopCount:
    """Analytic FLOPs of answering one question (see the module docstring for the rules).

    Args:
        dims: model dimensions (:data:`KNOWN_DIMS` or :func:`dims_from_configs`).
        vision_tiles: tiles through the vision tower and projector (thumbnail included).
        prefill_tokens: LLM prefill length L (vision + text).
        decode_steps: generated tokens (0: prefill only, no LM head beyond ``prefill_lm_head``).
        rfm_tokens: RFM sequence length of one pass (0: no RFM); call once per pass and add.
        rfm_query_rows: query rows the RFM scores (1: the last prompt token, spec §3).
        causal_attention: count only the causal half of prefill attention (kernels that skip
            masked blocks) instead of the dense square.
        prefill_lm_head: ``"last"``: LM head on the last prefill token (``generate()``);
            ``"all"``: on every prefill token (a plain forward).

    Returns:
        vision (tower + projector), LLM (prefill + decode) and RFM FLOPs.

    Raises:
        ConfigError: a negative count, or an unknown ``prefill_lm_head``.
    """
    counts = dict(
        vision_tiles=vision_tiles,
        prefill_tokens=prefill_tokens,
        decode_steps=decode_steps,
        rfm_tokens=rfm_tokens,
        rfm_query_rows=rfm_query_rows,
    )
    negative = {name: value for name, value in counts.items() if value < 0}
    if negative:
        raise ConfigError(f"count_flops got negative counts {negative}")
    if prefill_lm_head not in ("last", "all"):
        raise ConfigError(f"prefill_lm_head={prefill_lm_head!r} is not 'last' or 'all'")
    llm = dims.llm

    vision = vision_tiles * vision_tile_flops(dims.vision)

    llm_macs = 0
    if prefill_tokens:
        pairs = _prefill_pairs(prefill_tokens, causal=causal_attention)
        llm_macs += llm.layers * _layer_macs(llm, new_tokens=prefill_tokens, attended_pairs=pairs)
        head_tokens = 1 if prefill_lm_head == "last" else prefill_tokens
        llm_macs += head_tokens * llm.hidden * llm.vocab
    for step in range(1, decode_steps):  # token 1 came from the prefill
        kv_length = prefill_tokens + step
        llm_macs += llm.layers * _layer_macs(llm, new_tokens=1, attended_pairs=kv_length)
        llm_macs += llm.hidden * llm.vocab

    rfm_macs = 0
    if rfm_tokens:
        pairs = _prefill_pairs(rfm_tokens, causal=causal_attention)
        rfm_macs += dims.rfm_layers * _layer_macs(llm, new_tokens=rfm_tokens, attended_pairs=pairs)
        q_width, kv_width = llm.q_heads * llm.head_dim, llm.kv_heads * llm.head_dim
        rfm_macs += rfm_query_rows * llm.hidden * q_width + rfm_tokens * llm.hidden * kv_width
        rfm_macs += llm.q_heads * rfm_query_rows * rfm_tokens * llm.head_dim

    return FlopCount(
        vision_flops=vision,
        llm_flops=float(FLOPS_PER_MAC * llm_macs),
        rfm_flops=float(FLOPS_PER_MAC * rfm_macs),
    )


def count_llm_flops_per_layer(
    dims: ModelDims,
    tokens_per_layer: Sequence[int],
    *,
    decode_steps: int = 0,
    causal_attention: bool = False,
) -> float:
    """LLM FLOPs of a prefill whose layers see different token counts (in-LLM token dropping).

    The rules of :func:`count_flops` per layer: decoder layer i runs on ``tokens_per_layer[i]``
    tokens (dense or causal attention over them), the LM head on the last prefill token, and decode
    step t (t >= 1) attends in layer i over ``tokens_per_layer[i] + t`` keys (each layer's own KV
    cache). With a constant schedule ``[L] * layers`` this equals
    ``count_flops(dims, vision_tiles=0, prefill_tokens=L, decode_steps=...).llm_flops``. The
    ranking attention of FastV / PyramidDrop (one query row per stage) is not counted.

    Args:
        dims: model dimensions.
        tokens_per_layer: prefill sequence length of every decoder layer (``dims.llm.layers``
            values).
        decode_steps: generated tokens (the first comes from the prefill).
        causal_attention: as in :func:`count_flops`.

    Returns:
        LLM FLOPs (prefill + decode).

    Raises:
        ConfigError: the schedule's length differs from the layer count, or a count is negative.
    """
    llm = dims.llm
    if len(tokens_per_layer) != llm.layers:
        raise ConfigError(
            f"tokens_per_layer has {len(tokens_per_layer)} entries for a {llm.layers}-layer LLM"
        )
    if decode_steps < 0 or any(tokens < 0 for tokens in tokens_per_layer):
        raise ConfigError(
            f"count_llm_flops_per_layer got negative counts (decode_steps={decode_steps}, "
            f"min tokens={min(tokens_per_layer, default=0)})"
        )
    macs = 0
    for tokens in tokens_per_layer:
        pairs = _prefill_pairs(tokens, causal=causal_attention)
        macs += _layer_macs(llm, new_tokens=tokens, attended_pairs=pairs)
        for step in range(1, decode_steps):
            macs += _layer_macs(llm, new_tokens=1, attended_pairs=tokens + step)
    if tokens_per_layer and tokens_per_layer[-1]:
        macs += llm.hidden * llm.vocab  # LM head on the last prefill token
    macs += max(decode_steps - 1, 0) * llm.hidden * llm.vocab
    return float(FLOPS_PER_MAC * macs)
