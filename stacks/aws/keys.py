"""Customer-managed KMS keys: one for the platform (cluster secrets, EBS volumes, logs, the audit trail, queues) and
one for model artifacts. A key ARN in the spec is used for both instead (its key policy is then the customer's)."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from byoc.batch import GATEWAY_ROLE, WORKER_ROLE
from stacks.aws.context import AwsContext, policy

# KMS waits this long before deleting a key (7 to 30 days): the longest, so a mistaken destroy can be undone.
DELETION_WINDOW_DAYS = 30
ENCRYPT_DECRYPT = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]


def trail_arn(ctx: AwsContext) -> pulumi.Output[str]:
    """The audit trail's ARN, known before the trail exists (the key policy and the trail refer to each other)."""
    return ctx.arn("cloudtrail", f"trail/byoc-{ctx.name}")


class Keys(pulumi.ComponentResource):
    platform_key_arn: pulumi.Output[str]
    artifact_key_arn: pulumi.Output[str]
    created: bool

    def __init__(self, ctx: AwsContext, roles: dict[str, pulumi.Input[str]]) -> None:
        """roles: ARNs of the roles that use the keys: cluster, karpenter, ebs_csi, builder, serving."""
        name = ctx.name
        super().__init__("byoc:aws:Keys", f"{name}-keys", None, pulumi.ResourceOptions(provider=ctx.provider))
        given = ctx.deployment.encryption.kms_key
        self.created = given == "create"
        if not self.created:
            self.platform_key_arn = pulumi.Output.from_input(given)
            self.artifact_key_arn = pulumi.Output.from_input(given)
            self._ebs_default(ctx, self.platform_key_arn)
            self.register_outputs({"platform_key_arn": given, "artifact_key_arn": given})
            return

        via_ec2 = {"StringEquals": {"kms:ViaService": f"ec2.{ctx.region}.amazonaws.com"}}
        via_s3 = {"StringEquals": {"kms:ViaService": f"s3.{ctx.region}.amazonaws.com"}}
        platform = self._key(
            ctx,
            "platform",
            "byoc platform key: EKS secrets, EBS volumes, CloudWatch logs, CloudTrail, SQS",
            [
                *self._service_statements(ctx),
                # EKS envelope-encrypts Kubernetes secrets through the cluster role.
                self._allow("ClusterEncryptsSecrets", [roles["cluster"]], [*ENCRYPT_DECRYPT, "kms:ListGrants"]),
                # Karpenter (launching GPU nodes) and the EBS CSI driver (volumes) use the key only through EC2.
                self._allow("VolumesThroughEc2", [roles["karpenter"], roles["ebs_csi"]], ENCRYPT_DECRYPT, via_ec2),
                self._allow(
                    "GrantsForAwsResources",
                    [roles["cluster"], roles["karpenter"], roles["ebs_csi"], _autoscaling_role(ctx)],
                    ["kms:CreateGrant"],
                    {"Bool": {"kms:GrantIsForAWSResource": "true"}},
                ),
                # EC2 Auto Scaling (the system node group) attaches encrypted volumes through its service-linked
                # role (EKS docs, "Customize managed nodes with launch templates").
                self._allow("AutoScalingUsesVolumes", [_autoscaling_role(ctx)], ENCRYPT_DECRYPT),
            ],
        )
        artifacts = self._key(
            ctx,
            "artifacts",
            "byoc artifact key: model checkpoints, built artifacts and LoRA adapters in S3",
            [
                self._allow("BuilderWritesThroughS3", [roles["builder"]], ENCRYPT_DECRYPT, via_s3),
                self._allow("ServingReadsThroughS3", [roles["serving"]], ["kms:Decrypt", "kms:DescribeKey"], via_s3),
                *self._batch_statements(roles, via_s3),
                # cold_start.weights_cache node_cache: the Mountpoint CSI driver reads the artifact
                *(
                    [self._allow("MountpointReadsThroughS3", [roles["mountpoint_s3"]], ["kms:Decrypt"], via_s3)]
                    if "mountpoint_s3" in roles
                    else []
                ),
            ],
        )
        self.platform_key_arn = platform.arn
        self.artifact_key_arn = artifacts.arn
        self._ebs_default(ctx, self.platform_key_arn)
        self.register_outputs({"platform_key_arn": platform.arn, "artifact_key_arn": artifacts.arn})

    def _ebs_default(self, ctx: AwsContext, key_arn: pulumi.Output[str]) -> None:
        """encryption.ebs_default: every new EBS volume in the region is encrypted, by default with the platform key.

        Account-wide in the region (not only byoc's volumes), hence opt-in. Principals that create volumes need
        kms:CreateGrant/Encrypt on the key through IAM (the key policy delegates to the account's IAM).
        """
        if not ctx.deployment.encryption.ebs_default:
            return
        aws.ebs.EncryptionByDefault(f"{ctx.name}-ebs-encryption-by-default", enabled=True, opts=ctx.opts(self))
        aws.ebs.DefaultKmsKey(f"{ctx.name}-ebs-default-key", key_arn=key_arn, opts=ctx.opts(self))

    def _key(self, ctx: AwsContext, role: str, description: str, statements: list[Any]) -> aws.kms.Key:
        name = ctx.name
        account_root = pulumi.Output.concat("arn:", ctx.partition, ":iam::", ctx.account_id, ":root")
        key = aws.kms.Key(
            f"{name}-{role}",
            description=description,
            key_usage="ENCRYPT_DECRYPT",
            customer_master_key_spec="SYMMETRIC_DEFAULT",
            enable_key_rotation=True,
            rotation_period_in_days=365,
            deletion_window_in_days=DELETION_WINDOW_DAYS,
            # In a key policy "Resource": "*" means this key: a key policy governs only its own key.
            policy=policy(
                [
                    {
                        # The account administers the key through IAM; without this statement a key can become
                        # unmanageable (AWS KMS default key policy).
                        "Sid": "AccountAdministers",
                        "Effect": "Allow",
                        "Principal": {"AWS": account_root},
                        "Action": "kms:*",
                        "Resource": "*",
                    },
                    *statements,
                ]
            ),
            tags=ctx.tags(**{"byoc:key": role}),
            opts=ctx.opts(self),
        )
        aws.kms.Alias(
            f"{name}-{role}",
            name=f"alias/byoc/{name}/{role}",
            target_key_id=key.key_id,
            opts=ctx.opts(self),
        )
        return key

    @staticmethod
    def _allow(
        sid: str, principals: list[Any], actions: list[str], condition: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        statement = {"Sid": sid, "Effect": "Allow", "Principal": {"AWS": principals}, "Action": actions}
        statement["Resource"] = "*"
        if condition:
            statement["Condition"] = condition
        return statement

    @classmethod
    def _batch_statements(cls, roles: dict[str, pulumi.Input[str]], via_s3: dict[str, Any]) -> list[dict[str, Any]]:
        """batch.enabled: the gateway and the batch worker write and read batch/ objects with the artifact key,
        through S3 only (their IAM policies say the same: stacks/aws/identities.py batch_statements)."""
        batch = [roles[role] for role in (GATEWAY_ROLE, WORKER_ROLE) if role in roles]
        if not batch:
            return []
        return [cls._allow("BatchFilesThroughS3", batch, ["kms:GenerateDataKey", "kms:Decrypt"], via_s3)]

    @staticmethod
    def _service_statements(ctx: AwsContext) -> list[dict[str, Any]]:
        logs_arn = ctx.arn("logs", "log-group:*")
        return [
            {
                # CloudWatch Logs encrypts the flow-log, control-plane and trail log groups of this account only.
                "Sid": "CloudWatchLogs",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{ctx.region}.amazonaws.com"},
                "Action": ENCRYPT_DECRYPT,
                "Resource": "*",
                "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": logs_arn}},
            },
            {
                # CloudTrail encrypts log files of byoc's trail only (SourceArn) in this account.
                "Sid": "CloudTrailEncrypts",
                "Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                "Action": "kms:GenerateDataKey*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceArn": trail_arn(ctx)},
                    "StringLike": {
                        "kms:EncryptionContext:aws:cloudtrail:arn": ctx.arn("cloudtrail", "trail/*", region=False)
                    },
                },
            },
            {
                "Sid": "CloudTrailDescribes",
                "Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                "Action": "kms:DescribeKey",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceArn": trail_arn(ctx)}},
            },
            {
                # EventBridge delivers spot-interruption and health events to Karpenter's encrypted queue.
                "Sid": "EventBridgeToQueue",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": ["kms:GenerateDataKey*", "kms:Decrypt"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:SourceAccount": ctx.account_id}},
            },
        ]


def _autoscaling_role(ctx: AwsContext) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        "arn:",
        ctx.partition,
        ":iam::",
        ctx.account_id,
        ":role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
    )
