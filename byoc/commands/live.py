"""The live commands: `byoc preview|up|destroy`, the same Pulumi program through the Automation API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting
from byoc.commands.plan import CloudName, CloudOpt, RegionOpt, _spec
from byoc.errors import ByocError

if TYPE_CHECKING:
    from byoc.engines.live import Operation


def _live(operation: Operation, file: Path | None, cloud: CloudName | None, region: str | None, output: Output) -> None:
    from byoc.engines import program_for
    from byoc.engines.live import run_live
    from byoc.resolve import resolve

    with reporting(output):
        deployment = resolve(_spec(file, cloud, region, None, None, None))
        program = program_for(deployment)
        if program is None:
            raise ByocError("cloud", f"byoc has no {deployment.cloud} stack yet", "use --cloud aws")
        quiet = output is Output.json
        result = run_live(deployment, program, operation, (lambda _: None) if quiet else print)
    if quiet:
        print_json(result)


def _live_command(operation: Operation, summary: str) -> Callable[..., None]:
    def command(
        file: Annotated[Path, typer.Option("--file", "-f", help="Spec file (byoc.yaml).")],
        cloud: CloudOpt = None,
        region: RegionOpt = None,
        output: OutputOpt = Output.text,
    ) -> None:
        _live(operation, file, cloud, region, output)

    command.__doc__ = summary
    return command


LIVE_COMMANDS: dict[Operation, str] = {
    "preview": "Show what `byoc up` would change in the account (a Pulumi preview; needs the Pulumi CLI).",
    "up": "Create or update the deployment in your account (needs the Pulumi CLI and credentials).",
    "destroy": "Delete everything byoc created for the deployment (needs the Pulumi CLI and credentials).",
}


def register(app: typer.Typer) -> None:
    for name, summary in LIVE_COMMANDS.items():
        app.command(name)(_live_command(name, summary))
