"""``lrs serve``: the analyst's map of ingested scenes and answers (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lrs_core.cli import EXIT_USAGE
from lrs_core.cli._common import console, fail, print_json


def serve(
    stores: Annotated[
        Path, typer.Option("--stores", help="Folder of <scene_id>.zarr stores (lrs ingest --out).")
    ],
    answers: Annotated[
        list[Path] | None,
        typer.Option("--answers", help="Answer folder (batch output); repeat for several runs."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind; loopback unless you mean it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON line (url, stores, answers) once serving."),
    ] = False,
) -> None:
    """Serve a map of the scenes (XYZ tiles) and the answers (GeoJSON, heat maps) on HTTP."""
    import uvicorn

    from lrs_core.errors import ConfigError
    from lrs_core.serve.app import ServeConfig, create_app

    try:
        config = ServeConfig(
            stores_dir=stores, answer_dirs=tuple(answers or ()), host=host, port=port
        )
    except ConfigError as err:
        fail(str(err), code=EXIT_USAGE)
    app = create_app(config)
    url = f"http://{host}:{port}/"
    if as_json:
        print_json(
            {
                "url": url,
                "stores": str(config.stores_dir),
                "answers": [str(path) for path in config.answer_dirs],
            }
        )
    else:
        console.print(f"lrs serve: {url} (Ctrl-C stops)", highlight=False)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the ``lrs`` application."""
    app.command("serve")(serve)
