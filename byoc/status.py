"""`byoc status`: the registry's record reconciled with what can be observed, and a health line beside the state.

Sources: the stack outputs in the registry; the cluster (the serving Deployment's replicas, the gateway Service's
load balancer, the node provisioner's objects, nodes and events, through byoc.cluster_api); and a real completion
through the endpoint where it is reachable (POST /v1/completions with one token, the key from BYOC_API_KEY, the CA
from BYOC_CA_BUNDLE).
Where a source cannot be read the health says "unknown: <why>" instead of guessing.

Health rules (`judge`):
- a completion failed while Kubernetes reports replicas ready: unhealthy (Ready is not healthy);
- a completion succeeded while readiness lags: serving, with a warning;
- a completion succeeded and every desired replica is ready: healthy;
- no replica wanted (scaled to zero): scaled to zero;
- replicas missing and the serving ReplicaSets making no pod (a ResourceQuota, a Pod Security or webhook
  rejection: their FailedCreate events, `kube_events.pod_creation_failures`): unhealthy, in the controller's words;
- replicas missing and a wake that cannot finish without a change (an image the registry refuses, a missing secret,
  a crash loop: `WakeProgress.permanent`): unhealthy, with where the wake stopped (so `status --watch` ends);
- replicas missing and a serving pod waking (the one furthest behind): the phase of its wake (node launching,
  image pulling, weights fetching, engine loading; byoc/wake.py), how long it has taken beside the cold-start
  estimate, and what it waits for;
- replicas missing and a serving pod not bound to a node: why GPU replicas are not coming, in the words of the
  cloud's node provisioner about this deployment's pods and GPU pool only (`Cloud.gpu_blockers`: on AWS Karpenter's
  NodeClaim conditions and events of the GPU NodePool and its limit events on the pods, on GKE the cluster
  autoscaler's FailedScaleUp and NotTriggerScaleUp events on the pods: no capacity, no quota, the pool's limit), or a
  node of the pool whose GPUs never registered (allocatable nvidia.com/gpu 0 ten minutes after it joined);
- otherwise, without a completion: unknown, with the reason no completion was sent.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from byoc.clouds import get_cloud
from byoc.names import resource_name
from byoc.registry import RUNNING, Lock, Record, State

if TYPE_CHECKING:
    from byoc.coldstart import ColdStartEstimate
    from byoc.lifecycle import ClusterFactory


@dataclass(frozen=True)
class Probe:
    """The outcome of one completion through the endpoint: ok, or failed (the server answered badly), or
    unreachable (nothing answered; says nothing about health)."""

    outcome: str  # "ok" | "failed" | "unreachable" | "skipped"
    detail: str


def probe_endpoint(endpoint: str | None, model: str, timeout_s: float = 20.0) -> Probe:
    if not endpoint:
        return Probe("skipped", "the gateway's load balancer has no address yet")
    key = os.environ.get("BYOC_API_KEY")
    if not key or not key.strip():
        return Probe("skipped", "no API key to send a test completion with (set BYOC_API_KEY)")
    if any(c.isspace() for c in key):
        # a line break read from a file would fail inside http.client as a ValueError, reported as a bad answer
        return Probe("skipped", "BYOC_API_KEY holds whitespace (a space or a line break); set it to the key alone")
    body = json.dumps({"model": model, "prompt": "ping", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/v1/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=os.environ.get("BYOC_CA_BUNDLE") or None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            data = json.loads(answer.read() or b"{}")
        if not data.get("choices"):
            return Probe("failed", "the completion came back without choices")
        return Probe("ok", "a completion succeeded")
    except urllib.error.HTTPError as exc:
        return Probe("failed", f"HTTP {exc.code} from {endpoint}: {exc.read()[:200].decode(errors='replace')}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe("unreachable", f"{endpoint} is not reachable from here ({reason})")
    except ValueError:
        return Probe("failed", "the completion's answer is not JSON")


def judge(
    desired: int,
    ready: int,
    probe: Probe,
    blockers: list[str],
    wake: str | None = None,
    permanent: bool = False,
    no_pods: list[str] | None = None,
) -> str:
    """The health line. `blockers`: why GPU nodes are not coming; `wake`: where the wake furthest behind is, and
    `permanent` when it cannot finish without a change (an image the registry refuses, a missing secret, a crash
    loop: byoc/wake.py); `no_pods`: why the serving ReplicaSets create no pod (a quota, an admission rejection)."""
    if probe.outcome == "failed":
        return f"unhealthy: Kubernetes reports {ready}/{desired} ready but a completion failed: {probe.detail}"
    if probe.outcome == "ok":
        if ready >= desired:
            return "healthy: a completion succeeded"
        return f"serving, with a warning: readiness lags ({ready}/{desired} ready) while completions succeed"
    if desired == 0:
        return "scaled to zero: the first request wakes a replica"
    if ready < desired:
        if no_pods:
            return f"unhealthy ({ready}/{desired} ready): no serving pod can be made: " + "; ".join(no_pods)
        if wake and permanent:
            return f"unhealthy ({ready}/{desired} ready): the wake cannot finish without a change: {wake}"
        if blockers:
            return f"waiting for GPUs ({ready}/{desired} ready): " + "; ".join(blockers)
        if wake:
            return f"waking ({ready}/{desired} ready): {wake}"
        return f"starting: {ready}/{desired} ready"
    return f"unknown: {ready}/{desired} ready per Kubernetes, but no completion was sent: {probe.detail}"


def _field(obj: Any, *path: str) -> Any:
    """`obj[path[0]][path[1]]...`, None where a step is absent, null or not an object (the API's JSON may carry an
    explicit null where Kubernetes' Go types have an empty struct: `status: null` from a proxy or an old client)."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _count(value: Any) -> int | None:
    """A replica count as the API gives it (an integer; a string of digits from a lenient proxy), None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _model_id(record: Record) -> str:
    model = record.spec.get("model")
    return str(model.get("id") if isinstance(model, dict) else model)


def cold_start_estimate(record: Record) -> ColdStartEstimate | None:
    """The deployment's cold-start estimate, from its recorded spec; None when the spec no longer resolves (a
    catalog changed since): status then shows elapsed times alone."""
    from byoc.errors import ByocError
    from byoc.resolve import resolve
    from byoc.spec import build_spec

    try:
        return resolve(build_spec(record.spec)).cold_start
    except (ByocError, ValueError):
        return None


def serving_pods(record: Record, cluster: Any) -> list[dict[str, Any]]:
    """The deployment's serving pods (stacks/k8s/serving.py labels), as the cluster lists them."""
    selector = {"app.kubernetes.io/name": "serving", "app.kubernetes.io/instance": record.name}
    return [
        p
        for p in cluster.list("pods", resource_name(record.name))
        if isinstance(p, dict) and selector.items() <= ((p.get("metadata") or {}).get("labels") or {}).items()
    ]


