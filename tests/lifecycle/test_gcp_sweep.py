"""The GCP leftover sweep (what `byoc destroy` runs after the stack is gone) against recorded Google API responses
served from 127.0.0.1 (no live Google API: tests/lifecycle/data/gcp/README.md): deployment qwen-eu's labelled and
named leftovers among bystanders, the dry run, the deletions in dependency order, and a kind it cannot list."""

from __future__ import annotations

from typing import Any

import pytest

from byoc.clouds import get_cloud
from byoc.clouds.checks import SweepReport, SweepTarget
from tests.lifecycle.conftest import GCP_PROJECT, GcpApi

TARGET = SweepTarget(deployment="qwen-eu", cluster="byoc-qwen-eu", region="europe-west4")
NUMBER = "123456789012"
COMPUTE = f"/compute/v1/projects/{GCP_PROJECT}"
KEYS = f"/v1/projects/{GCP_PROJECT}/locations/europe-west4/keyRings/byoc-qwen-eu/cryptoKeys"
KEY_NAMES = KEYS.removeprefix("/v1/")
ACCOUNTS = f"/v1/projects/{GCP_PROJECT}/serviceAccounts"


@pytest.fixture
def api(gcp_api: GcpApi, monkeypatch: pytest.MonkeyPatch) -> GcpApi:
    for name in list(__import__("os").environ):
        if name.startswith(("GOOGLE_", "CLOUDSDK_", "BYOC_GCP_")):
            monkeypatch.delenv(name)
    for name, value in gcp_api.env({}).items():
        monkeypatch.setenv(name, value)
    # a GPU node VM GKE left behind (its cluster's labels on it)
    gcp_api.routes["GET", f"{COMPUTE}/aggregated/instances"] = (200, "compute/instances.aggregatedList.qwen-eu.json")
    return gcp_api


def sweep(delete: bool, **options: Any) -> tuple[SweepReport, list[float]]:
    sleeps: list[float] = []
    options = {"first_delay_s": 0.01, "sleep": sleeps.append, "wait_s": 10} | options
    return get_cloud("gcp").sweep(TARGET, delete=delete, **options), sleeps


LEFTOVERS = [
    ("cluster", "europe-west4/byoc-qwen-eu", "found"),
    ("instance", "europe-west4-b/gke-byoc-qwen-eu-byoc-gpu-5f3c1a2b-x7k2", "found"),
    ("disk", "europe-west4-b/pvc-1f0e9d8c-7b6a-4d5e-9f00-112233445566", "found"),
    ("log-sink", "byoc-qwen-eu-audit-logs", "found"),
    ("bucket", f"byoc-qwen-eu-access-logs-{NUMBER}", "found"),
    ("bucket", f"byoc-qwen-eu-artifacts-{NUMBER}", "found"),
    ("bucket", f"byoc-qwen-eu-audit-logs-{NUMBER}", "retained"),
    ("kms-key", f"{KEY_NAMES}/artifacts", "found"),
    ("kms-key", f"{KEY_NAMES}/disks", "found"),
    ("kms-key", f"{KEY_NAMES}/logs", "retained"),  # the audit bucket, kept, encrypts with it
    ("kms-key", f"{KEY_NAMES}/secrets", "scheduled"),
    ("service-account", f"byoc-qwen-eu-gpu-nodes@{GCP_PROJECT}.iam.gserviceaccount.com", "found"),
    ("service-account", f"byoc-qwen-eu-nodes@{GCP_PROJECT}.iam.gserviceaccount.com", "found"),
    ("service-account", f"byoc-qwen-eu-serving@{GCP_PROJECT}.iam.gserviceaccount.com", "found"),
    ("firewall", "byoc-qwen-eu-control-plane-webhooks", "found"),
    ("firewall", "byoc-qwen-eu-deny-ingress", "found"),
    ("firewall", "gke-byoc-qwen-eu-0a1b2c3d-all", "found"),
    ("router", "europe-west4/byoc-qwen-eu", "found"),
    ("subnetwork", "europe-west4/byoc-qwen-eu-nodes", "found"),
    ("network", "byoc-qwen-eu", "found"),
]


def test_dry_run_lists_the_deployments_leftovers_and_deletes_nothing(api: GcpApi) -> None:
    report, _ = sweep(delete=False)
    assert report.errors == [] and report.skipped == ""
    assert [(r.kind, r.id, r.action) for r in report.resources] == LEFTOVERS
    # bystanders: another team's cluster, the attached boot disk, a bucket with the prefix but not the label,
    # qwen-eu-2's service account, the default network's rules, router and subnet
    tags = {(r.kind, r.id): r.tag for r in report.resources}
    assert tags["cluster", "europe-west4/byoc-qwen-eu"] == "byoc-deployment=qwen-eu (node pools: byoc-gpu, system)"
    assert tags["log-sink", "byoc-qwen-eu-audit-logs"] == "name byoc-qwen-eu-audit-logs"
    assert tags["firewall", "gke-byoc-qwen-eu-0a1b2c3d-all"] == "network byoc-qwen-eu"
    assert [c for c in api.calls if c[0] != "GET"] == []
    listed = {(m, p): q for m, p, q in api.calls}
    assert listed["GET", f"{COMPUTE}/aggregated/disks"] == {"filter": "labels.byoc-deployment = qwen-eu"}
    assert listed["GET", "/storage/v1/b"] == {"project": GCP_PROJECT, "prefix": "byoc-qwen-eu-"}
    # what the destroy flow counts: a retained bucket and key and a scheduled key are as far as a sweep goes
    assert len(report.remaining) == len(LEFTOVERS) - 3


