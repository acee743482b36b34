"""`byoc status` while a deployment wakes from zero: the phase, how long it has taken beside the estimate, and what
it waits for, read from recorded wakes in the formats Karpenter, the GKE cluster autoscaler and the kubelet publish
(tests/lifecycle/data/wake/README.md). No API server runs here: a RECORDED cluster replays them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from byoc.clouds import get_cloud
from byoc.wake import parse_time, wake_progress
from tests.lifecycle import test_status
from tests.lifecycle.test_status import RecordedCluster, health

DATA = Path(__file__).parent / "data" / "wake"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def at(wake: dict[str, Any], seconds: float) -> tuple[datetime, list[dict[str, Any]], list[dict[str, Any]]]:
    """The wake as the API shows it `seconds` after the pod was made: the pod then, and the events so far."""
    start = parse_time(wake["pods"][0]["from"])
    assert start is not None
    now = start + timedelta(seconds=seconds)
    pod = [p["pod"] for p in wake["pods"] if (parse_time(p["from"]) or now) <= now][-1]
    events = [e for e in wake["events"] if (parse_time(e["lastTimestamp"]) or now) <= now]
    return now, [pod], events


AWS_MOMENTS = [
    # seconds after the pod was made, the phase, seconds in it, and what it waits for
    (2, "node_launch", 2, "Karpenter to launch a GPU node for the pending pod"),
    (30, "node_launch", 30, "the instance to boot and register with the cluster (Registered)"),
    (100, "node_launch", 100, "GPUs advertised by the device plugin (Initialized)"),
    (130, "node_launch", 130, "the scheduler to bind the pod to the new node"),
    (140, "image_pull", 7, "the kubelet to pull ghcr.io/example/byoc-runtime@sha256:"),
    (160, "weights_fetch", 8, "fetch-artifacts to copy the artifact from the bucket and verify it"),
    (300, "image_pull", 132, "the kubelet to pull nvcr.io/nvidia/tensorrt-llm/release@sha256:0082fd4f"),
    (480, "engine_load", 67, "trtllm-serve to load the weights and answer /health"),
]


@pytest.mark.parametrize(("seconds", "phase", "in_phase", "waiting_for"), AWS_MOMENTS)
def test_a_karpenter_wake_phase_by_phase(seconds: int, phase: str, in_phase: int, waiting_for: str) -> None:
    wake = load("aws-karpenter-wake.json")
    now, pods, events = at(wake, seconds)
    progress = wake_progress(pods, events, get_cloud("aws").node_provisioner, now)
    assert progress is not None
    assert (progress.phase, progress.phase_seconds, progress.wake_seconds) == (phase, in_phase, seconds)
    assert waiting_for in progress.waiting_for


def test_an_earlier_wakes_events_are_not_this_ones() -> None:
    """Three hours ago another NodeClaim was Initialized: a new wake's node launch has not got that far."""
    now, pods, events = at(load("aws-karpenter-wake.json"), 2)
    assert any(e["involvedObject"]["name"] == "byoc-demo-gpu-old11" for e in events)
    progress = wake_progress(pods, events, get_cloud("aws").node_provisioner, now)
    assert progress is not None and "to bind the pod" not in progress.waiting_for


GCP_MOMENTS = [
    (5, "node_launch", "the GKE cluster autoscaler to launch a GPU node for the pending pod"),
    (100, "node_launch", "the new VM to boot, install its GPU driver and join the node pool"),
    (245, "weights_fetch", "fetch-artifacts to copy the artifact"),
    (300, "engine_load", "trtllm-serve to load the weights"),
]


@pytest.mark.parametrize(("seconds", "phase", "waiting_for"), GCP_MOMENTS)
def test_a_gke_wake_with_the_image_cached_never_pulls(seconds: int, phase: str, waiting_for: str) -> None:
    now, pods, events = at(load("gcp-autoscaler-wake.json"), seconds)
    progress = wake_progress(pods, events, get_cloud("gcp").node_provisioner, now)
    assert progress is not None
    assert progress.phase == phase
    assert waiting_for in progress.waiting_for


def test_no_wake_once_the_pod_is_ready() -> None:
    for name, seconds in (("aws-karpenter-wake.json", 600), ("gcp-autoscaler-wake.json", 400)):
        now, pods, events = at(load(name), seconds)
        assert wake_progress(pods, events, get_cloud(name[:3]).node_provisioner, now) is None


