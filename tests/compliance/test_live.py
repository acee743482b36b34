"""Live collectors against a moto server on 127.0.0.1 seeded with byoc's stack shape, compliant properties and
planted failures (tests/compliance/seeded_account.py), a stand-in Kubernetes API for the cluster's objects, a service
that answers AccessDenied, and drift between a plan and the account."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from compliance.checks import all_checks
from tests.compliance.seeded_account import NAME, PLANTED, REGION, KubernetesStandIn, cluster_objects, seed, start_moto
from tests.conftest import ROOT


def env(endpoint: str, **extra: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    values |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **extra,
    }
    return values


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, dict[str, str]]]:
    server, endpoint = start_moto()
    seeded = seed(endpoint)
    yield endpoint, seeded
    server.stop()


@pytest.fixture(scope="module")
def cluster(moto: tuple[str, dict[str, str]]) -> Iterator[KubernetesStandIn]:
    """A stand-in for the cluster's API server (not Kubernetes: an HTTP server answering the list calls) serving
    the objects byoc's plan declares for the deployment, plus planted failures."""
    standin = KubernetesStandIn(cluster_objects(batch_key=moto[1]["platform_key_arn"])).start()
    yield standin
    standin.stop()


def report(out: Path, environment: dict[str, str], *extra: str) -> tuple[subprocess.CompletedProcess[str], list[Any]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "byoc",
            "compliance",
            "report",
            "--live",
            "--cloud",
            "aws",
            "--region",
            REGION,
            "--deployment",
            NAME,
            "--out",
            str(out),
            "--output",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=environment,
        timeout=300,
    )
    found = json.loads((out / "findings.json").read_text()) if (out / "findings.json").exists() else []
    return result, found


def by(found: list[Any], check_id: str) -> dict[str, str]:
    return {f["resource"]["name"]: f["status"] for f in found if f["check_id"] == check_id}


