"""A multi-region deployment (region EUROPE: eu-west-2, the primary, and eu-north-1) driven as one deployment: one
Pulumi stack per region, then the global layer; a region that fails is named and the others keep their state; `up`
resumes; `destroy` takes the global layer first; placement cannot change on `update`; `status` shows every region.

Pulumi is the STAND-IN `pulumi` on PATH (tests/lifecycle/standin_pulumi.py: it follows the CLI's contract and
creates nothing); preflight asks a moto server and a Service Quotas server on 127.0.0.1; the cluster API is a
RECORDED FAKE per region (no API server can run here); the global layer's program is tests/lifecycle/global_layer.py
(the cloud's own comes from stacks/)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from byoc.clouds import get_cloud
from byoc.cluster_api import ClusterUnreachable
from byoc.errors import ByocError, ByocFailure
from byoc.lifecycle import Lifecycle, LiveOptions, Waits
from byoc.progress import Silent
from byoc.registry import Record, Registry, StackState, State
from byoc.spec import build_spec
from tests.lifecycle.conftest import QuotaServer, StandIn, aws_env, byoc

SPEC: dict[str, Any] = {
    "name": "demo",
    "cloud": "aws",
    "region": "EUROPE",
    "model": "llama-3.1-8b-instruct",
    "shape": "h100x1-fp8",
    "autoscaling": {"min_replicas": 1, "max_replicas": 2},
}
PRIMARY, SECOND = "eu-west-2", "eu-north-1"


class RegionClusters:
    """kubectl-shaped objects per region's cluster (found by the regional record's name): the serving Deployment
    and the gateway's internal load balancer; `unreachable` regions answer ClusterUnreachable."""

    def __init__(self, replicas: dict[str, tuple[int, int]]) -> None:
        self.replicas = replicas
        self.unreachable: set[str] = set()

    def __call__(self, record: Record) -> Any:
        if record.name in self.unreachable or record.name not in self.replicas:
            raise ClusterUnreachable(f"no kubeconfig for {record.name}")
        desired, ready = self.replicas[record.name]
        name = record.name
        objects = {
            "deployments.apps": [
                {
                    "metadata": {"name": f"byoc-{name}-serving"},
                    "spec": {"replicas": desired},
                    "status": {"readyReplicas": ready},
                }
            ],
            "services": [
                {
                    "metadata": {"name": f"byoc-{name}-gateway"},
                    "spec": {"type": "LoadBalancer"},
                    "status": {
                        "loadBalancer": {"ingress": [{"hostname": f"{name}.elb.{record.region}.amazonaws.com"}]}
                    },
                }
            ],
        }

        class Cluster:
            def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
                return list(objects.get(kind, []))

            def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
                objects[kind] = [o for o in objects.get(kind, []) if o["metadata"]["name"] != name]

        return Cluster()


