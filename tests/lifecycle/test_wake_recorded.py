"""`byoc status` during a wake, replayed from RECORDED event streams of real wakes: published `kubectl describe pod`
and `kubectl get events` pastes of GPU pods waking onto new nodes, on EKS with Karpenter and on GKE with the
cluster autoscaler (tests/lifecycle/data/wake/recorded/, each with its source; the README says what the converter in
tests/lifecycle/wake_recordings.py infers). At moments within each wake, the wake view names the phase a person
reading the paste would name, the time in it that the paste shows, and what it waits for."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from byoc.clouds import get_cloud
from byoc.wake import WakeProgress, event_time, parse_time, wake_progress
from tests.lifecycle.test_status import RecordedCluster, health
from tests.lifecycle.wake_recordings import Recording, all_recordings, load


def progress_at(recording: Recording, seconds: float) -> WakeProgress | None:
    now, pods, events = recording.at(seconds)
    return wake_progress(pods, events, get_cloud(recording.cloud).node_provisioner, now)


def test_every_recording_names_its_source_and_is_read_whole() -> None:
    """Each recording is a published paste with its address, and every line of it becomes an event."""
    for name in all_recordings():
        recording = load(name)
        assert recording.header["source"].startswith("https://github.com/"), name
        assert re.search(r"/blob/[0-9a-f]{40}/", recording.header["source"]), f"{name}: cite a commit"
        pasted = [line for line in recording.paste if line.strip() and not line.strip().startswith(("Type", "----"))]
        assert len(recording.events) == len([line for line in pasted if line != "Events:"]), name


# EKS + Karpenter, a 12.9 GB image pulled on the new GPU node (gnosia93/training-on-eks). Ages of 10 minutes and more
# are whole minutes in kubectl, so the wake's start is known to the minute; the steps after it to the second.
LLAMA3_MOMENTS = [
    # seconds after the pod was made, phase, seconds in the phase, what it waits for
    (30, "node_launch", 30, "Karpenter's NodeClaim to launch an EC2 instance"),  # Nominated, nothing since
    (62, "node_launch", 62, "the new node to finish starting"),  # "0/5 nodes ... 1 node(s) had untolerated taint(s)"
    (
        90,
        "node_launch",
        90,
        "GPU driver and device plugin to advertise nvidia.com/gpu",
    ),  # "1 Insufficient nvidia.com/gpu"
    (99, "starting", 1, "the containers to start (ContainerCreating)"),  # Scheduled, no Pulling yet
    (130, "image_pull", 30, "the kubelet to pull public.ecr.aws/deep-learning-containers/pytorch-training:2.8.0-gpu"),
    (330, "image_pull", 230, "the kubelet to pull public.ecr.aws/deep-learning-containers/pytorch-training"),
    (340, "engine_load", 6, "trtllm-serve to load the weights"),  # "Started container node" (the engine's role)
]


@pytest.mark.parametrize(("seconds", "phase", "in_phase", "waiting_for"), LLAMA3_MOMENTS)
def test_a_recorded_karpenter_wake_with_a_large_image(
    seconds: int, phase: str, in_phase: int, waiting_for: str
) -> None:
    progress = progress_at(load("aws-karpenter-llama3-training.txt"), seconds)
    assert progress is not None
    assert (progress.phase, round(progress.phase_seconds), round(progress.wake_seconds)) == (phase, in_phase, seconds)
    assert waiting_for in progress.waiting_for


def test_the_pull_status_shows_is_the_pull_the_kubelet_reports() -> None:
    """Just before the kubelet's Pulled event, status has said "image pulling" for as long as the kubelet says the
    pull took ("in 3m51.333s (3m51.333s including waiting)"), to the second the ages give."""
    recording = load("aws-karpenter-llama3-training.txt")
    pulled = recording.event("Pulled")
    reported = re.search(r"\((\d+)m([\d.]+)s including waiting\)", pulled.message)
    assert reported is not None
    took = int(reported.group(1)) * 60 + float(reported.group(2))
    progress = progress_at(recording, recording.seconds(pulled.first) - 0.5)
    assert progress is not None and progress.phase == "image_pull"
    assert abs(progress.phase_seconds + 0.5 - took) <= 1.0


# EKS + Karpenter, Bottlerocket data volume from a snapshot with the image in it (awslabs/data-on-eks): no pull at all.
def test_a_recorded_karpenter_wake_with_the_image_cached_never_pulls() -> None:
    recording = load("aws-karpenter-stablediffusion-cached.txt")
    phases = [p.phase for s in range(0, 181, 5) if (p := progress_at(recording, s)) is not None]
    assert "image_pull" not in phases
    assert phases[0] == "node_launch" and phases[-1] == "engine_load"
    # the Ray worker's init container waits for the Ray head (40m .. 39m ago): status names it, not a fetch
    during_init = progress_at(recording, 90)
    assert during_init is not None
    assert (during_init.phase, during_init.waiting_for) == ("starting", "the init container wait-gcs-ready to finish")
    assert round(during_init.phase_seconds) == 30
    loading = progress_at(recording, 200)
    assert loading is not None and (loading.phase, round(loading.phase_seconds)) == ("engine_load", 20)


# EKS Auto Mode (gnosia93/training-on-eks): its Karpenter records as eks-auto-mode/compute, and kubectl lists the
# scheduler's events first, out of time order; the exited container is restarted (BackOff).
AUTOMODE_MOMENTS = [
    (30, "node_launch", 30, "Karpenter's NodeClaim to launch an EC2 instance"),  # Nominated by eks-auto-mode/compute
    (49, "starting", 2, "the containers to start (ContainerCreating)"),  # Scheduled 4m25s ago, listed before Nominated
    (80, "image_pull", 28, "the kubelet to pull nvidia/cuda:13.0.2-runtime-ubuntu22.04"),
    (110, "image_pull", 58, "the kubelet to pull nvidia/cuda:13.0.2-runtime-ubuntu22.04"),  # "in 58.965s"
    (115, "engine_load", 4, "trtllm-serve to load the weights"),
    # nvidia-smi exited and is backed off: still the engine's phase, counted from its first start, and named failing
    (130, "engine_load", 19, "trtllm-serve to load the weights"),
]


@pytest.mark.parametrize(("seconds", "phase", "in_phase", "waiting_for"), AUTOMODE_MOMENTS)
def test_a_recorded_eks_auto_mode_wake(seconds: int, phase: str, in_phase: int, waiting_for: str) -> None:
    recording = load("aws-automode-gpu-pod.txt")
    assert [line.split()[1] for line in recording.paste[3:6]] == ["FailedScheduling", "Scheduled", "Nominated"]
    progress = progress_at(recording, seconds)
    assert progress is not None
    assert (progress.phase, round(progress.phase_seconds), round(progress.wake_seconds)) == (phase, in_phase, seconds)
    assert waiting_for in progress.waiting_for
    if seconds == 130:
        assert progress.failing is not None
        assert progress.failing.startswith("trtllm-serve CrashLoopBackOff: Back-off restarting failed container")


# GKE + cluster autoscaler + KEDA from zero (vfarcic/devopstoolkit-live): absolute timestamps, to the second.
KEDA_MOMENTS = [
    (1, "node_launch", "the GKE cluster autoscaler to launch a GPU node"),  # before TriggeredScaleUp (+2 s)
    (20, "node_launch", "the new VM to boot, install its GPU driver and join the node pool"),
    (40, "node_launch", "the new node to finish starting"),  # 20:14:38 "1 node(s) had untolerated taint(s)"
    (60, "node_launch", "GPU driver and device plugin to advertise nvidia.com/gpu"),  # 20:14:53, the driver installs
    (200, "image_pull", "the kubelet to pull vllm/vllm-openai:v0.27.1"),
    (500, "engine_load", "trtllm-serve to load the weights"),  # vLLM's readiness probe failing meanwhile
]


@pytest.mark.parametrize(("seconds", "phase", "waiting_for"), KEDA_MOMENTS)
def test_a_recorded_gke_wake_from_zero(seconds: int, phase: str, waiting_for: str) -> None:
    progress = progress_at(load("gcp-autoscaler-vllm-keda.txt"), seconds)
    assert progress is not None
    assert progress.phase == phase and round(progress.wake_seconds) == seconds
    assert waiting_for in progress.waiting_for


def test_the_gke_wake_phase_by_phase_adds_up_to_the_recorded_timings() -> None:
    """Node 74 s (20:14:01 -> 20:15:15), pull 248 s (20:15:18 -> 20:19:26; the kubelet: 4m8.602 s including waiting),
    engine from 20:19:27 until the request's first token (623 s after it was sent): the longest time status shows in
    each phase."""
    recording = load("gcp-autoscaler-vllm-keda.txt")
    longest: dict[str, float] = {}
    for tenth in range(0, 6300):
        progress = progress_at(recording, tenth / 10)
        if progress is not None:
            longest[progress.phase] = max(longest.get(progress.phase, 0.0), progress.phase_seconds)
    assert round(longest["node_launch"]) == 74
    assert round(longest["image_pull"]) == 248
    assert 290 <= longest["engine_load"] <= 296
    assert progress_at(recording, 630) is None  # ready: no wake


def test_describe_and_get_events_of_one_wake_read_the_same() -> None:
    """The same GKE wake through `kubectl describe` (the scheduler's verdicts as events.k8s.io series: `eventTime`,
    `series.lastObservedTime`, no lastTimestamp) and through `kubectl get events` (lastTimestamp): the same phase and
    what it waits for, once both show a verdict (`.lastTimestamp` hides a series' first occurrence: the taint verdict
    is in the describe view from 34 s, in the get-events view from 37 s)."""
    described, listed = load("gcp-autoscaler-vllm-keda-describe.txt"), load("gcp-autoscaler-vllm-keda.txt")
    assert described.created == listed.created
    _, _, events = described.at(60)
    series = [e for e in events if e.get("series")]
    assert len(series) == 2 and all(e["lastTimestamp"] is None and e["eventTime"] for e in series)
    for seconds in (1, 20, 40, 60):
        a, b = progress_at(described, seconds), progress_at(listed, seconds)
        assert a is not None and b is not None
        assert (a.phase, a.waiting_for) == (b.phase, b.waiting_for), seconds


def test_a_repeated_verdict_counts_from_its_last_occurrence() -> None:
    """ "4m11s (x2 over 4m14s)": between the two occurrences the pod has seen one taint verdict; after the second,
    status reads the series' last time (kubectl does: k8s.io/kubectl pkg/cmd/events eventTime)."""
    described = load("gcp-autoscaler-vllm-keda-describe.txt")
    taint = described.event("FailedScheduling", 1)
    assert (taint.count, described.seconds(taint.first), described.seconds(taint.last)) == (2, 34, 37)
    _, _, events = described.at(40)
    seen = next(e for e in events if "taint" in e["message"])
    assert parse_time(seen["series"]["lastObservedTime"]) == taint.last
    assert event_time(seen) == taint.last  # not its eventTime, the first occurrence
    _, _, events = described.at(35)
    assert "series" not in next(e for e in events if "taint" in e["message"])


