"""`byoc keys ... -f byoc.yaml` and `byoc usage -f byoc.yaml`: a deployment's private store reached through one of its
running gateway pods with `kubectl exec`.

No cluster runs here, so a `kubectl` STAND-IN goes first on PATH. It follows kubectl's contract for exactly the two
calls byoc makes (kubectl v1.30):
- `kubectl --kubeconfig K --request-timeout 20s get pods --namespace NS --output json --ignore-not-found` prints a
  `List` of the recorded pods in NS (an empty `items` for a namespace with none);
- `kubectl --kubeconfig K exec --namespace NS POD --container C -- ARGS` runs ARGS as the pod would (`byoc` is
  `python -m byoc`), passes its stdout and stderr through and, when it exits non-zero, adds kubectl's own
  `command terminated with exit code N` on stderr and exits N (k8s.io/kubectl/pkg/cmd/util/helpers.go, CheckErr); a
  pod that is not there answers `Error from server (NotFound): pods "POD" not found`, exit 1.
The recorded gateway pod's command points at a real redis-server the test starts on 127.0.0.1 with an AUTH password
read from a file, as the gateway pod reads its mounted Secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from byoc.cluster_api import ClusterUnreachable, Kubectl
from byoc.registry import Registry, State
from tests.conftest import ROOT, run_byoc
from tests.lifecycle.test_cluster_api import KUBECONFIG
from tests.runtime.conftest import free_port, wait_for

SPEC = "name: demo\ncloud: aws\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n"
NAMESPACE = "byoc-demo"
GATEWAY_POD = "byoc-demo-gateway-7d9f8b6c5-x2k4p"

STANDIN_KUBECTL = '''#!{python}
"""kubectl stand-in (see the test module's docstring): get pods, exec."""
import json, os, subprocess, sys

args = sys.argv[1:]
with open(os.environ["STANDIN_KUBECTL_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\\n")
if args[:1] != ["--kubeconfig"] or not os.path.isfile(args[1]):
    print("error: the kubeconfig given does not exist", file=sys.stderr)
    sys.exit(1)
args = args[2:]
if args[:1] == ["--request-timeout"]:
    args = args[2:]
with open(os.environ["STANDIN_KUBECTL_PODS"]) as recorded:
    pods = json.load(recorded)
if args[:2] == ["get", "pods"]:
    namespace = args[args.index("--namespace") + 1]
    items = [p for p in pods if p["metadata"]["namespace"] == namespace]
    print(json.dumps({{"apiVersion": "v1", "items": items, "kind": "List", "metadata": {{"resourceVersion": ""}}}}))
    sys.exit(0)
if args[:1] == ["exec"]:
    split = args.index("--")
    flags, command = args[1:split], args[split + 1:]
    namespace = flags[flags.index("--namespace") + 1]
    container = flags[flags.index("--container") + 1]
    valued = ("--namespace", "--container")
    named = [w for i, w in enumerate(flags) if not w.startswith("-") and flags[i - 1] not in valued]
    pod = next((p for p in pods if p["metadata"]["namespace"] == namespace and p["metadata"]["name"] == named[0]), None)
    if pod is None:
        print(f'Error from server (NotFound): pods "{{named[0]}}" not found', file=sys.stderr)
        sys.exit(1)
    if pod["status"]["phase"] != "Running":
        print("error: cannot exec into a container in a completed pod; current phase is " + pod["status"]["phase"],
              file=sys.stderr)
        sys.exit(1)
    if container not in [c["name"] for c in pod["spec"]["containers"]]:
        print(f"error: container {{container}} not found in pod {{named[0]}}", file=sys.stderr)
        sys.exit(1)
    if command[0] == "byoc":
        command = [sys.executable, "-m", "byoc", *command[1:]]
    done = subprocess.run(command, cwd={root!r}, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode:
        print(f"command terminated with exit code {{done.returncode}}", file=sys.stderr)
    sys.exit(done.returncode)
print(f'error: unknown command "{{args[0]}}" for "kubectl"', file=sys.stderr)
sys.exit(1)
'''


@dataclass
class Cluster:
    """The deployment `demo` as `byoc up` leaves it: a registry record with a kubeconfig, and the recorded pods."""

    spec: Path
    pods_file: Path
    calls_file: Path
    store_url: str
    password_file: Path

    def pods(self, pods: list[dict[str, Any]]) -> None:
        self.pods_file.write_text(json.dumps(pods))

    def execs(self) -> list[list[str]]:
        calls = [json.loads(line) for line in self.calls_file.read_text().splitlines()]
        return [call[2:] for call in calls if call[2:3] == ["exec"]]

    def store(self) -> list[str]:
        return ["--store", self.store_url, "--store-password-file", str(self.password_file)]


def gateway_pod(store_url: str, password_file: Path, name: str = GATEWAY_POD, phase: str = "Running") -> dict[str, Any]:
    """A gateway pod as stacks/k8s/serving.py makes it (its command's store flags), and as the API server lists it."""
    command = ["byoc", "serve", "gateway", "--listen", "0.0.0.0:8443", "--api-keys", "/etc/byoc/keys/keys.yaml"]
    command += ["--store", store_url, "--store-password-file", str(password_file), "--replicas-hint", "2"]
    labels = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/instance": "demo"}
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": "gateway", "image": "byoc-runtime", "command": command}]},
        "status": {"phase": phase, "containerStatuses": [{"name": "gateway", "ready": phase == "Running"}]},
    }


def serving_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "byoc-demo-serving-5c8d7f9b4-q7r2m", "namespace": NAMESPACE, "labels": {}},
        "spec": {"containers": [{"name": "engine", "command": ["trtllm-serve"]}]},
        "status": {"phase": "Running"},
    }


@contextlib.contextmanager
def redis_server(folder: Path, password: str) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 with an AUTH password, as a managed store asks for one."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--requirepass", password]
    with (folder / "redis.log").open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, password=password, socket_timeout=5)

    def answers() -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    try:
        wait_for(answers, timeout=10, what="redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(STANDIN_KUBECTL.format(python=sys.executable, root=str(ROOT)))
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STANDIN_KUBECTL_PODS", str(tmp_path / "pods.json"))
    monkeypatch.setenv("STANDIN_KUBECTL_CALLS", str(tmp_path / "kubectl-calls.jsonl"))
    (tmp_path / "kubectl-calls.jsonl").write_text("")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    registry = Registry(home)
    registry.create(
        name="demo",
        cloud="aws",
        region="eu-west-2",
        requested_region="EUROPE",
        shape="h100x1-fp8",
        instance_type="p5.4xlarge",
        spec={"name": "demo", "cloud": "aws", "region": "EUROPE", "model": "llama-3.1-8b-instruct"},
        backend="file:///x",
    )
    registry.transition("demo", State.DEPLOYING)
    registry.transition("demo", State.DEPLOYED)
    registry.update("demo", outputs={"kubeconfig": str(kubeconfig)})
    registry.close()
    spec = tmp_path / "byoc.yaml"
    spec.write_text(SPEC)
    password_file = tmp_path / "store-password"
    password_file.write_text("s3cret-store-token\n")
    with redis_server(tmp_path, "s3cret-store-token") as url:
        found = Cluster(spec, tmp_path / "pods.json", tmp_path / "kubectl-calls.jsonl", url, password_file)
        # a gateway pod still starting, listed first, and a serving pod: byoc must pick the running gateway
        found.pods([gateway_pod(url, password_file, "byoc-demo-gateway-7d9f8b6c5-new1", "Pending"), serving_pod()])
        found.pods([*json.loads(found.pods_file.read_text()), gateway_pod(url, password_file)])
        yield found


def byoc(*args: str) -> subprocess.CompletedProcess[str]:
    return run_byoc(*args, timeout=120)


def test_keys_made_through_the_gateway_pod_are_in_the_store(cluster: Cluster) -> None:
    created = byoc("keys", "create", "tenant-a", "-f", str(cluster.spec), "--rpm", "100", "-o", "json")
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert issued["key"].startswith("sk-byoc-") and issued["rpm"] == 100
    assert "store it now, it is not shown again" not in created.stdout
    # printed once, written nowhere: not in the registry, the kubectl calls, the store's files
    for written in cluster.calls_file.parent.rglob("*"):
        assert not written.is_file() or issued["key"].encode() not in written.read_bytes(), written

    listed = byoc("keys", "list", *cluster.store(), "-o", "json")
    assert [(r["name"], r["source"], r["revoked"], r["rpm"]) for r in json.loads(listed.stdout)] == [
        ("tenant-a", "store", False, 100)
    ]
    through = byoc("keys", "list", "-f", str(cluster.spec), "-o", "json")
    assert json.loads(through.stdout) == json.loads(listed.stdout)
    table = byoc("keys", "list", "-f", str(cluster.spec))
    assert table.stdout.splitlines()[1].split()[:4] == ["tenant-a", "store", "active", "100"]

    # the pod ran it: the running gateway (never the starting one), its container, the gateway's own store flags
    assert cluster.execs()[0] == [
        *("exec", "--namespace", NAMESPACE, GATEWAY_POD, "--container", "gateway", "--"),
        *("byoc", "keys", "create", "tenant-a", "--rpm", "100", *cluster.store(), "--output", "json"),
    ]

    # text output: the key alone on stdout, once, and what to do with it on stderr
    rotated = byoc("keys", "rotate", "tenant-a", "-f", str(cluster.spec))
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip().startswith("sk-byoc-") and len(rotated.stdout.splitlines()) == 1
    assert rotated.stdout.strip() != issued["key"]
    assert "store it now, it is not shown again" in rotated.stderr

    revoked = byoc("keys", "revoke", "tenant-a", "-f", str(cluster.spec))
    assert revoked.returncode == 0 and "key tenant-a revoked" in revoked.stdout
    after = json.loads(byoc("keys", "list", *cluster.store(), "-o", "json").stdout)
    assert after[0]["revoked"] is True


def test_the_inner_commands_errors_come_back_as_they_are(cluster: Cluster) -> None:
    assert byoc("keys", "create", "tenant-a", "-f", str(cluster.spec)).returncode == 0
    again = byoc("keys", "create", "tenant-a", "-f", str(cluster.spec), "-o", "json")
    assert again.returncode == 2
    error = json.loads(again.stdout)["error"]
    assert (error["field"], error["message"]) == ("NAME", "a key named tenant-a exists")
    assert "keys rotate tenant-a" in error["hint"]
    missing = byoc("keys", "rotate", "nobody", "-f", str(cluster.spec))
    assert missing.returncode == 2
    assert "error: NAME: no key named nobody in the store" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr


def test_usage_through_the_gateway_pod_is_what_the_store_says(cluster: Cluster) -> None:
    from runtime.serve.ledger import UsageLedger, store_client

    async def write() -> None:
        now = time.time()
        for hours_ago, key, model in ((0, "alice", "llama"), (1, "bob", "llama"), (2, "alice", "sql-lora")):
            client = store_client(cluster.store_url, cluster.password_file)
            ledger = UsageLedger(client, clock=lambda h=hours_ago: now - h * 3600)
            ledger.record(key, model, "base", 100, 40, 20, 1.5)
            await ledger.close()
            await client.aclose()

    asyncio.run(write())
    for by in ("key", "model"):
        direct = byoc("usage", *cluster.store(), "--since", "1d", "--by", by, "-o", "json")
        through = byoc("usage", "-f", str(cluster.spec), "--since", "1d", "--by", by, "-o", "json")
        assert through.returncode == 0, through.stderr
        assert json.loads(through.stdout)["usage"] == json.loads(direct.stdout)["usage"]
    rows = json.loads(through.stdout)["usage"]
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in rows] == [("llama", 2, 200), ("sql-lora", 1, 100)]
    as_csv = byoc("usage", "-f", str(cluster.spec), "--since", "1d", "-o", "csv")
    assert as_csv.stdout == byoc("usage", *cluster.store(), "--since", "1d", "-o", "csv").stdout
    assert as_csv.stdout.splitlines()[1].startswith("alice,2,200,80,40,")
    table = byoc("usage", "-f", str(cluster.spec), "--since", "1d")
    assert table.stdout.splitlines()[0].split()[:2] == ["key", "requests"]


@pytest.mark.parametrize(
    ("args", "field", "says"),
    [
        (["keys", "list", "--store", "redis://127.0.0.1:1", "-f", "SPEC"], "-f", "-f and --store both"),
        (["keys", "list"], "--store", "give -f byoc.yaml"),
        (["usage", "--store", "redis://127.0.0.1:1", "-f", "SPEC"], "-f", "-f and --store both"),
        (["usage"], "--store", "give -f byoc.yaml"),
        (["keys", "create", "x", "-f", "SPEC", "--store-password-file", "pw"], "--store-password-file", "goes with"),
        (["usage", "-f", "OTHER"], "-f", "no deployment named other in the registry"),
        (["keys", "revoke", "x", "-f", "OTHER"], "-f", "no deployment named other in the registry"),
        (["keys", "list", "-f", "NEW"], "-f", "deployment fresh has no cluster to reach"),
        (["usage", "-f", "SPEC", "--since", "7x"], "--since", "neither a duration"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(cluster: Cluster, args: list[str], field: str, says: str) -> None:
    other = cluster.spec.with_name("other.yaml")
    other.write_text(SPEC.replace("name: demo", "name: other"))
    fresh = cluster.spec.with_name("fresh.yaml")
    fresh.write_text(SPEC.replace("name: demo", "name: fresh"))
    registry = Registry(Path(os.environ["BYOC_HOME"]))
    if registry.get("fresh") is None:
        registry.create(
            name="fresh",
            cloud="aws",
            region="eu-west-2",
            requested_region="EUROPE",
            shape="h100x1-fp8",
            instance_type="p5.4xlarge",
            spec={},
            backend="file:///x",
        )
    registry.close()
    names = {"SPEC": str(cluster.spec), "OTHER": str(other), "NEW": str(fresh)}
    answer = byoc(*[names.get(a, a) for a in args], "-o", "json")
    assert answer.returncode == 2, answer.stderr
    error = json.loads(answer.stdout)["error"]
    assert error["field"] == field and says in error["message"] + error["hint"], error
    assert "Traceback" not in answer.stderr
    assert cluster.execs() == []


def test_no_running_gateway_pod_exits_1(cluster: Cluster) -> None:
    cluster.pods(
        [gateway_pod(cluster.store_url, cluster.password_file, phase="Pending"), serving_pod()],
    )
    for args in (["keys", "list"], ["usage"]):
        answer = byoc(*args, "-f", str(cluster.spec))
        assert answer.returncode == 1, answer.stderr
        assert "error: -f: no running gateway pod of deployment demo in namespace byoc-demo" in answer.stderr
        assert "Traceback" not in answer.stderr
    assert cluster.execs() == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_real_kubectl_exec_without_a_cluster_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.replace("{port}", str(port)))
    with pytest.raises(ClusterUnreachable, match=rf"kubectl exec {GATEWAY_POD}: .*127.0.0.1:{port}.*refused"):
        Kubectl(kubeconfig, str(shutil.which("kubectl"))).exec(NAMESPACE, GATEWAY_POD, "gateway", ["byoc", "--help"])


def test_a_multi_region_deployment_is_refused_not_half_done(cluster: Cluster, home: Path) -> None:
    """Each region has its own store and the keys must be the same in every region: `-f`, which reaches one
    region's gateway, refuses rather than create, rotate, revoke or read in one region only."""
    registry = Registry(home)
    try:
        registry.plan_stacks(
            "demo", [("eu-west-2", "demo-euw2"), ("eu-north-1", "demo-eun1"), ("global", "demo-global")]
        )
    finally:
        registry.close()
    for args in (["keys", "create", "team-a"], ["keys", "list"], ["usage"]):
        answer = byoc(*args, "-f", str(cluster.spec))
        assert answer.returncode == 2, answer.stderr
        lines = answer.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: -f: deployment demo runs in 2 regions"), lines
        assert "--store URL" in lines[0] and "Traceback" not in answer.stderr
    assert cluster.execs() == []
