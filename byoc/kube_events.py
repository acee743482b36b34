"""Reading pods and events as the Kubernetes API returns them (kubectl's JSON), for `byoc status`: timestamps that
never raise, an event's first and latest time, and which events are about which pod.

Shared by byoc/wake.py (where a wake is) and byoc/clouds (`Cloud.gpu_blockers`: why GPU replicas are not coming),
so that both read the same events of the same pods.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

# How far an event's time may lie before its pod's creation and still be read as the pod's. The pod's
# creationTimestamp comes from the API server's clock; its events are stamped by the clock of the component that
# records them (the kubelet on the node, Karpenter, the cluster autoscaler, the scheduler). NTP keeps those within a
# second of each other, but a node whose clock drifted stamps the kubelet's events early (minutes, in the reports
# byoc was shown). Five minutes reads such a node's events; it cannot let another pod's events in, since events are
# matched to the pod by uid (or by its name, which the ReplicaSet draws at random) before their time is looked at.
# byoc's judgement, not a Kubernetes figure.
CLOCK_SKEW = timedelta(minutes=5)


def parse_time(text: Any) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339: `2026-12-06T10:00:00Z`, with fractions or an offset) as an aware
    datetime; None for anything else (absent, empty, malformed), so that status never fails on what an API server
    or a proxy in front of it returns. A time without a zone is read as UTC, the zone the API server writes every
    time in (k8s.io/apimachinery pkg/apis/meta/v1/time.go `MarshalJSON`: `t.UTC().Format(time.RFC3339)`)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _first_time(*texts: Any) -> datetime | None:
    return next((t for t in (parse_time(text) for text in texts) if t is not None), None)


def event_time(event: dict[str, Any]) -> datetime | None:
    """When an event last happened, read as kubectl reads it (k8s.io/kubectl pkg/cmd/events `eventTime`): an
    events.k8s.io series' `series.lastObservedTime` (the scheduler's repeated FailedScheduling: `eventTime` is its
    first occurrence, and `firstTimestamp`/`lastTimestamp` are null), else `lastTimestamp` (core/v1 events of the
    kubelet, Karpenter and the cluster autoscaler; `count` > 1 keeps the first time in `firstTimestamp`), else
    `eventTime`, else the event object's creation. A field that does not parse is passed over."""
    series = event.get("series") or {}
    return _first_time(
        series.get("lastObservedTime") if isinstance(series, dict) else None,
        event.get("lastTimestamp"),
        event.get("eventTime"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    )


def event_first_time(event: dict[str, Any]) -> datetime | None:
    """When an event first happened: a repeated event (a pull the kubelet retries, `count` 7) keeps its first
    occurrence in `firstTimestamp` (core/v1) or `eventTime` (an events.k8s.io series), its latest in
    `lastTimestamp` or `series.lastObservedTime`."""
    return _first_time(
        event.get("firstTimestamp"),
        event.get("eventTime"),
        event.get("lastTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    )


def as_count(value: Any) -> int | None:
    """A count as an API server or a proxy in front of it may write it: 7, "7", 7.0; None for anything else
    (absent, negative, "abc", a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def event_count(event: dict[str, Any]) -> int:
    """How many times an event happened (`count`, or an events.k8s.io series' `series.count`; "7" read as 7), at
    least 1."""
    series = event.get("series") or {}
    count = as_count(series.get("count")) if isinstance(series, dict) else None
    count = count or as_count(event.get("count"))
    return count if count else 1


def message_of(event: dict[str, Any]) -> str:
    """An event's message, "" where it is absent or null."""
    message = event.get("message")
    return message.strip() if isinstance(message, str) else ""


def involved(event: dict[str, Any]) -> dict[str, Any]:
    """An event's involvedObject, {} where it is absent or null."""
    found = event.get("involvedObject")
    return found if isinstance(found, dict) else {}


# Karpenter's nomination of a pending pod: "Pod should schedule on: nodeclaim/NAME, node/NAME" (kubernetes-sigs/
# karpenter pkg/controllers/provisioning/scheduling/events.go `NominatePodEvent`; node/ alone: room on a node that
# is already up).
_NOMINATED = re.compile(r"\b(nodeclaim|node)/([a-z0-9.-]+)")


def nominations(pod_events: Iterable[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The NodeClaims and the nodes Karpenter nominated a pod for, from its `Nominated` events."""
    claims: set[str] = set()
    nodes: set[str] = set()
    for event in pod_events:
        if event.get("reason") != "Nominated":
            continue
        for kind, name in _NOMINATED.findall(message_of(event)):
            (claims if kind == "nodeclaim" else nodes).add(name)
    return claims, nodes


def generated_by(name: str, prefix: str) -> bool:
    """Whether `name` is one the API server generated from `prefix` (metadata.generateName: the prefix and five
    lowercase alphanumerics, k8s.io/apiserver pkg/storage/names/generate.go `randomLength = 5`). A NodeClaim is named
    so after its NodePool (kubernetes-sigs/karpenter nodeclaimtemplate.go `GenerateName: "<pool>-"`): the pool
    byoc-gpu's byoc-gpu-x7k2p, never the pool byoc-gpu-spot's byoc-gpu-spot-x7k2p."""
    return re.fullmatch(re.escape(prefix) + r"[a-z0-9]{5}", name) is not None


def created(obj: dict[str, Any]) -> datetime | None:
    """An object's creationTimestamp, None when absent or unparsable."""
    return parse_time((obj.get("metadata") or {}).get("creationTimestamp"))


def waits_for_node(pod: dict[str, Any]) -> bool:
    """Whether a pod waits for a node: not bound to one (`spec.nodeName`), not ended, not being deleted. A pod
    already bound to a node waits for no GPUs."""
    return (
        not (pod.get("spec") or {}).get("nodeName")
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
    )


def is_about(event: dict[str, Any], pod: dict[str, Any]) -> bool:
    """Whether `event` is about `pod`: its involvedObject is that Pod (by uid where both carry one, else by name, and
    namespace where both name one), and it is no older than the pod (less CLOCK_SKEW; an event whose time is
    unknown is kept, being about this pod)."""
    about = involved(event)
    meta = pod.get("metadata") or {}
    if about.get("kind") != "Pod" or not meta.get("name") or about.get("name") != meta.get("name"):
        return False
    if about.get("uid") and meta.get("uid"):
        return bool(about["uid"] == meta["uid"])
    if about.get("namespace") and meta.get("namespace") and about["namespace"] != meta["namespace"]:
        return False
    made, when = created(pod), event_time(event)
    return made is None or when is None or when >= made - CLOCK_SKEW


def events_about(events: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events about any of `pods` (`is_about`), in the order listed."""
    chosen = list(pods)
    return [e for e in events if any(is_about(e, p) for p in chosen)]


def since_any(pods: Iterable[dict[str, Any]]) -> datetime | None:
    """The oldest creation among `pods`, less CLOCK_SKEW: where a wake of these pods began (None: unknown)."""
    times = [t for t in (created(p) for p in pods) if t is not None]
    return min(times) - CLOCK_SKEW if times else None


# A Deployment's ReplicaSets are named `<deployment>-<pod-template-hash>` (k8s.io/kubernetes pkg/controller/
# deployment/sync.go; the hash is rand.SafeEncodeString of a 32-bit hash: up to 10 lowercase alphanumerics).
_TEMPLATE_HASH = r"[a-z0-9]{1,10}"


def pod_creation_failures(events: Iterable[dict[str, Any]], deployment: str, namespace: str | None = None) -> list[str]:
    """Why the ReplicaSets of the Deployment `deployment` make no pod at all, in the ReplicaSet controller's words
    (k8s.io/kubernetes pkg/controller/controller_utils.go: reason `FailedCreate`, "Error creating: %v": a
    ResourceQuota exceeded, a Pod Security or admission webhook rejection), one line per ReplicaSet whose latest
    FailedCreate is newer than its latest `SuccessfulCreate` ("Created pod: %v"):
    `ReplicaSet byoc-demo-serving-7d9f cannot create pods (FailedCreate, 20x): Error creating: ...`.
    `namespace`: the Deployment's (None: any). Events of another Deployment are never read, even one whose name
    begins with this one's."""
    pattern = re.compile(re.escape(deployment) + "-" + _TEMPLATE_HASH)
    latest: dict[str, tuple[datetime | None, dict[str, Any]]] = {}
    created_at: dict[str, datetime] = {}
    for event in events:
        about = involved(event)
        name = str(about.get("name") or "")
        if about.get("kind") != "ReplicaSet" or not pattern.fullmatch(name):
            continue
        if namespace is not None and about.get("namespace") not in (None, "", namespace):
            continue
        when = event_time(event)
        if event.get("reason") == "SuccessfulCreate" and when is not None:
            created_at[name] = max(when, created_at.get(name, when))
        elif event.get("reason") == "FailedCreate":
            before = latest.get(name)
            if before is None or (when is not None and (before[0] is None or when >= before[0])):
                latest[name] = (when, event)
    said = []
    for name, (when, event) in sorted(latest.items()):
        made = created_at.get(name)
        if made is not None and (when is None or made >= when):
            continue  # it made a pod after failing: the failure passed
        said.append(f"ReplicaSet {name} cannot create pods (FailedCreate, {event_count(event)}x): {message_of(event)}")
    return said
