"""The audit trail: a multi-region CloudTrail with log-file validation, KMS-encrypted, delivered to its own locked-down
bucket and to CloudWatch Logs, recording management events and the artifact bucket's object-level (data) events."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from byoc.names import resource_name
from stacks.aws.artifacts import private_bucket
from stacks.aws.context import AwsContext, policy, trust
from stacks.aws.keys import trail_arn


class AuditTrail(pulumi.ComponentResource):
    trail_arn: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    log_group_name: pulumi.Output[str]

    def __init__(
        self,
        ctx: AwsContext,
        key_arn: pulumi.Input[str],
        log_bucket: aws.s3.Bucket,
        artifact_bucket_arn: pulumi.Output[str],
    ) -> None:
        name = ctx.name
        super().__init__(
            "byoc:aws:AuditTrail", f"{name}-audit-trail", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        arn = trail_arn(ctx)
        bucket_arn = pulumi.Output.concat("arn:", ctx.partition, ":s3:::byoc-", name, "-audit-trail-", ctx.account_id)
        from_this_trail = {"StringEquals": {"aws:SourceArn": arn}}
        bucket, guards = private_bucket(
            self,
            ctx,
            "audit-trail",
            key_arn,
            log_bucket,
            extra_statements=[
                {
                    "Sid": "CloudTrailAclCheck",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudtrail.amazonaws.com"},
                    "Action": "s3:GetBucketAcl",
                    "Resource": bucket_arn,
                    "Condition": from_this_trail,
                },
                {
                    "Sid": "CloudTrailWrite",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudtrail.amazonaws.com"},
                    "Action": "s3:PutObject",
                    "Resource": pulumi.Output.concat(bucket_arn, "/AWSLogs/", ctx.account_id, "/*"),
                    "Condition": {"StringEquals": {"aws:SourceArn": arn, "s3:x-amz-acl": "bucket-owner-full-control"}},
                },
            ],
            noncurrent_days=365,
        )
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-trail",
            name=f"/byoc/{name}/cloudtrail",
            retention_in_days=ctx.log_retention_days,
            kms_key_id=key_arn,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        role = aws.iam.Role(
            f"{name}-trail-to-logs",
            name=resource_name(name, "trail-to-logs"),
            description="CloudTrail delivery to its CloudWatch log group",
            assume_role_policy=trust("cloudtrail.amazonaws.com", StringEquals={"aws:SourceArn": arn}),
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        role_policy = aws.iam.RolePolicy(
            f"{name}-trail-to-logs",
            role=role.id,
            policy=policy(
                [
                    {
                        "Sid": "WriteTrailEvents",
                        "Effect": "Allow",
                        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                        "Resource": pulumi.Output.concat(log_group.arn, ":log-stream:*"),
                    }
                ]
            ),
            opts=ctx.opts(self),
        )
        trail = aws.cloudtrail.Trail(
            f"{name}-trail",
            name=resource_name(name),
            s3_bucket_name=bucket.bucket,
            is_multi_region_trail=True,
            include_global_service_events=True,  # IAM and STS events are global
            enable_log_file_validation=True,  # signed digest files prove logs were not altered
            enable_logging=True,
            kms_key_id=key_arn,
            cloud_watch_logs_group_arn=pulumi.Output.concat(log_group.arn, ":*"),
            cloud_watch_logs_role_arn=role.arn,
            advanced_event_selectors=[
                aws.cloudtrail.TrailAdvancedEventSelectorArgs(
                    # The name Prowler's cloudtrail_multi_region_enabled_logging_management_events looks for (the
                    # name the AWS console gives it); without it a Prowler scan fails byoc's trail.
                    name="Management events selector",
                    field_selectors=[
                        aws.cloudtrail.TrailAdvancedEventSelectorFieldSelectorArgs(
                            field="eventCategory", equals=["Management"]
                        )
                    ],
                ),
                aws.cloudtrail.TrailAdvancedEventSelectorArgs(
                    name="Artifact bucket object access",
                    field_selectors=[
                        aws.cloudtrail.TrailAdvancedEventSelectorFieldSelectorArgs(
                            field="eventCategory", equals=["Data"]
                        ),
                        aws.cloudtrail.TrailAdvancedEventSelectorFieldSelectorArgs(
                            field="resources.type", equals=["AWS::S3::Object"]
                        ),
                        aws.cloudtrail.TrailAdvancedEventSelectorFieldSelectorArgs(
                            field="resources.ARN", starts_withs=[pulumi.Output.concat(artifact_bucket_arn, "/")]
                        ),
                    ],
                ),
            ],
            tags=ctx.tags(),
            opts=ctx.opts(self, depends_on=[bucket, *guards, role_policy]),
        )
        self.trail_arn = trail.arn
        self.bucket_name = bucket.bucket
        self.log_group_name = log_group.name
        self.register_outputs({"trail_arn": trail.arn, "bucket": bucket.bucket})