class ReplayedCluster(RecordedCluster):
    """The recorded wake shifted so that `seconds` after the pod was made is now: status reads it as it would a
    cluster mid-wake (with the clock's own time, as `byoc status` runs)."""

    def __init__(self, wake: dict[str, Any], seconds: float, gke: bool = False) -> None:
        super().__init__(desired=1, ready=0)
        then, pods, events = at(wake, seconds)
        shift = datetime.now(UTC) - then
        text = json.dumps({"pods": pods, "events": events})
        for stamp in {s for s in _timestamps(json.loads(text))}:
            moved = (parse_time(stamp) or then) + shift
            text = text.replace(f'"{stamp}"', json.dumps(moved.strftime("%Y-%m-%dT%H:%M:%SZ")))
        shifted = json.loads(text)
        self.objects["pods"] = shifted["pods"]
        self.objects["events"] = shifted["events"]
        self.gke = gke

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert not (self.gke and "karpenter" in kind), f"status asked a GKE cluster for {kind}"
        return super().list(kind, namespace)


def _timestamps(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _timestamps(v)]
    if isinstance(node, list):
        return [s for v in node for s in _timestamps(v)]
    if isinstance(node, str) and len(node) == 20 and node.endswith("Z") and node[10] == "T":
        return [node]
    return []


def test_status_names_the_phase_beside_the_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, ReplayedCluster(load("aws-karpenter-wake.json"), 480))
    text = row["health"]
    # "waking (0/1 ready): engine loading, 1 min 7 s of ~1 min 6 s estimated (wake 8 min of ~6 min 23 s): ..."
    assert text.startswith("waking (0/1 ready): engine loading, 1 min ")
    assert " estimated (wake 8 min" in text and " of ~6 min " in text  # the recorded wake, the estimate
    assert text.endswith("waiting for trtllm-serve to load the weights and answer /health")
    wake = row["wake"]
    assert wake["phase"] == "engine_load"
    assert 66 <= wake["phase_seconds"] <= 70 and 480 <= wake["wake_seconds"] <= 484
    assert wake["phase_estimate_seconds"] > 60 and wake["wake_estimate_seconds"] > wake["phase_estimate_seconds"]


def test_status_on_gke_while_the_node_pool_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    monkeypatch.setattr(test_status, "GCP_SPEC", {**test_status.GCP_SPEC, "max_context": 8192})
    row = health(tmp_path, ReplayedCluster(load("gcp-autoscaler-wake.json"), 100, gke=True), cloud="gcp")
    assert re.match(r"waking \(0/1 ready\): node launching, 1 min 4[01] s of ~4 min estimated", row["health"])
    assert row["health"].endswith("waiting for the new VM to boot, install its GPU driver and join the node pool")
    assert row["wake"]["phase"] == "node_launch"


