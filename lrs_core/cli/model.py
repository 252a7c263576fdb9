"""``lrs model``: build tiny models, convert checkpoints, describe models and count FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lrs_core.cli._common import (
    LEGACY_POSITIONAL,
    DeviceOpt,
    DtypeOpt,
    check_runtime,
    console,
    fail,
    print_json,
    reported_errors,
)

model_app = typer.Typer(
    name="model",
    help="Build tiny models, convert checkpoints to the project format, inspect them, count FLOPs.",
    no_args_is_help=True,
)


#: ``--family`` names of ``lrs model init-tiny`` (the Qwen-VL ones are
#: ``lrs_core.models.families.qwen_vl_tiny.TINY_QWEN_FAMILIES``; a test keeps them in step).
TINY_FAMILIES = ("llava", "qwen2", "qwen2-vl", "qwen2.5-vl")
#: ``--size`` names of ``lrs model init-tiny``.
TINY_SIZES = ("tiny", "benchmark")


@model_app.command("init-tiny", context_settings=LEGACY_POSITIONAL)
def init_tiny_command(
    ctx: typer.Context,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder to write the model into.")
    ] = None,
    family: Annotated[
        str,
        typer.Option(
            help="llava (Llama, vicuna_v1), qwen2 (Qwen2, ChatML), or qwen2-vl / qwen2.5-vl "
            "(stock Qwen-VL in the Hugging Face layout; --size tiny only)."
        ),
    ] = "llava",
    size: Annotated[str, typer.Option(help="tiny (~0.4 M params) or benchmark (~220 M).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: the model folder and family.")
    ] = False,
) -> None:
    """Build a random model of the real architecture with an offline tokenizer and save it."""
    from lrs_core.cli._common import check_out_path, deprecated_positional, out_path

    out_dir = out_path(out, deprecated_positional(ctx), name="OUT_DIR")
    assert out_dir is not None  # required
    if family not in TINY_FAMILIES:
        fail(f"--family {family!r} must be one of {', '.join(map(repr, TINY_FAMILIES))}", code=2)
    if size not in TINY_SIZES:
        fail(f"--size {size!r} must be 'tiny' or 'benchmark'", code=2)
    qwen_vl = family not in ("llava", "qwen2")
    if qwen_vl and size != "tiny":
        fail(f"--family {family} has only --size tiny", code=2)
    check_out_path(out_dir, kind="folder")
    if qwen_vl:
        from lrs_core.models.families.qwen_vl_tiny import init_tiny_qwen_vl

        with reported_errors():
            path = init_tiny_qwen_vl(out_dir, family=family, seed=seed)  # type: ignore[arg-type]  # checked above
        layout = "Hugging Face layout"
    else:
        from lrs_core.models.tiny import init_tiny

        with reported_errors():
            path = init_tiny(out_dir, family=family, seed=seed, size=size)  # type: ignore[arg-type]  # checked above
        layout = "project layout"
    if as_json:
        print_json(
            {"model_dir": str(path), "family": family, "size": size, "seed": seed, "layout": layout}
        )
        return
    console.print(f"wrote {family} ({size}, {layout}) model to {path}", highlight=False)


@model_app.command("convert", context_settings=LEGACY_POSITIONAL)
def convert_command(
    ctx: typer.Context,
    src: Annotated[Path, typer.Argument(help="Paper release or llava-hf directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (project format).")
    ] = None,
    vision_config: Annotated[
        Path | None,
        typer.Option(help="Paper layout: CLIP config.json or directory (when none is beside SRC)."),
    ] = None,
    llm_layer_list: Annotated[
        str | None,
        typer.Option(help="llava-hf layout: RFM layer list, comma-separated (e.g. 8,16)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: source and converted folder.")
    ] = False,
) -> None:
    """Convert a checkpoint (paper release, llava-hf) to the project format."""
    from lrs_core.cli._common import deprecated_positional, out_path

    dst = out_path(out, deprecated_positional(ctx), name="DST")
    assert dst is not None  # required
    layers: tuple[int, ...] | None = None
    if llm_layer_list:
        try:
            layers = tuple(int(part) for part in llm_layer_list.split(","))
        except ValueError:
            fail(f"--llm-layer-list {llm_layer_list!r} must be comma-separated integers", code=2)
    from lrs_core.models.loading.auto import convert_checkpoint

    with reported_errors():
        path = convert_checkpoint(src, dst, vision_config_path=vision_config, llm_layer_list=layers)
    if as_json:
        print_json({"source": str(src), "model_dir": str(path)})
        return
    console.print(f"converted {src} -> {path}", highlight=False)


@model_app.command("info")
def info_command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (any supported layout).")],
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="Load the weights on --device/--dtype; report weights_bytes, peak_rss_bytes, "
            "load_seconds.",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Describe a model: layout, families, geometry, RFM layers and parameter counts."""
    check_runtime(device, dtype)
    import time

    import torch

    from lrs_core.models import runtime
    from lrs_core.models.loading.auto import detect_layout, load_model
    from lrs_core.models.loading.files import PROJECT_CONFIG_FILE

    stats: runtime.LoadStats | None = None
    with reported_errors(config_is_usage=True):
        layout = detect_layout(model_dir)
        if not load and (model_dir / PROJECT_CONFIG_FILE).is_file():
            from lrs_core.batch.ask import load_engine

            loaded = load_engine(model_dir, preset="thumbnail", weights=False).loaded
        else:
            torch_device = runtime.resolve_device(device)
            if torch_device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(torch_device)
            baseline = runtime.peak_rss_bytes()
            start = time.perf_counter()
            loaded = load_model(model_dir, device=torch_device, dtype=dtype)
            seconds = time.perf_counter() - start
            stats = runtime.LoadStats(
                weights_bytes=runtime.weights_bytes(loaded.model),
                peak_rss_bytes=runtime.peak_rss_bytes(),
                baseline_rss_bytes=baseline,
                load_seconds=seconds,
                peak_gpu_bytes=(
                    int(torch.cuda.max_memory_allocated(torch_device))
                    if torch_device.type == "cuda"
                    else None
                ),
            )
    info = _project_info(loaded, layout)
    if stats is not None:
        model = loaded.model
        info |= {
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "weights_bytes": stats.weights_bytes,
            "peak_rss_bytes": stats.peak_rss_bytes,
            "baseline_rss_bytes": stats.baseline_rss_bytes,
            "load_seconds": stats.load_seconds,
            "peak_gpu_bytes": stats.peak_gpu_bytes,
        }
    _print_info(info, as_json=as_json)


