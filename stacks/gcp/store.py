"""The gateway replicas' shared store (per-key limits, budgets, usage): Memorystore for Redis, private and encrypted.

Memorystore for Redis (`gcp.redis.Instance`, pulumi-gcp 10.2, registry docs "gcp.redis.Instance") rather than
Memorystore for Valkey (`gcp.memorystore.Instance`): Valkey there authenticates with IAM tokens only
(`authorization_mode: IAM_AUTH`), which the gateway's password-based client does not speak, while Redis takes an
AUTH string and customer-managed keys on the Standard tier. What a reviewer checks:

- at rest: `customer_managed_key` = the deployment's `store` Cloud KMS key (stacks/gcp/keys.py grants it to the
  Memorystore service agent, service-<project number>@cloud-redis.iam.gserviceaccount.com, before the instance);
- in transit: `transit_encryption_mode: SERVER_AUTHENTICATION` (TLS on port 6378, the server certificate signed by
  a per-instance CA that `server_ca_certs` returns; the gateway trusts that CA only, as ca.crt);
- authentication: `auth_enabled` (Memorystore generates the AUTH string; Pulumi keeps it as a secret in the stack's
  state and the gateway reads it from a Kubernetes Secret volume);
- network: private services access on the deployment's VPC only (`connect_mode: PRIVATE_SERVICE_ACCESS`,
  `authorized_network` = the VPC, an allocated /24 of the spec's CIDR peered to Google's service producer network);
  no public address exists for Memorystore at all;
- availability: the Standard tier (a replica in another zone, automatic failover), daily RDB snapshots, and a
  weekly maintenance window (Memorystore applies minor versions and patches itself).
"""

from __future__ import annotations

import functools
from typing import Any

import pulumi
import pulumi_gcp as gcp

from byoc.catalogs import load_catalog
from byoc.names import bounded_name, resource_name
from stacks.gcp.context import GcpContext
from stacks.gcp.keys import Keys
from stacks.gcp.network import Network

PRIVATE_SERVICE_ACCESS = "servicenetworking.googleapis.com"
# Memorystore for Redis instance ids: 1 to 40 characters, from a letter, ending with a letter or digit.
INSTANCE_ID_MAX = 40


def _ca_pem(certificates: list[dict[str, Any]] | None) -> str:
    """Every server CA the instance reports (two during a CA rotation), as one PEM bundle."""
    return "".join(str(c.get("cert", "")) for c in certificates or [])


class LimitsStore(pulumi.ComponentResource):
    """Memorystore for Redis for the gateway's per-key limits, budgets and usage ledger."""

    host: pulumi.Output[str]
    port: int
    url: pulumi.Output[str]
    password: pulumi.Output[str]
    ca_pem: pulumi.Output[str]
    egress_cidrs: list[str]

    def __init__(self, ctx: GcpContext, network: Network, keys: Keys) -> None:
        name = ctx.name
        spec: dict[str, Any] = load_catalog().kubernetes["shared_store"]["gcp"]
        super().__init__("byoc:gcp:LimitsStore", f"{name}-store", None, pulumi.ResourceOptions(provider=ctx.provider))
        self.port = int(spec["port"])
        store_range = network.addresses.store
        address, prefix = store_range.split("/")
        allocated = gcp.compute.GlobalAddress(
            f"{name}-store-range",
            name=resource_name(name, "store"),
            description="byoc gateway store: private services access range (Memorystore)",
            purpose="VPC_PEERING",
            address_type="INTERNAL",
            address=address,
            prefix_length=int(prefix),
            network=network.network_id,
            labels=ctx.labels(),
            opts=ctx.opts(self),
        )
        peering = gcp.servicenetworking.Connection(
            f"{name}-store-peering",
            network=network.network_id,
            service=PRIVATE_SERVICE_ACCESS,
            reserved_peering_ranges=[allocated.name],
            opts=ctx.opts(self),
        )
        instance = gcp.redis.Instance(
            f"{name}-store",
            name=bounded_name(name, "store", INSTANCE_ID_MAX),
            display_name=f"byoc {name}: the gateway replicas' shared limits, budgets and usage",
            region=ctx.region,
            tier=spec["tier"],
            memory_size_gb=int(spec["memory_size_gb"]),
            redis_version=spec["engine"],
            connect_mode="PRIVATE_SERVICE_ACCESS",
            authorized_network=network.network_id,
            reserved_ip_range=allocated.name,
            customer_managed_key=keys.key_ids["store"],
            transit_encryption_mode="SERVER_AUTHENTICATION",
            auth_enabled=True,
            persistence_config=gcp.redis.InstancePersistenceConfigArgs(
                persistence_mode="RDB", rdb_snapshot_period="TWENTY_FOUR_HOURS"
            ),
            maintenance_policy=gcp.redis.InstanceMaintenancePolicyArgs(
                weekly_maintenance_windows=[
                    gcp.redis.InstanceMaintenancePolicyWeeklyMaintenanceWindowArgs(
                        day="SUNDAY",
                        start_time=gcp.redis.InstanceMaintenancePolicyWeeklyMaintenanceWindowStartTimeArgs(
                            hours=4, minutes=30
                        ),
                    )
                ]
            ),
            labels=ctx.labels(),
            opts=ctx.opts(self, depends_on=[peering, *keys.grants["store"]]),
        )
        self.host = instance.host
        self.url = pulumi.Output.concat("rediss://", instance.host, f":{self.port}")
        self.password = pulumi.Output.secret(instance.auth_string)
        self.ca_pem = instance.server_ca_certs.apply(functools.partial(_ca_pem))
        self.egress_cidrs = [store_range]
        self.register_outputs({"url": self.url})
