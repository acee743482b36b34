"""Small readers the checks share: policy documents and key references."""

from __future__ import annotations

import json
from typing import Any


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
