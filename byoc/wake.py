"""Where a wake from zero is: which phase the serving pod furthest behind is in, since when, and what it waits for.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from byoc.clouds.base import NodeProvisioner
from byoc.coldstart import ColdStartEstimate, duration_words
from byoc.kube_events import (
    CLOCK_SKEW,
    as_count,
    event_count,
    event_first_time,
    event_time,
    involved,
    is_about,
    message_of,
    nominations,
    parse_time,
)
from byoc.kube_events import created as created_at

__all__ = ["WakeProgress", "event_time", "parse_time", "wake_progress"]

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


# A container's waiting reasons that mean it cannot start, as the kubelet sets them: image pulls
# (k8s.io/kubernetes pkg/kubelet/images/types.go: ImagePullBackOff, ErrImagePull, ImageInspectError,
# ErrImageNeverPull, InvalidImageName) and the rest (pkg/kubelet/container/sync_result.go: CrashLoopBackOff,
# RunContainerError; pkg/kubelet/kuberuntime/kuberuntime_container.go: CreateContainerConfigError,
# CreateContainerError, PreStartHookError, PostStartHookError).
IMAGE_FAILURES = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "ImageInspectError", "ErrImageNeverPull", "InvalidImageName"}
)
START_FAILURES = frozenset(
    {
        "CrashLoopBackOff",
        "RunContainerError",
        "CreateContainerConfigError",
        "CreateContainerError",
        "PreStartHookError",
        "PostStartHookError",
    }
)
# A container the kubelet could not create: it never started, so the wake is in "starting", waiting for the object
# the message names (pkg/kubelet/kuberuntime/kuberuntime_container.go: CreateContainerConfigError, 'secret "x" not
# found', 'configmap "x" not found'; CreateContainerError).
NEVER_CREATED = frozenset({"CreateContainerConfigError", "CreateContainerError"})
# An image pull that no retry mends: the registry refuses the credentials or has no such image.
_PULL_REFUSED = re.compile(r"\b(401|403|404)\b|NotFound|not found|[Uu]nauthorized|[Ff]orbidden|manifest unknown|denied")
# The kubelet's events on a pod whose containers cannot be set up yet, and what the wake waits for then
# (k8s.io/kubernetes pkg/kubelet/events/event.go: FailedCreatePodSandBox, FailedMountVolume "FailedMount",
# FailedAttachVolume, NetworkNotReady).
POD_FAILURES = {
    "FailedCreatePodSandBox": "the kubelet to create the pod's sandbox (its network: the CNI gives it no address)",
    "FailedMount": "the kubelet to mount the pod's volumes",
    "FailedAttachVolume": "the pod's volumes to attach to the node",
    "NetworkNotReady": "the node's network to be ready",
}
# The kubelet's kill of a container whose probe failed: reason Killing, "Container %s failed %s probe, will be
# restarted" (pkg/kubelet/kuberuntime/kuberuntime_manager.go `computePodActions`): its exit 137 is that kill.
_PROBE_KILL = re.compile(r"Container (\S+) failed (\w+) probe")
# A phase this far past its estimate gets the docs' advice (docs/operations.md, "Reading a wake"): over 3x the
# estimate and a minute more. byoc's judgement: a wake varies by tens of seconds, not by minutes.
OVERRUN_FACTOR = 3.0
OVERRUN_MARGIN_S = 60.0
OVERRUN_HINTS = {
    "node_launch": "the zone may be short of the GPU: see the blockers (`byoc status` names them)",
    "image_pull": "is the image cache off or missing on this node? (cold_start.image_cache)",
    "weights_fetch": "check the bucket's throughput and the weights cache (cold_start.weights_cache)",
    "engine_load": "check trtllm-serve's log (`kubectl logs {pod} -c trtllm-serve`)",
}
# How far along each phase is: of several waking pods, status names the one furthest behind.
PHASE_ORDER = {"node_launch": 0, "image_pull": 1, "starting": 2, "weights_fetch": 3, "engine_load": 4}
# The kubelet's events for one container in the order it records them (pkg/kubelet/events/event.go: Pulling,
# Pulled, Failed, BackOff, Created, Started): events stamped in the same second are read in this order.
_KUBELET_ORDER = {"Scheduled": 0, "Pulling": 1, "Pulled": 2, "Failed": 3, "BackOff": 3, "Created": 4, "Started": 5}


@dataclass(frozen=True)
class WakeProgress:
    """One serving pod's wake: `phase` (a byoc.coldstart phase, or "starting" between two of them), seconds in it
    (since the phase first started, across the kubelet's retries), seconds since the pod was made, what it waits
    for in words, whether the pod is on a node launched for it (`new_node`: compared with the estimate's new-node
    phases, not a warm-pool node's), what keeps failing, in the words of the kubelet or the node provisioner
    (`failing`), whether the wake cannot finish without a change (`permanent`: an image the registry refuses or has
    not, a container that cannot be created, one in CrashLoopBackOff; `byoc status --watch` stops on it), and how
    many other serving pods wake beside this one (`others_waking`: this is the one furthest behind)."""

    pod: str
    phase: str
    phase_seconds: float
    wake_seconds: float
    waiting_for: str
    new_node: bool = False
    failing: str | None = None
    permanent: bool = False
    others_waking: int = 0

    def overrun(self, estimate: ColdStartEstimate | None) -> str | None:
        """The docs' advice for a phase far past its estimate (OVERRUN_FACTOR times it and OVERRUN_MARGIN_S more),
        None otherwise or without an estimate of the phase."""
        phase_estimate, _ = self._estimate(estimate)
        hint = OVERRUN_HINTS.get(self.phase)
        if phase_estimate is None or hint is None:
            return None
        over = self.phase_seconds - phase_estimate
        if self.phase_seconds <= phase_estimate * OVERRUN_FACTOR or over <= OVERRUN_MARGIN_S:
            return None
        return f"far past its estimate: {hint.format(pod=self.pod)}"

    def _estimate(self, estimate: ColdStartEstimate | None) -> tuple[float | None, float | None]:
        """The estimate of this phase (None: not one the estimate has) and of the whole wake, on a warm-pool node or
        a new one as this wake is."""
        if estimate is None:
            return None, None
        phases = estimate.on_node(self.new_node)
        phase = next((p.seconds for p in phases if p.name == self.phase), None)
        return phase, sum(p.seconds for p in phases)

    def sentence(self, estimate: ColdStartEstimate | None = None) -> str:
        """`engine loading, 1 min 10 s of ~1 min 6 s estimated (wake 8 min of ~7 min 5 s): waiting for ...`, and
        `; failing: ...` where a container keeps failing."""
        said = f"{PHASE_RUNNING[self.phase]}, {duration_words(self.phase_seconds)}"
        phase_estimate, wake_estimate = self._estimate(estimate)
        if phase_estimate is not None and wake_estimate is not None:
            said += f" of ~{duration_words(phase_estimate)} estimated"
            said += f" (wake {duration_words(self.wake_seconds)} of ~{duration_words(wake_estimate)})"
        else:
            said += f" (wake {duration_words(self.wake_seconds)})"
        failing = f"; failing: {self.failing}" if self.failing else ""
        overrun = self.overrun(estimate)
        hint = f"; {overrun}" if overrun else ""
        others = f"; +{self.others_waking} more waking" if self.others_waking else ""
        return f"{said}: waiting for {self.waiting_for}{failing}{hint}{others}"

    def as_dict(self, estimate: ColdStartEstimate | None = None) -> dict[str, Any]:
        phase_estimate, wake_estimate = self._estimate(estimate)
        return {
            "pod": self.pod,
            "phase": self.phase,
            "phase_seconds": round(self.phase_seconds, 1),
            "phase_estimate_seconds": None if phase_estimate is None else round(phase_estimate, 1),
            "wake_seconds": round(self.wake_seconds, 1),
            "wake_estimate_seconds": None if wake_estimate is None else round(wake_estimate, 1),
            "new_node": self.new_node,
            "waiting_for": self.waiting_for,
            "failing": self.failing,
            "permanent": self.permanent,
            "others_waking": self.others_waking,
        }


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _container(pod: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get(key) or []
    found: dict[str, Any] = next((c for c in statuses if isinstance(c, dict) and c.get("name") == name), {})
    return found


def _pod_events(events: list[dict[str, Any]], pod: dict[str, Any], since: datetime) -> list[dict[str, Any]]:
    """The pod's events (byoc/kube_events.py `is_about`), oldest first; events of one second in the kubelet's
    order (a `Pulled` listed before the `Pulling` of the same second is still read after it)."""
    mine = [e for e in events if is_about(e, pod)]
    return sorted(mine, key=lambda e: (event_time(e) or since, _KUBELET_ORDER.get(str(e.get("reason")), 9)))


def _image_of(event: dict[str, Any]) -> str:
    """The image an event names ("Pulling image "X""), "" where its message names none (absent, null)."""
    message = message_of(event)
    return message.split('"')[1] if message.count('"') >= 2 else message


def _pulling(pod_events: list[dict[str, Any]]) -> tuple[str, datetime] | None:
    """The image the kubelet is pulling now (a Pulling event with no Pulled for that image after it), and when its
    pull first started (a pull the kubelet retries keeps its first time in `firstTimestamp`)."""
    open_pulls: dict[str, datetime] = {}
    for event in pod_events:
        image = _image_of(event)
        when = event_first_time(event)
        if event.get("reason") == "Pulling" and when is not None:
            open_pulls[image] = min(when, open_pulls.get(image, when))
        elif event.get("reason") in ("Pulled", "Failed", "BackOff"):
            open_pulls.pop(image, None)
    if not open_pulls:
        return None
    image, since = max(open_pulls.items(), key=lambda item: item[1])
    return image, since


def _pull_started(pod_events: list[dict[str, Any]], image: str | None) -> datetime | None:
    """When the kubelet first tried to pull `image` (any image with None) for this pod."""
    times = [
        t
        for e in pod_events
        if e.get("reason") == "Pulling"
        and (image is None or _image_of(e) == image)
        and (t := event_first_time(e)) is not None
    ]
    return min(times) if times else None


def _pull_failure(pod_events: list[dict[str, Any]], image: str | None) -> tuple[str, int] | None:
    """The kubelet's latest word on a failed pull of `image` (any image with None): "Failed to pull image "X":
    ..." (pkg/kubelet/images/image_manager.go), and how many times it failed."""
    failed = [
        e
        for e in pod_events
        if e.get("reason") == "Failed"
        and message_of(e).startswith("Failed to pull image")
        and (image is None or _image_of(e) == image)
    ]
    if not failed:
        return None
    return message_of(failed[-1]), max(event_count(e) for e in failed)


def _container_started(pod_events: list[dict[str, Any]], name: str) -> datetime | None:
    """When the kubelet first started (or created) container `name`: its Started/Created event ("Started container
    %s", "Created container: %s", pkg/kubelet/kuberuntime) keeps the first of its restarts in `firstTimestamp`."""
    times = [
        t
        for e in pod_events
        if e.get("reason") in ("Created", "Started")
        and (
            str(involved(e).get("fieldPath") or "").endswith("{" + name + "}")
            or re.search(rf"container:? {re.escape(name)}\b", message_of(e)) is not None
        )
        and (t := event_first_time(e)) is not None
    ]
    return min(times) if times else None


def _probe_kill(pod_events: list[dict[str, Any]], name: str) -> tuple[str, str, int] | None:
    """The kubelet's latest kill of container `name` for a failed probe (`Killing`, "Container NAME failed startup
    probe, will be restarted"): its message, the probe, and how many times it killed it so."""
    kills = [
        (e, found)
        for e in pod_events
        if e.get("reason") == "Killing"
        and (found := _PROBE_KILL.search(message_of(e))) is not None
        and found.group(1) == name
    ]
    if not kills:
        return None
    event, found = kills[-1]
    return message_of(event), found.group(2), max(event_count(e) for e, _ in kills)


def _restarts(status: dict[str, Any], pod_events: list[dict[str, Any]] | None = None) -> str | None:
    """`restarted 7x, last exit 1 (Error)`, `restarted 6x, last OOMKilled (exit 137)`, `restarted 2x, last killed
    for failing its startup probe (...): exit 137 is that kill, not a memory fault`: a container the kubelet has
    restarted (restartCount, read leniently: "7" is 7; lastState.terminated; the kubelet's Killing event); None if
    it never was."""
    count = as_count(status.get("restartCount"))
    if not count:
        return None
    last = (status.get("lastState") or {}).get("terminated") or {}
    reason, code = last.get("reason"), last.get("exitCode")
    killed = _probe_kill(pod_events or [], str(status.get("name") or ""))
    if killed is not None and reason != "OOMKilled":
        message, probe, times = killed
        kill = f"exit {code} is that kill" if code is not None else "that is the kill"
        said = f"last killed for failing its {probe} probe ({message}, {times}x)"
        return f"restarted {count}x, {said}: {kill}, not a memory fault"
    if reason == "OOMKilled":
        ended = f", last OOMKilled (exit {code})" if code is not None else ", last OOMKilled"
    elif code is not None:
        ended = f", last exit {code}" + (f" ({reason})" if reason else "")
    else:
        ended = f", last {reason}" if reason else ""
    return f"restarted {count}x{ended}"


def _phase_of(container: str) -> str:
    if container in (FETCH_CONTAINER, VERIFY_CONTAINER):
        return "weights_fetch"
    if container == ENGINE_CONTAINER:
        return "engine_load"
    return "starting"


@dataclass(frozen=True)
class _Trouble:
    phase: str
    since: datetime | None
    waiting_for: str
    failing: str
    permanent: bool = False


def _trouble(pod: dict[str, Any], pod_events: list[dict[str, Any]], scheduled: datetime | None) -> _Trouble | None:
    """The first container of the pod (init containers in order, then the others: fetch-artifacts or
    verify-artifacts, trtllm-serve, engine-stats) that cannot start or keeps being restarted, in the kubelet's words,
    with the time its phase first started."""
    status = pod.get("status") or {}
    finished_init = [
        t
        for c in status.get("initContainerStatuses") or []
        if (t := parse_time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))) is not None
    ]
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            if not isinstance(container, dict):
                continue
            name = str(container.get("name") or "")
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason in IMAGE_FAILURES:
                image = container.get("image") or None
                failure = _pull_failure(pod_events, image)
                if image is None and failure is not None and failure[0].count('"') >= 2:
                    image = failure[0].split('"')[1]  # the status does not name it: the image whose pull failed
                detail = f"{failure[0]} ({failure[1]}x)" if failure else str(waiting.get("message") or "")
                refused = reason in ("InvalidImageName", "ErrImageNeverPull") or _PULL_REFUSED.search(detail)
                return _Trouble(
                    "image_pull",
                    _pull_started(pod_events, image) or scheduled,
                    f"the kubelet to pull the image of {name}",
                    f"{name} {reason}" + (f": {detail}" if detail else ""),
                    permanent=bool(refused),
                )
            restarted = _restarts(container, pod_events)
            if reason not in START_FAILURES and (restarted is None or state.get("terminated")):
                continue
            previous = max(finished_init) if key == "containerStatuses" and finished_init else scheduled
            # its first start: the kubelet's event of it, else the earliest start its status still shows (the last
            # attempt's, in lastState), else the end of the phase before it
            starts = [
                t
                for t in (
                    _container_started(pod_events, name),
                    parse_time(((container.get("lastState") or {}).get("terminated") or {}).get("startedAt")),
                    parse_time((state.get("running") or {}).get("startedAt")),
                )
                if t is not None
            ]
            since = min(starts) if starts else previous
            said = restarted or name
            message = str(waiting.get("message") or "")
            if reason in NEVER_CREATED and restarted is None:
                # never started: the wake is between phases, waiting for the object the message names
                failing = f"{name} {reason}" + (f": {message}" if message else "")
                waits = f"the kubelet to create {name}" + (f" ({message})" if message else "")
                return _Trouble("starting", previous, waits, failing, permanent=reason == "CreateContainerConfigError")
            if reason in START_FAILURES:
                message = f": {waiting['message']}" if waiting.get("message") else ""
                failing = f"{name} {restarted}, now {reason}{message}" if restarted else f"{name} {reason}{message}"
            else:
                failing = f"{name} {said}"
            waits = {
                "weights_fetch": f"{name} to copy the artifact from the bucket and verify it",
                "engine_load": f"{name} to load the weights and answer /health",
            }.get(_phase_of(name), f"{name} to start")
            permanent = reason in ("CrashLoopBackOff", "CreateContainerConfigError")
            return _Trouble(_phase_of(name), since, waits, failing, permanent)
    return None


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


