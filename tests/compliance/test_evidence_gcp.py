"""The supporting evidence of a GCP plan, as a security reviewer reads it: every CMEK store with its key, rotation and
users; the audit configs and the sink to a locked bucket; every identity with its roles and Workload Identity
bindings; the data flows inside the project. And an AWS pack keeps the shape it had."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compliance.evaluate import evaluate, graph_from_plan
from compliance.reports import write_pack
from tests.conftest import ROOT, deploy
from tests.stacks.plans import graph

GCP = {"cloud": "gcp", "region": "EUROPE", "shape": "h100x8-fp8"}
BYO_KEY = "projects/keys-project/locations/europe-west4/keyRings/central/cryptoKeys/byoc"


def plan_document(**overrides: Any) -> dict[str, Any]:
    """The plan.json `byoc plan` writes for this spec (byoc/commands/plan.py)."""
    document = deploy(**overrides).plan_document()
    document["resources"] = [r.as_dict() for r in graph(**overrides).resources]
    parsed: dict[str, Any] = json.loads(json.dumps(document))
    return parsed


def pack_of(document: dict[str, Any], folder: Path) -> Path:
    declared = graph_from_plan(document)
    frameworks = document["compliance"]["frameworks"]
    write_pack(declared, evaluate(declared, frameworks), frameworks, folder)
    return folder


def read(pack: Path, name: str) -> Any:
    return json.loads((pack / name).read_text())


def resources(document: dict[str, Any], type_token: str) -> list[dict[str, Any]]:
    return [r for r in document["resources"] if r["type"] == type_token]


def get(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return plan_document(**GCP)


@pytest.fixture(scope="module")
def pack(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_of(document, tmp_path_factory.mktemp("gcp") / "compliance")


def cmek_references(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(resource, key) for every resource of the plan that names a Cloud KMS key for its data."""
    paths = {
        "gcp:storage/bucket:Bucket": ["encryption.defaultKmsKeyName"],
        "gcp:container/cluster:Cluster": ["databaseEncryption.keyName", "nodeConfig.bootDiskKmsKey"],
        "gcp:container/nodePool:NodePool": ["nodeConfig.bootDiskKmsKey"],
        "kubernetes:storage.k8s.io/v1:StorageClass": ["parameters.disk-encryption-kms-key"],
        "gcp:redis/instance:Instance": ["customerManagedKey"],
    }
    found = set()
    for type_token, key_paths in paths.items():
        for resource in resources(document, type_token):
            for path in key_paths:
                key = get(resource["inputs"], path)
                if key:
                    found.add((resource["name"], key))
    return found


def key_grants(document: dict[str, Any]) -> dict[str, set[str]]:
    grants: dict[str, set[str]] = {}
    for grant in resources(document, "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember"):
        grants.setdefault(grant["inputs"]["cryptoKeyId"], set()).add(grant["inputs"]["member"])
    return grants


def test_every_cmek_store_is_listed_with_its_key_rotation_and_users(document: dict[str, Any], pack: Path) -> None:
    inventory = read(pack, "encryption-inventory.json")
    listed = {(e["resource"], e["key"]): e for e in inventory if e["key"]}
    expected = cmek_references(document)
    assert len(expected) >= 8  # three buckets, GKE secrets, three boot-disk configs, the StorageClass
    assert set(listed) == expected
    keys = {
        f"{k['inputs']['keyRing']}/cryptoKeys/{k['inputs']['name']}": k
        for k in resources(document, "gcp:kms/cryptoKey:CryptoKey")
    }
    grants = key_grants(document)
    for (_, key), entry in listed.items():
        assert entry["customer_managed"] is True and entry["rotation"] is True, entry
        assert entry["rotation_period"] == keys[key]["inputs"]["rotationPeriod"] == "7776000s"
        assert entry["rotation_days"] == 90
        assert entry["key_resource"] == keys[key]["name"]
        # who may use the key: exactly the service agents granted on it, nobody else
        assert {u["member"] for u in entry["key_users"]} == grants[key]
        assert {u["role"] for u in entry["key_users"]} == {"roles/cloudkms.cryptoKeyEncrypterDecrypter"}
    # each key encrypts something, and says what
    assert {key for _, key in listed} == set(keys)
    stores = {e["store"] for e in inventory}
    assert "GKE secrets (etcd, application-layer encryption)" in stores
    assert "Persistent Disk volumes" in stores
    assert {"node boot disks (GPU nodes, pool byoc-gpu)", "node boot disks (system nodes, pool system)"} <= stores
    # nothing reads as AWS; what is not under the customer's key says why
    assert "ebs" not in json.dumps(inventory).lower() and "s3" not in json.dumps(inventory).lower()
    assert all(e["note"] for e in inventory if not e["customer_managed"])
    buckets = [e for e in inventory if e["type"] == "gcp:storage/bucket:Bucket"]
    assert len(buckets) == 3 and all("Google-managed" in e["note"] for e in buckets)


