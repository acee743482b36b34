"""Small readers the checks share: policy documents and key references."""

from __future__ import annotations

import json
from typing import Any

from compliance.model import Evidence, Graph, Status, Verdict, not_assessed, verdict

AWS_KMS_KEY = "aws:kms/key:Key"


def policy_document(value: Any) -> dict[str, Any]:
    """A policy as a dict, whether it came as JSON text (Pulumi inputs, AWS APIs) or already parsed."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def statements(value: Any) -> list[dict[str, Any]]:
    found = policy_document(value).get("Statement", [])
    return found if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_customer_key(value: Any, key_manager: Any = None) -> bool:
    """A KMS key ARN the customer manages (AWS-managed keys are aliases like alias/aws/s3, or KeyManager AWS)."""
    if not isinstance(value, str) or key_manager == "AWS":
        return False
    return value.startswith("arn:aws") and ":kms:" in value and ":key/" in value


def denies_insecure_transport(policy: Any) -> bool:
    for statement in statements(policy):
        condition = statement.get("Condition", {})
        if statement.get("Effect") == "Deny" and condition.get("Bool", {}).get("aws:SecureTransport") in (
            "false",
            False,
        ):
            return True
    return False


def key_known(graph: Graph, key: Any) -> bool:
    """Whether the graph holds the key (byoc's own, or a customer key read live) by its ARN or id."""
    tail = str(key).rsplit("key/", 1)[-1]
    return any(key in (r.id, r.get("arn")) or tail in (r.id, r.get("keyId")) for r in graph.by_type(AWS_KMS_KEY))


def customer_keys_verdict(
    graph: Graph, keys: list[Any], path: str, value: Any, holds: bool = True, manager: Any = None
) -> Verdict:
    """'Encrypted with customer-managed keys': FAIL when the encryption itself does not hold (`holds`) or a key is
    missing or AWS's. A key ARN alone does not say who manages the key (an AWS-managed key has a key/<id> ARN too):
    a key the graph holds (byoc's own, or a customer key read live) or whose manager is given passes; in a plan,
    the key of encryption.kms_key, which byoc does not create, is NOT_ASSESSED (`--live` reads its KeyManager);
    live, a key the account says AWS manages fails, an unreadable one is an ERROR, and one byoc did not read (a
    reference from a Kubernetes object) is NOT_ASSESSED."""
    if not holds or not keys or not all(is_customer_key(k, manager) for k in keys):
        return verdict(False, path, value)
    unknown = [k for k in keys if not key_known(graph, k)]
    if manager is not None or not unknown:
        return verdict(True, path, value)
    if graph.source == "plan":
        given = {g.rsplit("key/", 1)[-1] for g in graph.customer_keys} | set(graph.customer_keys)
        if any(k in given or str(k).rsplit("key/", 1)[-1] in given for k in unknown):
            reason = graph.unassessed.get(AWS_KMS_KEY) or "the key is not in the plan: who manages it is read live"
            return not_assessed(reason, path, value)
        return verdict(True, path, value)  # byoc's own keys, whose ARNs a plan holds as placeholders
    managed = set(graph.aws_managed_keys)
    aws_keys = [k for k in unknown if k in managed or str(k).rsplit("key/", 1)[-1] in managed]
    if aws_keys:
        return verdict(False, path, value, f"{aws_keys[0]} is an AWS-managed key (KeyManager AWS), not the customer's")
    if AWS_KMS_KEY in graph.errors:
        return Verdict(Status.ERROR, (Evidence(path, value),), graph.errors[AWS_KMS_KEY])
    return not_assessed(
        f"{unknown[0]} is not among the account's keys byoc read: who manages it is not known", path, value
    )


def residency_verdict(graph: Graph, region: str, placement: bool, path: str) -> Verdict:
    """Residency of one regional resource: its region is inside the residency set (the spec's region, or every
    region of its mega-region) and, in a plan, one of the regions the deployment is placed in. A provider (one per
    stack) also stands for the placement: every region of the plan must lie inside the residency set."""
    placed = graph.regions or (graph.region,)
    outside = [r for r in placed if r not in graph.allowed_regions] if placement else []
    held = region in graph.allowed_regions and (not graph.regions or region in graph.regions) and not outside
    value: dict[str, Any] = {"region": region, "allowed": graph.requested_region}
    if graph.regions:
        value["deployment_regions"] = list(graph.regions)
    reason = ""
    if outside:
        reason = f"the plan places the deployment in {', '.join(outside)}, outside {graph.requested_region}"
    elif region not in graph.allowed_regions:
        reason = f"{region} is outside {graph.requested_region}"
    elif not held:
        reason = f"{region} is not one of the deployment's regions ({', '.join(graph.regions)})"
    return verdict(held, path, value, reason)
