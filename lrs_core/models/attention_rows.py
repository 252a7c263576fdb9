"""Exact softmax attention rows of a few query tokens, without eager attention.

The Region Focus Module (spec §3) needs, for one decoder layer, the softmax probabilities of a few
query rows (the last prompt token) over a slice of keys (the tiled-level vision tokens). Eager
attention with ``output_attentions=True`` materialises every ``(H, L, L)`` matrix (GiBs at a few
thousand tokens), so this module computes only the requested rows, in float32, in two ways:

* :func:`attention_rows_from_hidden` recomputes ``q`` and ``k`` of one stock decoder layer
  (``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``) from the hidden states *entering* that layer,
  for the requested query rows and keys only. This is what the RFM does (spec §3 steps 2-6).
* :class:`AttentionRowRecorder` records the rows while a stock model runs SDPA (or FlashAttention):
  it registers a wrapping attention function under a fresh name with transformers'
  ``AttentionInterface`` and the same name with ``AttentionMaskInterface`` (without the latter the
  padding mask is silently dropped), switches the decoder to it, and restores everything on exit.

Index convention (both entry points): ``query_positions`` and ``key_positions`` are int64 *sequence
indices* into the ``L`` axis of the hidden states / of the forward pass (not RoPE position ids; with
left padding they count the padding). Rows may hold different numbers of keys: pad ``key_positions``
with any valid index and mark those slots False in ``key_mask``. The causal rule compares sequence
indices: a key after its query gets probability 0, as do keys masked by ``key_mask`` or by the
sequence / attention mask.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import nn

from lrs_core.errors import ConfigError

log = logging.getLogger(__name__)

#: Attention implementations the recorder can wrap (their mask builders and kernels are stock).
WRAPPABLE_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3")
#: Prefix of the names the recorder registers (a random suffix makes each recorder's name unique).
RECORDER_NAME_PREFIX = "lrs_attention_rows"


@dataclass(frozen=True)
class AttentionRows:
    """Softmax attention probabilities of chosen query rows over chosen keys.

    Attributes:
        per_head: float32 (B, H, Q, K); probability of query row q over key k for each query head.
            With ``renormalize_over_keys=True`` each valid row sums to 1 over the chosen keys (the
            reference RFM, spec §3 step 5); otherwise it is the full-row softmax restricted to the
            chosen keys (sums to <= 1). Masked keys are exactly 0; a row whose keys are all
            masked is all 0.
    """

    per_head: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """float32 (B, Q, K); mean over the query heads (spec §3 step 6)."""
        return self.per_head.mean(dim=1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-rotation RoPE as in Llama/Qwen2; x (B, H, N, hd), cos/sin (B, N, hd)."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, Hkv, N, hd) -> (B, Hkv * n_rep, N, hd), query head h reads KV head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, L, D) at int64 index (B, N) -> (B, N, D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Position ids of the ``index`` (B, N) slots.

    (B|1, L) -> (B, N); M-RoPE (3, B|1, L) -> (3, B, N).
    """
    batch = index.shape[0]
    if position_ids.ndim == 3:
        rank = position_ids.shape[0]
        expanded = position_ids.expand(rank, batch, -1)
        return expanded.gather(2, index.unsqueeze(0).expand(rank, -1, -1))
    return position_ids.expand(batch, -1).gather(1, index)


