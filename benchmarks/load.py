"""Peak memory of loading a >= 1.5B-parameter model in bf16 on CPU: meta + assign vs the old path.

Builds (once) a random project-format model of Qwen2-1.5B dimensions with a CLIP-L/336 tower,
saved in bf16. The weights are never held in memory at once: the model is built on ``meta`` for its
shapes, and the safetensors file is written tensor by tensor from chunks of random values.

Then, each in a fresh subprocess, it loads the model in bf16 on CPU:

* ``new``: :func:`lrs_core.models.loading.auto.load_model` (build on ``meta``, assign each tensor in
  place);
* ``old``: :func:`load_old_path`, the loader before that change, kept here as the named baseline
  (build in float32 with transformers' ``no_init_weights``, cast to bf16, then read every tensor of
  the memory-mapped file into a dict and copy it into the model).

It prints, for both, the resident-memory high-water mark above the interpreter's baseline (after
imports), that peak divided by ``weights_bytes``, the load time, and the old/new ratio.

    .venv/bin/python benchmarks/load.py [--dir /tmp/lrs-load-bench] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import GIB, git_commit

#: bf16 values per chunk written to the checkpoint (the random pool holds twice as many).
WRITE_CHUNK = 1 << 24
#: Bytes the pool offset moves between chunks (even: whole bf16 values).
POOL_SHIFT_BYTES = 2 * 7919
#: Standard deviation of the random weights (a typical init scale; the values do not matter).
WEIGHT_STD = 0.02
#: Qwen2-1.5B's LLM dimensions (config.json of Qwen/Qwen2-1.5B-Instruct).
QWEN2_1_5B: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
#: RFM over LLM layers 0..2 (two selection layers), as small as the method allows.
RFM_LAYERS = (1, 2)


def build_configs() -> tuple[Any, Any, Any]:
    """The VlmConfig, CLIP config and Qwen2 config of the benchmark model."""
    from transformers import CLIPVisionConfig, Qwen2Config

    from lrs_core.models.config import VlmConfig, default_chat_template
    from lrs_core.models.loading.paper import CLIP_L14_336

    config = VlmConfig(
        llm_family="qwen2",
        vision_family="clip",
        chat_template=default_chat_template("qwen2"),
        rfm_llm_layers=RFM_LAYERS,
        max_context_tokens=QWEN2_1_5B["max_position_embeddings"],
    )
    return config, CLIPVisionConfig(**CLIP_L14_336), Qwen2Config(**QWEN2_1_5B, dtype="bfloat16")


def write_model(out: Path) -> Path:
    """Write the random bf16 model to ``out`` (project format) without holding its weights."""
    from lrs_core.models.loading.files import PROJECT_CONFIG_FILE, WEIGHTS_FILE
    from lrs_core.models.loading.project import PROJECT_FORMAT, PROJECT_FORMAT_VERSION
    from lrs_core.models.tiny import build_tokenizer
    from lrs_core.models.vlm import VisionLanguageModel

    if (out / PROJECT_CONFIG_FILE).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config, vision_config, llm_config = build_configs()
    model = VisionLanguageModel.build(
        config, vision_config=vision_config, llm_config=llm_config, initialise=False
    )
    shapes = {
        key: tuple(tensor.shape)
        for key, tensor in model.state_dict().items()
        if key != "llm.lm_head.weight"  # tied: stored once, as save_model does
    }
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        nbytes = 2 * _numel(shape)
        header[key] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    generator = torch.Generator().manual_seed(0)
    # one pool of random bf16 values, written at shifting offsets: the values do not matter, and
    # drawing 2 B normals on a shared CPU would take longer than the loads being measured
    pool = (torch.randn(2 * WRITE_CHUNK, generator=generator) * WEIGHT_STD).to(torch.bfloat16)
    pool_bytes = pool.view(torch.int16).numpy().tobytes()
    shift = 0
    with (out / WEIGHTS_FILE).open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for shape in shapes.values():
            left = 2 * _numel(shape)
            while left:
                count = min(left, 2 * WRITE_CHUNK)
                handle.write(pool_bytes[shift : shift + count])
                left -= count
                shift = (shift + POOL_SHIFT_BYTES) % (2 * WRITE_CHUNK)
    build_tokenizer(family="qwen2").save_pretrained(str(out))
    project = {
        "format": PROJECT_FORMAT,
        "format_version": PROJECT_FORMAT_VERSION,
        "model_id": "load-bench-qwen2-1.5b-clip-l",
        "vlm_config": config.to_dict(),
        **model.sub_configs(),
    }
    (out / PROJECT_CONFIG_FILE).write_text(json.dumps(project, indent=2) + "\n")
    return out


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def load_old_path(source: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The loader before meta + assign (commit a1112b2), reproduced as the named baseline.

    Builds the model in float32 on CPU with transformers' ``no_init_weights`` (which patches
    ``torch.nn.init`` process-wide), casts it to ``dtype``, then for each safetensors file reads
    every tensor of the memory-mapped file into a dict and copies it into the model.
    """
    from safetensors import safe_open
    from transformers.initialization import no_init_weights

    from lrs_core.models.loading.files import PROJECT_CONFIG_FILE, read_json, safetensors_files
    from lrs_core.models.loading.project import configs_from_header
    from lrs_core.models.vlm import VisionLanguageModel

    config, vision_config, llm_config = configs_from_header(
        read_json(source / PROJECT_CONFIG_FILE), source=source
    )
    with torch.device("cpu"), no_init_weights():
        model = VisionLanguageModel(config, vision_config=vision_config, llm_config=llm_config)
    model = model.to(dtype=dtype)
    with torch.no_grad():
        for file in safetensors_files(source):
            part: dict[str, torch.Tensor] = {}
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                    part[key] = handle.get_tensor(key)
            if llm_config.tie_word_embeddings and "llm.lm_head.weight" not in part:
                part["llm.lm_head.weight"] = part["llm.model.embed_tokens.weight"]
            model.load_state_dict(part, strict=False)
    if llm_config.tie_word_embeddings:
        model.llm.tie_weights()
    return model.eval()