def test_delete_in_dependency_order(api: GcpApi) -> None:
    api.busy[f"{COMPUTE}/global/networks/byoc-qwen-eu"] = 1  # a GKE firewall was still going away
    report, sleeps = sweep(delete=True)
    artifacts = f"/storage/v1/b/byoc-qwen-eu-artifacts-{NUMBER}"
    assert api.deletes() == [
        f"DELETE /v1/projects/{GCP_PROJECT}/locations/europe-west4/clusters/byoc-qwen-eu",
        f"DELETE {COMPUTE}/zones/europe-west4-b/instances/gke-byoc-qwen-eu-byoc-gpu-5f3c1a2b-x7k2",
        f"DELETE {COMPUTE}/zones/europe-west4-b/disks/pvc-1f0e9d8c-7b6a-4d5e-9f00-112233445566",
        f"DELETE /v2/projects/{GCP_PROJECT}/sinks/byoc-qwen-eu-audit-logs",
        f"DELETE /storage/v1/b/byoc-qwen-eu-access-logs-{NUMBER}",
        f"DELETE {artifacts}/o/engines%2Fqwen2.5-7b%2Fconfig.json",
        f"DELETE {artifacts}/o/engines%2Fqwen2.5-7b%2Fconfig.json",
        f"DELETE {artifacts}",
        f"POST {KEYS}/artifacts/cryptoKeyVersions/1:destroy",
        f"POST {KEYS}/disks/cryptoKeyVersions/1:destroy",
        f"DELETE {ACCOUNTS}/byoc-qwen-eu-gpu-nodes@{GCP_PROJECT}.iam.gserviceaccount.com",
        f"DELETE {ACCOUNTS}/byoc-qwen-eu-nodes@{GCP_PROJECT}.iam.gserviceaccount.com",
        f"DELETE {ACCOUNTS}/byoc-qwen-eu-serving@{GCP_PROJECT}.iam.gserviceaccount.com",
        f"DELETE {COMPUTE}/global/firewalls/byoc-qwen-eu-control-plane-webhooks",
        f"DELETE {COMPUTE}/global/firewalls/byoc-qwen-eu-deny-ingress",
        f"DELETE {COMPUTE}/global/firewalls/gke-byoc-qwen-eu-0a1b2c3d-all",
        f"DELETE {COMPUTE}/regions/europe-west4/routers/byoc-qwen-eu",
        f"DELETE {COMPUTE}/regions/europe-west4/subnetworks/byoc-qwen-eu-nodes",
        f"DELETE {COMPUTE}/global/networks/byoc-qwen-eu",  # refused once: in use
        f"DELETE {COMPUTE}/global/networks/byoc-qwen-eu",
    ]
    # each object version by its generation; the cluster's operation waited for before the VMs
    generations = [q.get("generation") for m, p, q in api.calls if m == "DELETE" and "/o/" in p]
    assert generations == ["1733140800000001", "1733140800000002"]
    operation = [i for i, c in enumerate(api.calls) if "/operations/" in c[1]]
    first_instance = next(i for i, c in enumerate(api.calls) if c[0] == "DELETE" and "/instances/" in c[1])
    assert operation and operation[0] < first_instance
    assert sleeps == [0.01, 0.01]  # one poll of the GKE operation, one retry of the network
    actions = {(r.kind, r.id): r.action for r in report.resources}
    assert actions["bucket", f"byoc-qwen-eu-audit-logs-{NUMBER}"] == "retained"
    assert actions["kms-key", f"{KEY_NAMES}/logs"] == "retained"  # the retained audit bucket still needs it
    assert actions["kms-key", f"{KEY_NAMES}/artifacts"] == "scheduled"
    assert actions["network", "byoc-qwen-eu"] == "deleted"
    assert report.remaining == [] and report.errors == []
    logs_key = next(r for r in report.resources if r.id.endswith("/logs"))
    assert "retained bucket" in logs_key.error


def test_a_kind_it_cannot_list_is_an_error_and_the_rest_go_on(api: GcpApi) -> None:
    api.routes["GET", ACCOUNTS] = (403, "errors/403.regions.get.json")
    report, _ = sweep(delete=False)
    assert len(report.errors) == 1
    assert report.errors[0].startswith("could not list service-accounts: HTTP 403 forbidden")
    assert {r.kind for r in report.resources} >= {"cluster", "network", "kms-key"}
    assert "service-account" not in {r.kind for r in report.resources}


def test_without_credentials_it_says_it_could_not_look(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(("GOOGLE_", "CLOUDSDK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    report, _ = sweep(delete=True)
    assert report.resources == []
    assert report.errors and "no Google Cloud credentials found" in report.errors[0]
