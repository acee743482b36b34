"""Kubernetes checks over the objects byoc declares (the same on every cloud).

The controls each evidences: compliance/catalogs/mappings/ (`*_kubernetes.yaml`).
"""

from __future__ import annotations

from typing import Any

from byoc.names import resource_name
from compliance.checks.common import as_list, customer_keys_verdict
from compliance.model import Graph, Resource, Verdict, check, exception, not_applicable, not_assessed, verdict

NAMESPACE = "kubernetes:core/v1:Namespace"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
JOB = "kubernetes:batch/v1:Job"
SERVICE = "kubernetes:core/v1:Service"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
RELEASE = "kubernetes:helm.sh/v3:Release"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
WORKLOADS = (DEPLOYMENT, JOB)
UNPUBLISHED_RUNTIME = "byoc-runtime"  # the default images.runtime until a release publishes it (byoc/catalogs)
# Flags that would make the gateway or the engine write request or response content somewhere.
CONTENT_LOGGING_FLAGS = ("--log-requests", "--log-bodies", "--log-prompts", "--debug-requests")


def _pod(resource: Resource) -> dict[str, Any]:
    pod: dict[str, Any] = resource.get("spec.template.spec") or {}
    return pod


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return as_list(pod.get("containers")) + as_list(pod.get("initContainers"))


def _gateway_command(resource: Resource) -> list[str] | None:
    """The `byoc serve gateway ...` command line of a workload, or None when it runs no gateway."""
    commands = [[str(a) for a in as_list(c.get("command"))] for c in _containers(_pod(resource))]
    return next((c for c in commands if "gateway" in c and "serve" in c), None)


def _byoc_namespace(graph: Graph, name: str) -> bool:
    return name == resource_name(graph.deployment)


@check(
    id="k8s_namespace_pod_security_restricted",
    title="The deployment's namespace enforces the restricted Pod Security Standard",
    severity="high",
    resource_types=[NAMESPACE],
    remediation="Label the namespace pod-security.kubernetes.io/enforce=restricted.",
    risk="Pods could run privileged, share host namespaces or escalate.",
    cloud="kubernetes",
)
def namespace_restricted(resource: Resource, graph: Graph) -> Verdict:
    name = resource.get("metadata.name")
    value = (resource.get("metadata.labels") or {}).get("pod-security.kubernetes.io/enforce")
    if not _byoc_namespace(graph, name) and value != "restricted":
        return exception(
            f"byoc declines the restricted level by design for {name}: it holds a cluster add-on (GPU device plugin, "
            "KEDA, monitoring, ...) that needs more, and gets the Pod Security level it needs (docs/operations.md)",
            "metadata.labels[pod-security.kubernetes.io/enforce]",
            value,
        )
    return verdict(value == "restricted", "metadata.labels[pod-security.kubernetes.io/enforce]", value)


@check(
    id="k8s_namespace_default_deny_network_policy",
    title="The deployment's namespace denies all traffic by default",
    severity="high",
    resource_types=[NAMESPACE],
    remediation="Add a NetworkPolicy selecting every pod with Ingress and Egress types and no rules.",
    risk="Any pod in the cluster could reach the model servers, and they could reach anything.",
    cloud="kubernetes",
)
def namespace_default_deny(resource: Resource, graph: Graph) -> Verdict:
    name = resource.get("metadata.name")
    deny = [
        p.get("metadata.name")
        for p in graph.by_type(NETWORK_POLICY)
        if p.get("metadata.namespace") == name
        and p.get("spec.podSelector") == {}
        and set(as_list(p.get("spec.policyTypes"))) == {"Ingress", "Egress"}
        and not p.get("spec.ingress")
        and not p.get("spec.egress")
    ]
    if not _byoc_namespace(graph, name) and not deny:
        return exception(
            f"byoc declines a default-deny policy by design for {name}: it holds a cluster add-on that must reach "
            "the API server, the nodes or the cloud's APIs; the deployment's own namespace denies all by default",
            "NetworkPolicy[podSelector={}, deny all]",
            deny,
        )
    return verdict(bool(deny), "NetworkPolicy[podSelector={}, deny all]", deny)


@check(
    id="k8s_workload_security_context_restricted",
    title="Workloads run as non-root, read-only, without capabilities or privilege escalation",
    severity="high",
    resource_types=WORKLOADS,
    remediation="Set runAsNonRoot, seccomp RuntimeDefault, readOnlyRootFilesystem, drop ALL, no escalation.",
    risk="A compromised container could take over its node.",
    cloud="kubernetes",
)
def workload_security_context(resource: Resource, graph: Graph) -> Verdict:
    pod = _pod(resource)
    problems = []
    pod_context = pod.get("securityContext") or {}
    if pod_context.get("runAsNonRoot") is not True:
        problems.append("pod.runAsNonRoot")
    if (pod_context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod.seccompProfile")
    for container in _containers(pod):
        context = container.get("securityContext") or {}
        name = container.get("name")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}.readOnlyRootFilesystem")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}.allowPrivilegeEscalation")
        if "ALL" not in as_list((context.get("capabilities") or {}).get("drop")):
            problems.append(f"{name}.capabilities.drop")
        if context.get("privileged"):
            problems.append(f"{name}.privileged")
    return verdict(not problems, "spec.template.spec.securityContext", problems)


