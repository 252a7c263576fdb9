"""Where and in what precision a model runs, and the generation settings its checkpoint ships.

One resolver serves every command that loads a model (``ask``, ``eval run``, ``train-rfm``,
``demo``, ``model info``, the flows): :func:`resolve_device` turns ``auto``/``cpu``/``cuda[:i]``
into a device, :func:`resolve_dtype` turns ``auto``/``fp16``/``bf16``/``fp32`` into a dtype.
``auto`` means CUDA when present (else CPU), and on CUDA the checkpoint's own dtype (the released
checkpoints are float16/bfloat16; the reference runs them in float16), float32 on CPU.

:class:`GenerationSettings` is the checkpoint's ``generation_config.json``: its ``eos_token_id``
(one id or a list) joins the tokenizer's end-of-sequence id as a stop token, and its
``max_new_tokens`` is the default answer length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import torch

from lrs_core.errors import ConfigError, WeightsError

#: Names ``--dtype`` accepts (long torch names are accepted too).
DTYPE_CHOICES: Final = ("auto", "fp16", "bf16", "fp32")
#: ``--device`` default: CUDA when present, else CPU.
DEVICE_AUTO: Final = "auto"
DTYPE_AUTO: Final = "auto"
GENERATION_CONFIG_FILE: Final = "generation_config.json"

_DTYPES: Final[dict[str, torch.dtype]] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
_CONFIG_DTYPE_KEYS: Final = ("dtype", "torch_dtype")


def resolve_device(name: str | torch.device | None = DEVICE_AUTO) -> torch.device:
    """Return the device ``name`` means; ``auto`` (or None) is CUDA when present, else CPU.

    Raises:
        ConfigError: an unknown device, or CUDA asked of a torch build or machine without it.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == DEVICE_AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N ({err})"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "is a CPU-only build" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(
                f"--device {name}: torch {torch.__version__} {build}; "
                "use --device cpu (or auto), or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible; "
                "pick cuda:0 .. cuda:N-1"
            )
    elif device.type not in ("cpu", "meta"):
        raise ConfigError(f"--device {name}: unsupported device type; use auto, cpu or cuda[:N]")
    return device


def parse_dtype(name: str) -> torch.dtype | None:
    """Return the dtype ``name`` names, or None for ``auto``.

    Raises:
        ConfigError: an unknown name.
    """
    if name == DTYPE_AUTO:
        return None
    if name not in _DTYPES:
        raise ConfigError(f"--dtype {name!r} is not one of {list(DTYPE_CHOICES)}")
    return _DTYPES[name]


def resolve_dtype(
    name: str | torch.dtype | None, device: torch.device, source: str | Path | None = None
) -> torch.dtype:
    """Return the parameter dtype for ``name`` on ``device``.

    Args:
        name: ``auto`` (or None), a :data:`DTYPE_CHOICES` name, a long torch name, or a dtype.
        device: the resolved device.
        source: the model directory; ``auto`` on CUDA reads its dtype (:func:`checkpoint_dtype`).

    Returns:
        The named dtype; for ``auto``: float32 on CPU, on CUDA the checkpoint's dtype, else
        bfloat16 where supported, else float16.

    Raises:
        ConfigError: an unknown name.
    """
    if isinstance(name, torch.dtype):
        return name
    explicit = parse_dtype(DTYPE_AUTO if name is None else name)
    if explicit is not None:
        return explicit
    if device.type != "cuda":
        return torch.float32
    stored = checkpoint_dtype(Path(source)) if source is not None else None
    if stored is not None:
        return stored
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def checkpoint_dtype(source: Path) -> torch.dtype | None:
    """The dtype a checkpoint's config declares (``dtype``/``torch_dtype``), or None.

    Reads the project header's ``llm_config``, or ``config.json`` (top level, then
    ``text_config``) of the paper and llava-hf layouts.
    """
    from lrs_core.models.loading.files import PROJECT_CONFIG_FILE

    candidates: list[dict[str, Any]] = []
    for file in (source / PROJECT_CONFIG_FILE, source / "config.json"):
        data = _json_or_none(file)
        if data is None:
            continue
        if file.name == PROJECT_CONFIG_FILE:
            candidates.append(dict(data.get("llm_config") or {}))
        else:
            candidates.extend([data, dict(data.get("text_config") or {})])
        break
    for values in candidates:
        for key in _CONFIG_DTYPE_KEYS:
            value = values.get(key)
            if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
                return _DTYPES[value.removeprefix("torch.")]
    return None


def _json_or_none(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err}); restore the file") from err
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class GenerationSettings:
    """The generation settings a checkpoint ships (``generation_config.json``).

    Attributes:
        eos_token_ids: end-of-sequence ids (the file's ``eos_token_id``, one id or a list).
        max_new_tokens: the file's ``max_new_tokens``; None when absent.
        raw: the whole file (written again by ``lrs model convert``); empty when there is none.
    """

    eos_token_ids: tuple[int, ...] = ()
    max_new_tokens: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, source: Path) -> GenerationSettings:
        """Read ``source / generation_config.json``; defaults when there is none.

        Raises:
            WeightsError: the file is not a JSON object, or its ids are not integers.
        """
        path = source / GENERATION_CONFIG_FILE
        data = _json_or_none(path)
        if data is None:
            if path.is_file():
                raise WeightsError(f"{path}: expected a JSON object; restore the file")
            return cls()
        eos = data.get("eos_token_id")
        ids = [] if eos is None else [eos] if isinstance(eos, int) else eos
        max_new = data.get("max_new_tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise WeightsError(f"{path}: eos_token_id={eos!r} must be an integer or a list of them")
        if max_new is not None and (not isinstance(max_new, int) or max_new < 1):
            raise WeightsError(f"{path}: max_new_tokens={max_new!r} must be a positive integer")
        return cls(eos_token_ids=tuple(ids), max_new_tokens=max_new, raw=dict(data))

    def stop_token_ids(self, tokenizer_eos: int | None) -> list[int]:
        """The tokenizer's end-of-sequence id followed by this file's, without repeats."""
        ids = [] if tokenizer_eos is None else [int(tokenizer_eos)]
        return list(dict.fromkeys([*ids, *self.eos_token_ids]))


@dataclass(frozen=True)
class LoadStats:
    """What loading a model cost.

    Attributes:
        weights_bytes: bytes of the model's parameters (tied ones once) in the loaded dtype.
        peak_rss_bytes: the process's resident-memory high-water mark after loading (Linux
            ``ru_maxrss``; includes the interpreter and everything loaded before).
        baseline_rss_bytes: the same high-water mark just before loading.
        load_seconds: wall time of the load.
        peak_gpu_bytes: CUDA allocator peak during the load; None off CUDA.
    """

    weights_bytes: int
    peak_rss_bytes: int
    baseline_rss_bytes: int
    load_seconds: float
    peak_gpu_bytes: int | None = None


#: ``ru_maxrss`` unit on Linux (kibibytes).
_RU_MAXRSS_UNIT = 1024


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark in bytes (``getrusage``)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * _RU_MAXRSS_UNIT


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters (each shared tensor once) in their current dtype."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