def test_a_key_given_in_the_spec_encrypts_every_store_and_lists_its_grants(tmp_path: Path) -> None:
    document = plan_document(**GCP, encryption={"kms_key": BYO_KEY})
    inventory = read(pack_of(document, tmp_path / "compliance"), "encryption-inventory.json")
    keyed = [e for e in inventory if e["key"]]
    assert len(keyed) >= 8 and {e["key"] for e in keyed} == {BYO_KEY}
    agents = key_grants(document)[BYO_KEY]
    assert len(agents) == 4  # GKE, Compute Engine, Cloud Storage and Memorystore service agents
    for entry in keyed:
        # a key byoc did not create: customer-managed, its rotation is not declared here
        assert entry["customer_managed"] is True and entry["rotation"] is None and entry["key_resource"] is None
        assert {u["member"] for u in entry["key_users"]} == agents


def test_audit_logging_names_services_log_types_destination_and_locked_retention(
    document: dict[str, Any], pack: Path
) -> None:
    audit = read(pack, "audit-logging.json")
    assert not {"cloudtrail", "log_groups", "eks_control_plane_logs", "vpc_flow_logs"} & set(audit)
    configs = {c["service"]: c for c in audit["audit_configs"]}
    assert set(configs) == {"storage.googleapis.com", "cloudkms.googleapis.com", "container.googleapis.com"}
    for config in configs.values():
        assert set(config["log_types"]) == {"ADMIN_READ", "DATA_READ", "DATA_WRITE"}
        assert config["exempted_members"] == []

    [sink] = audit["log_sinks"]
    declared = resources(document, "gcp:logging/projectSink:ProjectSink")[0]["inputs"]
    assert sink["filter"] == declared["filter"] == 'logName:"cloudaudit.googleapis.com"'
    assert sink["destination"] == declared["destination"]
    assert "Admin Activity" in sink["captures"] and "Data Access" in sink["captures"]
    bucket = sink["destination_bucket"]
    assert sink["destination"].endswith(bucket["bucket"])
    assert bucket["retention_locked"] is True and bucket["retention_days"] == 365
    assert bucket["kms_key"].endswith("/cryptoKeys/logs") and bucket["public_access_prevention"] == "enforced"
    assert [g["role"] for g in sink["writer_grants"]] == ["roles/storage.objectCreator"]

    [gke] = audit["gke_logging"]
    assert {"SYSTEM_COMPONENTS", "APISERVER", "WORKLOADS"} <= set(gke["components"])
    assert "k8s.io" in gke["kubernetes_audit_logs"] and sink["sink"] in gke["kubernetes_audit_logs"]
    assert "_Default" in gke["destination"]
    [flows] = audit["subnetwork_flow_logs"]
    assert flows["enabled"] is True and flows["flow_sampling"] == 1.0
    assert [n["enabled"] for n in audit["nat_logs"]] == [True]
    assert audit["firewall_logs"] and all(r["logged"] for r in audit["firewall_logs"])
    # the artifact and the audit-log buckets both log their usage to the access-log bucket (which logs nowhere)
    usage = audit["storage_usage_logs"]
    assert len(usage) == 2 and {"artifacts", "audit-logs"} == {
        r for u in usage for r in ("artifacts", "audit-logs") if f"-{r}-" in u["bucket"]
    }
    assert all("access-logs" in u["log_bucket"] for u in usage)
    assert "ByocErrorRatioHigh" in audit["alert_rules"]


