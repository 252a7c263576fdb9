"""What lies in a model directory: file names and their readers (JSON, safetensors, tokenizer).

Only safetensors are read; pickles are refused. Shared by every layout of
:mod:`lrs_core.models.loading`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lrs_core.errors import WeightsError

PROJECT_CONFIG_FILE = "lrs_model.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Checkpoint keys of non-persistent buffers, recomputed on load (never read).
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")

#: Maps a checkpoint key to a project key, or None to skip the tensor.
KeyMap = Callable[[str], str | None]

#: safetensors dtype names -> torch dtypes (the ones checkpoints of these models use).
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
#: Bytes of the little-endian header length that opens a safetensors file.
_SAFETENSORS_LENGTH_BYTES = 8


def read_safetensors(
    file: Path, key_map: KeyMap = lambda key: key
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (mapped key, CPU tensor) of a safetensors file, reading each tensor with ``readinto``.

    Unlike a memory map, plain reads leave no file pages mapped into the process, so reading a
    checkpoint adds one tensor at a time to the resident memory instead of the whole file.

    Raises:
        WeightsError: a truncated or malformed file, or a dtype this reader does not know.
    """
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(_SAFETENSORS_LENGTH_BYTES), "little")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(
                f"{file}: not a safetensors file ({err}); download it again"
            ) from err
        start = _SAFETENSORS_LENGTH_BYTES + length
        header.pop("__metadata__", None)
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        for key, entry in entries:
            target = key_map(key)
            if target is None:
                continue
            if entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise WeightsError(
                    f"{file}: tensor {key} has dtype {entry['dtype']}, which lrs does not read; "
                    "convert the checkpoint to F32/F16/BF16"
                )
            begin, end = entry["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(start + begin)
            if handle.readinto(raw.numpy().data) != end - begin:
                raise WeightsError(f"{file}: truncated at tensor {key}; download it again")
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            yield target, raw.view(dtype).reshape(entry["shape"])


def safetensors_files(source: Path) -> list[Path]:
    """Return the safetensors files of a checkpoint directory (one file, or every indexed shard).

    Raises:
        WeightsError: no safetensors (with a hint when only pickled weights exist).
    """
    index = source / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        files = sorted({source / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index}: shards {missing[:3]} are missing; download them again")
        return files
    single = source / WEIGHTS_FILE
    if single.is_file():
        return [single]
    files = sorted(source.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in source.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{source}: only pickled weights ({pickles[:3]}) were found; "
            "lrs loads safetensors only. "
            "Download the safetensors revision of the checkpoint, or convert it with a trusted tool"
        )
    raise WeightsError(f"{source}: no model.safetensors or {WEIGHTS_INDEX_FILE} found")


def read_json(path: Path) -> dict[str, Any]:
    """Return the JSON object in ``path``.

    Raises:
        WeightsError: the file is missing or not a JSON object.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise WeightsError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def load_tokenizer(source: Path) -> PreTrainedTokenizerBase:
    """Return the tokenizer stored in ``source`` (offline; no remote code).

    Raises:
        WeightsError: no loadable tokenizer in the directory.
    """
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(source), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise WeightsError(f"{source}: no usable tokenizer files ({err})") from err
    return tokenizer


def has_keys(source: Path, prefix: str) -> bool:
    """Return whether any tensor key of ``source``'s safetensors starts with ``prefix``."""
    for file in safetensors_files(source):
        with safe_open(str(file), framework="pt") as handle:
            if any(key.startswith(prefix) for key in handle.keys()):  # noqa: SIM118
                return True
    return False


def image_norm(
    directory: Path, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return the image (mean, std) of ``directory``'s preprocessor config, else ``mean, std``.

    Raises:
        WeightsError: the preprocessor config holds other than 3 values each.
    """
    file = directory / PREPROCESSOR_FILE
    if not file.is_file():
        return mean, std
    data = read_json(file)
    image_mean = tuple(float(v) for v in data.get("image_mean", mean))
    image_std = tuple(float(v) for v in data.get("image_std", std))
    if len(image_mean) != 3 or len(image_std) != 3:
        raise WeightsError(f"{file}: image_mean and image_std must hold 3 values each")
    return (image_mean[0], image_mean[1], image_mean[2]), (image_std[0], image_std[1], image_std[2])