def test_without_an_estimate_status_still_says_the_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded spec that no longer resolves (here: llama-3.1-8b at its full context does not fit l4x1-bf16) has
    no estimate: the phase and the elapsed time are still said."""
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, ReplayedCluster(load("gcp-autoscaler-wake.json"), 245, gke=True), cloud="gcp")
    assert re.match(r"waking \(0/1 ready\): weights fetching, \d+ s \(wake 4 min \d+ s\): waiting for", row["health"])
    assert row["wake"]["phase_estimate_seconds"] is None


def test_status_watch_keeps_following_a_wake() -> None:
    """`byoc status --watch` follows until the deployment settles: a wake has not."""
    from byoc.commands.live import _settled

    assert not _settled([{"health": "waking (0/1 ready): engine loading, 5 s (wake 4 min 2 s): waiting for x"}])
    assert _settled([{"health": "healthy: a completion succeeded"}])


# -- only this wake's blockers (status replays the AWS wake at 480 s: the pod is bound and its engine loads) -------


def _old_event(kind: str, name: str, namespace: str, reason: str, message: str) -> dict[str, Any]:
    """An event as kubectl lists it, from eleven months ago."""
    then = "2026-01-01T00:00:00Z"
    involved = {"kind": kind, "name": name, "namespace": namespace}
    return {"involvedObject": involved, "reason": reason, "message": message, "lastTimestamp": then, "count": 1}


def _still_waking(row: dict[str, Any], phase: str) -> None:
    assert row["health"].startswith("waking (0/1 ready): "), row["health"]
    assert row["wake"]["phase"] == phase


def test_another_pods_old_limit_event_is_no_blocker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = ReplayedCluster(load("aws-karpenter-wake.json"), 480)
    cluster.objects["events"].append(
        _old_event(
            "Pod",
            "byoc-demo-build-xyz",
            "byoc-demo",
            "FailedScheduling",
            'Failed to schedule pod, all available instance types exceed limits for nodepool: "byoc-gpu"',
        )
    )
    _still_waking(health(tmp_path, cluster), "engine_load")


def test_another_pools_failed_nodeclaim_is_no_blocker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = ReplayedCluster(load("aws-karpenter-wake.json"), 480)
    cluster.objects["nodeclaims.karpenter.sh"] = [
        {
            "metadata": {"name": "system-abc", "labels": {"karpenter.sh/nodepool": "system"}},
            "status": {
                "conditions": [
                    {"type": "Launched", "status": "Unknown", "reason": "LaunchFailed", "message": "m7i.large ICE"}
                ]
            },
        }
    ]
    _still_waking(health(tmp_path, cluster), "engine_load")


def test_another_namespaces_failed_scale_up_is_no_blocker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = ReplayedCluster(load("gcp-autoscaler-wake.json"), 245, gke=True)
    cluster.objects["events"].append(
        _old_event(
            "Pod",
            "weights-transfer-job-abc",
            "gke-managed-volumepopulator",
            "FailedScaleUp",
            "Node scale up in zones europe-west4-a associated with this pod failed: GCE out of resources. Pod is at "
            "risk of not being scheduled.",
        )
    )
    _still_waking(health(tmp_path, cluster, cloud="gcp"), "weights_fetch")


def test_a_gpu_pool_stockout_during_this_wake_is_a_blocker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Karpenter deletes a NodeClaim EC2 had no capacity for and leaves its InsufficientCapacityError event
    (kubernetes-sigs/karpenter pkg/controllers/nodeclaim/lifecycle/events.go); a GPU node that joined a minute ago
    and has no GPUs yet is a step of the wake, not a blocker."""
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = ReplayedCluster(load("aws-karpenter-wake.json"), 30)
    pod_made = parse_time(cluster.objects["pods"][0]["metadata"]["creationTimestamp"])
    assert pod_made is not None
    when = (pod_made + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = (
        "NodeClaim byoc-gpu-7xk2p event: creating instance, insufficient capacity, with fleet error(s), "
        "InsufficientInstanceCapacity: We currently do not have sufficient p5.4xlarge capacity"
    )
    cluster.objects["events"].append(
        {
            "involvedObject": {"kind": "NodeClaim", "name": "byoc-gpu-7xk2p"},
            "reason": "InsufficientCapacityError",
            "message": message,
            "lastTimestamp": when,
        }
    )
    cluster.objects["nodes"] = [
        {
            "metadata": {"name": "ip-1", "labels": {"karpenter.sh/nodepool": "byoc-gpu"}, "creationTimestamp": when},
            "status": {"allocatable": {"nvidia.com/gpu": "0"}},
        }
    ]
    text = health(tmp_path, cluster)["health"]
    assert text == f"waiting for GPUs (0/1 ready): no capacity in the zone: {message}"


# -- failing containers, named with the kubelet's reason; a retried phase counted from its first start -------------

T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)
POD = "byoc-demo-serving-abc-x1"
RUNTIME = "ghcr.io/example/byoc-runtime@sha256:" + "1" * 64
SERVING = "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "0" * 64


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ev(reason: str, message: str, last: float, first: float | None = None, count: int = 1, **extra: Any) -> dict:
    """A kubelet event on the pod (core/v1: firstTimestamp, lastTimestamp, count)."""
    start = last if first is None else first
    involved = {"kind": "Pod", "name": POD, "namespace": "byoc-demo", **extra}
    return {
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "count": count,
        "firstTimestamp": ts(start),
        "lastTimestamp": ts(last),
    }


def serving_pod(init: list[dict[str, Any]], main: list[dict[str, Any]], node: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": POD, "namespace": "byoc-demo", "creationTimestamp": ts(0)},
        "spec": {"nodeName": "ip-10-0-1-1"} if node else {},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False"}],
            "initContainerStatuses": init,
            "containerStatuses": main,
        },
    }


def status_of(name: str, state: dict[str, Any], restarts: int = 0, last: dict[str, Any] | None = None) -> dict:
    return {"name": name, "state": state, "restartCount": restarts, **({"lastState": last} if last else {})}


FETCHED = status_of("fetch-artifacts", {"terminated": {"exitCode": 0, "reason": "Completed"}})
ENGINE_WAITS = status_of("trtllm-serve", {"waiting": {"reason": "PodInitializing"}})
SCHEDULED = ev("Scheduled", "Successfully assigned byoc-demo/x to ip-10-0-1-1", 120)


