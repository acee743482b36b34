"""`byoc status` health: the registry reconciled with the cluster (a RECORDED FAKE of the Kubernetes API: no API
server can run here) and a real completion through a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from byoc.cluster_api import ClusterUnreachable
from byoc.lifecycle import Lifecycle
from byoc.registry import Record, Registry, State

SPEC = {"name": "demo", "cloud": "aws", "region": "EUROPE", "model": "llama-3.1-8b-instruct", "shape": "h100x1-fp8"}


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An OpenAI-style completions endpoint answering with `status` (200: one choice)."""
    state: dict[str, Any] = {"status": 200, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            state["requests"].append((self.path, self.headers.get("Authorization"), body))
            ok = state["status"] == 200
            payload = json.dumps({"choices": [{"text": "pong"}]} if ok else {"error": {"message": "engine died"}})
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload.encode())

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BYOC_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("BYOC_API_KEY", "sk-test")
    yield state
    server.shutdown()
    server.server_close()


class RecordedCluster:
    """kubectl-shaped objects for one deployment: the serving Deployment's replicas, and whatever GPU trouble the
    controllers report."""

    def __init__(self, desired: int, ready: int) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            "deployments.apps": [
                {
                    "metadata": {"name": "byoc-demo-serving"},
                    "spec": {"replicas": desired},
                    "status": {"readyReplicas": ready},
                }
            ],
            "services": [
                {
                    "metadata": {"name": "byoc-demo-gateway"},
                    "spec": {"type": "LoadBalancer"},
                    "status": {"loadBalancer": {"ingress": [{"hostname": "internal-k8s.elb.eu-west-2.amazonaws.com"}]}},
                }
            ],
            "nodeclaims.karpenter.sh": [],
            "events": [],
            "nodes": [],
        }

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.objects.get(kind, [])

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        raise AssertionError("status never deletes")


