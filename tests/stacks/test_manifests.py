"""The rendered manifests pass the checks operators' scanners run: kubernetes-validate (strict, Kubernetes 1.31)
and checkov, on the `byoc plan` output for a BF16 shape with a LoRA addon scaling 0..4."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

KUBERNETES_VERSION = "1.31"
SPEC = {
    "name": "lora",
    "cloud": "aws",
    "region": "US",
    "model": "llama-3.1-8b-instruct",
    "shape": "h100x1-bf16",
    "max_context": 16384,
    "addons": [{"id": "support-tone", "source": "s3://acme-adapters/support-tone/", "rank": 16}],
    "autoscaling": {"min_replicas": 0, "max_replicas": 4},
}


RUNTIME_DIGEST = "123456789012.dkr.ecr.us-east-1.amazonaws.com/byoc-runtime@sha256:" + "ab" * 32


def plan_to(out: Path, spec_data: dict[str, Any]) -> Path:
    spec = out / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data))
    result = subprocess.run(
        [sys.executable, "-m", "byoc", "plan", "-f", str(spec), "--out", str(out / "out")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out / "out"


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plan_to(tmp_path_factory.mktemp("plan"), SPEC)


def documents(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.append((path, document))
    return found


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
    for kind in ("Namespace", "Deployment", "Job", "ScaledObject", "NetworkPolicy", "PrometheusRule", "NodePool"):
        assert kind in kinds
    releases = list(yaml.safe_load_all((planned / "helm-releases.yaml").read_text()))
    assert {r["name"] for r in releases} == {"karpenter", "gpu-operator", "keda", "kube-prometheus-stack"}
    assert all(r["version"] for r in releases)


def test_builtin_kinds_valid_for_kubernetes_1_31_strict(planned: Path) -> None:
    checked, custom = 0, set()
    for path, document in documents(planned / "manifests"):
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.SchemaNotFoundError:
            custom.add(f"{document['apiVersion']}/{document['kind']}")  # custom resources: no schema shipped
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name}: {error}")
    assert checked > 15
    assert custom == {
        "karpenter.k8s.aws/v1/EC2NodeClass",
        "karpenter.sh/v1/NodePool",
        "keda.sh/v1alpha1/ScaledObject",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/PrometheusRule",
    }


def test_an_invalid_field_is_caught(planned: Path) -> None:
    """The strict validation is real: an unknown field in a Deployment fails it."""
    deployment = next(d for _, d in documents(planned / "manifests") if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _checkov() -> str:
    candidates = [os.environ.get("BYOC_CHECKOV", ""), str(ROOT / ".venv-checkov" / "bin" / "checkov")]
    found = next((c for c in candidates if c and Path(c).exists()), shutil.which("checkov"))
    if not found:
        pytest.fail("checkov is not installed: run scripts/test.sh (it installs checkov in .venv-checkov)")
    return found


def checkov(folder: Path) -> dict[str, Any]:
    result = subprocess.run(
        [_checkov(), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    return report if isinstance(report, dict) else report[0]


def test_checkov_reports_no_failed_check(planned: Path) -> None:
    report = checkov(planned / "manifests")
    failed = report["results"]["failed_checks"]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]
    summary = report["summary"]
    assert summary["passed"] > 100
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), skipped["check_id"]  # every skip says why


def test_a_pinned_runtime_image_needs_no_skip(tmp_path: Path) -> None:
    out = plan_to(tmp_path, {**SPEC, "images": {"runtime": RUNTIME_DIGEST}})
    results = checkov(out / "manifests")["results"]
    assert results["failed_checks"] == []
    assert results.get("skipped_checks", []) == []


def test_checkov_catches_a_weakened_manifest(planned: Path, tmp_path: Path) -> None:
    """The scan is real: a Deployment that may escalate privileges fails it."""
    folder = tmp_path / "weak"
    shutil.copytree(planned / "manifests", folder)
    path = next(p for p in folder.rglob("deployment-*gateway.yaml"))
    document = yaml.safe_load(path.read_text())
    document["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    path.write_text(yaml.safe_dump(document))
    failed = {f["check_id"] for f in checkov(folder)["results"]["failed_checks"]}
    assert "CKV_K8S_20" in failed


def test_a_runtime_image_pinned_by_tag_is_not_excused(tmp_path: Path) -> None:
    """Only byoc's own unpublished default carries the skip; a user's tag is theirs, and checkov must flag it."""
    out = plan_to(tmp_path, {**SPEC, "images": {"runtime": "registry.example.com/byoc-runtime:0.1.0"}})
    results = checkov(out / "manifests")["results"]
    assert "CKV_K8S_43" in {f["check_id"] for f in results["failed_checks"]}
    assert not [s for s in results.get("skipped_checks", []) if s["check_id"] == "CKV_K8S_43"]
