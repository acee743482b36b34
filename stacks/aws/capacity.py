"""GPU capacity through Karpenter: its controller identity, the interruption queue fed by EventBridge, the Helm
release (pinned), and an EC2NodeClass + NodePool that can launch only the shape's instance types."""

from __future__ import annotations

import math
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from byoc.catalogs import load_catalog
from byoc.names import KUBERNETES_DEPLOYMENT_LABEL, resource_name
from byoc.resolve import Deployment
from stacks.aws.cluster import IMDS_HOP_LIMIT, Cluster
from stacks.aws.context import AwsContext, policy
from stacks.aws.identities import Identities

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
NODE_POOL = "byoc-gpu"
# The events Karpenter acts on before AWS takes a node away (karpenter.sh/docs/concepts/disruption, interruption).
INTERRUPTION_EVENTS = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
}


# Cold start (spec cold_start, byoc/caches.py). The instance store as the node's ephemeral storage: Karpenter
# stripes its NVMe disks into one RAID0 array and nodeadm puts the kubelet's, containerd's and the pod logs'
# directories on it (karpenter.sh/docs/concepts/nodeclasses, "spec.instanceStorePolicy"; amazon-eks-ami nodeadm,
# NodeConfig `instance.localStorage.strategy: RAID0`). The image pull: nodeadm's FastImagePull feature gate swaps the
# snapshotter for SOCI in parallel pull and unpack mode (amazon-eks-ami nodeadm API reference, `featureGates`;
# experimental), given as a NodeConfig part of the EC2NodeClass's MIME user data, which Karpenter merges with the
# NodeConfig it writes itself (karpenter.sh/docs/concepts/nodeclasses, "spec.userData", AL2023).
FAST_IMAGE_PULL_USER_DATA = """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="//"

--//
Content-Type: application/node.eks.aws

apiVersion: node.eks.aws/v1alpha1
kind: NodeConfig
spec:
  featureGates:
    FastImagePull: true
--//--
"""


def cold_start_node_class(deployment: Deployment) -> dict[str, Any]:
    """The EC2NodeClass fields that shorten a cold start: instance store as ephemeral storage, FastImagePull."""
    fields: dict[str, Any] = {}
    if deployment.disk.ephemeral_on == "local_nvme":
        fields["instanceStorePolicy"] = "RAID0"
    if deployment.caches is not None and deployment.caches.image.mode == "fast_image_pull":
        fields["userData"] = FAST_IMAGE_PULL_USER_DATA
    return fields


def warm_placeholders(deployment: Deployment) -> int:
    return deployment.caches.warm_pool.placeholders if deployment.caches is not None else 0