def test_every_identity_lists_its_exact_roles_and_bindings(document: dict[str, Any], pack: Path) -> None:
    identities = {i["identity"]: i for i in read(pack, "iam-policies.json")}
    grants: dict[str, set[tuple[str, str]]] = {}
    for type_token, target in (
        ("gcp:projects/iAMMember:IAMMember", "project"),
        ("gcp:storage/bucketIAMMember:BucketIAMMember", "bucket"),
        ("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember", "cryptoKeyId"),
    ):
        for grant in resources(document, type_token):
            member = grant["inputs"]["member"].partition(":")[2]
            grants.setdefault(member, set()).add((grant["inputs"]["role"], grant["inputs"][target]))
    # every member byoc grants anything to is listed, with exactly those roles
    assert set(grants) <= set(identities)
    for member, expected in grants.items():
        listed = {(r["role"], r["on"].split(" ", 1)[1]) for r in identities[member]["roles"]}
        assert listed == expected, member

    accounts = resources(document, "gcp:serviceaccount/account:Account")
    assert len(accounts) == 6  # nodes, gpu-nodes, builder, serving; with batch on, gateway and batch-worker
    ours = [i for i in identities.values() if i["kind"] == "service account (byoc)"]
    assert {i["resource"] for i in ours} == {a["name"] for a in accounts}
    for identity in ours:
        assert identity["roles"], identity["identity"]  # every account byoc creates has a role, and says which
        assert identity["used_by"], identity["identity"]
    annotated = {
        sa["inputs"]["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]: (
            f"{sa['inputs']['metadata']['namespace']}/{sa['inputs']['metadata']['name']}"
        )
        for sa in resources(document, "kubernetes:core/v1:ServiceAccount")
        if sa["inputs"]["metadata"].get("annotations")
    }
    assert len(annotated) == 4  # builder, serving, and batch's gateway and batch-worker
    for email, kubernetes_account in annotated.items():
        bound = identities[email]
        assert bound["workload_identity"] is True
        assert [(b["role"], b["kubernetes_service_account"]) for b in bound["may_act_as_it"]] == [
            ("roles/iam.workloadIdentityUser", kubernetes_account)
        ]
    builder = next(i for i in ours if i["resource"].endswith("builder"))
    assert {r["condition"]["description"] for r in builder["roles"]} == {
        "only sources/, adapters/, artifacts/",
        "only artifacts/",
    }
    nodes = [i for i in ours if "nodes" in i["resource"]]
    assert all(not i["workload_identity"] and not i["may_act_as_it"] for i in nodes)
    assert any("node pool byoc-gpu" in u for i in nodes for u in i["used_by"])
    kinds = {i["kind"] for i in identities.values()}
    assert {"GKE service agent", "Compute Engine service agent", "Cloud Storage service agent"} <= kinds
    roles = {r["role"] for i in identities.values() for r in i["roles"]}
    assert not roles & {"roles/owner", "roles/editor"} and not any(r.endswith(".admin") for r in roles)


def test_data_flows_stay_in_the_project(document: dict[str, Any], pack: Path) -> None:
    flows = read(pack, "data-flows.json")
    assert flows["leaves_the_project"] == [] and "leaves_the_account" not in flows
    assert flows["project"] == "example-project"
    assert flows["statement"].startswith("No prompt, completion, model weight, key or log leaves the project")
    paths = " | ".join(f"{f['from']} -> {f['to']} via {f['via']}" for f in flows["flows"])
    assert "GKE internal passthrough Network Load Balancer" in paths
    assert "Private Google Access" in paths
    sink = resources(document, "gcp:logging/projectSink:ProjectSink")[0]["inputs"]
    locked = sink["destination"].removeprefix("storage.googleapis.com/")
    assert f"Cloud Audit Logs of the project -> audit-log bucket {locked} via log sink {sink['name']}" in paths
    control_plane = resources(document, "gcp:container/cluster:Cluster")[0]["inputs"]["privateClusterConfig"]
    assert f"private endpoint in {control_plane['masterIpv4CidrBlock']}" in paths
    [nat] = resources(document, "gcp:compute/routerNat:RouterNat")
    assert any(f"Cloud NAT ({nat['inputs']['name']})" in line for line in flows["inbound_only"])
    assert any("gs://" in line for line in flows["metadata_outside_byoc"])
    assert not any("Kubernetes API endpoint" in line for line in flows["metadata_outside_byoc"])
    text = json.dumps(flows)
    for aws_word in ("AWS", "S3", "VPC endpoints", "CloudTrail", "account"):
        assert aws_word not in text, aws_word


