"""Batch inference in the stacks (issue 22): what `byoc plan` declares with batch on and off, on AWS and GCP: the
identities that reach batch/ and nothing else, the bucket's lifecycle backstop, the worker, its token, its network
policies, and the evidence checks that judge them (passing on the plans, failing on plans altered to break them)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from byoc.plan import PLACEHOLDER_SECRET, SECRET_SHOWN, Plan, RecordedResource
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Status
from tests.conftest import ROOT, deploy, run_byoc
from tests.stacks.plans import graph

BATCH_CHECKS = {
    "aws": ("s3_batch_storage_cmk_encryption", "s3_batch_storage_expiry", "s3_batch_storage_access_scoped"),
    "gcp": ("gcp_batch_storage_cmek", "gcp_batch_storage_expiry", "gcp_batch_storage_access_scoped"),
}
AWS_BUCKET = "byoc-test-artifacts-123456789012"
AWS_KEY = "arn:aws:kms:eu-west-2:123456789012:key/test-artifacts-key-id"
GCP_BUCKET = "byoc-test-artifacts-123456789012"
OFF = {"batch": {"enabled": False}}


def named(plan: Plan, type_token: str, name: str) -> RecordedResource:
    found = [r for r in plan.by_type(type_token) if r.name == name]
    assert len(found) == 1, f"{len(found)} x {type_token} {name}"
    return found[0]


def policy_of(plan: Plan, role: str) -> list[dict[str, Any]]:
    document = named(plan, "aws:iam/rolePolicy:RolePolicy", f"test-{role}").inputs["policy"]
    statements: list[dict[str, Any]] = json.loads(document)["Statement"]
    return statements


def workload(plan: Plan, suffix: str) -> dict[str, Any]:
    return named(plan, "kubernetes:apps/v1:Deployment", f"test-{suffix}").inputs


def command(plan: Plan, suffix: str) -> list[str]:
    return [str(a) for a in workload(plan, suffix)["spec"]["template"]["spec"]["containers"][0]["command"]]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def findings(plan: Plan, **overrides: Any) -> dict[tuple[str, str], Any]:
    """The batch checks' findings on the plan, by (check id, resource name)."""
    document = deploy(**overrides).plan_document()
    document["resources"] = [r.as_dict() for r in plan.resources]
    return {(f.check.id, f.resource.name): f for f in evaluate(graph_from_plan(document)) if "batch" in f.check.id}


def altered(plan: Plan, type_token: str, name: str, change: Any) -> Plan:
    """A copy of the plan with one resource's inputs changed by `change(inputs)` (what a careless edit would do)."""
    resources = []
    for r in plan.resources:
        if r.type == type_token and r.name == name:
            inputs = copy.deepcopy(r.inputs)
            change(inputs)
            resources.append(RecordedResource(r.type, r.name, r.id, inputs, r.parent, r.provider, r.custom, r.urn))
        else:
            resources.append(r)
    return Plan(resources)


def added(plan: Plan, resource: RecordedResource) -> Plan:
    return Plan([*plan.resources, resource])


