"""What a GPU pod may request on the machine its pool launches: node allocatable, the DaemonSets' share, and the
serving pod's and build Job's requests, computed from the machine (byoc/catalogs/instances.yaml), not round numbers.

A pod whose requests exceed what a node can allocate never schedules: the autoscaler never adds a node for it, and
the deployment never serves. So every request byoc renders for a GPU node is cut from that node's allocatable:

    allocatable = capacity - kube-reserved - eviction threshold           (per machine type and cloud, below)
    free        = allocatable - the DaemonSets on every GPU node          (byoc/catalogs/kubernetes.yaml)
    slot        = free / replicas per node                                (a replica, or the build Job, per slot)

Kube-reserved, as each cloud computes it:

- CPU, both clouds: 6% of the first core, 1% of the second, 0.5% of cores 3 and 4, 0.25% of every core above 4.
  EKS: amazon-eks-ami nodeadm, `getCPUMillicoresToReserve` (nodeadm/internal/kubelet/config.go: ranges 0/1000/2000/
  4000 millicores at 600/100/50/25 ten-thousandths, integer division); Karpenter 1.8 `kubeReservedResources`
  (pkg/providers/instancetype/types.go), the same tiers. GKE: "Plan GKE node sizes", section "Memory and CPU
  reservations" (cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes).
- Memory, EKS: 11 MiB x max pods + 255 MiB (nodeadm `getMemoryMebibytesToReserve`; Karpenter, the same), max pods
  from the default network card's ENIs: ENIs x (IPv4 addresses per ENI - 1) + 2 (nodeadm `calculateStandardMaxPods`,
  nodeadm/internal/kubelet/eni_max_pods.go). Karpenter decides whether a pod fits an instance type before it has
  seen one, from EC2's memory less `vmMemoryOverheadPercent` (default 0.075, charts/karpenter/values.yaml), rounded
  up to a MiB (types.go `memory`): byoc starts from that figure, as the NodePool does.
- Memory, GKE: 25% of the first 4 GiB, 20% of the next 4 GiB, 10% of the next 8 GiB, 6% of the next 112 GiB, 2% of
  anything above 128 GiB ("Plan GKE node sizes", as above).
- Memory, GKE, before any of that: the kubelet's capacity is the machine's memory less what the COS kernel keeps;
  the cluster autoscaler, which decides whether a pod fits a node pool at zero, estimates it as 1/64 of memory +
  16 MiB + 64 MiB (above 3 GiB) + min(0.175%, 248 MiB) (kubernetes/autoscaler, cluster-autoscaler/cloudprovider/gce/
  reserved.go, `CalculateKernelReserved`, COS).
- Eviction threshold, both: memory.available 100 MiB (nodeadm's and GKE's kubelet default; Karpenter's
  `evictionThreshold`).

Worked example, g2-standard-8 (8 vCPU, 32 GiB = 32768 MiB) on GKE: CPU reserved 60 + 10 + 10 + 4 x 2.5 = 90m,
allocatable 7910m. Memory: kernel 512 + 16 + 64 + 57.344 = 649.344 -> 650 MiB; kube-reserved 1024 + 819.2 + 819.2 +
983.04 = 3645.44 -> 3646 MiB; eviction 100 MiB: allocatable 32768 - 650 - 3646 - 100 = 28372 MiB (27.7 GiB; GKE's
formula alone on the nominal 32 GiB gives 29022 MiB, 28.3 GiB). Less the GKE GPU node's DaemonSets (530m, 1376 MiB)
one slot is 7380m / 26996 MiB.

What a pod needs at least (below which byoc refuses the shape on that machine) is byoc's own estimate; what it
requests is its whole slot, so a replica never competes with another for host CPU or memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from byoc.catalogs import InstanceType, ModelArch, load_catalog
from byoc.planner import weight_bytes
from byoc.rules import DeploymentShape

MIB = 1024**2
GIB_MIB = 1024

# CPU reservation tiers (start, end in millicores; ten-thousandths reserved): nodeadm, Karpenter and GKE alike.
CPU_TIERS: tuple[tuple[int, int, int], ...] = ((0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, 1 << 40, 25))
# GKE memory reservation tiers (start, end in GiB; fraction reserved), "Plan GKE node sizes".
GKE_MEMORY_TIERS: tuple[tuple[int, int, float], ...] = (
    (0, 4, 0.25),
    (4, 8, 0.20),
    (8, 16, 0.10),
    (16, 128, 0.06),
    (128, 1 << 30, 0.02),
)
EVICTION_HARD_MEMORY_MIB = 100  # memory.available<100Mi: the kubelet default on both clouds
KARPENTER_VM_MEMORY_OVERHEAD = 0.075  # Karpenter 1.8 settings.vmMemoryOverheadPercent default
KUBELET_DEFAULT_MAX_PODS = 110  # nodeadm's fallback where a type's ENI figures are unknown


@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in MiB, as a pod requests them."""

    cpu_m: int
    memory_mib: int

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_m + other.cpu_m, self.memory_mib + other.memory_mib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_m - other.cpu_m, self.memory_mib - other.memory_mib)

    def fits_in(self, room: Resources) -> bool:
        return self.cpu_m <= room.cpu_m and self.memory_mib <= room.memory_mib

    def at_most(self, room: Resources) -> Resources:
        return Resources(min(self.cpu_m, room.cpu_m), min(self.memory_mib, room.memory_mib))

    def quantities(self) -> dict[str, str]:
        """Kubernetes quantities: {"cpu": "7380m", "memory": "26996Mi"}."""
        return {"cpu": f"{self.cpu_m}m", "memory": f"{self.memory_mib}Mi"}

    def text(self) -> str:
        return f"{self.cpu_m / 1000:g} CPU / {self.memory_mib / GIB_MIB:.1f} GiB"

    def as_dict(self) -> dict[str, int]:
        return {"cpu_millicores": self.cpu_m, "memory_mib": self.memory_mib}