def _print_info(info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


def _project_info(loaded: Any, layout: str) -> dict[str, Any]:
    """``lrs model info`` of a model ``load_model`` reads (its family describes the model)."""
    from lrs_core.models import runtime

    info: dict[str, Any] = {
        "model_id": loaded.model_id,
        "layout": layout,
        **loaded.family.info(),
        "checkpoint_dtype": str(runtime.checkpoint_dtype(loaded.source_dir)).removeprefix("torch."),
        "generation_config": loaded.generation.raw,
        "stop_token_ids": loaded.stop_token_ids,
    }
    return info


@model_app.command("flops")
def flops_command(
    config: Annotated[
        str,
        typer.Option(
            help="Known model dimensions: qwen2-7b, vicuna-7b, qwen2-vl-7b, qwen2-vl-2b, "
            "qwen2.5-vl-7b, qwen2.5-vl-3b (Qwen-VL towers at 336 px tiles)."
        ),
    ],
    vision_tiles: Annotated[int, typer.Option(help="Tiles through the vision tower.")],
    prefill_tokens: Annotated[int, typer.Option(help="Tokens in the LLM prefill.")],
    decode_steps: Annotated[int, typer.Option(help="Generated tokens.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the analytic FLOPs of one call (one multiply-add = 2 FLOPs)."""
    from lrs_core.models.flops import KNOWN_DIMS, count_flops

    if config not in KNOWN_DIMS:
        fail(f"--config {config!r} is not one of {sorted(KNOWN_DIMS)}", code=2)
    with reported_errors():
        count = count_flops(
            KNOWN_DIMS[config],
            vision_tiles=vision_tiles,
            prefill_tokens=prefill_tokens,
            decode_steps=decode_steps,
        )
    result = {
        "vision_flops": count.vision_flops,
        "llm_flops": count.llm_flops,
        "total_flops": count.total_flops,
    }
    if as_json:
        print_json(result)
        return
    for key, value in result.items():
        console.print(f"{key}: {value / 1e12:.2f} TFLOPs", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``model`` command group to the ``lrs`` application."""
    app.add_typer(model_app, name="model")
