"""Where a wake from zero is: which phase the newest serving pod is in, since when, and what it waits for.

Read from what Kubernetes already records, through byoc.cluster_api (kubectl's JSON):
- node launching: the pod is not scheduled yet. What the node provisioner last said about it comes from its own
  events (`NodeProvisioner.launch_steps`: Karpenter's NodeClaim events Launched, Registered, Initialized and its
  Nominated event on the pod; the GKE cluster autoscaler's TriggeredScaleUp on the pod); once the new node has
  joined, the scheduler's own FailedScheduling says what it still lacks ("0/4 nodes are available: 1 node(s) had
  untolerated taint(s)": not done starting; "4 Insufficient nvidia.com/gpu": the GPU driver and device plugin have
  not advertised the GPUs yet), which is all a reader of `kubectl describe pod` sees where the provisioner's own
  objects are not listed (recorded wakes: tests/lifecycle/data/wake/recorded/);
- image pulling: the kubelet's Pulling event for an image of the pod with no Pulled after it
  (k8s.io/kubernetes pkg/kubelet/images/image_manager.go: "Pulling image %q", "Successfully pulled image %q in %v
  (%v including waiting). Image size: %v bytes.");
- weights fetching: the init container `fetch-artifacts` running (stacks/k8s/serving.py), or `verify-artifacts` with
  cold_start.weights_cache node_cache (stacks/k8s/weights.py);
- engine loading: `trtllm-serve` running and not ready (its startup probe waits for /health).

The phase's start is the event's time or the container's startedAt; the wake's start is the pod's creation (the
moment KEDA scaled the Deployment up and its ReplicaSet made the pod).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from byoc.clouds.base import NodeProvisioner
from byoc.coldstart import ColdStartEstimate, duration_words

FETCH_CONTAINER = "fetch-artifacts"
# cold_start.weights_cache node_cache: the init container reads the artifact through the node's shared mount
# (stacks/k8s/weights.py), from S3 on the node's first replica, from the node's cache after it
VERIFY_CONTAINER = "verify-artifacts"
ENGINE_CONTAINER = "trtllm-serve"
# How status says each phase while it runs.
PHASE_RUNNING = {
    "node_launch": "node launching",
    "image_pull": "image pulling",
    "weights_fetch": "weights fetching",
    "engine_load": "engine loading",
    "starting": "containers starting",
}


@dataclass(frozen=True)
class WakeProgress:
    """One serving pod's wake: `phase` (a byoc.coldstart phase, or "starting" between two of them), seconds in it,
    seconds since the pod was made, and what it waits for in words."""

    pod: str
    phase: str
    phase_seconds: float
    wake_seconds: float
    waiting_for: str

    def sentence(self, estimate: ColdStartEstimate | None = None) -> str:
        """`engine loading, 1 min 10 s of ~1 min 6 s estimated (wake 8 min of ~7 min 5 s): waiting for ...`."""
        said = f"{PHASE_RUNNING[self.phase]}, {duration_words(self.phase_seconds)}"
        if estimate is not None and self.phase in {p.name for p in estimate.phases}:
            phase_estimate = estimate.phase(self.phase).seconds
            said += f" of ~{duration_words(phase_estimate)} estimated"
            said += f" (wake {duration_words(self.wake_seconds)} of ~{duration_words(estimate.total_seconds)})"
        else:
            said += f" (wake {duration_words(self.wake_seconds)})"
        return f"{said}: waiting for {self.waiting_for}"

    def as_dict(self, estimate: ColdStartEstimate | None = None) -> dict[str, Any]:
        known = estimate is not None and self.phase in {p.name for p in estimate.phases}
        return {
            "pod": self.pod,
            "phase": self.phase,
            "phase_seconds": round(self.phase_seconds, 1),
            "phase_estimate_seconds": round(estimate.phase(self.phase).seconds, 1) if known and estimate else None,
            "wake_seconds": round(self.wake_seconds, 1),
            "wake_estimate_seconds": round(estimate.total_seconds, 1) if estimate else None,
            "waiting_for": self.waiting_for,
        }


def parse_time(text: str | None) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, `2026-12-06T10:00:00Z` or with fractions) as an aware datetime."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def event_time(event: dict[str, Any]) -> datetime | None:
    """When an event last happened, read as kubectl reads it (k8s.io/kubectl pkg/cmd/events `eventTime`): an
    events.k8s.io series' `series.lastObservedTime` (the scheduler's repeated FailedScheduling: `eventTime` is its
    first occurrence, and `firstTimestamp`/`lastTimestamp` are null), else `lastTimestamp` (core/v1 events of the
    kubelet, Karpenter and the cluster autoscaler; `count` > 1 keeps the first time in `firstTimestamp`), else
    `eventTime`, else the event object's creation."""
    series = event.get("series") or {}
    return parse_time(
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
    )


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _container(pod: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next((c for c in pod.get("status", {}).get(key, []) if c.get("name") == name), {})
    return found


def _pod_events(events: list[dict[str, Any]], pod: str, since: datetime) -> list[dict[str, Any]]:
    mine = [
        e
        for e in events
        if e.get("involvedObject", {}).get("kind") == "Pod"
        and e.get("involvedObject", {}).get("name") == pod
        and (event_time(e) or since) >= since
    ]
    return sorted(mine, key=lambda e: event_time(e) or since)


def _pulling(pod_events: list[dict[str, Any]]) -> tuple[str, datetime] | None:
    """The image the kubelet is pulling now (a Pulling event with no Pulled for that image after it)."""
    open_pulls: dict[str, datetime] = {}
    for event in pod_events:
        message = str(event.get("message", ""))
        image = message.split('"')[1] if message.count('"') >= 2 else message
        when = event_time(event)
        if event.get("reason") == "Pulling" and when is not None:
            open_pulls[image] = when
        elif event.get("reason") in ("Pulled", "Failed", "BackOff"):
            open_pulls.pop(image, None)
    if not open_pulls:
        return None
    image, since = max(open_pulls.items(), key=lambda item: item[1])
    return image, since


# The scheduler's verdict on a pending pod (k8s.io/kubernetes pkg/scheduler: "0/%v nodes are available: %v").
_NODES_AVAILABLE = re.compile(r"0/(\d+) nodes are available: (.*)", re.DOTALL)


def _new_node_lacks(pod_events: list[dict[str, Any]]) -> tuple[datetime, str] | None:
    """What the new node still lacks, by the scheduler's latest FailedScheduling on the pod once it counts more nodes
    than it did when the pod was made (the provisioner's node has joined): a startup taint, or the GPUs."""
    verdicts = [
        (when, found)
        for e in pod_events
        if e.get("reason") == "FailedScheduling"
        and (when := event_time(e)) is not None
        and (found := _NODES_AVAILABLE.search(str(e.get("message", "")))) is not None
    ]
    if len(verdicts) < 2 or int(verdicts[-1][1].group(1)) <= int(verdicts[0][1].group(1)):
        return None
    when, latest = verdicts[-1]
    lacking = latest.group(2)
    if "Insufficient nvidia.com/gpu" in lacking:
        return when, "the new node's GPU driver and device plugin to advertise nvidia.com/gpu"
    if "taint" in lacking:
        return when, "the new node to finish starting (the scheduler still sees a startup taint on it)"
    return when, "the scheduler to place the pod on the new node"


def _node_launch(
    pod: str, created: datetime, events: list[dict[str, Any]], provisioner: NodeProvisioner
) -> tuple[datetime, str]:
    """The node provisioner's latest step for this wake, and what comes after it."""
    latest: tuple[datetime, str] | None = None
    pod_nodeclaims: set[str] = set()
    for event in events:
        involved = event.get("involvedObject", {})
        when = event_time(event)
        if when is None or when < created:
            continue
        if involved.get("kind") == "Pod" and involved.get("name") == pod and event.get("reason") == "Nominated":
            # Karpenter: "Pod should schedule on: nodeclaim/NAME" names the claim whose events are this wake's
            pod_nodeclaims.update(w.split("/", 1)[1] for w in str(event.get("message", "")).split() if "/" in w)
    for event in events:
        involved = event.get("involvedObject", {})
        when = event_time(event)
        if when is None or when < created:
            continue
        for step in provisioner.launch_steps:
            if event.get("reason") != step.reason or involved.get("kind") != step.kind:
                continue
            if step.kind == "Pod" and involved.get("name") != pod:
                continue
            if step.kind != "Pod" and pod_nodeclaims and involved.get("name") not in pod_nodeclaims:
                continue
            if latest is None or when >= latest[0]:
                latest = (when, step.waits_for)
    lacks = _new_node_lacks(_pod_events(events, pod, created))
    if lacks is not None and (latest is None or lacks[0] >= latest[0]):
        latest = lacks
    if latest is None:
        return created, f"{provisioner.name} to launch a GPU node for the pending pod"
    return created, latest[1]


def wake_progress(
    pods: list[dict[str, Any]], events: list[dict[str, Any]], provisioner: NodeProvisioner, now: datetime | None = None
) -> WakeProgress | None:
    """The phase of the newest serving pod that is not ready; None when every pod is ready or there is none.
    `pods` are the serving Deployment's pods, `events` every namespace's (the node provisioner's objects are
    cluster-scoped, their events land in `default`)."""
    now = now or datetime.now(UTC)
    waking = [p for p in pods if not _is_ready(p) and not p.get("metadata", {}).get("deletionTimestamp")]
    if not waking:
        return None
    pod = max(waking, key=lambda p: parse_time(p.get("metadata", {}).get("creationTimestamp")) or now)
    name = str(pod.get("metadata", {}).get("name", ""))
    created = parse_time(pod.get("metadata", {}).get("creationTimestamp")) or now
    wake_s = (now - created).total_seconds()

    def progress(phase: str, since: datetime, waiting_for: str) -> WakeProgress:
        return WakeProgress(name, phase, max(0.0, (now - since).total_seconds()), max(0.0, wake_s), waiting_for)

    if not pod.get("spec", {}).get("nodeName"):
        since, waits = _node_launch(name, created, events, provisioner)
        return progress("node_launch", since, waits)
    mine = _pod_events(events, name, created)
    pulling = _pulling(mine)
    if pulling is not None:
        image, since = pulling
        return progress("image_pull", since, f"the kubelet to pull {image}")
    fetch = _container(pod, "initContainerStatuses", FETCH_CONTAINER)
    running = fetch.get("state", {}).get("running")
    if running is not None:
        since = parse_time(running.get("startedAt")) or created
        return progress("weights_fetch", since, f"{FETCH_CONTAINER} to copy the artifact from the bucket and verify it")
    verify = _container(pod, "initContainerStatuses", VERIFY_CONTAINER)
    running = verify.get("state", {}).get("running")
    if running is not None:
        since = parse_time(running.get("startedAt")) or created
        return progress(
            "weights_fetch", since, f"{VERIFY_CONTAINER} to read the artifact through the node's cache and verify it"
        )
    engine = _container(pod, "containerStatuses", ENGINE_CONTAINER)
    running = engine.get("state", {}).get("running")
    if running is not None:
        since = parse_time(running.get("startedAt")) or created
        return progress("engine_load", since, f"{ENGINE_CONTAINER} to load the weights and answer /health")
    init_running = next(
        (
            c["name"]
            for c in pod.get("status", {}).get("initContainerStatuses", [])
            if c.get("state", {}).get("running")
        ),
        None,
    )
    waiting = engine.get("state", {}).get("waiting") or fetch.get("state", {}).get("waiting") or {}
    scheduled = next(
        (e for e in reversed(mine) if e.get("reason") in ("Scheduled", "Pulled", "Created", "Started")), None
    )
    since = (event_time(scheduled) if scheduled else None) or created
    if init_running is not None:
        # another init container than the artifact fetch (a wait for a dependency, a volume's permissions): the
        # engine cannot start before it ends
        return progress("starting", since, f"the init container {init_running} to finish")
    reason = waiting.get("reason") or "the kubelet"
    message = f": {waiting['message']}" if waiting.get("message") else ""
    return progress("starting", since, f"the containers to start ({reason}{message})")
