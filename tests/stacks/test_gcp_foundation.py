"""The GCP foundation's recorded resource graph, checked the way a security reviewer reads it.

The program runs whole under Pulumi's mocks (the offline engine): a wrong property name raises TypeError, so every
branch a spec option opens is run by at least one test here.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import mocks

from byoc.catalogs import load_catalog
from byoc.engines import program_for
from byoc.engines.offline import run_offline
from byoc.plan import Plan, RecordedResource
from byoc.resolve import resolve
from byoc.spec import load_spec
from compliance.checks import all_checks
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Status
from tests.conftest import ROOT, deploy, refused, run_byoc
from tests.stacks.plans import graph, one

GIVEN_KEY = "projects/acme-sec/locations/europe-west4/keyRings/platform/cryptoKeys/byoc"
KEY_RING = "projects/example-project/locations/europe-west4/keyRings/byoc-test"
AGENTS = {
    "secrets": "serviceAccount:service-123456789012@container-engine-robot.iam.gserviceaccount.com",
    "disks": "serviceAccount:service-123456789012@compute-system.iam.gserviceaccount.com",
    "artifacts": "serviceAccount:service-123456789012@gs-project-accounts.iam.gserviceaccount.com",
    "logs": "serviceAccount:service-123456789012@gs-project-accounts.iam.gserviceaccount.com",
    # gateway.store: managed (the default): Memorystore for Redis encrypts through its own agent
    "store": "serviceAccount:service-123456789012@cloud-redis.iam.gserviceaccount.com",
}
CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
KEY = "gcp:kms/cryptoKey:CryptoKey"
KEY_MEMBER = "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember"


def gke(**overrides: Any) -> Plan:
    """A GCP plan: the test spec (llama-3.1-8b-instruct, h100x1-fp8, EUROPE) on Google Cloud."""
    return graph(cloud="gcp", **overrides)


def named(plan: Plan, type_token: str, name: str) -> dict[str, Any]:
    found = [r for r in plan.by_type(type_token) if r.name == name]
    assert len(found) == 1, f"{len(found)} x {type_token} {name}"
    return found[0].inputs


def pool(plan: Plan, name: str = "test-gpu") -> dict[str, Any]:
    return named(plan, NODE_POOL, name)


def cluster(plan: Plan) -> dict[str, Any]:
    return one(plan, CLUSTER).inputs


# -- shape of the graph -----------------------------------------------------------------------------------------
def test_components_and_counts() -> None:
    types = gke().counts()
    for component in ("Network", "Keys", "Cluster", "GpuCapacity", "ArtifactStore", "AuditTrail", "Identities"):
        assert types[f"byoc:gcp:{component}"] == 1
    assert types[KEY] == 5  # secrets, disks, artifacts, logs, the gateway's store
    assert types[NODE_POOL] == 2
    assert types[BUCKET] == 3
    assert types["byoc:k8s:ServingStack"] == 1
    assert sum(types.values()) > 75


def test_every_resource_has_a_parent_component_and_our_provider() -> None:
    plan = gke()
    components = {r.name for r in plan.resources if r.type.startswith("byoc:")}
    for resource in plan.resources:
        if resource.type.startswith(("byoc:", "pulumi:providers:gcp")):
            continue
        assert resource.parent in components, resource.name
        if resource.type.startswith("gcp:"):
            assert resource.provider == "gcp", resource.name
        if resource.type.startswith("kubernetes:"):
            assert resource.provider == "test-k8s", resource.name


def test_everything_regional_is_in_the_resolved_region() -> None:
    plan = gke()
    assert deploy(cloud="gcp").region == "europe-west4"
    assert one(plan, "pulumi:providers:gcp").inputs["region"] == "europe-west4"
    assert cluster(plan)["location"] == "europe-west4"
    assert one(plan, "gcp:kms/keyRing:KeyRing").inputs["location"] == "europe-west4"
    assert one(plan, "gcp:compute/subnetwork:Subnetwork").inputs["region"] == "europe-west4"
    for node_pool in plan.by_type(NODE_POOL):
        assert node_pool.inputs["location"] == "europe-west4"
    for bucket in plan.by_type(BUCKET):
        assert bucket.inputs["location"] == "EUROPE-WEST4"  # one region, never a multi-region


def _gcp_class(type_token: str) -> Any:
    """gcp:storage/bucket:Bucket -> pulumi_gcp.storage.Bucket."""
    module, name = type_token.split(":")[1].split("/", maxsplit=1)[0], type_token.split(":")[2]
    return getattr(importlib.import_module(f"pulumi_gcp.{module}"), name)


def test_every_labelable_resource_carries_the_deployment_label() -> None:
    plan = gke()
    checked = 0
    for resource in plan.resources:
        if not resource.type.startswith("gcp:"):
            continue
        parameters = inspect.signature(_gcp_class(resource.type)._internal_init).parameters
        for field in ("labels", "resourceLabels"):
            if field == "labels" and "labels" not in parameters:
                continue
            if field == "resourceLabels" and "resource_labels" not in parameters:
                continue
            assert resource.inputs.get(field, {}).get("byoc-deployment") == "test", resource.name
            checked += 1
        if "nodeConfig" in resource.inputs:  # node VMs and disks
            assert resource.inputs["nodeConfig"]["resourceLabels"]["byoc-deployment"] == "test", resource.name
    assert checked == 5 + 3 + 1 + 2  # keys, buckets, the cluster, the store and its address range
    # provider inputs travel as JSON text
    assert json.loads(one(plan, "pulumi:providers:gcp").inputs["defaultLabels"]) == {"byoc-deployment": "test"}


# -- keys -------------------------------------------------------------------------------------------------------
def test_keys_rotate_every_90_days_and_wait_30_days_before_destruction() -> None:
    keys = {k.inputs["name"]: k.inputs for k in gke().by_type(KEY)}
    assert set(keys) == {"secrets", "disks", "artifacts", "logs", "store"}
    for key in keys.values():
        assert key["keyRing"] == KEY_RING
        assert key["rotationPeriod"] == "7776000s"
        assert key["destroyScheduledDuration"] == "2592000s"
        assert key["purpose"] == "ENCRYPT_DECRYPT"


def test_each_key_is_granted_to_exactly_the_service_agent_that_uses_it() -> None:
    grants = {
        g.inputs["cryptoKeyId"].rsplit("/", 1)[-1]: (g.inputs["member"], g.inputs["role"])
        for g in gke().by_type(KEY_MEMBER)
    }
    assert grants == {use: (agent, "roles/cloudkms.cryptoKeyEncrypterDecrypter") for use, agent in AGENTS.items()}


def test_every_data_store_is_encrypted_with_our_keys() -> None:
    plan = gke()
    key = f"{KEY_RING}/cryptoKeys/"
    assert cluster(plan)["databaseEncryption"] == {"state": "ENCRYPTED", "keyName": key + "secrets"}
    assert cluster(plan)["nodeConfig"]["bootDiskKmsKey"] == key + "disks"  # the default pool, until removed
    for node_pool in plan.by_type(NODE_POOL):
        assert node_pool.inputs["nodeConfig"]["bootDiskKmsKey"] == key + "disks"
    buckets = {b.name: b.inputs["encryption"] for b in plan.by_type(BUCKET)}
    assert buckets["test-artifacts"]["defaultKmsKeyName"] == key + "artifacts"
    assert buckets["test-access-logs"]["defaultKmsKeyName"] == key + "logs"
    assert buckets["test-audit-logs"]["defaultKmsKeyName"] == key + "logs"
    for encryption in buckets.values():  # new objects under a customer key, or not at all
        assert encryption["googleManagedEncryptionEnforcementConfig"] == {"restrictionMode": "FullyRestricted"}
        assert encryption["customerSuppliedEncryptionEnforcementConfig"] == {"restrictionMode": "FullyRestricted"}
    storage = one(plan, "kubernetes:storage.k8s.io/v1:StorageClass").inputs
    assert storage["provisioner"] == "pd.csi.storage.gke.io"
    assert storage["parameters"]["disk-encryption-kms-key"] == key + "disks"
    # the disks it provisions carry the deployment's label, which the leftover sweep looks for
    assert storage["parameters"]["labels"] == "byoc-deployment=test,byoc-managed-by=byoc"


def test_a_given_key_replaces_the_created_ones_and_is_granted_to_the_agents() -> None:
    plan = gke(encryption={"kms_key": GIVEN_KEY})
    assert plan.by_type(KEY) == [] and plan.by_type("gcp:kms/keyRing:KeyRing") == []
    assert cluster(plan)["databaseEncryption"]["keyName"] == GIVEN_KEY
    assert pool(plan)["nodeConfig"]["bootDiskKmsKey"] == GIVEN_KEY
    for bucket in plan.by_type(BUCKET):
        assert bucket.inputs["encryption"]["defaultKmsKeyName"] == GIVEN_KEY
    grants = plan.by_type(KEY_MEMBER)
    assert {g.inputs["cryptoKeyId"] for g in grants} == {GIVEN_KEY}
    assert sorted(g.inputs["member"] for g in grants) == sorted(set(AGENTS.values()))


@pytest.mark.parametrize("key", ["google-managed", "GMEK", f"{GIVEN_KEY}/cryptoKeyVersions/3"])
def test_a_google_managed_key_or_a_key_version_is_refused(key: str) -> None:
    error = refused(cloud="gcp", encryption={"kms_key": key})
    assert error.field == "encryption.kms_key"


def test_validate_exits_2_naming_the_field_for_a_google_managed_key(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: t\ncloud: gcp\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x8-fp8\n"
        "encryption: {kms_key: google-managed}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "byoc", "validate", "-f", str(spec)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert "encryption.kms_key" in result.stderr and "Google-managed" in result.stderr
    assert "Traceback" not in result.stderr


# -- ordering: what public reports show breaking such stacks -----------------------------------------------------
def _type_and_name(urn: str) -> tuple[str, str]:
    """urn:pulumi:<stack>::<project>::<parent types$type>::<name> -> (type, name)."""
    parts = urn.split("::")
    return parts[2].split("$")[-1], parts[-1]


@pytest.fixture(scope="module")
def registrations() -> Iterator[dict[tuple[str, str], dict[str, Any]]]:
    """(type, name) -> {dependencies: {(type, name)}, retain_on_delete} as the program registered them."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    original = mocks.MockMonitor.RegisterResource

    def recording(self: mocks.MockMonitor, request: Any) -> Any:
        seen[(request.type, request.name)] = {
            "dependencies": {_type_and_name(urn) for urn in request.dependencies},
            "retain_on_delete": bool(request.retainOnDelete),
        }
        return original(self, request)  # type: ignore[no-untyped-call]

    mocks.MockMonitor.RegisterResource = recording  # type: ignore[method-assign]
    try:
        deployment = deploy(cloud="gcp", name="order")
        program = program_for(deployment)
        assert program is not None
        run_offline(deployment, program)
        yield seen
    finally:
        mocks.MockMonitor.RegisterResource = original  # type: ignore[method-assign]


