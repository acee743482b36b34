"""The model is built once, in the primary region, and copied to every other region of a multi-region deployment by
S3 Replication of the primary's artifact bucket (artifacts/ only) to each other region's bucket, each replica
encrypted with that region's artifact key, by a role that may do only that.

S3 replicates only objects written after the replication configuration exists (S3 User Guide, "Replicating
objects": existing objects need S3 Batch Replication), so the configuration is part of the primary's own stack and
its build Job waits for it. The destinations are named, not read: each region's bucket is
byoc-<regional name>-artifacts-<account> (stacks/aws/artifacts.py) and its key is reached through its alias
alias/byoc/<regional name>/artifacts (stacks/aws/keys.py), which S3 takes as the replica key (S3 API Reference,
EncryptionConfiguration.ReplicaKmsKeyID: "Key ARN or Alias ARN"). S3 refuses a configuration whose destination
bucket does not exist or is not versioned, so the other regions' stacks come up before the primary's.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.names import resource_name
from byoc.resolve import Deployment
from stacks.aws.context import AwsContext, policy, trust
from stacks.multi_region import is_primary

# Only the built model is copied: batch files and the source mirror stay in the region that wrote them.
REPLICATED_PREFIX = "artifacts/"


def replicates(deployment: Deployment) -> bool:
    """The primary region of a multi-region deployment replicates its artifacts; no other stack does."""
    return deployment.multi_region and is_primary(deployment)


class ArtifactReplication(pulumi.ComponentResource):
    """S3 Replication of the primary's artifacts/ to every other region's bucket (delete markers are not replicated:
    a version the primary removes stays in the regions until their own lifecycle expires it)."""

    def __init__(self, ctx: AwsContext, bucket_name: pulumi.Output[str], key_arn: pulumi.Input[str]) -> None:
        name = ctx.name
        super().__init__(
            "byoc:aws:ArtifactReplication",
            f"{name}-artifact-replication",
            None,
            pulumi.ResourceOptions(provider=ctx.provider),
        )
        source = pulumi.Output.concat("arn:", ctx.partition, ":s3:::", bucket_name)
        destinations = [
            (
                region,
                # the region's artifact bucket and key, as its own stack names them
                pulumi.Output.concat(
                    "arn:", ctx.partition, ":s3:::", resource_name(peer, "artifacts", ""), ctx.account_id
                ),
                pulumi.Output.concat(
                    "arn:", ctx.partition, ":kms:", region, ":", ctx.account_id, ":alias/byoc/", peer, "/artifacts"
                ),
                f"alias/byoc/{peer}/artifacts",
            )
            for region, peer, _cidr in ctx.deployment.peers()
        ]

        def via_s3(region: str, bucket: pulumi.Output[str]) -> dict[str, Any]:
            # the key only through S3 in its region, for this bucket's objects (with an S3 Bucket Key the encryption
            # context is the bucket's ARN: S3 User Guide, "Replicating encrypted objects")
            return {
                "StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"},
                "StringLike": {"kms:EncryptionContext:aws:s3:arn": [bucket, pulumi.Output.concat(bucket, "/*")]},
            }

        statements: list[dict[str, Any]] = [
            {
                "Sid": "ReadReplicationConfiguration",
                "Effect": "Allow",
                "Action": ["s3:GetReplicationConfiguration", "s3:ListBucket"],
                "Resource": source,
            },
            {
                "Sid": "ReadSourceVersions",
                "Effect": "Allow",
                "Action": ["s3:GetObjectVersionForReplication", "s3:GetObjectVersionAcl", "s3:GetObjectVersionTagging"],
                "Resource": pulumi.Output.concat(source, "/", REPLICATED_PREFIX, "*"),
            },
            {
                "Sid": "DecryptSource",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": key_arn,
                "Condition": via_s3(ctx.region, source),
            },
        ]
        for index, (region, bucket, _alias_arn, alias) in enumerate(destinations, start=1):
            statements += [
                {
                    "Sid": f"ReplicateTo{index}",
                    "Effect": "Allow",
                    # no s3:ReplicateDelete: delete markers are not replicated
                    "Action": ["s3:ReplicateObject", "s3:ReplicateTags"],
                    "Resource": pulumi.Output.concat(bucket, "/", REPLICATED_PREFIX, "*"),
                },
                {
                    "Sid": f"EncryptReplicasIn{index}",
                    "Effect": "Allow",
                    "Action": ["kms:Encrypt", "kms:GenerateDataKey"],
                    # the destination key by its alias (kms:ResourceAliases; KMS docs, "Use aliases to control
                    # access to KMS keys"): its ARN is the other stack's
                    "Resource": pulumi.Output.concat(
                        "arn:", ctx.partition, ":kms:", region, ":", ctx.account_id, ":key/*"
                    ),
                    "Condition": {
                        **via_s3(region, bucket),
                        "ForAnyValue:StringEquals": {"kms:ResourceAliases": alias},
                    },
                },
            ]
        role = aws.iam.Role(
            f"{name}-replication",
            name=resource_name(name, "replication"),
            description="S3 replication of the built model from the primary region's bucket to the other regions'",
            # Confused-deputy guard: only S3 acting for this account's source bucket may assume it.
            assume_role_policy=trust(
                "s3.amazonaws.com",
                StringEquals={"aws:SourceAccount": ctx.account_id},
                ArnLike={"aws:SourceArn": source},
            ),
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        role_policy = aws.iam.RolePolicy(
            f"{name}-replication", role=role.id, policy=policy(statements), opts=ctx.opts(self)
        )
        self.configuration = aws.s3.BucketReplicationConfig(
            f"{name}-artifacts",
            bucket=bucket_name,
            role=role.arn,
            rules=[
                aws.s3.BucketReplicationConfigRuleArgs(
                    id=f"artifacts-to-{region}",
                    status="Enabled",
                    priority=index,
                    filter=aws.s3.BucketReplicationConfigRuleFilterArgs(prefix=REPLICATED_PREFIX),
                    delete_marker_replication=aws.s3.BucketReplicationConfigRuleDeleteMarkerReplicationArgs(
                        status="Disabled"
                    ),
                    # every artifact object is SSE-KMS (the bucket refuses others): replicate those
                    source_selection_criteria=aws.s3.BucketReplicationConfigRuleSourceSelectionCriteriaArgs(
                        sse_kms_encrypted_objects=aws.s3.BucketReplicationConfigRuleSourceSelectionCriteriaSseKmsEncryptedObjectsArgs(
                            status="Enabled"
                        )
                    ),
                    destination=aws.s3.BucketReplicationConfigRuleDestinationArgs(
                        bucket=bucket,
                        encryption_configuration=aws.s3.BucketReplicationConfigRuleDestinationEncryptionConfigurationArgs(
                            replica_kms_key_id=alias_arn
                        ),
                    ),
                )
                for index, (region, bucket, alias_arn, _alias) in enumerate(destinations, start=1)
            ],
            opts=ctx.opts(self, depends_on=[role_policy]),
        )
        self.register_outputs({"role": role.arn})
