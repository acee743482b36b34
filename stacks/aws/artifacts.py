"""The artifact store: one private, versioned, KMS-encrypted bucket for model sources, built artifacts and LoRA
adapters, with its access logged to a separate bucket. `private_bucket` also serves the audit trail."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.batch import ABORT_MULTIPART_DAYS, BATCH_PREFIX, NONCURRENT_DAYS
from byoc.names import resource_name
from stacks.aws.context import AwsContext, policy

NONCURRENT_VERSION_DAYS = 30


def deny_insecure_transport(bucket_arn: pulumi.Output[str]) -> dict[str, Any]:
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, pulumi.Output.concat(bucket_arn, "/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def private_bucket(
    component: pulumi.Resource,
    ctx: AwsContext,
    role: str,
    key_arn: pulumi.Input[str] | None,
    log_bucket: aws.s3.Bucket | None,
    extra_statements: list[dict[str, Any]] | None = None,
    noncurrent_days: int = NONCURRENT_VERSION_DAYS,
    lifecycle_rules: list[aws.s3.BucketLifecycleConfigurationRuleArgs] | None = None,
) -> tuple[aws.s3.Bucket, list[pulumi.Resource]]:
    """A bucket with every guard on: SSE-KMS with a bucket key (SSE-S3 where AWS allows nothing else), versioning,
    all four Block Public Access settings, BucketOwnerEnforced, TLS-only, optional access logging. Returns the bucket
    and its guard resources (for whoever must wait until the bucket is locked down). `lifecycle_rules` join the
    bucket's own rule in its one lifecycle configuration (S3 keeps one per bucket: a second would replace it)."""
    name = ctx.name
    bucket = aws.s3.Bucket(
        f"{name}-{role}",
        bucket=pulumi.Output.concat(resource_name(name, role, ""), ctx.account_id),
        force_destroy=False,
        tags=ctx.tags(**{"byoc:bucket": role}),
        opts=ctx.opts(component),
    )
    child = ctx.opts(component, depends_on=[bucket])
    if key_arn is None:
        default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
            sse_algorithm="AES256"
        )
    else:
        default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
            sse_algorithm="aws:kms", kms_master_key_id=key_arn
        )
    encryption = aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-{role}",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=default,
                bucket_key_enabled=key_arn is not None,  # fewer KMS calls, lower cost
            )
        ],
        opts=child,
    )
    aws.s3.BucketVersioning(
        f"{name}-{role}",
        bucket=bucket.id,
        versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        opts=child,
    )
    public_access = aws.s3.BucketPublicAccessBlock(
        f"{name}-{role}",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=child,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-{role}",
        bucket=bucket.id,
        rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),  # ACLs off
        opts=child,
    )
    bucket_policy = aws.s3.BucketPolicy(
        f"{name}-{role}",
        bucket=bucket.id,
        policy=policy([deny_insecure_transport(bucket.arn), *(extra_statements or [])]),
        opts=ctx.opts(component, depends_on=[public_access]),
    )
    aws.s3.BucketLifecycleConfiguration(
        f"{name}-{role}",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-noncurrent-versions",
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=noncurrent_days
                ),
                abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                    days_after_initiation=7
                ),
            ),
            *(lifecycle_rules or []),
        ],
        opts=child,
    )
    if log_bucket is not None:
        aws.s3.BucketLogging(
            f"{name}-{role}",
            bucket=bucket.id,
            target_bucket=log_bucket.id,
            target_prefix=f"{role}/",
            opts=child,
        )
    return bucket, [encryption, public_access, bucket_policy]


def batch_lifecycle_rules(ctx: AwsContext) -> list[aws.s3.BucketLifecycleConfigurationRuleArgs]:
    """batch.enabled: the backstop under batch/ (byoc/batch.py): objects expire `expiry_days` after creation (the
    gateway and the worker delete each at its retention; this catches what they leave), and since the bucket is
    versioned, what a delete or an expiry leaves as a noncurrent version goes a day later, not after the bucket's
    30 days (S3 honours the shorter of two overlapping expirations: S3 docs, "How Amazon S3 handles conflicts in
    lifecycle configurations"); incomplete multipart uploads are aborted after a day."""
    batch = ctx.deployment.batch
    if not batch.enabled:
        return []
    return [
        aws.s3.BucketLifecycleConfigurationRuleArgs(
            id="expire-batch-files",
            status="Enabled",
            filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=BATCH_PREFIX),
            expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(days=batch.expiry_days),
            noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                noncurrent_days=NONCURRENT_DAYS
            ),
            abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                days_after_initiation=ABORT_MULTIPART_DAYS
            ),
        )
    ]


class ArtifactStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    log_bucket: aws.s3.Bucket

    def __init__(self, ctx: AwsContext, key_arn: pulumi.Input[str]) -> None:
        name = ctx.name
        super().__init__(
            "byoc:aws:ArtifactStore", f"{name}-artifact-store", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        # S3 server access logs can only be delivered to a bucket encrypted with SSE-S3, not SSE-KMS (S3 docs,
        # "Enabling Amazon S3 server access logging": the target bucket must not use SSE-KMS), so the log bucket
        # is AES-256; it holds request metadata, not model data, and is private, versioned and TLS-only.
        log_bucket_arn = pulumi.Output.concat(
            "arn:", ctx.partition, ":s3:::byoc-", name, "-access-logs-", ctx.account_id
        )
        self.log_bucket, _ = private_bucket(
            self,
            ctx,
            "access-logs",
            None,
            None,
            extra_statements=[
                {
                    "Sid": "S3ServerAccessLogDelivery",
                    "Effect": "Allow",
                    "Principal": {"Service": "logging.s3.amazonaws.com"},
                    "Action": "s3:PutObject",
                    "Resource": pulumi.Output.concat(log_bucket_arn, "/*"),
                    "Condition": {
                        "StringEquals": {"aws:SourceAccount": ctx.account_id},
                        # only this deployment's buckets log here
                        "ArnLike": {
                            "aws:SourceArn": pulumi.Output.concat("arn:", ctx.partition, f":s3:::byoc-{name}-*")
                        },
                    },
                }
            ],
            noncurrent_days=90,
        )
        artifacts_arn = pulumi.Output.concat("arn:", ctx.partition, ":s3:::byoc-", name, "-artifacts-", ctx.account_id)
        bucket, _ = private_bucket(
            self,
            ctx,
            "artifacts",
            key_arn,
            self.log_bucket,
            extra_statements=[
                {
                    # Every object is written with SSE-KMS under the artifact key, or not at all.
                    "Sid": "DenyPutsWithoutKms",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject",
                    "Resource": pulumi.Output.concat(artifacts_arn, "/*"),
                    "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
                },
                {
                    "Sid": "DenyPutsWithAnotherKey",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject",
                    "Resource": pulumi.Output.concat(artifacts_arn, "/*"),
                    "Condition": {
                        "StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key_arn}
                    },
                },
            ],
            lifecycle_rules=batch_lifecycle_rules(ctx),
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket": bucket.bucket, "log_bucket": self.log_bucket.bucket})
