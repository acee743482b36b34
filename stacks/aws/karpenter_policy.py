"""Least-privilege IAM policy for the Karpenter v1 controller (and the node role's managed policies).

Transcribed statement by statement from Karpenter v1.8's getting-started CloudFormation template,
``website/content/en/docs/getting-started/getting-started-with-karpenter/cloudformation.yaml`` in
https://github.com/aws/karpenter-provider-aws (the v1.8 docs download the same template from
``website/content/en/preview/...`` at tag ``v1.8.x``). The template splits the controller permissions into
five managed policies: KarpenterControllerNodeLifecyclePolicy, KarpenterControllerIAMIntegrationPolicy,
KarpenterControllerEKSIntegrationPolicy, KarpenterControllerInterruptionPolicy and
KarpenterControllerResourceDiscoveryPolicy. ``controller_policy`` merges all of their statements, in template
order, into one document. Every Sid, action list and Condition is kept; the CloudFormation substitutions
(``${AWS::Partition}``, ``${AWS::Region}``, ``${AWS::AccountId}``, ``${ClusterName}``,
``${KarpenterNodeRole.Arn}``, ``${KarpenterInterruptionQueue.Arn}``) come from the arguments.

Pure stdlib: no Pulumi or boto3, so the document can be unit-tested and diffed against upstream.
"""

from __future__ import annotations

from typing import Any

# AWS managed policies attached to KarpenterNodeRole in the template (ManagedPolicyArns).
# The template also attaches AmazonSSMManagedInstanceCore; byoc deliberately omits it: we give no SSM shell
# (Session Manager) access to GPU nodes, and nodes do not need SSM to join the cluster (least privilege).
NODE_MANAGED_POLICIES: tuple[str, ...] = (
    "AmazonEKS_CNI_Policy",
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryPullOnly",
)