def _launches_node(pod_events: list[dict[str, Any]], provisioner: NodeProvisioner) -> bool:
    """Whether the provisioner launched (or is launching) a node for the pod: a launch step on the pod itself
    (Karpenter's Nominated for a NodeClaim, the cluster autoscaler's TriggeredScaleUp), not a nomination for a node
    already up."""
    claims, _ = nominations(pod_events)
    pod_steps = {s.reason for s in provisioner.launch_steps if s.kind == "Pod"} - {"Nominated"}
    return bool(claims) or any(e.get("reason") in pod_steps for e in pod_events)


def _refusal(
    pod_events: list[dict[str, Any]], events: list[dict[str, Any]], since: datetime, provisioner: NodeProvisioner
) -> str | None:
    """The provisioner's latest refusal for the pod that nothing newer superseded (`NodeProvisioner.refusals`: on
    the pod, Karpenter's FailedScheduling or the autoscaler's FailedScaleUp / NotTriggerScaleUp; on a NodeClaim the
    pod was nominated for, its InsufficientCapacityError), as `REASON: message`; None when there is none or the
    launch moved on since (`NodeProvisioner.launch_progress`)."""
    claims, _ = nominations(pod_events)
    found: list[tuple[datetime, dict[str, Any], str | None]] = []
    for event in pod_events:
        when = event_time(event)
        if when is not None and provisioner.refused(event):
            found.append((when, event, None))
    for event in events:
        about = involved(event)
        when = event_time(event)
        name = about.get("name")
        if when is not None and when >= since and name in claims and provisioner.refused(event):
            found.append((when, event, str(name)))
    for when, event, claim in sorted(found, key=lambda f: f[0], reverse=True):
        moved = provisioner.launch_progress(pod_events, events, skip_claim=claim)
        if moved is None or moved <= when:
            return f"{event.get('reason')}: {message_of(event)}"
    return None


