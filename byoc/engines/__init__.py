"""Engines run a cloud's Pulumi program for a Deployment: offline (Pulumi's mocks, records the resource graph) or
live (Pulumi's Automation API, for users with the Pulumi CLI). Both run the same program function."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from byoc.clouds import get_cloud
from byoc.resolve import Deployment

Program = Callable[[Deployment], dict[str, Any]]


def program_for(deployment: Deployment) -> Program | None:
    """The cloud's program function, imported only now (Pulumi SDKs are heavy)."""
    target = get_cloud(deployment.cloud).stack_program
    if target is None:
        return None
    module, _, function = target.partition(":")
    program: Program = getattr(importlib.import_module(module), function)
    return program
