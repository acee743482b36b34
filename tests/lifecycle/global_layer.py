"""A global-layer program for the lifecycle tests (the cloud's own comes from stacks/, and may not exist yet): a
function of the multi-region Deployment that returns the stack outputs, the contract `byoc.engines.global_program_for`
names. The stand-in `pulumi` never runs a program, so it only has to be importable and follow that contract."""

from __future__ import annotations

from typing import Any

from byoc.resolve import Deployment


def program(deployment: Deployment) -> dict[str, Any]:
    return {"entry_name": f"{deployment.name}.byoc.internal", "regions": deployment.region_names}