# GKE + cluster autoscaler, a second L4 node for a second vLLM replica, weights on a persistent disk
# (cloud-mlops/fine-tuning): ages under 10 minutes, to the second.
L4_MOMENTS = [
    (60, "node_launch", 60, "the new VM to boot, install its GPU driver and join the node pool"),
    (100, "starting", 5, "the containers to start (ContainerCreating)"),  # Scheduled +95 s, the disk attached +99 s
    (108, "image_pull", 2, "the kubelet to pull vllm/vllm-openai:v0.5.3.post1"),  # 4.5 s for 5.6 GB
    (110.5, "engine_load", 0.5, "trtllm-serve to load the weights"),
]


@pytest.mark.parametrize(("seconds", "phase", "in_phase", "waiting_for"), L4_MOMENTS)
def test_a_recorded_gke_scale_up_onto_a_new_l4_node(
    seconds: float, phase: str, in_phase: float, waiting_for: str
) -> None:
    recording = load("gcp-autoscaler-vllm-l4.txt")
    progress = progress_at(recording, seconds)
    assert progress is not None
    assert (progress.phase, progress.phase_seconds, progress.wake_seconds) == (phase, in_phase, seconds)
    assert waiting_for in progress.waiting_for
    assert progress_at(recording, 112) is None  # 1/1 Running at 111 s


