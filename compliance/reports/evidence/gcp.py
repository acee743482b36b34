"""Google Cloud evidence: the Cloud KMS keys, what each encrypts (GKE secrets, node boot disks, Persistent Disk
volumes, Cloud Storage buckets) and who may use it; the project's audit configs and the log sink to a bucket under a
locked retention policy; every identity byoc grants a role to (its service accounts, with Workload Identity, and the
Google service agents); and the paths data takes through the VPC (internal load balancer, Private Google Access,
Cloud NAT, the private control plane).

They read the type tokens and inputs stacks/gcp registers (camelCase), as compliance/checks/gcp.py does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from compliance.checks import gcp
from compliance.checks.common import as_list
from compliance.model import Graph, Resource
from compliance.reports.evidence.common import (
    SERVICE_ACCOUNT,
    STORAGE_CLASS,
    CloudEvidence,
    KeyFacts,
    Store,
    load_balancers,
    read_text,
    storage_class,
)

KEY_RING = "gcp:kms/keyRing:KeyRing"
KEY_GRANT = "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember"
BUCKET_GRANT = "gcp:storage/bucketIAMMember:BucketIAMMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
ACCOUNT_GRANT = "gcp:serviceaccount/iAMMember:IAMMember"
ROUTER_NAT = "gcp:compute/routerNat:RouterNat"
DAY = 86400

# Grants, by type token: (what the grant is on, the input that names it). A binding (authoritative) names its
# members in a list; a member grant names one.
GRANTS: dict[str, tuple[str, str]] = {
    gcp.IAM_MEMBER: ("project", "project"),
    gcp.IAM_BINDING: ("project", "project"),
    BUCKET_GRANT: ("bucket", "bucket"),
    KEY_GRANT: ("key", "cryptoKeyId"),
    ACCOUNT_GRANT: ("service account", "serviceAccountId"),
}
# Identities byoc grants roles to without creating them ("Service agents" in Google's IAM docs), by domain.
GOOGLE_IDENTITIES = {
    "container-engine-robot.iam.gserviceaccount.com": "GKE service agent",
    "compute-system.iam.gserviceaccount.com": "Compute Engine service agent",
    "gs-project-accounts.iam.gserviceaccount.com": "Cloud Storage service agent",
    "gcp-sa-logging.iam.gserviceaccount.com": "the log sink's writer identity (Cloud Logging)",
    "cloud-storage-analytics@google.com": "Cloud Storage usage-log writer (Google group)",
}
# GKE's internal passthrough Network Load Balancer ("LoadBalancer Service parameters" in the GKE docs).
INTERNAL_LOAD_BALANCER = {"networking.gke.io/load-balancer-type": "Internal"}
# Cloud Logging keeps what lands in the project's _Default log bucket 30 days unless its retention is changed
# (Cloud Logging docs, "Routing and storage overview").
DEFAULT_LOG_BUCKET = "Cloud Logging, the project's _Default log bucket (30 days unless you change it)"
WORKLOAD_IDENTITY_USER = "roles/iam.workloadIdentityUser"


def _seconds(value: Any) -> int | None:
    """A duration as Cloud KMS and Cloud Storage write it: "7776000s", or seconds as a string or number."""
    text = str(value if value is not None else "").removesuffix("s")
    try:
        return int(float(text))
    except ValueError:
        return None


def _grants(graph: Graph) -> list[dict[str, Any]]:
    """Every role grant the graph declares: member, role, what it is on, and its condition."""
    found = []
    for type_token, (kind, target_input) in GRANTS.items():
        for grant in graph.by_type(type_token):
            for member in as_list(grant.get("member")) + as_list(grant.get("members")):
                entry = {"member": member, "role": grant.get("role"), "on": f"{kind} {grant.get(target_input)}"}
                if grant.get("condition"):
                    entry["condition"] = grant.get("condition")
                found.append(entry | {"target": grant.get(target_input), "kind": kind})
    return found


def _public(grant: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in grant.items() if k not in ("target", "kind", "member")}


def _key_name(key: Resource) -> str:
    return f"{key.get('keyRing')}/cryptoKeys/{key.get('name')}"


def keys(graph: Graph) -> KeyFacts:
    index = {handle: key for key in graph.by_type(gcp.CRYPTO_KEY) for handle in (key.id, _key_name(key))}
    grants = [g for g in _grants(graph) if g["kind"] == "key"]

    def facts(reference: Any) -> dict[str, Any]:
        if not reference:
            return {"key": None, "customer_managed": False, "rotation": None}
        key = index.get(str(reference))
        period = None if key is None else key.get("rotationPeriod")
        seconds = _seconds(period)
        return {
            "key": reference,
            # a Cloud KMS key name is a customer-managed key; Google-managed encryption names no key
            "customer_managed": key is not None or "/cryptoKeys/" in str(reference),
            "rotation": None if key is None else seconds is not None,
            "key_resource": None if key is None else key.name,
            "rotation_period": period,
            "rotation_days": None if seconds is None else seconds // DAY,
            "protection_level": None if key is None else key.get("versionTemplate.protectionLevel"),
            # who may use the key, as byoc grants it (roles on the key's ring or project are granted outside byoc)
            "key_users": [{"member": g["member"], "role": g["role"]} for g in grants if g["target"] == str(reference)],
        }

    return facts


def _bucket(bucket: Resource, graph: Graph) -> Iterable[Store]:
    restricted = [
        kind
        for kind, path in (
            ("Google-managed", "encryption.googleManagedEncryptionEnforcementConfig.restrictionMode"),
            ("customer-supplied", "encryption.customerSuppliedEncryptionEnforcementConfig.restrictionMode"),
        )
        if bucket.get(path) == "FullyRestricted"
    ]
    note = f"new objects may not use {' or '.join(restricted)} encryption" if restricted else ""
    yield Store(
        f"Cloud Storage bucket {bucket.get('name') or bucket.name}", bucket.get("encryption.defaultKmsKeyName"), note
    )


def _cluster(cluster: Resource, graph: Graph) -> Iterable[Store]:
    encrypted = cluster.get("databaseEncryption.state") == "ENCRYPTED"
    yield Store(
        "GKE secrets (etcd, application-layer encryption)",
        cluster.get("databaseEncryption.keyName") if encrypted else None,
    )
    if cluster.get("nodeConfig"):
        removed = cluster.get("removeDefaultNodePool") is True
        pool = "default node pool, removed once the cluster exists" if removed else "default node pool"
        yield Store(f"node boot disks ({pool})", cluster.get("nodeConfig.bootDiskKmsKey"))
    if cluster.get("loggingConfig.enableComponents"):
        yield Store(
            "GKE logs in Cloud Logging",
            None,
            "Google-managed encryption: Cloud Logging's CMEK is a project or organization setting byoc does not "
            "change; the Cloud Audit Logs are also exported to the CMEK audit-log bucket",
        )


def _node_pool(pool: Resource, graph: Graph) -> Iterable[Store]:
    nodes = "GPU nodes" if pool.get("nodeConfig.guestAccelerators") else "system nodes"
    yield Store(
        f"node boot disks ({nodes}, pool {pool.get('name') or pool.name})", pool.get("nodeConfig.bootDiskKmsKey")
    )


def _subnetwork(subnet: Resource, graph: Graph) -> Iterable[Store]:
    if subnet.get("logConfig"):
        yield Store(
            "VPC flow logs in Cloud Logging",
            None,
            "Google-managed encryption: Cloud Logging's CMEK is a project or organization setting byoc does not change",
        )


def _audit_config(config: Resource, graph: Graph) -> dict[str, Any]:
    return {
        "service": config.get("service"),
        "log_types": [c.get("logType") for c in as_list(config.get("auditLogConfigs"))],
        "exempted_members": sorted(
            {m for c in as_list(config.get("auditLogConfigs")) for m in as_list(c.get("exemptedMembers"))}
        ),
        "admin_activity": "always on (Cloud Audit Logs cannot turn Admin Activity logs off)",
    }


def _bucket_retention(bucket: Resource) -> dict[str, Any]:
    seconds = _seconds(bucket.get("retentionPolicy.retentionPeriod"))
    return {
        "bucket": bucket.get("name") or bucket.name,
        "location": bucket.get("location"),
        "kms_key": bucket.get("encryption.defaultKmsKeyName"),
        "retention_days": None if seconds is None else seconds // DAY,
        "retention_locked": bucket.get("retentionPolicy.isLocked") is True,
        "versioning": bucket.get("versioning.enabled"),
        "public_access_prevention": bucket.get("publicAccessPrevention"),
        "deletion_policy": bucket.get("deletionPolicy"),
    }


def _sink(sink: Resource, graph: Graph) -> dict[str, Any]:
    destination = str(sink.get("destination") or "")
    target = destination.removeprefix("storage.googleapis.com/")
    buckets = [b for b in graph.by_type(gcp.BUCKET) if destination.startswith("storage.") and b.get("name") == target]
    log_filter = str(sink.get("filter") or "")
    writers = [g for g in _grants(graph) if g["kind"] == "bucket" and g["target"] == target]
    return {
        "sink": sink.get("name") or sink.name,
        "filter": log_filter,
        "captures": (
            "every Cloud Audit Log of the project: Admin Activity, Data Access (the services above), System Event, "
            "Policy Denied"
            if log_filter == 'logName:"cloudaudit.googleapis.com"'
            else f"the log entries matching {log_filter or '(no filter: every log entry)'}"
        ),
        "destination": destination,
        "unique_writer_identity": sink.get("uniqueWriterIdentity"),
        "writer_grants": [{"member": g["member"], "role": g["role"]} for g in writers],
        "destination_bucket": _bucket_retention(buckets[0]) if buckets else None,
    }


def _gke_logging(cluster: Resource, graph: Graph) -> dict[str, Any]:
    # GKE writes the Kubernetes API's audit logs as Cloud Audit Logs of service k8s.io (GKE docs, "GKE audit
    # logging"), so a sink of every Cloud Audit Log exports them too.
    sinks = [
        s.get("name") or s.name for s in graph.by_type(gcp.SINK) if "cloudaudit.googleapis.com" in str(s.get("filter"))
    ]
    return {
        "cluster": cluster.get("name") or cluster.name,
        "components": cluster.get("loggingConfig.enableComponents"),
        "destination": DEFAULT_LOG_BUCKET,
        "kubernetes_audit_logs": "Cloud Audit Logs of service k8s.io"
        + (f", exported by log sink {', '.join(sinks)}" if sinks else ", not exported by byoc"),
        "monitoring_components": cluster.get("monitoringConfig.enableComponents"),
        "managed_prometheus": cluster.get("monitoringConfig.managedPrometheus.enabled"),
    }


def _flow_logs(subnet: Resource, graph: Graph) -> dict[str, Any]:
    config = subnet.get("logConfig") or {}
    return {
        "subnetwork": subnet.get("name") or subnet.name,
        "enabled": bool(config),
        "aggregation_interval": config.get("aggregationInterval"),
        "flow_sampling": config.get("flowSampling"),
        "metadata": config.get("metadata"),
        "destination": DEFAULT_LOG_BUCKET,
    }


def _nat_logs(nat: Resource, graph: Graph) -> dict[str, Any]:
    return {
        "nat": nat.get("name") or nat.name,
        "enabled": nat.get("logConfig.enable") is True,
        "filter": nat.get("logConfig.filter"),
        "destination": DEFAULT_LOG_BUCKET,
    }


def _firewall_logs(rule: Resource, graph: Graph) -> dict[str, Any]:
    return {
        "rule": rule.get("name") or rule.name,
        "action": "allow" if rule.get("allows") else "deny",
        "logged": bool(rule.get("logConfig")),
        "metadata": rule.get("logConfig.metadata"),
    }


def _usage_logs(bucket: Resource, graph: Graph) -> dict[str, Any] | None:
    if not bucket.get("logging"):
        return None
    return {
        "bucket": bucket.get("name") or bucket.name,
        "log_bucket": bucket.get("logging.logBucket"),
        "prefix": bucket.get("logging.logObjectPrefix"),
    }


def _email(account: Resource, grants: list[dict[str, Any]], graph: Graph) -> str:
    """The account's email, as the grants and annotations that name it spell it (the project is in it)."""
    prefix = f"{account.get('accountId')}@"
    named = [str(g["member"]).removeprefix("serviceAccount:") for g in grants]
    named += [str(g["target"]).rsplit("/", 1)[-1] for g in grants if g["kind"] == "service account"]
    named += [
        str(sa.get("metadata.annotations", {}).get("iam.gke.io/gcp-service-account", ""))
        for sa in graph.by_type(SERVICE_ACCOUNT)
    ]
    return next((n for n in named if n.startswith(prefix)), f"{prefix}<project>.iam.gserviceaccount.com")