def stamp(seconds_ago: float) -> str:
    """A Kubernetes timestamp `seconds_ago` before now (status reads with the clock's own time)."""
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending_pod(name: str, seconds_ago: float, node: str | None = None) -> dict[str, Any]:
    """A serving pod of the deployment `demo` as kubectl lists it: made `seconds_ago`, bound to `node` or pending."""
    return {
        "metadata": {
            "name": name,
            "namespace": "byoc-demo",
            "labels": {"app.kubernetes.io/name": "serving", "app.kubernetes.io/instance": "demo"},
            "creationTimestamp": stamp(seconds_ago),
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": str(bool(node))}]},
    }


GCP_SPEC = {"name": "demo", "cloud": "gcp", "region": "EUROPE", "model": "llama-3.1-8b-instruct", "shape": "l4x1-bf16"}


def health(tmp_path: Path, cluster: Any, cloud: str = "aws") -> dict[str, Any]:
    registry = Registry(tmp_path)
    if registry.get("demo") is None:
        registry.create(
            name="demo",
            cloud=cloud,
            region="eu-west-2" if cloud == "aws" else "europe-west4",
            requested_region="EUROPE",
            shape="h100x1-fp8" if cloud == "aws" else "l4x1-bf16",
            instance_type="p5.4xlarge" if cloud == "aws" else "g2-standard-8",
            spec=SPEC if cloud == "aws" else GCP_SPEC,
            backend="file:///x",
        )
        registry.transition("demo", State.DEPLOYING)
        registry.transition("demo", State.DEPLOYED)
        registry.update("demo", outputs={"gpu_node_pool": "byoc-gpu", "artifact": "s3://b/artifacts/llama/abc"})

    def cluster_for(record: Record) -> Any:
        if isinstance(cluster, Exception):
            raise cluster
        return cluster

    rows = Lifecycle(registry=registry, cluster_for=cluster_for).status()
    registry.close()
    return rows[0]


def test_ready_while_a_completion_fails_is_unhealthy(tmp_path: Path, endpoint: dict[str, Any]) -> None:
    endpoint["status"] = 500
    row = health(tmp_path, RecordedCluster(desired=2, ready=2))
    assert row["health"].startswith("unhealthy: Kubernetes reports 2/2 ready but a completion failed: HTTP 500")
    path, auth, body = endpoint["requests"][0]
    assert (path, auth, body["model"], body["max_tokens"]) == (
        "/v1/completions",
        "Bearer sk-test",
        "llama-3.1-8b-instruct",
        1,
    )


def test_healthy_and_lagging_readiness(tmp_path: Path, endpoint: dict[str, Any]) -> None:
    row = health(tmp_path, RecordedCluster(desired=2, ready=2))
    assert row["health"] == "healthy: a completion succeeded"
    assert row["replicas"] == {"desired": 2, "ready": 2}
    assert row["endpoint"] == "https://internal-k8s.elb.eu-west-2.amazonaws.com"
    assert row["artifact"] == "s3://b/artifacts/llama/abc"
    lagging = health(tmp_path, RecordedCluster(desired=2, ready=1))
    assert lagging["health"] == "serving, with a warning: readiness lags (1/2 ready) while completions succeed"


def test_why_gpu_replicas_are_not_coming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = RecordedCluster(desired=3, ready=0)
    cluster.objects["pods"] = [pending_pod("byoc-demo-serving-abc", 120)]
    cluster.objects["nodeclaims.karpenter.sh"] = [
        {
            "metadata": {"name": "byoc-gpu-x1", "labels": {"karpenter.sh/nodepool": "byoc-gpu"}},
            "status": {
                "conditions": [
                    {
                        "type": "Launched",
                        "status": "False",
                        "reason": "LaunchFailed",
                        "message": "creating instance, insufficient capacity, InsufficientInstanceCapacity: We "
                        "currently do not have sufficient p5.4xlarge capacity in the Availability Zone you requested "
                        "(eu-west-2a)",
                    }
                ]
            },
        }
    ]
    cluster.objects["events"] = [
        {
            "reason": "FailedScheduling",
            "involvedObject": {"kind": "Pod", "name": "byoc-demo-serving-abc", "namespace": "byoc-demo"},
            "message": 'Failed to schedule pod, all available instance types exceed limits for nodepool: "byoc-gpu"',
            "lastTimestamp": stamp(60),
        }
    ]
    cluster.objects["nodes"] = [
        {
            "metadata": {
                "name": "ip-10-42-1-7",
                "labels": {"karpenter.sh/nodepool": "byoc-gpu"},
                "creationTimestamp": stamp(3600),
            },
            "status": {"allocatable": {"cpu": "15", "nvidia.com/gpu": "0"}},
        },
        {
            "metadata": {"name": "ip-10-42-1-9", "labels": {"karpenter.sh/nodepool": "system"}},
            "status": {"allocatable": {}},
        },
    ]
    row = health(tmp_path, cluster)
    text = row["health"]
    assert text.startswith("waiting for GPUs (0/3 ready): ")
    assert "no capacity in the zone: NodeClaim byoc-gpu-x1: creating instance, insufficient capacity" in text
    assert "the NodePool's GPU limit is reached: Failed to schedule pod, all available instance types exceed" in text
    assert "node ip-10-42-1-7's GPUs never registered (allocatable nvidia.com/gpu 0)" in text
    assert "ip-10-42-1-9" not in text
    # --output json: the same reasons, one per entry
    assert len(row["blockers"]) == 3 and all(reason in text for reason in row["blockers"])


class GkeCluster(RecordedCluster):
    """A GKE cluster: no Karpenter, whose custom resources do not exist there (kubectl would fail on them)."""

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert "karpenter" not in kind, f"status asked a GKE cluster for {kind}"
        return super().list(kind, namespace)


def test_why_gpu_replicas_are_not_coming_on_gke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GKE cluster autoscaler's own events on the pending pods, as it words them: FailedScaleUp (GKE's
    zonalErrorMessageTemplate with "GCE quota exceeded" / "GCE out of resources") and NotTriggerScaleUp
    (kubernetes/autoscaler: "pod didn't trigger scale-up: ... max node group size reached")."""
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = GkeCluster(desired=3, ready=0)
    cluster.objects["pods"] = [pending_pod("byoc-demo-serving-abc", 600)]
    pod = {"kind": "Pod", "name": "byoc-demo-serving-abc", "namespace": "byoc-demo"}
    cluster.objects["events"] = [
        {
            "reason": "TriggeredScaleUp",
            "involvedObject": pod,
            "message": "pod triggered scale-up: [{https://www.googleapis.com/compute/v1/projects/p/zones/"
            "europe-west4-a/instanceGroups/gke-byoc-demo-gpu-grp 0->1 (max: 3)}]",
        },
        {
            "reason": "FailedScaleUp",
            "involvedObject": pod,
            "message": "Node scale up in zones europe-west4-a associated with this pod failed: GCE quota exceeded. "
            "Pod is at risk of not being scheduled.",
        },
        {
            "reason": "FailedScaleUp",
            "involvedObject": pod,
            "message": "Node scale up in zones europe-west4-b associated with this pod failed: GCE out of resources. "
            "Pod is at risk of not being scheduled.",
        },
        {
            "reason": "NotTriggerScaleUp",
            "involvedObject": pod,
            "message": "pod didn't trigger scale-up: 1 max node group size reached",
        },
    ]
    cluster.objects["nodes"] = [
        {
            "metadata": {
                "name": "gke-byoc-demo-gpu-1",
                "labels": {"cloud.google.com/gke-nodepool": "byoc-demo-gpu"},
                "creationTimestamp": stamp(1800),
            },
            "status": {"allocatable": {"cpu": "7910m", "nvidia.com/gpu": "0"}},
        },
        {
            "metadata": {"name": "gke-byoc-demo-system-1", "labels": {"cloud.google.com/gke-nodepool": "system"}},
            "status": {"allocatable": {}},
        },
    ]
    registry = Registry(tmp_path)
    health(tmp_path, cluster, cloud="gcp")  # registers the deployment
    registry.update("demo", outputs={"gpu_node_pool": "byoc-demo-gpu"})
    registry.close()
    text = health(tmp_path, cluster, cloud="gcp")["health"]
    assert text.startswith("waiting for GPUs (0/3 ready): ")
    assert "no GPU quota: Node scale up in zones europe-west4-a associated with this pod failed: GCE quota" in text
    assert "no capacity in the zone: Node scale up in zones europe-west4-b" in text
    assert "the node pool's maximum is reached: pod didn't trigger scale-up: 1 max node group size reached" in text
    assert "node gke-byoc-demo-gpu-1's GPUs never registered (allocatable nvidia.com/gpu 0)" in text
    assert "gke-byoc-demo-system-1" not in text
    assert "triggered" not in text  # a scale-up on its way is no blocker


def test_unknown_rather_than_guessing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, RecordedCluster(desired=1, ready=1))
    assert row["health"] == (
        "unknown: 1/1 ready per Kubernetes, but no completion was sent: no API key to send a test completion "
        "with (set BYOC_API_KEY)"
    )
    unreachable = health(tmp_path, ClusterUnreachable("no kubeconfig for the cluster"))
    assert unreachable["health"] == "unknown: cannot read the cluster: no kubeconfig for the cluster"
    assert unreachable["replicas"] is None


def test_a_key_with_whitespace_is_named_not_sent(
    tmp_path: Path, endpoint: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key read from a file with its line break: said as such, not as the endpoint's answer being wrong."""
    monkeypatch.setenv("BYOC_API_KEY", "sk-test\n")
    row = health(tmp_path, RecordedCluster(desired=1, ready=1))
    assert row["health"].endswith("BYOC_API_KEY holds whitespace (a space or a line break); set it to the key alone")
    assert endpoint["requests"] == []


