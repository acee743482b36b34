"""The weights shared by the replicas of a GPU node on EKS (cold_start.weights_cache node_cache): the Mountpoint for
Amazon S3 CSI driver as an EKS add-on, its role, and the volume the serving stack mounts (stacks/k8s/weights.py).

Sources (awslabs/mountpoint-s3-csi-driver v2.7.0): docs/CONFIGURATION.md (static provisioning, "Driver-Level
Credentials with EKS Pod Identity": a Pod Identity association for the service account `s3-csi-driver-sa`),
docs/CACHING.md (`cache: emptyDir`, `cacheEmptyDirSizeLimit`, `metadata-ttl`), docs/MOUNTPOINT_POD_SHARING.md;
docs/UPGRADING_TO_V2.md: Mountpoint runs as non-root and honours the pod's fsGroup (VOLUME_MOUNT_GROUP), so no
uid/gid/allow-other options are needed for the serving pods' non-root user. IAM: Mountpoint's own
doc/CONFIGURATION.md "IAM permissions" (awslabs/mountpoint-s3): s3:ListBucket and s3:GetObject to read, and
kms:Decrypt for SSE-KMS objects.

Driver-level credentials (not `authenticationSource: pod`): the serving pods and the warm-pool placeholders then
share one Mountpoint per node (pod-level credentials share only between pods of one service account), and the role
reads exactly one prefix, the built artifact's, with the artifact key through S3 only.
"""

from __future__ import annotations

from typing import Any

import pulumi

from byoc.resolve import Deployment
from runtime.model_build.plan import build_plan

ADDON = "aws-mountpoint-s3-csi-driver"
DRIVER = "s3.csi.aws.com"
SERVICE_ACCOUNT = "s3-csi-driver-sa"  # the add-on's node plugin (charts/aws-mountpoint-s3-csi-driver/values.yaml)
ROLE = "mountpoint_s3"


def shares_weights(deployment: Deployment) -> bool:
    """Whether the plan renders the node-shared weights (cold_start.weights_cache node_cache)."""
    caches = deployment.caches
    return caches is not None and caches.weights.shared_by_node


def artifact_prefix(deployment: Deployment) -> str:
    """The built artifact's content-addressed prefix (runtime/model_build/plan.py), without a trailing slash."""
    return build_plan(deployment).artifact_prefix


def driver_statements(
    bucket_arn: pulumi.Output[str], key_arn: pulumi.Output[str], prefix: str, region: str
) -> list[dict[str, Any]]:
    """The driver role's permissions: list and read the artifact's prefix only, and decrypt with the artifact key
    only through S3 in this region (the objects are SSE-KMS with it: S3 asks KMS to decrypt as the caller)."""
    return [
        {
            "Sid": "ListArtifactPrefix",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
        },
        {
            "Sid": "ReadArtifactPrefix",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": pulumi.Output.concat(bucket_arn, "/", prefix, "/*"),
        },
        {
            "Sid": "ArtifactKeyThroughS3",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
    ]


def volume(bucket_name: pulumi.Input[str], region: str, depends_on: list[pulumi.Resource]) -> Any:
    """The serving stack's NodeWeightsVolume: the bucket through the driver, read-only, cached on the node."""
    from stacks.k8s.weights import NodeWeightsVolume

    return NodeWeightsVolume(
        driver=DRIVER,
        volume_attributes={
            "bucketName": bucket_name,
            "authenticationSource": "driver",
            # the Mountpoint Pod's emptyDir: on the node's ephemeral storage, the instance store under RAID0
            "cache": "emptyDir",
        },
        mount_options=[
            "read-only",
            f"region {region}",
            # the prefix is content-addressed (a new build is a new prefix): its listing never changes
            "metadata-ttl indefinite",
        ],
        cache_size_attribute="cacheEmptyDirSizeLimit",
        depends_on=depends_on,
    )
