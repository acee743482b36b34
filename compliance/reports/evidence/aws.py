"""Supporting evidence security teams ask for, read from the same graph the checks read: the encryption
inventory, the audit-log configuration, the IAM policies byoc's roles get, the data flows (and what leaves the
account), and the shared-responsibility matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compliance.checks import aws
from compliance.checks.common import as_list, policy_document
from compliance.model import Graph, Resource


def _key_index(graph: Graph) -> dict[str, Resource]:
    """Keys by every way other resources refer to them (ARN tail, id, alias-free name)."""
    index: dict[str, Resource] = {}
    for key in graph.by_type(aws.KEY):
        for handle in (key.id, f"{key.name}-key-id", str(key.get("keyId") or ""), str(key.get("arn") or "")):
            if handle:
                index[handle.split("key/")[-1]] = key
    return index


def _key(graph: Graph, index: dict[str, Resource], reference: Any) -> dict[str, Any]:
    if not reference:
        return {"key": None, "customer_managed": False, "rotation": None}
    key = index.get(str(reference).split("key/")[-1])
    return {
        "key": reference,
        "customer_managed": key is not None or ":key/" in str(reference),
        "rotation": None if key is None else bool(key.get("enableKeyRotation")),
        "key_resource": None if key is None else key.name,
    }


def encryption_inventory(graph: Graph) -> list[dict[str, Any]]:
    index = _key_index(graph)
    stores: list[dict[str, Any]] = []

    def add(store: str, resource: Resource, reference: Any, note: str = "") -> None:
        entry = {"store": store, "resource": resource.name, "type": resource.type, **_key(graph, index, reference)}
        if note:
            entry["note"] = note
        stores.append(entry)

    for config in graph.by_type(aws.ENCRYPTION):
        default = config.get("rules.0.applyServerSideEncryptionByDefault") or {}
        note = (
            "SSE-S3 (AES-256): S3 access logs cannot target SSE-KMS" if default.get("sseAlgorithm") == "AES256" else ""
        )
        add("S3 bucket", config, default.get("kmsMasterKeyId"), note)
    for group in graph.by_type(aws.LOG_GROUP):
        add("CloudWatch log group", group, group.get("kmsKeyId"))
    for cluster in graph.by_type(aws.CLUSTER):
        add("EKS secrets (etcd)", cluster, cluster.get("encryptionConfig.provider.keyArn"))
    for template in graph.by_type(aws.LAUNCH_TEMPLATE):
        for mapping in as_list(template.get("blockDeviceMappings")):
            add("EBS root volume (system nodes)", template, (mapping.get("ebs") or {}).get("kmsKeyId"))
    for node_class in graph.by_type(aws.NODE_CLASS):
        for mapping in as_list(node_class.get("spec.blockDeviceMappings")):
            add("EBS root volume (GPU nodes)", node_class, (mapping.get("ebs") or {}).get("kmsKeyID"))
    for storage in graph.by_type("kubernetes:storage.k8s.io/v1:StorageClass"):
        add("EBS persistent volumes", storage, (storage.get("parameters") or {}).get("kmsKeyId"))
    for queue in graph.by_type(aws.QUEUE):
        add("SQS queue", queue, queue.get("kmsMasterKeyId"))
    for trail in graph.by_type(aws.TRAIL):
        add("CloudTrail log files", trail, trail.get("kmsKeyId"))
    return stores


def audit_logging(graph: Graph) -> dict[str, Any]:
    return {
        "cloudtrail": [
            {
                "trail": t.get("name") or t.name,
                "multi_region": t.get("isMultiRegionTrail"),
                "global_service_events": t.get("includeGlobalServiceEvents"),
                "log_file_validation": t.get("enableLogFileValidation"),
                "kms_key": t.get("kmsKeyId"),
                "cloudwatch_logs_group": t.get("cloudWatchLogsGroupArn"),
                "event_selectors": t.get("advancedEventSelectors"),
            }
            for t in graph.by_type(aws.TRAIL)
        ],
        "log_groups": [
            {"name": g.get("name") or g.name, "retention_days": g.get("retentionInDays"), "kms_key": g.get("kmsKeyId")}
            for g in graph.by_type(aws.LOG_GROUP)
        ],
        "eks_control_plane_logs": [
            {"cluster": c.get("name") or c.name, "types": c.get("enabledClusterLogTypes")}
            for c in graph.by_type(aws.CLUSTER)
        ],
        "vpc_flow_logs": [
            {"vpc": f.get("vpcId"), "traffic": f.get("trafficType"), "destination": f.get("logDestination")}
            for f in graph.by_type(aws.FLOW_LOG)
        ],
        "s3_access_logging": [
            {"bucket": b.get("bucket"), "target": b.get("targetBucket"), "prefix": b.get("targetPrefix")}
            for b in graph.by_type(aws.LOGGING)
        ],
        "alert_rules": [
            r["alert"]
            for rule in graph.by_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
            for group in as_list(rule.get("spec.groups"))
            for r in as_list(group.get("rules"))
            if "alert" in r
        ],
    }


def iam_policies(graph: Graph) -> list[dict[str, Any]]:
    roles = []
    for role in graph.by_type(aws.ROLE):
        name = role.get("name") or role.name
        inline = [
            {"name": p.get("name") or p.name, "document": policy_document(p.get("policy"))}
            for p in graph.by_type(aws.ROLE_POLICY)
            if p.get("role") in (role.id, name)
        ]
        managed = [a.get("policyArn") for a in graph.by_type(aws.ATTACHMENT) if a.get("role") in (role.id, name)]
        roles.append(
            {
                "role": name,
                "description": role.get("description"),
                "trust_policy": policy_document(role.get("assumeRolePolicy")),
                "inline_policies": inline,
                "managed_policies": managed,
            }
        )
    return roles


def data_flows(graph: Graph) -> dict[str, Any]:
    endpoints = sorted(str(e.get("serviceName", "")).split(".", 3)[-1] for e in graph.by_type(aws.ENDPOINT))
    public_api = any(c.get("vpcConfig.endpointPublicAccess") for c in graph.by_type(aws.CLUSTER))
    return {
        "leaves_the_account": [],
        "statement": (
            "No prompt, completion, model weight, key or log leaves the account: byoc sends no telemetry, the gateway "
            "keeps no request content, and every store is in the deployment's region."
        ),
        "flows": [
            {
                "from": "clients in the VPC",
                "to": "gateway",
                "via": "internal load balancer, TLS",
                "data": "API requests",
            },
            {"from": "gateway", "to": "serving pods", "via": "cluster network (NetworkPolicy)", "data": "requests"},
            {
                "from": "serving pods, build Job",
                "to": "artifact bucket",
                "via": "S3 gateway endpoint, TLS",
                "data": "model artifacts (encrypted with the artifact key)",
            },
            {
                "from": "nodes",
                "to": "AWS APIs",
                "via": f"VPC endpoints ({', '.join(endpoints)})",
                "data": "credentials, keys, logs, images",
            },
            {"from": "AWS services", "to": "CloudTrail bucket and CloudWatch Logs", "via": "AWS", "data": "audit logs"},
        ],
        "inbound_only": [
            "container images pulled from nvcr.io and your registry through the NAT gateway",
            "model weights fetched by the build Job from the model source you named (or its mirror)",
        ],
        "metadata_outside_byoc": [
            "Pulumi state (resource names, ARNs, configuration; never data) is kept where your Pulumi backend is: "
            "keep it in the account with PULUMI_BACKEND_URL=s3://<bucket> if it must not leave",
        ]
        + (["the Kubernetes API endpoint is reachable from outside the VPC (network.endpoint)"] if public_api else []),
    }


SHARED_RESPONSIBILITY = (Path(__file__).parent / "shared-responsibility.md").read_text()