@dataclass(frozen=True)
class NodeAllocatable:
    """A machine type's allocatable, and the figures it comes from."""

    instance_type: str
    # what the kubelet reports, as the autoscalers estimate it before a node exists: EKS, EC2's memory less
    # Karpenter's VM overhead; GKE, the machine's memory less the COS kernel's reservation
    capacity: Resources
    kube_reserved: Resources
    eviction_memory_mib: int
    max_pods: int | None
    formula: str

    @property
    def allocatable(self) -> Resources:
        return self.capacity - self.kube_reserved - Resources(0, self.eviction_memory_mib)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "formula": self.formula,
            "capacity": self.capacity.as_dict(),
            "kube_reserved": self.kube_reserved.as_dict(),
            "eviction_memory_mib": self.eviction_memory_mib,
            "max_pods": self.max_pods,
            "allocatable": self.allocatable.as_dict(),
        }


def reserved_cpu_m(vcpus: int) -> int:
    """Kube-reserved CPU in millicores for a machine of `vcpus` (nodeadm's integer arithmetic)."""
    total = vcpus * 1000
    reserved = 0
    for start, end, per_10000 in CPU_TIERS:
        if total > start:
            reserved += (min(total, end) - start) * per_10000 // 10000
    return reserved


def gke_reserved_memory_mib(memory_mib: int) -> float:
    gib = memory_mib / GIB_MIB
    return sum(max(0.0, min(gib, end) - start) * share for start, end, share in GKE_MEMORY_TIERS) * GIB_MIB


def eks_max_pods(instance: InstanceType) -> int:
    """ENIs x (IPv4 per ENI - 1) + 2, as nodeadm and Karpenter count pods; 110 where the type's figures are unknown."""
    if instance.enis is None or instance.ipv4_per_eni is None:
        return KUBELET_DEFAULT_MAX_PODS
    return instance.enis * (instance.ipv4_per_eni - 1) + 2


def eks_allocatable(instance: InstanceType) -> NodeAllocatable:
    """EKS AL2023 (nodeadm) kubelet reservations on the memory Karpenter assumes before it has seen the type."""
    memory = instance.memory_mib - math.ceil(instance.memory_mib * KARPENTER_VM_MEMORY_OVERHEAD)
    pods = eks_max_pods(instance)
    return NodeAllocatable(
        instance_type=instance.name,
        capacity=Resources(instance.vcpus * 1000, memory),
        kube_reserved=Resources(reserved_cpu_m(instance.vcpus), 11 * pods + 255),
        eviction_memory_mib=EVICTION_HARD_MEMORY_MIB,
        max_pods=pods,
        formula="eks",
    )


