"""The artifact store: one private, versioned, CMEK-encrypted bucket for model sources, built artifacts and LoRA
adapters, with its access logged to a separate bucket. `private_bucket` also serves the audit logs."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from byoc.batch import ABORT_MULTIPART_DAYS, BATCH_PREFIX, NONCURRENT_DAYS
from stacks.gcp.context import GcpContext

NONCURRENT_VERSION_DAYS = 30
# Deleted objects stay restorable this long (Cloud Storage "Soft delete"; 7 days is its default, set explicitly).
# Kept for batch/ too: the policy is bucket-wide, and it guards the model sources and artifacts against a delete of
# every version; a purged batch file is unreadable at once, restorable only with storage.objects.restore
# (docs/gcp-foundation.md, "Batch").
SOFT_DELETE_SECONDS = 7 * 86400
# Cloud Storage usage logs are written by this Google group ("Usage logs & storage logs", set up log delivery).
USAGE_LOG_WRITER = "group:cloud-storage-analytics@google.com"


def private_bucket(
    component: pulumi.Resource,
    ctx: GcpContext,
    role: str,
    key_id: pulumi.Input[str],
    key_grants: Sequence[pulumi.Resource],
    log_bucket: gcp.storage.Bucket | None = None,
    noncurrent_days: int | None = NONCURRENT_VERSION_DAYS,
    retention_days: int | None = None,
    retain_on_delete: bool = False,
    lifecycle_rules: Sequence[gcp.storage.BucketLifecycleRuleArgs] = (),
) -> gcp.storage.Bucket:
    """A bucket with every guard on: CMEK default key with Google-managed and customer-supplied keys refused for
    new objects, uniform bucket-level access (no ACLs), public access prevention enforced, soft delete, and either
    versioning (noncurrent versions expire after `noncurrent_days`) or a locked retention policy of
    `retention_days` (Cloud Storage allows one or the other). `key_grants` (the storage agent's grant on the key)
    come first: without it the bucket cannot be created with the key."""
    lifecycle = [
        gcp.storage.BucketLifecycleRuleArgs(
            action=gcp.storage.BucketLifecycleRuleActionArgs(type="AbortIncompleteMultipartUpload"),
            condition=gcp.storage.BucketLifecycleRuleConditionArgs(age=7),
        )
    ]
    if noncurrent_days is not None:
        lifecycle.append(
            gcp.storage.BucketLifecycleRuleArgs(
                action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                    days_since_noncurrent_time=noncurrent_days, with_state="ARCHIVED"
                ),
            )
        )
    lifecycle += lifecycle_rules
    retention = (
        gcp.storage.BucketRetentionPolicyArgs(retention_period=str(retention_days * 86400), is_locked=True)
        if retention_days is not None
        else None
    )
    return gcp.storage.Bucket(
        f"{ctx.name}-{role}",
        name=ctx.bucket_name(role),
        location=ctx.region.upper(),  # one region: the data stays where the deployment is placed
        storage_class="STANDARD",
        uniform_bucket_level_access=True,
        public_access_prevention="enforced",
        versioning=gcp.storage.BucketVersioningArgs(enabled=retention is None),
        retention_policy=retention,
        soft_delete_policy=gcp.storage.BucketSoftDeletePolicyArgs(retention_duration_seconds=SOFT_DELETE_SECONDS),
        encryption=gcp.storage.BucketEncryptionArgs(
            default_kms_key_name=key_id,
            # every new object under a customer-managed key, or not at all (the AWS store's DenyPutsWithoutKms)
            google_managed_encryption_enforcement_config=(
                gcp.storage.BucketEncryptionGoogleManagedEncryptionEnforcementConfigArgs(
                    restriction_mode="FullyRestricted"
                )
            ),
            customer_supplied_encryption_enforcement_config=(
                gcp.storage.BucketEncryptionCustomerSuppliedEncryptionEnforcementConfigArgs(
                    restriction_mode="FullyRestricted"
                )
            ),
        ),
        lifecycle_rules=lifecycle,
        logging=(
            gcp.storage.BucketLoggingArgs(log_bucket=log_bucket.name, log_object_prefix=f"{role}/")
            if log_bucket is not None
            else None
        ),
        force_destroy=False,  # destroy stops at a bucket that still holds data
        # A locked retention policy cannot be removed and a bucket holding retained objects cannot be deleted:
        # destroy leaves it in place and out of the stack (ABANDON) instead of failing.
        deletion_policy="ABANDON" if retain_on_delete else None,
        labels=ctx.labels(**{"byoc-bucket": role}),
        opts=ctx.opts(component, depends_on=list(key_grants), retain_on_delete=retain_on_delete),
    )


def batch_lifecycle_rules(ctx: GcpContext) -> list[gcp.storage.BucketLifecycleRuleArgs]:
    """batch.enabled: the backstop under batch/ (byoc/batch.py): live objects are deleted `expiry_days` after
    creation (the gateway and the worker delete each at its retention; this catches what they leave), and since
    the bucket is versioned, what a delete or that expiry leaves as a noncurrent version goes a day later, not after
    the bucket's 30 days (Cloud Storage deletes an object as soon as any Delete rule's conditions hold: "Object
    Lifecycle Management"). Rules under a prefix use `matches_prefix`."""
    batch = ctx.deployment.batch
    if not batch.enabled:
        return []
    delete = gcp.storage.BucketLifecycleRuleActionArgs(type="Delete")
    return [
        gcp.storage.BucketLifecycleRuleArgs(
            action=delete,
            condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                age=batch.expiry_days, matches_prefixes=[BATCH_PREFIX], with_state="LIVE"
            ),
        ),
        gcp.storage.BucketLifecycleRuleArgs(
            action=delete,
            condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                days_since_noncurrent_time=NONCURRENT_DAYS, matches_prefixes=[BATCH_PREFIX], with_state="ARCHIVED"
            ),
        ),
        gcp.storage.BucketLifecycleRuleArgs(
            action=gcp.storage.BucketLifecycleRuleActionArgs(type="AbortIncompleteMultipartUpload"),
            condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                age=ABORT_MULTIPART_DAYS, matches_prefixes=[BATCH_PREFIX]
            ),
        ),
    ]


class ArtifactStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    log_bucket: gcp.storage.Bucket

    def __init__(
        self, ctx: GcpContext, keys: dict[str, pulumi.Output[str]], grants: dict[str, list[pulumi.Resource]]
    ) -> None:
        name = ctx.name
        super().__init__(
            "byoc:gcp:ArtifactStore", f"{name}-artifact-store", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        self.log_bucket = private_bucket(self, ctx, "access-logs", keys["logs"], grants["logs"], noncurrent_days=90)
        gcp.storage.BucketIAMMember(
            f"{name}-access-log-delivery",
            bucket=self.log_bucket.name,
            role="roles/storage.objectCreator",
            member=USAGE_LOG_WRITER,
            opts=ctx.opts(self),
        )
        bucket = private_bucket(
            self,
            ctx,
            "artifacts",
            keys["artifacts"],
            grants["artifacts"],
            self.log_bucket,
            lifecycle_rules=batch_lifecycle_rules(ctx),
        )
        self.bucket_name = bucket.name
        self.register_outputs({"bucket": bucket.name, "log_bucket": self.log_bucket.name})