@check(
    id="k8s_no_service_account_token",
    title="Workloads get no Kubernetes API token",
    severity="medium",
    resource_types=[*WORKLOADS, SERVICE_ACCOUNT],
    remediation="Set automountServiceAccountToken: false (cloud identities come through their own tokens).",
    risk="A stolen token would let an attacker act against the Kubernetes API.",
    cloud="kubernetes",
)
def no_service_account_token(resource: Resource, graph: Graph) -> Verdict:
    value = (
        resource.get("automountServiceAccountToken")
        if resource.type == SERVICE_ACCOUNT
        else _pod(resource).get("automountServiceAccountToken")
    )
    return verdict(value is False, "automountServiceAccountToken", value)


@check(
    id="k8s_secrets_mounted_as_files",
    title="Secrets reach containers as files, never environment variables",
    severity="medium",
    resource_types=WORKLOADS,
    remediation="Mount the Secret as a volume instead of env valueFrom secretKeyRef.",
    risk="Environment variables leak into crash dumps, logs and child processes.",
    cloud="kubernetes",
)
def secrets_as_files(resource: Resource, graph: Graph) -> Verdict:
    in_env = [
        f"{c.get('name')}.{e.get('name')}"
        for c in _containers(_pod(resource))
        for e in as_list(c.get("env"))
        if (e.get("valueFrom") or {}).get("secretKeyRef")
    ]
    return verdict(not in_env, "containers[].env[].valueFrom.secretKeyRef", in_env)


@check(
    id="gateway_zero_data_retention",
    title="The gateway and the engine log no prompt or completion",
    severity="high",
    resource_types=[DEPLOYMENT],
    remediation="Remove request or body logging flags; byoc logs one metadata line per request.",
    risk="Prompts and completions in logs would hold confidential data outside the model's boundary.",
    cloud="kubernetes",
)
def gateway_zero_data_retention(resource: Resource, graph: Graph) -> Verdict:
    arguments = [
        str(a) for c in _containers(_pod(resource)) for a in as_list(c.get("command")) + as_list(c.get("args"))
    ]
    if not any("gateway" in a or "trtllm-serve" in a for a in arguments):
        return not_applicable("neither the gateway nor the engine")
    logging = [a for a in arguments if a in CONTENT_LOGGING_FLAGS or a in ("--log_level=debug", "debug")]
    return verdict(not logging, "containers[].command", logging)


@check(
    id="gateway_requires_api_keys",
    title="The gateway authenticates every request with an API key",
    severity="critical",
    resource_types=[DEPLOYMENT],
    remediation="Run the gateway with --api-keys and without --insecure-no-auth.",
    risk="Anyone who reaches the endpoint could use the model.",
    cloud="kubernetes",
)
def gateway_requires_api_keys(resource: Resource, graph: Graph) -> Verdict:
    gateway = _gateway_command(resource)
    if gateway is None:
        return not_applicable("not the gateway")
    ok = "--api-keys" in gateway and "--insecure-no-auth" not in gateway
    return verdict(ok, "command", [a for a in gateway if a.startswith("--")])


@check(
    id="gateway_tls_enabled",
    title="The gateway serves its API over TLS",
    severity="high",
    resource_types=[DEPLOYMENT],
    remediation="Run the gateway with --tls-cert and --tls-key (a kubernetes.io/tls Secret from your PKI).",
    risk="Prompts, completions and API keys would cross the network in the clear.",
    cloud="kubernetes",
)
def gateway_tls_enabled(resource: Resource, graph: Graph) -> Verdict:
    gateway = _gateway_command(resource)
    if gateway is None:
        return not_applicable("not the gateway")
    ok = "--tls-cert" in gateway and "--tls-key" in gateway
    return verdict(ok, "command[--tls-cert, --tls-key]", ok)


@check(
    id="k8s_services_not_internet_facing",
    title="Load balancers are internal to the network",
    severity="high",
    resource_types=[SERVICE],
    remediation="Annotate LoadBalancer Services as internal (or use ClusterIP and your own ingress).",
    risk="An internet-facing load balancer exposes the inference API.",
    cloud="kubernetes",
)
def services_internal(resource: Resource, graph: Graph) -> Verdict:
    kind = resource.get("spec.type", "ClusterIP")
    if kind != "LoadBalancer":
        return verdict(True, "spec.type", kind)
    annotations = resource.get("metadata.annotations") or {}
    internal = {
        k: v
        for k, v in annotations.items()
        if k.endswith("load-balancer-internal")
        or (k.endswith("load-balancer-scheme") and v == "internal")
        or k == "networking.gke.io/load-balancer-type"
    }
    return verdict(bool(internal), "metadata.annotations", internal)


