"""Google Cloud: regions, machine types and Cloud KMS key ids (offerings from the offline table); the live preflight
and the leftover sweep."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from byoc.caches import POPULATED_DISK_DETAIL, ImageCache, SharedWeightsDisk, WeightsCache
from byoc.catalogs import InstanceType, load_catalog
from byoc.clouds.base import AddressRoom, Cloud, Feature, LaunchStep, NodeProvisioner, Placement, Refusal
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepReport, SweepTarget
from byoc.errors import ByocError, removal, setting, stated
from byoc.rules import DeploymentShape
from byoc.sizing import LOCAL_SSD_GIB, DiskPlan, NodeAllocatable, ext4_volume_gib, gke_allocatable
from byoc.spec import Spec

# What people write when they mean Google's default encryption at rest: no key of theirs at all.
GOOGLE_MANAGED = frozenset(
    {"google", "google-managed", "google_managed", "gmek", "google-default-encryption", "google_default_encryption"}
)


# Pods per node sizes each node's slice of the pods range: GKE gives a node the smallest block with at least twice
# as many addresses (GKE docs, "Configure maximum Pods per node": 17-32 pods a /26, 33-64 a /25, 65-110 a /24).
# Changing either replaces the cluster or the pool.
MAX_PODS_PER_NODE = 64  # the cluster's default, so the system pool's: a /25
GPU_MAX_PODS_PER_NODE = 32  # a /26 of the pods range: a few serving replicas and the node's daemons
# GKE Standard: at most 15,000 nodes per cluster (GKE docs, "Quotas and limits", limits per cluster; beyond 5,000
# only once Google lifts a cluster size quota).
GKE_MAX_NODES = 15_000
# A regional cluster's node pools span three zones of the region unless told otherwise (GKE docs, "Regional
# clusters"); the system pool's max_per_zone counts per zone.
SYSTEM_POOL_ZONES = 3
# The GPU pool's zones are those of the region that offer its machine type, read at deploy (stacks/gcp/capacity.py
# offering_zones); an estimate prices as many as a regional cluster spans by default (the same GKE docs page), which
# the offline plan renders too (byoc/clouds/gcp_offline.py answers three zones).
GPU_POOL_ZONES = SYSTEM_POOL_ZONES
# Google Cloud reserves four addresses of a subnet's primary range (VPC docs, "Reserved IP addresses in IPv4
# subnets"); the gateway's internal load balancer takes one more from it.
NODE_RANGE_TAKEN = 4 + 1


@dataclass(frozen=True)
class AddressPlan:
    """How the spec's CIDR is divided: nodes a quarter, pods half, services an eighth, and the control plane a /28
    (a /16 gives /18 nodes, /17 pods, /19 services); the gateway's shared store (Memorystore through private
    services access) a /24 at the start of the last eighth, the control plane's /28 at its end."""

    nodes: str
    pods: str
    services: str
    control_plane: str
    store: str = ""


def address_plan(cidr: str) -> AddressPlan:
    network = ipaddress.IPv4Network(cidr)
    first, second = network.subnets(prefixlen_diff=1)
    nodes, rest = first.subnets(prefixlen_diff=1)
    services, spare = rest.subnets(prefixlen_diff=1)
    control_plane = list(spare.subnets(new_prefix=28))[-1]
    # Private services access wants an allocated range of at least a /24 (Memorystore for Redis docs, "Private
    # services access"); the spare eighth of a /20 (the smallest CIDR the spec takes) is a /23
    store = next(spare.subnets(new_prefix=24))
    return AddressPlan(str(nodes), str(second), str(services), str(control_plane), str(store))


def machine_series(machine_type: str) -> str:
    """a3-highgpu-8g -> a3-highgpu; g2-standard-24 -> g2-standard."""
    return machine_type.rsplit("-", 1)[0]


def _minor(version: str) -> tuple[int, int]:
    """GKE's "1.33.2-gke.4780000" or "1.34" -> (1, 33) or (1, 34)."""
    major, minor = version.split("-", 1)[0].split(".")[:2]
    return int(major), int(minor)