def _check_indices(name: str, index: torch.Tensor, batch: int, length: int) -> None:
    if index.dtype != torch.int64 or index.ndim != 2 or index.shape[0] != batch:
        raise ConfigError(
            f"{name} must be int64 of shape (B={batch}, N); got {tuple(index.shape)} {index.dtype}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= length):
        raise ConfigError(
            f"{name} holds indices in [{int(index.min())}, {int(index.max())}], outside the "
            f"sequence [0, {length}); pass sequence indices, not position ids"
        )


def _rows_from_logits(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    *,
    select: torch.Tensor | None,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Masked float32 softmax of (B, H, Q, Kx) logits, optionally gathered to the chosen keys.

    Args:
        logits: float32 (B, H, Q, Kx) scaled scores (additive biases already added).
        allowed: bool broadcastable to (B, H, Q, Kx); False entries get probability 0.
        select: int64 (B, K) indices into Kx to gather after the softmax (full-row mode), or None
            when the Kx keys already are the chosen keys (renormalised mode).
        key_mask: bool (B, K), True = valid chosen key, or None.

    Returns:
        float32 (B, H, Q, K); rows with no allowed key are all 0 (not NaN).
    """
    if select is None and key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool)[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    if select is not None:
        batch, heads, queries, _ = probs.shape
        probs = probs.gather(-1, select[:, None, None, :].expand(batch, heads, queries, -1))
        if key_mask is not None:
            probs = probs.masked_fill(~key_mask.to(torch.bool)[:, None, None, :], 0.0)
    return probs


def _causal_logits(
    layer: nn.Module,
    hidden: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    rotary_emb: nn.Module,
    query_positions: torch.Tensor,
    key_index: torch.Tensor,
    sequence_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled q·k logits of the query rows against the ``key_index`` slots, and what is allowed.

    Both index tensors are checked by the caller. Queries and keys are the layer's
    ``input_layernorm`` -> ``q_proj`` / ``k_proj`` -> RoPE of the gathered hidden states.

    Returns:
        float32 (B, H, Q, Kx) logits (unmasked) and bool (B, Q, Kx) ``allowed``: the causal rule
        and ``sequence_mask`` of the keys.
    """
    batch = hidden.shape[0]
    attn: Any = layer.self_attn  # stock attention modules are untyped
    norm: Any = layer.input_layernorm
    head_dim = int(attn.head_dim)

    def project(proj: nn.Module, index: torch.Tensor) -> torch.Tensor:
        x = norm(_gather_rows(hidden, index))
        out = proj(x).view(batch, index.shape[1], -1, head_dim).transpose(1, 2)
        cos, sin = rotary_emb(x, _gather_positions(position_ids, index))
        return _apply_rope(out, cos, sin)

    query = project(attn.q_proj, query_positions).float()  # (B, H, Q, hd)
    key = project(attn.k_proj, key_index).float()  # (B, Hkv, Kx, hd)
    key = _repeat_kv(key, query.shape[1] // key.shape[1])
    logits = torch.matmul(query, key.transpose(-1, -2)) * float(attn.scaling)  # (B, H, Q, Kx)
    allowed = key_index[:, None, :] <= query_positions[:, :, None]  # (B, Q, Kx), causal
    if sequence_mask is not None:
        allowed = allowed & sequence_mask.to(torch.bool).gather(1, key_index)[:, None, :]
    return logits, allowed


def attention_rows_from_hidden(
    layer: nn.Module,
    hidden: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    rotary_emb: nn.Module,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    sequence_mask: torch.Tensor | None = None,
    renormalize_over_keys: bool = True,
    masked_key_logit_bias: float | None = None,
) -> AttentionRows:
    """Exact attention rows of one decoder layer, recomputed from the hidden states entering it.

    Runs ``input_layernorm``, ``q_proj`` / ``k_proj`` (with their biases, as Qwen2 has), RoPE at the
    given position ids and the GQA head repeat, for the Q query rows and the K keys only (all L keys
    when ``renormalize_over_keys=False``, which needs the full-row denominator). Layer norm and the
    projections act row by row, so computing them on a subset is exact. Scores and softmax are
    float32 whatever the model dtype.

    Args:
        layer: a stock ``LlamaDecoderLayer`` / ``Qwen2DecoderLayer`` (anything with
            ``input_layernorm`` and ``self_attn.{q_proj, k_proj, head_dim, scaling}``).
        hidden: float (B, L, D); hidden states entering ``layer`` (``hidden_states[i]`` of a forward
            with ``output_hidden_states=True`` for layer ``i``).
        position_ids: int64 (B, L) or (1, L); RoPE position ids of every sequence slot. Qwen-VL's
            M-RoPE: (3, B, L) or (3, 1, L) (temporal, height, width), with the M-RoPE
            ``rotary_emb`` of that model.
        rotary_emb: the model's rotary embedding module (``model.model.rotary_emb``).
        query_positions: int64 (B, Q); sequence indices in [0, L) of the query rows.
        key_positions: int64 (B, K); sequence indices in [0, L) of the keys.
        key_mask: bool (B, K), True = valid key; False slots get probability 0 (the additive
            ``-inf`` of the reference's placeholder mask, spec §5.1 pass 2).
        sequence_mask: bool (B, L), True = valid token (padding / placeholders False); it masks the
            chosen keys and, without renormalisation, the rest of each row's denominator.
        renormalize_over_keys: True: softmax over the chosen keys only (the reference RFM, spec §3
            step 5). False: the full causal row's softmax, restricted to the chosen keys.
        masked_key_logit_bias: None (default): keys hidden by ``sequence_mask`` get probability 0.
            A float: they stay in the softmax with this value *added* to their logit instead. The
            reference's ``get_text_image_attn`` casts its 4-D additive mask to bool before adding
            it, so its masked placeholder keys get ``+1.0`` (the ``parity`` quirk, spec §5.1
            pass 2). ``key_mask`` and the causal rule still exclude keys.

    Returns:
        The rows, float32 (B, H, Q, K) per head.

    Raises:
        ConfigError: an index tensor has the wrong shape, dtype or range.
    """
    batch, length, _ = hidden.shape
    _check_indices("query_positions", query_positions, batch, length)
    _check_indices("key_positions", key_positions, batch, length)
    if renormalize_over_keys:
        key_index = key_positions
    else:
        key_index = torch.arange(length, device=hidden.device).expand(batch, -1)
    biased = masked_key_logit_bias is not None and sequence_mask is not None
    logits, allowed = _causal_logits(
        layer,
        hidden,
        position_ids=position_ids,
        rotary_emb=rotary_emb,
        query_positions=query_positions,
        key_index=key_index,
        sequence_mask=None if biased else sequence_mask,
    )
    if biased:
        assert sequence_mask is not None and masked_key_logit_bias is not None  # for mypy
        hidden_keys = ~sequence_mask.to(torch.bool).gather(1, key_index)  # (B, Kx)
        logits = logits + float(masked_key_logit_bias) * hidden_keys[:, None, None, :].float()
    probs = _rows_from_logits(
        logits,
        allowed[:, None],
        select=None if renormalize_over_keys else key_positions,
        key_mask=key_mask,
    )
    return AttentionRows(per_head=probs)


def _mask_rows(
    attention_mask: torch.Tensor | None,
    query_positions: torch.Tensor,
    *,
    kv_length: int,
    is_causal: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The requested query rows of whatever mask an attention function received.

    Args:
        attention_mask: None (plain causal / full), int or bool (B, kv) padding mask (flash
            attention, 1 = valid), bool (B|1, H|1, q, kv) with True = attend (SDPA), or float
            (B|1, H|1, q, kv) additive (eager, custom 4D masks; very negative = masked).
        query_positions: int64 (B, Q) rows to keep.
        kv_length: key length of the call.
        is_causal: whether a None / 2D mask implies the causal rule.

    Returns:
        allowed: bool (B, 1|H, Q, kv); bias: float32 additive (B, 1|H, Q, kv) or None.
    """
    batch, queries = query_positions.shape
    keys = torch.arange(kv_length, device=query_positions.device)
    if attention_mask is None or attention_mask.ndim == 2:
        allowed = torch.ones(batch, queries, kv_length, dtype=torch.bool, device=keys.device)
        if is_causal:
            allowed = keys[None, None, :] <= query_positions[:, :, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(torch.bool)[:, None, :]
        return allowed[:, None], None
    mask = attention_mask.expand(batch, -1, -1, -1)
    rows = mask.gather(
        2, query_positions[:, None, :, None].expand(-1, mask.shape[1], -1, kv_length)
    )
    if rows.dtype == torch.bool:
        return rows, None
    allowed = rows > torch.finfo(rows.dtype).min / 2
    return allowed, rows.float().masked_fill(~allowed, 0.0)


class AttentionRowRecorder:
    """Records exact attention rows of chosen decoder layers while a stock model runs SDPA/flash.

    Usage::

        with AttentionRowRecorder(llm, layers=[5], query_positions=q, key_positions=k) as rec:
            llm(inputs_embeds=x, attention_mask=m)
        rows = rec.rows[5].mean  # float32 (B, Q, K)

    On entry the recorder registers a wrapping function under a fresh name
    ``lrs_attention_rows_<uuid>`` with ``AttentionInterface`` and the base implementation's mask
    builder under the same name with ``AttentionMaskInterface`` (transformers skips mask
    creation for names the mask registry does not know, which would silently drop the padding
    mask), and switches the
    decoder to that name. The wrapper returns the base kernel's output unchanged and, for the
    requested layers, recomputes softmax only for the requested rows from ``q`` and ``k`` after RoPE
    (GQA aware) with the mask the layer received. On exit the previous implementation is restored
    and both names are removed from the registries (transformers has no public unregister, so the
    class-level ``_global_mapping`` the registration wrote to is edited directly).

    Only full-sequence calls (query length == key length: a forward without cache, or the prefill
    of ``generate()``) are recorded; decode steps are ignored. A later full-sequence call
    overwrites the rows of an earlier one. Indices are sequence indices of that call (see the
    module docstring).

    Args:
        model: a stock decoder (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``LlamaModel`` ...) or a
            VLM whose ``get_decoder()`` returns one; only the decoder is switched.
        layers: decoder layer indices to record.
        query_positions: int64 (B, Q); sequence indices of the query rows.
        key_positions: int64 (B, K); sequence indices of the keys.
        key_mask: bool (B, K), True = valid key.
        renormalize_over_keys: as in :func:`attention_rows_from_hidden`.

    Raises:
        ConfigError: a layer index is out of range, or the model's current attention implementation
            is not one of :data:`WRAPPABLE_IMPLEMENTATIONS` (eager already returns attentions).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[int],
        query_positions: torch.Tensor,
        key_positions: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        renormalize_over_keys: bool = True,
    ) -> None:
        untyped: Any = model  # get_decoder() is untyped upstream
        decoder: Any = untyped.get_decoder() if hasattr(untyped, "get_decoder") else untyped
        decoder_layers = getattr(decoder, "layers", None)
        if decoder_layers is None:
            raise ConfigError(f"{type(model).__name__} has no decoder with a 'layers' list")
        bad = [i for i in layers if not 0 <= i < len(decoder_layers)]
        if bad:
            raise ConfigError(
                f"layers {bad} are outside the decoder's 0..{len(decoder_layers) - 1}"
            )
        self._decoder: Any = decoder
        self._layer_of = {id(decoder_layers[i].self_attn): i for i in layers}
        self._query_positions = query_positions
        self._key_positions = key_positions
        self._key_mask = key_mask
        self._renormalize = renormalize_over_keys
        self._rows: dict[int, AttentionRows] = {}
        self._name = f"{RECORDER_NAME_PREFIX}_{uuid.uuid4().hex}"
        self._previous: str | None = None

    @property
    def rows(self) -> dict[int, AttentionRows]:
        """{decoder layer index: rows} recorded so far (a copy)."""
        return dict(self._rows)

    def __enter__(self) -> AttentionRowRecorder:
        from lrs_core.models import hf_compat

        previous = str(self._decoder.config._attn_implementation)
        if previous not in WRAPPABLE_IMPLEMENTATIONS:
            raise ConfigError(
                f"the model runs attn_implementation={previous!r}; the recorder wraps one of "
                f"{WRAPPABLE_IMPLEMENTATIONS} (load the model with attn_implementation='sdpa')"
            )
        base = hf_compat.attention_function(previous)
        hf_compat.register_attention(self._name, self._wrap(base), base=previous)
        try:
            self._set_implementation(self._name)
        except Exception:
            self._unregister()
            raise
        self._previous = previous
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._previous is not None:
                self._set_implementation(self._previous)
        finally:
            self._previous = None
            self._unregister()

    def _unregister(self) -> None:
        from lrs_core.models import hf_compat

        hf_compat.unregister_attention(self._name)

    def _set_implementation(self, name: str) -> None:
        if hasattr(self._decoder, "set_attn_implementation"):
            self._decoder.set_attn_implementation(name)
        else:
            self._decoder.config._attn_implementation = name

    def _wrap(self, base: Callable[..., Any]) -> Callable[..., Any]:
        def attention_with_rows(
            module: nn.Module,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            *args: Any,
            **kwargs: Any,
        ) -> Any:
            output = base(module, query, key, value, attention_mask, *args, **kwargs)
            layer = self._layer_of.get(id(module))
            if layer is not None and query.shape[2] == key.shape[2]:
                with torch.no_grad():
                    self._rows[layer] = self._record(module, query, key, attention_mask, kwargs)
            return output

        return attention_with_rows

    def _record(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> AttentionRows:
        batch, _, length, _ = query.shape
        _check_indices("query_positions", self._query_positions, batch, length)
        _check_indices("key_positions", self._key_positions, batch, length)
        query_positions = self._query_positions.to(query.device)
        key_positions = self._key_positions.to(query.device)
        key_mask = None if self._key_mask is None else self._key_mask.to(query.device)
        is_causal = kwargs.get("is_causal")
        is_causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
        scaling_arg = kwargs.get("scaling")
        default_scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)  # SDPA default
        scaling = float(default_scaling if scaling_arg is None else scaling_arg)

        rows_q = query.gather(
            2, query_positions[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[-1])
        ).float()
        allowed, bias = _mask_rows(
            attention_mask, query_positions, kv_length=length, is_causal=is_causal
        )
        if self._renormalize:
            key = key.gather(
                2, key_positions[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[-1])
            )
            select_keys = key_positions[:, None, None, :].expand(
                -1, allowed.shape[1], allowed.shape[2], -1
            )
            allowed = allowed.gather(-1, select_keys)
            bias = None if bias is None else bias.gather(-1, select_keys)
        keys = _repeat_kv(key.float(), rows_q.shape[1] // key.shape[1])
        logits = torch.matmul(rows_q, keys.transpose(-1, -2)) * scaling
        if bias is not None:
            logits = logits + bias
        probs = _rows_from_logits(
            logits,
            allowed,
            select=None if self._renormalize else key_positions,
            key_mask=key_mask,
        )
        return AttentionRows(per_head=probs)


@dataclass(frozen=True)
class AttentionLogits:
    """Pre-softmax attention scores of chosen query rows over chosen keys, with their mask.

    Attributes:
        logits: float32 (B, H, Q, K); ``q . k * scaling`` per query head (RoPE and the GQA repeat
            applied). Entries where ``allowed`` is False hold ``-inf``.
        allowed: bool (B, 1, Q, K); True where the key is visible to the query (causal rule,
            ``sequence_mask`` and ``key_mask`` applied).
    """

    logits: torch.Tensor
    allowed: torch.Tensor


def attention_logits_from_hidden(
    layer: nn.Module,
    hidden: torch.Tensor,
    *,
    position_ids: torch.Tensor,
    rotary_emb: nn.Module,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    sequence_mask: torch.Tensor | None = None,
) -> AttentionLogits:
    """Masked attention logits of one decoder layer, recomputed from the hidden states entering it.

    The same computation as :func:`attention_rows_from_hidden` with ``renormalize_over_keys=True``
    stopped before the softmax (``softmax(logits, -1)`` of a row with an allowed key equals those
    rows), for callers that need the logits themselves (temperature-scaled distillation losses).
    Gradients flow through ``hidden`` and the layer's parameters.

    Args:
        layer: a stock ``LlamaDecoderLayer`` / ``Qwen2DecoderLayer``.
        hidden: float (B, L, D); hidden states entering ``layer``.
        position_ids: int64 (B, L) or (1, L); RoPE position ids of every sequence slot
            ((3, B|1, L) for M-RoPE, as in :func:`attention_rows_from_hidden`).
        rotary_emb: the model's rotary embedding module.
        query_positions: int64 (B, Q); sequence indices in [0, L) of the query rows.
        key_positions: int64 (B, K); sequence indices in [0, L) of the keys.
        key_mask: bool (B, K), True = valid key.
        sequence_mask: bool (B, L), True = valid token (padding False).

    Returns:
        The :class:`AttentionLogits`, float32 (B, H, Q, K) with ``-inf`` where not allowed.

    Raises:
        ConfigError: an index tensor has the wrong shape, dtype or range.
    """
    batch, length, _ = hidden.shape
    _check_indices("query_positions", query_positions, batch, length)
    _check_indices("key_positions", key_positions, batch, length)
    logits, allowed = _causal_logits(
        layer,
        hidden,
        position_ids=position_ids,
        rotary_emb=rotary_emb,
        query_positions=query_positions,
        key_index=key_positions,
        sequence_mask=sequence_mask,
    )
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool)[:, None, :]
    allowed = allowed[:, None]
    return AttentionLogits(logits=logits.masked_fill(~allowed, float("-inf")), allowed=allowed)