def test_pools_cluster_and_buckets_wait_for_their_key_grants(
    registrations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    def waits(type_token: str, name: str, *needs: tuple[str, str]) -> None:
        dependencies = registrations[(type_token, name)]["dependencies"]
        assert set(needs) <= dependencies, (name, dependencies)

    def grant(use: str) -> tuple[str, str]:
        return (KEY_MEMBER, f"order-{use}")

    # the GKE agent (secrets) and the Compute Engine agent (the default pool's disks) before the cluster
    waits(CLUSTER, "order-gke", grant("secrets"), grant("disks"))
    waits(NODE_POOL, "order-system", grant("disks"))
    waits(NODE_POOL, "order-gpu", grant("disks"))
    waits(BUCKET, "order-artifacts", grant("artifacts"))  # the Cloud Storage agent before the buckets
    waits(BUCKET, "order-access-logs", grant("logs"))
    waits(BUCKET, "order-audit-logs", grant("logs"))
    for binding in ("order-builder-workload-identity", "order-serving-workload-identity"):
        # the workload pool exists once the cluster does
        waits("gcp:serviceaccount/iAMMember:IAMMember", binding, (CLUSTER, "order-gke"))


def test_locked_audit_bucket_is_kept_on_destroy(registrations: dict[tuple[str, str], dict[str, Any]]) -> None:
    plan = gke()
    audit = named(plan, BUCKET, "test-audit-logs")
    assert audit["retentionPolicy"] == {"retentionPeriod": str(365 * 86400), "isLocked": True}
    assert audit["deletionPolicy"] == "ABANDON"  # recorded in plan.json: destroy leaves it, does not fail
    assert registrations[(BUCKET, "order-audit-logs")]["retain_on_delete"] is True
    for other in ("order-artifacts", "order-access-logs"):
        assert registrations[(BUCKET, other)]["retain_on_delete"] is False
    assert "deletionPolicy" not in named(plan, BUCKET, "test-artifacts")


def test_cluster_can_be_destroyed_and_replacing_defaults_are_explicit() -> None:
    inputs = cluster(gke())
    assert inputs["deletionProtection"] is False
    assert inputs["datapathProvider"] == "ADVANCED_DATAPATH"
    assert inputs["networkingMode"] == "VPC_NATIVE"
    assert inputs["defaultMaxPodsPerNode"] == 64
    assert inputs["monitoringConfig"]["managedPrometheus"] == {"enabled": True}
    assert inputs["addonsConfig"]["networkPolicyConfig"] == {"disabled": True}  # Dataplane V2 enforces instead
    driver = pool(gke())["nodeConfig"]["guestAccelerators"][0]["gpuDriverInstallationConfig"]
    assert driver == {"gpuDriverVersion": "LATEST"}


# -- network ----------------------------------------------------------------------------------------------------
def test_custom_mode_vpc_private_google_access_and_full_flow_logs() -> None:
    plan = gke()
    assert one(plan, "gcp:compute/network:Network").inputs["autoCreateSubnetworks"] is False
    subnet = one(plan, "gcp:compute/subnetwork:Subnetwork").inputs
    assert subnet["privateIpGoogleAccess"] is True
    assert subnet["logConfig"] == {
        "aggregationInterval": "INTERVAL_5_SEC",
        "flowSampling": 1.0,
        "metadata": "INCLUDE_ALL_METADATA",
    }
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]}
    assert (subnet["ipCidrRange"], ranges) == ("10.42.0.0/18", {"pods": "10.42.128.0/17", "services": "10.42.64.0/19"})
    assert cluster(plan)["privateClusterConfig"]["masterIpv4CidrBlock"] == "10.42.127.240/28"


