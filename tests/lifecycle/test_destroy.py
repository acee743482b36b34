"""`byoc destroy` leaves nothing behind: controller-made objects first (through the cluster's API), then the stack,
then a sweep of the account for what is still tagged with the deployment or its cluster.

- AWS: a moto server on 127.0.0.1, seeded with the leftovers controllers are known to leave (Karpenter's instance
  and launch template, the load-balancer controller's NLB and security group, an available VPC CNI interface, an
  EBS CSI volume) and with untagged resources in the same VPC, which must survive. A pass-through proxy in front of
  moto answers the first DeleteSecurityGroup with DependencyViolation (moto never does) to exercise the backoff.
- Kubernetes: a RECORDED FAKE of the cluster API (no API server can run here): objects in the shape
  `kubectl get -o json` returns, and deletions that finish a few polls later, as finalizers do.
- Pulumi: the STAND-IN `pulumi` (tests/lifecycle/standin_pulumi.py), which records the refresh and destroy calls.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from byoc.lifecycle import Lifecycle, LiveOptions, Waits
from byoc.progress import Silent
from byoc.registry import Record, Registry, State
from tests.lifecycle.conftest import StandIn

REGION = "eu-west-2"
SPEC = {"name": "sweep", "cloud": "aws", "region": "EUROPE", "model": "llama-3.1-8b-instruct", "shape": "h100x1-fp8"}
CLUSTER = "byoc-sweep"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """Forwards every request to moto, except the first `refuse` DeleteSecurityGroup calls."""
    state: dict[str, Any] = {"refuse": 1, "refused": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if b"Action=DeleteSecurityGroup" in body and state["refuse"] > 0:
                state["refuse"] -= 1
                state["refused"].append(body.decode())
                self._send(
                    400,
                    b"<Response><Errors><Error><Code>DependencyViolation</Code><Message>resource "
                    b"sg has a dependent object</Message></Error></Errors><RequestID>1</RequestID></Response>",
                )
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            request = urllib.request.Request(moto_endpoint + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    self._send(answer.status, answer.read(), answer.headers.get("Content-Type"))
            except urllib.error.HTTPError as exc:
                self._send(exc.code, exc.read(), exc.headers.get("Content-Type"))

        def _send(self, status: int, payload: bytes, content_type: str | None = "text/xml") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "text/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _tags(kind: str, **tags: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def seed(endpoint: str) -> dict[str, str]:
    """Leftovers of deployment `sweep` (cluster byoc-sweep) and bystanders that share its VPC."""
    kw = {"endpoint_url": endpoint, "region_name": REGION, "aws_access_key_id": "t", "aws_secret_access_key": "t"}
    ec2, elbv2 = boto3.client("ec2", **kw), boto3.client("elbv2", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def instance(**tags: str) -> str:
        # m5.large: these survivors must not count against the P-family quota the preflight tests read
        spec = _tags("instance", **tags) if tags else []
        ran = ec2.run_instances(
            ImageId=image,
            InstanceType="m5.large",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnets[0],
            TagSpecifications=spec,
        )
        return str(ran["Instances"][0]["InstanceId"])

    ids = {
        "karpenter_node": instance(
            **{"karpenter.sh/nodepool": "byoc-gpu", f"kubernetes.io/cluster/{CLUSTER}": "owned"}
        ),
        "tagged_node": instance(**{"byoc:deployment": "sweep"}),
        "bystander_node": instance(),
        "other_deployment_node": instance(**{"byoc:deployment": "other"}),
        "launch_template": ec2.create_launch_template(
            LaunchTemplateName="karpenter.k8s.aws/sweep",
            LaunchTemplateData={"InstanceType": "p5.4xlarge"},
            TagSpecifications=_tags("launch-template", **{"eks:eks-cluster-name": CLUSTER}),
        )["LaunchTemplate"]["LaunchTemplateId"],
        "bystander_template": ec2.create_launch_template(
            LaunchTemplateName="theirs", LaunchTemplateData={"InstanceType": "m5.large"}
        )["LaunchTemplate"]["LaunchTemplateId"],
        "load_balancer": elbv2.create_load_balancer(
            Name="k8s-byocsweep-gateway",
            Subnets=subnets,
            Type="network",
            Scheme="internal",
            Tags=[
                {"Key": "elbv2.k8s.aws/cluster", "Value": CLUSTER},
                {"Key": "service.k8s.aws/stack", "Value": "byoc-sweep/gateway"},
            ],
        )["LoadBalancers"][0]["LoadBalancerArn"],
        "bystander_load_balancer": elbv2.create_load_balancer(
            Name="theirs", Subnets=subnets, Type="network", Scheme="internal"
        )["LoadBalancers"][0]["LoadBalancerArn"],
        "security_group": ec2.create_security_group(
            GroupName="k8s-traffic-byocsweep",
            Description="lb",
            VpcId=vpc,
            TagSpecifications=_tags("security-group", **{"elbv2.k8s.aws/cluster": CLUSTER}),
        )["GroupId"],
        "shared_security_group": ec2.create_security_group(
            GroupName="shared",
            Description="shared",
            VpcId=vpc,
            TagSpecifications=_tags("security-group", **{f"kubernetes.io/cluster/{CLUSTER}": "shared"}),
        )["GroupId"],
        "bystander_security_group": ec2.create_security_group(GroupName="theirs", Description="x", VpcId=vpc)[
            "GroupId"
        ],
        "network_interface": ec2.create_network_interface(
            SubnetId=subnets[0],
            TagSpecifications=_tags("network-interface", **{"cluster.k8s.amazonaws.com/name": CLUSTER}),
        )["NetworkInterface"]["NetworkInterfaceId"],
        "bystander_interface": ec2.create_network_interface(SubnetId=subnets[0])["NetworkInterface"][
            "NetworkInterfaceId"
        ],
        "volume": ec2.create_volume(
            AvailabilityZone=f"{REGION}a",
            Size=100,
            TagSpecifications=_tags(
                "volume", **{f"kubernetes.io/cluster/{CLUSTER}": "owned", "CSIVolumeName": "pvc-1"}
            ),
        )["VolumeId"],
        "bystander_volume": ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=100)["VolumeId"],
    }
    ids["vpc"] = vpc
    return ids


def exists(endpoint: str) -> dict[str, set[str]]:
    kw = {"endpoint_url": endpoint, "region_name": REGION, "aws_access_key_id": "t", "aws_secret_access_key": "t"}
    ec2, elbv2 = boto3.client("ec2", **kw), boto3.client("elbv2", **kw)
    alive = ["pending", "running", "stopping", "stopped"]
    reservations = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": alive}])["Reservations"]
    return {
        "instances": {i["InstanceId"] for r in reservations for i in r["Instances"]},
        "templates": {t["LaunchTemplateId"] for t in ec2.describe_launch_templates()["LaunchTemplates"]},
        "load_balancers": {lb["LoadBalancerArn"] for lb in elbv2.describe_load_balancers()["LoadBalancers"]},
        "groups": {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]},
        "interfaces": {n["NetworkInterfaceId"] for n in ec2.describe_network_interfaces()["NetworkInterfaces"]},
        "volumes": {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]},
    }


class RecordedCluster:
    """A recorded fake of the Kubernetes API (kubectl JSON shapes); deletions finish `lag` polls later."""

    def __init__(self, timeline: list[tuple[float, str]], lag: int = 2) -> None:
        self.timeline = timeline
        self.lag = lag
        namespace = "byoc-sweep"
        self.objects: dict[tuple[str, str | None], list[dict[str, Any]]] = {
            ("services", namespace): [
                {
                    "metadata": {
                        "name": "byoc-sweep-gateway",
                        "namespace": namespace,
                        "finalizers": ["service.k8s.aws/resources"],
                    },
                    "spec": {"type": "LoadBalancer"},
                    "status": {
                        "loadBalancer": {"ingress": [{"hostname": "k8s-byocsweep.elb.eu-west-2.amazonaws.com"}]}
                    },
                },
                {"metadata": {"name": "byoc-sweep-serving", "namespace": namespace}, "spec": {"type": "ClusterIP"}},
            ],
            ("persistentvolumeclaims", namespace): [{"metadata": {"name": "model-cache", "namespace": namespace}}],
            ("nodepools.karpenter.sh", None): [{"metadata": {"name": "byoc-gpu"}}],
            ("nodeclaims.karpenter.sh", None): [
                {"metadata": {"name": "byoc-gpu-7xk2p"}},
                {"metadata": {"name": "byoc-gpu-9qd4m"}},
            ],
        }
        self.pending: dict[tuple[str, str | None, str], int] = {}

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        for key, polls in list(self.pending.items()):
            if key[0] == kind and key[1] == namespace:
                if polls <= 0:
                    self.objects[(kind, namespace)] = [
                        o for o in self.objects[(kind, namespace)] if o["metadata"]["name"] != key[2]
                    ]
                    del self.pending[key]
                    if kind == "nodepools.karpenter.sh":  # Karpenter terminates the pool's NodeClaims
                        self.pending |= {
                            ("nodeclaims.karpenter.sh", None, c["metadata"]["name"]): self.lag
                            for c in self.objects[("nodeclaims.karpenter.sh", None)]
                        }
                else:
                    self.pending[key] = polls - 1
        if kind == "nodeclaims.karpenter.sh":
            for key in [k for k in self.pending if k[0] == "nodepools.karpenter.sh"]:
                self.pending[key] = 0
                self.list("nodepools.karpenter.sh", None)
        found = list(self.objects.get((kind, namespace), []))
        self.timeline.append((time.monotonic(), f"k8s list {kind} -> {len(found)}"))
        return found

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        self.timeline.append((time.monotonic(), f"k8s delete {kind} {name}"))
        self.pending[(kind, namespace, name)] = self.lag  # finalizers: gone a few polls later


class Steps(Silent):
    def __init__(self, timeline: list[tuple[float, str]]) -> None:
        self.timeline = timeline
        self.messages: list[str] = []

    def step(self, text: str, total: int | None = None) -> None:
        self.timeline.append((time.monotonic(), f"step {text}"))

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture
def lifecycle(
    tmp_path: Path, standin: StandIn, proxy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Lifecycle, RecordedCluster, list[tuple[float, str]], list[float]]]:
    for key, value in standin.env({"PATH": __import__("os").environ["PATH"]}).items():
        monkeypatch.setenv(key, value)
    for key, value in {
        "AWS_ENDPOINT_URL": proxy["url"],
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PULUMI_CONFIG_PASSPHRASE": "test",
    }.items():
        monkeypatch.setenv(key, value)
    registry = Registry(tmp_path / "home")
    registry.create(
        name="sweep",
        cloud="aws",
        region=REGION,
        requested_region="EUROPE",
        shape="h100x1-fp8",
        instance_type="p5.4xlarge",
        spec=SPEC,
        backend=f"file://{tmp_path / 'home' / 'state'}",
    )
    registry.transition("sweep", State.DEPLOYING)
    registry.transition("sweep", State.DEPLOYED)
    timeline: list[tuple[float, str]] = []
    cluster = RecordedCluster(timeline)
    sleeps: list[float] = []

    def cluster_for(record: Record) -> RecordedCluster:
        return cluster

    life = Lifecycle(
        registry=registry,
        view=Steps(timeline),
        cluster_for=cluster_for,  # type: ignore[arg-type]
        waits=Waits(poll_s=0.0),
        sweep_options={"first_delay_s": 0.01, "sleep": sleeps.append, "wait_s": 10},
        sleep=lambda _: None,
    )
    yield life, cluster, timeline, sleeps
    registry.close()


def test_destroy_in_order_and_only_what_is_tagged(
    moto_endpoint: str, proxy: dict[str, Any], lifecycle: Any, standin: StandIn
) -> None:
    life, _, timeline, sleeps = lifecycle
    ids = seed(moto_endpoint)
    before = exists(moto_endpoint)

    dry = life.destroy("sweep", LiveOptions(yes=False))
    assert dry["dry_run"] is True and life.registry.require("sweep").state is State.DEPLOYED
    assert exists(moto_endpoint) == before and not [t for t in timeline if "delete" in t[1]]
    assert dry["cluster"]["services"] == ["byoc-sweep-gateway"] and len(dry["cluster"]["nodeclaims"]) == 2
    found = {(r["kind"], r["id"]) for r in dry["leftovers"]["resources"]}
    assert ("instance", ids["karpenter_node"]) in found and ("volume", ids["volume"]) in found

    result = life.destroy("sweep", LiveOptions(yes=True))
    assert result["state"] == "DELETED", result
    record = life.registry.require("sweep")
    assert record.state is State.DELETED

    # gateway Service gone -> PVCs gone -> NodePools deleted, zero NodeClaims -> pulumi refresh, destroy -> sweep
    events = [what for _, what in timeline]
    order = [
        events.index("k8s delete services byoc-sweep-gateway"),
        events.index("k8s delete persistentvolumeclaims model-cache"),
        events.index("k8s delete nodepools.karpenter.sh byoc-gpu"),
        max(i for i, e in enumerate(events) if e == "k8s list nodeclaims.karpenter.sh -> 0"),
        events.index("step pulumi refresh"),
        events.index("step pulumi destroy"),
        events.index("step sweep"),
    ]
    assert order == sorted(order), events
    assert "k8s delete services byoc-sweep-serving" not in events  # only the LoadBalancer Service has a cloud twin
    first_pvc = events.index("k8s delete persistentvolumeclaims model-cache")
    assert "k8s list services -> 1" in events[:first_pvc]  # waited for the Service (and its NLB) to go first
    pulumi = [c for c in standin.commands() if c.split()[0] in ("refresh", "destroy")]
    assert [c.split()[0] for c in pulumi] == ["refresh", "destroy"]

    swept = result["leftovers"]["resources"]
    assert [r["kind"] for r in swept] == [
        "instance",
        "instance",
        "load-balancer",
        "launch-template",
        "network-interface",
        "volume",
        "security-group",
    ]
    assert {r["action"] for r in swept} == {"deleted"}
    assert len(proxy["refused"]) == 1 and sleeps == [0.01]  # DependencyViolation, backed off, retried
    assert any("DependencyViolation; retrying" in m for m in life.view.messages)

    after = exists(moto_endpoint)
    gone = [
        "karpenter_node",
        "tagged_node",
        "launch_template",
        "load_balancer",
        "security_group",
        "network_interface",
        "volume",
    ]
    for key in gone:
        assert not any(ids[key] in values for values in after.values()), key
    survivors = [
        "bystander_node",
        "other_deployment_node",
        "bystander_template",
        "bystander_load_balancer",
        "bystander_security_group",
        "shared_security_group",
        "bystander_interface",
        "bystander_volume",
    ]
    for key in survivors:
        assert any(ids[key] in values for values in after.values()), key
    assert json.dumps(life.registry.events("sweep")[-1]["message"]) == json.dumps("DELETING -> DELETED")


def test_cluster_unreachable_is_reported_and_the_sweep_still_runs(lifecycle: Any) -> None:
    from byoc.cluster_api import ClusterUnreachable

    life, _, timeline, _ = lifecycle

    def gone(record: Record) -> Any:
        raise ClusterUnreachable("kubectl get: Unable to connect to the server: dial tcp: i/o timeout")

    life.cluster_for = gone
    result = life.destroy("sweep", LiveOptions(yes=True))
    assert result["cluster"]["unknown"].startswith("kubectl get: Unable to connect to the server")
    assert [what for _, what in timeline if what.startswith("step")] == [
        "step controller resources",
        "step pulumi refresh",
        "step pulumi destroy",
        "step sweep",
    ]
    assert result["state"] in ("DELETED", "FAILED")
