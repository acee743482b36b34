"""`byoc status` during a wake (byoc/wake.py): a node provisioner's refusal, the kubelet's failures to set a pod up,
containers that were never created, startup-probe kills, overruns with the docs' advice, several pods waking at once
(whatever order they are listed in), and nulls the API may write. Events as the kubelet, Karpenter and the GKE cluster
autoscaler publish them (sources in byoc/wake.py and byoc/clouds)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from byoc.clouds import get_cloud
from byoc.coldstart import ColdStartEstimate, Phase
from byoc.kube_events import pod_creation_failures
from byoc.wake import WakeProgress, wake_progress

T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)
SERVING = "nvcr.io/nvidia/tensorrt-llm/release@sha256:" + "0" * 64
AWS = get_cloud("aws").node_provisioner
GCP = get_cloud("gcp").node_provisioner


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str = "byoc-demo-serving-7d9f-aaaaa", node: bool = True, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "byoc-demo", "uid": f"uid-{name}", "creationTimestamp": ts(0)},
        "spec": {"nodeName": "ip-10-0-1-1"} if node else {},
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}], **status},
    }


def ev(p: dict[str, Any], reason: str, message: str | None, last: float, first: float | None = None, count: int = 1):
    meta = p["metadata"]
    return {
        "involvedObject": {"kind": "Pod", "name": meta["name"], "namespace": "byoc-demo", "uid": meta["uid"]},
        "reason": reason,
        "message": message,
        "count": count,
        "firstTimestamp": ts(last if first is None else first),
        "lastTimestamp": ts(last),
    }


def container(name: str, state: dict[str, Any], restarts: Any = 0, last: dict[str, Any] | None = None) -> dict:
    return {"name": name, "state": state, "restartCount": restarts, **({"lastState": last} if last else {})}


FETCHED = container("fetch-artifacts", {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": ts(200)}})


def wake(pods: list[dict[str, Any]], events: list[dict[str, Any]], seconds: float, provisioner: Any = AWS):
    progress = wake_progress(pods, events, provisioner, T0 + timedelta(seconds=seconds))
    assert progress is not None
    return progress


# -- a refusal on the pod, until something newer happens for it ---------------------------------------------------


def test_karpenter_finding_no_instance_type_is_named_in_the_wake() -> None:
    p = pod(node=False)
    message = 'Failed to schedule pod, incompatible with nodepool "byoc-gpu", no instance type satisfied resources'
    progress = wake([p], [ev(p, "FailedScheduling", message, 1790, 10, count=100)], 1800)
    assert (progress.phase, progress.failing) == ("node_launch", f"FailedScheduling: {message}")
    assert progress.waiting_for == "Karpenter to launch a GPU node for the pending pod, which it refuses for now"


def test_a_refusal_superseded_by_a_later_scale_up_is_not_failing() -> None:
    p = pod(node=False)
    failed = ev(p, "FailedScaleUp", "Node scale up in zones europe-west4-a ... failed: GCE out of resources.", 300)
    triggered = ev(p, "TriggeredScaleUp", "pod triggered scale-up: [{mig 0->1 (max: 3)}]", 1400)
    refused = wake([p], [failed], 1500, GCP)
    assert refused.failing == "FailedScaleUp: Node scale up in zones europe-west4-a ... failed: GCE out of resources."
    retried = wake([p], [failed, triggered], 1500, GCP)
    assert retried.failing is None
    assert retried.waiting_for == "the new VM to boot, install its GPU driver and join the node pool"


def test_a_stockout_of_the_nominated_nodeclaim_superseded_by_a_new_nodeclaim() -> None:
    p = pod(node=False)

    def on_claim(reason: str, claim: str, at: float) -> dict[str, Any]:
        return {
            "involvedObject": {"kind": "NodeClaim", "name": claim},
            "reason": reason,
            "message": reason,
            "lastTimestamp": ts(at),
        }

    first = [
        ev(p, "Nominated", "Pod should schedule on: nodeclaim/byoc-gpu-aaaaa", 5),
        on_claim("InsufficientCapacityError", "byoc-gpu-aaaaa", 20),
    ]
    assert wake([p], first, 100).failing == "InsufficientCapacityError: InsufficientCapacityError"
    later = [
        *first,
        ev(p, "Nominated", "Pod should schedule on: nodeclaim/byoc-gpu-bbbbb", 1700),
        on_claim("Launched", "byoc-gpu-bbbbb", 1710),
        on_claim("Registered", "byoc-gpu-bbbbb", 1750),
    ]
    progress = wake([p], later, 1800)
    assert progress.failing is None and "(Initialized)" in progress.waiting_for


# -- the kubelet cannot set the pod up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "message", "waits"),
    [
        (
            "FailedCreatePodSandBox",
            'Failed to create pod sandbox: plugin type="aws-cni" failed (add): failed to assign an IP address',
            "the kubelet to create the pod's sandbox",
        ),
        (
            "FailedMount",
            'MountVolume.SetUp failed for volume "byoc-demo-weights" : Mountpoint failed: AccessDenied',
            "the kubelet to mount the pod's volumes",
        ),
    ],
)
def test_a_pod_the_kubelet_cannot_set_up_names_the_event(reason: str, message: str, waits: str) -> None:
    p = pod(
        initContainerStatuses=[container("fetch-artifacts", {"waiting": {"reason": "PodInitializing"}})],
        containerStatuses=[container("trtllm-serve", {"waiting": {"reason": "PodInitializing"}})],
    )
    events = [ev(p, "Scheduled", "Successfully assigned", 10), ev(p, reason, message, 3590, 20, count=250)]
    progress = wake([p], events, 3600)
    assert (progress.phase, progress.failing) == ("starting", f"{reason}: {message} (250x)")
    assert progress.waiting_for.startswith(waits)
    # once a container started, the failure has passed
    started = ev(p, "Started", "Started container fetch-artifacts", 3595)
    assert wake([p], [*events, started], 3600).failing is None


def test_pod_creation_failures_of_the_serving_replicasets() -> None:
    def rs(reason: str, name: str, message: str, at: float) -> dict[str, Any]:
        return {
            "involvedObject": {"kind": "ReplicaSet", "name": name, "namespace": "byoc-demo"},
            "reason": reason,
            "message": message,
            "count": 20,
            "lastTimestamp": ts(at),
        }

    quota = 'Error creating: pods "byoc-demo-serving-7d9f-" is forbidden: exceeded quota: byoc-demo-quota'
    events = [
        rs("FailedCreate", "byoc-demo-serving-7d9f", quota, 600),
        rs("FailedCreate", "byoc-demo-serving-extra-7d9f", quota, 600),
    ]
    assert pod_creation_failures(events, "byoc-demo-serving", "byoc-demo") == [
        f"ReplicaSet byoc-demo-serving-7d9f cannot create pods (FailedCreate, 20x): {quota}"
    ]
    created = rs("SuccessfulCreate", "byoc-demo-serving-7d9f", "Created pod: byoc-demo-serving-7d9f-x", 700)
    assert pod_creation_failures([*events, created], "byoc-demo-serving", "byoc-demo") == []


# -- containers never created, probe kills, permanence ------------------------------------------------------------


def test_a_missing_secret_is_starting_not_engine_loading_and_permanent() -> None:
    missing = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "byoc-demo-keys" not found'}}
    p = pod(initContainerStatuses=[FETCHED], containerStatuses=[container("trtllm-serve", missing)])
    progress = wake([p], [ev(p, "Scheduled", "ok", 10)], 3600)
    assert progress.phase == "starting"
    assert progress.waiting_for == 'the kubelet to create trtllm-serve (secret "byoc-demo-keys" not found)'
    assert progress.permanent


def test_a_startup_probe_kill_is_not_called_a_memory_fault() -> None:
    last = {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": ts(300), "finishedAt": ts(1800)}}
    engine = container("trtllm-serve", {"running": {"startedAt": ts(1810)}}, restarts="2", last=last)
    p = pod(initContainerStatuses=[FETCHED], containerStatuses=[engine])
    kill = ev(p, "Killing", "Container trtllm-serve failed startup probe, will be restarted", 1805, 1000, count=2)
    progress = wake([p], [ev(p, "Scheduled", "ok", 10), kill], 1900)
    assert progress.failing is not None
    assert progress.failing.startswith("trtllm-serve restarted 2x, last killed for failing its startup probe")
    assert "exit 137 is that kill, not a memory fault" in progress.failing
    assert not progress.permanent


@pytest.mark.parametrize(("detail", "permanent"), [("403 Forbidden", True), ("i/o timeout", False)])
def test_an_image_the_registry_refuses_is_permanent(detail: str, permanent: bool) -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff"}}
    p = pod(
        initContainerStatuses=[FETCHED], containerStatuses=[{**container("trtllm-serve", waiting), "image": SERVING}]
    )
    failed = ev(p, "Failed", f'Failed to pull image "{SERVING}": {detail}', 500)
    assert wake([p], [ev(p, "Pulling", f'Pulling image "{SERVING}"', 200), failed], 600).permanent is permanent


# -- overruns ------------------------------------------------------------------------------------------------------

PHASES = tuple(
    Phase(name, seconds, "test", "test")
    for name, seconds in (("node_launch", 150.0), ("image_pull", 158.0), ("weights_fetch", 10.0), ("engine_load", 66.0))
)
ESTIMATE = ColdStartEstimate(
    cloud="aws",
    phases=PHASES,
    new_node_seconds=384.0,
    options={},
    warm_pool_hourly_usd=None,
    wake_timeout_s=900,
    wake_timeout_basis="test",
    new_node_phases=PHASES,
)


@pytest.mark.parametrize(
    ("phase", "seconds", "hint"),
    [
        ("engine_load", 1900, "check trtllm-serve's log (`kubectl logs byoc-demo-serving-7d9f-aaaaa -c trtllm-serve`)"),
        ("image_pull", 3500, "is the image cache off or missing on this node?"),
        ("weights_fetch", 3500, "check the bucket's throughput and the weights cache"),
        ("node_launch", 1800, "the zone may be short of the GPU"),
        ("engine_load", 100, None),  # late, not far past
    ],
)
def test_a_phase_far_past_its_estimate_gets_the_docs_advice(phase: str, seconds: float, hint: str | None) -> None:
    progress = WakeProgress("byoc-demo-serving-7d9f-aaaaa", phase, seconds, seconds + 300, "x", new_node=True)
    sentence = progress.sentence(ESTIMATE)
    if hint is None:
        assert "far past" not in sentence
    else:
        assert f"; far past its estimate: {hint}" in sentence


# -- several pods: the one furthest behind, whatever the order ----------------------------------------------------


def test_several_pods_name_the_one_furthest_behind_in_any_order() -> None:
    loading = pod(
        "byoc-demo-serving-7d9f-bbbbb",
        initContainerStatuses=[FETCHED],
        containerStatuses=[container("trtllm-serve", {"running": {"startedAt": ts(500)}})],
    )
    launching = pod("byoc-demo-serving-7d9f-ccccc", node=False)
    fetching = pod(
        "byoc-demo-serving-7d9f-ddddd",
        initContainerStatuses=[container("fetch-artifacts", {"running": {"startedAt": ts(600)}})],
    )
    events = [ev(launching, "Nominated", "Pod should schedule on: nodeclaim/byoc-gpu-x9k2p", 10)]
    for order in ([loading, launching, fetching], [launching, fetching, loading], [fetching, loading, launching]):
        progress = wake(order, events, 900)
        assert (progress.pod, progress.phase, progress.others_waking) == (
            "byoc-demo-serving-7d9f-ccccc",
            "node_launch",
            2,
        )
        assert progress.sentence().endswith("; +2 more waking")
    # a failing pod comes before one merely behind
    crash = container(
        "trtllm-serve",
        {"waiting": {"reason": "CrashLoopBackOff"}},
        restarts=3,
        last={"terminated": {"exitCode": 1, "reason": "Error"}},
    )
    crashing = pod("byoc-demo-serving-7d9f-eeeee", initContainerStatuses=[FETCHED], containerStatuses=[crash])
    progress = wake([launching, crashing], events, 900)
    assert (progress.pod, progress.permanent, progress.others_waking) == ("byoc-demo-serving-7d9f-eeeee", True, 1)


# -- nulls and lenient counts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p, e: p.update(status=None),
        lambda p, e: p.update(metadata=None),
        lambda p, e: p.update(spec=None),
        lambda p, e: p["status"].update(conditions=None),
        lambda p, e: p["status"].update(initContainerStatuses=[{"name": "fetch-artifacts", "state": None}]),
        lambda p, e: p["status"].update(containerStatuses=[{"state": {"running": None}}, None]),
        lambda p, e: e.append({"reason": "Pulling", "message": None, "involvedObject": None}),
        lambda p, e: e.append({"reason": "Started", "involvedObject": {"kind": "Pod", "fieldPath": None}}),
        lambda p, e: e.append({"reason": "X", "involvedObject": {"kind": "Pod", "name": None}, "metadata": None}),
        lambda p, e: e.append({"reason": "FailedScheduling", "series": "weird", "count": "many"}),
    ],
)
def test_nulls_never_raise(mutate: Any) -> None:
    p = pod(initContainerStatuses=[container("fetch-artifacts", {"running": {"startedAt": ts(100)}})])
    events = [ev(p, "Scheduled", "ok", 10)]
    mutate(p, events)
    progress = wake_progress([p], events, AWS, T0 + timedelta(seconds=300))
    assert progress is None or isinstance(progress.sentence(), str)


def test_a_restart_count_written_as_a_string_still_counts() -> None:
    running = container(
        "fetch-artifacts",
        {"running": {"startedAt": ts(290)}},
        restarts="7",
        last={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
    )
    p = pod(initContainerStatuses=[running])
    assert wake([p], [], 300).failing == "fetch-artifacts restarted 7x, last OOMKilled (exit 137)"


def test_a_pull_whose_message_is_null_names_the_image_in_words() -> None:
    p = pod(
        initContainerStatuses=[FETCHED],
        containerStatuses=[container("trtllm-serve", {"waiting": {"reason": "ContainerCreating"}})],
    )
    p2 = copy.deepcopy(p)
    progress = wake([p2], [ev(p2, "Pulling", None, 250)], 300)
    assert progress.waiting_for == "the kubelet to pull the image"
