"""The GPU pods as rendered fit the machine they are priced on, and that machine is one their pool may launch.

A pod that asks for more than a node can allocate never schedules: the GPU pool never scales up and the deployment
never serves, whatever the plan and the cost estimate say. These tests read the requests from the rendered
manifests, as the scheduler does: the containers' sum, or the largest init container if that is larger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi_kubernetes as k8s
import pytest
import yaml

from byoc.catalogs import CLOUDS, load_catalog
from byoc.clouds import get_cloud
from byoc.engines.offline import run_offline
from byoc.plan import Plan
from byoc.resolve import Deployment, catalog_shapes, resolve
from byoc.spec import load_spec
from stacks.k8s.serving import Foundation, ServingStack
from tests.conftest import EXAMPLES, deploy
from tests.stacks.plans import one

MIB = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}


def cpu_m(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def memory_mib(quantity: str) -> float:
    return float(quantity[:-2]) * MIB[quantity[-2:]]


def pod_requests(pod: dict[str, Any]) -> tuple[int, float]:
    """What the scheduler counts for a pod: max(sum of containers, largest init container), per resource."""

    def requests(container: dict[str, Any]) -> tuple[int, float]:
        asked = container["resources"]["requests"]
        return cpu_m(asked["cpu"]), memory_mib(asked["memory"])

    containers = [requests(c) for c in pod["containers"]]
    inits = [requests(c) for c in pod.get("initContainers", [])]
    return (
        max([sum(c[0] for c in containers), *(i[0] for i in inits)]),
        max([sum(c[1] for c in containers), *(i[1] for i in inits)]),
    )


def gpu_pods(plan: Plan) -> dict[str, dict[str, Any]]:
    serving = next(
        d.inputs["spec"]["template"]["spec"]
        for d in plan.by_type("kubernetes:apps/v1:Deployment")
        if d.inputs["metadata"]["name"].endswith("-serving")
    )
    build = one(plan, "kubernetes:batch/v1:Job").inputs["spec"]["template"]["spec"]
    return {"serving": serving, "build": build}


def serving_stack_only(deployment: Deployment) -> dict[str, Any]:
    foundation = Foundation(
        artifact_root="s3://artifacts", gpu_node_selector={}, gpu_operator_values=None, vpc_cidr="10.0.0.0/16"
    )
    ServingStack(deployment, k8s.Provider("k8s", kubeconfig="{}"), foundation)
    return {}


def room(cloud_name: str, instance_type: str, shape_gpus: int) -> tuple[int, int]:
    """A node's allocatable less the GPU node DaemonSets (as the catalog lists them), per replica it holds."""
    cloud = get_cloud(cloud_name)
    instance = cloud.instance_types[instance_type]
    allocatable = cloud.node_allocatable(instance).allocatable
    daemonsets = load_catalog().kubernetes["gpu_node_daemonsets"][cloud_name]
    per_node = instance.gpus // shape_gpus
    free_cpu = allocatable.cpu_m - sum(d["cpu_m"] for d in daemonsets)
    free_memory = allocatable.memory_mib - sum(d["memory_mib"] for d in daemonsets)
    return free_cpu // per_node, free_memory // per_node


def ephemeral_gib(pod: dict[str, Any]) -> float:
    """The pod's ephemeral-storage request as the scheduler counts it, and its limit as the kubelet enforces it
    (the containers' sum; equal here, Guaranteed): max(sum of containers, largest init container)."""

    def asked(container: dict[str, Any]) -> float:
        resources = container["resources"]
        assert resources["requests"].get("ephemeral-storage") == resources["limits"].get("ephemeral-storage")
        return memory_mib(resources["requests"].get("ephemeral-storage", "0Mi")) / 1024

    inits = [asked(c) for c in pod.get("initContainers", [])]
    return max([sum(asked(c) for c in pod["containers"]), *inits])


