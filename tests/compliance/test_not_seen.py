"""Never PASS what was not seen (issue 20, item 2): every check says something in every mode, what a plan cannot show
is NOT_ASSESSED (and so are its controls, in every output), trail selectors are read in both forms with every
operator, key kinds AWS cannot rotate are not applicable, a customer key is assessed live, one count of checks
everywhere, and a live report says when the deployment was not found.

Live cases run against their own moto server on 127.0.0.1 (deployment `cmk`, with planted failures), apart from
the seeded account of test_live.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from compliance.checks import checks_for
from compliance.evaluate import allowed_regions, evaluate
from compliance.model import Graph, Resource, Status
from tests.compliance.seeded_account import start_moto
from tests.compliance.test_live import env
from tests.compliance.test_pack import findings, plan, run
from tests.conftest import ROOT

REGION = "eu-west-2"
NAME = "cmk"
TAGS = [{"Key": "byoc:deployment", "Value": NAME}]
CUSTOMER_KEY = f"arn:aws:kms:{REGION}:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KMS_CHECKS = {
    "kms_cmk_rotation_enabled",
    "kms_key_deletion_window",
    "kms_key_policy_no_public_access",
    "kms_key_policy_service_conditions",
}
TRAIL = "aws:cloudtrail/trail:Trail"
KEY = "aws:kms/key:Key"
MANAGEMENT = "cloudtrail_multi_region_enabled_logging_management_events"


def judge(check_id: str, *resources: Resource) -> list[tuple[Status, str]]:
    graph = Graph(list(resources), "demo", REGION, "EUROPE", allowed_regions("aws", "EUROPE", REGION), "plan")
    return [(f.status, f.reason) for f in evaluate(graph) if f.check.id == check_id]


# -- a customer key in the plan -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def customer_key_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a customer key lives in one region: the deployment is pinned to it
    return plan(tmp_path_factory.mktemp("cmk"), region=REGION, encryption={"kms_key": CUSTOMER_KEY})


def test_a_customer_key_the_plan_does_not_hold_is_not_assessed_never_passed(customer_key_plan: Path) -> None:
    found = findings(customer_key_plan)
    for check_id in KMS_CHECKS:
        [finding] = [f for f in found if f["check_id"] == check_id]
        assert finding["status"] == "NOT_ASSESSED", finding
        assert CUSTOMER_KEY in finding["reason"] and "--live" in finding["reason"]
    pack = customer_key_plan / "compliance"
    summary = json.loads((pack / "summary.json").read_text())
    # rotation evidences HIPAA 164.312(a)(2)(iv), SOC 2 CC6.1 and ISO A.8.24: none of them may read PASS
    for ref in ("hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24", "hipaa:164.312(a)(1)"):
        assert summary["controls"][ref] == "NOT_ASSESSED", ref
        assert ref in summary["not_assessed_controls"]
    for framework in summary["frameworks"]:
        assert framework["passing"] < framework["controls"] and framework["not_assessed"] > 0, framework
    # the same status in every output
    markdown = (pack / "report.md").read_text()
    assert "| hipaa:164.312(a)(2)(iv) | Encryption and decryption | NOT_ASSESSED |" in markdown
    assert "## Not assessed" in markdown and CUSTOMER_KEY in markdown
    rotation_row = next(line for line in markdown.splitlines() if line.startswith("| hipaa:164.312(a)(2)(iv) |"))
    assert "kms_cmk_rotation_enabled" in rotation_row.split("(not assessed: ", 1)[1]
    html = (pack / "report.html").read_text()
    assert "<td>hipaa:164.312(a)(2)(iv)</td><td>Encryption and decryption</td><td class='NOT_ASSESSED'>" in html
    rows = [r for r in csv.DictReader((pack / "findings.csv").open()) if r["check_id"] == "kms_cmk_rotation_enabled"]
    assert [r["status"] for r in rows] == ["NOT_ASSESSED"]
    ocsf = [json.loads(line) for line in (pack / "findings.ocsf.jsonl").read_text().splitlines()]
    rotation = [o for o in ocsf if o["compliance"]["control"] == "kms_cmk_rotation_enabled"]
    assert [o["compliance"]["status"] for o in rotation] == ["Unknown"]
    assert CUSTOMER_KEY in rotation[0]["compliance"]["status_detail"]
    results = json.loads((pack / "oscal" / "assessment-results.json").read_text())
    oscal = {f["target"]["target-id"]: f for f in results["assessment-results"]["results"][0]["findings"]}
    target = oscal["hipaa_164.312_a_2_iv"]["target"]
    assert target["status"]["state"] == "not-satisfied" and "NOT_ASSESSED" in target["status"]["remarks"]
    inventory = json.loads((pack / "encryption-inventory.json").read_text())
    keyed = [e for e in inventory if e["key"] == CUSTOMER_KEY]
    assert keyed and all(e["rotation_assessed"] is False and "NOT_ASSESSED" in e["rotation_note"] for e in keyed)


# The checks that a resource is encrypted "with a customer-managed key": a key ARN alone (an AWS-managed key has one
# too, key/<uuid>) does not say who manages the key.
CUSTOMER_MANAGED_CHECKS = {
    "s3_bucket_kms_encryption",
    "cloudtrail_kms_encryption_enabled",
    "cloudwatch_log_group_kms_encryption_enabled",
    "eks_cluster_kms_cmk_encryption_in_secrets_enabled",
    "ec2_launch_template_ebs_encrypted",
    "karpenter_nodeclass_ebs_encrypted",
    "sqs_queues_server_side_encryption_enabled",
    "k8s_storage_class_encrypted",
}


def test_customer_managed_is_not_assessed_on_a_key_arn_alone(customer_key_plan: Path, tmp_path: Path) -> None:
    found = findings(customer_key_plan)
    for check_id in CUSTOMER_MANAGED_CHECKS:
        statuses = {f["status"] for f in found if f["check_id"] == check_id}
        assert statuses <= {"NOT_ASSESSED", "NOT_APPLICABLE"} and "NOT_ASSESSED" in statuses, (check_id, statuses)
    assessed = next(f for f in found if f["check_id"] == "cloudtrail_kms_encryption_enabled")
    assert CUSTOMER_KEY in assessed["reason"] and "who manages it" in assessed["reason"]
    # byoc's own keys are in the plan: the same checks pass
    own = findings(plan(tmp_path))
    for check_id in CUSTOMER_MANAGED_CHECKS:
        statuses = {f["status"] for f in own if f["check_id"] == check_id}
        assert "PASS" in statuses and statuses <= {"PASS", "NOT_APPLICABLE"}, (check_id, statuses)


def test_ebs_default_off_in_a_plan_is_not_assessed(customer_key_plan: Path) -> None:
    [finding] = [f for f in findings(customer_key_plan) if f["check_id"] == "ec2_ebs_default_encryption"]
    assert finding["status"] == "NOT_ASSESSED"
    assert "encryption.ebs_default is off" in finding["reason"] and "account setting" in finding["reason"]


def test_one_count_of_checks_in_plan_live_and_catalogue(
    customer_key_plan: Path, account: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    catalogue = run("compliance", "checks", "--output", "json")
    counts = json.loads(catalogue.stdout)["counts"]
    assert counts["aws"] == len(checks_for("aws"))
    assert f"AWS deployments: {counts['aws']} checks" in run("compliance", "checks").stdout
    summary = json.loads((customer_key_plan / "compliance" / "summary.json").read_text())
    assert summary["checks"] == counts["aws"]
    assert {f["check_id"] for f in findings(customer_key_plan)} == {c.id for c in checks_for("aws")}
    endpoint, _ = account
    for deployment in (NAME, "nothing-here"):
        result = live_report(endpoint, tmp_path / deployment, deployment=deployment)
        assert json.loads(result.stdout)["checks"] == counts["aws"], deployment


# -- trail selectors, both forms, every operator ------------------------------------------------------------------
def advanced(*fields: dict[str, Any]) -> Resource:
    management = {"field": "eventCategory", "equals": ["Management"]}
    selectors = [{"name": "m", "fieldSelectors": [management, *fields]}]
    return Resource(TRAIL, "t", "t", {"isMultiRegionTrail": True, "advancedEventSelectors": selectors}, "plan")


def data_only() -> Resource:
    selectors = [{"name": "d", "fieldSelectors": [{"field": "eventCategory", "notEquals": ["Management"]}]}]
    return Resource(TRAIL, "t", "t", {"isMultiRegionTrail": True, "advancedEventSelectors": selectors}, "plan")


def classic(**selector: Any) -> Resource:
    return Resource(TRAIL, "t", "t", {"isMultiRegionTrail": True, "eventSelectors": [selector]}, "plan")


SELECTORS: list[tuple[str, Resource, Status]] = [
    ("management events, no filter", advanced(), Status.PASS),
    ("eventSource NotEquals kms", advanced({"field": "eventSource", "notEquals": ["kms.amazonaws.com"]}), Status.FAIL),
    ("eventSource NotStartsWith kms.", advanced({"field": "eventSource", "notStartsWiths": ["kms."]}), Status.FAIL),
    ("eventSource NotEndsWith .com", advanced({"field": "eventSource", "notEndsWiths": [".com"]}), Status.FAIL),
    ("eventSource Equals iam only", advanced({"field": "eventSource", "equals": ["iam.amazonaws.com"]}), Status.FAIL),
    ("eventSource StartsWith kms. only", advanced({"field": "eventSource", "startsWiths": ["kms."]}), Status.FAIL),
    (
        "eventSource EndsWith .amazonaws.com",
        advanced({"field": "eventSource", "endsWiths": [".amazonaws.com"]}),
        Status.PASS,
    ),
    (
        "eventSource NotEquals a source byoc does not rely on",
        advanced({"field": "eventSource", "notEquals": ["rdsdata.amazonaws.com"]}),
        Status.PASS,
    ),
    ("readOnly Equals false (writes only)", advanced({"field": "readOnly", "equals": ["false"]}), Status.FAIL),
    ("readOnly NotEquals false (reads only)", advanced({"field": "readOnly", "notEquals": ["false"]}), Status.FAIL),
    ("eventCategory NotEquals Management", data_only(), Status.FAIL),
    ("classic excludes kms", classic(excludeManagementEventSources=["kms.amazonaws.com"]), Status.FAIL),
    ("classic excludes rdsdata", classic(excludeManagementEventSources=["rdsdata.amazonaws.com"]), Status.PASS),
    ("classic WriteOnly", classic(readWriteType="WriteOnly", includeManagementEvents=True), Status.FAIL),
    ("classic without management events", classic(readWriteType="All", includeManagementEvents=False), Status.FAIL),
    ("classic All", classic(readWriteType="All", includeManagementEvents=True), Status.PASS),
]


@pytest.mark.parametrize(("why", "trail", "expected"), SELECTORS, ids=[s[0] for s in SELECTORS])
def test_trail_selectors_in_both_forms(why: str, trail: Resource, expected: Status) -> None:
    [(status, reason)] = judge(MANAGEMENT, trail)
    assert status == expected, why
    if expected == Status.FAIL and "kms" in why and "only" not in why:  # KMS left out: the reason names it
        assert "kms.amazonaws.com" in reason


ARTIFACTS = Resource(
    "aws:s3/bucket:Bucket",
    "demo-artifacts",
    "demo-artifacts-id",
    {"bucket": "byoc-demo-artifacts", "tags": {"byoc:bucket": "artifacts"}},
    "plan",
)


def data(*fields: dict[str, Any], form: str = "advanced") -> Resource:
    if form == "classic":
        return Resource(TRAIL, "t", "t", {"eventSelectors": list(fields)}, "plan")
    objects = [
        {"field": "eventCategory", "equals": ["Data"]},
        {"field": "resources.type", "equals": ["AWS::S3::Object"]},
    ]
    selectors = [{"name": "d", "fieldSelectors": [*objects, *fields]}]
    return Resource(TRAIL, "t", "t", {"advancedEventSelectors": selectors}, "plan")


DATA_SELECTORS: list[tuple[str, Resource, Status]] = [
    ("every object", data(), Status.PASS),
    (
        "the artifact bucket",
        data({"field": "resources.ARN", "startsWiths": ["arn:aws:s3:::byoc-demo-artifacts/"]}),
        Status.PASS,
    ),
    ("another bucket only", data({"field": "resources.ARN", "startsWiths": ["arn:aws:s3:::other/"]}), Status.FAIL),
    (
        "NotStartsWith the artifact bucket",
        data({"field": "resources.ARN", "notStartsWiths": ["arn:aws:s3:::byoc-demo"]}),
        Status.FAIL,
    ),
    ("writes only", data({"field": "readOnly", "equals": ["false"]}), Status.FAIL),
    ("readOnly NotEndsWith e (no true, no false)", data({"field": "readOnly", "notEndsWiths": ["e"]}), Status.FAIL),
    (
        "classic, the artifact bucket",
        data(
            {
                "readWriteType": "All",
                "dataResources": [{"type": "AWS::S3::Object", "values": ["arn:aws:s3:::byoc-demo-artifacts/"]}],
            },
            form="classic",
        ),
        Status.PASS,
    ),
    (
        "classic, read only",
        data(
            {"readWriteType": "ReadOnly", "dataResources": [{"Type": "AWS::S3::Object", "Values": ["arn:aws:s3"]}]},
            form="classic",
        ),
        Status.FAIL,
    ),
]


@pytest.mark.parametrize(("why", "trail", "expected"), DATA_SELECTORS, ids=[s[0] for s in DATA_SELECTORS])
def test_object_level_selectors_in_both_forms(why: str, trail: Resource, expected: Status) -> None:
    [(status, _)] = judge("cloudtrail_s3_dataevents_enabled", trail, ARTIFACTS)
    assert status == expected, why


# -- key kinds AWS cannot rotate ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs",
    [
        {"customerMasterKeySpec": "HMAC_256", "enableKeyRotation": False},
        {"keySpec": "RSA_2048", "enableKeyRotation": False},
        {"keySpec": "ECC_NIST_P256"},
        {"keySpec": "SYMMETRIC_DEFAULT", "origin": "EXTERNAL", "enableKeyRotation": False},
        {"keySpec": "SYMMETRIC_DEFAULT", "origin": "AWS_CLOUDHSM"},
    ],
)
def test_keys_aws_cannot_rotate_are_not_applicable(inputs: dict[str, Any]) -> None:
    [(status, reason)] = judge("kms_cmk_rotation_enabled", Resource(KEY, "k", "k", inputs, "live"))
    assert status == Status.NOT_APPLICABLE and "cannot rotate" in reason
    symmetric = Resource(KEY, "k", "k", {"keySpec": "SYMMETRIC_DEFAULT", "enableKeyRotation": False}, "live")
    assert judge("kms_cmk_rotation_enabled", symmetric)[0][0] == Status.FAIL


def test_a_key_policy_that_was_not_read_is_never_a_pass() -> None:
    unread = Resource(KEY, "k", "k", {"enableKeyRotation": True}, "live")
    assert judge("kms_key_policy_no_public_access", unread)[0][0] == Status.NOT_ASSESSED
    denied = Resource(KEY, "k", "k", {"policyError": "could not read the key policy: AccessDeniedException"}, "live")
    assert judge("kms_key_policy_service_conditions", denied)[0][0] == Status.ERROR


# -- add-on namespaces and the unpublished runtime image ----------------------------------------------------------
def test_add_on_namespaces_are_exceptions_and_the_unpublished_runtime_image_is_not_assessed() -> None:
    namespace = Resource("kubernetes:core/v1:Namespace", "keda", "keda", {"metadata": {"name": "keda"}}, "plan")
    for check_id in ("k8s_namespace_pod_security_restricted", "k8s_namespace_default_deny_network_policy"):
        [(status, reason)] = judge(check_id, namespace)
        assert status == Status.EXCEPTION and "by design" in reason and "keda" in reason

    def workload(*images: str) -> Resource:
        spec = {"template": {"spec": {"containers": [{"name": f"c{i}", "image": x} for i, x in enumerate(images)]}}}
        return Resource("kubernetes:apps/v1:Deployment", "w", "w", {"spec": spec}, "plan")

    pinned = "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "0" * 64
    [(status, reason)] = judge("k8s_third_party_images_pinned", workload("byoc-runtime:0.1.0", pinned))
    assert status == Status.NOT_ASSESSED and "not published" in reason
    assert judge("k8s_third_party_images_pinned", workload("registry.example/byoc-runtime:1.0"))[0][0] == Status.FAIL
    published = workload("registry.example/byoc-runtime@sha256:" + "1" * 64, pinned)
    assert judge("k8s_third_party_images_pinned", published)[0][0] == Status.PASS
    assert judge("k8s_third_party_images_pinned", workload("byoc-runtime:0.1.0", "nginx:1"))[0][0] == Status.FAIL


# -- live: a customer key, key kinds, selectors, a deployment not found -------------------------------------------
def live_report(endpoint: str, out: Path, *extra: str, deployment: str = NAME) -> subprocess.CompletedProcess[str]:
    command = ["compliance", "report", "--live", "--cloud", "aws", "--region", REGION, "--deployment", deployment]
    return subprocess.run(
        [sys.executable, "-m", "byoc", *command, "--out", str(out), "--output", "json", *extra],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env(endpoint),
        timeout=300,
    )


def seed(endpoint: str) -> dict[str, str]:
    """Deployment `cmk`: resources tagged as byoc's that use customer keys (untagged) and planted failures."""
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    kms = session.client("kms", endpoint_url=endpoint)
    # the customer's key: byoc's resources use it, it carries no byoc tag, and it does not rotate (planted)
    customer = kms.create_key(Description="the customer's own key")["KeyMetadata"]
    # a second customer key, scheduled for deletion (planted): the trail's logs would become unreadable
    doomed = kms.create_key(Description="the customer's old key")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=doomed["KeyId"])
    kms.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)
    # an HMAC key tagged as the deployment's: AWS cannot rotate it
    kms.create_key(
        KeySpec="HMAC_256",
        KeyUsage="GENERATE_VERIFY_MAC",
        Tags=[{"TagKey": "byoc:deployment", "TagValue": NAME}, {"TagKey": "byoc:key", "TagValue": "mac"}],
    )
    # the key only the plan names (encryption.kms_key), used by nothing the collectors read
    given = kms.create_key(Description="named in the spec")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=given["KeyId"])
    s3 = session.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=f"byoc-{NAME}-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_tagging(Bucket=f"byoc-{NAME}-artifacts", Tagging={"TagSet": TAGS})
    s3.put_bucket_encryption(
        Bucket=f"byoc-{NAME}-artifacts",
        ServerSideEncryptionConfiguration={
            "Rules": [
                {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": customer["Arn"]}}
            ]
        },
    )
    trails = session.client("cloudtrail", endpoint_url=endpoint)
    # a trail that leaves KMS out of its management events (advanced form; planted)
    trails.create_trail(
        Name=f"byoc-{NAME}",
        S3BucketName=f"byoc-{NAME}-artifacts",
        IsMultiRegionTrail=True,
        KmsKeyId=doomed["Arn"],
        TagsList=TAGS,
    )
    trails.put_event_selectors(
        TrailName=f"byoc-{NAME}",
        AdvancedEventSelectors=[
            {
                "Name": "Management events selector",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Management"]},
                    {"Field": "eventSource", "NotEquals": ["kms.amazonaws.com"]},
                ],
            }
        ],
    )
    # a trail that leaves KMS out in the classic form (planted)
    trails.create_trail(
        Name=f"byoc-{NAME}-classic", S3BucketName=f"byoc-{NAME}-artifacts", IsMultiRegionTrail=True, TagsList=TAGS
    )
    trails.put_event_selectors(
        TrailName=f"byoc-{NAME}-classic",
        EventSelectors=[
            {
                "ReadWriteType": "All",
                "IncludeManagementEvents": True,
                "ExcludeManagementEventSources": ["kms.amazonaws.com"],
            }
        ],
    )
    # a trail that records everything, with a NotStartsWith on a source the controls do not rely on
    trails.create_trail(
        Name=f"byoc-{NAME}-good", S3BucketName=f"byoc-{NAME}-artifacts", IsMultiRegionTrail=True, TagsList=TAGS
    )
    trails.put_event_selectors(
        TrailName=f"byoc-{NAME}-good",
        AdvancedEventSelectors=[
            {
                "Name": "all but RDS Data API",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Management"]},
                    {"Field": "eventSource", "NotStartsWith": ["rdsdata."]},
                ],
            }
        ],
    )
    for name in (f"byoc-{NAME}", f"byoc-{NAME}-classic", f"byoc-{NAME}-good"):
        trails.start_logging(Name=name)
    return {
        "customer": customer["KeyId"],
        "doomed": doomed["KeyId"],
        "given": given["KeyId"],
        "given_arn": given["Arn"],
    }


