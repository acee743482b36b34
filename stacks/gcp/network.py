"""The private network: a custom-mode VPC, one regional subnet for nodes with secondary ranges for pods and
services, Private Google Access, Cloud Router + Cloud NAT (logged), subnet flow logs, and firewall rules that deny
ingress by default and allow only what GKE needs beyond the rules it manages itself.

GKE writes its own rules for the cluster: control plane to nodes on 443 and 10250, node and pod ranges to each
other, and Google's health checks to the nodes of each internal load balancer Service. byoc adds only what those
leave out (the add-ons' webhook ports) and a logged deny for everything else.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from byoc.clouds.gcp import AddressPlan, address_plan
from byoc.names import resource_name
from stacks.gcp.context import GcpContext

PODS_RANGE = "pods"
SERVICES_RANGE = "services"
# Admission webhooks and aggregated APIs the add-ons serve on ports GKE's own control-plane rule does not open
# (it opens 443 and 10250): KEDA's metrics API server (6443) and webhooks (9443), and 8443 (GKE docs, "Add
# firewall rules for specific use cases" in "Creating a private cluster").
WEBHOOK_PORTS = ["6443", "8443", "9443"]


class Network(pulumi.ComponentResource):
    network_id: pulumi.Output[str]
    self_link: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    addresses: AddressPlan

    def __init__(self, ctx: GcpContext) -> None:
        name = ctx.name
        super().__init__("byoc:gcp:Network", f"{name}-network", None, pulumi.ResourceOptions(provider=ctx.provider))
        self.addresses = plan = address_plan(ctx.deployment.network.cidr)

        vpc = gcp.compute.Network(
            f"{name}-vpc",
            name=resource_name(name),
            description=f"byoc {name}: private network",
            auto_create_subnetworks=False,  # custom mode: no subnet in every region
            routing_mode="REGIONAL",
            opts=ctx.opts(self),
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-nodes",
            name=resource_name(name, "nodes"),
            description="GKE nodes; secondary ranges for pods and services",
            region=ctx.region,
            network=vpc.id,
            ip_cidr_range=plan.nodes,
            secondary_ip_ranges=[
                gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=PODS_RANGE, ip_cidr_range=plan.pods),
                gcp.compute.SubnetworkSecondaryIpRangeArgs(range_name=SERVICES_RANGE, ip_cidr_range=plan.services),
            ],
            stack_type="IPV4_ONLY",
            # Google APIs (Cloud Storage, Artifact Registry, KMS, Logging) from nodes without external addresses
            private_ip_google_access=True,
            log_config=gcp.compute.SubnetworkLogConfigArgs(
                aggregation_interval="INTERVAL_5_SEC",
                flow_sampling=1.0,  # every flow, as AWS flow logs with ALL traffic
                metadata="INCLUDE_ALL_METADATA",
            ),
            opts=ctx.opts(self),
        )
        router = gcp.compute.Router(
            f"{name}-router",
            name=resource_name(name),
            description="Cloud NAT for the private nodes",
            region=ctx.region,
            network=vpc.id,
            opts=ctx.opts(self),
        )
        ports = ctx.platform["nat_ports_per_vm"]
        gcp.compute.RouterNat(
            f"{name}-nat",
            name=resource_name(name),
            router=router.name,
            region=ctx.region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                gcp.compute.RouterNatSubnetworkArgs(name=subnet.id, source_ip_ranges_to_nats=["ALL_IP_RANGES"])
            ],
            # image layers and checkpoints are pulled over many parallel connections per node
            enable_dynamic_port_allocation=True,
            enable_endpoint_independent_mapping=False,  # required with dynamic port allocation
            min_ports_per_vm=ports["min"],
            max_ports_per_vm=ports["max"],
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ALL"),
            opts=ctx.opts(self),
        )

        network_tag = ctx.deployment.cluster_name
        gcp.compute.Firewall(
            f"{name}-deny-ingress",
            name=resource_name(name, "deny-ingress"),
            description="Deny every other ingress, and log it (the implied deny rule logs nothing)",
            network=vpc.id,
            direction="INGRESS",
            priority=65534,
            denies=[gcp.compute.FirewallDenyArgs(protocol="all")],
            source_ranges=["0.0.0.0/0"],
            log_config=gcp.compute.FirewallLogConfigArgs(metadata="INCLUDE_ALL_METADATA"),
            opts=ctx.opts(self),
        )
        gcp.compute.Firewall(
            f"{name}-control-plane-webhooks",
            name=resource_name(name, "control-plane-webhooks"),
            description="The GKE control plane calls add-on webhooks and aggregated APIs on the nodes",
            network=vpc.id,
            direction="INGRESS",
            priority=1000,
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=WEBHOOK_PORTS)],
            source_ranges=[plan.control_plane],
            target_tags=[network_tag],
            log_config=gcp.compute.FirewallLogConfigArgs(metadata="INCLUDE_ALL_METADATA"),
            opts=ctx.opts(self),
        )
        self.network_tag = network_tag
        self.network_id = vpc.id
        self.self_link = vpc.self_link
        self.subnet_id = subnet.id
        self.register_outputs({"network_id": vpc.id, "subnet_id": subnet.id})
