"""Read the Kubernetes objects byoc declares from a live cluster, in the shape the plan records them.

Objects are listed through the cluster's API with the official `kubernetes` client (so a kubeconfig's token, client
certificate or exec plugin such as `aws eks get-token` all work), scoped by the label byoc puts on everything it
creates (`app.kubernetes.io/managed-by=byoc`). Each object becomes a `Resource` whose type is the Pulumi type token
(`kubernetes:networking.k8s.io/v1:NetworkPolicy`) and whose inputs are the object itself (metadata, spec).

What could not be looked at is returned with why, so that no check is silent: a kind whose API the cluster does not
serve (a CRD not installed) is *unassessed*; a refusal (401/403) or an unreachable server is an *error*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compliance.checks import aws as a
from compliance.checks import kubernetes as k
from compliance.model import Resource

MANAGED_BY = "app.kubernetes.io/managed-by=byoc"

# Pulumi type token -> the list path of its kind on the API server (all namespaces).
KINDS: dict[str, str] = {
    k.NAMESPACE: "/api/v1/namespaces",
    k.SERVICE: "/api/v1/services",
    k.SERVICE_ACCOUNT: "/api/v1/serviceaccounts",
    k.DEPLOYMENT: "/apis/apps/v1/deployments",
    k.JOB: "/apis/batch/v1/jobs",
    k.NETWORK_POLICY: "/apis/networking.k8s.io/v1/networkpolicies",
    k.PDB: "/apis/policy/v1/poddisruptionbudgets",
    k.STORAGE_CLASS: "/apis/storage.k8s.io/v1/storageclasses",
    k.RULE: "/apis/monitoring.coreos.com/v1/prometheusrules",
    a.NODE_POOL: "/apis/karpenter.sh/v1/nodepools",
    a.NODE_CLASS: "/apis/karpenter.k8s.aws/v1/ec2nodeclasses",
}
# Kinds no list call can show as the plan declares them.
NOT_LISTED = {
    k.RELEASE: "Helm releases live in the cluster as Secrets of Helm's own format: judged from the plan (--plan)",
}
NO_CLUSTER_ACCESS = "no cluster access: pass --kubeconfig to read the Kubernetes objects"


@dataclass
class ClusterObjects:
    """What was read: the resources, and per type token why it was not looked at or could not be read."""

    resources: list[Resource] = field(default_factory=list)
    unassessed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def without_access() -> ClusterObjects:
    """No kubeconfig: every Kubernetes kind is unassessed, with the way to assess it."""
    return ClusterObjects(unassessed={**dict.fromkeys(KINDS, NO_CLUSTER_ACCESS), **NOT_LISTED})


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()


def read_cluster(kubeconfig: Path, region: str, timeout: float = 15.0) -> ClusterObjects:
    """List every kind in KINDS labelled as byoc's, through the cluster the kubeconfig's current context names.

    Raises:
        ByocError: the kubeconfig cannot be read, or the `kubernetes` client is not installed (field --kubeconfig).
    """
    from byoc.errors import ByocError

    try:
        from kubernetes import config
    except ImportError:
        raise ByocError(
            "--kubeconfig", "reading the cluster needs the kubernetes client", "python3 -m pip install kubernetes"
        ) from None
    try:
        api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    except Exception as exc:  # missing file, no current context, bad YAML
        raise ByocError(
            "--kubeconfig", f"cannot use {kubeconfig}: {exc}", "pass a kubeconfig for the cluster"
        ) from None
    found = ClusterObjects(unassessed=dict(NOT_LISTED))
    try:
        for type_token, path in KINDS.items():
            try:
                method, url, headers, _, _ = api.param_serialize(
                    "GET",
                    path,
                    query_params=[("labelSelector", MANAGED_BY)],
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                )
                response = api.call_api(method, url, header_params=headers, _request_timeout=timeout)
                response.read()
            except Exception as exc:  # unreachable, TLS, timeout: the same for every kind
                reason = f"could not reach the cluster: {_reason(exc)}"
                for rest in KINDS:
                    if rest not in found.unassessed and not any(r.type == rest for r in found.resources):
                        found.errors.setdefault(rest, reason)
                return found
            if response.status == 404:
                group = path.removeprefix("/apis/").removeprefix("/api/").rsplit("/", 1)[0]
                found.unassessed[type_token] = f"the cluster serves no {group} API (its CRD is not installed)"
                continue
            if response.status >= 400:
                found.errors[type_token] = f"could not list {path}: HTTP {response.status} {response.reason or ''}"
                continue
            listed: Any = json.loads(response.data or b"{}")
            for item in (listed or {}).get("items", []):
                metadata = item.get("metadata", {})
                name = metadata.get("name", "?")
                namespace = metadata.get("namespace")
                found.resources.append(
                    Resource(
                        type=type_token,
                        name=name,
                        id=f"{namespace}/{name}" if namespace else name,
                        inputs=item,
                        source="live",
                        region=region,
                    )
                )
    finally:
        api.close()
    return found
