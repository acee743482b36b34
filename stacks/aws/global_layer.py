"""The global layer of a multi-region AWS deployment, its own stack (<name>-global) run after the regional ones: the
private path between the regions, one private entry name with failover, and the model's copy in every region.

- VPC peering between every pair of regional VPCs (inter-region: the requester names `peerRegion`, the accepter
  runs with a provider in the peer region), routes both ways in every private route table, DNS resolution across.
- A Route 53 private hosted zone, <deployment>.byoc.internal, associated with every regional VPC: a CNAME per region
  (<region>.<zone>, what peer gateways spill over to) and the entry name api.<zone> with latency routing, one
  record per region, each tied to that region's health check.
- Per region, a CloudWatch alarm on the gateway NLB's HealthyHostCount and a Route 53 health check of type
  CLOUDWATCH_METRIC following it: Route 53's health checkers sit outside every VPC and cannot probe a private
  endpoint, so a record of a private hosted zone is health-checked through a CloudWatch alarm (Route 53 Developer
  Guide, "Configuring failover in a private hosted zone" and "Monitoring a CloudWatch alarm").

The model's copy in every region is the primary region's stack's (stacks/aws/replication.py): its bucket must
replicate before its build Job writes, which the global layer, run last, would be too late for.
"""

from __future__ import annotations

import itertools
from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.clouds.aws import ZONES
from byoc.names import DEPLOYMENT_TAG, region_code, resource_name
from byoc.resolve import Deployment
from stacks.multi_region import (
    LB_ADDRESS_OUTPUT,
    RECORD_TTL_S,
    entry_name,
    output,
    private_zone,
    region_outputs,
    regional_host,
)

# The NLB reports HealthyHostCount per minute (Elastic Load Balancing docs, "CloudWatch metrics for your Network
# Load Balancer"); the alarm fires after two minutes without one healthy target.
ALARM_PERIOD_S = 60
ALARM_EVALUATION_PERIODS = 2


def _nth(index: int, values: list[str]) -> str:
    return values[index]


class Region:
    """One region as the global layer sees it: its provider and its stack's outputs."""

    def __init__(self, deployment: Deployment, regional: Deployment) -> None:
        self.region = regional.region
        self.name = regional.name
        self.cidr = regional.network.cidr
        self.code = region_code(regional.region)
        self.provider = aws.Provider(
            f"{deployment.name}-{self.code}",
            region=regional.region,
            default_tags=aws.ProviderDefaultTagsArgs(tags={DEPLOYMENT_TAG: deployment.name}),
        )
        self.outputs = region_outputs(deployment, regional.region)
        self.vpc_id = output(self.outputs, "vpc_id")
        self.route_tables = output(self.outputs, "private_route_table_ids")
        self.lb_address = output(self.outputs, LB_ADDRESS_OUTPUT)

    def opts(self, parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, **kwargs)

    def route_table(self, index: int) -> pulumi.Output[str]:
        # one private route table per zone (stacks/aws/network.py)
        table: pulumi.Output[str] = self.route_tables.apply(lambda ids: _nth(index, ids))
        return table


def tags(deployment: Deployment, **extra: str) -> dict[str, str]:
    return {DEPLOYMENT_TAG: deployment.name, "byoc:managed-by": "byoc", **extra}


class Peering(pulumi.ComponentResource):
    """Every pair of regional VPCs peered, with routes both ways and each side resolving the other's private DNS."""

    def __init__(self, deployment: Deployment, regions: list[Region]) -> None:
        super().__init__("byoc:aws:Peering", f"{deployment.name}-peering")
        for requester, accepter in itertools.combinations(regions, 2):
            pair = f"{deployment.name}-{requester.code}-{accepter.code}"
            connection = aws.ec2.VpcPeeringConnection(
                pair,
                vpc_id=requester.vpc_id,
                peer_vpc_id=accepter.vpc_id,
                peer_region=accepter.region,
                auto_accept=False,  # an inter-region peering is accepted in the peer region, below
                tags=tags(deployment, Name=resource_name(deployment.name, requester.code, accepter.code)),
                opts=requester.opts(self),
            )
            accepted = aws.ec2.VpcPeeringConnectionAccepter(
                pair,
                vpc_peering_connection_id=connection.id,
                auto_accept=True,
                tags=tags(deployment, Name=resource_name(deployment.name, requester.code, accepter.code)),
                opts=accepter.opts(self),
            )
            # Each side sets its own options, with its own region's provider, once the connection is active.
            aws.ec2.PeeringConnectionOptions(
                f"{pair}-requester",
                vpc_peering_connection_id=accepted.vpc_peering_connection_id,
                requester=aws.ec2.PeeringConnectionOptionsRequesterArgs(allow_remote_vpc_dns_resolution=True),
                opts=requester.opts(self),
            )
            aws.ec2.PeeringConnectionOptions(
                f"{pair}-accepter",
                vpc_peering_connection_id=accepted.vpc_peering_connection_id,
                accepter=aws.ec2.PeeringConnectionOptionsAccepterArgs(allow_remote_vpc_dns_resolution=True),
                opts=accepter.opts(self),
            )
            for side, other in ((requester, accepter), (accepter, requester)):
                for index in range(ZONES):
                    aws.ec2.Route(
                        f"{deployment.name}-{side.code}-to-{other.code}-{index}",
                        route_table_id=side.route_table(index),
                        destination_cidr_block=other.cidr,
                        vpc_peering_connection_id=accepted.vpc_peering_connection_id,
                        opts=side.opts(self),
                    )
        self.register_outputs({})