# -- AWS ------------------------------------------------------------------------------------------------------------
def test_aws_gateway_and_worker_roles_reach_only_batch_objects_with_the_artifact_key_through_s3() -> None:
    plan = graph()
    expected = [
        {
            "Sid": "BatchObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
            "Resource": f"arn:aws:s3:::{AWS_BUCKET}/batch/*",
        },
        {
            "Sid": "ListBatchPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": f"arn:aws:s3:::{AWS_BUCKET}",
            "Condition": {"StringLike": {"s3:prefix": ["batch/*"]}},
        },
        {
            "Sid": "ArtifactKeyThroughS3",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": AWS_KEY,
            "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-2.amazonaws.com"}},
        },
    ]
    assert policy_of(plan, "gateway") == expected
    assert policy_of(plan, "batch-worker") == expected
    # each bound to its own Kubernetes service account by EKS Pod Identity
    bindings = {
        r.inputs["serviceAccount"]: r.inputs["roleArn"]
        for r in plan.by_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    }
    assert bindings["byoc-gateway"].endswith(":role/byoc-test-gateway")
    assert bindings["byoc-batch-worker"].endswith(":role/byoc-test-batch-worker")
    # the artifact key's policy names them too, through S3 only
    key_policy = json.loads(named(plan, "aws:kms/key:Key", "test-artifacts").inputs["policy"])
    batch = next(s for s in key_policy["Statement"] if s["Sid"] == "BatchFilesThroughS3")
    assert batch["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert batch["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-2.amazonaws.com"}}
    # the model artifacts stay read-only to the serving pods, and out of batch's reach
    serving = policy_of(plan, "serving")
    assert not any("batch/" in str(s["Resource"]) for s in serving)
    assert {a for s in serving for a in s["Action"]} == {
        "s3:GetObject",
        "s3:ListBucket",
        "kms:Decrypt",
        "kms:DescribeKey",
    }


@pytest.mark.parametrize(("retention", "days"), [(24, 2), (25, 3), (100, 6), (720, 31)])
def test_aws_bucket_lifecycle_keeps_its_rule_and_adds_the_batch_backstop(retention: int, days: int) -> None:
    plan = graph(batch={"retention_hours": retention})
    config = named(plan, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "test-artifacts")
    rules = {rule["id"]: rule for rule in config.inputs["rules"]}
    assert rules["expire-noncurrent-versions"]["noncurrentVersionExpiration"] == {"noncurrentDays": 30}
    assert rules["expire-batch-files"] == {
        "id": "expire-batch-files",
        "status": "Enabled",
        "filter": {"prefix": "batch/"},
        "expiration": {"days": days},
        "noncurrentVersionExpiration": {"noncurrentDays": 1},
        "abortIncompleteMultipartUpload": {"daysAfterInitiation": 1},
    }
    # one configuration per bucket: a second would replace the first
    assert len(plan.by_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")) == len(
        plan.by_type("aws:s3/bucket:Bucket")
    )


def test_the_gateway_and_the_worker_share_the_batch_store_the_key_and_a_token_never_in_clear() -> None:
    plan = graph(batch={"retention_hours": 48})
    gateway, worker = command(plan, "gateway"), command(plan, "batch-worker")
    assert flag(gateway, "--batch-store") == flag(worker, "--batch-store") == f"s3://{AWS_BUCKET}/batch/"
    assert flag(gateway, "--batch-kms-key") == flag(worker, "--batch-kms-key") == AWS_KEY
    assert flag(gateway, "--batch-retention-hours") == flag(worker, "--retention-hours") == "48"
    assert flag(gateway, "--batch-worker-token-file") == flag(worker, "--worker-token-file")
    assert worker[:3] == ["python", "-m", "runtime.serve.batch.worker"]
    assert flag(worker, "--gateway") == "https://byoc-test-gateway.byoc-test.svc.cluster.local"
    # both mount the one Secret; its token is generated (pulumi-random) and recorded only as "[secret]"
    secret = named(plan, "kubernetes:core/v1:Secret", "test-batch-worker-token")
    assert secret.inputs["stringData"] == {"token": SECRET_SHOWN}
    for suffix in ("gateway", "batch-worker"):
        volumes = workload(plan, suffix)["spec"]["template"]["spec"]["volumes"]
        assert {
            "name": "batch-worker-token",
            "secret": {"secretName": "byoc-test-batch-worker-token", "defaultMode": 0o440},
        } in volumes
    token = named(plan, "random:index/randomPassword:RandomPassword", "test-batch-worker-token")
    assert token.inputs == {"length": 48, "special": False}
    assert PLACEHOLDER_SECRET not in json.dumps([r.as_dict() for r in plan.resources])


def test_the_worker_runs_once_without_privilege_on_cpu() -> None:
    plan = graph()
    spec = workload(plan, "batch-worker")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "byoc-batch-worker" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "1000m", "memory": "1024Mi"},
    }
    assert "nvidia.com/gpu" not in json.dumps(container) and "nodeSelector" not in pod
    assert container["image"] == workload(plan, "gateway")["spec"]["template"]["spec"]["containers"][0]["image"]
    # the gateway's certificate, never its key
    ca = next(v for v in pod["volumes"] if v["name"] == "gateway-ca")
    assert ca["secret"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "gateway-ca")["mountPath"]
    assert flag(container["command"], "--gateway-ca-file") == f"{mount}/tls.crt"
    assert "SSL_CERT_FILE" not in json.dumps(container)  # trusted by the worker's client only, not process-wide