def _node_launch(
    pod_events: list[dict[str, Any]], events: list[dict[str, Any]], since: datetime, provisioner: NodeProvisioner
) -> str:
    """What the node launch for this pod waits for now: after the provisioner's latest step for it, or the
    scheduler's word once the new node has joined. A NodeClaim's events count only once the pod was nominated for
    that NodeClaim (another deployment's or pool's NodeClaim launching at the same moment is not this wake's)."""
    latest: tuple[datetime, str] | None = None
    claims, nodes = nominations(pod_events)
    for step in provisioner.launch_steps:
        if step.kind != "Pod":
            continue
        for event in pod_events:
            when = event_time(event)
            if event.get("reason") != step.reason or when is None:
                continue
            waits = step.waits_for
            if step.reason == "Nominated" and nodes and not nominations([event])[0]:
                waits = f"the scheduler to bind the pod to {', '.join(sorted(nodes))} (a node already up)"
            if latest is None or when >= latest[0]:
                latest = (when, waits)
    for event in events:
        about = involved(event)
        when = event_time(event)
        if when is None or when < since or about.get("name") not in claims:
            continue
        for step in provisioner.launch_steps:
            this = step.kind != "Pod" and event.get("reason") == step.reason and about.get("kind") == step.kind
            if this and (latest is None or when >= latest[0]):
                latest = (when, step.waits_for)
    lacks = _new_node_lacks(pod_events)
    if lacks is not None and (latest is None or lacks[0] >= latest[0]):
        latest = lacks
    if latest is None:
        return f"{provisioner.name} to launch a GPU node for the pending pod"
    return latest[1]