def test_cidr_sizes_the_ranges() -> None:
    plan = gke(network={"cidr": "172.20.0.0/20"})
    subnet = one(plan, "gcp:compute/subnetwork:Subnetwork").inputs
    ranges = {r["rangeName"]: r["ipCidrRange"] for r in subnet["secondaryIpRanges"]}
    assert (subnet["ipCidrRange"], ranges) == ("172.20.0.0/22", {"pods": "172.20.8.0/21", "services": "172.20.4.0/23"})
    assert cluster(plan)["privateClusterConfig"]["masterIpv4CidrBlock"] == "172.20.7.240/28"


def test_cloud_nat_logs_and_has_ports_for_image_and_model_pulls() -> None:
    nat = one(gke(), "gcp:compute/routerNat:RouterNat").inputs
    assert nat["minPortsPerVm"] >= 4096 and nat["maxPortsPerVm"] == 65536
    assert nat["enableDynamicPortAllocation"] is True and nat["enableEndpointIndependentMapping"] is False
    assert nat["logConfig"] == {"enable": True, "filter": "ALL"}
    assert nat["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"


def test_firewall_denies_ingress_by_default_and_opens_nothing_to_the_internet() -> None:
    rules = {r.inputs["name"]: r.inputs for r in gke().by_type("gcp:compute/firewall:Firewall")}
    deny = rules["byoc-test-deny-ingress"]
    assert (deny["direction"], deny["priority"], deny["denies"]) == ("INGRESS", 65534, [{"protocol": "all"}])
    for name, rule in rules.items():
        assert rule["logConfig"]["metadata"] == "INCLUDE_ALL_METADATA", name
        if rule.get("allows"):
            assert "0.0.0.0/0" not in rule["sourceRanges"], name
            assert rule["targetTags"] == ["byoc-test"], name
    assert rules["byoc-test-control-plane-webhooks"]["sourceRanges"] == ["10.42.127.240/28"]


# -- cluster ----------------------------------------------------------------------------------------------------
def test_endpoint_private_by_default() -> None:
    inputs = cluster(gke())
    assert inputs["privateClusterConfig"]["enablePrivateNodes"] is True
    assert inputs["privateClusterConfig"]["enablePrivateEndpoint"] is True
    blocks = inputs["masterAuthorizedNetworksConfig"]["cidrBlocks"]
    assert [b["cidrBlock"] for b in blocks] == ["10.42.0.0/16"]  # the VPC only
    assert inputs["masterAuthorizedNetworksConfig"]["gcpPublicCidrsAccessEnabled"] is False


def test_endpoint_allowlist() -> None:
    inputs = cluster(gke(network={"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24"]}))
    assert inputs["privateClusterConfig"]["enablePrivateEndpoint"] is False
    assert inputs["privateClusterConfig"]["enablePrivateNodes"] is True
    blocks = [b["cidrBlock"] for b in inputs["masterAuthorizedNetworksConfig"]["cidrBlocks"]]
    assert blocks == ["10.42.0.0/16", "203.0.113.0/24"]  # the VPC, as through EKS's private endpoint, and the list