def wake_of(
    record: Record, cluster: Any, now: datetime | None = None, pods: list[dict[str, Any]] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Where the newest waking serving pod is (byoc/wake.py), as a sentence with the estimate beside the elapsed
    time, and as data for --output json; None when no serving pod is waking. `pods`: the serving pods, when
    already listed."""
    from byoc.wake import wake_progress

    pods = serving_pods(record, cluster) if pods is None else pods
    progress = wake_progress(pods, cluster.list("events"), get_cloud(record.cloud).node_provisioner, now)
    if progress is None:
        return None
    estimate = cold_start_estimate(record)
    return progress.sentence(estimate), progress.as_dict(estimate)


# the order in which a region's health weighs on the deployment's: the first that any region shows leads (a region
# still moving before one that cannot be judged, so `status --watch` waits for it)
_WORST_FIRST = (
    "unhealthy",
    "failed",
    "in progress",
    "waiting for GPUs",
    "waking",
    "starting",
    "unknown",
    "serving, with a warning",
    "scaled to zero",
    "healthy",
    "deleted",
)


def _weight(health: str) -> int:
    return next((i for i, word in enumerate(_WORST_FIRST) if health.startswith(word)), 0)


def observe_regions(
    record: Record,
    regions: list[Record],
    lock: Lock | None,
    cluster_for: ClusterFactory,
    probe: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`observe` for each region of a multi-region deployment (`regions`: the record as each region's stack sees
    it, byoc.lifecycle), and the totals: replicas summed over the regions that could be read, the endpoint (the
    global layer's private name where it has one, else the primary region's), and a health that leads with the
    worst region's (so `--watch` waits while any region still moves) and names every region."""
    per_region = []
    for where in regions:
        seen = observe(where, lock, cluster_for, probe=probe, now=now)
        per_region.append({"region": where.region, "stack": where.name, "state": where.state.value, **seen})
    read = [r["replicas"] for r in per_region if r.get("replicas")]
    replicas = (
        {"desired": sum(r["desired"] for r in read), "ready": sum(r["ready"] for r in read), "regions": len(read)}
        if read
        else None
    )
    # the global layer's one private name (stacks/<cloud>/global_layer.py exports it as entry_name)
    layer = record.outputs.get("global")
    entry = layer.get("entry_name") if isinstance(layer, dict) else None
    endpoint = f"https://{entry}" if isinstance(entry, str) and entry else None
    worst = min(per_region, key=lambda r: _weight(str(r["health"])))
    if lock is not None or record.state is not State.DEPLOYED:
        health = observe(record, lock, cluster_for, probe=False, now=now)["health"]
    elif all(str(r["health"]).split(":")[0] == str(worst["health"]).split(":")[0] for r in per_region):
        health = f"{str(worst['health']).split(':')[0]} in every region ({', '.join(r['region'] for r in per_region)})"
    else:
        others = "; ".join(f"{r['region']}: {r['health']}" for r in per_region if r is not worst)
        health = f"{worst['health']} (in {worst['region']}); {others}"
    return {
        "replicas": replicas,
        "endpoint": endpoint or per_region[0].get("endpoint"),
        "artifact": record.outputs.get("artifact"),
        "health": health,
        "regions": per_region,
    }


def observe(
    record: Record, lock: Lock | None, cluster_for: ClusterFactory, probe: bool = True, now: datetime | None = None
) -> dict[str, Any]:
    """{"health", "replicas", "endpoint", "artifact"} for one deployment, and "wake" while a replica wakes.
    `now` is the time elapsed durations are counted to (the clock's when None)."""
    from byoc.cluster_api import ClusterUnreachable
    from byoc.kube_events import pod_creation_failures

    seen: dict[str, Any] = {
        "replicas": None,
        "endpoint": None,
        "artifact": record.outputs.get("artifact"),
    }
    if lock is not None:
        return seen | {"health": f"in progress: {lock.describe()}"}
    if record.state is State.DELETED:
        return seen | {"health": "deleted"}
    if record.state is State.FAILED:
        pending = f"; {len(record.pending_operations)} pending operation(s)" if record.pending_operations else ""
        return seen | {"health": f"failed: {record.reason}{pending}"}
    if record.state in RUNNING:
        return seen | {"health": f"unknown: {record.state.value} without a running byoc process"}
    namespace = resource_name(record.name)
    try:
        cluster = cluster_for(record)
        name = resource_name(record.name, "serving")
        serving = [d for d in cluster.list("deployments.apps", namespace) if _field(d, "metadata", "name") == name]
        if not serving:
            return seen | {"health": f"unknown: the serving Deployment is not in namespace {namespace}"}
        desired = _count(_field(serving[0], "spec", "replicas"))
        if desired is None:  # the API server defaults it (1) and KEDA writes 0: anything else is not the API's
            return seen | {
                "health": f"unknown: Deployment {name}'s spec.replicas is "
                f"{_field(serving[0], 'spec', 'replicas')!r}, not a count: read it with `kubectl get deployment "
                f"{name} -n {namespace} -o yaml`"
            }
        ready = _count(_field(serving[0], "status", "readyReplicas")) or 0  # absent while none is ready
        seen["replicas"] = {"desired": desired, "ready": ready}
        for service in cluster.list("services", namespace):
            ingress = _field(service, "status", "loadBalancer", "ingress") or []
            if _field(service, "spec", "type") == "LoadBalancer" and isinstance(ingress, list) and ingress:
                host = _field(ingress[0], "hostname") or _field(ingress[0], "ip")
                if host:
                    seen["endpoint"] = f"https://{host}"
        pods = serving_pods(record, cluster)
        pool = str(record.outputs.get("gpu_node_pool", ""))
        blockers = get_cloud(record.cloud).gpu_blockers(cluster, pool, pods, now)
        wake = wake_of(record, cluster, now, pods) if desired > 0 and ready < desired else None
        no_pods = pod_creation_failures(cluster.list("events", namespace), name, namespace) if desired > ready else []
    except ClusterUnreachable as exc:
        return seen | {"health": f"unknown: cannot read the cluster: {exc}"}
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        # An object shaped unlike the API's (a null where an object belongs, a string for a count: a proxy, an
        # admission webhook or a CRD at another version): this deployment's health cannot be judged, the others'
        # still can, and the user is told what to look at rather than shown a traceback.
        return seen | {
            "health": f"unknown: the cluster answered an object byoc cannot read ({type(exc).__name__}: {exc}); "
            f"look at namespace {namespace}'s serving pods and events with kubectl, and report it to byoc"
        }
    endpoint = os.environ.get("BYOC_ENDPOINT") or seen["endpoint"]
    result = probe_endpoint(endpoint, _model_id(record)) if probe else Probe("skipped", "the completion check was off")
    if wake is not None:
        seen["wake"] = wake[1]
    if blockers and desired > ready:
        seen["blockers"] = blockers  # what the health line quotes, one per reason, for --output json
    permanent = bool(wake and wake[1].get("permanent"))
    health = judge(desired, ready, result, blockers, wake[0] if wake else None, permanent, no_pods)
    return seen | {"health": health, "probe": result.outcome}