def _pod_failure(pod_events: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The kubelet's latest failure to set the pod up (POD_FAILURES: its sandbox, its volumes) with nothing started
    or pulled after it: what the wake waits for, and the event's reason and message with its count."""
    latest: dict[str, Any] | None = None
    for event in pod_events:  # oldest first
        if event.get("reason") in POD_FAILURES:
            latest = event
        elif event.get("reason") in ("Pulling", "Pulled", "Created", "Started", "SandboxChanged"):
            latest = None
    if latest is None:
        return None
    reason = str(latest.get("reason"))
    return POD_FAILURES[reason], f"{reason}: {message_of(latest)} ({event_count(latest)}x)"


def wake_progress(
    pods: list[dict[str, Any]], events: list[dict[str, Any]], provisioner: NodeProvisioner, now: datetime | None = None
) -> WakeProgress | None:
    """The phase of the serving pod furthest behind among those not ready; None when every pod is ready or there is
    none. Of several waking pods (a scale from 0 to 3) it is, whatever order they are listed in: one with something
    failing first, then the earliest phase (PHASE_ORDER), then the longest in it, then by name; `others_waking`
    counts the rest. `pods` are the serving Deployment's pods, `events` every namespace's (the node provisioner's
    objects are cluster-scoped, their events land in `default`). Times are never negative: a phase that began before
    the pod (a node's clock behind the API server's) is counted from the pod's creation, and a pod made after `now`
    (this machine's clock behind the API server's) has waited 0 s."""
    now = now or datetime.now(UTC)
    events = [e for e in events if isinstance(e, dict)]
    waking = [
        p
        for p in pods
        if isinstance(p, dict)
        and not _is_ready(p)
        and not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
    ]
    if not waking:
        return None
    each = [_pod_progress(pod, events, provisioner, now) for pod in waking]
    behind = min(each, key=lambda w: (w.failing is None, PHASE_ORDER.get(w.phase, 9), -w.phase_seconds, w.pod))
    return replace(behind, others_waking=len(each) - 1)


def _pod_progress(
    pod: dict[str, Any], events: list[dict[str, Any]], provisioner: NodeProvisioner, now: datetime
) -> WakeProgress:
    """One waking pod's phase (`wake_progress`)."""
    name = str((pod.get("metadata") or {}).get("name") or "")
    created = min(created_at(pod) or now, now)
    wake_s = (now - created).total_seconds()
    mine = _pod_events(events, pod, created)
    launched = _launches_node(mine, provisioner)
    # a phase starts no earlier than the pod was made, or bound to its node once it is: a node whose clock is behind
    # stamps its kubelet's events before either
    floor = [created]

    def progress(
        phase: str,
        since: datetime | None,
        waiting_for: str,
        failing: str | None = None,
        new_node: bool = False,
        permanent: bool = False,
    ) -> WakeProgress:
        start = min(max(since or floor[0], floor[0]), now)
        return WakeProgress(
            name,
            phase,
            (now - start).total_seconds(),
            wake_s,
            waiting_for,
            launched or new_node,
            failing,
            permanent,
        )

    if not (pod.get("spec") or {}).get("nodeName"):
        _, nodes = nominations(mine)
        waits = _node_launch(mine, events, created - CLOCK_SKEW, provisioner)
        refused = _refusal(mine, events, created - CLOCK_SKEW, provisioner)
        if refused is not None:
            waits = f"{provisioner.name} to launch a GPU node for the pending pod, which it refuses for now"
        return progress("node_launch", created, waits, refused, new_node=not nodes or launched)
    scheduled_event = next((e for e in mine if e.get("reason") == "Scheduled"), None)
    scheduled = event_time(scheduled_event) if scheduled_event else None
    floor[0] = min(max(created, scheduled or created), now)
    trouble = _trouble(pod, mine, scheduled)
    if trouble is not None and trouble.phase == "image_pull":
        return progress(
            trouble.phase,
            trouble.since,
            trouble.waiting_for,
            trouble.failing,
            new_node=True,
            permanent=trouble.permanent,
        )
    pulling = _pulling(mine)
    if pulling is not None:
        image, pull_since = pulling
        image = image or "the image"  # a Pulling event whose message is absent names none
        failed = _pull_failure(mine, None if image == "the image" else image)
        failing = f"the pull of {image} failed {failed[1]}x: {failed[0]}" if failed else None
        return progress("image_pull", pull_since, f"the kubelet to pull {image}", failing, new_node=True)
    if trouble is not None:
        return progress(trouble.phase, trouble.since, trouble.waiting_for, trouble.failing, permanent=trouble.permanent)
    set_up = _pod_failure(mine)
    if set_up is not None:
        return progress("starting", scheduled, set_up[0], set_up[1])
    for container, waits in (
        (FETCH_CONTAINER, f"{FETCH_CONTAINER} to copy the artifact from the bucket and verify it"),
        (VERIFY_CONTAINER, f"{VERIFY_CONTAINER} to read the artifact through the node's cache and verify it"),
    ):
        running = (_container(pod, "initContainerStatuses", container).get("state") or {}).get("running")
        if running is not None:
            return progress("weights_fetch", parse_time((running or {}).get("startedAt")), waits)
    engine = _container(pod, "containerStatuses", ENGINE_CONTAINER)
    running = (engine.get("state") or {}).get("running")
    if running is not None:
        return progress(
            "engine_load",
            parse_time((running or {}).get("startedAt")),
            f"{ENGINE_CONTAINER} to load the weights and answer /health",
        )
    init_statuses = [c for c in (pod.get("status") or {}).get("initContainerStatuses") or [] if isinstance(c, dict)]
    init_running = next((c.get("name") for c in init_statuses if (c.get("state") or {}).get("running")), None)
    unfinished = [c for c in init_statuses if not (c.get("state") or {}).get("terminated")]
    waiting = ((unfinished[0] if unfinished else engine).get("state") or {}).get("waiting") or {}
    last = next((e for e in reversed(mine) if e.get("reason") in ("Scheduled", "Pulled", "Created", "Started")), None)
    since = event_time(last) if last else None
    if init_running is not None:
        # another init container than the artifact fetch (a wait for a dependency, a volume's permissions): the
        # engine cannot start before it ends
        return progress("starting", since, f"the init container {init_running} to finish")
    reason = waiting.get("reason") or "the kubelet"
    message = f": {waiting['message']}" if waiting.get("message") else ""
    return progress("starting", since, f"the containers to start ({reason}{message})")
