"""What the GPU nodes keep so that a wake from zero is shorter (spec `cold_start`, issue 24): the serving image
already on the node or pulled faster, the weights on the node's local NVMe, and an optional warm pool.

Each cloud decides what it can offer (byoc/clouds/aws.py, gcp.py: `image_cache`, `local_nvme_gib`); this module
holds the plan's shape, which plan.json carries as `cold_start_caches`, and which the stacks render (EC2NodeClass,
GKE node pool, the warm-pool placeholders in stacks/k8s/warm_pool.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ImageMode = Literal["secondary_boot_disk", "image_streaming", "fast_image_pull", "pulled"]


@dataclass(frozen=True)
class ImageCache:
    """How a new GPU node gets the serving image."""

    mode: ImageMode
    detail: str  # what happens on a new node, in words
    disk_image: str | None = None  # GKE: the secondary boot disk's image
    how: str | None = None  # what would make it faster: the command that builds the cache, or the change to make

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "pulled": self.mode != "secondary_boot_disk", "disk_image": self.disk_image,
                "detail": self.detail, "how": self.how}  # fmt: skip


@dataclass(frozen=True)
class SharedWeightsDisk:
    """weights_cache node_cache on GKE: the Hyperdisk ML volume (one per zone of the GPU pool) that holds the
    artifact, its size and provisioned throughput, and what it costs a month per zone (byoc/catalogs/kubernetes.yaml
    gke.hyperdisk_ml: list prices with their source)."""

    disk_type: str  # the Compute Engine disk type, hyperdisk-ml
    size_gib: int
    throughput_mib_s: int  # provisioned, shared by the nodes that read at once
    monthly_usd_per_zone: float  # capacity and provisioned throughput, billed while the volume exists
    price_source: str
    # the zones priced: the GPU pool's zones are read at deploy (those of the region that offer the machine type);
    # the estimate prices as many as the plan renders (byoc/clouds/gcp.py GPU_POOL_ZONES)
    zones: int = 1

    @property
    def monthly_usd(self) -> float:
        """Every zone's volume, per month (USD), in one region."""
        return self.monthly_usd_per_zone * self.zones

    def as_dict(self) -> dict[str, Any]:
        return {
            "disk_type": self.disk_type,
            "size_gib": self.size_gib,
            "provisioned_throughput_mib_s": self.throughput_mib_s,
            "monthly_usd_per_zone": round(self.monthly_usd_per_zone, 2),
            "zones": self.zones,
            "zones_are": "each zone of the GPU node pool (the region's zones that offer the machine type, read at "
            "deploy; priced for the zones the plan renders)",
            "monthly_usd": round(self.monthly_usd, 2),
            "price_source": self.price_source,
        }


@dataclass(frozen=True)
class WeightsCache:
    """Where a replica's fetch puts the weights."""

    on: Literal["local_nvme", "root_disk", "hyperdisk_ml"]
    local_nvme_gib: float | None
    detail: str
    # weights_cache node_cache: one copy shared by the replicas of a node (AWS: in the node's Mountpoint cache; GKE:
    # a Hyperdisk ML volume per zone that every GPU node of the zone attaches read-only)
    shared_by_node: bool = False
    # what serves the shared copy, in the words `byoc plan` prints (node_cache only)
    shared_through: str | None = None
    disk: SharedWeightsDisk | None = None  # GKE's node_cache: the volume, and its monthly cost

    def as_dict(self) -> dict[str, Any]:
        nvme = None if self.local_nvme_gib is None else round(self.local_nvme_gib, 1)
        shown = {"on": self.on, "local_nvme_gib": nvme, "shared_by_node": self.shared_by_node, "detail": self.detail}
        return shown | ({"disk": self.disk.as_dict()} if self.disk is not None else {})