def test_endpoint_public_only_when_asked() -> None:
    inputs = cluster(gke(network={"endpoint": "public"}))
    assert inputs["privateClusterConfig"]["enablePrivateEndpoint"] is False
    assert [b["cidrBlock"] for b in inputs["masterAuthorizedNetworksConfig"]["cidrBlocks"]] == ["0.0.0.0/0"]


def test_cluster_identity_logging_and_upgrades() -> None:
    inputs = cluster(gke())
    assert inputs["workloadIdentityConfig"] == {"workloadPool": "example-project.svc.id.goog"}
    assert inputs["enableShieldedNodes"] is True
    assert inputs["masterAuth"]["clientCertificateConfig"] == {"issueClientCertificate": False}
    assert {"SYSTEM_COMPONENTS", "APISERVER", "WORKLOADS"} <= set(inputs["loggingConfig"]["enableComponents"])
    assert inputs["releaseChannel"] == {"channel": "REGULAR"}
    assert inputs["minMasterVersion"] == "1.34"
    exclusion = inputs["maintenancePolicy"]["maintenanceExclusions"][0]["exclusionOptions"]
    assert exclusion == {"scope": "NO_MINOR_UPGRADES", "endTimeBehavior": "UNTIL_END_OF_SUPPORT"}
    assert inputs["removeDefaultNodePool"] is True


