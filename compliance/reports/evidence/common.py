"""What every cloud's evidence readers share: the shape of a cloud's reader table, and the readers of the Kubernetes
objects both clouds declare (persistent-volume encryption, alert rules, the gateway's load balancer)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compliance.checks.common import as_list
from compliance.model import Graph, Resource

STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
SERVICE = "kubernetes:core/v1:Service"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"

# A key reference as a resource names it -> what the pack says about that key (its handle, whether the customer
# manages it, rotation, and whatever else the cloud records about it).
KeyFacts = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Store:
    """One data store a resource holds, and the key that encrypts it (as the resource refers to it)."""

    store: str
    reference: Any
    note: str = ""


StoreReader = Callable[[Resource, Graph], Iterable[Store]]
# One entry of an audit-logging.json section for one resource (None: the resource adds nothing to the section).
EntryReader = Callable[[Resource, Graph], dict[str, Any] | None]


@dataclass(frozen=True)
class CloudEvidence:
    """How one cloud's resources read as evidence. Like the checks, every reader is keyed by the type token it
    reads; the pack takes the table of the graph's cloud."""

    keys: Callable[[Graph], KeyFacts]
    stores: Mapping[str, StoreReader]  # type token -> the stores one resource holds
    audit: Mapping[str, tuple[str, EntryReader]]  # section of audit-logging.json -> (type token, its reader)
    identities: Callable[[Graph], list[dict[str, Any]]]
    data_flows: Callable[[Graph], dict[str, Any]]
    shared_responsibility: str
    # type token -> what a reviewer should know about the graph's resources of that type (not a check's PASS or
    # FAIL); an empty string says nothing
    notices: Mapping[str, Callable[[list[Resource]], str]] = field(default_factory=dict)


def read_text(name: str) -> str:
    return (Path(__file__).parent.parent / name).read_text()


# provisioner -> (what its volumes are, the StorageClass parameter naming their key). The CSI drivers' docs: AWS EBS
# CSI driver "parameters.md" (kmsKeyId), GKE "Use customer-managed encryption keys" (disk-encryption-kms-key).
PERSISTENT_VOLUMES: dict[str, tuple[str, str]] = {
    "ebs.csi.aws.com": ("EBS persistent volumes", "kmsKeyId"),
    "kubernetes.io/aws-ebs": ("EBS persistent volumes", "kmsKeyId"),
    "pd.csi.storage.gke.io": ("Persistent Disk volumes", "disk-encryption-kms-key"),
    "kubernetes.io/gce-pd": ("Persistent Disk volumes", "disk-encryption-kms-key"),
}


def storage_class(resource: Resource, graph: Graph) -> Iterable[Store]:
    provisioner = str(resource.get("provisioner") or "")
    parameters = resource.get("parameters") or {}
    store, key_parameter = PERSISTENT_VOLUMES.get(provisioner, (f"persistent volumes ({provisioner})", ""))
    yield Store(store, parameters.get(key_parameter) if key_parameter else None)


def alert_rules(graph: Graph) -> list[str]:
    return [
        r["alert"]
        for rule in graph.by_type(PROMETHEUS_RULE)
        for group in as_list(rule.get("spec.groups"))
        for r in as_list(group.get("rules"))
        if "alert" in r
    ]


def as_number(value: Any) -> Any:
    """Pulumi's mocks send integers as floats (443.0): show them as the integers they are."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def load_balancers(graph: Graph, internal: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every LoadBalancer Service, and whether an annotation of `internal` (annotation -> its value) keeps it inside
    the network."""
    found = []
    for service in graph.by_type(SERVICE):
        if service.get("spec.type") != "LoadBalancer":
            continue
        annotations = service.get("metadata.annotations") or {}
        found.append(
            {
                "service": f"{service.get('metadata.namespace')}/{service.get('metadata.name') or service.name}",
                "ports": [as_number(p.get("port")) for p in as_list(service.get("spec.ports"))],
                "internal": any(str(annotations.get(k, "")).lower() == v.lower() for k, v in internal.items()),
            }
        )
    return found
