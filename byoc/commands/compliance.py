"""`byoc compliance report`: the compliance evidence pack (compliance/)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    del app  # commands land with the compliance work
