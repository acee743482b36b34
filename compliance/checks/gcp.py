"""Google Cloud checks for the same controls (GKE, Cloud KMS, Cloud Storage, audit logs, VPC).

They read the Pulumi gcp provider's type tokens and inputs as stacks/gcp registers them (camelCase), so every one
of them evaluates on a `byoc plan --cloud gcp` graph. The controls each evidences: compliance/catalogs/mappings/
(`*_gcp.yaml`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from compliance.checks.common import as_list, residency_verdict
from compliance.model import Graph, Resource, Verdict, check, not_applicable, verdict

CRYPTO_KEY = "gcp:kms/cryptoKey:CryptoKey"
BUCKET = "gcp:storage/bucket:Bucket"
CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
AUDIT_CONFIG = "gcp:projects/iAMAuditConfig:IAMAuditConfig"
SINK = "gcp:logging/projectSink:ProjectSink"
SUBNETWORK = "gcp:compute/subnetwork:Subnetwork"
NETWORK = "gcp:compute/network:Network"
REDIS = "gcp:redis/instance:Instance"
# Cloud KMS rotation periods are durations in seconds ("7776000s" = 90 days); a year at most.
MAX_ROTATION_SECONDS = 365 * 86400


def _seconds(value: object) -> int | None:
    text = str(value or "")
    return int(float(text[:-1])) if text.endswith("s") and text[:-1].replace(".", "", 1).isdigit() else None


@check(
    id="gcp_kms_key_rotation_enabled",
    title="Cloud KMS keys rotate at least yearly",
    severity="high",
    resource_types=[CRYPTO_KEY],
    remediation="Set rotation_period to 7776000s (90 days) or at most 31536000s.",
    risk="A key that never rotates exposes more data if compromised.",
    cloud="gcp",
)
def gcp_kms_rotation(resource: Resource, graph: Graph) -> Verdict:
    seconds = _seconds(resource.get("rotationPeriod"))
    return verdict(
        seconds is not None and seconds <= MAX_ROTATION_SECONDS, "rotationPeriod", resource.get("rotationPeriod")
    )


@check(
    id="gcp_storage_bucket_cmek",
    title="Cloud Storage buckets use a customer-managed key",
    severity="high",
    resource_types=[BUCKET],
    remediation="Set encryption.default_kms_key_name to the deployment's Cloud KMS key.",
    risk="Google-managed keys cannot be revoked or audited by you.",
    cloud="gcp",
)
def gcp_bucket_cmek(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("encryption.defaultKmsKeyName")
    return verdict(str(key or "").startswith("projects/"), "encryption.defaultKmsKeyName", key)


@check(
    id="gcp_storage_bucket_public_access_prevention",
    title="Buckets enforce public access prevention and uniform access",
    severity="critical",
    resource_types=[BUCKET],
    remediation="Set public_access_prevention 'enforced' and uniform_bucket_level_access true.",
    risk="An ACL or IAM grant could make objects public.",
    cloud="gcp",
)
def gcp_bucket_public_access(resource: Resource, graph: Graph) -> Verdict:
    prevention = resource.get("publicAccessPrevention")
    uniform = resource.get("uniformBucketLevelAccess")
    return verdict(
        prevention == "enforced" and uniform is True,
        "publicAccessPrevention/uniformBucketLevelAccess",
        {"publicAccessPrevention": prevention, "uniformBucketLevelAccess": uniform},
    )


@check(
    id="gcp_storage_bucket_versioning",
    title="Buckets keep object versions",
    severity="medium",
    resource_types=[BUCKET],
    remediation="Enable versioning on the bucket, or lock a retention policy on it (audit-log buckets).",
    risk="An overwrite or delete could not be undone.",
    cloud="gcp",
)
def gcp_bucket_versioning(resource: Resource, graph: Graph) -> Verdict:
    # Cloud Storage refuses versioning on a bucket with a retention policy ("Bucket Lock"); a locked policy is the
    # stronger guarantee: no object can be overwritten or deleted until it has been kept the whole period.
    versioned = resource.get("versioning.enabled")
    locked = (
        resource.get("retentionPolicy.isLocked") is True
        and (_seconds(f"{resource.get('retentionPolicy.retentionPeriod', '')}s") or 0) > 0
    )
    return verdict(
        versioned is True or locked,
        "versioning.enabled/retentionPolicy",
        {"versioning": versioned, "retentionPolicy": resource.get("retentionPolicy")},
    )


@check(
    id="gcp_gke_database_encryption",
    title="GKE encrypts Kubernetes secrets with a customer key",
    severity="high",
    resource_types=[CLUSTER],
    remediation="Set database_encryption state ENCRYPTED with the deployment's key.",
    risk="Secrets in etcd would rely on Google-managed encryption only.",
    cloud="gcp",
)
def gcp_gke_database_encryption(resource: Resource, graph: Graph) -> Verdict:
    state = resource.get("databaseEncryption.state")
    key = resource.get("databaseEncryption.keyName")
    return verdict(state == "ENCRYPTED" and bool(key), "databaseEncryption", {"state": state, "keyName": key})


@check(
    id="gcp_gke_private_nodes",
    title="GKE nodes have no public addresses",
    severity="high",
    resource_types=[CLUSTER],
    remediation="Set private_cluster_config.enable_private_nodes true.",
    risk="Nodes with public addresses are reachable from the internet.",
    cloud="gcp",
)
def gcp_gke_private_nodes(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("privateClusterConfig.enablePrivateNodes")
    return verdict(value is True, "privateClusterConfig.enablePrivateNodes", value)


@check(
    id="gcp_gke_control_plane_not_public",
    title="The GKE control plane is private or allow-listed",
    severity="critical",
    resource_types=[CLUSTER],
    remediation="Enable the private endpoint, or master authorized networks without 0.0.0.0/0.",
    risk="Anyone on the internet can reach the API server.",
    cloud="gcp",
)
def gcp_gke_control_plane(resource: Resource, graph: Graph) -> Verdict:
    private = resource.get("privateClusterConfig.enablePrivateEndpoint") is True
    blocks = [b.get("cidrBlock") for b in as_list(resource.get("masterAuthorizedNetworksConfig.cidrBlocks"))]
    ok = private or (bool(blocks) and "0.0.0.0/0" not in blocks)
    return verdict(ok, "privateClusterConfig/masterAuthorizedNetworksConfig", {"private": private, "cidrs": blocks})


@check(
    id="gcp_gke_network_policy",
    title="GKE enforces network policies (Dataplane V2)",
    severity="medium",
    resource_types=[CLUSTER],
    remediation="Set datapath_provider ADVANCED_DATAPATH (or enable the network policy add-on).",
    risk="NetworkPolicies would not be enforced.",
    cloud="gcp",
)
def gcp_gke_network_policy(resource: Resource, graph: Graph) -> Verdict:
    datapath = resource.get("datapathProvider")
    legacy = resource.get("networkPolicy.enabled")
    return verdict(datapath == "ADVANCED_DATAPATH" or legacy is True, "datapathProvider", datapath)


@check(
    id="gcp_gke_logging_components",
    title="GKE sends system and API server logs to Cloud Logging",
    severity="medium",
    resource_types=[CLUSTER],
    remediation="Enable logging_config components SYSTEM_COMPONENTS, APISERVER and WORKLOADS.",
    risk="Control-plane activity would leave no record.",
    cloud="gcp",
)
def gcp_gke_logging(resource: Resource, graph: Graph) -> Verdict:
    components = as_list(resource.get("loggingConfig.enableComponents"))
    return verdict({"SYSTEM_COMPONENTS", "APISERVER"} <= set(components), "loggingConfig.enableComponents", components)


@check(
    id="gcp_gke_node_boot_disk_cmek",
    title="GKE node boot disks use a customer key",
    severity="high",
    resource_types=[NODE_POOL],
    remediation="Set node_config.boot_disk_kms_key.",
    risk="Model weights on node disks would not be under your key.",
    cloud="gcp",
)
def gcp_node_boot_disk_cmek(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("nodeConfig.bootDiskKmsKey")
    return verdict(str(key or "").startswith("projects/"), "nodeConfig.bootDiskKmsKey", key)


@check(
    id="gcp_gke_metadata_server",
    title="GKE node pools hide node credentials from pods (GKE metadata server)",
    severity="high",
    resource_types=[NODE_POOL],
    remediation="Set node_config.workload_metadata_config.mode GKE_METADATA (Workload Identity).",
    risk="Pods could read the node's service-account credentials.",
    cloud="gcp",
)
def gcp_gke_metadata_server(resource: Resource, graph: Graph) -> Verdict:
    mode = resource.get("nodeConfig.workloadMetadataConfig.mode")
    return verdict(mode == "GKE_METADATA", "nodeConfig.workloadMetadataConfig.mode", mode)


@check(
    id="gcp_audit_data_access_logs",
    title="Data Access audit logs are on for the services holding data",
    severity="high",
    resource_types=[AUDIT_CONFIG],
    remediation="Enable DATA_READ and DATA_WRITE audit log types (and ADMIN_READ).",
    risk="Reads and writes of model data would not be recorded.",
    cloud="gcp",
)
def gcp_audit_data_access(resource: Resource, graph: Graph) -> Verdict:
    kinds = {c.get("logType") for c in as_list(resource.get("auditLogConfigs"))}
    return verdict({"DATA_READ", "DATA_WRITE", "ADMIN_READ"} <= kinds, "auditLogConfigs[].logType", sorted(kinds))


@check(
    id="gcp_logging_sink_exports_audit_logs",
    title="Audit logs are exported to a retained destination",
    severity="medium",
    resource_types=[SINK],
    # Admin Activity audit logs are the record of configuration changes; a locked bucket keeps them unaltered
    # (the role log-file validation plays for CloudTrail).
    remediation="Route cloudaudit.googleapis.com logs to a bucket with a locked retention policy (Bucket Lock).",
    risk="Cloud Logging's default retention may be shorter than the audit period, and unlocked logs can be altered.",
    cloud="gcp",
)
def gcp_logging_sink(resource: Resource, graph: Graph) -> Verdict:
    destination = str(resource.get("destination") or "")
    log_filter = str(resource.get("filter") or "")
    # A destination bucket the graph declares must lock its retention; one outside it is judged by the sink alone.
    target = destination.removeprefix("storage.googleapis.com/")
    buckets = [b for b in graph.by_type(BUCKET) if destination.startswith("storage.") and b.get("name") == target]
    locked = all(b.get("retentionPolicy.isLocked") is True for b in buckets)
    return verdict(
        bool(destination) and "cloudaudit.googleapis.com" in log_filter and locked,
        "destination/filter/retentionPolicy",
        {
            "destination": destination,
            "filter": log_filter,
            "retentionPolicy": [b.get("retentionPolicy") for b in buckets] or None,
        },
    )


@check(
    id="gcp_subnetwork_flow_logs",
    title="VPC flow logs are on for the subnetworks",
    severity="medium",
    resource_types=[SUBNETWORK],
    remediation="Set log_config on the subnetwork.",
    risk="Network-level investigation would be impossible.",
    cloud="gcp",
)
def gcp_flow_logs(resource: Resource, graph: Graph) -> Verdict:
    config = resource.get("logConfig")
    return verdict(bool(config), "logConfig", config)


IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"


def unseen_in_plan(plan: Mapping[str, Any]) -> dict[str, str]:
    """What a GCP plan cannot show, by resource type: those checks are NOT_ASSESSED with this reason, never PASS."""
    key = (plan.get("encryption") or {}).get("kms_key")
    if key and key != "create":
        return {
            CRYPTO_KEY: f"the customer key {key} (encryption.kms_key) is not in the plan: byoc uses it but does not "
            "create it, so its rotation is not declared here"
        }
    return {}


IAM_BINDING = "gcp:projects/iAMBinding:IAMBinding"
PROVIDER = "pulumi:providers:gcp"
PRIMITIVE_ROLES = {"roles/owner", "roles/editor"}


@check(
    id="gcp_iam_no_primitive_roles",
    title="No project grant of the primitive Owner or Editor roles",
    severity="critical",
    resource_types=[IAM_MEMBER, IAM_BINDING],
    remediation="Grant predefined or custom roles that name what the identity needs.",
    risk="Owner and Editor reach every resource in the project.",
    cloud="gcp",
)
def gcp_iam_no_primitive_roles(resource: Resource, graph: Graph) -> Verdict:
    role = resource.get("role")
    return verdict(role not in PRIMITIVE_ROLES, "role", role)


@check(
    id="gcp_data_residency_region",
    title="Every regional resource is in one of the deployment's regions, each inside the residency set",
    severity="high",
    resource_types=[PROVIDER, BUCKET, CLUSTER],
    remediation="Keep the provider's region and every resource's location inside the spec's region or mega-region.",
    risk="Data stored outside the agreed jurisdiction breaks residency commitments.",
    cloud="gcp",
)
def gcp_data_residency_region(resource: Resource, graph: Graph) -> Verdict:
    location = str(resource.get("region") or resource.get("location") or graph.region).lower()
    return residency_verdict(graph, location, resource.type == PROVIDER, "region/location")


FIREWALL = "gcp:compute/firewall:Firewall"
INTERNET = {"0.0.0.0/0", "::/0"}
# Node service accounts to avoid: the Compute Engine default holds Editor on the project unless someone removed it.
DEFAULT_NODE_ACCOUNTS = ("default", "-compute@developer.gserviceaccount.com")


@check(
    id="gcp_firewall_no_ingress_from_internet",
    title="No firewall rule allows ingress from the internet",
    severity="high",
    resource_types=[FIREWALL],
    remediation="Allow ingress only from the VPC's ranges or named sources; deny the rest with a logged rule.",
    risk="Nodes would be reachable from anywhere on the allowed ports.",
    cloud="gcp",
)
def gcp_firewall_no_internet_ingress(resource: Resource, graph: Graph) -> Verdict:
    sources = set(as_list(resource.get("sourceRanges")))
    allowing = bool(as_list(resource.get("allows"))) and resource.get("direction", "INGRESS") == "INGRESS"
    open_to = sorted(sources & INTERNET) if allowing else []
    return verdict(
        not open_to, "allows/sourceRanges", {"allows": resource.get("allows"), "sourceRanges": sorted(sources)}
    )


@check(
    id="gcp_gke_node_service_account_not_default",
    title="GKE nodes run as a dedicated service account, not the Compute Engine default",
    severity="high",
    resource_types=[CLUSTER, NODE_POOL],
    remediation="Set node_config.service_account to an account with roles/container.defaultNodeServiceAccount.",
    risk="The default Compute Engine account usually holds Editor: every pod escape would own the project.",
    cloud="gcp",
)
def gcp_node_service_account(resource: Resource, graph: Graph) -> Verdict:
    account = str(resource.get("nodeConfig.serviceAccount") or "default")
    if resource.type == CLUSTER and resource.get("removeDefaultNodePool") is True and not resource.get("nodeConfig"):
        account = "(default pool removed)"
    return verdict(not account.endswith(DEFAULT_NODE_ACCOUNTS), "nodeConfig.serviceAccount", account)


@check(
    id="gcp_gke_shielded_nodes_secure_boot",
    title="GKE nodes boot verified (Shielded VM secure boot and integrity monitoring)",
    severity="medium",
    resource_types=[NODE_POOL],
    remediation="Set node_config.shielded_instance_config enable_secure_boot and enable_integrity_monitoring.",
    risk="A tampered boot chain (rootkit) would go unnoticed on the nodes holding the model.",
    cloud="gcp",
)
def gcp_shielded_nodes(resource: Resource, graph: Graph) -> Verdict:
    shielded = resource.get("nodeConfig.shieldedInstanceConfig") or {}
    ok = shielded.get("enableSecureBoot") is True and shielded.get("enableIntegrityMonitoring") is not False
    return verdict(ok, "nodeConfig.shieldedInstanceConfig", shielded)


@check(
    id="gcp_gke_node_pool_bounded",
    title="Every GKE node pool has one machine type and an autoscaling maximum",
    severity="medium",
    resource_types=[NODE_POOL],
    remediation="Set node_config.machine_type and autoscaling max_node_count (or total_max_node_count).",
    risk="An unbounded pool can grow GPU spend without limit.",
    cloud="gcp",
)
def gcp_node_pool_bounded(resource: Resource, graph: Graph) -> Verdict:
    most = resource.get("autoscaling.totalMaxNodeCount") or resource.get("autoscaling.maxNodeCount")
    machine = resource.get("nodeConfig.machineType")
    return verdict(
        bool(machine) and most is not None and float(most) > 0,
        "nodeConfig.machineType/autoscaling",
        {"machineType": machine, "autoscaling": resource.get("autoscaling")},
    )


# -- Memorystore for Redis: the gateway's shared store (stacks/gcp/store.py) -------------------------------------
# Prowler has no Memorystore checks; these ask what its ElastiCache checks ask (at rest with a customer key, TLS,
# AUTH, private network, failover, snapshots).
@check(
    id="gcp_memorystore_redis_cmek",
    title="The gateway's store is encrypted with a customer-managed key",
    severity="high",
    resource_types=[REDIS],
    remediation="Set customer_managed_key to the deployment's Cloud KMS key (granted to the Memorystore agent).",
    risk="Google-managed keys cannot be revoked or audited by you.",
    cloud="gcp",
)
def gcp_memorystore_cmek(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("customerManagedKey")
    return verdict(str(key or "").startswith("projects/"), "customerManagedKey", key)


@check(
    id="gcp_memorystore_redis_in_transit_encryption",
    title="The gateway's store accepts TLS connections only",
    severity="high",
    resource_types=[REDIS],
    remediation="Set transit_encryption_mode SERVER_AUTHENTICATION (the instance then serves TLS only, on 6378).",
    risk="Keys' usage and the AUTH string would cross the network in clear.",
    cloud="gcp",
)
def gcp_memorystore_in_transit(resource: Resource, graph: Graph) -> Verdict:
    mode = resource.get("transitEncryptionMode")  # unset: DISABLED
    return verdict(mode == "SERVER_AUTHENTICATION", "transitEncryptionMode", mode)


@check(
    id="gcp_memorystore_redis_auth_enabled",
    title="The gateway's store requires authentication",
    severity="high",
    resource_types=[REDIS],
    remediation="Set auth_enabled.",
    risk="Anything that reaches the instance could read or reset every key's limits and usage.",
    cloud="gcp",
)
def gcp_memorystore_auth(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("authEnabled")  # unset: false
    return verdict(value is True, "authEnabled", value)


@check(
    id="gcp_memorystore_redis_private_service_access",
    title="The gateway's store is reachable from the deployment's VPC only",
    severity="high",
    resource_types=[REDIS],
    remediation="Use connect_mode PRIVATE_SERVICE_ACCESS with authorized_network the deployment's VPC.",
    risk="An instance authorized on another network (the project's default one) is reachable from it.",
    cloud="gcp",
)
def gcp_memorystore_private(resource: Resource, graph: Graph) -> Verdict:
    mode = resource.get("connectMode")
    network = resource.get("authorizedNetwork")
    ours = {n.id for n in graph.by_type(NETWORK)}
    ok = mode == "PRIVATE_SERVICE_ACCESS" and network in ours
    return verdict(ok, "connectMode/authorizedNetwork", {"connect_mode": mode, "network": network})


@check(
    id="gcp_memorystore_redis_high_availability",
    title="The gateway's store keeps a replica in another zone and fails over",
    severity="medium",
    resource_types=[REDIS],
    remediation="Use tier STANDARD_HA.",
    risk="A node or zone failure would leave every gateway replica on its per-replica fallback.",
    cloud="gcp",
)
def gcp_memorystore_ha(resource: Resource, graph: Graph) -> Verdict:
    tier = resource.get("tier")  # required by the API: no default
    return verdict(tier == "STANDARD_HA", "tier", tier)


@check(
    id="gcp_memorystore_redis_backup_enabled",
    title="The gateway's store takes RDB snapshots",
    severity="medium",
    resource_types=[REDIS],
    remediation="Set persistence_config persistence_mode RDB with an rdb_snapshot_period.",
    risk="The usage ledger and budgets could not be restored after a loss.",
    cloud="gcp",
)
def gcp_memorystore_backup(resource: Resource, graph: Graph) -> Verdict:
    mode = resource.get("persistenceConfig.persistenceMode")  # unset: DISABLED
    return verdict(mode == "RDB", "persistenceConfig.persistenceMode", mode)


# -- cold_start.weights_cache node_cache on GKE (stacks/gcp/weights.py) ----------------------------------------
# The GKE Volume Populator copies the built artifact onto Hyperdisk ML volumes as the Kubernetes service account its
# GCPDataSource names: that principal reads one artifact's prefix (artifacts/<model>/<cache key>/), objects and
# listings, nothing else of the bucket; the volumes are created under the deployment's key.
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
POPULATOR_SUBJECT = re.compile(r"principal://iam\.googleapis\.com/projects/[^/]+/locations/global/workloadIdentityPools/"
                               r"[^/]+\.svc\.id\.goog/subject/ns/[^/]+/sa/[^/]+-weights-populator")  # fmt: skip
ARTIFACT_PREFIX_ONLY = re.compile(
    r'resource\.name\.startsWith\("projects/_/buckets/[^/"]+/objects/(?P<prefix>artifacts/[^/*"]+/[^/*"]+/)"\) \|\| '
    r'api\.getAttribute\("storage\.googleapis\.com/objectListPrefix", ""\)\.startsWith\("(?P=prefix)"\)'
)
POPULATOR_ROLE = "roles/storage.objectViewer"  # the GKE Volume Populator guide's role: objects get and list


@check(
    id="gcp_weights_populator_reads_artifact_prefix_only",
    title="The GKE Volume Populator's identity reads only the model artifact's prefix",
    severity="high",
    # a grant to the same principal on the project (or a project binding that lists it) reaches every bucket: each
    # is judged too, not only the bucket's
    resource_types=[BUCKET_MEMBER, IAM_MEMBER, IAM_BINDING],
    remediation="Grant roles/storage.objectViewer to the populator's Workload Identity principal under an IAM "
    "condition on objects under artifacts/<model>/<key>/ and listings whose objectListPrefix lies under it, "
    "nothing else.",
    risk="The transfer Job runs in the serving namespace; a wider grant lets whatever runs as its service account "
    "read the model sources, other builds and batch files of the bucket.",
    cloud="gcp",
)
def gcp_weights_populator_scoped(resource: Resource, graph: Graph) -> Verdict:
    members = [str(resource.get("member") or "")] + [str(m) for m in resource.get("members") or []]
    if not any(POPULATOR_SUBJECT.fullmatch(member) for member in members):
        return not_applicable("not the weights populator's grant")
    if resource.type != BUCKET_MEMBER:
        return verdict(False, "member(s)", {"project grant": resource.get("role")})
    role = resource.get("role")
    expression = str(resource.get("condition.expression") or "")
    # the principal's permissions are the union of its grants: another one beside this (on the bucket or the
    # project) widens it whatever this one says
    others = [
        str(g.get("role"))
        for g in graph.by_type(BUCKET_MEMBER, IAM_MEMBER, IAM_BINDING)
        if g is not resource and members[0] in [g.get("member"), *(g.get("members") or [])]
    ]
    scoped = role == POPULATOR_ROLE and ARTIFACT_PREFIX_ONLY.fullmatch(expression) is not None and not others
    return verdict(
        scoped, "role/condition.expression", {"role": role, "condition": expression or None, "other grants": others}
    )


@check(
    id="gcp_gke_storage_class_cmek",
    title="GKE StorageClasses create their disks under a customer key",
    severity="high",
    resource_types=[STORAGE_CLASS],
    remediation="Set the StorageClass parameter disk-encryption-kms-key to the deployment's disk key.",
    risk="Volumes the PD CSI driver creates (the shared Hyperdisk ML weights among them) would hold the model under "
    "Google-managed keys only.",
    cloud="gcp",
)
def gcp_gke_storage_class_cmek(resource: Resource, graph: Graph) -> Verdict:
    if resource.get("provisioner") != "pd.csi.storage.gke.io":
        return not_applicable("not a Compute Engine persistent disk StorageClass")
    key = resource.get("parameters.disk-encryption-kms-key")
    return verdict(str(key or "").startswith("projects/"), "parameters.disk-encryption-kms-key", key)