def _workload(member: str) -> str:
    """serviceAccount:<project>.svc.id.goog[namespace/name] -> namespace/name."""
    return member.partition("[")[2].rstrip("]") if ".svc.id.goog[" in member else ""


def iam_policies(graph: Graph) -> list[dict[str, Any]]:
    grants = _grants(graph)
    identities, ours = [], set()
    for account in graph.by_type(ACCOUNT):
        email = _email(account, grants, graph)
        member = f"serviceAccount:{email}"
        ours.add(member)
        acting = [g for g in grants if g["kind"] == "service account" and str(g["target"]).endswith(f"/{email}")]
        used_by = [
            f"node pool {p.get('name') or p.name}"
            for p in graph.by_type(gcp.NODE_POOL)
            if p.get("nodeConfig.serviceAccount") == email
        ]
        used_by += [
            f"cluster {c.get('name') or c.name} (default node pool)"
            for c in graph.by_type(gcp.CLUSTER)
            if c.get("nodeConfig.serviceAccount") == email
        ]
        used_by += [
            f"Kubernetes service account {sa.get('metadata.namespace')}/{sa.get('metadata.name')} (Workload Identity)"
            for sa in graph.by_type(SERVICE_ACCOUNT)
            if (sa.get("metadata.annotations") or {}).get("iam.gke.io/gcp-service-account") == email
        ]
        identities.append(
            {
                "identity": email,
                "kind": "service account (byoc)",
                "resource": account.name,
                "description": account.get("description"),
                "roles": [_public(g) for g in grants if g["member"] == member],
                "may_act_as_it": [
                    {"member": g["member"], "role": g["role"]}
                    | (
                        {"kubernetes_service_account": _workload(str(g["member"]))}
                        if _workload(str(g["member"]))
                        else {}
                    )
                    for g in acting
                ],
                "workload_identity": any(g["role"] == WORKLOAD_IDENTITY_USER for g in acting),
                "used_by": used_by,
            }
        )
    others = sorted({str(g["member"]) for g in grants} - ours, key=str)
    for member in others:
        if _workload(member):
            continue  # a Kubernetes service account: listed under the account it may act as
        kind = next((k for domain, k in GOOGLE_IDENTITIES.items() if member.endswith(domain)), "granted by byoc")
        identities.append(
            {
                "identity": member.partition(":")[2],
                "kind": kind,
                "member": member,
                "roles": [_public(g) for g in grants if g["member"] == member],
            }
        )
    return identities