def gpu_limit(instance_gpus: list[int], shape_gpus: int, max_replicas: int) -> int:
    """GPUs the NodePool may hold: whole instances for every replica plus the model build Job, sized so that any
    of the allowed instance types can carry them all (Karpenter counts a node's full capacity)."""
    pods = max_replicas + 1
    return max(math.ceil(pods / (gpus // shape_gpus)) * gpus for gpus in instance_gpus)


class GpuCapacity(pulumi.ComponentResource):
    queue_arn: pulumi.Output[str]
    node_pool: str

    def __init__(
        self,
        ctx: AwsContext,
        cluster: Cluster,
        identities: Identities,
        key_arn: pulumi.Input[str],
    ) -> None:
        name = ctx.name
        deployment = ctx.deployment
        platform = load_catalog().kubernetes["eks"]
        karpenter = platform["karpenter"]
        super().__init__(
            "byoc:aws:GpuCapacity", f"{name}-gpu-capacity", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        cluster_name = deployment.cluster_name

        queue = aws.sqs.Queue(
            f"{name}-interruptions",
            name=cluster_name,
            message_retention_seconds=300,  # an interruption notice older than that is moot
            kms_master_key_id=key_arn,
            kms_data_key_reuse_period_seconds=300,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruptions",
            queue_url=queue.url,
            policy=policy(
                [
                    {
                        "Sid": "EventBridgeDelivers",
                        "Effect": "Allow",
                        "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                        "Action": "sqs:SendMessage",
                        "Resource": queue.arn,
                        "Condition": {"StringEquals": {"aws:SourceAccount": ctx.account_id}},
                    },
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "sqs:*",
                        "Resource": queue.arn,
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    },
                ]
            ),
            opts=ctx.opts(self),
        )
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(
                f"{name}-{event}",
                name=resource_name(name, event),
                description=f"Karpenter interruption handling: {pattern['detail-type'][0]}",
                event_pattern=pulumi.Output.json_dumps(pattern),
                tags=ctx.tags(),
                opts=ctx.opts(self),
            )
            aws.cloudwatch.EventTarget(
                f"{name}-{event}", rule=rule.name, target_id="karpenter", arn=queue.arn, opts=ctx.opts(self)
            )

        association = aws.eks.PodIdentityAssociation(
            f"{name}-karpenter",
            cluster_name=cluster.name,
            namespace=karpenter["namespace"],
            service_account="karpenter",
            role_arn=identities.roles["karpenter"].arn,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        on_k8s = pulumi.ResourceOptions(parent=self, provider=cluster.provider)
        release = k8s.helm.v3.Release(
            f"{name}-karpenter",
            name="karpenter",
            chart=karpenter["chart"],
            version=karpenter["version"],
            namespace=karpenter["namespace"],
            values={
                "settings": {"clusterName": cluster_name, "interruptionQueue": queue.name},
                "serviceAccount": {"name": "karpenter"},
                "replicas": 2,
                "nodeSelector": {"byoc.dev/pool": "system"},
                "controller": {
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    }
                },
            },
            atomic=True,
            opts=pulumi.ResourceOptions.merge(on_k8s, pulumi.ResourceOptions(depends_on=[association, *cluster.ready])),
        )
        labels = {"app.kubernetes.io/managed-by": "byoc", KUBERNETES_DEPLOYMENT_LABEL: name}
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-gpu-node-class",
            api_version="karpenter.k8s.aws/v1",
            kind="EC2NodeClass",
            metadata={"name": NODE_POOL, "labels": labels},
            spec={
                "role": identities.roles["gpu_nodes"].name,
                # AL2023, NVIDIA variant for GPU instance types (drivers and the container toolkit in the AMI).
                "amiSelectorTerms": [{"alias": deployment.node_image}],
                "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}}],
                "securityGroupSelectorTerms": [{"tags": {"karpenter.sh/discovery": cluster_name}}],
                "metadataOptions": {
                    "httpEndpoint": "enabled",
                    "httpProtocolIPv6": "disabled",
                    "httpTokens": "required",
                    "httpPutResponseHopLimit": IMDS_HOP_LIMIT,
                },
                "blockDeviceMappings": [
                    {
                        "deviceName": "/dev/xvda",
                        "ebs": {
                            # room for the source checkpoint, the built artifact and the serving images
                            "volumeSize": f"{deployment.gpu_node_disk_gib}Gi",
                            "volumeType": "gp3",
                            "iops": 6000,
                            "throughput": 500,  # MiB/s: loading tens of GB of weights is bound by this
                            "encrypted": True,
                            "kmsKeyID": key_arn,
                            "deleteOnTermination": True,
                        },
                    }
                ],
                "tags": ctx.tags(),
                **cold_start_node_class(deployment),
            },
            opts=pulumi.ResourceOptions.merge(on_k8s, pulumi.ResourceOptions(depends_on=[release])),
        )
        placement = deployment.placement
        instance_types = load_catalog().instances[deployment.cloud]
        limit = gpu_limit(
            [instance_types[t].gpus for t in placement.instance_types],
            deployment.shape.count,
            # the warm pool's placeholders hold nodes of their own (stacks/k8s/warm_pool.py)
            deployment.autoscaling.max_replicas + warm_placeholders(deployment),
        )
        requirements: list[dict[str, Any]] = [
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(placement.instance_types)},
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [deployment.capacity]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        ]
        k8s.apiextensions.CustomResource(
            f"{name}-gpu-node-pool",
            api_version="karpenter.sh/v1",
            kind="NodePool",
            metadata={"name": NODE_POOL, "labels": labels},
            spec={
                "template": {
                    "metadata": {"labels": {**labels, "byoc.dev/pool": "gpu"}},
                    "spec": {
                        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": NODE_POOL},
                        "requirements": requirements,
                        "taints": [GPU_TAINT],  # only pods that tolerate GPUs land here
                        "expireAfter": "720h",
                        # Drift and expiry wait for pods marked do-not-disrupt (a build, a serving replica) at most
                        # this long, so an AMI or spec change still rolls every GPU node within a day.
                        "terminationGracePeriod": "24h",
                    },
                },
                "limits": {"nvidia.com/gpu": str(limit)},
                "disruption": {
                    "consolidationPolicy": "WhenEmptyOrUnderutilized",
                    "consolidateAfter": "5m",
                    # never take more than one GPU node at a time for consolidation
                    "budgets": [{"nodes": "1"}],
                },
            },
            opts=pulumi.ResourceOptions.merge(on_k8s, pulumi.ResourceOptions(depends_on=[node_class])),
        )
        self.queue_arn = queue.arn
        self.node_pool = NODE_POOL
        self.register_outputs({"queue_arn": queue.arn})
