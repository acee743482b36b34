"""GPU capacity: a GKE node pool of the shape's machine type with its GPUs, GKE-installed drivers, autoscaling from
zero to what max replicas plus the model build Job need, the GPU taint, CMEK boot disks, the held node version,
spot or on-demand per spec, and a dedicated least-privilege node service account.

The cluster autoscaler scales a pool up from zero by reading the pool's template, so the labels and the taint that
pods select and tolerate are set in the pool's node config (GKE docs, "Cluster autoscaler": node labels and taints
of a pool at zero), never applied to nodes afterwards.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pulumi
import pulumi_gcp as gcp

from byoc.catalogs import load_catalog
from byoc.clouds.gcp import GPU_MAX_PODS_PER_NODE, machine_series
from byoc.names import KUBERNETES_DEPLOYMENT_LABEL
from byoc.resolve import Deployment
from stacks.gcp.cluster import Cluster, hardened_node_config
from stacks.gcp.context import GcpContext
from stacks.gcp.identities import Identities
from stacks.gcp.keys import Keys
from stacks.gcp.network import Network

NODE_POOL = "byoc-gpu"
# GKE also taints GPU nodes with nvidia.com/gpu=present:NoSchedule; declaring it keeps the template complete.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}


def offering_zones(ctx: GcpContext, machine_type: str) -> pulumi.Output[list[str]]:
    """The region's zones whose Compute Engine offers the machine type (GPUs are offered per zone, and a pool
    that names a zone without them fails to create: Compute Engine "GPU regions and zones")."""
    invoke = pulumi.InvokeOutputOptions(provider=ctx.provider)

    def offered(zones: list[str]) -> pulumi.Output[list[str]]:
        found = [
            gcp.compute.get_machine_types_output(
                zone=zone, filter=f'name = "{machine_type}"', opts=invoke
            ).machine_types.apply(functools.partial(_zone_if_any, zone))
            for zone in zones
        ]
        return pulumi.Output.all(*found).apply(functools.partial(_some_zone, ctx.region, machine_type))

    return gcp.compute.get_zones_output(region=ctx.region, status="UP", opts=invoke).names.apply(offered)


def _zone_if_any(zone: str, machine_types: list[Any]) -> list[str]:
    return [zone] if machine_types else []


def _some_zone(region: str, machine_type: str, per_zone: list[list[str]]) -> list[str]:
    zones = sorted(zone for found in per_zone for zone in found)
    if not zones:
        raise ValueError(f"no zone of {region} offers {machine_type} to this project (check its GPU quota and region)")
    return zones


def cold_start_node_config(deployment: Deployment) -> dict[str, Any]:
    """The node config that shortens a cold start (spec cold_start, byoc/caches.py): Local SSD as the node's
    ephemeral storage (GKE docs, "Provision and use Local SSD-backed ephemeral storage": emptyDirs, images and logs
    on the NVMe disks), image streaming (`gcfsConfig`; only images in Artifact Registry stream), and a secondary boot
    disk holding the serving image (mode CONTAINER_IMAGE_CACHE, GKE >= 1.28.3-gke.1067000, image streaming on:
    GKE docs, "Use secondary boot disks to preload data or container images")."""
    settings: dict[str, Any] = {}
    if deployment.disk.ephemeral_on == "local_nvme":
        instance = load_catalog().instances["gcp"][deployment.placement.instance_type]
        settings["ephemeral_storage_local_ssd_config"] = (
            gcp.container.NodePoolNodeConfigEphemeralStorageLocalSsdConfigArgs(local_ssd_count=instance.local_ssds or 0)
        )
    image = deployment.caches.image if deployment.caches is not None else None
    if image is not None and image.mode in ("image_streaming", "secondary_boot_disk"):
        settings["gcfs_config"] = gcp.container.NodePoolNodeConfigGcfsConfigArgs(enabled=True)
    if image is not None and image.disk_image:
        settings["secondary_boot_disks"] = [
            gcp.container.NodePoolNodeConfigSecondaryBootDiskArgs(
                disk_image=image.disk_image, mode="CONTAINER_IMAGE_CACHE"
            )
        ]
    return settings


def warm_placeholders(deployment: Deployment) -> int:
    return deployment.caches.warm_pool.placeholders if deployment.caches is not None else 0


def max_nodes(replicas_per_node: int, max_replicas: int) -> int:
    """Nodes the pool may grow to: every replica plus the model build Job, each on its share of a node."""
    return math.ceil((max_replicas + 1) / replicas_per_node)


class GpuCapacity(pulumi.ComponentResource):
    node_pool: pulumi.Output[str]
    accelerator: str
    zones: pulumi.Output[list[str]]  # the pool's node locations (node_cache puts a weights volume in each)

    def __init__(self, ctx: GcpContext, cluster: Cluster, network: Network, identities: Identities, keys: Keys) -> None:
        name = ctx.name
        deployment = ctx.deployment
        platform = ctx.platform
        super().__init__(
            "byoc:gcp:GpuCapacity", f"{name}-gpu-capacity", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        placement = deployment.placement
        machine_type = placement.instance_type  # a pool has one machine type: the best the region offers
        series = machine_series(machine_type)
        self.accelerator = platform["accelerators"][series]
        spot = deployment.capacity == "spot"
        zones = offering_zones(ctx, machine_type)
        self.zones = zones
        pool = gcp.container.NodePool(
            f"{name}-gpu",
            name=NODE_POOL,
            cluster=cluster.id,
            location=ctx.region,
            node_locations=zones,
            initial_node_count=0,
            max_pods_per_node=GPU_MAX_PODS_PER_NODE,
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                total_min_node_count=0,
                # the warm pool's placeholders hold nodes of their own (stacks/k8s/warm_pool.py)
                total_max_node_count=max_nodes(
                    placement.replicas_per_node, deployment.autoscaling.max_replicas + warm_placeholders(deployment)
                ),
                # GPUs are scarce: take a node in whichever zone has one, not the least-used zone
                location_policy="ANY",
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            # no surge node: a spare 8-GPU machine is rarely there; replace one node at a time instead
            upgrade_settings=gcp.container.NodePoolUpgradeSettingsArgs(
                strategy="SURGE", max_surge=0, max_unavailable=1
            ),
            node_config=hardened_node_config(
                ctx,
                identities.email("gpu-nodes"),
                keys.key_ids["disks"],
                network.network_tag,
                machine_type=machine_type,
                # room for the source checkpoint, the built artifact and the serving images
                disk_size_gb=deployment.gpu_node_disk_gib,
                disk_type=platform["boot_disk_types"][series],
                gvnic=gcp.container.NodePoolNodeConfigGvnicArgs(enabled=True),  # A3 and A4 need gVNIC
                guest_accelerators=[
                    gcp.container.NodePoolNodeConfigGuestAcceleratorArgs(
                        type=self.accelerator,
                        count=placement.instance_gpus,
                        # GKE installs the driver; set explicitly, as a change replaces the pool
                        gpu_driver_installation_config=(
                            gcp.container.NodePoolNodeConfigGuestAcceleratorGpuDriverInstallationConfigArgs(
                                gpu_driver_version=platform["gpu_driver_version"]
                            )
                        ),
                    )
                ],
                spot=spot,
                labels={"byoc.dev/pool": "gpu", KUBERNETES_DEPLOYMENT_LABEL: name},
                taints=[gcp.container.NodePoolNodeConfigTaintArgs(**GPU_TAINT)],
                **cold_start_node_config(deployment),
            ),
            opts=ctx.opts(self, depends_on=keys.grants["disks"]),
        )
        self.node_pool = pool.name
        self.register_outputs({"node_pool": pool.name})
