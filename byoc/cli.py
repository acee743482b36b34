"""The `byoc` command line.

Exit codes: 0 ok; 2 invalid input (one message naming the field and a fix, no traceback); 1 a failure while
running. Every command that prints data takes `--output json`. Heavy modules (rich, cloud SDKs, Pulumi) are
imported inside the commands that use them, so `byoc --help` stays instant. The command groups live in
byoc/commands/, one module each.
"""

from __future__ import annotations

from typing import Annotated

import typer

from byoc import __version__
from byoc.commands import addons, build, compliance, live, serve
from byoc.commands import plan as planning

app = typer.Typer(
    name="byoc",
    help="Private LLM inference in your own AWS or GCP account: plan, deploy, serve, and prove compliance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.15 s of imports on every `byoc --help` (docs/performance.md).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"byoc {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print byoc's version and exit."),
    ] = False,
) -> None:
    """Private LLM inference in your own AWS or GCP account: plan, deploy, serve, and prove compliance."""


for group in (planning, live, serve, addons, build, compliance):
    group.register(app)


def main() -> None:
    app()
