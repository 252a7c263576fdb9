"""GPU benchmark: seconds per question of a random model of the real 7B dimensions, per preset.

Builds a random model of the paper's Qwen2-7B configuration (Qwen2-7B LLM + CLIP-L/336 tower, RFM
of four layers) directly on the device in bf16: the model is built on ``meta`` and random tensors
are created on the device and assigned (:func:`lrs_core.models.vlm.materialise`), so the host never
holds the weights and nothing is built in float32. Scenes: the synthetic 4000 x 4000 and
27328 x 25207 px GeoTIFFs of ``benchmarks/qa.py``, ingested once into the scratch folder and reused.

For each attention implementation (``sdpa``, and ``flash_attention_2`` when ``flash_attn`` is
installed and the device is CUDA), each scene and each preset (``thumbnail``, ``default``,
``parity``, ``full``), it answers one warm-up question and then ``--questions`` questions on a cold
feature cache, with ``max_new_tokens`` fixed and the end-of-sequence token ignored, so every answer
costs the same decode steps. Printed per row: seconds per question, peak device memory (CUDA
allocator; peak RSS of the process on CPU), vision tiles encoded and LLM prefill tokens. ``full``
runs only where its plan fits ``--max-tiles`` and the device memory; otherwise the row says why.

    .venv/bin/python benchmarks/gpu.py                 # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --tiny --json   # tiny dimensions on CPU (the test suite)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import GIB, git_commit

from lrs_core.models.families.llava import LlavaFamily
from lrs_core.models.loading.loaded import LoadedModel


class NoStopModel(LoadedModel):
    """A loaded model whose answers never stop early (no end-of-sequence ids)."""

    @property
    def stop_token_ids(self) -> list[int]:
        """No stop ids: every answer runs ``max_new_tokens`` decode steps."""
        return []


#: Qwen2-7B (Qwen/Qwen2-7B-Instruct config.json).
QWEN2_7B: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
#: The RFM list (four decoder layers: copies of LLM layers 3..6 in the spec's example).
RFM_LAYERS_7B = (4, 5, 6)
#: Tiny dimensions for the CPU run (same geometry: 336-px tiles, 14-px patches).
TINY_LLM: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
TINY_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 336,
    "patch_size": 14,
}
RFM_LAYERS_TINY = (2, 3)
SCENES_7B = ((4000, 4000), (27328, 25207))
#: Tiny scenes: small enough to ingest in seconds, big enough for two DIP levels.
SCENES_TINY = ((800, 800), (1400, 1300))
PRESETS = ("thumbnail", "default", "parity", "full")
QUESTIONS = (
    "How many vehicles are parked near the largest building?",
    "What is the colour of the roof of the building in the north?",
    "Is there a road crossing the field in the centre?",
)
#: Standard deviation of the random weights.
WEIGHT_STD = 0.02
#: Suffixes of RMSNorm / LayerNorm scales, set to 1 so activations stay in range.
_NORM_SUFFIXES = ("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "layrnorm.weight")


def build_random_model(*, tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """A random :class:`LoadedModel` built on ``meta`` and materialised on ``device``/``dtype``."""
    from transformers import CLIPVisionConfig, Qwen2Config

    from lrs_core.models.config import VlmConfig, default_chat_template
    from lrs_core.models.loading.loaded import default_attn_implementation, set_attn_implementation
    from lrs_core.models.loading.paper import CLIP_L14_336
    from lrs_core.models.tiny import build_tokenizer
    from lrs_core.models.vlm import VisionLanguageModel, materialise

    tokenizer = build_tokenizer(family="qwen2")
    llm = dict(TINY_LLM, vocab_size=len(tokenizer)) if tiny else QWEN2_7B
    config = VlmConfig(
        llm_family="qwen2",
        vision_family="clip",
        chat_template=default_chat_template("qwen2"),
        rfm_llm_layers=RFM_LAYERS_TINY if tiny else RFM_LAYERS_7B,
        max_context_tokens=llm["max_position_embeddings"],
    )
    model = VisionLanguageModel.build(
        config,
        vision_config=CLIPVisionConfig(**(TINY_VISION if tiny else CLIP_L14_336)),
        llm_config=Qwen2Config(**llm),
        initialise=False,
    )
    generator = torch.Generator(device=device).manual_seed(0)
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.endswith(_NORM_SUFFIXES):
            weights[key] = torch.ones(tensor.shape, device=device, dtype=dtype)
        elif key.endswith(".bias"):
            weights[key] = torch.zeros(tensor.shape, device=device, dtype=dtype)
        else:
            value = torch.randn(tensor.shape, generator=generator, device=device, dtype=dtype)
            weights[key] = value.mul_(WEIGHT_STD)
    with torch.no_grad():
        materialise(model, weights, device=device, dtype=dtype)
    del weights
    set_attn_implementation(model, default_attn_implementation(device))
    model.llm.generation_config.eos_token_id = None  # EOS ignored: fixed decode steps
    return NoStopModel(
        model=model.eval(),
        tokenizer=tokenizer,
        model_id="gpu-bench-tiny" if tiny else "gpu-bench-qwen2-7b-clip-l336",
        source_dir=Path("."),
        family=LlavaFamily(model, tokenizer),
    )


def prepare_scenes(scratch: Path, sizes: tuple[tuple[int, int], ...]) -> list[tuple[str, Path]]:
    """Stores of the synthetic scenes, written and ingested only when not cached."""
    from qa import SCENES, prepare_scene

    names = {(w, h): name for name, w, h in SCENES}  # the same stores as benchmarks/qa.py
    return [
        (f"{w}x{h}", prepare_scene(scratch, names.get((w, h), f"{w}x{h}"), w, h)) for w, h in sizes
    ]


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The peak memory figure of the device: CUDA allocator peak, or the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    from lrs_core.models.runtime import peak_rss_bytes

    return peak_rss_bytes(), "process_peak_rss"


def run_preset(
    loaded: Any,
    pyramid: Any,
    preset: str,
    *,
    device: torch.device,
    max_new_tokens: int,
    n_questions: int,
    max_tiles: int,
) -> dict[str, Any]:
    """Measure one preset on one scene: warm-up, then ``n_questions`` on a cold feature cache."""
    from lrs_core.focus.engine import FocusConfig, FocusEngine
    from lrs_core.focus.features import FeatureCache

    config = FocusConfig.from_preset(preset, max_new_tokens=max_new_tokens)
    plan = FocusEngine(loaded, config=config, feature_cache=FeatureCache()).plan(
        pyramid, QUESTIONS[0]
    )
    row: dict[str, Any] = {
        "preset": preset,
        "planned_tiles": plan.accounting.vision_tiles_encoded,
        "planned_prefill_tokens": plan.accounting.llm_prefill_tokens,
    }
    if plan.accounting.vision_tiles_encoded > max_tiles:
        return row | {"status": f"skipped: plan needs > --max-tiles {max_tiles} tiles"}
    try:
        FocusEngine(loaded, config=config, feature_cache=FeatureCache()).answer(
            pyramid, "Warm up.", question_id="warmup"
        )
        engine = FocusEngine(loaded, config=config, feature_cache=FeatureCache())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        records = [
            engine.answer(pyramid, QUESTIONS[i % len(QUESTIONS)], question_id=f"q{i}")
            for i in range(n_questions)
        ]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / n_questions
    except torch.OutOfMemoryError as err:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row | {"status": f"did not fit: {str(err).splitlines()[0]}"}
    errors = [r.error for r in records if r.error is not None]
    if errors:
        return row | {"status": f"failed: {errors[0]}"}
    memory, memory_kind = peak_memory(device)
    first = records[0].accounting  # cold cache: the first question encodes every tile
    return row | {
        "status": "measured",
        "seconds_per_question": seconds,
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "vision_tiles": first.vision_tiles_encoded,
        "prefill_tokens": first.llm_prefill_tokens,
        "decode_steps": first.decode_steps,
    }


def attention_implementations(device: torch.device) -> list[str]:
    """``sdpa``, plus ``flash_attention_2`` on CUDA when ``flash_attn`` is installed."""
    names = ["sdpa"]
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attention_2")
    return names


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions (CPU, the test)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--scratch", type=Path, default=Path(__file__).parent / "_scratch")
    parser.add_argument(
        "--scenes", help="comma-separated WIDTHxHEIGHT (default: 4000x4000,27328x25207)"
    )
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--questions", type=int, default=3, help="timed questions per row")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-tiles", type=int, default=2000, help="skip plans above this")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from lrs_core.models.loading.loaded import set_attn_implementation
    from lrs_core.models.runtime import resolve_device
    from lrs_core.raster.pyramid import open_pyramid

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.scenes:
        sizes = tuple(
            (int(w), int(h)) for w, h in (s.lower().split("x") for s in args.scenes.split(","))
        )
    else:
        sizes = SCENES_TINY if args.tiny else SCENES_7B
    torch.manual_seed(0)
    stores = prepare_scenes(args.scratch, sizes)
    start = time.perf_counter()
    loaded = build_random_model(tiny=args.tiny, device=device, dtype=dtype)
    build_seconds = time.perf_counter() - start
    build_memory, memory_kind = peak_memory(device)
    rows = []
    for attention in attention_implementations(device):
        set_attn_implementation(loaded.model, attention)
        for scene, store in stores:
            pyramid = open_pyramid(store)
            for preset in args.presets.split(","):
                row = run_preset(
                    loaded,
                    pyramid,
                    preset,
                    device=device,
                    max_new_tokens=args.max_new_tokens,
                    n_questions=args.questions,
                    max_tiles=args.max_tiles,
                )
                rows.append({"attention": attention, "scene": scene} | row)
    summary = {
        "commit": git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "build_seconds": build_seconds,
        "build_peak_memory_bytes": build_memory,
        "build_peak_memory_kind": memory_kind,
        "max_new_tokens": args.max_new_tokens,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary))
        return summary
    print(
        f"{summary['device']} {summary['dtype']}: {summary['parameters'] / 1e9:.2f} B parameters "
        f"built in {build_seconds:.1f} s (peak {build_memory / GIB:.1f} GiB {memory_kind}); "
        f"max_new_tokens {args.max_new_tokens}, EOS ignored; commit {summary['commit']}"
    )
    header = f"{'attention':<18} {'scene':<12} {'preset':<10} {'s/q':>7} {'peak GiB':>9} "
    print(header + f"{'tiles':>6} {'prefill':>8}  status")
    for row in rows:
        measured = row["status"] == "measured"
        print(
            f"{row['attention']:<18} {row['scene']:<12} {row['preset']:<10} "
            + (
                f"{row['seconds_per_question']:>7.2f} {row['peak_memory_bytes'] / GIB:>9.2f} "
                f"{row['vision_tiles']:>6} {row['prefill_tokens']:>8}  measured"
                if measured
                else f"{'-':>7} {'-':>9} {row['planned_tiles']:>6} "
                f"{row['planned_prefill_tokens']:>8}  {row['status']}"
            )
        )
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