def measure(path: str, source: Path) -> dict[str, Any]:
    """Load ``source`` in bf16 on CPU by ``path`` (``new``/``old``) here; report its memory."""
    from lrs_core.models import runtime
    from lrs_core.models.loading.auto import load_model

    baseline = runtime.peak_rss_bytes()
    start = time.perf_counter()
    model: torch.nn.Module
    if path == "new":
        model = load_model(source, device="cpu", dtype=torch.bfloat16).model
    else:
        model = load_old_path(source, torch.bfloat16)
    seconds = time.perf_counter() - start
    peak = runtime.peak_rss_bytes()
    weights = runtime.weights_bytes(model)
    return {
        "path": path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_bytes": weights,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_above_baseline_bytes": peak - baseline,
        "peak_over_weights": (peak - baseline) / weights,
        "load_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lrs-load-bench"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--measure", choices=["new", "old"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure:  # the child process: one load, one JSON line
        print(json.dumps(measure(args.measure, args.dir)))
        return
    start = time.perf_counter()
    write_model(args.dir)
    build_seconds = time.perf_counter() - start
    results = {}
    for path in ("new", "old"):
        child = subprocess.run(
            [sys.executable, __file__, "--dir", str(args.dir), "--measure", path],
            capture_output=True,
            text=True,
            check=True,
        )
        results[path] = json.loads(child.stdout.strip().splitlines()[-1])
    ratio = (
        results["old"]["peak_above_baseline_bytes"] / results["new"]["peak_above_baseline_bytes"]
    )
    summary = {
        "commit": git_commit(),
        "model_dir": str(args.dir),
        "build_seconds": build_seconds,
        "new": results["new"],
        "old": results["old"],
        "old_over_new": ratio,
    }
    if args.json:
        print(json.dumps(summary))
        return
    new, old = results["new"], results["old"]
    print(
        f"model: {new['parameters'] / 1e9:.2f} B parameters, "
        f"weights {new['weights_bytes'] / GIB:.2f} GiB bf16"
    )
    for row in (new, old):
        print(
            f"{row['path']:>4}: peak RSS above baseline "
            f"{row['peak_above_baseline_bytes'] / GIB:.2f} GiB"
            f" = {row['peak_over_weights']:.2f} x weights_bytes, load {row['load_seconds']:.1f} s"
        )
    print(f"old / new peak: {ratio:.2f} x (commit {summary['commit']})")


if __name__ == "__main__":
    main()