@dataclass(frozen=True)
class WarmPool:
    """Idle GPU nodes held by low-priority placeholder pods that any serving replica preempts, in one region; a
    multi-region deployment's pool lists every region's in `per_region` (each at its own instance type, so with its
    own placeholders per node and price)."""

    nodes: int  # in `region`
    placeholders: int  # pods, one per replica slot of each warm node, in `region`
    instance_type: str
    hourly_usd: float  # byoc/planner.py warm_pool_hourly_usd; in `region`
    region: str = ""
    per_region: tuple[WarmPool, ...] = ()  # a multi-region deployment: every region's pool, the primary first

    @property
    def regions(self) -> tuple[WarmPool, ...]:
        """Every region's pool (this one alone for a one-region deployment)."""
        return self.per_region or (self,)

    @property
    def total_hourly_usd(self) -> float:
        """Every region's pool, per hour (USD)."""
        return round(sum(r.hourly_usd for r in self.regions), 2)

    @property
    def total_nodes(self) -> int:
        return sum(r.nodes for r in self.regions)

    @property
    def total_placeholders(self) -> int:
        return sum(r.placeholders for r in self.regions)

    @property
    def uniform(self) -> bool:
        """Every region runs the same instance type (so the same placeholders per node and price)."""
        return len({r.instance_type for r in self.regions}) == 1

    def _region_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "nodes": self.nodes,
            "placeholder_pods": self.placeholders,
            "hourly_usd": round(self.hourly_usd, 2),
            "monthly_usd": round(self.hourly_usd * 730, 2),
        }

    def as_dict(self) -> dict[str, Any]:
        regions = self.regions
        return {
            # every region's together; per_region has each
            "nodes": self.total_nodes,
            "nodes_per_region": self.nodes,  # cold_start.warm_pool: the same count in each region
            "placeholder_pods": self.total_placeholders,
            # the one type of every region, or None where they differ (per_region names each)
            "instance_type": self.instance_type if self.uniform else None,
            "regions": len(regions),
            "hourly_usd": self.total_hourly_usd,
            "monthly_usd": round(self.total_hourly_usd * 730, 2),  # 730 h: a month as cloud price pages count it
            "per_region": {r.region: r._region_dict() for r in regions},
            "saves": "the node launch of a wake (estimates.cold_start, node launch phase) for up to "
            + ", ".join(f"{r.placeholders} replicas at once in {r.region}" for r in regions)
            if self.nodes
            else None,
        }


@dataclass(frozen=True)
class NodeCaches:
    image: ImageCache
    weights: WeightsCache
    warm_pool: WarmPool

    # a multi-region deployment: every region's caches (region -> its NodeCaches), the primary first; the image and
    # weights above are the primary's (`region`), the warm pool every region's
    region: str = ""
    per_region: tuple[tuple[str, NodeCaches], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        shown = {
            "region": self.region,  # the region `image` and `weights` describe
            "image": self.image.as_dict(),
            "weights": self.weights.as_dict(),
            "warm_pool": self.warm_pool.as_dict(),
        }
        if self.per_region:
            shown["per_region"] = {
                region: {"image": c.image.as_dict(), "weights": c.weights.as_dict()} for region, c in self.per_region
            }
        return shown


# What weights_cache node_cache renders (stacks/k8s/weights.py), in the words plan.json says it.
NODE_CACHE_DETAIL = (
    "the artifact's S3 prefix is mounted read-only at /models through the Mountpoint for Amazon S3 CSI driver; the "
    "replicas of a node share one Mountpoint (Mountpoint Pod sharing), whose cache lies on {where}: the first replica "
    "on a node reads the artifact from S3 (its verify step reads every file through the mount, with Mountpoint's "
    "parallel ranged GETs) and so fills the node's cache; later replicas, and warm-pool nodes (their placeholders "
    "read it once), read it from that cache, which a DaemonSet holding the mount keeps for the node's life"
)


# What weights_cache node_cache renders on GKE (stacks/gcp/weights.py, stacks/k8s/weights.py).
POPULATED_DISK_DETAIL = (
    "once the model build has written the artifact, the GKE Volume Populator copies its Cloud Storage prefix onto a "
    "Hyperdisk ML volume in each zone of the GPU node pool ({size} GiB, {throughput:,} MiB/s provisioned, encrypted "
    "with the deployment's disk key); every GPU node of a zone attaches that volume read-only and its replicas and "
    "warm-pool placeholders mount it at /models, so no replica fetches from the bucket: each reads and checks the "
    "artifact from the volume at the VM's Hyperdisk ML read rate. The copy is made once per build, at deploy, "
    "before the first replica starts; a new build is a new volume"
)


def weights_cache(asked: str, ephemeral_on: str, local_nvme_gib: float | None, why_not: str) -> WeightsCache:
    """The weights' place as the disk plan settled it (byoc/sizing.py local_nvme_plan)."""
    if asked == "node_cache":
        on_nvme = ephemeral_on == "local_nvme"
        where = "the node's local NVMe" if on_nvme else f"the root disk ({why_not})"
        return WeightsCache(
            "local_nvme" if on_nvme else "root_disk",
            local_nvme_gib,
            NODE_CACHE_DETAIL.format(where=where),
            shared_by_node=True,
            shared_through="Mountpoint for Amazon S3",
        )
    if ephemeral_on == "local_nvme":
        return WeightsCache(
            "local_nvme",
            local_nvme_gib,
            "each replica fetches the artifact with parallel ranged reads into its emptyDir on the node's local "
            "NVMe (the node's ephemeral storage); the root disk holds only the OS",
        )
    if asked == "none":
        return WeightsCache("root_disk", None, "cold_start.weights_cache is none: the weights go to the root disk")
    return WeightsCache("root_disk", local_nvme_gib, f"the weights go to the root disk: {why_not}")