def test_the_worker_reaches_only_the_gateway_dns_credentials_and_https_outside_the_vpc() -> None:
    plan = graph()
    policies = {r.name: r.inputs["spec"] for r in plan.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")}
    worker = policies["test-netpol-batch-worker"]
    gateway_pods = {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/instance": "test"}}
    }
    assert worker["ingress"] == []
    assert worker["egress"] == [
        {"to": [gateway_pods], "ports": [{"protocol": "TCP", "port": 8080}]},
        {"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}], "ports": [{"protocol": "TCP", "port": 80}]},
        {
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.42.0.0/16"]}}],
            "ports": [{"protocol": "TCP", "port": 443}],
        },
    ]
    gateway = policies["test-netpol-gateway-batch"]
    assert gateway["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/name": "batch-worker", "app.kubernetes.io/instance": "test"}
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    # DNS and the default deny come from the namespace-wide policies, which batch leaves as they are
    assert policies["test-netpol-default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert "test-netpol-allow-dns" in policies


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_batch_off_renders_nothing_of_it(cloud: str) -> None:
    plan = graph(cloud=cloud, **OFF)
    text = json.dumps([r.as_dict() for r in plan.resources])
    # (the build Job's apiVersion is batch/v1: the prefix shows as "batch/", /batch/ or batch/*)
    for absent in ("batch-worker", "--batch-store", '"batch/"', "/batch/", "batch/*", "gateway-batch"):
        assert absent not in text, absent
    assert not [r for r in plan.by_type("random:index/randomPassword:RandomPassword") if "batch" in r.name]
    assert deploy(cloud=cloud, **OFF).plan_document()["batch"] == {"enabled": False, "retention_hours": 24}
    assert set(deploy(cloud=cloud, **OFF).service_accounts) == {"builder", "serving"}


def test_plan_json_summarises_batch() -> None:
    assert deploy(batch={"retention_hours": 72}).plan_document()["batch"] == {
        "enabled": True,
        "retention_hours": 72,
        "prefix": "batch/",
        "expiry_days": 4,
        "worker": {
            "replicas": 1,
            "service_account": "byoc-batch-worker",
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "1000m", "memory": "1024Mi"},
        },
    }


# -- GCP ------------------------------------------------------------------------------------------------------------
def test_gcp_gateway_and_worker_accounts_hold_object_user_on_batch_only() -> None:
    plan = graph(cloud="gcp")
    condition = (
        f'resource.name.startsWith("projects/_/buckets/{GCP_BUCKET}/objects/batch/") || '
        'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("batch/")'
    )
    for role in ("gateway", "batch-worker"):
        account = named(plan, "gcp:serviceaccount/account:Account", f"test-{role}").inputs["accountId"]
        assert account == f"byoc-test-{role}"
        grant = named(plan, "gcp:storage/bucketIAMMember:BucketIAMMember", f"test-{role}-batch").inputs
        assert grant["role"] == "roles/storage.objectUser"
        assert grant["member"] == f"serviceAccount:byoc-test-{role}@example-project.iam.gserviceaccount.com"
        assert grant["bucket"] == GCP_BUCKET
        assert grant["condition"]["expression"] == condition
        binding = named(plan, "gcp:serviceaccount/iAMMember:IAMMember", f"test-{role}-workload-identity").inputs
        service_account = "byoc-gateway" if role == "gateway" else "byoc-batch-worker"
        assert binding["member"] == f"serviceAccount:example-project.svc.id.goog[byoc-test/{service_account}]"
    # the Kubernetes service accounts act as them
    accounts = {
        r.inputs["metadata"]["name"]: r.inputs["metadata"]["annotations"]
        for r in plan.by_type("kubernetes:core/v1:ServiceAccount")
    }
    assert accounts["byoc-batch-worker"] == {
        "iam.gke.io/gcp-service-account": "byoc-test-batch-worker@example-project.iam.gserviceaccount.com"
    }
    assert accounts["byoc-gateway"]["iam.gke.io/gcp-service-account"].startswith("byoc-test-gateway@")
    # the worker gets tokens from the GKE metadata server and writes under the artifact key
    worker = command(plan, "batch-worker")
    bucket = named(plan, "gcp:storage/bucket:Bucket", "test-artifacts").inputs
    assert flag(worker, "--batch-kms-key") == bucket["encryption"]["defaultKmsKeyName"]
    assert flag(worker, "--batch-store") == f"gs://{GCP_BUCKET}/batch/"
    egress = named(plan, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "test-netpol-batch-worker").inputs["spec"][
        "egress"
    ]
    assert {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]} in egress


def test_gcp_bucket_lifecycle_adds_batch_rules_to_its_own() -> None:
    plan = graph(cloud="gcp", batch={"retention_hours": 36})
    rules = named(plan, "gcp:storage/bucket:Bucket", "test-artifacts").inputs["lifecycleRules"]
    assert {
        "action": {"type": "Delete"},
        "condition": {"daysSinceNoncurrentTime": 30, "withState": "ARCHIVED"},
    } in rules
    assert rules[-3:] == [
        {"action": {"type": "Delete"}, "condition": {"age": 3, "matchesPrefixes": ["batch/"], "withState": "LIVE"}},
        {
            "action": {"type": "Delete"},
            "condition": {"daysSinceNoncurrentTime": 1, "matchesPrefixes": ["batch/"], "withState": "ARCHIVED"},
        },
        {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1, "matchesPrefixes": ["batch/"]}},
    ]