class PrivateEntry(pulumi.ComponentResource):
    """The private hosted zone, the per-region records, the health checks and the one entry name."""

    zone_id: pulumi.Output[str]

    def __init__(self, deployment: Deployment, regions: list[Region], primary: Region) -> None:
        super().__init__("byoc:aws:PrivateEntry", f"{deployment.name}-private-entry")
        name = deployment.name
        zone = aws.route53.Zone(
            f"{name}-zone",
            name=private_zone(name),
            comment=f"byoc {name}: the private entry name and each region's gateway",
            # a private hosted zone is created with one VPC; the others are associations of their own, and the zone's
            # own list is left alone after creation, so a VPC you associate with it (docs/multi-region.md) is not
            # removed by the next `up` (pulumi-aws docs, route53.ZoneAssociation)
            vpcs=[aws.route53.ZoneVpcArgs(vpc_id=primary.vpc_id, vpc_region=primary.region)],
            tags=tags(deployment),
            opts=primary.opts(self, ignore_changes=["vpcs"]),
        )
        for region in regions:
            if region is not primary:
                aws.route53.ZoneAssociation(
                    f"{name}-{region.code}-zone",
                    zone_id=zone.zone_id,
                    vpc_id=region.vpc_id,
                    vpc_region=region.region,
                    opts=primary.opts(self),
                )
        for region in regions:
            alarm = aws.cloudwatch.MetricAlarm(
                f"{name}-{region.code}-gateway-healthy",
                name=resource_name(name, region.code, "gateway-healthy"),
                alarm_description=f"byoc {name}: no healthy gateway behind {region.region}'s internal NLB",
                namespace="AWS/NetworkELB",
                metric_name="HealthyHostCount",
                # HealthyHostCount is reported per target group of a load balancer (both dimensions)
                dimensions={
                    "LoadBalancer": output(region.outputs, "gateway_lb_arn_suffix"),
                    "TargetGroup": output(region.outputs, "gateway_target_group_arn_suffix"),
                },
                statistic="Minimum",
                period=ALARM_PERIOD_S,
                evaluation_periods=ALARM_EVALUATION_PERIODS,
                threshold=1,
                comparison_operator="LessThanThreshold",
                # no data: the NLB is gone or reports nothing; take the region out rather than send clients there
                treat_missing_data="breaching",
                tags=tags(deployment),
                opts=region.opts(self),
            )
            health_check = aws.route53.HealthCheck(
                f"{name}-{region.code}-gateway",
                type="CLOUDWATCH_METRIC",
                cloudwatch_alarm_name=alarm.name,
                cloudwatch_alarm_region=region.region,
                # while the alarm has too little data to decide, keep the last verdict (a new region starts healthy)
                insufficient_data_health_status="LastKnownStatus",
                tags=tags(deployment, Name=resource_name(name, region.code, "gateway")),
                opts=primary.opts(self),
            )
            aws.route53.Record(
                f"{name}-{region.code}-host",
                zone_id=zone.zone_id,
                name=regional_host(name, region.region),
                type="CNAME",
                ttl=RECORD_TTL_S,
                records=[region.lb_address],
                opts=primary.opts(self),
            )
            aws.route53.Record(
                f"{name}-{region.code}-entry",
                zone_id=zone.zone_id,
                name=entry_name(name),
                type="CNAME",
                ttl=RECORD_TTL_S,
                records=[region.lb_address],
                # the lowest-latency healthy region answers: a client's own region while it is healthy
                set_identifier=region.region,
                latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=region.region)],
                health_check_id=health_check.id,
                opts=primary.opts(self),
            )
        self.zone_id = zone.zone_id
        self.register_outputs({"zone_id": zone.zone_id})


def program(deployment: Deployment) -> dict[str, Any]:
    """The global layer of `deployment` (a multi-region deployment; its regional stacks ran first)."""
    regions = [Region(deployment, regional) for regional in deployment.per_region]
    primary = regions[0]
    Peering(deployment, regions)
    entry = PrivateEntry(deployment, regions, primary)
    return {
        "entry_name": entry_name(deployment.name),
        "private_zone": private_zone(deployment.name),
        "private_zone_id": entry.zone_id,
        "regions": [r.region for r in regions],
        "regional_hosts": {r.region: regional_host(deployment.name, r.region) for r in regions},
    }
