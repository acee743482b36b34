"""`byoc serve gateway|engine|engine-stats`: the serving runtime (runtime/serve/)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    serve = typer.Typer(help="Run the serving runtime: the OpenAI-compatible gateway, the CPU reference engine.")
    app.add_typer(serve, name="serve")
