"""Why GPU replicas are not coming (`Cloud.gpu_blockers`, byoc/clouds/aws.py and gcp.py `capacity_blockers`): only
what still holds for this wake's pods, in the words Karpenter and the GKE cluster autoscaler publish, never a failure
that something newer for the pod superseded, never another pool's, and never a crash on a null the API returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from byoc.clouds import get_cloud
from tests.lifecycle.test_status import RecordedCluster

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
POD = "byoc-demo-serving-7d9f-kkkkk"
ICE = (
    "NodeClaim byoc-gpu-aaaaa event: creating instance, insufficient capacity, all requested instance types were "
    "unavailable during launch"
)
MIG = "https://www.googleapis.com/compute/v1/projects/p/zones/europe-west4-a/instanceGroups/gke-byoc-gpu-grp"


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending(seconds: float = 1800) -> dict[str, Any]:
    return {
        "metadata": {"name": POD, "namespace": "byoc-demo", "uid": "uid-1", "creationTimestamp": ago(seconds)},
        "spec": {},
        "status": {"phase": "Pending"},
    }


def on_pod(reason: str, message: str, seconds: float) -> dict[str, Any]:
    involved = {"kind": "Pod", "name": POD, "namespace": "byoc-demo", "uid": "uid-1"}
    return {"involvedObject": involved, "reason": reason, "message": message, "lastTimestamp": ago(seconds)}


def on_claim(reason: str, claim: str, message: str, seconds: float) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": "NodeClaim", "name": claim},
        "reason": reason,
        "message": message,
        "lastTimestamp": ago(seconds),
    }


def nominated(claim: str, seconds: float) -> dict[str, Any]:
    return on_pod("Nominated", f"Pod should schedule on: nodeclaim/{claim}", seconds)


def transitioned(kind: str, claim: str, seconds: float) -> dict[str, Any]:
    message = f"Status condition transitioned, Type: {kind}, Status: Unknown -> True, Reason: {kind}"
    return on_claim(kind, claim, message, seconds)


def claim(name: str, pool: str, conditions: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool}, "creationTimestamp": ago(seconds)},
        "status": {"conditions": conditions},
    }


def condition(kind: str, status: str, seconds: float, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": ago(seconds)}


def blockers(
    cloud: str,
    events: list[dict[str, Any]],
    claims: list[dict[str, Any]] | None = None,
    pods: list[dict[str, Any]] | None = None,
    nodes: list[dict[str, Any]] | None = None,
) -> list[str]:
    cluster = RecordedCluster(desired=1, ready=0)
    cluster.objects["events"] = events
    cluster.objects["nodeclaims.karpenter.sh"] = claims or []
    cluster.objects["nodes"] = nodes or []
    return get_cloud(cloud).gpu_blockers(cluster, "byoc-gpu", pods or [pending()], NOW)


# -- a failure superseded by progress for the pod is not blamed -----------------------------------------------------


def test_a_stockout_that_karpenter_retried_on_a_new_nodeclaim_is_no_blocker() -> None:
    events = [
        nominated("byoc-gpu-aaaaa", 1790),
        on_claim("InsufficientCapacityError", "byoc-gpu-aaaaa", ICE, 1780),
        nominated("byoc-gpu-bbbbb", 60),
        transitioned("Launched", "byoc-gpu-bbbbb", 50),
        transitioned("Registered", "byoc-gpu-bbbbb", 10),
    ]
    retried = claim("byoc-gpu-bbbbb", "byoc-gpu", [condition("Launched", "True", 50)], 60)
    assert blockers("aws", events, [retried]) == []
    # without the retry the stockout is this wake's blocker
    assert blockers("aws", events[:2]) == [f"no capacity in the zone: {ICE}"]


def test_a_nodeclaim_of_an_earlier_wake_that_failed_to_launch_is_no_blocker() -> None:
    stale = claim(
        "byoc-gpu-old01",
        "byoc-gpu",
        [condition("Launched", "False", 10800, "LaunchFailed", "creating instance, insufficient capacity")],
        10800,
    )
    events = [nominated("byoc-gpu-bbbbb", 60), transitioned("Launched", "byoc-gpu-bbbbb", 30)]
    assert blockers("aws", events, [stale]) == []


def test_a_nodeclaim_of_this_wake_that_failed_to_launch_is_a_blocker() -> None:
    failed = claim(
        "byoc-gpu-aaaaa",
        "byoc-gpu",
        [condition("Launched", "Unknown", 50, "LaunchFailed", "no amis exist given constraints")],
        1790,
    )
    assert blockers("aws", [nominated("byoc-gpu-aaaaa", 1790)], [failed]) == [
        "NodeClaim byoc-gpu-aaaaa not launched: no amis exist given constraints"
    ]


def test_a_failed_scale_up_that_the_autoscaler_retried_is_no_blocker() -> None:
    triggered = on_pod("TriggeredScaleUp", f"pod triggered scale-up: [{{{MIG} 0->1 (max: 3)}}]", 1490)
    failed = on_pod(
        "FailedScaleUp",
        "Node scale up in zones europe-west4-a associated with this pod failed: GCE out of resources. Pod is at "
        "risk of not being scheduled.",
        1300,
    )
    retried = on_pod("TriggeredScaleUp", f"pod triggered scale-up: [{{{MIG.replace('-a/', '-b/')} 0->1 (max: 3)}}]", 60)
    assert blockers("gcp", [triggered, failed, retried]) == []
    assert blockers("gcp", [triggered, failed])[0].startswith("no capacity in the zone: Node scale up in zones")


# -- the provisioner's refusals, in its words ----------------------------------------------------------------------


def test_karpenter_finding_no_instance_type_for_the_pod_is_a_blocker() -> None:
    message = (
        'Failed to schedule pod, incompatible with nodepool "byoc-gpu", daemonset overhead={"cpu":"210m"}, no '
        'instance type satisfied resources {"cpu":"14210m","memory":"200000Mi","nvidia.com/gpu":"1"}; '
        'incompatible with nodepool "system", did not tolerate nvidia.com/gpu=true:NoSchedule'
    )
    assert blockers("aws", [on_pod("FailedScheduling", message, 10)]) == [
        f"the NodePool byoc-gpu cannot launch a node the pod fits on: {message}"
    ]
    # nominated since: Karpenter found room after all
    assert blockers("aws", [on_pod("FailedScheduling", message, 100), nominated("byoc-gpu-bbbbb", 50)]) == []


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (
            "pod didn't trigger scale-up (it wouldn't fit if a new node is added): 1 Insufficient nvidia.com/gpu, 2 "
            "node(s) didn't match Pod's node affinity/selector",
            "a new node of the pool would not hold the pod",
        ),
        (
            "pod didn't trigger scale-up: 1 in backoff after failed scale-up, 2 node(s) didn't match Pod's node "
            "affinity/selector",
            "the node pool is in backoff after a failed scale-up",
        ),
        (
            "pod didn't trigger scale-up: 3 node(s) didn't match Pod's node affinity/selector",
            "no node pool matches the pod's node selector",
        ),
        (
            "pod didn't trigger scale-up (it wouldn't fit if a new node is added): 1 Insufficient ephemeral-storage, 1 "
            "Insufficient memory",
            "a new node of the pool would not hold the pod",
        ),
        ("pod didn't trigger scale-up: 1 max node group size reached", "the node pool's maximum is reached"),
    ],
)
def test_every_scale_up_the_autoscaler_will_not_make_is_a_blocker(message: str, said: str) -> None:
    assert blockers("gcp", [on_pod("NotTriggerScaleUp", message, 5)]) == [f"{said}: {message}"]
    # an older refusal, a scale-up triggered after it: a node is coming
    triggered = on_pod("TriggeredScaleUp", f"pod triggered scale-up: [{{{MIG} 0->1 (max: 3)}}]", 5)
    assert blockers("gcp", [on_pod("NotTriggerScaleUp", message, 60), triggered]) == []


# -- another pool's NodeClaim, matched by its label or its generated name -----------------------------------------


def test_a_stockout_of_a_pool_whose_name_begins_with_ours_is_no_blocker() -> None:
    other = ICE.replace("byoc-gpu-aaaaa", "byoc-gpu-spot-zz9x1")
    events = [
        nominated("byoc-gpu-aaaaa", 1790),
        on_claim("InsufficientCapacityError", "byoc-gpu-spot-zz9x1", other, 30),
    ]
    assert blockers("aws", events) == []


def test_a_live_nodeclaim_is_matched_by_its_pool_label_not_its_name() -> None:
    # a claim of the pool byoc-gpu-spot whose name happens to look like ours (five characters after "byoc-gpu-")
    spot = claim("byoc-gpu-spot1", "byoc-gpu-spot", [], 60)
    events = [on_claim("InsufficientCapacityError", "byoc-gpu-spot1", "NodeClaim byoc-gpu-spot1 event: ICE", 30)]
    assert blockers("aws", events, [spot]) == []
    ours = claim("byoc-gpu-spot1", "byoc-gpu", [], 60)
    assert blockers("aws", events, [ours]) == ["no capacity in the zone: NodeClaim byoc-gpu-spot1 event: ICE"]


# -- nulls the API (or a proxy) may write ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objects",
    [
        {"events": [{"reason": "FailedScaleUp", "message": "x", "involvedObject": None}]},
        {"events": [{"reason": "Nominated", "message": None, "involvedObject": None, "metadata": None}]},
        {"claims": [{"metadata": None, "status": None}]},
        {"claims": [{"metadata": {"name": "byoc-gpu-x", "labels": None}, "status": {"conditions": None}}]},
        {"claims": [{"metadata": {"name": "byoc-gpu-abcde", "labels": {"karpenter.sh/nodepool": "byoc-gpu"}}}]},
        {"claims": [{"metadata": {"name": "byoc-gpu-abcde"}, "status": {"conditions": [None]}}]},
        {"nodes": [{"metadata": {"labels": {"karpenter.sh/nodepool": "byoc-gpu"}}, "status": None}]},
        {"nodes": [{"metadata": {"name": "n", "labels": None}}]},
        {"nodes": [{"metadata": None, "status": {"allocatable": None}}]},
        {"pods": [{"metadata": None, "spec": None, "status": None}]},
        {"pods": [{"metadata": {"name": POD, "labels": None}, "spec": {"nodeName": None}, "status": None}]},
    ],
)
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_nulls_never_raise(cloud: str, objects: dict[str, Any]) -> None:
    found = blockers(
        cloud,
        objects.get("events", []),
        objects.get("claims"),
        pods=objects.get("pods"),
        nodes=objects.get("nodes"),
    )
    assert all(isinstance(reason, str) for reason in found)


def test_a_gpu_node_without_a_name_is_still_named_as_one() -> None:
    nameless = {
        "metadata": {"labels": {"karpenter.sh/nodepool": "byoc-gpu"}, "creationTimestamp": ago(3600)},
        "status": {"allocatable": {}},
    }
    assert blockers("aws", [], nodes=[nameless]) == [
        "node (unnamed)'s GPUs never registered (allocatable nvidia.com/gpu 0): check the GPU driver and device "
        "plugin on it"
    ]
