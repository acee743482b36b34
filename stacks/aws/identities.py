"""IAM roles: the cluster's, the nodes', the controllers' (Karpenter, EBS CSI), and the workloads' (model builder,
serving pods), each bound to its Kubernetes service account through EKS Pod Identity.

Roles are created first with their trust policies only, so that the KMS key policies can name them; their
permissions are attached once the keys and the bucket exist (`attach_policies`).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.batch import BATCH_PREFIX, GATEWAY_ROLE, WORKER_ROLE
from byoc.names import resource_name
from stacks.aws.context import AwsContext, policy, trust
from stacks.aws.karpenter_policy import NODE_MANAGED_POLICIES, controller_policy
from stacks.aws.weights import ROLE as MOUNTPOINT_ROLE
from stacks.aws.weights import artifact_prefix, driver_statements, shares_weights

POD_IDENTITY = "pods.eks.amazonaws.com"
# Pod Identity needs TagSession to pass the pod's session tags (EKS docs, "EKS Pod Identity role trust").
POD_IDENTITY_ACTIONS = ("sts:AssumeRole", "sts:TagSession")


def managed_policy(ctx: AwsContext, name: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("arn:", ctx.partition, ":iam::aws:policy/", name)


class Identities(pulumi.ComponentResource):
    roles: dict[str, aws.iam.Role]

    def __init__(self, ctx: AwsContext) -> None:
        name = ctx.name
        super().__init__(
            "byoc:aws:Identities", f"{name}-identities", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        cluster_arn = ctx.arn("eks", f"cluster/{ctx.deployment.cluster_name}")
        # Confused-deputy guards: a pod-identity role is assumable only for pods of this account's cluster.
        pods = {"StringEquals": {"aws:SourceAccount": ctx.account_id}, "ArnEquals": {"aws:SourceArn": cluster_arn}}
        trusts: dict[str, tuple[str, pulumi.Output[str]]] = {
            "cluster": ("EKS control plane", trust("eks.amazonaws.com", ("sts:AssumeRole", "sts:TagSession"))),
            "nodes": ("system node group instances", trust("ec2.amazonaws.com")),
            "gpu_nodes": ("GPU nodes Karpenter launches", trust("ec2.amazonaws.com")),
            "karpenter": ("Karpenter controller", trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods)),
            "ebs_csi": ("EBS CSI driver controller", trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods)),
            "builder": ("model builder Job", trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods)),
            "serving": ("serving pods", trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods)),
        }
        for role, purpose in batch_roles(ctx).items():
            trusts[role] = (purpose, trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods))
        if shares_weights(ctx.deployment):
            trusts[MOUNTPOINT_ROLE] = (
                "Mountpoint for Amazon S3 CSI driver (the model artifact, read-only)",
                trust(POD_IDENTITY, POD_IDENTITY_ACTIONS, **pods),
            )
        self.roles = {
            role: aws.iam.Role(
                f"{name}-{role.replace('_', '-')}",
                name=resource_name(name, role.replace("_", "-")),
                description=f"byoc {name}: {purpose}",
                assume_role_policy=document,
                max_session_duration=3600,
                tags=ctx.tags(**{"byoc:role": role}),
                opts=ctx.opts(self),
            )
            for role, (purpose, document) in trusts.items()
        }
        managed = {
            "cluster": ["AmazonEKSClusterPolicy"],
            "nodes": list(NODE_MANAGED_POLICIES),
            "gpu_nodes": list(NODE_MANAGED_POLICIES),
            "ebs_csi": ["service-role/AmazonEBSCSIDriverPolicy"],
        }
        for role, policies in managed.items():
            for policy_name in policies:
                aws.iam.RolePolicyAttachment(
                    f"{name}-{role.replace('_', '-')}-{policy_name.split('/')[-1]}",
                    role=self.roles[role].name,
                    policy_arn=managed_policy(ctx, policy_name),
                    opts=ctx.opts(self),
                )
        self.register_outputs({role: r.arn for role, r in self.roles.items()})

    def arns(self) -> dict[str, pulumi.Input[str]]:
        return {role: r.arn for role, r in self.roles.items()}

    def bind_service_accounts(self, ctx: AwsContext, cluster_name: pulumi.Input[str]) -> None:
        """EKS Pod Identity: the builder and serving service accounts of the deployment's namespace get their
        roles (the Kubernetes stack creates the namespace and the service accounts with these names)."""
        deployment = ctx.deployment
        for role, service_account in deployment.service_accounts.items():
            aws.eks.PodIdentityAssociation(
                f"{ctx.name}-{role}",
                cluster_name=cluster_name,
                namespace=deployment.namespace,
                service_account=service_account,
                role_arn=self.roles[role].arn,
                tags=ctx.tags(),
                opts=ctx.opts(self),
            )

    def attach_policies(
        self,
        ctx: AwsContext,
        bucket_arn: pulumi.Output[str],
        artifact_key_arn: pulumi.Output[str],
        interruption_queue_arn: pulumi.Output[str],
    ) -> None:
        """The roles' permissions, once the resources they name exist."""
        name = ctx.name
        deployment = ctx.deployment
        objects = pulumi.Output.concat(bucket_arn, "/")
        source_read = [
            statement
            for field, source in deployment.build_sources
            for statement in self._source_statements(field, source, ctx)
        ]
        documents: dict[str, pulumi.Output[str]] = {
            "builder": policy(
                [
                    {
                        "Sid": "ReadSourcesAndAdapters",
                        "Effect": "Allow",
                        "Action": ["s3:GetObject"],
                        "Resource": [
                            pulumi.Output.concat(objects, "sources/*"),
                            pulumi.Output.concat(objects, "adapters/*"),
                        ],
                    },
                    {
                        "Sid": "WriteOwnArtifactPrefix",
                        "Effect": "Allow",
                        "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
                        "Resource": pulumi.Output.concat(objects, "artifacts/*"),
                    },
                    {
                        "Sid": "ListOwnPrefixes",
                        "Effect": "Allow",
                        "Action": ["s3:ListBucket"],
                        "Resource": bucket_arn,
                        "Condition": {"StringLike": {"s3:prefix": ["sources/*", "adapters/*", "artifacts/*"]}},
                    },
                    {
                        "Sid": "UseArtifactKey",
                        "Effect": "Allow",
                        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                        "Resource": artifact_key_arn,
                    },
                    *source_read,
                ]
            ),
            "serving": policy(
                [
                    {
                        "Sid": "ReadArtifactsAndAdapters",
                        "Effect": "Allow",
                        "Action": ["s3:GetObject"],
                        "Resource": [
                            pulumi.Output.concat(objects, "artifacts/*"),
                            pulumi.Output.concat(objects, "adapters/*"),
                        ],
                    },
                    {
                        "Sid": "ListArtifacts",
                        "Effect": "Allow",
                        "Action": ["s3:ListBucket"],
                        "Resource": bucket_arn,
                        "Condition": {"StringLike": {"s3:prefix": ["artifacts/*", "adapters/*"]}},
                    },
                    {
                        "Sid": "DecryptArtifacts",
                        "Effect": "Allow",
                        "Action": ["kms:Decrypt", "kms:DescribeKey"],
                        "Resource": artifact_key_arn,
                    },
                ]
            ),
            "karpenter": pulumi.Output.all(
                ctx.partition, ctx.account_id, self.roles["gpu_nodes"].arn, interruption_queue_arn
            ).apply(
                lambda values: _json(
                    controller_policy(
                        partition=values[0],
                        region=ctx.region,
                        account_id=values[1],
                        cluster_name=deployment.cluster_name,
                        node_role_arn=values[2],
                        interruption_queue_arn=values[3],
                    )
                )
            ),
        }
        for role in batch_roles(ctx):
            documents[role] = policy(batch_statements(bucket_arn, artifact_key_arn, ctx.region))
        if MOUNTPOINT_ROLE in self.roles:
            prefix = artifact_prefix(deployment)
            documents[MOUNTPOINT_ROLE] = policy(driver_statements(bucket_arn, artifact_key_arn, prefix, ctx.region))
        for role, document in documents.items():
            aws.iam.RolePolicy(
                f"{name}-{role}",
                name=f"byoc-{role}",
                role=self.roles[role].id,
                policy=document,
                opts=ctx.opts(self),
            )

    @staticmethod
    def _source_statements(field: str, source: str, ctx: AwsContext) -> list[dict[str, Any]]:
        """The builder may also read each source in the customer's own buckets (model.source, addons[i].source,
        speculative.draft_model: s3://...): object reads under that prefix and listing of that prefix only."""
        if not source.startswith("s3://"):
            return []
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        arn = pulumi.Output.concat("arn:", ctx.partition, ":s3:::", bucket)
        prefix = prefix.rstrip("/")
        objects = pulumi.Output.concat(arn, "/", prefix, "/*") if prefix else pulumi.Output.concat(arn, "/*")
        # Sids are alphanumeric: model.source -> ModelSource, addons[0].source -> Addon0Source
        what = {"model.source": "ModelSource", "speculative.draft_model": "DraftModelSource"}.get(field)
        what = what or "Addon" + "".join(c for c in field.removeprefix("addons") if c.isdigit()) + "Source"
        statements: list[dict[str, Any]] = [
            {"Sid": f"Read{what}", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": objects},
            {"Sid": f"List{what}", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": arn},
        ]
        if prefix:
            statements[1]["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}}
        return statements


def batch_roles(ctx: AwsContext) -> dict[str, str]:
    """The roles batch adds (batch.enabled): role -> purpose. Nothing without batch."""
    if not ctx.deployment.batch.enabled:
        return {}
    return {GATEWAY_ROLE: "gateway pods (batch files under batch/)", WORKER_ROLE: "batch worker (batch/ only)"}


def batch_statements(bucket_arn: pulumi.Output[str], key_arn: pulumi.Output[str], region: str) -> list[dict[str, Any]]:
    """The gateway's and the batch worker's permissions: objects under batch/ of the artifact bucket (read, write,
    delete every version: files are deleted at DELETE /v1/files and at expiry), listing of that prefix (and its
    versions) only, and the artifact key
    for S3's SSE-KMS on them only through S3 in this region (kms:ViaService). Nothing else of the bucket: the model
    artifacts stay read-only to the serving pods and out of these roles' reach."""
    prefix = BATCH_PREFIX  # "batch/"
    return [
        {
            "Sid": "BatchObjects",
            "Effect": "Allow",
            # PutObject covers multipart uploads; DeleteObject is what DeleteObjects checks per key, and
            # DeleteObjectVersion per (key, VersionId): the bucket is versioned, and a DELETE or an expiry removes
            # every version of a batch object (runtime/model_build/stores.py S3Store.purge). No GetObjectVersion:
            # nothing here reads an earlier version.
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
            "Resource": pulumi.Output.concat(bucket_arn, "/", prefix, "*"),
        },
        {
            "Sid": "ListBatchPrefix",
            "Effect": "Allow",
            # ListBucketVersions (ListObjectVersions) finds the versions to purge; same s3:prefix condition
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
        {
            # SSE-KMS: S3 asks KMS for a data key on PutObject and to decrypt it on GetObject, as the caller
            # (S3 docs, "Using server-side encryption with AWS KMS keys": permissions)
            "Sid": "ArtifactKeyThroughS3",
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": key_arn,
            "Condition": {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
        },
    ]


def _json(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document)