class Steps(Silent):
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.messages: list[str] = []

    def step(self, text: str, total: int | None = None) -> None:
        self.steps.append(text)

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture
def env(
    moto_endpoint: str, quota_server: QuotaServer, standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    quota_server.applied["L-417A185B"] = 1024  # P-family vCPUs, in each region
    values = standin.env(aws_env(moto_endpoint, quota_server.url)) | {
        "BYOC_HOME": str(tmp_path / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "correct horse",
    }
    for key in [k for k in os.environ if k.startswith(("AWS_", "PULUMI_"))]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    # the global layer's program (the cloud's own comes from stacks/ and may not be there yet)
    monkeypatch.setattr(type(get_cloud("aws")), "global_stack_program", "tests.lifecycle.global_layer:program")
    return values


@pytest.fixture
def clusters() -> RegionClusters:
    return RegionClusters({"demo-euw2": (1, 1), "demo-eun1": (2, 1)})


@pytest.fixture
def life(env: dict[str, str], clusters: RegionClusters, tmp_path: Path) -> Iterator[tuple[Lifecycle, Steps]]:
    steps = Steps()
    lifecycle = Lifecycle(
        registry=Registry(tmp_path / "home"),
        view=steps,
        cluster_for=clusters,
        waits=Waits(poll_s=0.0),
        sweep_options={"first_delay_s": 0.01, "sleep": lambda _: None, "wait_s": 10},
        sleep=lambda _: None,
    )
    yield lifecycle, steps
    lifecycle.registry.close()


def stacks(registry: Registry) -> dict[str, tuple[str, str]]:
    return {s.stack: (s.region, s.state.value) for s in registry.stacks("demo")}


def pulumi_ran(standin: StandIn, command: str) -> list[str]:
    """The stacks a Pulumi command (up, destroy, refresh) ran on, in order."""
    ran = []
    for call in standin.calls():
        argv = call["argv"]
        if [a for a in argv if not a.startswith("-")][:1] == [command]:
            ran.append(argv[argv.index("--stack") + 1])
    return ran


def test_region_two_fails_the_deployment_names_it_region_one_stays_and_up_resumes(
    life: tuple[Lifecycle, Steps], standin: StandIn
) -> None:
    lifecycle, steps = life
    (standin.home / "fail_stacks").write_text("demo-eun1\n")
    with pytest.raises(ByocFailure) as failed:
        lifecycle.up(build_spec(SPEC), LiveOptions(yes=True))
    assert failed.value.field == "region"
    assert f"region {SECOND} (demo-eun1)" in failed.value.message
    assert "AccessDeniedException" in failed.value.message
    assert f"{PRIMARY} keeps what it reached" in failed.value.hint
    record = lifecycle.registry.require("demo")
    assert record.state is State.FAILED and f"region {SECOND}" in record.reason and PRIMARY not in record.reason
    assert stacks(lifecycle.registry) == {
        "demo-euw2": (PRIMARY, "DEPLOYED"),
        "demo-eun1": (SECOND, "FAILED"),
        "demo-global": ("global", "PENDING"),  # it points at every region: not run while one failed
    }
    # the other regions before the primary, which replicates the model into their buckets (they must exist first)
    assert pulumi_ran(standin, "up") == ["demo-eun1", "demo-euw2"]
    assert [s for s in steps.steps if s.startswith("pulumi up")] == [
        f"pulumi up region {SECOND} (demo-eun1)",
        f"pulumi up region {PRIMARY} (demo-euw2)",
    ]

    # the same spec again: region 1 is skipped (said so), region 2 and the global layer run
    (standin.home / "fail_stacks").unlink()
    before = len(pulumi_ran(standin, "up"))
    result = lifecycle.up(build_spec(SPEC), LiveOptions(yes=True))
    assert result["state"] == "DEPLOYED" and result["skipped"] == ["demo-euw2"]
    assert pulumi_ran(standin, "up")[before:] == ["demo-eun1", "demo-global"]
    assert any(m.startswith(f"region {PRIMARY} (demo-euw2): skipped") for m in steps.messages)
    assert lifecycle.registry.require("demo").state is State.DEPLOYED
    assert {s: state for s, (_, state) in stacks(lifecycle.registry).items()} == {
        "demo-euw2": "DEPLOYED",
        "demo-eun1": "DEPLOYED",
        "demo-global": "DEPLOYED",
    }
    assert result["outputs"]["global"]["cluster_name"] == "byoc-demo-global"  # the stand-in's outputs
    events = [e["message"] for e in lifecycle.registry.events("demo")]
    assert f"preflight passed in {PRIMARY}" in events and f"preflight passed in {SECOND}" in events


def test_status_shows_every_region_and_the_totals(life: tuple[Lifecycle, Steps], env: dict[str, str]) -> None:
    lifecycle, _ = life
    lifecycle.up(build_spec(SPEC), LiveOptions(yes=True))
    [row] = lifecycle.status("demo", probe=False)
    assert row["placement"]["regions"] == [PRIMARY, SECOND]
    regions = {r["region"]: r for r in row["regions"]}
    assert list(regions) == [PRIMARY, SECOND]
    assert regions[PRIMARY]["stack"] == "demo-euw2" and regions[PRIMARY]["state"] == "DEPLOYED"
    assert regions[PRIMARY]["replicas"] == {"desired": 1, "ready": 1}
    assert regions[SECOND]["replicas"] == {"desired": 2, "ready": 1}
    assert regions[SECOND]["endpoint"] == f"https://demo-eun1.elb.{SECOND}.amazonaws.com"
    assert row["replicas"] == {"desired": 3, "ready": 2, "regions": 2}  # the sum of the regions
    assert row["health"].startswith("starting: 1/2 ready (in eu-north-1)")  # the worst region leads
    assert row["global"]["stack"] == "demo-global" and row["global"]["state"] == "DEPLOYED"
    assert row["endpoint"] == "https://demo.byoc.internal"  # the global layer's one private name
    # the CLI shows the same: a line per region and the total
    shown = byoc("status", "demo", "--no-probe", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.split()[:3] == ["region", PRIMARY, "(demo-euw2)"] for line in lines), shown.stdout
    assert any(line.split()[:3] == ["region", SECOND, "(demo-eun1)"] for line in lines), shown.stdout
    assert any(line.split()[:2] == ["global", "demo-global"] for line in lines), shown.stdout
    data = json.loads(byoc("status", "demo", "--no-probe", "--output", "json", env=env).stdout)[0]
    assert [r["region"] for r in data["regions"]] == [PRIMARY, SECOND]
    assert data["regions"][0]["health"].startswith("unknown: cannot read the cluster")  # no kubeconfig in the CLI


def test_destroy_takes_the_global_layer_first_and_resumes_after_a_region_fails(
    life: tuple[Lifecycle, Steps], standin: StandIn
) -> None:
    lifecycle, steps = life
    lifecycle.up(build_spec(SPEC), LiveOptions(yes=True))
    dry = lifecycle.destroy("demo", LiveOptions(yes=False))
    assert [r["region"] for r in dry["regions"]] == [PRIMARY, SECOND] and pulumi_ran(standin, "destroy") == []
    (standin.home / "fail_stacks").write_text("demo-eun1\n")
    with pytest.raises(ByocFailure) as failed:
        lifecycle.destroy("demo", LiveOptions(yes=True))
    assert f"region {SECOND} (demo-eun1)" in failed.value.message
    assert pulumi_ran(standin, "destroy") == ["demo-global", "demo-euw2", "demo-eun1"]  # the global layer first
    assert pulumi_ran(standin, "refresh")[0] == "demo-global"
    record = lifecycle.registry.require("demo")
    assert record.state is State.FAILED and f"region {SECOND}" in record.reason
    assert {s: state for s, (_, state) in stacks(lifecycle.registry).items()} == {
        "demo-euw2": "DELETED",
        "demo-eun1": "FAILED",
        "demo-global": "DELETED",
    }
    # again: only what is left is destroyed; the regions destroyed before are swept again
    (standin.home / "fail_stacks").unlink()
    result = lifecycle.destroy("demo", LiveOptions(yes=True))
    assert result["state"] == "DELETED"
    assert pulumi_ran(standin, "destroy") == ["demo-global", "demo-euw2", "demo-eun1", "demo-eun1"]
    assert [r["stack"] for r in result["regions"]] == ["demo-euw2", "demo-eun1"]
    assert result["regions"][0]["cluster"] == {"skipped": "the stack was destroyed before; sweeping again"}
    assert all(r["leftovers"]["region"] == r["region"] for r in result["regions"])  # each region's own sweep
    assert {state for _, (_, state) in stacks(lifecycle.registry).items()} == {"DELETED"}
    assert "sweep region eu-north-1" in steps.steps


def test_update_that_changes_placement_is_refused_with_nothing_changed(
    life: tuple[Lifecycle, Steps], standin: StandIn, env: dict[str, str], tmp_path: Path
) -> None:
    lifecycle, _ = life
    lifecycle.up(build_spec(SPEC), LiveOptions(yes=True))
    calls, events = len(standin.calls()), len(lifecycle.registry.events("demo"))
    for change, field, words in (
        ({"region": PRIMARY}, "region", "demo runs in eu-west-2, eu-north-1, not eu-west-2"),
        (
            {"region": "GLOBAL", "placement": {"regions": [PRIMARY, SECOND]}},
            "region",
            "demo was placed with residency EUROPE, not residency GLOBAL",
        ),
        ({"placement": {"regions": [SECOND, PRIMARY]}}, "placement.regions", "not eu-north-1, eu-west-2"),
        ({"placement": {"min_regions": 1}}, "region", "runs in eu-west-2, eu-north-1, not eu-west-2"),
    ):
        with pytest.raises(ByocError) as refused:
            lifecycle.update("demo", build_spec(SPEC | change), LiveOptions(yes=True))
        assert refused.value.exit_code == 2 and refused.value.field == field, refused.value
        assert words in refused.value.message and "placement cannot change after creation" in refused.value.message
    spec_file = tmp_path / "moved.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC | {"placement": {"regions": [SECOND, PRIMARY]}}))
    cli = byoc("update", "demo", "-f", str(spec_file), "--yes", env=env)
    assert cli.returncode == 2 and "error: placement.regions: demo runs in eu-west-2, eu-north-1" in cli.stderr
    assert len(standin.calls()) == calls  # Pulumi never ran
    record = lifecycle.registry.require("demo")
    assert record.state is State.DEPLOYED and record.regions == [PRIMARY, SECOND]
    assert [e["kind"] for e in lifecycle.registry.events("demo")[events:]] == []


def test_a_registry_of_an_older_byoc_gains_its_stacks(tmp_path: Path) -> None:
    """An existing BYOC_HOME (schema version 1: no stacks table) opens as version 2 with one stack per deployment,
    so status, destroy and the placement check read it as before."""
    home = tmp_path / "old-home"
    home.mkdir()
    db = sqlite3.connect(home / "registry.db")
    db.executescript(
        """
        CREATE TABLE deployments (name TEXT PRIMARY KEY, cloud TEXT NOT NULL, region TEXT NOT NULL,
            requested_region TEXT NOT NULL, shape TEXT NOT NULL, instance_type TEXT NOT NULL, spec TEXT NOT NULL,
            state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', backend TEXT NOT NULL, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, outputs TEXT NOT NULL DEFAULT '{}', pending_operations TEXT NOT NULL DEFAULT
            '[]', stack_state TEXT, interrupted INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, at TEXT NOT NULL,
            kind TEXT NOT NULL, state TEXT, message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE locks (name TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT,
            command TEXT NOT NULL, acquired_at TEXT NOT NULL);
        """
    )
    db.execute(
        "INSERT INTO deployments VALUES ('old', 'aws', 'eu-west-2', 'EUROPE', 'h100x1-fp8', 'p5.4xlarge', ?, "
        "'DEPLOYED', '', 'file:///x', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', ?, '[]', NULL, 0)",
        (json.dumps(SPEC | {"name": "old"}), json.dumps({"artifact": "s3://b/a"})),
    )
    db.commit()
    db.close()
    registry = Registry(home)
    [stack] = registry.stacks("old")
    assert (stack.region, stack.stack, stack.state, stack.outputs) == (
        "eu-west-2",
        "old",
        StackState.DEPLOYED,
        {"artifact": "s3://b/a"},
    )
    record = registry.require("old")
    assert record.regions == ["eu-west-2"] and record.state is State.DEPLOYED
    assert registry._db.execute("PRAGMA user_version").fetchone()[0] == 2
    registry.close()
    Registry(home).close()  # opening it again changes nothing
    assert len(Registry(home).stacks("old")) == 1


def test_preflight_reports_each_region(env: dict[str, str], tmp_path: Path) -> None:
    spec_file = tmp_path / "demo.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    result = byoc("preflight", "-f", str(spec_file), "--output", "json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert [r["region"] for r in document["regions"]] == [PRIMARY, SECOND]
    # each region holds the whole peak alone (max_replicas 2 + the build Job): 3 x p5.4xlarge in eu-west-2, one
    # p5.48xlarge (8 GPUs: 8 replicas a node) in eu-north-1, which offers no p5.4xlarge
    assert [(r["need"]["instance_type"], r["need"]["instances"]) for r in document["regions"]] == [
        ("p5.4xlarge", 3),
        ("p5.48xlarge", 1),
    ]
    for report in document["regions"]:
        assert report["need"]["region"] == report["region"]
        assert [c["check"] for c in report["checks"]] == ["credentials", "offering", "gpu-quota"] and report["ok"]
    text = byoc("preflight", "-f", str(spec_file), env=env)
    headers = [line for line in text.stdout.splitlines() if line.startswith("demo: ")]
    assert [h.rsplit(" in ", 1)[1] for h in headers] == [PRIMARY, SECOND]