def aws_wake(pod: dict[str, Any], events: list[dict[str, Any]], seconds: float) -> Any:
    progress = wake_progress([pod], events, get_cloud("aws").node_provisioner, T0 + timedelta(seconds=seconds))
    assert progress is not None
    return progress


def test_the_runtime_image_failing_to_pull_is_named() -> None:
    pull_failed = f'Failed to pull image "{RUNTIME}": unexpected status from HEAD request: 403 Forbidden'
    events = [
        SCHEDULED,
        ev("Pulling", f'Pulling image "{RUNTIME}"', 1150, first=121, count=8),
        ev("Failed", pull_failed, 1160, first=125, count=8),
        ev("BackOff", f'Back-off pulling image "{RUNTIME}"', 1190, first=130, count=40),
    ]
    fetch = status_of("fetch-artifacts", {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}})
    progress = aws_wake(serving_pod([fetch], [ENGINE_WAITS]), events, 1200)
    assert (progress.phase, progress.phase_seconds) == ("image_pull", 1200 - 121)  # since the first Pulling
    assert progress.failing == f"fetch-artifacts ImagePullBackOff: {pull_failed} (8x)"
    assert "PodInitializing" not in progress.sentence()


def test_the_serving_image_not_found_during_a_retry_counts_from_the_first_pull() -> None:
    not_found = f'Failed to pull image "{SERVING}": rpc error: code = NotFound desc = not found'
    events = [
        SCHEDULED,
        ev("Pulling", f'Pulling image "{RUNTIME}"', 121),
        ev("Pulled", f'Successfully pulled image "{RUNTIME}" in 5s', 126),
        ev("Failed", not_found, 1100, first=300, count=6),
        ev("Pulling", f'Pulling image "{SERVING}"', 1195, first=140, count=7),  # retry 7, under way
    ]
    engine = status_of("trtllm-serve", {"waiting": {"reason": "ErrImagePull"}})
    progress = aws_wake(serving_pod([FETCHED], [engine]), events, 1200)
    assert (progress.phase, progress.phase_seconds) == ("image_pull", 1200 - 140)
    assert progress.failing == f"trtllm-serve ErrImagePull: {not_found} (6x)"