def _project(graph: Graph) -> str:
    found = [str(r.get("project")) for r in graph.resources if r.type.startswith("gcp:") and r.get("project")]
    return found[0] if found else "the project"


def data_flows(graph: Graph) -> dict[str, Any]:
    project = _project(graph)
    buckets = {str(b.get("labels.byoc-bucket") or b.get("name") or b.name): b for b in graph.by_type(gcp.BUCKET)}
    names = {use: str(b.get("name") or b.name) for use, b in buckets.items()}
    private_access = [s for s in graph.by_type(gcp.SUBNETWORK) if s.get("privateIpGoogleAccess") is True]
    nats = [str(n.get("name") or n.name) for n in graph.by_type(ROUTER_NAT)]
    balancers = load_balancers(graph, INTERNAL_LOAD_BALANCER)
    clusters = graph.by_type(gcp.CLUSTER)
    google_apis = "Private Google Access (nodes have no external addresses)" if private_access else "Cloud NAT"

    flows = [
        {
            "from": "clients in the VPC" if lb["internal"] else "clients anywhere (external load balancer)",
            "to": f"gateway (Service {lb['service']}, ports {', '.join(str(p) for p in lb['ports'])})",
            "via": (
                "GKE internal passthrough Network Load Balancer, TLS terminated by the gateway"
                if lb["internal"]
                else "external load balancer, TLS terminated by the gateway"
            ),
            "data": "API requests and completions",
        }
        for lb in balancers
    ]
    flows.append(
        {
            "from": "gateway",
            "to": "serving pods",
            "via": "cluster network (NetworkPolicy, Dataplane V2)",
            "data": "requests",
        }
    )
    for instance in graph.by_type(gcp.REDIS):
        flows.append(
            {
                "from": "gateway",
                "to": f"Memorystore for Redis {instance.get('name') or instance.name} (the gateway's shared store)",
                "via": "private services access, TLS, AUTH",
                "data": "per-key counters, budgets and usage (no prompt or completion)",
            }
        )
    if "artifacts" in names:
        artifact_key = buckets["artifacts"].get("encryption.defaultKmsKeyName") or "Google-managed keys"
        flows.append(
            {
                "from": "build Job, serving pods (Workload Identity)",
                "to": f"artifact bucket {names['artifacts']}",
                "via": f"{google_apis}, TLS",
                "data": f"model artifacts and adapters (CMEK: {artifact_key})",
            }
        )
    for bucket in graph.by_type(gcp.BUCKET):
        if bucket.get("logging.logBucket"):
            flows.append(
                {
                    "from": f"bucket {bucket.get('name')}",
                    "to": f"access-log bucket {bucket.get('logging.logBucket')}",
                    "via": "Cloud Storage usage logs",
                    "data": "access records (no object content)",
                }
            )
    flows.append(
        {
            "from": "nodes",
            "to": "Google APIs (Artifact Registry, Cloud Logging, Cloud Monitoring, the GKE API)",
            "via": google_apis,
            "data": "images, logs, metrics",
        }
    )
    for cluster in clusters:
        private = cluster.get("privateClusterConfig.enablePrivateEndpoint") is True
        flows.append(
            {
                "from": "GKE control plane (Google-managed, "
                + (
                    f"private endpoint in {cluster.get('privateClusterConfig.masterIpv4CidrBlock')})"
                    if private
                    else "public endpoint)"
                ),
                "to": "nodes",
                "via": "VPC peering to the private nodes",
                "data": "Kubernetes API traffic; Secrets stored encrypted with "
                + str(cluster.get("databaseEncryption.keyName") or "Google-managed keys"),
            }
        )
    flows.append(
        {
            "from": "Google services of the project",
            "to": "Cloud KMS keys",
            "via": "their service agents (GKE, Compute Engine, Cloud Storage), which alone hold the encrypter role",
            "data": "data keys wrapped and unwrapped (key material never leaves Cloud KMS)",
        }
    )
    leaves = []
    for sink in graph.by_type(gcp.SINK):
        destination = str(sink.get("destination") or "")
        target = destination.removeprefix("storage.googleapis.com/")
        declared = any(b.get("name") == target for b in graph.by_type(gcp.BUCKET))
        flows.append(
            {
                "from": "Cloud Audit Logs of the project",
                "to": f"audit-log bucket {target}" if declared else destination,
                "via": f"log sink {sink.get('name') or sink.name}",
                "data": "audit logs",
            }
        )
        if not declared:
            leaves.append(f"audit logs to {destination}, which this deployment does not declare")
    leaves += [
        f"API responses to clients outside the VPC through {lb['service']}" for lb in balancers if not lb["internal"]
    ]
    flows.append(
        {
            "from": "GKE, the subnetwork, Cloud NAT, the firewall rules",
            "to": "Cloud Logging and Cloud Monitoring of the project",
            "via": "Google",
            "data": "component logs, flow logs, NAT and firewall logs, metrics (DCGM GPU metrics)",
        }
    )

    public_api = []
    for cluster in clusters:
        if cluster.get("privateClusterConfig.enablePrivateEndpoint") is True:
            continue
        cidrs = [b.get("cidrBlock") for b in as_list(cluster.get("masterAuthorizedNetworksConfig.cidrBlocks"))]
        reach = ", ".join(str(c) for c in cidrs) if cidrs and "0.0.0.0/0" not in cidrs else "anywhere"
        public_api.append(
            f"the Kubernetes API endpoint is reachable from outside the VPC (network.endpoint): from {reach}"
        )
    return {
        "leaves_the_project": leaves,
        "project": project,
        "statement": (
            f"No prompt, completion, model weight, key or log leaves the project ({project}): byoc sends no telemetry, "
            f"the gateway keeps no request content, every store is in {graph.region}, and nodes reach Google APIs "
            "through Private Google Access."
            if not leaves
            else f"Data leaves the project ({project}): {'; '.join(leaves)}."
        ),
        "flows": flows,
        "inbound_only": [
            f"container images pulled from nvcr.io and your registry through Cloud NAT ({', '.join(nats)})"
            if nats
            else "container images pulled from your registry (no Cloud NAT: no internet egress)",
            "model weights fetched by the build Job from the model source you named (or its mirror)",
        ],
        "metadata_outside_byoc": [
            "Pulumi state (resource names, ids, configuration; never data) is kept where your Pulumi backend is: "
            "keep it in the project with PULUMI_BACKEND_URL=gs://<bucket> if it must not leave",
            "the GKE control plane is run by Google for the project: it holds the Kubernetes objects (Secrets "
            "encrypted with your key) in the deployment's region",
            *public_api,
        ],
    }


