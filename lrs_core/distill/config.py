"""Settings of RFM attention distillation (spec §4): loss terms, what trains, the loop, the data.

:class:`DistillConfig` is a frozen, keyword-only dataclass of plain values, so it can be a flow
parameter, be written into every checkpoint and round-trip through JSON (:meth:`to_dict` /
:meth:`from_dict`). The defaults are ours; :meth:`DistillConfig.preset` ``("parity")`` switches
on what the reference's loss does differently where that is a choice rather than a bug (spec §4,
§11.12).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from lrs_core.errors import ConfigError

Trainable = Literal["rfm", "rfm+projector", "all"]
Precision = Literal["fp32", "bf16"]
Views = Literal["single", "multi"]
Schedule = Literal["constant", "cosine"]

TRAINABLE_CHOICES: tuple[str, ...] = ("rfm", "rfm+projector", "all")
PRECISION_CHOICES: tuple[str, ...] = ("fp32", "bf16")
VIEW_CHOICES: tuple[str, ...] = ("single", "multi")
SCHEDULE_CHOICES: tuple[str, ...] = ("constant", "cosine")

#: Distillation temperature of the image-token KL and MSE terms (spec §4, tau = 2.0).
DEFAULT_TEMPERATURE = 2.0
#: Share of the vision tokens that counts as "top" in the recall metric (spec §5.4 keep ratio 0.25).
DEFAULT_TOPK_FRACTION = 0.25
#: The reference hard-skips distilled layers 1 and 2 (spec §4, §11.12).
REFERENCE_SKIP_LAYERS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How the RFM is distilled from the LLM's attention.

    Attributes:
        temperature: tau of ``KL_img`` and ``MSE_img`` (spec §4).
        kl_full: use the KL over every visible key (causal + padding masks applied).
        kl_img: use the KL over the image (level) tokens at ``temperature``.
        mse_img: use the MSE of image logits / ``temperature``.
        distill_weight: weight of the averaged distillation terms in the total loss (spec: 1.0).
        lm_weight: weight of the LM cross-entropy, used only when ``trainable == "all"``.
        skip_layers: indices ``k`` into ``llm_layer_list`` whose pair is not distilled; the
            reference uses :data:`REFERENCE_SKIP_LAYERS` (``(1, 2)``), ours distils every pair.
        exclude_newline_keys: leave the level's newline tokens out of the image slice, as the RFM
            does at inference by default (:class:`lrs_core.focus.rfm.RfmConfig`); the reference
            keeps them (False).
        trainable: ``"rfm"`` (default: the LVLM's answers do not change), ``"rfm+projector"``
            (also the projector and the image-newline vector) or ``"all"`` (adds the LM loss).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        schedule: ``"constant"`` after warm-up, or ``"cosine"`` decay to 0 at ``steps``.
        max_grad_norm: gradient clipping norm (0 = no clipping).
        steps: optimizer steps of the whole run.
        grad_accum: micro-batches per optimizer step.
        batch_size: samples per micro-batch.
        bucket_batches: batches drawn together and sorted by length (length bucketing).
        log_interval: optimizer steps between metrics lines.
        ckpt_interval: optimizer steps between checkpoints (the last step is always saved).
        keep_checkpoints: newest checkpoints kept on disk (older ones are deleted).
        eval_interval: optimizer steps between held-out evaluations (0 = log_interval).
        eval_samples: held-out samples (taken from the data, never trained on).
        topk_fraction: share of vision tokens in the top-k recall metric.
        seed: seed of initialisation-free randomness: data order, held-out split, dropout.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; master weights stay float32).
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        views: ``"single"`` (the coarsest tiled level) or ``"multi"`` (every DIP level that fits
            ``max_level_tokens``: the multi-GSD training of the paper).
        max_level_tokens: largest level (tokens, newlines included) used as a training view.
    """

    temperature: float = DEFAULT_TEMPERATURE
    kl_full: bool = True
    kl_img: bool = True
    mse_img: bool = True
    distill_weight: float = 1.0
    lm_weight: float = 1.0
    skip_layers: tuple[int, ...] = ()
    exclude_newline_keys: bool = True
    trainable: Trainable = "rfm"
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    max_grad_norm: float = 1.0
    steps: int = 1000
    grad_accum: int = 1
    batch_size: int = 4
    bucket_batches: int = 16
    log_interval: int = 10
    ckpt_interval: int = 100
    keep_checkpoints: int = 2
    eval_interval: int = 0
    eval_samples: int = 8
    topk_fraction: float = DEFAULT_TOPK_FRACTION
    seed: int = 0
    precision: Precision = "fp32"
    device: str = "auto"
    views: Views = "multi"
    max_level_tokens: int = 4096

    def __post_init__(self) -> None:
        _positive_float("temperature", self.temperature)
        _positive_float("lr", self.lr)
        for name in ("distill_weight", "lm_weight", "weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise ConfigError(f"DistillConfig.{name}={value!r} must be a finite number >= 0")
        for name in ("kl_full", "kl_img", "mse_img", "exclude_newline_keys"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"DistillConfig.{name}={getattr(self, name)!r} must be a bool")
        if not (self.kl_full or self.kl_img or self.mse_img):
            raise ConfigError(
                "DistillConfig: kl_full, kl_img and mse_img are all off; switch one on"
            )
        for name in (
            "steps",
            "grad_accum",
            "batch_size",
            "bucket_batches",
            "log_interval",
            "ckpt_interval",
            "keep_checkpoints",
            "max_level_tokens",
        ):
            _int_at_least(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_interval", "eval_samples", "seed"):
            _int_at_least(name, getattr(self, name), 0)
        skips = tuple(self.skip_layers)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in skips):
            raise ConfigError(
                f"DistillConfig.skip_layers={skips!r} must hold indices k >= 0 into llm_layer_list"
            )
        object.__setattr__(self, "skip_layers", tuple(sorted(set(skips))))
        if not _is_number(self.topk_fraction) or not 0.0 < self.topk_fraction <= 1.0:
            raise ConfigError(
                f"DistillConfig.topk_fraction={self.topk_fraction!r} is outside (0, 1]"
            )
        for name, allowed in (
            ("trainable", TRAINABLE_CHOICES),
            ("precision", PRECISION_CHOICES),
            ("views", VIEW_CHOICES),
            ("schedule", SCHEDULE_CHOICES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"DistillConfig.{name}={getattr(self, name)!r} is not one of {list(allowed)}"
                )
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"DistillConfig.device={self.device!r} must be a device string")

    @property
    def effective_eval_interval(self) -> int:
        """Steps between held-out evaluations (``eval_interval``, or ``log_interval`` when 0)."""
        return self.eval_interval or self.log_interval

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step: ``batch_size * grad_accum``."""
        return self.batch_size * self.grad_accum

    @property
    def trains_llm(self) -> bool:
        """Whether the LLM trains too (then the LM loss is added)."""
        return self.trainable == "all"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DistillConfig:
        """Return ``"default"`` (ours) or ``"parity"`` (the reference's loss choices).

        ``parity`` skips distilled layers 1 and 2 and keeps newline tokens in the image slice (spec
        §4). The reference's unmasked full-row softmax and its Llama thumbnail slice are bugs
        (spec §11.12) and are not reproduced.
        """
        if name == "default":
            return cls(**overrides)
        if name == "parity":
            values: dict[str, Any] = {
                "skip_layers": REFERENCE_SKIP_LAYERS,
                "exclude_newline_keys": False,
            }
            values.update(overrides)
            return cls(**values)
        raise ConfigError(f"DistillConfig preset {name!r} is not one of ['default', 'parity']")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["skip_layers"] = list(self.skip_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"DistillConfig: unknown fields {unknown}; known fields are {sorted(names)}"
            )
        values = dict(data)
        if "skip_layers" in values:
            values["skip_layers"] = tuple(values["skip_layers"])
        return cls(**values)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_float(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]  # checked by _is_number
        raise ConfigError(f"DistillConfig.{name}={value!r} must be a finite number > 0")


def _int_at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"DistillConfig.{name}={value!r} must be an integer >= {minimum}")
