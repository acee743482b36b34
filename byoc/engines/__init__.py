"""Engines run a cloud's Pulumi program for a Deployment: offline (Pulumi's mocks, records the resource graph) or
live (Pulumi's Automation API, for users with the Pulumi CLI). Both run the same program function."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from byoc.clouds import get_cloud
from byoc.extras import require
from byoc.resolve import Deployment

Program = Callable[[Deployment], dict[str, Any]]


def program_for(deployment: Deployment) -> Program | None:
    """The cloud's program function, imported only now (Pulumi SDKs are heavy).

    Raises:
        ByocError: the cloud's provider SDK is in a pip extra that is not installed (exit 2 with the pip command).
    """
    cloud = get_cloud(deployment.cloud)
    target = cloud.stack_program
    if target is None:
        return None
    if cloud.stack_extra is not None:
        require(cloud.stack_extra, f"--cloud {cloud.name}")
    module, _, function = target.partition(":")
    program: Program = getattr(importlib.import_module(module), function)
    return program


def global_program_for(deployment: Deployment) -> Program | None:
    """The cloud's global-layer program of a multi-region deployment (one private name over the regions' gateways,
    health checks, failover, the peering between regions), imported only now; None where the cloud has none."""
    target = get_cloud(deployment.cloud).global_stack_program
    if target is None:
        return None
    module, _, function = target.partition(":")
    program: Program = getattr(importlib.import_module(module), function)
    return program
