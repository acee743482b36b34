"""Offline plans of the AWS program, cached per spec (each run takes a couple of seconds)."""

from __future__ import annotations

import functools
import json
from typing import Any

from byoc.engines import program_for
from byoc.engines.offline import run_offline
from byoc.plan import Plan, RecordedResource
from tests.conftest import deploy


@functools.cache
def _graph(overrides: str) -> Plan:
    deployment = deploy(**json.loads(overrides))
    program = program_for(deployment)
    assert program is not None
    return run_offline(deployment, program)


def graph(**overrides: Any) -> Plan:
    return _graph(json.dumps(overrides, sort_keys=True))


def one(plan: Plan, type_token: str) -> RecordedResource:
    found = plan.by_type(type_token)
    assert len(found) == 1, f"{len(found)} x {type_token}"
    return found[0]


@functools.cache
def _rendered(overrides: str) -> Plan:
    from byoc.engines.offline import render

    plan = render(deploy(**json.loads(overrides)))
    assert plan is not None
    return plan


def rendered(**overrides: Any) -> Plan:
    """The whole plan `byoc plan` records: for a multi-region deployment every regional stack and the global layer
    (each resource's `stack` says which), cached per spec (a two-region plan takes several seconds)."""
    return _rendered(json.dumps(overrides, sort_keys=True))
