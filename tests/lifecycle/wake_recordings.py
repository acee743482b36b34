"""Recorded wakes (tests/lifecycle/data/wake/recorded/*.txt) as the Kubernetes API would have shown them at a moment.

Each recording is a published paste of a real wake, unchanged, under a `# key: value` header and a `---` line. The
paste is either a `kubectl describe pod` Events table (`format: describe`: relative ages such as `9m53s` or
`10m (x4 over 10m)`, with the header's `observed_at` standing in for when kubectl ran) or `kubectl get events
--output custom-columns=TIME:.lastTimestamp,REASON:.reason,MSG:.message` (`format: custom-columns`: absolute times).

`Recording.at(seconds)` gives what byoc/wake.py reads `seconds` after the pod was made: the events so far as core/v1
Event objects and the pod as the API would have had it. What is recorded and what is inferred is said in
tests/lifecycle/data/wake/README.md; in short:
- times: an age is subtracted from `observed_at`; kubectl prints ages from 10 minutes on in whole minutes, truncated
  (k8s.io/apimachinery pkg/util/duration `HumanDuration`), so those times are known to the minute only;
- shapes: the scheduler's events are written as kubectl describe reads events.k8s.io events (`eventTime`, a
  `series` when seen more than once, `reportingController`, null `firstTimestamp`/`lastTimestamp`); everyone
  else's as core/v1 events (`firstTimestamp`, `lastTimestamp`, `count`, `source.component`), the legacy recorder
  the kubelet, Karpenter and the cluster autoscaler use. A `custom-columns` paste shows `.lastTimestamp` for all;
- an event seen N times over a span is shown, at a moment inside the span, as its first occurrence only;
- the pod: made at its `SuccessfulCreate` (or, without one, its first event); bound to the node its `Scheduled`
  event names; each container running from its `Started` event; an init container done at the next kubelet event
  for another container; waiting in CrashLoopBackOff from a BackOff event about it (its last run in lastState);
  ready `ready_after_s` after it was made when the source says so (never otherwise);
- the recorded serving container (`engine`) is named `trtllm-serve`, the name byoc/wake.py reads, in the pod
  status (the events keep the recorded name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from byoc.wake import ENGINE_CONTAINER, parse_time

RECORDED = Path(__file__).parent / "data" / "wake" / "recorded"

# kubectl's HumanDuration: "41m", "9m53s", "70s", "3h41m", "2d3h" (k8s.io/apimachinery pkg/util/duration)
_AGE_PART = re.compile(r"(\d+)([dhms])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_REPEATED = re.compile(r"^(\S+) \(x(\d+) over (\S+)\)$")
# Whose object an event of a custom-columns paste (which names none) is about, and which component records it.
_OBJECT_BY_REASON = {
    "SuccessfulCreate": ("ReplicaSet", "replicaset-controller"),
    "ScalingReplicaSet": ("Deployment", "deployment-controller"),
    "KEDAScaleTargetActivated": ("ScaledObject", "keda-operator"),
    "TriggeredScaleUp": ("Pod", "cluster-autoscaler"),
    "NotTriggerScaleUp": ("Pod", "cluster-autoscaler"),
    "FailedScheduling": ("Pod", "default-scheduler"),
    "Scheduled": ("Pod", "default-scheduler"),
    "Nominated": ("Pod", "karpenter"),
}
_WARNING_REASONS = {"FailedScheduling", "Unhealthy", "BackOff", "Failed", "FailedMount", "FailedScaleUp"}
_KUBELET_CONTAINER_REASONS = {"Pulling", "Pulled", "Created", "Started"}


def age_seconds(text: str) -> int:
    """`9m53s` -> 593."""
    parts = _AGE_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a kubectl age: {text!r}")
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RecordedEvent:
    """One line of the paste: its reason, message, who recorded it, its first and last time, how many times."""

    reason: str
    message: str
    component: str
    type: str
    first: datetime
    last: datetime
    count: int
    kind: str
    name: str
    # recorded through events.k8s.io/v1 (kube-scheduler does; kubectl describe shows its reportingController as From)
    events_api: bool = False

    def as_api(self, namespace: str, now: datetime) -> dict[str, Any]:
        """The event as the API showed it at `now` (its first occurrence only when `now` is inside its span)."""
        seen_all = self.last <= now
        last, count = (self.last, self.count) if seen_all else (self.first, 1)
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{self.name}.{int(self.first.timestamp()):x}", "namespace": namespace},
            "involvedObject": {"kind": self.kind, "name": self.name, "namespace": namespace},
            "reason": self.reason,
            "message": self.message,
            "type": self.type,
        }
        if self.events_api:
            # events.k8s.io/v1, as the core/v1 API returns it
            event.update(
                eventTime=self.first.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                reportingController=self.component,
                reportingInstance=f"{self.component}-0",
                source={},
                firstTimestamp=None,
                lastTimestamp=None,
            )
            if count > 1:
                event["series"] = {"count": count, "lastObservedTime": last.strftime("%Y-%m-%dT%H:%M:%S.000000Z")}
        else:
            event.update(
                source={"component": self.component},
                firstTimestamp=stamp(self.first),
                lastTimestamp=stamp(last),
                count=count,
            )
        return event


@dataclass
class Recording:
    """A recorded wake: its header (`source`, `cloud`, ...), the pasted lines, the events read from them."""

    file: str
    header: dict[str, str]
    paste: list[str]
    events: list[RecordedEvent]
    pod: str
    created: datetime

    @property
    def cloud(self) -> str:
        return self.header["cloud"]

    def event(self, reason: str, nth: int = 0) -> RecordedEvent:
        return [e for e in self.events if e.reason == reason][nth]

    def seconds(self, when: datetime) -> float:
        """`when` as seconds after the pod was made."""
        return (when - self.created).total_seconds()

    def at(self, seconds: float) -> tuple[datetime, list[dict[str, Any]], list[dict[str, Any]]]:
        """The moment `seconds` after the pod was made, the pod then, and the events recorded up to it."""
        now = self.created + timedelta(seconds=seconds)
        namespace = self.header["namespace"]
        events = [e.as_api(namespace, now) for e in self.events if e.first <= now]
        return now, [self._pod_at(now)], events

    def _pod_at(self, now: datetime) -> dict[str, Any]:
        seen = [e for e in self.events if e.first <= now and e.kind == "Pod"]
        engine = self.header["engine"]
        inits = [n for n in self.header.get("init", "").split(",") if n]
        status: dict[str, Any] = {"phase": "Pending", "conditions": []}
        spec: dict[str, Any] = {"containers": [{"name": ENGINE_CONTAINER}], "initContainers": []}
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod,
                "namespace": self.header["namespace"],
                "creationTimestamp": stamp(self.created),
            },
            "spec": spec,
            "status": status,
        }
        scheduled = next((e for e in seen if e.reason == "Scheduled"), None)
        if scheduled is None:
            status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable"})
            return pod
        spec["nodeName"] = scheduled.message.rsplit(" to ", 1)[1]
        status["conditions"].append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp(scheduled.first)}
        )
        started = {self._container_of(e): e.first for e in seen if e.reason == "Started"}
        init_statuses = []
        inits_done = True
        for name in inits:
            spec["initContainers"].append({"name": name})
            if name not in started:
                init_statuses.append({"name": name, "state": {"waiting": {"reason": "PodInitializing"}}})
                inits_done = False
                continue
            ended = next(
                (
                    e.first
                    for e in seen
                    if e.reason in _KUBELET_CONTAINER_REASONS
                    and e.first > started[name]
                    and self._container_of(e) != name
                ),
                None,
            )
            if ended is None:
                init_statuses.append({"name": name, "state": {"running": {"startedAt": stamp(started[name])}}})
                inits_done = False
            else:
                init_statuses.append(
                    {
                        "name": name,
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "reason": "Completed",
                                "startedAt": stamp(started[name]),
                                "finishedAt": stamp(ended),
                            }
                        },
                    }
                )
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        ready_after = self.header.get("ready_after_s")
        ready = ready_after is not None and now >= self.created + timedelta(seconds=float(ready_after))
        backoff = next((e for e in seen if e.reason == "BackOff" and engine in e.message), None)
        if backoff is not None and engine in started and backoff.first >= started[engine]:
            # the kubelet restarts the exited container after a back-off (CrashLoopBackOff in the status)
            status["phase"] = "Running"
            engine_state: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff", "message": backoff.message}}
            # core/v1 ContainerStatus keeps the exited run in lastState (its exit code is not in the paste)
            last_state: dict[str, Any] = {"terminated": {"startedAt": stamp(started[engine])}}
        elif engine in started:
            status["phase"] = "Running"
            engine_state = {"running": {"startedAt": stamp(started[engine])}}
        else:
            engine_state = {"waiting": {"reason": "ContainerCreating" if inits_done else "PodInitializing"}}
        engine_status = {"name": ENGINE_CONTAINER, "state": engine_state, "ready": ready}
        if backoff is not None and engine in started and backoff.first >= started[engine]:
            engine_status["lastState"] = last_state
        status["containerStatuses"] = [engine_status]
        status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
        return pod

    def _container_of(self, event: RecordedEvent) -> str:
        """The container a kubelet event is about: named in the message ("Started container X", "Created container:
        X", an image only the engine uses), or, where the kubelet no longer names it ("Container started"), the
        engine."""
        found = re.search(r"container:? (\S+)$", event.message)
        if found:
            return found.group(1)
        return self.header["engine"]


def load(file: str) -> Recording:
    """Read `recorded/<file>`: the header, the paste, and the events in it."""
    text = (RECORDED / file).read_text()
    head, _, body = text.partition("\n---\n")
    header = dict(line[2:].split(": ", 1) for line in head.splitlines() if line.startswith("# "))
    paste = body.splitlines()
    if header["format"] == "describe":
        events = _describe_events(paste, header)
        pod = header["pod"]
        created = min(e.first for e in events)
    else:
        events, pod = _custom_column_events(paste, header)
        made = next((e for e in events if e.reason == "SuccessfulCreate"), None)
        created = made.first if made else min(e.first for e in events)
    return Recording(file, header, paste, events, pod, created)


def _describe_events(lines: list[str], header: dict[str, str]) -> list[RecordedEvent]:
    """`kubectl describe` Events: columns where the heading line puts them (kubectl pads with a tabwriter)."""
    heading = next(i for i, line in enumerate(lines) if line.split() == ["Type", "Reason", "Age", "From", "Message"])
    cols = [lines[heading].index(word) for word in ("Type", "Reason", "Age", "From", "Message")]
    observed = parse_time(header["observed_at"])
    assert observed is not None
    events = []
    for line in lines[heading + 2 :]:
        if not line.startswith("  ") or not line.strip():
            continue
        kind, reason, age, source = (line[a:b].strip() for a, b in pairwise(cols))
        message = line[cols[4] :].strip()
        repeated = _REPEATED.match(age)
        if repeated:
            last, count, first = age_seconds(repeated.group(1)), int(repeated.group(2)), age_seconds(repeated.group(3))
        else:
            last, count, first = age_seconds(age), 1, age_seconds(age)
        event = RecordedEvent(
            reason=reason,
            message=message,
            component=source,
            type=kind,
            first=observed - timedelta(seconds=first),
            last=observed - timedelta(seconds=last),
            count=count,
            kind="Pod",
            name=header["pod"],
            events_api=source.endswith("scheduler"),
        )
        events.append(event)
    return events


def _custom_column_events(lines: list[str], header: dict[str, str]) -> tuple[list[RecordedEvent], str]:
    """`TIME REASON MSG` lines: absolute `.lastTimestamp`s; the pod is the one `SuccessfulCreate` names."""
    rows = []
    for line in lines:
        if not line.strip():
            continue
        when, reason, message = line.split(maxsplit=2)
        time = parse_time(when)
        assert time is not None
        rows.append((time, reason, message))
    pod = next(m.split("Created pod: ", 1)[1].strip() for _, r, m in rows if r == "SuccessfulCreate")
    replicaset = pod.rsplit("-", 1)[0]
    names = {
        "Pod": pod,
        "ReplicaSet": replicaset,
        "Deployment": header["deployment"],
        "ScaledObject": header["deployment"],
    }
    events = []
    for time, reason, message in rows:
        kind, component = _OBJECT_BY_REASON.get(reason, ("Pod", "kubelet"))
        events.append(
            RecordedEvent(
                reason=reason,
                message=message,
                component=component,
                type="Warning" if reason in _WARNING_REASONS else "Normal",
                first=time,
                last=time,
                count=1,
                kind=kind,
                name=names[kind],
            )
        )
    return events, pod


def all_recordings() -> list[str]:
    return sorted(p.name for p in RECORDED.glob("*.txt"))