def test_scaled_to_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, RecordedCluster(desired=0, ready=0))
    assert row["health"] == "scaled to zero: the first request wakes a replica"


def _nulled(path: str, value: Any = None) -> RecordedCluster:
    """A cluster of one pending replica whose object at `path` (kind/index/key/key...) holds `value`: what a proxy,
    an admission webhook or an old client may hand back where the API server would write an object."""
    cluster = RecordedCluster(desired=1, ready=0)
    cluster.objects["pods"] = [pending_pod("byoc-demo-serving-abc-1", 30)]
    cluster.objects["nodes"] = [{"metadata": {"name": "n1", "labels": {"karpenter.sh/nodepool": "byoc-gpu"}}}]
    kind, index, *keys = path.split("/")
    target: Any = cluster.objects[kind][int(index)]
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return cluster


@pytest.mark.parametrize(
    "path",
    [
        "deployments.apps/0/status",
        "deployments.apps/0/metadata",
        "services/0/status",
        "services/0/spec",
        "pods/0/status",
        "pods/0/spec",
        "pods/0/metadata",
        "pods/0/metadata/labels",
        "pods/0/status/conditions",
        "nodes/0/metadata",
        "nodes/0/metadata/labels",
    ],
)
def test_a_null_where_the_api_writes_an_object_is_read_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, _nulled(path))
    # each is read as absent: a status the user can act on, never an exception out of `byoc status`
    assert row["health"].startswith(("starting", "waking", "unknown", "waiting for GPUs")), row["health"]


