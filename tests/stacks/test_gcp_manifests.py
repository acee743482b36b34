"""A GCP plan as a user makes it (`byoc plan`): its rendered manifests pass the same scanners as AWS's
(tests/stacks/test_manifests.py: kubernetes-validate strict, checkov), and its evidence pack has no FAIL. Its custom
resources are validated against their CRD schemas by tests/stacks/test_crd_schemas.py (examples/gcp-l4.yaml)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.stacks.test_manifests import KUBERNETES_VERSION, checkov, documents, plan_to

SPEC: dict[str, Any] = {
    "name": "gke",
    "cloud": "gcp",
    "region": "EUROPE",
    "model": "llama-3.1-8b-instruct",
    "shape": "h100x8-fp8",
    "autoscaling": {"min_replicas": 0, "max_replicas": 4},
    # the runtime image as a user publishes it (the default is unpublished: its pinning would be NOT_ASSESSED)
    "images": {"runtime": "europe-docker.pkg.dev/p/byoc/byoc-runtime@sha256:" + "a" * 64},
}


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plan_to(tmp_path_factory.mktemp("gcp-plan"), SPEC)


def test_manifests_cover_every_declared_object(planned: Path) -> None:
    plan = json.loads((planned / "plan.json").read_text())
    declared = [
        r
        for r in plan["resources"]
        if r["type"].startswith("kubernetes:") and r["type"] != "kubernetes:helm.sh/v3:Release"
    ]
    rendered = documents(planned / "manifests")
    assert len(rendered) == len(declared) > 20
    kinds = {d["kind"] for _, d in rendered}
    assert {"Namespace", "Deployment", "Job", "ScaledObject", "NetworkPolicy", "StorageClass"} <= kinds
    assert not kinds & {"NodePool", "EC2NodeClass"}  # GKE's node pools are Google Cloud resources


def test_builtin_kinds_valid_for_kubernetes_strict(planned: Path) -> None:
    checked, custom = 0, set()
    for path, document in documents(planned / "manifests"):
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            custom.add(f"{document['apiVersion']}/{document['kind']}")
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name}: {error}")
    assert checked > 15
    assert custom == {
        "keda.sh/v1alpha1/ScaledObject",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/PrometheusRule",
    }


def test_checkov_reports_no_failed_check(planned: Path) -> None:
    report = checkov(planned / "manifests")
    failed = report["results"]["failed_checks"]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]
    assert report["summary"]["passed"] > 100
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]


def test_the_evidence_pack_has_no_fail_and_assesses_every_control(planned: Path) -> None:
    summary = json.loads((planned / "compliance" / "summary.json").read_text())
    assert summary["region"].startswith("europe-")
    assert summary["findings"]["FAIL"] == 0 and summary["findings"]["ERROR"] == 0
    assert summary["failing_controls"] == []
    for framework in summary["frameworks"]:
        assert framework["not_assessed"] == 0, framework["framework"]
