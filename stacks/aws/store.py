"""The gateway replicas' shared store (per-key limits, budgets, usage): ElastiCache for Valkey, private and
encrypted.

Valkey rather than Redis OSS: the same protocol and client (the gateway's `redis` package speaks to both), an
open-source licence (BSD; Redis 7.4+ is not), and ElastiCache prices Valkey nodes 20% below Redis OSS ones.
Every property below is one a security reviewer (or Prowler) checks on `aws.elasticache.ReplicationGroup`
(pulumi-aws 7.51, registry docs "aws.elasticache.ReplicationGroup"):

- at rest: `at_rest_encryption_enabled` with `kms_key_id` = the deployment's customer-managed key (the platform key
  byoc creates, or encryption.kms_key); ElastiCache takes grants on it as the deploying principal, whom the key
  policy's AccountAdministers statement lets IAM authorize;
- in transit: `transit_encryption_enabled` with `transit_encryption_mode: required` (no plaintext connections);
- authentication: an AUTH token of 64 random characters from `random.RandomPassword`, which Pulumi keeps as a
  secret in the stack's state (encrypted by the stack's secrets provider) and never prints; the gateway reads it
  from a Kubernetes Secret volume (stacks/k8s/serving.py). byoc's offline plan records secret inputs as
  "[secret]" (byoc/engines/offline.py), so plan.json never holds it;
- network: the private subnets only, and a security group that admits the store's port from the cluster's nodes
  only (the EKS cluster security group, which the system nodes that run the gateway carry); inside the cluster a
  NetworkPolicy lets only the gateway pods reach it (stacks/k8s/serving.py);
- availability: a replica in another zone, Multi-AZ with automatic failover, daily snapshots kept 14 days, minor
  engine upgrades applied in the maintenance window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from byoc.catalogs import load_catalog
from byoc.names import bounded_name, resource_name
from stacks.aws.context import AwsContext
from stacks.aws.network import Network

# ElastiCache's server certificates chain to Amazon Trust Services' roots; the gateway trusts only these (not every
# root of its image's trust store). Public certificates, from the Mozilla bundle certifi ships.
AMAZON_ROOT_CAS = Path(__file__).with_name("amazon-root-cas.pem")
# AUTH tokens: 16 to 128 printable characters; ElastiCache refuses @, ", / and spaces (ElastiCache docs,
# "Authenticating with the Valkey and Redis OSS AUTH command"). Letters and digits only: nothing to escape anywhere.
AUTH_TOKEN_LENGTH = 64
# 14 days: Prowler's elasticache_redis_cluster_backup_enabled wants more than 7 (its default minimum)
SNAPSHOT_RETENTION_DAYS = 14
# UTC, outside European and American working hours; the maintenance window must not overlap the snapshot window.
# CreateReplicationGroup: ReplicationGroupId has 1 to 40 characters, no trailing or double hyphen.
REPLICATION_GROUP_ID_MAX = 40
SNAPSHOT_WINDOW = "03:00-04:00"
MAINTENANCE_WINDOW = "sun:04:30-sun:05:30"


class LimitsStore(pulumi.ComponentResource):
    """ElastiCache for Valkey replication group for the gateway's per-key limits, budgets and usage ledger."""

    host: pulumi.Output[str]
    port: int
    url: pulumi.Output[str]
    password: pulumi.Output[str]
    ca_pem: str
    security_group_id: pulumi.Output[str]
    egress_cidrs: list[str]

    def __init__(
        self, ctx: AwsContext, network: Network, key_arn: pulumi.Input[str], client_security_group: pulumi.Input[str]
    ) -> None:
        """client_security_group: the security group of the nodes that run the gateway (the EKS cluster's)."""
        name = ctx.name
        spec: dict[str, Any] = load_catalog().kubernetes["shared_store"]["aws"]
        super().__init__("byoc:aws:LimitsStore", f"{name}-store", None, pulumi.ResourceOptions(provider=ctx.provider))
        self.port = int(spec["port"])
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-store",
            name=resource_name(name, "store"),
            description="byoc gateway store: the private subnets only",
            subnet_ids=network.private_subnet_ids,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        group = aws.ec2.SecurityGroup(
            f"{name}-store",
            vpc_id=network.vpc_id,
            description="byoc gateway store: Valkey over TLS from the cluster's nodes only",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=self.port,
                    to_port=self.port,
                    security_groups=[client_security_group],
                    description="the gateway, on the cluster's nodes",
                )
            ],
            egress=[],  # the store only answers
            tags=ctx.tags(Name=resource_name(name, "store")),
            opts=ctx.opts(self),
        )
        token = random.RandomPassword(
            f"{name}-store-auth",
            length=AUTH_TOKEN_LENGTH,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.password = pulumi.Output.secret(token.result)
        replication_group = aws.elasticache.ReplicationGroup(
            f"{name}-store",
            replication_group_id=bounded_name(name, "store", REPLICATION_GROUP_ID_MAX),
            description=f"byoc {name}: the gateway replicas' shared limits, budgets and usage",
            engine=spec["engine"],
            engine_version=spec["engine_version"],
            node_type=spec["node_type"],
            num_cache_clusters=int(spec["nodes"]),
            port=self.port,
            subnet_group_name=subnets.name,
            security_group_ids=[group.id],
            at_rest_encryption_enabled=True,
            kms_key_id=key_arn,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=self.password,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            auto_minor_version_upgrade=True,
            snapshot_retention_limit=SNAPSHOT_RETENTION_DAYS,
            snapshot_window=SNAPSHOT_WINDOW,
            maintenance_window=MAINTENANCE_WINDOW,
            final_snapshot_identifier=resource_name(name, "store", "final"),
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        self.host = replication_group.primary_endpoint_address
        self.url = pulumi.Output.concat("rediss://", self.host, f":{self.port}")
        self.ca_pem = AMAZON_ROOT_CAS.read_text()
        self.security_group_id = group.id
        # the ElastiCache nodes take addresses in the private subnets, which the VPC's range holds
        self.egress_cidrs = [ctx.deployment.network.cidr]
        self.register_outputs({"url": self.url, "security_group_id": group.id})