def _audit_config_notice(configs: list[Resource]) -> str:
    services = ", ".join(str(c.get("service")) for c in configs)
    return (
        f"byoc's audit configs are authoritative per service: for {services} they replace any audit config the "
        "project already has (exemptions included)."
    )


def _locked_bucket_notice(buckets: list[Resource]) -> str:
    locked = [b for b in buckets if b.get("retentionPolicy.isLocked") is True]
    if not locked:
        return ""
    days = ", ".join(
        f"{b.get('name')} ({(_seconds(b.get('retentionPolicy.retentionPeriod')) or 0) // DAY} days)" for b in locked
    )
    return (
        f"Locked retention: objects in {days} cannot be deleted or overwritten before their retention ends, by "
        "anyone; `byoc destroy` leaves such a bucket in the project."
    )


EVIDENCE = CloudEvidence(
    keys=keys,
    stores={
        gcp.BUCKET: _bucket,
        gcp.CLUSTER: _cluster,
        gcp.NODE_POOL: _node_pool,
        STORAGE_CLASS: storage_class,
        gcp.SUBNETWORK: _subnetwork,
        gcp.REDIS: lambda instance, graph: [
            Store(
                "Memorystore for Redis (the gateway's shared limits, budgets and usage)",
                instance.get("customerManagedKey"),
            )
        ],
    },
    audit={
        "audit_configs": (gcp.AUDIT_CONFIG, _audit_config),
        "log_sinks": (gcp.SINK, _sink),
        "gke_logging": (gcp.CLUSTER, _gke_logging),
        "subnetwork_flow_logs": (gcp.SUBNETWORK, _flow_logs),
        "nat_logs": (ROUTER_NAT, _nat_logs),
        "firewall_logs": (gcp.FIREWALL, _firewall_logs),
        "storage_usage_logs": (gcp.BUCKET, _usage_logs),
    },
    identities=iam_policies,
    data_flows=data_flows,
    shared_responsibility=read_text("shared-responsibility-gcp.md"),
    notices={gcp.AUDIT_CONFIG: _audit_config_notice, gcp.BUCKET: _locked_bucket_notice},
)