def test_an_allowlisted_endpoint_names_who_can_reach_it(tmp_path: Path) -> None:
    document = plan_document(**GCP, network={"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24"]})
    flows = read(pack_of(document, tmp_path / "compliance"), "data-flows.json")
    [public] = [line for line in flows["metadata_outside_byoc"] if "Kubernetes API endpoint" in line]
    assert "203.0.113.0/24" in public


def test_report_notices_and_shared_responsibility_are_googles(document: dict[str, Any], pack: Path) -> None:
    report = (pack / "report.md").read_text()
    assert "> **Notice:** byoc's audit configs are authoritative per service" in report
    [locked] = [b for b in resources(document, "gcp:storage/bucket:Bucket") if b["inputs"].get("retentionPolicy")]
    assert f"> **Notice:** Locked retention: objects in {locked['inputs']['name']} (365 days)" in report
    assert "authoritative per service" in (pack / "report.html").read_text()
    shared = (pack / "shared-responsibility.md").read_text()
    assert "Cloud KMS" in shared and "Workload Identity" in shared
    assert "CloudTrail" not in shared and "Pod Identity" not in shared


def test_a_key_given_in_the_spec_is_not_assessed_for_rotation_never_passed(tmp_path: Path) -> None:
    document = plan_document(**GCP, encryption={"kms_key": BYO_KEY})
    pack = pack_of(document, tmp_path / "compliance")
    rotation = [f for f in read(pack, "findings.json") if f["check_id"] == "gcp_kms_key_rotation_enabled"]
    assert [f["status"] for f in rotation] == ["NOT_ASSESSED"] and BYO_KEY in rotation[0]["reason"]
    summary = read(pack, "summary.json")
    assert all(summary["controls"][c] == "NOT_ASSESSED" for c in rotation[0]["controls"])


def test_an_aws_pack_keeps_its_shape(tmp_path: Path) -> None:
    document = plan_document()  # the default spec: AWS
    pack = pack_of(document, tmp_path / "compliance")
    inventory = read(pack, "encryption-inventory.json")
    entry_keys = {"store", "resource", "type", "key", "customer_managed", "rotation", "key_resource", "note"}
    entry_keys |= {"rotation_assessed", "rotation_note"}  # AWS: a key not in the graph is not assessed, not "off"
    assert all(set(e) <= entry_keys for e in inventory)
    assert {e["store"] for e in inventory} == {
        "S3 bucket",
        "CloudWatch log group",
        "EKS secrets (etcd)",
        "EBS root volume (system nodes)",
        "EBS root volume (GPU nodes)",
        "EBS persistent volumes",
        "SQS queue",
        "CloudTrail log files",
        "ElastiCache (the gateway's shared limits, budgets and usage)",
    }
    assert all(e["customer_managed"] and e["rotation"] for e in inventory if "note" not in e)
    assert list(read(pack, "audit-logging.json")) == [
        "cloudtrail",
        "log_groups",
        "eks_control_plane_logs",
        "vpc_flow_logs",
        "s3_access_logging",
        "alert_rules",
    ]
    roles = read(pack, "iam-policies.json")
    assert roles and all(
        set(r) == {"role", "description", "trust_policy", "inline_policies", "managed_policies"} for r in roles
    )
    flows = read(pack, "data-flows.json")
    assert list(flows) == ["leaves_the_account", "statement", "flows", "inbound_only", "metadata_outside_byoc"]
    assert flows["leaves_the_account"] == [] and "S3 gateway endpoint" in json.dumps(flows)
    shared = (pack / "shared-responsibility.md").read_text()
    assert shared == (ROOT / "compliance" / "reports" / "shared-responsibility.md").read_text()
    assert "authoritative per service" not in (pack / "report.md").read_text()