def written_gib(pod: dict[str, Any]) -> float:
    """What the pod writes to its node's disk at most: its emptyDir volumes on disk at their size limits (the
    artifact in /models, /scratch), which must stay under its limit or the kubelet evicts it."""
    volumes = [v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"]
    return sum(memory_mib(v["sizeLimit"]) / 1024 for v in volumes)


def node_disk_gib(plan: Plan, deployment: Deployment) -> float:
    """The disk the GPU pods' ephemeral storage lives on, as the plan declares it: the root disk (the EC2NodeClass's
    volume, the GKE node pool's disk), or the local NVMe the node class makes ephemeral storage (Karpenter's
    instance-store RAID0: the smallest instance store of the pool; GKE Local SSD: its disks of 375 GiB). A plan of
    the serving stack alone has neither, and the deployment's figure stands in."""
    catalog = get_cloud(deployment.cloud).instance_types
    node_class = next((r for r in plan.resources if r.inputs.get("kind") == "EC2NodeClass"), None)
    if node_class is not None:
        if node_class.inputs["spec"].get("instanceStorePolicy") == "RAID0":
            return min(catalog[t].local_nvme_gb or 0 for t in deployment.pods.instance_types) * 1e9 / 1024**3
        return int(node_class.inputs["spec"]["blockDeviceMappings"][0]["ebs"]["volumeSize"].removesuffix("Gi"))
    pools = [p for p in plan.by_type("gcp:container/nodePool:NodePool") if p.inputs["name"] == "byoc-gpu"]
    if pools:
        local_ssd = pools[0].inputs["nodeConfig"].get("ephemeralStorageLocalSsdConfig")
        if local_ssd:
            return int(local_ssd["localSsdCount"]) * 375
        return int(pools[0].inputs["nodeConfig"]["diskSizeGb"])
    return deployment.disk.local_nvme_gib or deployment.gpu_node_disk_gib


def assert_disk_holds(deployment: Deployment, plan: Plan) -> None:
    """No pod is evicted for writing what it must (the artifact, the checkpoint), and the fullest node of the pool
    allocates ephemeral storage for its pods: one build Job and replicas in the other slots."""
    from byoc.planner import weight_bytes
    from byoc.sizing import NODE_FILES_GIB, eks_ephemeral_allocatable_gib, gke_ephemeral_allocatable_gib

    pods = gpu_pods(plan)
    serving, build = ephemeral_gib(pods["serving"]), ephemeral_gib(pods["build"])
    where = f"{deployment.cloud} {deployment.shape.name}"
    for role, pod in pods.items():
        assert written_gib(pod) <= ephemeral_gib(pod), f"{where} {role}: its emptyDirs may pass its limit"
    artifact = weight_bytes(deployment.model, deployment.shape.precision) / 1024**3
    models = next(v["emptyDir"] for v in pods["serving"]["volumes"] if v["name"] == "models")
    assert memory_mib(models["sizeLimit"]) / 1024 >= artifact, f"{where}: /models cannot hold the artifact"
    source = weight_bytes(deployment.model, "bf16") / 1024**3
    assert written_gib(pods["build"]) >= source + artifact, f"{where}: the build's scratch cannot hold its files"
    disk = node_disk_gib(plan, deployment)
    allocatable = (eks_ephemeral_allocatable_gib if deployment.cloud == "aws" else gke_ephemeral_allocatable_gib)(disk)
    cloud = get_cloud(deployment.cloud)
    fullest = max(cloud.instance_types[t].gpus // deployment.shape.count for t in deployment.pods.instance_types)
    needed = (fullest - 1) * serving + max(serving, build) + NODE_FILES_GIB
    assert needed <= allocatable, f"{where}: {needed} GiB of pods on a {disk} GiB disk allocating {allocatable:.1f}"


def assert_fits(deployment: Deployment, plan: Plan) -> None:
    assert_disk_holds(deployment, plan)
    pool = deployment.pods.instance_types
    priced = deployment.cost.node.instance_type
    assert priced in pool, f"{deployment.shape.name} is priced on {priced}, which its pool ({pool}) never launches"
    for instance_type in pool:
        cpu, memory = room(deployment.cloud, instance_type, deployment.shape.count)
        for role, pod in gpu_pods(plan).items():
            asked_cpu, asked_memory = pod_requests(pod)
            where = f"{deployment.cloud} {deployment.shape.name} {role} pod on {instance_type}"
            assert asked_cpu <= cpu, f"{where}: {asked_cpu}m CPU asked, {cpu}m free per replica"
            assert asked_memory <= memory, f"{where}: {asked_memory} MiB asked, {memory} MiB free per replica"


SHAPES = [(cloud, shape.name) for cloud in CLOUDS for shape in catalog_shapes(cloud)]


@pytest.mark.parametrize(("cloud", "shape"), SHAPES, ids=[f"{c}-{s}" for c, s in SHAPES])
def test_every_catalog_shape_fits_the_machine_it_is_priced_on(cloud: str, shape: str) -> None:
    deployment = deploy(cloud=cloud, region="GLOBAL", shape=shape, max_context=4096)
    assert_fits(deployment, run_offline(deployment, serving_stack_only))
    types = deployment.placement.instance_types if get_cloud(cloud).node_pool_fallbacks else ()
    assert deployment.pods.instance_types == (types or (deployment.placement.instance_type,))


def pool_types(plan: Plan, cloud: str) -> list[str]:
    """The machine types the GPU pool may launch, as the plan declares the pool."""
    if cloud == "aws":
        pool = next(r for r in plan.resources if r.inputs.get("kind") == "NodePool").inputs["spec"]
        requirements = pool["template"]["spec"]["requirements"]
        return list(next(r for r in requirements if r["key"] == "node.kubernetes.io/instance-type")["values"])
    gpu_pool = next(p for p in plan.by_type("gcp:container/nodePool:NodePool") if p.inputs["name"] == "byoc-gpu")
    return [gpu_pool.inputs["nodeConfig"]["machineType"]]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_fits_every_machine_its_pool_may_launch(path: Path) -> None:
    from byoc.engines import program_for

    deployment = resolve(load_spec(path, {}))
    program = program_for(deployment)
    assert program is not None
    plan = run_offline(deployment, program)
    assert_fits(deployment, plan)
    assert pool_types(plan, deployment.cloud) == list(deployment.pods.instance_types)


def test_gcp_l4_example_fits_a_g2_standard_8() -> None:
    """The example that could never serve: it asked 8.1 CPU and 32.1 GiB of a machine with 8 vCPU and 32 GiB."""
    deployment = resolve(load_spec(Path(__file__).parents[2] / "examples" / "gcp-l4.yaml", {}))
    assert deployment.placement.instance_type == "g2-standard-8"
    assert deployment.cost.node.instance_type == "g2-standard-8"
    # By hand, for 8 vCPU / 32 GiB (32768 MiB):
    #   CPU reserved ("Plan GKE node sizes") 6% x 1000m + 1% x 1000m + 0.5% x 2000m + 0.25% x 4000m
    #                 = 60 + 10 + 10 + 10 = 90m                                  -> allocatable 8000 - 90 = 7910m
    #   kernel (COS; cluster autoscaler gce/reserved.go) 32768/64 + 16 + 64 + 0.175% x 32768
    #                 = 512 + 16 + 64 + 57.344 = 649.344 -> 650 MiB
    #   kube-reserved ("Plan GKE node sizes") 25% x 4096 + 20% x 4096 + 10% x 8192 + 6% x 16384
    #                 = 1024 + 819.2 + 819.2 + 983.04 = 3645.44 -> 3646 MiB; eviction threshold 100 MiB
    #   -> allocatable 32768 - 650 - 3646 - 100 = 28372 MiB (27.7 GiB)
    allocatable_cpu_m, allocatable_mib = 7910, 28372
    daemonsets = load_catalog().kubernetes["gpu_node_daemonsets"]["gcp"]
    free_cpu = allocatable_cpu_m - sum(d["cpu_m"] for d in daemonsets)
    free_mib = allocatable_mib - sum(d["memory_mib"] for d in daemonsets)
    plan = run_offline(deployment, serving_stack_only)
    for role, pod in gpu_pods(plan).items():
        cpu, memory = pod_requests(pod)
        assert cpu <= free_cpu and memory <= free_mib, f"{role}: {cpu}m / {memory} MiB on a g2-standard-8"
        # and it still takes most of the machine: the engine gets the node's CPU and memory, not a round guess
        assert cpu >= 0.9 * free_cpu and memory >= 0.9 * free_mib
    engine = next(c for c in gpu_pods(plan)["serving"]["containers"] if c["name"] == "trtllm-serve")
    assert engine["resources"]["limits"] == engine["resources"]["requests"]  # Guaranteed: no overcommit
    assert yaml.safe_dump(engine["resources"])  # plain quantities, as the manifests carry them
