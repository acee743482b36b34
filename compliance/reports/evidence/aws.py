"""AWS evidence: KMS keys and what they encrypt, CloudTrail and the logs byoc keeps, the IAM roles byoc creates
and their policies, and the data flows of the VPC (endpoints, NAT, the internal NLB)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from compliance.checks import aws
from compliance.checks.common import as_list, policy_document
from compliance.model import Graph, Resource
from compliance.reports.evidence.common import (
    STORAGE_CLASS,
    CloudEvidence,
    KeyFacts,
    Store,
    read_text,
    storage_class,
)


def _key_index(graph: Graph) -> dict[str, Resource]:
    """Keys by every way other resources refer to them (ARN tail, id, alias-free name)."""
    index: dict[str, Resource] = {}
    for key in graph.by_type(aws.KEY):
        for handle in (key.id, f"{key.name}-key-id", str(key.get("keyId") or ""), str(key.get("arn") or "")):
            if handle:
                index[handle.split("key/")[-1]] = key
    return index


def keys(graph: Graph) -> KeyFacts:
    index = _key_index(graph)

    def facts(reference: Any) -> dict[str, Any]:
        if not reference:
            return {"key": None, "customer_managed": False, "rotation": None}
        key = index.get(str(reference).split("key/")[-1])
        found = {
            "key": reference,
            "customer_managed": key is not None or ":key/" in str(reference),
            "rotation": None if key is None else bool(key.get("enableKeyRotation")),
            "rotation_assessed": key is not None,
            "key_resource": None if key is None else key.name,
        }
        if key is None:
            # never read as "no rotation" or as a pass: the key is not in the graph (a customer key in a plan)
            found["rotation_note"] = "NOT_ASSESSED: the key is not in the " + (
                "plan (a customer key byoc uses but does not create); `byoc compliance report --live` reads it"
                if graph.source == "plan"
                else "account's readable keys"
            )
        return found

    return facts


def _s3(config: Resource, graph: Graph) -> Iterable[Store]:
    default = config.get("rules.0.applyServerSideEncryptionByDefault") or {}
    note = "SSE-S3 (AES-256): S3 access logs cannot target SSE-KMS" if default.get("sseAlgorithm") == "AES256" else ""
    yield Store("S3 bucket", default.get("kmsMasterKeyId"), note)


def _launch_template(template: Resource, graph: Graph) -> Iterable[Store]:
    for mapping in as_list(template.get("blockDeviceMappings")):
        yield Store("EBS root volume (system nodes)", (mapping.get("ebs") or {}).get("kmsKeyId"))


def _node_class(node_class: Resource, graph: Graph) -> Iterable[Store]:
    for mapping in as_list(node_class.get("spec.blockDeviceMappings")):
        yield Store("EBS root volume (GPU nodes)", (mapping.get("ebs") or {}).get("kmsKeyID"))


def _trail(t: Resource, graph: Graph) -> dict[str, Any]:
    return {
        "trail": t.get("name") or t.name,
        "multi_region": t.get("isMultiRegionTrail"),
        "global_service_events": t.get("includeGlobalServiceEvents"),
        "log_file_validation": t.get("enableLogFileValidation"),
        "kms_key": t.get("kmsKeyId"),
        "cloudwatch_logs_group": t.get("cloudWatchLogsGroupArn"),
        "event_selectors": t.get("advancedEventSelectors"),
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
    store = [
        {
            "from": "gateway",
            "to": f"ElastiCache {g.get('replicationGroupId') or g.name} (the gateway's shared store)",
            "via": "private subnets, TLS, AUTH token",
            "data": "per-key counters, budgets and usage (no prompt or completion)",
        }
        for g in graph.by_type(aws.REPLICATION_GROUP)
    ]
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
            *store,
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


EVIDENCE = CloudEvidence(
    keys=keys,
    stores={
        aws.ENCRYPTION: _s3,
        aws.LOG_GROUP: lambda group, graph: [Store("CloudWatch log group", group.get("kmsKeyId"))],
        aws.CLUSTER: lambda cluster, graph: [
            Store("EKS secrets (etcd)", cluster.get("encryptionConfig.provider.keyArn"))
        ],
        aws.LAUNCH_TEMPLATE: _launch_template,
        aws.NODE_CLASS: _node_class,
        STORAGE_CLASS: storage_class,
        aws.QUEUE: lambda queue, graph: [Store("SQS queue", queue.get("kmsMasterKeyId"))],
        aws.REPLICATION_GROUP: lambda group, graph: [
            Store(
                "ElastiCache (the gateway's shared limits, budgets and usage)",
                group.get("kmsKeyId") if group.get("atRestEncryptionEnabled") is True else None,
            )
        ],
        aws.TRAIL: lambda trail, graph: [Store("CloudTrail log files", trail.get("kmsKeyId"))],
    },
    audit={
        "cloudtrail": (aws.TRAIL, _trail),
        "log_groups": (
            aws.LOG_GROUP,
            lambda g, graph: {
                "name": g.get("name") or g.name,
                "retention_days": g.get("retentionInDays"),
                "kms_key": g.get("kmsKeyId"),
            },
        ),
        "eks_control_plane_logs": (
            aws.CLUSTER,
            lambda c, graph: {"cluster": c.get("name") or c.name, "types": c.get("enabledClusterLogTypes")},
        ),
        "vpc_flow_logs": (
            aws.FLOW_LOG,
            lambda f, graph: {
                "vpc": f.get("vpcId"),
                "traffic": f.get("trafficType"),
                "destination": f.get("logDestination"),
            },
        ),
        "s3_access_logging": (
            aws.LOGGING,
            lambda b, graph: {
                "bucket": b.get("bucket"),
                "target": b.get("targetBucket"),
                "prefix": b.get("targetPrefix"),
            },
        ),
    },
    identities=iam_policies,
    data_flows=data_flows,
    shared_responsibility=read_text("shared-responsibility.md"),
)