@pytest.fixture(scope="module")
def account() -> Iterator[tuple[str, dict[str, str]]]:
    server, endpoint = start_moto()
    try:
        yield endpoint, seed(endpoint)
    finally:
        server.stop()


def statuses(found: list[dict[str, Any]], check_id: str) -> dict[str, str]:
    return {f["resource"]["name"]: f["status"] for f in found if f["check_id"] == check_id}


def test_live_assesses_the_customer_key_its_kind_and_the_trail_selectors(
    account: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, keys = account
    result = live_report(endpoint, tmp_path / "live")
    assert result.returncode == 1, result.stderr
    found = json.loads((tmp_path / "live" / "findings.json").read_text())
    customer, doomed = f"customer key {keys['customer']}", f"customer key {keys['doomed']}"
    rotation = statuses(found, "kms_cmk_rotation_enabled")
    assert rotation[customer] == "FAIL"  # the untagged key the bucket uses was read, and it does not rotate
    assert rotation["mac"] == "NOT_APPLICABLE"  # HMAC: AWS cannot rotate it
    mac = next(f for f in found if f["check_id"] == "kms_cmk_rotation_enabled" and f["resource"]["name"] == "mac")
    assert "HMAC_256" in mac["reason"]
    deletion = statuses(found, "kms_key_deletion_window")
    assert deletion[doomed] == "FAIL" and deletion[customer] == "PASS"
    pending = next(f for f in found if f["check_id"] == "kms_key_deletion_window" and f["resource"]["name"] == doomed)
    assert "scheduled for deletion" in pending["reason"]
    assert statuses(found, "kms_key_policy_no_public_access")[customer] == "PASS"
    assert statuses(found, MANAGEMENT) == {
        f"byoc-{NAME}": "FAIL",
        f"byoc-{NAME}-classic": "FAIL",
        f"byoc-{NAME}-good": "PASS",
    }
    trail = next(f for f in found if f["check_id"] == MANAGEMENT and f["resource"]["name"] == f"byoc-{NAME}")
    assert "kms.amazonaws.com read" in trail["reason"] and "kms.amazonaws.com write" in trail["reason"]
    assert json.loads(result.stdout)["headline"] is None


def test_live_with_the_plan_assesses_the_key_the_spec_names(
    account: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, keys = account
    spec = yaml.safe_load((ROOT / "examples" / "byoc.yaml").read_text())
    spec |= {"name": NAME, "region": REGION, "encryption": {"kms_key": keys["given_arn"]}}
    (tmp_path / "byoc.yaml").write_text(yaml.safe_dump(spec))
    planned = run("plan", "-f", str(tmp_path / "byoc.yaml"), "--out", str(tmp_path / "plan"))
    assert planned.returncode == 0, planned.stderr
    declared = findings(tmp_path / "plan")
    assert {f["status"] for f in declared if f["check_id"] == "kms_cmk_rotation_enabled"} == {"NOT_ASSESSED"}
    result = live_report(endpoint, tmp_path / "live", "--plan", str(tmp_path / "plan" / "plan.json"))
    found = json.loads((tmp_path / "live" / "findings.json").read_text())
    # what the plan could not show is not drift: there is nothing declared to compare
    drifted = {d["check_id"] for d in json.loads(result.stdout)["drift"]}
    assert not drifted & (KMS_CHECKS | {"ec2_ebs_default_encryption"})
    given = f"customer key {keys['given']}"
    assert statuses(found, "kms_cmk_rotation_enabled")[given] == "PASS"
    assert statuses(found, "kms_key_deletion_window")[given] == "PASS"


def test_a_deployment_that_is_not_found_says_so_first(account: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    endpoint, _ = account
    result = live_report(endpoint, tmp_path / "absent", deployment="absent")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["headline"].startswith("Deployment absent was not found: no resource in eu-west-2 carries")
    markdown = (tmp_path / "absent" / "report.md").read_text()
    assert markdown.splitlines()[2] == f"**{summary['headline']}**"
    assert "<p id='headline'>" in (tmp_path / "absent" / "report.html").read_text()
    stored = json.loads((tmp_path / "absent" / "summary.json").read_text())
    assert stored["headline"] == summary["headline"]
    found = json.loads((tmp_path / "absent" / "findings.json").read_text())
    unseen = [f for f in found if f["status"] == "NOT_ASSESSED" and f["check_id"].startswith("s3_")]
    assert unseen and all("byoc:deployment=absent" in f["reason"] for f in unseen)
    command = ["compliance", "report", "--live", "--region", REGION, "--deployment", "absent"]
    text = subprocess.run(
        [sys.executable, "-m", "byoc", *command, "--out", str(tmp_path / "text")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env(endpoint),
        timeout=300,
    )
    assert text.stdout.splitlines()[0] == summary["headline"]