@check(
    id="k8s_disruption_budgets",
    title="Serving and gateway survive node drains (PodDisruptionBudgets)",
    severity="low",
    resource_types=[DEPLOYMENT],
    remediation="Add a PodDisruptionBudget for the Deployment.",
    risk="Node maintenance could take every replica down at once.",
    cloud="kubernetes",
)
def disruption_budgets(resource: Resource, graph: Graph) -> Verdict:
    labels = resource.get("spec.selector.matchLabels") or {}
    if labels.get("app.kubernetes.io/name") == "warm-pool":
        # placeholders that hold idle GPU nodes (stacks/k8s/warm_pool.py): losing them all at once costs no request
        return not_applicable("the warm pool's placeholder pods serve nothing; any serving replica preempts them")
    budgets = [
        b.get("metadata.name")
        for b in graph.by_type(PDB)
        if b.get("metadata.namespace") == resource.get("metadata.namespace")
        and b.get("spec.selector.matchLabels") == labels
    ]
    return verdict(bool(budgets), "PodDisruptionBudget", budgets)


@check(
    id="k8s_third_party_images_pinned",
    title="Images are pinned by digest",
    severity="medium",
    resource_types=WORKLOADS,
    remediation="Reference images as repository@sha256:<digest>.",
    risk="A tag can be moved to different software after review.",
    cloud="kubernetes",
)
def third_party_images_pinned(resource: Resource, graph: Graph) -> Verdict:
    images = [str(c.get("image")) for c in _containers(_pod(resource))]
    unpinned = [i for i in images if "@sha256:" not in i]
    # byoc's default runtime image (no registry: never published) is built into your registry from
    # runtime/Dockerfile; until it is, there is no digest to pin and nothing to judge (the report's image notice says
    # what to do). The image in your registry by a tag is judged like any other.
    runtime = [i for i in unpinned if i.split(":", 1)[0] == UNPUBLISHED_RUNTIME]
    if unpinned and unpinned == runtime:
        return not_assessed(
            f"byoc's runtime image {', '.join(runtime)} is not published with a digest: its pinning cannot be "
            "judged until you build runtime/Dockerfile into your registry and set images.runtime to its @sha256 digest",
            "containers[].image",
            images,
        )
    return verdict(not unpinned, "containers[].image", images)


@check(
    id="helm_releases_pinned",
    title="Helm charts are installed at pinned versions",
    severity="medium",
    resource_types=[RELEASE],
    remediation="Set an exact chart version on every release.",
    risk="An unpinned chart changes what runs in the cluster without review.",
    cloud="kubernetes",
)
def helm_releases_pinned(resource: Resource, graph: Graph) -> Verdict:
    version = resource.get("version")
    return verdict(bool(version) and not str(version).startswith(("^", "~", ">")), "version", version)


@check(
    id="monitoring_alerts_defined",
    title="Alerts watch errors, availability and latency",
    severity="medium",
    resource_types=[RULE],
    remediation="Keep the byoc PrometheusRule (error ratio, replicas unavailable, TTFT) installed.",
    risk="Failures would go unnoticed until users report them.",
    cloud="kubernetes",
)
def monitoring_alerts_defined(resource: Resource, graph: Graph) -> Verdict:
    alerts = sorted(
        r["alert"]
        for group in as_list(resource.get("spec.groups"))
        for r in as_list(group.get("rules"))
        if "alert" in r
    )
    needed = {"ByocErrorRatioHigh", "ByocReplicasUnavailable", "ByocTTFTHigh"}
    return verdict(needed <= set(alerts), "spec.groups[].rules[].alert", alerts)


@check(
    id="k8s_storage_class_encrypted",
    title="Persistent volumes are encrypted with a customer key",
    severity="high",
    resource_types=[STORAGE_CLASS],
    remediation="Set encrypted: 'true' and the key (kmsKeyId / disk-encryption-kms-key) on the StorageClass.",
    risk="Volumes created by workloads would not be under customer key control.",
    cloud="kubernetes",
)
def storage_class_encrypted(resource: Resource, graph: Graph) -> Verdict:
    parameters = resource.get("parameters") or {}
    key = parameters.get("kmsKeyId") or parameters.get("disk-encryption-kms-key")
    if str(key or "").startswith("projects/"):  # a Cloud KMS key (GKE's PD CSI): customer-managed by definition
        return verdict(True, "parameters", parameters)
    return customer_keys_verdict(graph, [key], "parameters", parameters, holds=parameters.get("encrypted") == "true")