def cos_kernel_reserved_mib(memory_mib: int) -> int:
    """Memory the Linux kernel of a Container-Optimized OS node keeps, so the kubelet's capacity is less than the
    machine's: the cluster autoscaler's estimate, with which it decides whether a pod fits a pool at zero
    (kubernetes/autoscaler cluster-autoscaler/cloudprovider/gce/reserved.go, `CalculateKernelReserved`: 1/64 of
    memory + 16 MiB, + 64 MiB software IO TLB above 3 GiB, + 8 MiB at 8 GiB or less, + COS correction
    min(0.175% of memory, 248 MiB))."""
    reserved = memory_mib / 64 + 16
    if memory_mib > 3 * GIB_MIB:
        reserved += 64
    if memory_mib <= 8 * GIB_MIB:
        reserved += 8
    reserved += min(0.00175 * memory_mib, 248)
    return math.ceil(reserved)


def gke_allocatable(instance: InstanceType) -> NodeAllocatable:
    """GKE Standard node reservations ("Plan GKE node sizes", on the machine's memory) on the capacity a COS node's
    kubelet reports (the machine's memory less the kernel's share, as the cluster autoscaler templates it)."""
    reserved_mib = math.ceil(gke_reserved_memory_mib(instance.memory_mib))
    return NodeAllocatable(
        instance_type=instance.name,
        capacity=Resources(instance.vcpus * 1000, instance.memory_mib - cos_kernel_reserved_mib(instance.memory_mib)),
        kube_reserved=Resources(reserved_cpu_m(instance.vcpus), reserved_mib),
        eviction_memory_mib=EVICTION_HARD_MEMORY_MIB,
        max_pods=None,
        formula="gke",
    )


def daemonset_requests(daemonsets: Sequence[Mapping[str, Any]]) -> Resources:
    """The sum of the GPU node DaemonSets' allowances (byoc/catalogs/kubernetes.yaml gpu_node_daemonsets)."""
    return Resources(sum(int(d["cpu_m"]) for d in daemonsets), sum(int(d["memory_mib"]) for d in daemonsets))


