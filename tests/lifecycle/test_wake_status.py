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