def pod_block(max_pods: int) -> int:
    """Addresses of the pods range one node takes: a power of two at least twice its max pods."""
    return 1 << math.ceil(math.log2(2 * max_pods))


# GKE's tool for a disk image with container images pre-pulled, run from GoogleCloudPlatform/ai-on-gke
# tools/gke-disk-image-builder (GKE docs, "Use secondary boot disks to preload data or container images", "Prepare
# the secondary boot disk image"): it starts a VM, pulls the image into a disk and makes a disk image of it.
GKE_DISK_IMAGE_BUILDER = (
    "build a disk image with the serving image pulled (GoogleCloudPlatform/ai-on-gke, tools/gke-disk-image-builder: "
    "go run ./cli --project-name=PROJECT --image-name=byoc-serving-cache --zone=ZONE --gcs-path=gs://LOG_BUCKET "
    "--disk-size-gb=100 --container-image={image})"
)


class Gcp(Cloud):
    name = "gcp"
    title = "Google Cloud"
    key_pattern = re.compile(
        r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/locations/(?P<region>[a-z0-9-]+)/keyRings/[\w-]+/cryptoKeys/[\w-]+$"
    )
    key_example = "projects/my-project/locations/europe-west4/keyRings/byoc/cryptoKeys/cluster"
    object_store_scheme = "gs://"
    # GKE master authorized networks: at most 50 CIDRs for a cluster's public endpoint (GKE docs, "Add authorized
    # networks for control plane access"); private ranges reach the private endpoint from inside the VPC instead.
    allowed_cidrs_max = 50
    allowed_cidrs_private = False
    private_allowlist_reason = (
        "byoc authorizes the VPC's own range itself and keeps other private ranges off the control plane's "
        "allowlist: reach the private endpoint from them through Cloud VPN or Interconnect"
    )
    unsupported_fields: ClassVar[dict[str, str]] = {
        "node_image": "GKE nodes run Container-Optimized OS at the cluster's GKE version, held by a maintenance "
        "exclusion (docs/gcp-foundation.md); node_image is a Karpenter AMI alias on AWS",
        "encryption.ebs_default": "it is the AWS account's EBS setting; GKE boot disks and volumes are encrypted "
        "with the deployment's Cloud KMS keys already",
        "network.nat_gateways": "Cloud NAT is regional: one NAT serves every zone",
    }
    stack_program = "stacks.gcp.program:program"
    global_stack_program = "stacks.gcp.global_layer:program"
    offline_answers = "byoc.clouds.gcp_offline"
    stack_extra = "gcp"  # pulumi_gcp comes with the gcp extra
    provider_sdk = "pulumi-gcp"
    unsupported_features: ClassVar[Mapping[Feature, str]] = {
        Feature.LIVE_EVIDENCE: "no collector reads Google Cloud accounts yet; the evidence pack of the plan (`byoc "
        "compliance report --plan byoc-out/plan.json`) holds every GCP check",
        Feature.LIVE_OFFERINGS: "Google Cloud offerings come from the offline table (byoc/catalogs/instances.yaml); "
        "`byoc preflight` asks Compute Engine for the zones of the deployment's machine type",
        Feature.NODE_POOL_FALLBACKS: "a GKE node pool has one machine type",
    }
    # weights_cache node_cache: a Hyperdisk ML volume filled by the GKE Volume Populator (stacks/gcp/weights.py).
    # Cloud Storage FUSE's file cache would be per pod, not per node. The populator copies the prefix once, when the
    # claim is created; a secondary region's bucket receives the artifact later, by replication, and its claim would
    # be filled before it arrives.
    node_weights_multi_region = (
        "on GKE the shared weights are a Hyperdisk ML volume that the GKE Volume Populator fills once, when the "
        "claim is created, and the other regions receive the artifact later, by replication"
    )
    node_cache_weights_copy = "volume"  # the Hyperdisk ML volume: no copy in a node's ephemeral storage
    # GKE's cluster autoscaler sizes the GPU node pool, a resource of the stack (stacks/gcp/capacity.py): Pulumi
    # deletes it with its nodes, and `byoc scale` moves its bound.
    node_provisioner = NodeProvisioner(
        name="the GKE cluster autoscaler",
        pool_label="cloud.google.com/gke-nodepool",
        scale_changes={"gcp:container/nodePool:NodePool": frozenset({"autoscaling.totalMaxNodeCount"})},
        replace_guarded=frozenset({"gcp:container/cluster:Cluster", "gcp:container/nodePool:NodePool"}),
        # the cluster autoscaler's event on the pod ("pod triggered scale-up: [{GROUP 0->1 (max: N)}]",
        # kubernetes/autoscaler cluster-autoscaler/processors/status/eventing_scale_up_processor.go)
        launch_steps=(
            LaunchStep("TriggeredScaleUp", "Pod", "the new VM to boot, install its GPU driver and join the node pool"),
        ),
        # its refusals on the pod: a scale-up that failed, or none it would make (capacity_blockers)
        refusals=(Refusal("FailedScaleUp"), Refusal("NotTriggerScaleUp")),
    )

    def capacity_blockers(self, cluster: Any, node_pool: str, waiting: list[dict[str, Any]]) -> list[str]:
        """The cluster autoscaler's refusals on each `waiting` serving pod since it was made (never another
        pod's, such as the GKE Volume Populator's transfer pod), each while no TriggeredScaleUp for the pod is newer (a
        scale-up retried in another zone supersedes an older failure):
        - FailedScaleUp ("Node scale up in zones ... associated with this pod failed: GCE quota exceeded | GCE out of
          resources | IP space exhausted ...", GKE's cluster autoscaler; kubernetes/autoscaler
          cluster-autoscaler/core/scaleup/orchestrator/executor.go records "FailedScaleUp" on the pods);
        - NotTriggerScaleUp ("pod didn't trigger scale-up: ...", "pod didn't trigger scale-up (it wouldn't fit if a
          new node is added): ...", cluster-autoscaler/processors/status/eventing_scale_up_processor.go), with the
          node groups' reasons: "max node group size reached", "in backoff after failed scale-up", "Insufficient
          nvidia.com/gpu" (a new node would not hold the pod), "node(s) didn't match Pod's node affinity/selector".
        The pool's own objects are the stack's node pool, which publishes no events of its own here."""
        from byoc.kube_events import event_time, events_about, message_of

        provisioner = self.node_provisioner
        events = [e for e in cluster.list("events") or [] if isinstance(e, dict)]
        reasons: list[str] = []
        for pod in waiting:
            mine = events_about(events, [pod])
            moved = provisioner.launch_progress(mine, events)
            for event in mine:
                when = event_time(event)
                if not provisioner.refused(event) or (moved is not None and when is not None and moved > when):
                    continue  # not a refusal, or a scale-up triggered since it: a node is coming
                reasons.append(scale_up_refusal(str(event.get("reason")), message_of(event)))
        return reasons

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None

    def local_nvme_gib(self, instance: InstanceType) -> float | None:
        return None if not instance.local_ssds else float(instance.local_ssds * LOCAL_SSD_GIB)

    def check_node_weights(self, pool: tuple[str, ...], field: str) -> None:
        """Every machine type of the pool must attach Hyperdisk ML (Compute Engine "Accelerator-optimized machine
        family", supported disk types: byoc/catalogs/kubernetes.yaml gke.hyperdisk_ml), and the cluster's GKE
        version must have the GKE Volume Populator for it."""
        hdml = load_catalog().kubernetes["gke"]["hyperdisk_ml"]
        series = hdml["machine_series"]
        cannot = [name for name in pool if machine_series(name) not in series]
        if cannot:
            raise ByocError(
                field,
                f"node_cache on GKE is a Hyperdisk ML volume attached read-only to every GPU node, and "
                f"{', '.join(cannot)} cannot attach Hyperdisk ML (the machine series that can: {', '.join(series)})",
                f"{setting('cold_start.weights_cache', 'local_ssd')}, or use a shape whose machine type is of one of "
                "those series",
            )
        version = load_catalog().kubernetes["gke"]["version"]
        if _minor(version) < _minor(hdml["min_gke_version"]):
            raise ByocError(
                field,
                f"the GKE Volume Populator fills Hyperdisk ML volumes from GKE {hdml['min_gke_version']}; the "
                f"cluster runs {version}",
                setting("cold_start.weights_cache", "local_ssd"),
            )

    def node_weights_cache(
        self, pool: tuple[str, ...], disk: DiskPlan, weights: WeightsCache, field: str
    ) -> WeightsCache:
        """A Hyperdisk ML volume per zone of the pool, filled once per build by the GKE Volume Populator; priced per
        zone from the catalog's list prices. Its size: the artifact plus what ext4, which the PD CSI driver formats
        it with, keeps for itself (byoc/sizing.py ext4_volume_gib)."""
        hdml = load_catalog().kubernetes["gke"]["hyperdisk_ml"]
        size = max(ext4_volume_gib(disk.artifact_gib), int(hdml["min_size_gib"]))
        throughput = int(hdml["provisioned_throughput_mib_s"])
        monthly = size * float(hdml["usd_per_gib_month"]) + throughput * float(hdml["usd_per_mib_s_month"])
        return WeightsCache(
            "hyperdisk_ml",
            None,
            POPULATED_DISK_DETAIL.format(size=size, throughput=throughput),
            shared_by_node=True,
            shared_through="a Hyperdisk ML volume per zone, filled by the GKE Volume Populator",
            disk=SharedWeightsDisk(
                "hyperdisk-ml", size, throughput, monthly, str(hdml["price_source"]), zones=GPU_POOL_ZONES
            ),
        )

    def image_cache(self, spec: Spec, serving_image: str, disk: DiskPlan) -> ImageCache:
        """A secondary boot disk that holds the image (GKE >= 1.28.3-gke.1067000; it needs image streaming on),
        else image streaming alone, which only images in Artifact Registry get (GKE docs, "Use secondary boot disks
        to preload data or container images" and "Use Image streaming to pull container images")."""
        if not spec.cold_start.image_cache:
            if spec.cold_start.image_disk:
                # a disk image the nodes would not attach: said, not ignored (a user who set it expects no pull)
                raise ByocError(
                    "cold_start.image_disk",
                    f"is set but {stated('cold_start.image_cache', False)} turns the image cache off, so no GPU "
                    "node would attach the disk image: each would pull the serving image",
                    f"{removal('cold_start.image_disk')}, or {setting('cold_start.image_cache', True)}",
                )
            return ImageCache("pulled", "cold_start.image_cache is false: each new GPU node pulls the serving image")
        disk_image = spec.cold_start.image_disk
        if disk_image:
            return ImageCache(
                "secondary_boot_disk",
                "each new GPU node attaches the disk image as a secondary boot disk (CONTAINER_IMAGE_CACHE): "
                "containerd finds the serving image's layers on it and pulls nothing",
                disk_image=disk_image,
            )
        builder = GKE_DISK_IMAGE_BUILDER.format(image=serving_image)
        if serving_image.split("/", 1)[0].endswith("-docker.pkg.dev"):
            return ImageCache(
                "image_streaming",
                "each new GPU node streams the serving image from Artifact Registry (image streaming): the "
                "container starts before the whole image is there, the rest is read as it is used",
                how=f"for no pull at all: {builder}, then set cold_start.image_disk",
            )
        return ImageCache(
            "pulled",
            f"each new GPU node pulls the serving image: it is not in Artifact Registry ({serving_image}), so "
            "image streaming does not apply, and cold_start.image_disk is not set",
            how=f"mirror the image into Artifact Registry (images.serving) for image streaming, or {builder} and "
            "set cold_start.image_disk",
        )

    def node_allocatable(self, instance: InstanceType) -> NodeAllocatable:
        # GKE Standard's reservations ("Plan GKE node sizes"); the node pool has one machine type
        return gke_allocatable(instance)

    def address_room(
        self, cidr: str, shape: DeploymentShape, placement: Placement, pool: tuple[str, ...]
    ) -> AddressRoom | None:
        # Nodes take addresses from the subnet's primary range, and each a block of the pods secondary range; the
        # cluster has a node limit of its own. The GPU pool grows to every replica plus the model build Job.
        plan = address_plan(cidr)
        system = load_catalog().kubernetes["gke"]["system_nodes"]
        system_nodes = int(system["max_per_zone"]) * SYSTEM_POOL_ZONES
        pods_range = ipaddress.IPv4Network(plan.pods).num_addresses
        nodes_range = ipaddress.IPv4Network(plan.nodes).num_addresses
        gpu_block, system_block = pod_block(GPU_MAX_PODS_PER_NODE), pod_block(MAX_PODS_PER_NODE)
        by_pods = (pods_range - system_nodes * system_block) // gpu_block
        by_subnet = nodes_range - NODE_RANGE_TAKEN - system_nodes
        limits = [
            (
                by_pods,
                f"the pods range {plan.pods} ({pods_range:,} addresses) gives each of the {system_nodes} system nodes "
                f"{system_block} and each GPU node {gpu_block} ({GPU_MAX_PODS_PER_NODE} pods a node, a block of twice "
                "as many addresses)",
            ),
            (
                by_subnet,
                f"the node range {plan.nodes} has {nodes_range - NODE_RANGE_TAKEN:,} addresses for nodes (Google "
                f"Cloud reserves 4, the gateway's load balancer takes 1), {system_nodes} of them system nodes",
            ),
            (
                GKE_MAX_NODES - system_nodes,
                f"a GKE Standard cluster holds at most {GKE_MAX_NODES:,} nodes, {system_nodes} of them system nodes",
            ),
        ]
        nodes, limit = min(limits, key=lambda item: item[0])
        per_node = placement.replicas_per_node
        return AddressRoom(
            max(0, nodes) * per_node - 1,  # one slot is the model build Job's
            f"{limit}, so {max(0, nodes):,} {placement.instance_type} node(s) of {per_node} replica(s) each, one slot "
            "kept for the model build Job",
        )

    def provider_managed_key(self, key: str) -> str | None:
        # Google-managed encryption keys are Google's: you cannot revoke them, rotate them on your schedule or see
        # their use in your audit logs, and GKE secrets encryption and CMEK buckets take a Cloud KMS key only.
        if key.strip().lower() in GOOGLE_MANAGED:
            return (
                f"{key!r} is Google-managed encryption: Google holds that key, so you cannot revoke it, rotate it or "
                "audit its use, and GKE secrets encryption and CMEK buckets need a Cloud KMS key of yours"
            )
        if "/cryptoKeyVersions/" in key:
            return f"{key!r} is a key version: GKE, Compute Engine and Cloud Storage take the key, and rotate it"
        return None

    def preflight(self, need: CapacityNeed) -> PreflightReport:
        """Credentials, the GPU's zones in the region and the GPU quotas (byoc/clouds/gcp_preflight.py)."""
        from byoc.clouds.gcp_preflight import preflight

        return preflight(need)

    def sweep(self, target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
        """What is left labelled byoc-deployment=<name> (or named after it) once the stack is destroyed
        (byoc/clouds/gcp_sweep.py)."""
        from byoc.clouds.gcp_sweep import sweep

        return sweep(target, delete, **options)


def scale_up_refusal(reason: str, message: str) -> str:
    """The cluster autoscaler's refusal of a scale-up for a pod, in its words with what it means: `reason`
    FailedScaleUp or NotTriggerScaleUp, `message` the event's (see `Gcp.capacity_blockers` for the sources)."""
    if reason == "FailedScaleUp":
        if "quota exceeded" in message:
            return f"no GPU quota: {message} (ask for more: `byoc preflight` shows the quotas)"
        if "out of resources" in message:
            return f"no capacity in the zone: {message}"
        return f"the node pool could not grow: {message}"
    if "max node group size reached" in message:
        return f"the node pool's maximum is reached: {message}"
    if "in backoff after failed scale-up" in message:
        return f"the node pool is in backoff after a failed scale-up: {message}"
    if "wouldn't fit if a new node is added" in message or "Insufficient " in message:
        return f"a new node of the pool would not hold the pod: {message}"
    if "didn't match Pod's node affinity/selector" in message:
        return f"no node pool matches the pod's node selector: {message}"
    return f"the cluster autoscaler adds no node for the pod: {message}"
