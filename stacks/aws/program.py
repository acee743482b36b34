"""The AWS foundation as one function of a Deployment: what `byoc plan` records offline and `byoc up` runs live."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.resolve import Deployment
from stacks.aws import weights
from stacks.aws.artifacts import ArtifactStore
from stacks.aws.audit import AuditTrail
from stacks.aws.capacity import GpuCapacity
from stacks.aws.cluster import Cluster
from stacks.aws.context import AwsContext, make_context
from stacks.aws.identities import Identities
from stacks.aws.keys import Keys
from stacks.aws.network import Network
from stacks.aws.replication import ArtifactReplication, replicates
from stacks.aws.store import LimitsStore
from stacks.k8s.gpu_operator import gpu_operator_values
from stacks.k8s.serving import Foundation, ServingStack, SharedStore
from stacks.multi_region import CIDR_OUTPUT, LB_ADDRESS_OUTPUT, REGION_OUTPUT

# The gateway's Service becomes an internal Network Load Balancer: reachable from the VPC only.
INTERNAL_LOAD_BALANCER = {
    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
    "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
}

# A multi-region deployment fails its entry name over on the NLB's HealthyHostCount (stacks/aws/global_layer.py):
# the NLB probes each node's NodePort every 10 s and counts a node out after 2 failures, about 20 s after its last
# gateway pod stops (the in-tree AWS cloud provider's Service annotations; NLB target groups take 5-300 s and 2-10).
FAST_TARGET_HEALTH = {
    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval": "10",
    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-unhealthy-threshold": "2",
    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-healthy-threshold": "2",
}

# Pods with an EKS Pod Identity get credentials from the node's Pod Identity agent at 169.254.170.23:80 (EKS docs,
# "Set up the Amazon EKS Pod Identity Agent"); a pod under an egress NetworkPolicy must be let through to it.
POD_IDENTITY_EGRESS = [{"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}]


def program(deployment: Deployment) -> dict[str, Any]:
    ctx = make_context(deployment)
    identities = Identities(ctx)
    keys = Keys(ctx, identities.arns())
    network = Network(ctx, keys.platform_key_arn)
    store = ArtifactStore(ctx, keys.artifact_key_arn)
    trail = AuditTrail(ctx, keys.platform_key_arn, store.log_bucket, store.bucket_arn)
    cluster = Cluster(ctx, network, identities, keys.platform_key_arn)
    capacity = GpuCapacity(ctx, cluster, identities, keys.platform_key_arn)
    identities.bind_service_accounts(ctx, cluster.name)
    # the gateway runs on the cluster's nodes, which carry the cluster security group
    limits = (
        LimitsStore(ctx, network, keys.platform_key_arn, cluster.security_group_id)
        if deployment.gateway.store == "managed"
        else None
    )
    identities.attach_policies(ctx, store.bucket_arn, keys.artifact_key_arn, capacity.queue_arn)
    # a multi-region deployment's primary copies the model it builds to the other regions' buckets: replication is
    # in place before the build Job writes (S3 replicates only what is written after)
    replication = (
        [ArtifactReplication(ctx, store.bucket_name, keys.artifact_key_arn).configuration]
        if replicates(deployment)
        else []
    )
    serving = ServingStack(
        deployment,
        cluster.provider,
        Foundation(
            artifact_root=pulumi.Output.concat("s3://", store.bucket_name),
            gpu_node_selector={"karpenter.sh/nodepool": capacity.node_pool},
            # EKS's AL2023 NVIDIA AMI carries the driver and the container toolkit
            gpu_operator_values=gpu_operator_values("node-image"),
            vpc_cidr=deployment.network.cidr,
            load_balancer_annotations=INTERNAL_LOAD_BALANCER | (FAST_TARGET_HEALTH if deployment.multi_region else {}),
            build_env={
                # the builder encrypts every artifact object with the artifact key (the bucket refuses others)
                "BYOC_ARTIFACT_KMS_KEY": keys.artifact_key_arn,
                # hf:// sources come from this mirror in the bucket (sources/hf/<org>/<name>[/<revision>])
                "BYOC_HF_MIRROR": pulumi.Output.concat("s3://", store.bucket_name, "/sources/hf"),
            },
            store=SharedStore(limits.url, limits.password, limits.ca_pem, limits.port, limits.egress_cidrs)
            if limits
            else None,
            depends_on=[*cluster.ready, capacity, *replication],
            artifact_key=keys.artifact_key_arn,
            identity_egress=POD_IDENTITY_EGRESS,
            # cold_start.weights_cache node_cache: the artifact prefix through Mountpoint (stacks/aws/weights.py)
            node_weights=weights.volume(store.bucket_name, deployment.region, [*cluster.ready])
            if weights.shares_weights(deployment)
            else None,
        ),
    )
    outputs: dict[str, Any] = {
        REGION_OUTPUT: deployment.region,
        "cluster_name": cluster.name,
        "kubeconfig": cluster.kubeconfig,
        "vpc_id": network.vpc_id,
        "artifact_bucket": store.bucket_name,
        "audit_trail_bucket": trail.bucket_name,
        "platform_key_arn": keys.platform_key_arn,
        "artifact_key_arn": keys.artifact_key_arn,
        "builder_role_arn": identities.roles["builder"].arn,
        "serving_role_arn": identities.roles["serving"].arn,
        "gpu_node_pool": capacity.node_pool,
        "gateway_service": serving.gateway_service,
        "artifact": serving.artifact_uri,
    }
    if limits:
        outputs["gateway_store"] = limits.url
    if deployment.multi_region:
        outputs |= _global_layer_outputs(ctx, network, serving, cluster.name)
    return outputs


def _global_layer_outputs(
    ctx: AwsContext, network: Network, serving: ServingStack, cluster_name: pulumi.Output[str]
) -> dict[str, Any]:
    """What the global layer of a multi-region deployment reads of this region (stacks/aws/global_layer.py): the
    VPC, its range and its route tables (the peering and its routes), the gateway's internal NLB (the private
    records, and the CloudWatch alarm on its healthy targets that the Route 53 health check follows); the artifact
    bucket and key are exported for every deployment above (the primary's bucket replicates the model to them).

    The NLB is the one the in-tree AWS cloud provider makes for the gateway Service: it and its target group carry
    the tags kubernetes.io/service-name=<namespace>/<service> and kubernetes.io/cluster/<cluster>=owned, by which
    they are found once the Service reports its address. CloudWatch names both by their ARN suffixes.
    """
    tags = pulumi.Output.all(serving.gateway_service, serving.gateway_lb_address, cluster_name).apply(
        lambda values: {
            # gateway_service is <service>.<namespace>
            "kubernetes.io/service-name": "/".join(reversed(values[0].split(".", 1))),
            f"kubernetes.io/cluster/{values[2]}": "owned",
        }
    )
    invoke = pulumi.InvokeOutputOptions(provider=ctx.provider)
    balancer = aws.lb.get_load_balancer_output(tags=tags, opts=invoke)
    target_group = aws.lb.get_target_group_output(tags=tags, opts=invoke)
    return {
        CIDR_OUTPUT: ctx.deployment.network.cidr,
        "private_route_table_ids": network.private_route_table_ids,
        LB_ADDRESS_OUTPUT: serving.gateway_lb_address,
        "gateway_lb_zone_id": balancer.zone_id,
        "gateway_lb_arn_suffix": balancer.arn_suffix,
        "gateway_target_group_arn_suffix": target_group.arn_suffix,
    }
