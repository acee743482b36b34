"""The deployment state machine: every legal and every illegal transition, enforced in the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from byoc.errors import ByocError
from byoc.registry import TRANSITIONS, Registry, State

ALL: list[State | None] = [None, *State]
PAIRS = [(current, target) for current in ALL for target in State]


def _in_state(registry: Registry, state: State | None) -> None:
    """A deployment named demo that is in `state` (None: no record)."""
    if state is None:
        return
    registry.create(
        name="demo",
        cloud="aws",
        region="eu-west-2",
        requested_region="EUROPE",
        shape="h100x1-fp8",
        instance_type="p5.4xlarge",
        spec={"name": "demo"},
        backend="file:///tmp/state",
    )
    path: dict[State, list[State]] = {
        State.CREATING: [],
        State.DEPLOYING: [State.DEPLOYING],
        State.DEPLOYED: [State.DEPLOYING, State.DEPLOYED],
        State.SCALING: [State.DEPLOYING, State.DEPLOYED, State.SCALING],
        State.UPDATING: [State.DEPLOYING, State.DEPLOYED, State.UPDATING],
        State.FAILED: [State.FAILED],
        State.DELETING: [State.DEPLOYING, State.DEPLOYED, State.DELETING],
        State.DELETED: [State.DEPLOYING, State.DEPLOYED, State.DELETING, State.DELETED],
    }
    for step in path[state]:
        registry.transition("demo", step)
    record = registry.get("demo")
    assert record is not None and record.state is state


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{c.value if c else 'none'}-{t.value}" for c, t in PAIRS])
def test_transition(tmp_path: Path, current: State | None, target: State) -> None:
    registry = Registry(tmp_path)
    _in_state(registry, current)
    legal = target in TRANSITIONS[current]
    if current is None and target is State.CREATING:
        _in_state(registry, State.CREATING)  # the only way in: create
        return
    if legal:
        after = registry.transition("demo", target, "because")
        assert after.state is target
        assert registry.events("demo")[-1]["message"].endswith(f"-> {target.value}: because")
        return
    before = registry.events("demo") if current else []
    with pytest.raises(ByocError) as refused:
        registry.transition("demo", target)
    assert refused.value.exit_code == 2
    assert f"cannot go to {target.value}" in refused.value.message
    assert (registry.get("demo").state if current else None) is current  # type: ignore[union-attr]
    assert (registry.events("demo") if current else []) == before  # a refused move leaves no trace


def test_a_deleted_name_can_be_created_again(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    _in_state(registry, State.DELETED)
    _in_state(registry, State.CREATING)
    assert registry.require("demo").state is State.CREATING


def test_a_live_name_cannot_be_created_twice(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    _in_state(registry, State.DEPLOYED)
    with pytest.raises(ByocError, match="cannot go to CREATING"):
        _in_state(registry, State.CREATING)


def test_every_state_has_a_way_out_and_failed_can_retry_or_destroy() -> None:
    for state in State:
        assert TRANSITIONS[state], f"{state} is a dead end"
    assert {State.DEPLOYING, State.DELETING} <= TRANSITIONS[State.FAILED]
