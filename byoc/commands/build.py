"""`byoc build` and `byoc artifacts`: building a model for a shape (runtime/build/)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    del app  # commands land with the model-build work