def test_a_replica_count_that_is_not_a_count_is_unknown_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    row = health(tmp_path, _nulled("deployments.apps/0/spec/replicas", "abc"))
    assert row["health"].startswith("unknown: Deployment byoc-demo-serving's spec.replicas is 'abc', not a count")
    assert row["replicas"] is None
    # null is not 0: a Deployment without replicas is not one scaled to zero
    row = health(tmp_path, _nulled("deployments.apps/0/spec/replicas", None))
    assert not row["health"].startswith("scaled to zero") and row["health"].startswith("unknown")
    # a count a lenient proxy turned into a string is still the count
    row = health(tmp_path, _nulled("deployments.apps/0/spec/replicas", "0"))
    assert row["health"] == "scaled to zero: the first request wakes a replica"


def test_one_deployment_the_cluster_answers_badly_for_does_not_hide_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`byoc status` lists every deployment: an object it cannot read in one cluster makes that one unknown, saying
    why, and the others are judged as usual."""
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    registry = Registry(tmp_path)
    for name in ("demo", "other"):
        registry.create(
            name=name, cloud="aws", region="eu-west-2", requested_region="EUROPE", shape="h100x1-fp8",
            instance_type="p5.4xlarge", spec={**SPEC, "name": name}, backend="file:///x",
        )  # fmt: skip
        registry.transition(name, State.DEPLOYING)
        registry.transition(name, State.DEPLOYED)
        registry.update(name, outputs={"gpu_node_pool": "byoc-gpu"})

    class Broken(RecordedCluster):
        def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
            if kind == "events":  # a List whose items are not objects, as a misbehaving proxy answered
                return [{"involvedObject": "pod/x"}, "not an event"]  # type: ignore[list-item]
            return super().list(kind, namespace)

    broken = Broken(1, 0)
    broken.objects["pods"] = [pending_pod("byoc-demo-serving-abc-1", 30)]
    other = RecordedCluster(0, 0)
    other.objects["deployments.apps"][0]["metadata"]["name"] = "byoc-other-serving"

    def cluster_for(record: Record) -> Any:
        return broken if record.name == "demo" else other

    rows = {r["name"]: r for r in Lifecycle(registry=registry, cluster_for=cluster_for).status()}
    registry.close()
    assert rows["other"]["health"] == "scaled to zero: the first request wakes a replica"
    # read as unknown, saying so (or, where every field is read null-safely, as a wake without its events)
    assert rows["demo"]["health"].startswith(("unknown", "starting", "waking")), rows["demo"]["health"]


def test_a_wake_that_cannot_finish_is_unhealthy_and_ends_a_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing secret (CreateContainerConfigError) never fixes itself: status says unhealthy, with where the wake
    stopped, so `byoc status --watch` stops polling instead of waiting out its --timeout."""
    from byoc.commands.live import _settled

    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = RecordedCluster(desired=1, ready=0)
    pod = pending_pod("byoc-demo-serving-7d9f-abcde", 900, node="ip-10-42-1-7")
    pod["status"]["initContainerStatuses"] = [
        {"name": "fetch-artifacts", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    ]
    missing = {"reason": "CreateContainerConfigError", "message": 'secret "byoc-demo-keys" not found'}
    pod["status"]["containerStatuses"] = [{"name": "trtllm-serve", "restartCount": 0, "state": {"waiting": missing}}]
    cluster.objects["pods"] = [pod]
    row = health(tmp_path, cluster)
    assert row["health"].startswith("unhealthy (0/1 ready): the wake cannot finish without a change: ")
    assert 'secret "byoc-demo-keys" not found' in row["health"]
    assert row["wake"]["permanent"] is True
    assert _settled([row])


def test_a_replicaset_that_makes_no_pod_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No serving pod at all (a ResourceQuota, an admission rejection): the ReplicaSet controller's own words, not
    `starting: 0/1 ready` for ever."""
    monkeypatch.delenv("BYOC_API_KEY", raising=False)
    cluster = RecordedCluster(desired=1, ready=0)
    quota = 'Error creating: pods "byoc-demo-serving-7d9f-x" is forbidden: exceeded quota: byoc-demo-quota'
    cluster.objects["events"] = [
        {
            "reason": "FailedCreate",
            "involvedObject": {"kind": "ReplicaSet", "name": "byoc-demo-serving-7d9f85c6b4", "namespace": "byoc-demo"},
            "message": quota,
            "count": 12,
            "firstTimestamp": stamp(600),
            "lastTimestamp": stamp(20),
        }
    ]
    row = health(tmp_path, cluster)
    assert row["health"] == (
        "unhealthy (0/1 ready): no serving pod can be made: ReplicaSet byoc-demo-serving-7d9f85c6b4 cannot create "
        f"pods (FailedCreate, 12x): {quota}"
    )
