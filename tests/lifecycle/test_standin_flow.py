"""The flow byoc's Automation API layer produces, checked with a STAND-IN `pulumi` on PATH
(tests/lifecycle/standin_pulumi.py): it records each command's arguments and answers in the CLI's formats, creating
nothing. No real Pulumi CLI can be installed here; AWS calls (preflight) go to moto and a local Service Quotas
server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from byoc.registry import Registry, State
from tests.conftest import ROOT
from tests.lifecycle.conftest import QuotaServer, StandIn, aws_env, byoc

EXAMPLE = str(ROOT / "tests" / "lifecycle" / "data" / "byoc-one-region.yaml")  # one stack


@pytest.fixture
def run_env(moto_endpoint: str, quota_server: QuotaServer, standin: StandIn, tmp_path: Path) -> dict[str, str]:
    quota_server.applied["L-417A185B"] = 1024
    return standin.env(aws_env(moto_endpoint, quota_server.url)) | {
        "BYOC_HOME": str(tmp_path / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "correct horse",
    }


def stream(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def status(env: dict[str, str]) -> dict[str, Any]:
    result = byoc("status", "demo", "--no-probe", "--output", "json", env=env)
    assert result.returncode == 0, result.stderr
    row: dict[str, Any] = json.loads(result.stdout)[0]
    return row


def test_up_creates_one_stack_per_deployment_in_the_file_backend(run_env: dict[str, str], standin: StandIn) -> None:
    result = byoc("up", "-f", EXAMPLE, "--yes", "--output", "json", env=run_env)
    assert result.returncode == 0, result.stderr
    events = stream(result)
    assert [e["step"] for e in events if e["event"] == "step"] == ["preflight", "pulumi up"]
    assert events[-1]["event"] == "result" and events[-1]["state"] == "DEPLOYED"
    done = [e for e in events if e["event"] == "resource" and e["status"] == "done"]
    assert [e["done"] for e in done] == [1, 2, 3] and done[0]["total"] > 100  # of the offline plan's count
    home = Path(run_env["BYOC_HOME"])
    calls = standin.calls()
    commands = standin.commands()
    assert commands[:3] == ["version", "stack select demo", "stack init demo"]
    up = next(c for c in calls if c["argv"][1:2] == ["up"] or "up" in c["argv"][:2])
    assert "--stack" in up["argv"] and up["argv"][up["argv"].index("--stack") + 1] == "demo"
    assert up["passphrase"] and up["cwd"] == str(home / "work" / "demo")
    project = (home / "work" / "demo" / "Pulumi.yaml").read_text()
    assert "name: byoc-aws" in project and f"url: file://{home / 'state'}" in project
    row = status(run_env)
    assert (row["state"], row["placement"]["region"], row["instance_type"]) == ("DEPLOYED", "eu-west-2", "p5.4xlarge")
    kubeconfig = Path(row["outputs"]["kubeconfig"])
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600  # the secret output is a file only its owner reads
    assert [e["message"].split(":")[0] for e in row["events"]][-3:] == [
        "preflight passed",
        "CREATING -> DEPLOYING",
        "DEPLOYING -> DEPLOYED",
    ]
    again = byoc("up", "--name", "demo", "--yes", "--output", "json", env=run_env)  # safe to run twice
    assert again.returncode == 0, again.stderr
    assert status(run_env)["state"] == "DEPLOYED"


def test_a_failed_up_ends_failed_with_pulumis_reason(run_env: dict[str, str], standin: StandIn) -> None:
    standin.mode("fail")
    result = byoc("up", "-f", EXAMPLE, "--yes", "--output", "json", env=run_env)
    assert result.returncode == 1
    events = stream(result)
    assert any(e.get("status") == "failed" and e["type"] == "aws:eks/cluster:Cluster" for e in events)
    assert events[-1]["error"]["message"] == "pulumi up failed: creating EKS Cluster: AccessDeniedException"
    row = status(run_env)
    assert row["state"] == "FAILED" and "AccessDeniedException" in row["reason"]
    assert row["health"].startswith("failed: pulumi up failed")
    standin.mode("ok")
    retry = byoc("up", "--name", "demo", "--yes", env=run_env)  # FAILED -> DEPLOYING: up resumes
    assert retry.returncode == 0, retry.stderr
    assert status(run_env)["state"] == "DEPLOYED"


def test_interrupted_up_is_recorded_pending_operations_block_until_refresh(
    run_env: dict[str, str], standin: StandIn
) -> None:
    standin.mode("hang")
    running = subprocess.Popen(
        [sys.executable, "-m", "byoc", "up", "-f", EXAMPLE, "--yes", "--output", "json"],
        env=run_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (standin.home / "running").exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    running.send_signal(signal.SIGTERM)  # what a CI runner sends on cancel
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 143, stderr  # 128 + SIGTERM, as a shell reports it
    assert "Pulumi finishes the operations in flight and stops" in stdout + stderr
    row = status(run_env)
    assert row["state"] == "FAILED" and row["interrupted"] is True
    assert row["reason"].startswith("interrupted (SIGTERM)")
    assert row["pending_operations"] == [
        {
            "type": "creating",
            "urn": "urn:pulumi:demo::byoc-aws::aws:eks/cluster:Cluster::demo-cluster",
            "resource_type": "aws:eks/cluster:Cluster",
        }
    ]

    standin.mode("ok")
    refused = byoc("up", "--name", "demo", "--yes", env=run_env)
    assert refused.returncode == 2 and "run `byoc refresh demo` first" in refused.stderr

    refreshed = byoc("refresh", "demo", "--output", "json", env=run_env)
    assert refreshed.returncode == 0, refreshed.stderr
    result = stream(refreshed)[-1]
    assert result["pending_operations"] == [] and len(result["cleared_pending_operations"]) == 1
    assert any("refresh" in c["argv"][:2] and "--clear-pending-creates" in c["argv"] for c in standin.calls())

    resumed = byoc("up", "--name", "demo", "--yes", env=run_env)
    assert resumed.returncode == 0, resumed.stderr
    row = status(run_env)
    assert (row["state"], row["pending_operations"], row["interrupted"]) == ("DEPLOYED", [], False)


def test_a_second_signal_forces_the_stop_and_warns(run_env: dict[str, str], standin: StandIn) -> None:
    standin.mode("stubborn")
    running = subprocess.Popen(
        [sys.executable, "-m", "byoc", "up", "-f", EXAMPLE, "--yes"],
        env=run_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (standin.home / "running").exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    running.send_signal(signal.SIGINT)  # not from a terminal: byoc passes it on to Pulumi
    while not (standin.home / "signals").exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 130  # 128 + SIGINT
    assert "SIGINT: Pulumi finishes the operations in flight and stops" in stderr
    assert "warning: forcing Pulumi to stop: operations in flight will be left pending" in stderr
    assert "run `byoc refresh demo` before the next `byoc up`" in stderr
    assert (standin.home / "signals").read_text() == "2"
    row = status(run_env)
    assert row["reason"].startswith("interrupted (SIGINT, SIGINT)") and len(row["pending_operations"]) == 1


def test_a_crash_ends_failed_with_the_reason_and_no_traceback(run_env: dict[str, str], standin: StandIn) -> None:
    standin.mode("garbage")
    result = byoc("up", "-f", EXAMPLE, "--yes", env=run_env)
    assert result.returncode == 1
    assert "error: byoc: unexpected error: JSONDecodeError" in result.stderr and "Traceback" not in result.stderr
    row = status(run_env)
    assert row["state"] == "FAILED" and row["reason"].startswith("byoc up crashed: JSONDecodeError")


def test_up_asks_before_creating_anything(run_env: dict[str, str], standin: StandIn) -> None:
    result = byoc("up", "-f", EXAMPLE, env=run_env)  # no terminal, no --yes
    assert result.returncode == 2
    assert "--yes: this changes billable resources in your account and needs a confirmation" in result.stderr
    assert not [c for c in standin.commands() if c.startswith("up")]
    assert json.loads(byoc("status", "--output", "json", env=run_env).stdout) == []


def test_scale_changes_only_the_bounds(run_env: dict[str, str], standin: StandIn) -> None:
    assert byoc("up", "-f", EXAMPLE, "--yes", env=run_env).returncode == 0
    result = byoc("scale", "demo", "--min", "1", "--max", "6", "--output", "json", env=run_env)
    assert result.returncode == 0, result.stderr
    outcome = stream(result)[-1]
    changed = {(c["type"], tuple(c["paths"])) for c in outcome["changed"]}
    assert ("kubernetes:apps/v1:Deployment", ("spec.replicas",)) in changed
    assert {t for t, _ in changed} <= {
        "kubernetes:keda.sh/v1alpha1:ScaledObject",
        "kubernetes:karpenter.sh/v1:NodePool",
        "kubernetes:apps/v1:Deployment",
        "kubernetes:core/v1:ConfigMap",
    }
    row = status(run_env)
    assert row["state"] == "DEPLOYED"
    assert [e["message"] for e in row["events"]][-2:] == ["DEPLOYED -> SCALING: replicas 1..6", "SCALING -> DEPLOYED"]
    stored = Registry(Path(run_env["BYOC_HOME"])).require("demo").spec["autoscaling"]
    assert (stored["min_replicas"], stored["max_replicas"]) == (1, 6)
    assert "scale_to_zero_window" not in stored  # only for min_replicas 0


def test_preview_with_a_cloud_backend_and_kms_secrets(run_env: dict[str, str], standin: StandIn) -> None:
    standin.mode("replace")
    env = {k: v for k, v in run_env.items() if k != "PULUMI_CONFIG_PASSPHRASE"}
    result = byoc(
        "preview",
        "-f",
        EXAMPLE,
        "--diff",
        "--backend",
        "s3://team-state/byoc",
        "--secrets-provider",
        "awskms://alias/byoc-state?region=eu-west-2",
        "--output",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    outcome = stream(result)[-1]
    assert outcome["changes"] == {"update": 3}
    assert [(s["op"], s["type"]) for s in outcome["steps"]][-1] == ("replace", "aws:eks/cluster:Cluster")
    init = next(c for c in standin.calls() if c["argv"][1:3] == ["stack", "init"])
    assert init["argv"][init["argv"].index("--secrets-provider") + 1] == "awskms://alias/byoc-state?region=eu-west-2"
    project = Path(init["cwd"], "Pulumi.yaml").read_text()
    assert "url: s3://team-state/byoc" in project
    assert json.loads(byoc("status", "--output", "json", env=env).stdout) == []  # a preview records nothing


def test_update_that_replaces_the_cluster_needs_allow_replace(run_env: dict[str, str], standin: StandIn) -> None:
    assert byoc("up", "-f", EXAMPLE, "--yes", env=run_env).returncode == 0
    standin.mode("replace")
    refused = byoc("update", "demo", "-f", EXAMPLE, env=run_env)
    assert refused.returncode == 2
    assert "--allow-replace: this update replaces aws:eks/cluster:Cluster demo-cluster" in refused.stderr
    assert status(run_env)["state"] == "DEPLOYED"
    allowed = byoc("update", "demo", "-f", EXAMPLE, "--allow-replace", env=run_env)
    assert allowed.returncode == 0, allowed.stderr
    assert [e["message"] for e in status(run_env)["events"]][-2:] == ["DEPLOYED -> UPDATING", "UPDATING -> DEPLOYED"]


def test_unlock_clears_only_a_dead_local_pulumi_lock(run_env: dict[str, str], standin: StandIn) -> None:
    assert byoc("up", "-f", EXAMPLE, "--yes", env=run_env).returncode == 0
    locks = Path(run_env["BYOC_HOME"]) / "state" / ".pulumi" / "locks" / "organization" / "byoc-aws" / "demo"
    locks.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = locks / "8f2c.json"

    def write(pid: int, host: str) -> None:
        lock.write_text(
            json.dumps({"pid": pid, "username": "ci", "hostname": host, "timestamp": "2026-11-29T10:00:00Z"})
        )

    write(os.getpid(), socket.gethostname())
    live = byoc("unlock", "demo", env=run_env)
    assert live.returncode == 2 and "which is running" in live.stderr and lock.exists()
    write(dead.pid, "build-agent-3")
    remote = byoc("unlock", "demo", env=run_env)
    assert remote.returncode == 2 and "another machine" in remote.stderr and lock.exists()
    write(dead.pid, socket.gethostname())
    cleared = byoc("unlock", "demo", "--output", "json", env=run_env)
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["cleared"] == [
        f"Pulumi lock of pid {dead.pid} on {socket.gethostname()} (since 2026-11-29T10:00:00Z)"
    ]
    assert not lock.exists()
    assert Registry(Path(run_env["BYOC_HOME"])).require("demo").state is State.DEPLOYED