def slot(node: NodeAllocatable, daemonsets: Resources, replicas_per_node: int) -> Resources:
    """One pod's share of a node: what is left after the DaemonSets, split between the replicas it holds."""
    free = node.allocatable - daemonsets
    return Resources(max(0, free.cpu_m // replicas_per_node), max(0, free.memory_mib // replicas_per_node))


# --- what a GPU pod needs at least (byoc's estimate) -----------------------------------------------------------
# The process itself: Python, the CUDA context's host side, tokenizer, NCCL and pinned staging buffers.
HOST_PROCESS_MIB = 4 * GIB_MIB
# A checkpoint passes through host memory a shard at a time (Hugging Face's default max_shard_size is 5 GB).
SHARD_MIB = 5 * 1000**3 // MIB
# accelerate's device_map="auto" (runtime/model_build/checkpoint.py) fills GPUs up to about 90% before it offloads
# the rest of the BF16 source to host memory.
GPU_FILL = 0.9
# A core per GPU rank, plus one for the server's HTTP, tokenizer and scheduler threads.
CPU_PER_GPU_M = 1000
CPU_BASE_M = 1000
# The sidecar and init container of the serving pod (stacks/k8s/serving.py): fixed, small requests.
ENGINE_STATS = Resources(100, 128)
FETCH_ARTIFACTS = Resources(2000, 4 * GIB_MIB)


@dataclass(frozen=True)
class PodNeeds:
    """The least a serving pod and the build Job can run with."""

    serving: Resources
    build: Resources

    def as_dict(self) -> dict[str, Any]:
        return {"serving": self.serving.as_dict(), "build": self.build.as_dict()}


def pod_needs(shape: DeploymentShape, model: ModelArch | None = None) -> PodNeeds:
    """Without a model: what any model needs (the process and one shard)."""
    cpu = CPU_BASE_M + CPU_PER_GPU_M * shape.count
    serving_mib = HOST_PROCESS_MIB + SHARD_MIB
    build_mib = serving_mib
    if model is not None:
        served = weight_bytes(model, shape.precision) // MIB
        serving_mib = HOST_PROCESS_MIB + min(served, SHARD_MIB)
        source = weight_bytes(model, "bf16")
        offloaded = max(0, source - int(shape.memory_bytes * GPU_FILL)) // MIB
        build_mib = HOST_PROCESS_MIB + min(source // MIB, SHARD_MIB) + offloaded
    return PodNeeds(serving=Resources(cpu, serving_mib) + ENGINE_STATS, build=Resources(cpu, build_mib))


@dataclass(frozen=True)
class PodSizing:
    """The requests byoc renders for the GPU pods of a deployment (limits equal them: Guaranteed QoS)."""

    instance_types: tuple[str, ...]  # the pool's types, every one of which holds these requests
    priced_on: str  # the type the cost is worked out on (the first of instance_types)
    allocatable: NodeAllocatable  # of priced_on
    daemonsets: Resources
    replicas_per_node: int
    slot: Resources  # the smallest slot of the pool's types: what the serving pod and the build Job request
    needs: PodNeeds

    @property
    def engine(self) -> Resources:
        """trtllm-serve's container: the slot less the engine-stats sidecar."""
        return self.slot - ENGINE_STATS

    @property
    def sidecar(self) -> Resources:
        return ENGINE_STATS

    @property
    def init(self) -> Resources:
        """The artifact fetch runs before the containers start: it may use up to the slot, never above it."""
        return FETCH_ARTIFACTS.at_most(self.slot)

    @property
    def serving_pod(self) -> Resources:
        """What the scheduler counts: the containers' sum or the largest init container, whichever is larger."""
        containers = self.engine + self.sidecar
        return Resources(max(containers.cpu_m, self.init.cpu_m), max(containers.memory_mib, self.init.memory_mib))

    @property
    def build(self) -> Resources:
        return self.slot

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_types": list(self.instance_types),
            "priced_on": self.priced_on,
            "node": self.allocatable.as_dict(),
            "daemonsets": self.daemonsets.as_dict(),
            "replicas_per_node": self.replicas_per_node,
            "slot": self.slot.as_dict(),
            "needs": self.needs.as_dict(),
            "serving": {
                "trtllm-serve": self.engine.as_dict(),
                "engine-stats": self.sidecar.as_dict(),
                "init fetch-artifacts": self.init.as_dict(),
                "pod": self.serving_pod.as_dict(),
            },
            "build": self.build.as_dict(),
        }


# --- ephemeral storage: what the GPU pods write on the node's root filesystem -----------------------------------
# Every byte a pod writes to its emptyDir volumes (the artifact it fetches into /models, the build Job's source and
# output, caches under /scratch), its containers' writable layers and its logs counts against its ephemeral-storage
# limit, and the kubelet evicts a pod whose total passes the sum of its containers' limits (Kubernetes, "Local
# ephemeral storage"). So the request (= limit) is what the pod writes, from the model, not a round number; the
# scheduler places pods by those requests against the node's ephemeral-storage allocatable; and the node's root
# disk (the EC2NodeClass's volume, the GKE node pool's boot disk) is sized so that every slot of the pool's largest
# node, plus what the node keeps outside any pod, fits it.
EPHEMERAL_SPARE = 1.15  # engine files, tokenizer and config beside the weights, and filesystem overhead
SERVING_SCRATCH_GIB = 10  # the serving pod's /scratch: HOME, Triton's and other JIT caches (stacks/k8s/serving.py)
CONTAINER_FILES_GIB = 2  # the containers' writable layers and their logs
# What a GPU node keeps on its root filesystem outside every pod's request: the OS (AL2023 about 4 GiB), the kubelet
# and containerd state, and the images pulled (the TensorRT-LLM release container is about 20 GiB compressed, about
# twice that unpacked, plus byoc's runtime image).
NODE_FILES_GIB = 50
DISK_STEP_GIB = 50  # root disks are sized in steps of 50 GiB
# EKS (nodeadm and Karpenter alike): kube-reserved ephemeral-storage 1 GiB, eviction at nodefs.available 10%
# (karpenter-provider-aws pkg/providers/instancetype/types.go, `kubeReservedResources` and `evictionThreshold`:
# ceil(storage / 100 * 10)); the capacity Karpenter assumes is the root volume's size.
EKS_EPHEMERAL_RESERVED_GIB = 1.0
EVICTION_NODEFS_FRACTION = 0.10
GIB = 1024**3


def eks_ephemeral_allocatable_gib(disk_gib: float) -> float:
    """A Karpenter-launched EKS node's ephemeral-storage allocatable on a root volume of `disk_gib`."""
    return disk_gib - EKS_EPHEMERAL_RESERVED_GIB - math.ceil(disk_gib * GIB * EVICTION_NODEFS_FRACTION) / GIB


def cos_os_reserved_gib(disk_gib: float) -> float:
    """The boot disk a Container-Optimized OS node's OS partitions keep, as the cluster autoscaler estimates it
    (kubernetes/autoscaler cluster-autoscaler/cloudprovider/gce/reserved.go, `CalculateOSReservedEphemeralStorage`:
    1.5635% of the disk + 4.148 GiB, + min(100 MiB, 0.1%) over-provisioning buffer)."""
    disk = disk_gib * GIB
    reserved = math.ceil(0.015635 * disk) + math.ceil(4.148 * GIB) + min(100 * MIB, math.ceil(0.001 * disk))
    return reserved / GIB


def gke_ephemeral_allocatable_gib(disk_gib: float) -> float:
    """A GKE Standard node's ephemeral-storage allocatable on a boot disk of `disk_gib`: the capacity the kubelet
    reports (the disk less the COS partitions, `cos_os_reserved_gib`), less GKE's system reservation min(50%,
    6 GiB + 35%, 100 GiB) of it and the eviction threshold, 10% of it ("Plan GKE node sizes", "Local ephemeral
    storage reservation"; the autoscaler's eviction default, reserved.go `defaultKubeletEvictionHardEphemeral
    StorageRatio`)."""
    capacity = disk_gib - cos_os_reserved_gib(disk_gib)
    system = min(0.5 * capacity, 6 + 0.35 * capacity, 100.0)
    return capacity - system - EVICTION_NODEFS_FRACTION * capacity


# Where the serving pods' /models lies (spec cold_start.weights_cache): "per_pod", each replica's own emptyDir (its
# ephemeral storage); "per_node", one copy per node in the node's ephemeral storage outside the pods' requests (AWS
# node_cache: the Mountpoint Pod's cache emptyDir, stacks/k8s/weights.py); "volume", a volume outside the node's
# ephemeral storage (GKE node_cache: the Hyperdisk ML volume attached read-only).
WeightsCopy = Literal["per_pod", "per_node", "volume"]


def artifact_gib(model: ModelArch, precision: str) -> int:
    """The built artifact as /models holds it, GiB (its weights and a margin for the engine's files)."""
    return math.ceil(weight_bytes(model, precision) / GIB * EPHEMERAL_SPARE)


def _volume_overheads() -> Mapping[str, Any]:
    overheads: Mapping[str, Any] = load_catalog().kubernetes["volume_overheads"]
    return overheads


def ext4_volume_gib(data_gib: float) -> int:
    """The smallest volume, whole GiB, whose ext4 filesystem made with mke2fs's defaults leaves `data_gib` free to
    write: the volume less its inode tables, bitmaps, reserved blocks and journal (byoc/catalogs/kubernetes.yaml
    volume_overheads.ext4, with its sources)."""
    ext4 = _volume_overheads()["ext4"]
    block = int(ext4["block_size"])
    # inode tables, 5% reserved, and two bitmap blocks per group of 8 x block_size blocks
    fraction = int(ext4["inode_size"]) / int(ext4["inode_ratio"]) + float(ext4["reserved_ratio"]) + 2 / (8 * block)
    return math.ceil((data_gib + int(ext4["journal_max_mib"]) / 1024) / (1 - fraction))


def mountpoint_cache_gib(data_gib: float) -> int:
    """The Mountpoint Pod's cache emptyDir size limit (cacheEmptyDirSizeLimit, which the CSI driver also makes
    Mountpoint's max-cache-size) that holds `data_gib` of objects without an eviction, whole GiB: each block's file
    rounded up on disk, and headroom for blocks being written (byoc/catalogs/kubernetes.yaml
    volume_overheads.mountpoint_cache, with its sources)."""
    cache = _volume_overheads()["mountpoint_cache"]
    per_block = 1 + int(cache["per_block_kib"]) / 1024 / float(cache["block_mib"])
    return math.ceil(data_gib * per_block + float(cache["headroom_gib"]))


def serving_ephemeral_gib(model: ModelArch, precision: str, weights_copy: WeightsCopy = "per_pod") -> int:
    """A serving pod's ephemeral-storage request and limit: /scratch and its containers, and the artifact in /models
    when the pod holds its own copy (`weights_copy` per_pod)."""
    own = artifact_gib(model, precision) if weights_copy == "per_pod" else 0
    return own + SERVING_SCRATCH_GIB + CONTAINER_FILES_GIB


def build_ephemeral_gib(model: ModelArch, precision: str) -> int:
    """The build Job's: the BF16 source checkpoint and the built artifact side by side in /scratch."""
    both = (weight_bytes(model, "bf16") + weight_bytes(model, precision)) / GIB * EPHEMERAL_SPARE
    return math.ceil(both) + CONTAINER_FILES_GIB


@dataclass(frozen=True)
class DiskPlan:
    """The GPU pods' ephemeral storage and the root disk of the GPU nodes that holds them (GiB)."""

    serving_gib: int  # a serving pod's ephemeral-storage request (= limit)
    build_gib: int  # the build Job's
    slots: int  # pods on the pool's fullest node (its GPUs / the shape's)
    node_disk_gib: int  # the root disk every node of the pool gets
    allocatable_gib: float  # ephemeral-storage allocatable of that disk, by the cloud's formula
    formula: str
    # "root_disk", or "local_nvme": the node's ephemeral storage (pods' emptyDirs, images, logs) is its local NVMe
    # (local_nvme_plan), and the root disk holds only the OS
    ephemeral_on: str = "root_disk"
    local_nvme_gib: float | None = None  # the fullest node's NVMe, when ephemeral_on is local_nvme
    # the built artifact as /models holds it (stacks/k8s/serving.py sizes a pod's emptyDir, and node_cache its
    # shared copy, with it)
    artifact_gib: int = 0
    weights_copy: WeightsCopy = "per_pod"
    # local_ssd or node_cache asked, and the root disk holds the pods: which type of the pool cannot, and why
    why_root_disk: str = ""

    @property
    def node_copy_gib(self) -> int:
        """The node's one copy of the artifact outside the pods' requests (weights_copy per_node: the Mountpoint
        Pod's cache emptyDir, its size limit with the cache's overhead, `mountpoint_cache_gib`), GiB."""
        return mountpoint_cache_gib(self.artifact_gib) if self.weights_copy == "per_node" else 0

    @property
    def required_gib(self) -> int:
        """What must fit the allocatable: the fullest node, with the build Job (one per deployment) in one slot and
        replicas in the others, the node's one copy of the weights where it keeps one, and the node's own files."""
        return required_gib(self.serving_gib, self.build_gib, self.slots, self.node_copy_gib)

    def as_dict(self) -> dict[str, Any]:
        return {
            "serving_ephemeral_gib": self.serving_gib,
            "build_ephemeral_gib": self.build_gib,
            "pods_per_node": self.slots,
            "node_files_gib": NODE_FILES_GIB,
            "required_gib": self.required_gib,
            "node_disk_gib": self.node_disk_gib,
            "ephemeral_allocatable_gib": round(self.allocatable_gib, 2),
            "formula": self.formula,
            "ephemeral_on": self.ephemeral_on,
            "local_nvme_gib": None if self.local_nvme_gib is None else round(self.local_nvme_gib, 1),
            "artifact_gib": self.artifact_gib,
            "weights_copy": self.weights_copy,
            "node_copy_gib": self.node_copy_gib,
        }


def required_gib(serving_gib: int, build_gib: int, slots: int, node_copy_gib: int = 0) -> int:
    """Ephemeral storage the fullest node must allocate: one slot the larger of a replica and the build Job (a
    deployment runs one build Job), the other slots replicas, the node's one copy of the weights (node_cache on AWS:
    the Mountpoint Pod's cache, which no serving pod requests) and what the node keeps outside pods."""
    return (slots - 1) * serving_gib + max(serving_gib, build_gib) + node_copy_gib + NODE_FILES_GIB


def ephemeral_allocatable_gib(formula: str, disk_gib: float) -> float:
    """The ephemeral-storage allocatable of `disk_gib` (root disk or local NVMe) by the cloud's `formula` ("eks" or
    "gke"), GiB."""
    return {"eks": eks_ephemeral_allocatable_gib, "gke": gke_ephemeral_allocatable_gib}[formula](disk_gib)


def disk_plan(
    model: ModelArch, precision: str, slots: int, formula: str, weights_copy: WeightsCopy = "per_pod"
) -> DiskPlan:
    """The smallest root disk (in DISK_STEP_GIB steps) whose ephemeral-storage allocatable, by `formula` ("eks" or
    "gke"), holds the fullest node's pods (`required_gib`)."""

    def allocatable(gib: float) -> float:
        return ephemeral_allocatable_gib(formula, gib)

    serving, build = serving_ephemeral_gib(model, precision, weights_copy), build_ephemeral_gib(model, precision)
    artifact = artifact_gib(model, precision)
    required = required_gib(serving, build, slots, mountpoint_cache_gib(artifact) if weights_copy == "per_node" else 0)
    disk = DISK_STEP_GIB
    while allocatable(disk) < required:
        disk += DISK_STEP_GIB
    return DiskPlan(
        serving, build, slots, disk, allocatable(disk), formula, artifact_gib=artifact, weights_copy=weights_copy
    )


# --- ephemeral storage on the node's local NVMe (cold_start.weights_cache: local_ssd) ---------------------------
# Karpenter's `instanceStorePolicy: RAID0` stripes the instance store and makes it the node's ephemeral storage: the
# kubelet's and containerd's directories and the pod logs move onto it, and Karpenter counts its whole size as the
# node's ephemeral-storage capacity (karpenter.sh/docs/concepts/nodeclasses, "spec.instanceStorePolicy";
# karpenter-provider-aws pkg/providers/instancetype/types.go, `ephemeralStorage`: TotalSizeInGB, decimal G). GKE's
# `ephemeralStorageLocalSsdConfig` does the same with Local SSD (GKE docs, "Provision and use Local SSD-backed
# ephemeral storage"). The root disk then holds only the OS, its logs and the kubelet's own files.
OS_ONLY_ROOT_DISK_GIB = 100
LOCAL_SSD_GIB = 375  # one GCP Local SSD disk (Compute Engine "About Local SSD disks")


def local_nvme_plan(
    model: ModelArch, precision: str, slots: int, formula: str, nvme_gib: float, weights_copy: WeightsCopy = "per_pod"
) -> DiskPlan | None:
    """The pods' ephemeral storage on `nvme_gib` of local NVMe (allocatable by the same cloud formula as a root disk
    of that size: on GKE an estimate, GKE's Local SSD reservation is not published per disk count), with the root
    disk cut to the OS's; None when the fullest node's pods do not fit it (the root disk plan applies then)."""
    allocatable = ephemeral_allocatable_gib(formula, nvme_gib)
    serving, build = serving_ephemeral_gib(model, precision, weights_copy), build_ephemeral_gib(model, precision)
    artifact = artifact_gib(model, precision)
    # images live on the NVMe too, so NODE_FILES_GIB (in required_gib) still counts against it
    node_copy = mountpoint_cache_gib(artifact) if weights_copy == "per_node" else 0
    if allocatable < required_gib(serving, build, slots, node_copy):
        return None
    return DiskPlan(
        serving,
        build,
        slots,
        OS_ONLY_ROOT_DISK_GIB,
        allocatable,
        formula,
        "local_nvme",
        nvme_gib,
        artifact,
        weights_copy,
    )