# -- evidence -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_batch_checks_pass_on_the_plan_and_do_not_apply_without_batch(cloud: str) -> None:
    on = findings(graph(cloud=cloud), cloud=cloud)
    for check_id in BATCH_CHECKS[cloud]:
        assert on[(check_id, "test-artifacts")].status == Status.PASS, on[(check_id, "test-artifacts")].reason
        assert on[(check_id, "test-access-logs")].status == Status.NOT_APPLICABLE
    off = findings(graph(cloud=cloud, **OFF), cloud=cloud, **OFF)
    assert {f.status for f in off.values()} == {Status.NOT_APPLICABLE}
    assert {check_id for check_id, _ in off} == set(BATCH_CHECKS[cloud])


def _aws_failure(plan: Plan, check_id: str) -> Any:
    found = findings(plan)[(check_id, "test-artifacts")]
    assert found.status == Status.FAIL
    return found


def test_aws_checks_fail_without_the_cmk_without_expiry_and_with_a_wide_grant() -> None:
    plan = graph()
    sse = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"

    def s3_managed(inputs: dict[str, Any]) -> None:
        inputs["rules"][0]["applyServerSideEncryptionByDefault"] = {"sseAlgorithm": "AES256"}

    _aws_failure(altered(plan, sse, "test-artifacts", s3_managed), "s3_batch_storage_cmk_encryption")

    def no_batch_key(inputs: dict[str, Any]) -> None:
        args = inputs["spec"]["template"]["spec"]["containers"][0]["command"]
        at = args.index("--batch-kms-key")
        del args[at : at + 2]

    for suffix in ("gateway", "batch-worker"):
        plan = altered(plan, "kubernetes:apps/v1:Deployment", f"test-{suffix}", no_batch_key)
    _aws_failure(plan, "s3_batch_storage_cmk_encryption")

    plan = graph()
    lifecycle = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"

    def drop_batch_rule(inputs: dict[str, Any]) -> None:
        inputs["rules"] = [r for r in inputs["rules"] if r["id"] != "expire-batch-files"]

    failed = _aws_failure(altered(plan, lifecycle, "test-artifacts", drop_batch_rule), "s3_batch_storage_expiry")
    assert "within 2 days" in failed.reason

    def longer(inputs: dict[str, Any]) -> None:
        next(r for r in inputs["rules"] if r["id"] == "expire-batch-files")["expiration"]["days"] = 30

    _aws_failure(altered(plan, lifecycle, "test-artifacts", longer), "s3_batch_storage_expiry")

    # the serving role reading every object of the bucket (batch/ included)
    def bucket_wide(inputs: dict[str, Any]) -> None:
        document = json.loads(inputs["policy"])
        document["Statement"][0]["Resource"] = f"arn:aws:s3:::{AWS_BUCKET}/*"
        inputs["policy"] = json.dumps(document)

    failed = _aws_failure(
        altered(plan, "aws:iam/rolePolicy:RolePolicy", "test-serving", bucket_wide), "s3_batch_storage_access_scoped"
    )
    assert any("byoc-serving" in w for w in failed.evidence[0].value)
    # the worker's own grant widened to the whole bucket
    _aws_failure(
        altered(plan, "aws:iam/rolePolicy:RolePolicy", "test-batch-worker", bucket_wide),
        "s3_batch_storage_access_scoped",
    )

    # the serving role reading earlier versions under batch/ (a deleted prompt's noncurrent version)
    def reads_versions(inputs: dict[str, Any]) -> None:
        document = json.loads(inputs["policy"])
        document["Statement"].append(
            {"Effect": "Allow", "Action": "s3:GetObjectVersion", "Resource": f"arn:aws:s3:::{AWS_BUCKET}/batch/*"}
        )
        inputs["policy"] = json.dumps(document)

    failed = _aws_failure(
        altered(plan, "aws:iam/rolePolicy:RolePolicy", "test-serving", reads_versions), "s3_batch_storage_access_scoped"
    )
    assert any("s3:GetObjectVersion" in w for w in failed.evidence[0].value)

    # the gateway listing versions bucket-wide
    def lists_versions(inputs: dict[str, Any]) -> None:
        document = json.loads(inputs["policy"])
        document["Statement"].append(
            {"Effect": "Allow", "Action": "s3:ListBucketVersions", "Resource": f"arn:aws:s3:::{AWS_BUCKET}"}
        )
        inputs["policy"] = json.dumps(document)

    failed = _aws_failure(
        altered(plan, "aws:iam/rolePolicy:RolePolicy", "test-gateway", lists_versions), "s3_batch_storage_access_scoped"
    )
    assert any("s3:ListBucketVersions lists beyond" in w for w in failed.evidence[0].value)

    # a bucket policy letting anyone read
    def public(inputs: dict[str, Any]) -> None:
        document = json.loads(inputs["policy"])
        document["Statement"].append(
            {"Sid": "Anyone", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}
        )
        inputs["policy"] = json.dumps(document)

    _aws_failure(
        altered(plan, "aws:s3/bucketPolicy:BucketPolicy", "test-artifacts", public), "s3_batch_storage_access_scoped"
    )


