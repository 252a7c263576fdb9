"""``lrs setup``: prepare the offline data the project needs (WordNet 3.0 for the scorer)."""

from __future__ import annotations

import typer


def setup_command(
    json_output: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Assemble NLTK's WordNet 3.0 folder from Debian's wordnet-base data (no download)."""
    from lrs_core.cli._common import console, print_json, reported_errors
    from lrs_core.evaluation.wordnet import assemble_wordnet

    with reported_errors():
        result = assemble_wordnet()
    if json_output:
        print_json(
            {
                "wordnet_dir": str(result.target_dir),
                "written": list(result.written),
                "kept": list(result.kept),
                "lexnames_checked": result.lexnames_checked,
            }
        )
        return
    console.print(
        f"WordNet 3.0 for the LRS-VQA scorer: {result.target_dir} "
        f"({len(result.written)} files written, {len(result.kept)} already in place"
        f"{', lexnames checked against lexnames(5WN)' if result.lexnames_checked else ''})",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``setup`` command to ``app``."""
    app.command("setup")(setup_command)
