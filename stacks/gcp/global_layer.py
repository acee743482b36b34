"""The global layer of a multi-region Google Cloud deployment, its own stack (<name>-global) run after the regional
ones: the private path between the regions and one private entry name with failover.

- VPC Network Peering between every pair of regional networks, both directions (a peering is active only once each
  side has its own; subnet routes, secondary ranges for pods included, are exchanged by default). Peering is not
  transitive, hence every pair.
- A Cloud DNS private zone, <deployment>.byoc.internal., visible to every regional network: an A record per region
  (<region>.<zone>, the region's gateway internal load balancer; what peer gateways spill over to) and the entry
  name api.<zone> with a geolocation routing policy whose items are health-checked internal load balancer targets:
  Cloud DNS answers a client with the nearest region whose load balancer has healthy backends, and the next one
  when it has none (Cloud DNS docs, "Health checks for private zones" / "Manage DNS routing policies and health
  checks": health checking works for internal passthrough Network Load Balancers, by the backends' health as the
  load balancer's own health check sees it).

The model's copy in every region is the primary region's stack's (stacks/gcp/replication.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import pulumi
import pulumi_gcp as gcp

from byoc.names import DEPLOYMENT_LABEL, region_code, resource_name
from byoc.resolve import Deployment
from stacks.multi_region import (
    GATEWAY_SERVICE_PORT,
    LB_ADDRESS_OUTPUT,
    RECORD_TTL_S,
    entry_name,
    output,
    private_zone,
    region_outputs,
    regional_host,
)

# Cloud DNS's name for the load balancer type of a GKE internal LoadBalancer Service (an internal passthrough
# Network Load Balancer): routing policy health-checked targets, loadBalancerType "regionalL4ilb".
INTERNAL_PASSTHROUGH = "regionalL4ilb"


class Region:
    """One region as the global layer sees it: its stack's outputs."""

    def __init__(self, deployment: Deployment, regional: Deployment) -> None:
        self.region = regional.region
        self.name = regional.name
        self.code = region_code(regional.region)
        self.outputs = region_outputs(deployment, regional.region)
        self.network = output(self.outputs, "network_self_link")
        self.lb_address = output(self.outputs, LB_ADDRESS_OUTPUT)
        self.project = output(self.outputs, "project")


class Peering(pulumi.ComponentResource):
    """Every pair of regional networks peered, each direction its own peering."""

    def __init__(self, deployment: Deployment, regions: list[Region], provider: gcp.Provider) -> None:
        super().__init__(
            "byoc:gcp:Peering", f"{deployment.name}-peering", None, pulumi.ResourceOptions(provider=provider)
        )
        # one at a time: Compute Engine refuses a peering change on a network while another is in progress
        previous: list[pulumi.Resource] = []
        for left, right in itertools.combinations(regions, 2):
            for side, other in ((left, right), (right, left)):
                peering = gcp.compute.NetworkPeering(
                    f"{deployment.name}-{side.code}-to-{other.code}",
                    # a peering name is unique per network, at most 63 characters
                    name=resource_name(deployment.name, side.code, "to", other.code),
                    network=side.network,
                    peer_network=other.network,
                    stack_type="IPV4_ONLY",
                    opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=previous),
                )
                previous = [peering]
        self.register_outputs({})


class PrivateEntry(pulumi.ComponentResource):
    """The private zone, the per-region records and the one entry name with health-checked geo routing."""

    zone_name: pulumi.Output[str]

    def __init__(self, deployment: Deployment, regions: list[Region], provider: gcp.Provider) -> None:
        name = deployment.name
        super().__init__(
            "byoc:gcp:PrivateEntry", f"{name}-private-entry", None, pulumi.ResourceOptions(provider=provider)
        )
        opts = pulumi.ResourceOptions(parent=self, provider=provider)
        zone = gcp.dns.ManagedZone(
            f"{name}-zone",
            name=resource_name(name, "private"),
            dns_name=f"{private_zone(name)}.",
            description=f"byoc {name}: the private entry name and each region's gateway",
            visibility="private",
            # visible inside every regional network (and those you add: docs/multi-region.md)
            private_visibility_config=gcp.dns.ManagedZonePrivateVisibilityConfigArgs(
                networks=[gcp.dns.ManagedZonePrivateVisibilityConfigNetworkArgs(network_url=r.network) for r in regions]
            ),
            labels={DEPLOYMENT_LABEL: name, "byoc-managed-by": "byoc"},
            opts=opts,
        )
        for region in regions:
            gcp.dns.RecordSet(
                f"{name}-{region.code}-host",
                managed_zone=zone.name,
                name=f"{regional_host(name, region.region)}.",
                type="A",
                ttl=RECORD_TTL_S,
                rrdatas=[region.lb_address],
                opts=opts,
            )
        gcp.dns.RecordSet(
            f"{name}-entry",
            managed_zone=zone.name,
            name=f"{entry_name(name)}.",
            type="A",
            ttl=RECORD_TTL_S,
            routing_policy=gcp.dns.RecordSetRoutingPolicyArgs(
                # the client's nearest region while its load balancer has healthy backends, else the next nearest
                geos=[
                    gcp.dns.RecordSetRoutingPolicyGeoArgs(
                        location=region.region,
                        health_checked_targets=gcp.dns.RecordSetRoutingPolicyGeoHealthCheckedTargetsArgs(
                            internal_load_balancers=[self._target(region)]
                        ),
                    )
                    for region in regions
                ],
                # off: an unhealthy region's clients are answered by another region (failover), not refused
                enable_geo_fencing=False,
            ),
            opts=opts,
        )
        self.zone_name = zone.name
        self.register_outputs({"zone": zone.name})

    @staticmethod
    def _target(region: Region) -> gcp.dns.RecordSetRoutingPolicyGeoHealthCheckedTargetsInternalLoadBalancerArgs:
        return gcp.dns.RecordSetRoutingPolicyGeoHealthCheckedTargetsInternalLoadBalancerArgs(
            load_balancer_type=INTERNAL_PASSTHROUGH,
            ip_address=region.lb_address,
            ip_protocol="tcp",
            port=str(GATEWAY_SERVICE_PORT),
            network_url=region.network,
            project=region.project,
            region=region.region,
        )


def program(deployment: Deployment) -> dict[str, Any]:
    """The global layer of `deployment` (a multi-region deployment; its regional stacks ran first)."""
    # Peering and Cloud DNS are global resources: one provider, in the primary's region
    provider = gcp.Provider("gcp", region=deployment.region, default_labels={DEPLOYMENT_LABEL: deployment.name})
    regions = [Region(deployment, regional) for regional in deployment.per_region]
    Peering(deployment, regions, provider)
    entry = PrivateEntry(deployment, regions, provider)
    return {
        "entry_name": entry_name(deployment.name),
        "private_zone": private_zone(deployment.name),
        "private_zone_name": entry.zone_name,
        "regions": [r.region for r in regions],
        "regional_hosts": {r.region: regional_host(deployment.name, r.region) for r in regions},
    }
