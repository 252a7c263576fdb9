"""``lrs dip``: print the Dynamic Image Pyramid plan of an image size."""

from __future__ import annotations

import typer


def dip_command(
    width: int = typer.Argument(..., help="Scene width in pixels.", min=1),
    height: int = typer.Argument(..., help="Scene height in pixels.", min=1),
    preset: str = typer.Option(
        "default",
        "--preset",
        help="Level rule: 'parity' (the levels of the paper's released code) or 'default' (ours: "
        "levels at least --min-level-ratio apart).",
    ),
    min_level_ratio: float | None = typer.Option(
        None,
        "--min-level-ratio",
        help="default rule: smallest long-side ratio kept between neighbouring levels.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as one JSON line."),
) -> None:
    """Print the Dynamic Image Pyramid (DIP) of a WIDTH x HEIGHT scene.

    The DIP is the ladder of resized views the engine zooms through. Printed: the thumbnail, then
    per tiled level its ratio, resized (h, w), tile grid (rows, cols) and unpadded token grid
    (rows, cols incl. the newline column).
    """
    from rich.console import Console
    from rich.table import Table

    from lrs_core.cli import EXIT_USAGE
    from lrs_core.cli._common import fail, print_json, reported_errors
    from lrs_core.dip.plan import DipConfig, plan_pyramid
    from lrs_core.errors import ConfigError

    overrides = {} if min_level_ratio is None else {"min_level_ratio": min_level_ratio}
    try:
        config = DipConfig.preset(preset, **overrides)
    except ConfigError as err:
        fail(str(err), code=EXIT_USAGE)
    with reported_errors():
        plan = plan_pyramid(width, height, config=config)
    if json_output:
        print_json(plan.to_dict())
        return
    thumb = plan.thumbnail
    table = Table(
        title=f"DIP of {width} x {height} px ({config.rule.value})",
        caption=(
            f"thumbnail (level 0): {thumb.resize_hw[0]} x {thumb.resize_hw[1]} on a "
            f"{thumb.canvas_hw[0]} x {thumb.canvas_hw[1]} canvas, {thumb.tokens} tokens; "
            "sizes are rows x cols; token grids are unpadded, newline column included"
        ),
    )
    for column in ("level", "ratio", "resized", "grid", "tiles", "token grid", "tokens"):
        table.add_column(column, justify="right", no_wrap=True)
    for level in plan.levels:
        table.add_row(
            str(level.dip_level),
            f"{level.ratio:.4g}",
            f"{level.resize_hw[0]} x {level.resize_hw[1]}",
            f"{level.grid_hw[0]} x {level.grid_hw[1]}",
            str(level.n_tiles),
            f"{level.token_grid_with_newline_hw[0]} x {level.token_grid_with_newline_hw[1]}",
            str(level.n_tokens),
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``dip`` command to ``app``."""
    app.command("dip")(dip_command)