def controller_policy(
    partition: str,
    region: str,
    account_id: str,
    cluster_name: str,
    node_role_arn: str,
    interruption_queue_arn: str,
) -> dict[str, Any]:
    """IAM policy document (as a dict, Version 2012-10-17) for the Karpenter v1 controller."""
    ec2 = f"arn:{partition}:ec2:{region}"
    instance_profiles = f"arn:{partition}:iam::{account_id}:instance-profile/*"
    request_cluster_tag = f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}"
    resource_cluster_tag = f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}"
    created_resources = [
        f"{ec2}:*:fleet/*",
        f"{ec2}:*:instance/*",
        f"{ec2}:*:volume/*",
        f"{ec2}:*:network-interface/*",
        f"{ec2}:*:launch-template/*",
        f"{ec2}:*:spot-instances-request/*",
    ]

    statements: list[dict[str, Any]] = [
        # --- KarpenterControllerNodeLifecyclePolicy ---
        {
            "Sid": "AllowScopedEC2InstanceAccessActions",
            "Effect": "Allow",
            "Resource": [
                f"{ec2}::image/*",
                f"{ec2}::snapshot/*",
                f"{ec2}:*:security-group/*",
                f"{ec2}:*:subnet/*",
                f"{ec2}:*:capacity-reservation/*",
            ],
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
        },
        {
            "Sid": "AllowScopedEC2LaunchTemplateAccessActions",
            "Effect": "Allow",
            "Resource": f"{ec2}:*:launch-template/*",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Condition": {
                "StringEquals": {resource_cluster_tag: "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedEC2InstanceActionsWithTags",
            "Effect": "Allow",
            "Resource": list(created_resources),
            "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
            "Condition": {
                "StringEquals": {
                    request_cluster_tag: "owned",
                    "aws:RequestTag/eks:eks-cluster-name": cluster_name,
                },
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedResourceCreationTagging",
            "Effect": "Allow",
            "Resource": list(created_resources),
            "Action": "ec2:CreateTags",
            "Condition": {
                "StringEquals": {
                    request_cluster_tag: "owned",
                    "aws:RequestTag/eks:eks-cluster-name": cluster_name,
                    "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"],
                },
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedResourceTagging",
            "Effect": "Allow",
            "Resource": f"{ec2}:*:instance/*",
            "Action": "ec2:CreateTags",
            "Condition": {
                "StringEquals": {resource_cluster_tag: "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                "ForAllValues:StringEquals": {
                    "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"],
                },
            },
        },
        {
            "Sid": "AllowScopedDeletion",
            "Effect": "Allow",
            "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
            "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
            "Condition": {
                "StringEquals": {resource_cluster_tag: "owned"},
                "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
            },
        },
        # --- KarpenterControllerIAMIntegrationPolicy ---
        {
            "Sid": "AllowPassingInstanceRole",
            "Effect": "Allow",
            "Resource": node_role_arn,
            "Action": "iam:PassRole",
            "Condition": {
                "StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]},
            },
        },
        {
            "Sid": "AllowScopedInstanceProfileCreationActions",
            "Effect": "Allow",
            "Resource": instance_profiles,
            "Action": ["iam:CreateInstanceProfile"],
            "Condition": {
                "StringEquals": {
                    request_cluster_tag: "owned",
                    "aws:RequestTag/eks:eks-cluster-name": cluster_name,
                    "aws:RequestTag/topology.kubernetes.io/region": region,
                },
                "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
        },
        {
            "Sid": "AllowScopedInstanceProfileTagActions",
            "Effect": "Allow",
            "Resource": instance_profiles,
            "Action": ["iam:TagInstanceProfile"],
            "Condition": {
                "StringEquals": {
                    resource_cluster_tag: "owned",
                    "aws:ResourceTag/topology.kubernetes.io/region": region,
                    request_cluster_tag: "owned",
                    "aws:RequestTag/eks:eks-cluster-name": cluster_name,
                    "aws:RequestTag/topology.kubernetes.io/region": region,
                },
                "StringLike": {
                    "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                    "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*",
                },
            },
        },
        {
            "Sid": "AllowScopedInstanceProfileActions",
            "Effect": "Allow",
            "Resource": instance_profiles,
            "Action": [
                "iam:AddRoleToInstanceProfile",
                "iam:RemoveRoleFromInstanceProfile",
                "iam:DeleteInstanceProfile",
            ],
            "Condition": {
                "StringEquals": {
                    resource_cluster_tag: "owned",
                    "aws:ResourceTag/topology.kubernetes.io/region": region,
                },
                "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
        },
        # --- KarpenterControllerEKSIntegrationPolicy ---
        {
            "Sid": "AllowAPIServerEndpointDiscovery",
            "Effect": "Allow",
            "Resource": f"arn:{partition}:eks:{region}:{account_id}:cluster/{cluster_name}",
            "Action": "eks:DescribeCluster",
        },
        # --- KarpenterControllerInterruptionPolicy ---
        {
            "Sid": "AllowInterruptionQueueActions",
            "Effect": "Allow",
            "Resource": interruption_queue_arn,
            "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
        },
        # --- KarpenterControllerResourceDiscoveryPolicy ---
        # Wildcard required: ec2:Describe* actions do not support resource-level permissions, so AWS only accepts
        # Resource "*" for them. Upstream narrows it to this region with the aws:RequestedRegion condition.
        {
            "Sid": "AllowRegionalReadActions",
            "Effect": "Allow",
            "Resource": "*",
            "Action": [
                "ec2:DescribeCapacityReservations",
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSpotPriceHistory",
                "ec2:DescribeSubnets",
            ],
            "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
        },
        {
            "Sid": "AllowSSMReadActions",
            "Effect": "Allow",
            "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*",
            "Action": "ssm:GetParameter",
        },
        # Wildcard required: pricing:GetProducts defines no resource types (the Price List API is not
        # resource-scoped), so AWS only accepts Resource "*". Upstream adds no region condition because pricing
        # data is not served from every region.
        {
            "Sid": "AllowPricingReadActions",
            "Effect": "Allow",
            "Resource": "*",
            "Action": "pricing:GetProducts",
        },
        # Wildcard required: iam:ListInstanceProfiles is an account-wide list call with no resource-level
        # permissions (upstream names the statement "Unscoped"), so AWS only accepts Resource "*". Read-only.
        {
            "Sid": "AllowUnscopedInstanceProfileListAction",
            "Effect": "Allow",
            "Resource": "*",
            "Action": "iam:ListInstanceProfiles",
        },
        {
            "Sid": "AllowInstanceProfileReadActions",
            "Effect": "Allow",
            "Resource": instance_profiles,
            "Action": "iam:GetInstanceProfile",
        },
    ]

    return {"Version": "2012-10-17", "Statement": statements}