def test_live_findings_follow_what_exists(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, seeded = moto
    result, found = report(tmp_path / "live", env(endpoint))
    assert result.returncode == 1, result.stderr  # the planted failures fail
    assert by(found, "kms_cmk_rotation_enabled") == {
        "platform": "PASS",
        "artifacts": "PASS",
        "stale": "FAIL",
        "shared": "PASS",
    }
    assert by(found, "s3_bucket_kms_encryption") == {
        "byoc-live-artifacts": "PASS",
        "byoc-live-audit-trail": "PASS",
        "byoc-live-scratch": "FAIL",
        "byoc-live-access-logs": "NOT_APPLICABLE",
    }
    assert by(found, "s3_bucket_level_public_access_block")["byoc-live-scratch"] == "FAIL"
    assert by(found, "s3_bucket_secure_transport_policy")["byoc-live-artifacts"] == "PASS"
    assert by(found, "s3_bucket_deny_unencrypted_puts")["byoc-live-artifacts"] == "PASS"
    assert "unrelated" not in by(found, "s3_bucket_versioning_enabled")
    assert by(found, "cloudtrail_multi_region_enabled") == {"byoc-live": "PASS", "byoc-live-debug": "FAIL"}
    # byoc's trail declares management events in the form Prowler recognises; the stray trail is write-only
    assert by(found, "cloudtrail_multi_region_enabled_logging_management_events") == {
        "byoc-live": "PASS",
        "byoc-live-debug": "FAIL",
    }
    # a log group without retention never expires: it keeps logs for more than a year
    retention = by(found, "cloudwatch_log_group_retention_policy_specific_days_enabled")
    assert retention[f"/aws/eks/byoc-{NAME}/cluster"] == "PASS"
    assert retention[f"/byoc/{NAME}/debug"] == "FAIL"
    # every security group of the VPC is read, not only the default one
    assert by(found, "ec2_securitygroup_no_internet_ingress") == {
        f"byoc-{NAME}-endpoints": "PASS",
        f"byoc-{NAME}-debug-ssh": "FAIL",
        # the default group (by id) keeps no rule
        **{n: "PASS" for n, s in by(found, "ec2_securitygroup_default_restrict_traffic").items()},
    }
    ssh = next(f for f in found if f["check_id"] == "ec2_securitygroup_no_internet_ingress" and f["status"] == "FAIL")
    assert ssh["evidence"][0]["value"][0]["fromPort"] == 22
    assert by(found, "vpc_flow_logs_enabled") == {seeded["vpc"]: "PASS"}
    # a workload policy allowing * on * is not scoped to byoc's prefixes
    assert by(found, "iam_workload_roles_scoped_to_prefixes") == {
        f"byoc-{NAME}-serving/byoc-serving": "PASS",
        f"byoc-{NAME}-builder/byoc-builder": "FAIL",
        f"byoc-{NAME}-gateway/byoc-gateway": "PASS",
        f"byoc-{NAME}-batch-worker/byoc-batch-worker": "PASS",
    }
    assert by(found, "ec2_ebs_default_encryption") == {"ebs-encryption-by-default": "FAIL"}
    assert set(by(found, "s3_bucket_object_lock").values()) == {"EXCEPTION"}
    assert set(by(found, "data_residency_region").values()) == {"PASS"}
    assert all(f["resource"]["source"] == "live" for f in found)


def test_every_check_says_something_and_only_planted_failures_fail(
    moto: tuple[str, dict[str, str]], cluster: KubernetesStandIn, tmp_path: Path
) -> None:
    endpoint, _ = moto
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
    result, found = report(tmp_path / "all", env(endpoint), "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1, result.stderr
    said = {f["check_id"] for f in found}
    catalog = {c.id for c in all_checks() if c.cloud in ("aws", "kubernetes")}
    assert catalog - said == set(), "silent checks"
    for finding in found:
        if finding["status"] in ("ERROR", "NOT_ASSESSED", "EXCEPTION", "NOT_APPLICABLE"):
            assert finding["reason"], finding
    failing = {(f["resource"]["name"], f["check_id"]) for f in found if f["status"] == "FAIL"}
    planted = {(p.resource, p.check) for p in PLANTED}
    assert planted - failing == set(), "planted failures missed"
    assert failing - planted == set(), "false positives"
    # the cluster's objects were read through its API
    namespaces = by(found, "k8s_namespace_default_deny_network_policy")
    assert namespaces[f"byoc-{NAME}"] == "PASS"
    assert "team-sandbox" not in namespaces  # not labelled as byoc's: never listed
    assert set(by(found, "k8s_workload_security_context_restricted").values()) == {"PASS"}
    assert by(found, "karpenter_nodepool_bounded") == {"byoc-gpu": "PASS", "byoc-gpu-burst": "FAIL"}
    # batch storage, read live: the gateway's flags from the cluster, the bucket's lifecycle and key from S3
    assert by(found, "s3_batch_storage_expiry")[f"byoc-{NAME}-artifacts"] == "PASS"
    assert by(found, "s3_batch_storage_cmk_encryption")[f"byoc-{NAME}-artifacts"] == "PASS"
    assert by(found, "karpenter_nodeclass_imdsv2_required") == {"byoc-gpu": "PASS", "byoc-gpu-legacy": "FAIL"}
    # an API the account's endpoint does not serve is an ERROR with the API's answer, not silence
    addons = next(f for f in found if f["check_id"] == "eks_network_policy_enforced")
    assert addons["status"] == "ERROR" and "eks add-ons" in addons["reason"]
    # a CRD the cluster does not have: not assessed, and why
    alerts = next(f for f in found if f["check_id"] == "monitoring_alerts_defined")
    assert alerts["status"] == "NOT_ASSESSED" and "monitoring.coreos.com/v1" in alerts["reason"]


def test_without_kubeconfig_cluster_checks_say_no_cluster_access(
    moto: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, _ = moto
    _, found = report(tmp_path / "nocluster", env(endpoint))
    for check_id in (
        "k8s_namespace_default_deny_network_policy",
        "karpenter_nodepool_bounded",
        "karpenter_nodeclass_imdsv2_required",
        "karpenter_nodeclass_ebs_encrypted",
    ):
        statuses = [(f["status"], f["reason"]) for f in found if f["check_id"] == check_id]
        assert len(statuses) == 1 and statuses[0][0] == "NOT_ASSESSED", statuses
        assert "no cluster access" in statuses[0][1] and "--kubeconfig" in statuses[0][1]
    markdown = (tmp_path / "nocluster" / "report.md").read_text()
    assert "## Not assessed" in markdown and "no cluster access" in markdown


def test_a_cluster_that_refuses_the_token_is_an_error(
    moto: tuple[str, dict[str, str]], cluster: KubernetesStandIn, tmp_path: Path
) -> None:
    endpoint, _ = moto
    kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", token="wrong")
    result, found = report(tmp_path / "refused", env(endpoint), "--kubeconfig", str(kubeconfig))
    assert "Traceback" not in result.stderr
    pools = [f for f in found if f["check_id"] == "karpenter_nodepool_bounded"]
    assert [f["status"] for f in pools] == ["ERROR"]
    assert "401" in pools[0]["reason"]


def test_declined_properties_are_exceptions_in_every_format(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from trestle.oscal.assessment_results import AssessmentResults

    endpoint, _ = moto
    _, found = report(tmp_path / "pack", env(endpoint))
    lock = [f for f in found if f["check_id"] == "s3_bucket_object_lock"]
    assert lock and {f["status"] for f in lock} == {"EXCEPTION"}
    assert "by design" in lock[0]["reason"]
    replication = [f for f in found if f["check_id"] == "s3_bucket_cross_region_replication"]
    assert {f["status"] for f in replication} == {"EXCEPTION"} and "data residency" in replication[0]["reason"]
    markdown = (tmp_path / "pack" / "report.md").read_text()
    assert "## Exceptions (declined by design)" in markdown and "data residency" in markdown
    assert "EXCEPTION" in (tmp_path / "pack" / "report.html").read_text()
    results = AssessmentResults.oscal_read(tmp_path / "pack" / "oscal" / "assessment-results.json")
    assert results is not None
    observations = results.results[0].observations or []
    excepted = [o for o in observations if any(p.name == "status" and p.value == "EXCEPTION" for p in o.props or [])]
    assert excepted and "by design" in excepted[0].description
    components = (tmp_path / "pack" / "oscal" / "component-definition.json").read_text()
    assert "Declined by design" in components and "s3_bucket_object_lock" in components


def test_access_denied_becomes_error_and_the_report_is_still_written(
    moto: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, _ = moto

    class Denied(BaseHTTPRequestHandler):
        body = json.dumps({"__type": "AccessDeniedException", "message": "not authorized to cloudtrail"}).encode()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Denied)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        denied = f"http://127.0.0.1:{server.server_address[1]}"
        result, found = report(tmp_path / "denied", env(endpoint, AWS_ENDPOINT_URL_CLOUDTRAIL=denied))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    trail = [f for f in found if f["check_id"] == "cloudtrail_multi_region_enabled"]
    assert [f["status"] for f in trail] == ["ERROR"]
    assert "AccessDenied" in trail[0]["reason"]
    assert by(found, "kms_cmk_rotation_enabled")["platform"] == "PASS"  # other services still read
    assert (tmp_path / "denied" / "report.html").exists()
    assert (tmp_path / "denied" / "oscal" / "assessment-results.json").exists()


def test_drift_between_the_plan_and_the_account(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, _ = moto
    spec = yaml.safe_load((ROOT / "examples" / "byoc.yaml").read_text())
    spec |= {"name": NAME, "region": REGION}
    (tmp_path / "byoc.yaml").write_text(yaml.safe_dump(spec))
    planned = subprocess.run(
        [sys.executable, "-m", "byoc", "plan", "-f", str(tmp_path / "byoc.yaml"), "--out", str(tmp_path / "plan")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert planned.returncode == 0, planned.stderr
    result, _ = report(tmp_path / "drift", env(endpoint), "--plan", str(tmp_path / "plan" / "plan.json"))
    summary = json.loads(result.stdout)
    drift = {d["check_id"]: d for d in summary["drift"]}
    assert drift["kms_cmk_rotation_enabled"]["declared"] == "PASS"
    assert drift["kms_cmk_rotation_enabled"]["live"] == "FAIL"
    assert drift["kms_cmk_rotation_enabled"]["resources"] == ["stale"]
    assert "vpc_flow_logs_enabled" not in drift  # declared and live agree
    assert "Drift (declared vs live)" in (tmp_path / "drift" / "report.md").read_text()


def test_no_credentials_is_one_clear_failure(moto: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """Without credentials the report says so once (as `regions --refresh` does), not one ERROR per check."""
    endpoint, _ = moto
    environment = env(endpoint)
    del environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"]
    environment |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    environment |= {"AWS_EC2_METADATA_DISABLED": "true"}
    result, found = report(tmp_path / "nocreds", environment)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --live: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "(or run in a role), then run it again)"
    ]
    assert json.loads(result.stdout)["error"]["field"] == "--live"
    assert found == [] and not (tmp_path / "nocreds").exists()