@pytest.mark.parametrize(
    ("state", "failing"),
    [
        (
            {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
            "fetch-artifacts restarted 7x, last exit 1 (Error), now CrashLoopBackOff: back-off 5m0s restarting "
            "failed container",
        ),
        ({"running": {"startedAt": ts(1795)}}, "fetch-artifacts restarted 7x, last exit 1 (Error)"),  # 8th attempt
    ],
)
def test_a_crash_looping_fetch_is_named(state: dict[str, Any], failing: str) -> None:
    fetch = status_of("fetch-artifacts", state, 7, {"terminated": {"exitCode": 1, "reason": "Error"}})
    events = [SCHEDULED, ev("Started", "Started container fetch-artifacts", 1795, first=160, count=8)]
    progress = aws_wake(serving_pod([fetch], [ENGINE_WAITS]), events, 1800)
    assert (progress.phase, progress.phase_seconds) == ("weights_fetch", 1800 - 160)  # the first attempt's start
    assert progress.failing == failing
    assert progress.sentence().endswith(f"; failing: {failing}")


def test_an_engine_running_after_oom_kills_counts_from_its_first_start() -> None:
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": ts(2000)}}
    engine = status_of("trtllm-serve", {"running": {"startedAt": ts(2390)}}, 6, oom)
    events = [SCHEDULED, ev("Started", "Started container trtllm-serve", 2390, first=400, count=7)]
    progress = aws_wake(serving_pod([FETCHED], [engine]), events, 2400)
    assert (progress.phase, progress.phase_seconds) == ("engine_load", 2000)
    assert progress.failing == "trtllm-serve restarted 6x, last OOMKilled (exit 137)"


def test_a_failing_verify_artifacts_and_engine_stats_are_named() -> None:
    """weights_cache node_cache runs verify-artifacts instead of fetch-artifacts (stacks/k8s/serving.py); the
    engine-stats sidecar is the pod's other container."""
    verify = status_of(
        "verify-artifacts", {"waiting": {"reason": "CrashLoopBackOff"}}, 2, {"terminated": {"exitCode": 3}}
    )
    progress = aws_wake(serving_pod([verify], [ENGINE_WAITS]), [SCHEDULED], 600)
    assert (progress.phase, progress.failing) == (
        "weights_fetch",
        "verify-artifacts restarted 2x, last exit 3, now CrashLoopBackOff",
    )
    stats = status_of("engine-stats", {"waiting": {"reason": "CreateContainerConfigError", "message": "no secret"}})
    engine = status_of("trtllm-serve", {"running": {"startedAt": ts(300)}})
    progress = aws_wake(serving_pod([FETCHED], [engine, stats]), [SCHEDULED], 600)
    assert progress.failing == "engine-stats CreateContainerConfigError: no secret"


# -- a wake that launches a node is compared with the new-node estimate --------------------------------------------


def test_a_warm_pool_wake_that_launches_a_node_is_compared_with_a_new_nodes_estimate() -> None:
    from byoc.resolve import resolve
    from byoc.spec import build_spec
    from byoc.wake import WakeProgress

    estimate = resolve(build_spec({**test_status.SPEC, "cold_start": {"warm_pool": 1}})).cold_start
    assert estimate.phase("node_launch").seconds == 0  # a warm node's wake skips the launch
    launching = WakeProgress("p", "node_launch", 150, 150, "x", new_node=True)
    new_launch = next(p for p in estimate.new_node_phases if p.name == "node_launch").seconds
    assert launching.as_dict(estimate)["phase_estimate_seconds"] == round(new_launch, 1) > 0
    assert launching.as_dict(estimate)["wake_estimate_seconds"] == round(estimate.new_node_seconds, 1)
    assert "of ~0 s estimated" not in launching.sentence(estimate)
    warm = WakeProgress("p", "engine_load", 10, 20, "x")
    assert warm.as_dict(estimate)["wake_estimate_seconds"] == round(estimate.total_seconds, 1)
    # a pod Karpenter nominated for a NodeClaim is on a new node in every later phase too
    now, pods, events = at(load("aws-karpenter-wake.json"), 480)
    assert aws_progress(pods, events, now).new_node


def aws_progress(pods: list[dict[str, Any]], events: list[dict[str, Any]], now: datetime) -> Any:
    progress = wake_progress(pods, events, get_cloud("aws").node_provisioner, now)
    assert progress is not None
    return progress


# -- another NodeClaim's events before the pod's nomination ---------------------------------------------------------


def test_another_nodeclaims_events_before_the_nomination_are_not_this_wakes() -> None:
    other = ev("Initialized", "Status condition transitioned, Type: Initialized", 1)
    other["involvedObject"] = {"kind": "NodeClaim", "name": "other-cpu-zzz"}
    progress = aws_wake(serving_pod([], [], node=False), [other], 2)
    assert progress.waiting_for == "Karpenter to launch a GPU node for the pending pod"


# -- timestamps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["garbage", "2026-12-06T10:00:05", "", None, 12])
def test_a_timestamp_that_does_not_parse_never_raises(stamp: Any) -> None:
    pulling = ev("Pulling", f'Pulling image "{SERVING}"', 5)
    pulling["lastTimestamp"] = pulling["firstTimestamp"] = stamp
    pod = serving_pod([FETCHED], [status_of("trtllm-serve", {"waiting": {"reason": "ContainerCreating"}})])
    pod["metadata"]["creationTimestamp"] = stamp
    progress = aws_wake(pod, [pulling], 10)
    assert progress.phase_seconds >= 0 and progress.wake_seconds >= 0


def test_a_kubelet_clock_behind_still_shows_its_pull_within_the_wake() -> None:
    """A node 3 min behind stamps its Pulling before the pod was made: read (CLOCK_SKEW, 5 min), counted from the
    pod's binding, never longer than the wake."""
    events = [SCHEDULED, ev("Pulling", f'Pulling image "{SERVING}"', 130 - 180)]
    creating = status_of("trtllm-serve", {"waiting": {"reason": "ContainerCreating"}})
    progress = aws_wake(serving_pod([FETCHED], [creating]), events, 300)
    assert (progress.phase, progress.phase_seconds, progress.wake_seconds) == ("image_pull", 180, 300)


def test_pulled_in_the_same_second_as_pulling_ends_the_pull() -> None:
    same = [
        ev("Pulled", f'Container image "{SERVING}" already present on machine', 200),
        ev("Pulling", f'Pulling image "{SERVING}"', 200),
    ]
    creating = status_of("trtllm-serve", {"waiting": {"reason": "ContainerCreating"}})
    progress = aws_wake(serving_pod([FETCHED], [creating]), same, 205)
    assert progress.phase == "starting"


def test_this_machines_clock_behind_the_api_server_shows_nothing_negative() -> None:
    progress = aws_wake(serving_pod([], [], node=False), [], -300)
    assert (progress.phase_seconds, progress.wake_seconds) == (0, 0)