class ReplayedRecording(RecordedCluster):
    """A recorded wake moved so that `seconds` after its pod was made is now, for `byoc status` to read."""

    def __init__(self, recording: Recording, seconds: float, gke: bool = False) -> None:
        super().__init__(desired=1, ready=0)
        then, pods, events = recording.at(seconds)
        shift = datetime.now(UTC) - then
        for pod in pods:  # the labels stacks/k8s/serving.py puts on byoc's serving pods, by which status finds them
            pod["metadata"]["labels"] = {"app.kubernetes.io/name": "serving", "app.kubernetes.io/instance": "demo"}
        self.objects["pods"] = _shifted(pods, shift)
        self.objects["events"] = _shifted(events, shift)
        self.gke = gke

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert not (self.gke and "karpenter" in kind), f"status asked a GKE cluster for {kind}"
        return super().list(kind, namespace)


def _shifted(node: Any, shift: Any) -> Any:
    if isinstance(node, dict):
        return {k: _shifted(v, shift) for k, v in node.items()}
    if isinstance(node, list):
        return [_shifted(v, shift) for v in node]
    if isinstance(node, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", node):
        moved = (parse_time(node) or datetime.now(UTC)) + shift
        return moved.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if "." in node else "%Y-%m-%dT%H:%M:%SZ")
    return node


def test_status_reads_a_recorded_karpenter_wake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, ReplayedRecording(load("aws-karpenter-llama3-training.txt"), 90))
    assert row["health"].startswith("waking (0/1 ready): node launching, 1 min 3")
    assert row["health"].endswith("waiting for the new node's GPU driver and device plugin to advertise nvidia.com/gpu")
    assert row["wake"]["phase"] == "node_launch" and 90 <= row["wake"]["wake_seconds"] <= 93


def test_status_reads_a_recorded_gke_wake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, ReplayedRecording(load("gcp-autoscaler-vllm-keda.txt"), 200, gke=True), cloud="gcp")
    assert re.match(r"waking \(0/1 ready\): image pulling, 2 min [0-9]+ s", row["health"]), row["health"]
    assert row["health"].endswith("waiting for the kubelet to pull vllm/vllm-openai:v0.27.1")
    assert json.dumps(row["wake"])  # the JSON view carries the same
    assert row["wake"]["phase"] == "image_pull" and 123 <= row["wake"]["phase_seconds"] <= 126