def test_every_node_is_hardened() -> None:
    plan = gke()
    configs = [cluster(plan)["nodeConfig"], *(p.inputs["nodeConfig"] for p in plan.by_type(NODE_POOL))]
    for config in configs:
        assert config["shieldedInstanceConfig"] == {"enableSecureBoot": True, "enableIntegrityMonitoring": True}
        assert config["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
        assert config["metadata"] == {"disable-legacy-endpoints": "true"}
        assert config["imageType"] == "COS_CONTAINERD"
        assert not config["serviceAccount"].endswith("-compute@developer.gserviceaccount.com")  # never the default
    assert pool(plan)["nodeConfig"]["serviceAccount"] == "byoc-test-gpu-nodes@example-project.iam.gserviceaccount.com"
    assert pool(plan, "test-system")["nodeConfig"]["serviceAccount"] == (
        "byoc-test-nodes@example-project.iam.gserviceaccount.com"
    )


# -- GPU capacity -----------------------------------------------------------------------------------------------
def test_gpu_pool_scales_from_zero_with_its_labels_and_taint_in_the_template() -> None:
    inputs = pool(gke())
    # the zones Compute Engine offers the machine type in (offline: every placeholder zone)
    assert inputs["nodeLocations"] == ["europe-west4-a", "europe-west4-b", "europe-west4-c"]
    assert inputs["initialNodeCount"] == 0
    assert inputs["autoscaling"]["totalMinNodeCount"] == 0
    assert inputs["autoscaling"]["locationPolicy"] == "ANY"
    config = inputs["nodeConfig"]
    assert config["labels"]["byoc.dev/pool"] == "gpu"
    assert config["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert config["machineType"] == "a3-highgpu-1g"
    assert config["guestAccelerators"][0]["type"] == "nvidia-h100-80gb"
    assert config["guestAccelerators"][0]["count"] == 1
    assert config["spot"] is False
    assert config["diskType"] == "pd-ssd"


def test_gpu_pool_maximum_follows_max_replicas() -> None:
    one_node = pool(gke(autoscaling={"max_replicas": 1}))["autoscaling"]["totalMaxNodeCount"]
    many = pool(gke(autoscaling={"max_replicas": 12}))["autoscaling"]["totalMaxNodeCount"]
    assert one_node == 2  # an a3-highgpu-1g holds one replica, plus the build Job's node
    assert many == math.ceil(13 / 1)


def test_spot_capacity() -> None:
    assert pool(gke(capacity="spot"))["nodeConfig"]["spot"] is True


def test_h200_in_apac_on_a3_ultra_with_hyperdisk() -> None:
    plan = gke(region="APAC", shape="h200x8-fp8")
    assert one(plan, "pulumi:providers:gcp").inputs["region"].startswith("asia-")
    config = pool(plan)["nodeConfig"]
    assert config["machineType"] == "a3-ultragpu-8g"
    assert config["guestAccelerators"][0] == {
        "type": "nvidia-h200-141gb",
        "count": 8,
        "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"},
    }
    assert config["diskType"] == "hyperdisk-balanced"  # A3 Ultra takes Hyperdisk only
    assert config["gvnic"] == {"enabled": True}
    assert pool(plan)["autoscaling"]["totalMaxNodeCount"] == 2  # one replica per node, plus the build Job


# -- admission and people's access ------------------------------------------------------------------------------
POLICY = "gcp:binaryauthorization/policy:Policy"


def _admitted(plan: Plan) -> list[str]:
    return [p["namePattern"] for p in one(plan, POLICY).inputs["admissionWhitelistPatterns"]]


def test_binary_authorization_admits_only_byocs_images_its_charts_and_gke_system_images(
    registrations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    plan = gke()
    assert cluster(plan)["binaryAuthorization"] == {"evaluationMode": "PROJECT_SINGLETON_POLICY_ENFORCE"}
    policy = one(plan, POLICY).inputs
    assert policy["project"] == "example-project"
    assert policy["globalPolicyEvaluationMode"] == "ENABLE"  # GKE's own system images
    assert policy["defaultAdmissionRule"] == {
        "evaluationMode": "ALWAYS_DENY",
        "enforcementMode": "ENFORCED_BLOCK_AND_AUDIT_LOG",
    }
    assert "clusterAdmissionRules" not in policy
    admitted = _admitted(plan)
    catalog = load_catalog().images
    trtllm = catalog["trtllm"]
    # the serving image exactly as pinned, by digest: another push of the tag is not admitted
    assert f"{trtllm['repository']}@{trtllm['digest']}" in admitted
    assert not [p for p in admitted if p.startswith(trtllm["repository"]) and p.endswith("*")]
    # every chart the plan installs has its images admitted, and nothing else is
    releases = [r.inputs["name"].replace("-", "_") for r in _kubernetes(plan, "Release")]
    charts = {p for chart in releases for p in catalog["chart_images"][chart]}
    own = {p for p in admitted if not p.endswith("*")}
    assert set(admitted) == charts | own and len(own) == 2
    for pattern in admitted:
        registry, _, path = pattern.partition("/")
        assert "." in registry and path and "**" not in pattern, pattern  # registry/path, one segment at most
    # the policy exists before the cluster enforces it
    assert (POLICY, "order-admission") in registrations[(CLUSTER, "order-gke")]["dependencies"]


def test_admission_follows_the_specs_images_and_its_own_prometheus() -> None:
    runtime = "europe-docker.pkg.dev/acme/byoc/byoc-runtime@sha256:" + "a" * 64
    plan = gke(images={"runtime": runtime}, monitoring={"prometheus_url": "http://prometheus-operated.monitoring:9090"})
    admitted = _admitted(plan)
    assert runtime in admitted
    assert not [p for p in admitted if "byoc-runtime:" in p]  # the default it replaces is not admitted
    assert not [p for p in admitted if p.startswith("quay.io/prometheus")]  # no kube-prometheus-stack installed
    assert set(load_catalog().images["chart_images"]["keda"]) <= set(admitted)


def test_google_groups_for_rbac_only_when_the_spec_names_the_group() -> None:
    assert "authenticatorGroupsConfig" not in cluster(gke())
    group = "gke-security-groups@example.com"
    assert cluster(gke(access={"security_group": group}))["authenticatorGroupsConfig"] == {"securityGroup": group}


@pytest.mark.parametrize(
    "group", ["admins@example.com", "gke-security-groups", "GKE-Security-Groups@example.com", "gke-security-groups@x"]
)
def test_a_group_gke_cannot_read_exits_2_naming_the_field(tmp_path: Path, group: str) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: t\ncloud: gcp\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x8-fp8\n"
        f"access: {{security_group: '{group}'}}\n"
    )
    result = run_byoc("validate", "-f", str(spec), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "access.security_group" in result.stderr and "gke-security-groups@" in result.stderr
    assert "Traceback" not in result.stderr


def test_google_groups_for_rbac_is_refused_on_aws() -> None:
    error = refused(access={"security_group": "gke-security-groups@example.com"})
    assert error.field == "access.security_group" and "access entries" in error.message


# -- buckets and audit logs -------------------------------------------------------------------------------------
def test_buckets_private_uniform_versioned_or_locked_and_logged() -> None:
    plan = gke()
    buckets = {b.name: b.inputs for b in plan.by_type(BUCKET)}
    assert set(buckets) == {"test-artifacts", "test-access-logs", "test-audit-logs"}
    for name, bucket in buckets.items():
        assert bucket["publicAccessPrevention"] == "enforced", name
        assert bucket["uniformBucketLevelAccess"] is True, name
        assert bucket["forceDestroy"] is False, name
        assert bucket["name"] == f"byoc-{name}-123456789012"
        assert bucket["versioning"]["enabled"] is ("retentionPolicy" not in bucket), name
    assert buckets["test-artifacts"]["logging"] == {
        "logBucket": "byoc-test-access-logs-123456789012",
        "logObjectPrefix": "artifacts/",
    }
    noncurrent = [r for r in buckets["test-artifacts"]["lifecycleRules"] if r["action"]["type"] == "Delete"]
    assert noncurrent[0]["condition"]["daysSinceNoncurrentTime"] == 30
    # the audit-log bucket's usage logs too (as the AWS trail bucket's access logs); the access-log bucket logs
    # nowhere, as on AWS (into itself would log its own log writes)
    assert buckets["test-audit-logs"]["logging"] == {
        "logBucket": "byoc-test-access-logs-123456789012",
        "logObjectPrefix": "audit-logs/",
    }
    assert "logging" not in buckets["test-access-logs"]
    writers = {m.name: m.inputs["member"] for m in plan.by_type(BUCKET_MEMBER)}
    assert writers["test-access-log-delivery"] == "group:cloud-storage-analytics@google.com"


def test_audit_logs_on_and_exported_to_the_locked_bucket() -> None:
    plan = gke()
    configs = {c.inputs["service"]: c.inputs for c in plan.by_type("gcp:projects/iAMAuditConfig:IAMAuditConfig")}
    assert set(configs) == {"storage.googleapis.com", "cloudkms.googleapis.com", "container.googleapis.com"}
    for config in configs.values():
        assert [c["logType"] for c in config["auditLogConfigs"]] == ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]
        assert config["project"] == "example-project"
    sink = one(plan, "gcp:logging/projectSink:ProjectSink").inputs
    assert sink["destination"] == "storage.googleapis.com/byoc-test-audit-logs-123456789012"
    assert sink["filter"] == 'logName:"cloudaudit.googleapis.com"'
    assert sink["uniqueWriterIdentity"] is True
    writer = named(plan, BUCKET_MEMBER, "test-audit-log-writer")
    assert writer["bucket"] == "byoc-test-audit-logs-123456789012"
    assert writer["member"] == "serviceAccount:service-123456789012@gcp-sa-logging.iam.gserviceaccount.com"
    assert writer["role"] == "roles/storage.objectCreator"


# -- identities -------------------------------------------------------------------------------------------------
def test_no_primitive_or_admin_role_anywhere() -> None:
    plan = gke()
    roles = [
        r.inputs["role"]
        for r in plan.resources
        if r.type.startswith("gcp:") and "role" in r.inputs and r.type != "gcp:compute/router:Router"
    ]
    assert roles and not [r for r in roles if r in {"roles/owner", "roles/editor"} or r.endswith(".admin")]
    project_grants = {(m.inputs["member"], m.inputs["role"]) for m in plan.by_type("gcp:projects/iAMMember:IAMMember")}
    assert project_grants == {
        (f"serviceAccount:byoc-test-{who}@example-project.iam.gserviceaccount.com", role)
        for who in ("nodes", "gpu-nodes")
        for role in ("roles/container.defaultNodeServiceAccount", "roles/artifactregistry.reader")
    }


def test_workload_identity_binds_only_this_namespaces_service_accounts() -> None:
    bindings = {
        b.inputs["serviceAccountId"].rsplit("/", 1)[-1]: b.inputs
        for b in gke().by_type("gcp:serviceaccount/iAMMember:IAMMember")
    }
    # builder and serving; with batch on (the default) the gateway and the batch worker too (test_batch_stack.py)
    roles = ("builder", "serving", "gateway", "batch-worker")
    assert set(bindings) == {f"byoc-test-{role}@example-project.iam.gserviceaccount.com" for role in roles}
    for role in roles:
        binding = bindings[f"byoc-test-{role}@example-project.iam.gserviceaccount.com"]
        assert binding["role"] == "roles/iam.workloadIdentityUser"
        assert binding["member"] == f"serviceAccount:example-project.svc.id.goog[byoc-test/byoc-{role}]"


def test_builder_writes_only_its_prefix_and_serving_only_reads() -> None:
    plan = gke()
    grants = {m.name: m.inputs for m in plan.by_type(BUCKET_MEMBER)}
    objects = "projects/_/buckets/byoc-test-artifacts-123456789012/objects/"
    write = grants["test-builder-write"]
    assert write["role"] == "roles/storage.objectCreator"
    assert f'"{objects}artifacts/"' in write["condition"]["expression"]
    assert "sources/" not in write["condition"]["expression"]
    serving = grants["test-serving-read"]
    assert serving["role"] == "roles/storage.objectViewer"
    assert f'"{objects}artifacts/"' in serving["condition"]["expression"]
    assert "sources/" not in serving["condition"]["expression"]
    serving_roles = {g["role"] for g in grants.values() if g["member"].startswith("serviceAccount:byoc-test-serving")}
    assert serving_roles == {"roles/storage.objectViewer"}
    # Cloud Storage decrypts through its own agent: no workload is granted a key
    assert not [g for g in plan.by_type(KEY_MEMBER) if "byoc-test-" in g.inputs["member"]]


def test_the_longest_name_fits_service_account_ids_and_bucket_names() -> None:
    name = "a-deployment-name-of-32-chars-xy"
    assert len(name) == 32  # the spec's longest
    plan = gke(name=name)
    account_ids = [a.inputs["accountId"] for a in plan.by_type("gcp:serviceaccount/account:Account")]
    assert len(set(account_ids)) == 6  # nodes, gpu-nodes, builder, serving, and batch's gateway and batch-worker
    for account_id in account_ids:
        # (the longest role, batch-worker, keeps 7 characters of the name: byoc-a-deplo-<hash>-batch-worker)
        assert 6 <= len(account_id) <= 30 and account_id.startswith("byoc-a-depl"), account_id
    for bucket in plan.by_type(BUCKET):
        assert len(bucket.inputs["name"]) <= 63, bucket.inputs["name"]


def test_model_in_the_customers_bucket_is_readable_by_the_builder() -> None:
    model = {"id": "llama-3.1-8b-instruct", "source": "gs://acme-models/llama/8b/"}
    grant = named(gke(model=model), BUCKET_MEMBER, "test-builder-model-source")
    assert grant["bucket"] == "acme-models"
    assert grant["role"] == "roles/storage.objectViewer"
    assert '"projects/_/buckets/acme-models/objects/llama/8b/"' in grant["condition"]["expression"]
    assert [m for m in gke().by_type(BUCKET_MEMBER) if m.name == "test-builder-model-source"] == []


# -- the serving stack on GKE -----------------------------------------------------------------------------------
def _kubernetes(plan: Plan, kind: str) -> list[RecordedResource]:
    return [r for r in plan.resources if r.type.startswith("kubernetes:") and r.type.endswith(f":{kind}")]


def test_serving_stack_uses_gke_node_selectors_internal_load_balancer_and_workload_identity() -> None:
    plan = gke()
    job = _kubernetes(plan, "Job")[0].inputs["spec"]["template"]["spec"]
    assert job["nodeSelector"] == {
        "cloud.google.com/gke-nodepool": "byoc-gpu",
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in job["tolerations"]
    env = {e["name"]: e["value"] for e in job["containers"][0]["env"]}
    assert env["BYOC_ARTIFACT_KMS_KEY"] == f"{KEY_RING}/cryptoKeys/artifacts"
    assert env["BYOC_HF_MIRROR"] == "gs://byoc-test-artifacts-123456789012/sources/hf"
    service = next(s for s in _kubernetes(plan, "Service") if s.inputs["spec"].get("type") == "LoadBalancer")
    assert service.inputs["metadata"]["annotations"] == {"networking.gke.io/load-balancer-type": "Internal"}
    accounts = {a.inputs["metadata"]["name"]: a.inputs["metadata"] for a in _kubernetes(plan, "ServiceAccount")}
    assert accounts["byoc-builder"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "byoc-test-builder@example-project.iam.gserviceaccount.com"
    }
    assert accounts["byoc-serving"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "byoc-test-serving@example-project.iam.gserviceaccount.com"
    }


def test_gke_runs_the_gpu_stack_no_gpu_operator_and_collects_dcgm_metrics() -> None:
    plan = gke()
    releases = {r.inputs["name"] for r in _kubernetes(plan, "Release")}
    assert releases == {"keda", "kube-prometheus-stack"}  # GKE's driver, runtime and device plugin serve the GPUs
    monitoring = cluster(plan)["monitoringConfig"]
    assert "DCGM" in monitoring["enableComponents"]
    assert monitoring["managedPrometheus"] == {"enabled": True}  # GKE's DCGM metrics need it


# -- compliance on the recorded graph ---------------------------------------------------------------------------
def _findings(plan: Plan, **overrides: Any) -> list[Any]:
    document = deploy(cloud="gcp", **overrides).plan_document()
    document["resources"] = [r.as_dict() for r in plan.resources]
    return evaluate(graph_from_plan(document))


@pytest.mark.parametrize(
    ("region", "shape", "location"),
    [("EUROPE", "h100x8-fp8", "europe-"), ("APAC", "h200x8-fp8", "asia-")],
)
def test_the_done_when_plans_pass_every_check(region: str, shape: str, location: str) -> None:
    plan = gke(region=region, shape=shape)
    assert one(plan, "pulumi:providers:gcp").inputs["region"].startswith(location)
    findings = _findings(plan, region=region, shape=shape)
    assert [(f.check.id, f.resource.name) for f in findings if f.status in (Status.FAIL, Status.ERROR)] == []
    evaluated = {f.check.id for f in findings}
    gcp_checks = {c.id for c in all_checks() if c.cloud == "gcp"}
    assert gcp_checks <= evaluated  # none is left out for want of a resource
    # the batch checks judge only the bucket the batch store names (compliance/checks/batch.py), and pass there
    batch = {f.resource.name: f.status for f in findings if f.check.id == "gcp_batch_storage_access_scoped"}
    assert batch == {
        "test-artifacts": Status.PASS,
        "test-access-logs": Status.NOT_APPLICABLE,
        "test-audit-logs": Status.NOT_APPLICABLE,
    }
    # (the batch checks and the weights populator's judge what only batch.enabled and node_cache render)
    assert not [
        f
        for f in findings
        if f.check.cloud == "gcp"
        and f.status == Status.NOT_APPLICABLE
        and not f.check.id.startswith(("gcp_batch_", "gcp_weights_"))
    ]


def test_a_public_endpoint_fails_exactly_the_control_plane_check() -> None:
    network = {"endpoint": "public"}
    failed = {f.check.id for f in _findings(gke(network=network), network=network) if f.status == Status.FAIL}
    assert failed == {"gcp_gke_control_plane_not_public"}


# -- the engine, the extra and the Pulumi project ---------------------------------------------------------------
def test_a_gcp_plan_without_the_gcp_extra_exits_2_with_the_pip_command(tmp_path: Path) -> None:
    """pulumi_gcp hidden (as in a plain install without the gcp extra): the plan stops before importing the program."""
    script = (
        "import runpy, sys\n"
        "sys.modules['pulumi_gcp'] = None  # import and importlib.util.find_spec both see no module\n"
        "sys.argv = ['byoc', 'plan', '--cloud', 'gcp', '--region', 'EUROPE', '--model', 'llama-3.1-8b-instruct',\n"
        f"            '--shape', 'h100x8-fp8', '--out', {str(tmp_path / 'out')!r}]\n"
        "runpy.run_module('byoc', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "--cloud gcp" in result.stderr and "byoc's gcp extra" in result.stderr and "[gcp]" in result.stderr
    assert "pip install" in result.stderr and "[gcp]" in result.stderr.split("pip install", 1)[1]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "plan.json").exists()


def test_pulumi_project_runs_the_same_program(tmp_path: Path) -> None:
    """What `pulumi preview -C stacks/gcp` runs: __main__.py reads the spec from the stack config."""
    spec = tmp_path / "byoc.yaml"
    # one region, whose stack may have any name (a multi-region one's stacks: tests/stacks/test_multi_region.py)
    spec.write_text((ROOT / "examples" / "byoc.yaml").read_text() + "placement: {min_regions: 1}\n")
    deployment = resolve(load_spec(spec, {"cloud": "gcp"}))

    def via_main(_: Any) -> dict[str, Any]:
        pulumi.runtime.set_config("byoc:spec", str(spec))
        runpy.run_path(str(ROOT / "stacks" / "gcp" / "__main__.py"), run_name="__main__")
        return {}

    from_main = run_offline(deployment, via_main)
    # what `byoc plan -f byoc.yaml --cloud gcp` records
    planned = resolve(load_spec(spec, {"cloud": "gcp"}))
    program = program_for(planned)
    assert program is not None
    from_cli = run_offline(planned, program)
    assert from_main.counts() == from_cli.counts()

    def every_input(plan: Plan) -> list[str]:  # registration order varies between runs; the graph must not
        return sorted(json.dumps(r.as_dict(), sort_keys=True) for r in plan.resources)

    assert every_input(from_main) == every_input(from_cli)