def _gcp_failure(plan: Plan, check_id: str) -> Any:
    found = findings(plan, cloud="gcp")[(check_id, "test-artifacts")]
    assert found.status == Status.FAIL, found.reason
    return found


def test_gcp_checks_fail_without_the_cmek_without_expiry_and_with_a_wide_grant() -> None:
    plan = graph(cloud="gcp")
    bucket = "gcp:storage/bucket:Bucket"

    def google_key(inputs: dict[str, Any]) -> None:
        inputs["encryption"] = {}

    _gcp_failure(altered(plan, bucket, "test-artifacts", google_key), "gcp_batch_storage_cmek")

    def no_batch_rules(inputs: dict[str, Any]) -> None:
        inputs["lifecycleRules"] = [r for r in inputs["lifecycleRules"] if "matchesPrefixes" not in r["condition"]]

    _gcp_failure(altered(plan, bucket, "test-artifacts", no_batch_rules), "gcp_batch_storage_expiry")

    member = "gcp:storage/bucketIAMMember:BucketIAMMember"

    def unconditioned(inputs: dict[str, Any]) -> None:
        inputs.pop("condition")

    _gcp_failure(altered(plan, member, "test-batch-worker-batch", unconditioned), "gcp_batch_storage_access_scoped")
    _gcp_failure(altered(plan, member, "test-serving-read", unconditioned), "gcp_batch_storage_access_scoped")
    public = RecordedResource(
        member,
        "test-public",
        "test-public-id",
        {"bucket": GCP_BUCKET, "role": "roles/storage.objectViewer", "member": "allUsers"},
        None,
        None,
        True,
        "urn:test-public",
    )
    failed = _gcp_failure(added(plan, public), "gcp_batch_storage_access_scoped")
    assert any("allUsers" in w for w in failed.evidence[0].value)


def test_every_example_still_plans(tmp_path: Path) -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for example in examples:
        result = run_byoc("plan", "-f", str(example), "--out", str(tmp_path / example.stem))
        assert result.returncode == 0, (example.name, result.stderr[-2000:])
        document = json.loads((tmp_path / example.stem / "plan.json").read_text())
        assert document["batch"]["enabled"] is True


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_gateway_lets_batch_fill_no_more_than_the_engines_max_batch_size(cloud: str) -> None:
    """--batch-slots-per-replica is the max_batch_size trtllm-serve runs with (the engine ConfigMap's options.yaml):
    batch lines beyond it would wait inside the engine, ahead of online requests that arrive after them."""
    import yaml

    plan = graph(cloud=cloud)
    config = named(plan, "kubernetes:core/v1:ConfigMap", "test-engine-config").inputs["data"]
    max_batch_size = yaml.safe_load(config["options.yaml"])["max_batch_size"]
    gateway = command(plan, "gateway")
    assert int(flag(gateway, "--batch-slots-per-replica")) == max_batch_size >= 8
    assert "--batch-slots-per-replica" not in command(graph(cloud=cloud, **OFF), "gateway")
