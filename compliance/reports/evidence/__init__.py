"""Supporting evidence security teams ask for, read from the same graph the checks read: the encryption
inventory, the audit-log configuration, the IAM policies and identities byoc grants, the data flows (and what leaves
the account or project), and the shared-responsibility matrix.

Each cloud has its table of readers keyed by type token (`aws.EVIDENCE`, `gcp.EVIDENCE`), as each has its module of
checks; the pack reads the table of the graph's cloud.
"""

from __future__ import annotations

from typing import Any

from compliance.model import Graph
from compliance.reports.evidence import aws, gcp
from compliance.reports.evidence.common import CloudEvidence, alert_rules

__all__ = [
    "CLOUDS",
    "SHARED_RESPONSIBILITY",
    "audit_logging",
    "data_flows",
    "encryption_inventory",
    "iam_policies",
    "notices",
    "readers",
    "shared_responsibility",
]

CLOUDS: dict[str, CloudEvidence] = {"aws": aws.EVIDENCE, "gcp": gcp.EVIDENCE}
SHARED_RESPONSIBILITY = aws.EVIDENCE.shared_responsibility


def readers(graph: Graph) -> CloudEvidence:
    """The graph's cloud's readers; a graph that does not name its cloud is read by its resources' type tokens."""
    cloud = graph.cloud or next(
        (r.type.split(":")[0] for r in graph.resources if r.type.split(":")[0] in CLOUDS), "aws"
    )
    return CLOUDS[cloud]


def encryption_inventory(graph: Graph) -> list[dict[str, Any]]:
    """Every data store the graph declares, its key, whether the customer manages it, and its rotation."""
    cloud = readers(graph)
    key = cloud.keys(graph)
    stores: list[dict[str, Any]] = []
    for type_token, read in cloud.stores.items():
        for resource in graph.by_type(type_token):
            for found in read(resource, graph):
                entry = {"store": found.store, "resource": resource.name, "type": resource.type, **key(found.reference)}
                if found.note:
                    entry["note"] = found.note
                stores.append(entry)
    return stores


def audit_logging(graph: Graph) -> dict[str, Any]:
    """One section per kind of audit record (trails, sinks, control-plane logs, flow logs, ...), and the alerts."""
    sections: dict[str, Any] = {}
    for section, (type_token, read) in readers(graph).audit.items():
        entries = (read(resource, graph) for resource in graph.by_type(type_token))
        sections[section] = [entry for entry in entries if entry is not None]
    return sections | {"alert_rules": alert_rules(graph)}


def iam_policies(graph: Graph) -> list[dict[str, Any]]:
    """Every identity byoc creates or grants a role to, with its exact permissions."""
    return readers(graph).identities(graph)


def data_flows(graph: Graph) -> dict[str, Any]:
    return readers(graph).data_flows(graph)


def shared_responsibility(graph: Graph) -> str:
    return readers(graph).shared_responsibility


def notices(graph: Graph) -> list[str]:
    """What a reviewer should know about the cloud's resources that is not a check's PASS or FAIL."""
    found = []
    for type_token, notice in readers(graph).notices.items():
        resources = graph.by_type(type_token)
        text = notice(resources) if resources else ""
        if text:
            found.append(text)
    return found
