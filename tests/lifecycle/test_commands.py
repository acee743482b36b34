"""What a user sees from the lifecycle commands before anything runs: no Pulumi CLI, an empty registry, placement
that cannot change, bad bounds, bad backends, and operations a stopped run left pending.

Tests marked "stand-in" put tests/lifecycle/standin_pulumi.py on PATH as `pulumi`: it checks the arguments and flow
byoc's Automation API layer produces and creates nothing (no Pulumi CLI can be installed here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from byoc.registry import Registry, State
from tests.conftest import EXAMPLES, ROOT
from tests.lifecycle.conftest import StandIn, byoc, no_pulumi_path

EXAMPLE = str(ROOT / "tests" / "lifecycle" / "data" / "byoc-one-region.yaml")  # one stack
SPEC = {"name": "demo", "cloud": "aws", "region": "eu-west-2", "model": "llama-3.1-8b-instruct", "shape": "h100x1-fp8"}
assert EXAMPLES


def env(home: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PULUMI_"))}
    return base | {"BYOC_HOME": str(home), "PATH": no_pulumi_path()} | extra


def deployed(home: Path, pending: list[dict[str, str]] | None = None, state: State = State.DEPLOYED) -> Registry:
    registry = Registry(home)
    registry.create(
        name="demo",
        cloud="aws",
        region="eu-west-2",
        requested_region="eu-west-2",
        shape="h100x1-fp8",
        instance_type="p5.4xlarge",
        spec=SPEC,
        backend=f"file://{home / 'state'}",
    )
    registry.transition("demo", State.DEPLOYING)
    registry.transition("demo", State.FAILED if state is State.FAILED else State.DEPLOYED, "test")
    if pending:
        registry.update("demo", pending_operations=pending)
    return registry


def test_up_without_the_pulumi_cli_exits_2_with_the_install_hint_and_records_nothing(tmp_path: Path) -> None:
    for args in (["up", "-f", EXAMPLE, "--yes"], ["preview", "-f", EXAMPLE]):
        result = byoc(*args, env=env(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "the Pulumi CLI is not installed" in result.stderr
        assert "get.pulumi.com" in result.stderr and "`byoc plan`" in result.stderr
        assert "Traceback" not in result.stderr
    status = byoc("status", "--output", "json", env=env(tmp_path))
    assert status.returncode == 0
    assert json.loads(status.stdout) == []


def test_status_of_an_empty_registry(tmp_path: Path) -> None:
    result = byoc("status", "--output", "json", env=env(tmp_path / "fresh"))
    assert (result.returncode, result.stdout.strip()) == (0, "[]")
    text = byoc("status", env=env(tmp_path / "fresh"))
    assert "no deployments" in text.stdout


def test_placement_cannot_change(tmp_path: Path) -> None:
    deployed(tmp_path).close()
    moved = byoc("up", "-f", EXAMPLE, "--region", "us-east-1", "--yes", env=env(tmp_path))
    assert moved.returncode == 2
    assert "region: demo runs in eu-west-2, not us-east-1" in moved.stderr
    assert "placement cannot change after creation; destroy and recreate it, or use a new name" in moved.stderr
    other_cloud = byoc(
        "up",
        "--name",
        "demo",
        "--cloud",
        "gcp",
        "--region",
        "EUROPE",
        "--model",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-fp8",
        "-f",
        EXAMPLE,
        "--yes",
        env=env(tmp_path),
    )
    assert other_cloud.returncode == 2
    assert "cloud: demo runs on aws, not gcp" in other_cloud.stderr
    assert Registry(tmp_path).require("demo").state is State.DEPLOYED


def test_unknown_name_and_bad_bounds_exit_2_naming_the_field(tmp_path: Path) -> None:
    deployed(tmp_path).close()
    unknown = byoc("refresh", "nope", env=env(tmp_path))
    assert (
        unknown.returncode == 2
        and "no deployment named 'nope'" in unknown.stderr
        and "known deployments: demo" in unknown.stderr
    )
    bounds = byoc("scale", "demo", "--min", "3", "--max", "2", env=env(tmp_path))
    assert bounds.returncode == 2
    assert "autoscaling.min_replicas: min_replicas 3 is above max_replicas 2" in bounds.stderr
    assert "Traceback" not in bounds.stderr


def test_scale_is_refused_unless_deployed(tmp_path: Path, standin: StandIn) -> None:
    """stand-in: `pulumi` is the argument checker, never reached here."""
    deployed(tmp_path, state=State.FAILED).close()
    result = byoc(
        "scale", "demo", "--min", "0", "--max", "2", env=standin.env(env(tmp_path, PULUMI_CONFIG_PASSPHRASE="x"))
    )
    assert result.returncode == 2
    assert "demo is FAILED; it cannot go to SCALING from there" in result.stderr
    assert "up" not in standin.commands()


def test_backend_and_secrets_flags(tmp_path: Path, standin: StandIn) -> None:
    """stand-in: checks byoc refuses bad backends before any Pulumi command runs."""
    run_env = standin.env(env(tmp_path))
    ftp = byoc("preview", "-f", EXAMPLE, "--backend", "ftp://state", env=run_env | {"PULUMI_CONFIG_PASSPHRASE": "x"})
    assert ftp.returncode == 2 and "--backend: 'ftp://state' is not a backend byoc supports" in ftp.stderr
    no_passphrase = byoc("preview", "-f", EXAMPLE, env=run_env)
    assert no_passphrase.returncode == 2
    assert "PULUMI_CONFIG_PASSPHRASE: the stack's secrets are encrypted with a passphrase" in no_passphrase.stderr
    s3 = byoc("preview", "-f", EXAMPLE, "--backend", "s3://team-state", env=run_env)
    assert s3.returncode == 2 and "--secrets-provider: a cloud backend (s3://team-state) needs" in s3.stderr
    assert [c for c in standin.commands() if c != "version"] == []


def test_pending_operations_block_up_and_destroy_until_refresh(tmp_path: Path, standin: StandIn) -> None:
    """stand-in: the refusal comes before Pulumi runs anything."""
    pending = [
        {
            "type": "creating",
            "urn": "urn:pulumi:demo::byoc-aws::aws:eks/cluster:Cluster::demo-cluster",
            "resource_type": "aws:eks/cluster:Cluster",
        }
    ]
    deployed(tmp_path, pending=pending, state=State.FAILED).close()
    run_env = standin.env(env(tmp_path, PULUMI_CONFIG_PASSPHRASE="x"))
    for args in (["up", "--name", "demo", "--yes"], ["destroy", "demo", "--yes"]):
        result = byoc(*args, env=run_env)
        assert result.returncode == 2, result.stderr
        assert "1 operation(s) Pulumi left pending (creating demo-cluster)" in result.stderr
        assert "run `byoc refresh demo` first" in result.stderr
    assert not [c for c in standin.commands() if c.startswith(("up", "destroy"))]


def test_scale_refuses_changes_beyond_the_bounds() -> None:
    from byoc.clouds import get_cloud
    from byoc.lifecycle import scale_violations

    changed = {
        ("kubernetes:keda.sh/v1alpha1:ScaledObject", "demo-serving-scaler"): ["spec.maxReplicaCount"],
        ("kubernetes:apps/v1:Deployment", "demo-serving"): ["spec.replicas", "spec.template.spec.containers"],
        ("aws:eks/cluster:Cluster", "demo-cluster"): ["version"],
    }
    assert scale_violations(changed, get_cloud("aws").scale_changes) == [
        "kubernetes:apps/v1:Deployment demo-serving (spec.template.spec.containers)",
        "aws:eks/cluster:Cluster demo-cluster (version)",
    ]


def test_status_watch_stops_once_settled(tmp_path: Path) -> None:
    deployed(tmp_path, state=State.FAILED).close()
    result = byoc("status", "--watch", "--interval", "1", "--timeout", "30", "--output", "json", env=env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # FAILED is settled: one look, no waiting
    assert json.loads(lines[0])[0]["health"] == "failed: test"
