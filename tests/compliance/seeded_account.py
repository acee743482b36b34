"""The seeded account the live tests and scripts/compare_prowler.py read: byoc's stack shape for deployment `live` in
eu-west-2 on a moto server, with compliant properties and planted failures, plus a stand-in Kubernetes API.

`seed(endpoint)` creates it and returns the ids it made; `PLANTED` lists every planted failure as (resource name,
byoc check id, the Prowler check that tests the same property or None, what was planted). Everything else byoc
owns is seeded compliant, so a FAIL on anything not in PLANTED is a false positive.

`KubernetesStandIn` is a stand-in for a cluster's API server, not Kubernetes: a real HTTP server on 127.0.0.1 that
answers the list calls (`GET /api/v1/namespaces`, `/apis/karpenter.sh/v1/nodepools`, ...) with the objects given,
checks the bearer token, filters by the `app.kubernetes.io/managed-by` label, and answers 404 for kinds it does not
serve, as an API server does for a CRD that is not installed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from moto.server import ThreadedMotoServer

REGION = "eu-west-2"
NAME = "live"
ACCOUNT = "123456789012"  # moto's account
TAGS = [{"Key": "byoc:deployment", "Value": NAME}]
INSECURE = {"Bool": {"aws:SecureTransport": "false"}}
MANAGED = {"app.kubernetes.io/managed-by": "byoc"}
ARTIFACTS_ARN = f"arn:aws:s3:::byoc-{NAME}-artifacts"


@dataclass(frozen=True)
class Planted:
    resource: str  # the name byoc's findings give the resource
    check: str  # the byoc check that must FAIL on it
    prowler: str | None  # the Prowler check of the same property, where Prowler has one
    what: str


PLANTED: list[Planted] = [
    Planted("stale", "kms_cmk_rotation_enabled", "kms_cmk_rotation_enabled", "key without rotation"),
    Planted("shared", "kms_key_policy_no_public_access", "kms_key_not_publicly_accessible", "key policy Principal *"),
    Planted("byoc-live-scratch", "s3_bucket_default_encryption", "s3_bucket_default_encryption", "no default SSE"),
    Planted("byoc-live-scratch", "s3_bucket_kms_encryption", "s3_bucket_kms_encryption", "no KMS key"),
    Planted("byoc-live-scratch", "s3_bucket_versioning_enabled", "s3_bucket_object_versioning", "no versioning"),
    Planted(
        "byoc-live-scratch",
        "s3_bucket_level_public_access_block",
        "s3_bucket_level_public_access_block",
        "no Block Public Access",
    ),
    Planted("byoc-live-scratch", "s3_bucket_acl_disabled", "s3_bucket_acl_prohibited", "ACLs enabled"),
    Planted(
        "byoc-live-scratch",
        "s3_bucket_secure_transport_policy",
        "s3_bucket_secure_transport_policy",
        "no TLS-only policy",
    ),
    Planted(
        "byoc-live-scratch",
        "s3_bucket_server_access_logging_enabled",
        "s3_bucket_server_access_logging_enabled",
        "no access logs",
    ),
    Planted(
        "byoc-live-debug",
        "cloudtrail_log_file_validation_enabled",
        "cloudtrail_log_file_validation_enabled",
        "second trail without log-file validation",
    ),
    Planted(
        "byoc-live-debug", "cloudtrail_kms_encryption_enabled", "cloudtrail_kms_encryption_enabled", "trail without KMS"
    ),
    Planted(
        "byoc-live-debug",
        "cloudtrail_cloudwatch_logging_enabled",
        "cloudtrail_cloudwatch_logging_enabled",
        "trail not delivered to CloudWatch Logs",
    ),
    Planted("byoc-live-debug", "cloudtrail_multi_region_enabled", "cloudtrail_multi_region_enabled", "one region"),
    Planted(
        "byoc-live-debug",
        "cloudtrail_s3_dataevents_enabled",
        "cloudtrail_s3_dataevents_read_enabled",
        "no object-level events for the artifact bucket",
    ),
    Planted(
        "byoc-live-debug",
        "cloudtrail_multi_region_enabled_logging_management_events",
        "cloudtrail_multi_region_enabled_logging_management_events",
        "single-region trail, write-only management events",
    ),
    Planted(
        f"/byoc/{NAME}/debug",
        "cloudwatch_log_group_kms_encryption_enabled",
        "cloudwatch_log_group_kms_encryption_enabled",
        "log group without KMS",
    ),
    Planted(
        f"/byoc/{NAME}/debug",
        "cloudwatch_log_group_retention_policy_specific_days_enabled",
        "cloudwatch_log_group_retention_policy_specific_days_enabled",
        "7-day retention",
    ),
    Planted(
        "byoc-live-debug-ssh",
        "ec2_securitygroup_no_internet_ingress",
        "ec2_securitygroup_allow_ingress_from_internet_to_tcp_port_22",
        "tcp/22 from 0.0.0.0/0 in the deployment's VPC",
    ),
    Planted(
        "byoc-live-public-debug",
        "vpc_subnet_no_public_ip_by_default",
        "vpc_subnet_no_public_ip_by_default",
        "subnet maps public IPs",
    ),
    Planted(
        "byoc-live-legacy-nodes",
        "ec2_launch_template_imdsv2_required",
        "ec2_launch_template_imdsv2_required",
        "IMDSv1 allowed, hop limit 2",
    ),
    Planted("byoc-live-legacy-nodes", "ec2_launch_template_ebs_encrypted", None, "unencrypted node volume"),
    Planted(
        "ebs-encryption-by-default",
        "ec2_ebs_default_encryption",
        "ec2_ebs_default_encryption",
        "account default EBS encryption off",
    ),
    Planted(
        f"byoc-{NAME}",
        "eks_cluster_access_entries_only",
        None,
        "aws-auth ConfigMap (moto keeps no access config, so the cluster reads as CONFIG_MAP)",
    ),
    Planted("gpu-debug", "eks_nodes_in_private_subnets", None, "node group in the public subnet"),
    Planted(
        f"byoc-{NAME}-builder/byoc-builder",
        "iam_inline_policy_no_administrative_privileges",
        "iam_inline_policy_no_administrative_privileges",
        "* on *",
    ),
    Planted(
        f"byoc-{NAME}-builder/byoc-builder",
        "iam_workload_roles_scoped_to_prefixes",
        None,
        "* on * in a workload policy",
    ),
    Planted(
        f"byoc-{NAME}-ops/AdministratorAccess",
        "iam_role_no_administrator_managed_policy",
        "iam_aws_attached_policy_no_administrative_privileges",
        "AdministratorAccess attached",
    ),
    Planted(
        f"byoc-{NAME}-trail-to-logs",
        "iam_role_trust_confused_deputy_protection",
        "iam_role_cross_service_confused_deputy_prevention",
        "service trust without aws:SourceArn",
    ),
    Planted("byoc-gpu-burst", "karpenter_nodepool_bounded", None, "NodePool without a GPU limit"),
    Planted(
        "byoc-gpu-legacy", "karpenter_nodeclass_imdsv2_required", None, "EC2NodeClass with IMDSv1 (httpTokens optional)"
    ),
    Planted("byoc-gpu-legacy", "karpenter_nodeclass_ebs_encrypted", None, "EC2NodeClass volume without a customer key"),
    # the builder's planted `*` on `*` and the ops role's AdministratorAccess reach batch/ too
    Planted("byoc-live-artifacts", "s3_batch_storage_access_scoped", None, "roles other than batch's reach batch/"),
]


def _document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _tls_only(arn: str) -> dict[str, Any]:
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},  # the same as "*"; moto's log-delivery check cannot read the short form
        "Action": "s3:*",
        "Resource": [arn, f"{arn}/*"],
        "Condition": INSECURE,
    }


def _seed_kms(client: Callable[[str], Any]) -> dict[str, Any]:
    """byoc's two keys, a key without rotation and a key anyone may use (planted), an untagged key."""
    kms = client("kms")

    def key(role: str, rotate: bool = True) -> dict[str, Any]:
        made: dict[str, Any] = kms.create_key(
            Description=f"byoc {role} key",
            Tags=[{"TagKey": "byoc:deployment", "TagValue": NAME}, {"TagKey": "byoc:key", "TagValue": role}],
        )["KeyMetadata"]
        if rotate:
            kms.enable_key_rotation(KeyId=made["KeyId"])
        return made

    platform = key("platform")
    key("artifacts")
    key("stale", rotate=False)
    shared = key("shared")
    kms.put_key_policy(
        KeyId=shared["KeyId"],
        PolicyName="default",
        Policy=_document(
            {"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*"},
            {"Sid": "Anyone", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*"},
        ),
    )
    kms.create_key(Description="someone else's")  # untagged: out of scope
    return platform


def _seed_s3(client: Callable[[str], Any], platform: dict[str, Any]) -> None:
    """byoc's access-log, artifact and audit-trail buckets, and a bucket without any guard (planted)."""
    s3 = client("s3")
    where = {"LocationConstraint": REGION}
    every_block = dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )

    def bucket(name: str, role: str, *, kms_key: str | None, extra: list[dict[str, Any]] | None = None) -> None:
        """A bucket as byoc's private_bucket makes it: encrypted, versioned, private, owner-enforced, TLS only."""
        s3.create_bucket(Bucket=name, CreateBucketConfiguration=where)
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [*TAGS, {"Key": "byoc:bucket", "Value": role}]})
        default = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key} if kms_key else {"SSEAlgorithm": "AES256"}
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": bool(kms_key)}]
            },
        )
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=every_block)
        s3.put_bucket_ownership_controls(
            Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        )
        s3.put_bucket_policy(Bucket=name, Policy=_document(_tls_only(f"arn:aws:s3:::{name}"), *(extra or [])))
        if role != "access-logs":
            s3.put_bucket_logging(
                Bucket=name,
                BucketLoggingStatus={
                    "LoggingEnabled": {"TargetBucket": f"byoc-{NAME}-access-logs", "TargetPrefix": f"{role}/"}
                },
            )

    bucket(
        f"byoc-{NAME}-access-logs",
        "access-logs",
        kms_key=None,  # S3 server access logs can only be delivered to an SSE-S3 bucket
        extra=[
            {
                "Sid": "S3ServerAccessLogDelivery",
                "Effect": "Allow",
                "Principal": {"Service": "logging.s3.amazonaws.com"},
                "Action": ["s3:PutObject"],
                "Resource": f"arn:aws:s3:::byoc-{NAME}-access-logs/*",
                "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
            }
        ],
    )
    bucket(
        f"byoc-{NAME}-artifacts",
        "artifacts",
        kms_key=platform["Arn"],
        extra=[
            {
                "Sid": "DenyPutsWithoutKms",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": f"{ARTIFACTS_ARN}/*",
                "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
            }
        ],
    )
    # byoc's lifecycle: noncurrent versions after 30 days, and batch/ (batch.enabled, 24 h) after 2 days
    s3.put_bucket_lifecycle_configuration(
        Bucket=f"byoc-{NAME}-artifacts",
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "expire-noncurrent-versions",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
                },
                {
                    "ID": "expire-batch-files",
                    "Status": "Enabled",
                    "Filter": {"Prefix": "batch/"},
                    "Expiration": {"Days": 2},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                },
            ]
        },
    )
    trail_arn = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/byoc-{NAME}"
    trail_bucket = f"arn:aws:s3:::byoc-{NAME}-audit-trail"
    bucket(
        f"byoc-{NAME}-audit-trail",
        "audit-trail",
        kms_key=platform["Arn"],
        extra=[
            {
                "Sid": "CloudTrailAclCheck",
                "Effect": "Allow",
                "Principal": {"Service": "cloudtrail.amazonaws.com"},
                "Action": "s3:GetBucketAcl",
                "Resource": trail_bucket,
                "Condition": {"StringEquals": {"aws:SourceArn": trail_arn}},
            }
        ],
    )
    s3.create_bucket(Bucket=f"byoc-{NAME}-scratch", CreateBucketConfiguration=where)  # no guard at all
    s3.put_bucket_tagging(Bucket=f"byoc-{NAME}-scratch", Tagging={"TagSet": TAGS})
    s3.create_bucket(Bucket="unrelated", CreateBucketConfiguration=where)  # untagged: out of scope


def _seed_logs(client: Callable[[str], Any], platform: dict[str, Any]) -> None:
    logs = client("logs")
    for group, retention, encrypted in (
        (f"/byoc/{NAME}/vpc-flow-logs", 365, True),
        (f"/byoc/{NAME}/cloudtrail", 365, True),
        (f"/aws/eks/byoc-{NAME}/cluster", None, True),  # retention unset: kept forever
        (f"/byoc/{NAME}/debug", 7, False),
    ):
        logs.create_log_group(logGroupName=group, **({"kmsKeyId": platform["Arn"]} if encrypted else {}))
        if retention:
            logs.put_retention_policy(logGroupName=group, retentionInDays=retention)


def _seed_iam(client: Callable[[str], Any]) -> tuple[str, str]:
    """Workload, ops, trail-delivery and cluster roles; returns the trail-delivery and cluster role ARNs."""
    iam = client("iam")

    def role(name: str, trust: dict[str, Any], policies: dict[str, str] | None = None) -> str:
        made = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_document(trust), Tags=TAGS)["Role"]["Arn"]
        for policy_name, document in (policies or {}).items():
            iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=document)
        return str(made)

    pods = {"Service": "pods.eks.amazonaws.com"}
    from_account = {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    role(
        f"byoc-{NAME}-serving",
        {
            "Effect": "Allow",
            "Principal": pods,
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": from_account,
        },
        {
            "byoc-serving": _document(
                {
                    "Sid": "ReadArtifacts",
                    "Effect": "Allow",
                    "Action": ["s3:GetObject"],
                    "Resource": f"{ARTIFACTS_ARN}/artifacts/*",
                },
                {"Sid": "ListArtifacts", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ARTIFACTS_ARN},
            )
        },
    )
    for batch_role in ("gateway", "batch-worker"):  # batch.enabled: each reaches only batch/
        role(
            f"byoc-{NAME}-{batch_role}",
            {
                "Effect": "Allow",
                "Principal": pods,
                "Action": ["sts:AssumeRole", "sts:TagSession"],
                "Condition": from_account,
            },
            {
                f"byoc-{batch_role}": _document(
                    {
                        "Sid": "BatchObjects",
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
                        "Resource": f"{ARTIFACTS_ARN}/batch/*",
                    },
                    {
                        "Sid": "ListBatchPrefix",
                        "Effect": "Allow",
                        "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
                        "Resource": ARTIFACTS_ARN,
                        "Condition": {"StringLike": {"s3:prefix": ["batch/*"]}},
                    },
                )
            },
        )
    role(
        f"byoc-{NAME}-builder",
        {
            "Effect": "Allow",
            "Principal": pods,
            "Action": ["sts:AssumeRole", "sts:TagSession"],
            "Condition": from_account,
        },
        {"byoc-builder": _document({"Effect": "Allow", "Action": "*", "Resource": "*"})},
    )
    role(
        f"byoc-{NAME}-ops",
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"},
    )
    iam.attach_role_policy(RoleName=f"byoc-{NAME}-ops", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
    trail_role = role(
        f"byoc-{NAME}-trail-to-logs",
        {"Effect": "Allow", "Principal": {"Service": "cloudtrail.amazonaws.com"}, "Action": "sts:AssumeRole"},
    )
    cluster_role = role(
        f"byoc-{NAME}-cluster",
        {
            "Effect": "Allow",
            "Principal": {"Service": "eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"],
        },
    )
    return trail_role, cluster_role


def _seed_trails(client: Callable[[str], Any], platform: dict[str, Any], trail_role: str) -> None:
    """byoc's trail (multi-region, validated, KMS, CloudWatch Logs, management + artifact data events) and a
    stray single-region trail (planted)."""
    trails = client("cloudtrail")
    trails.create_trail(
        Name=f"byoc-{NAME}",
        S3BucketName=f"byoc-{NAME}-audit-trail",
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        KmsKeyId=platform["Arn"],
        IncludeGlobalServiceEvents=True,
        CloudWatchLogsLogGroupArn=f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/byoc/{NAME}/cloudtrail:*",
        CloudWatchLogsRoleArn=trail_role,
        TagsList=TAGS,
    )
    trails.put_event_selectors(
        TrailName=f"byoc-{NAME}",
        AdvancedEventSelectors=[
            {
                "Name": "Management events selector",
                "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}],
            },
            {
                "Name": "Artifact bucket object access",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Data"]},
                    {"Field": "resources.type", "Equals": ["AWS::S3::Object"]},
                    {"Field": "resources.ARN", "StartsWith": [f"{ARTIFACTS_ARN}/"]},
                ],
            },
        ],
    )
    trails.start_logging(Name=f"byoc-{NAME}")
    trails.create_trail(Name=f"byoc-{NAME}-debug", S3BucketName=f"byoc-{NAME}-audit-trail", TagsList=TAGS)
    trails.put_event_selectors(
        TrailName=f"byoc-{NAME}-debug",
        EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}],
    )
    trails.start_logging(Name=f"byoc-{NAME}-debug")


def _seed_network(client: Callable[[str], Any], platform: dict[str, Any]) -> tuple[str, list[str], str, str]:
    """VPC, flow logs, rule-less default group, subnets, security groups, endpoints, a volume, launch templates;
    returns the VPC id, the private subnets, the public subnet and the SSH group."""
    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": TAGS}])["Vpc"]
    vpc_id = vpc["VpcId"]
    ec2.create_flow_logs(
        ResourceIds=[vpc_id],
        ResourceType="VPC",
        TrafficType="ALL",
        LogDestinationType="cloud-watch-logs",
        LogGroupName=f"/byoc/{NAME}/vpc-flow-logs",
        DeliverLogsPermissionArn=f"arn:aws:iam::{ACCOUNT}:role/byoc-{NAME}-flow-logs",
    )
    default_sg = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"][0]
    if default_sg.get("IpPermissionsEgress"):  # byoc's DefaultSecurityGroup keeps no rule
        ec2.revoke_security_group_egress(GroupId=default_sg["GroupId"], IpPermissions=default_sg["IpPermissionsEgress"])
    if default_sg.get("IpPermissions"):
        ec2.revoke_security_group_ingress(GroupId=default_sg["GroupId"], IpPermissions=default_sg["IpPermissions"])

    def subnet(name: str, cidr: str, zone: str, public: bool = False) -> str:
        tags = [*TAGS, {"Key": "Name", "Value": name}]
        if public:
            tags.append({"Key": "kubernetes.io/role/elb", "Value": "1"})
        made = ec2.create_subnet(
            VpcId=vpc_id,
            CidrBlock=cidr,
            AvailabilityZone=zone,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}],
        )["Subnet"]["SubnetId"]
        if public:
            ec2.modify_subnet_attribute(SubnetId=made, MapPublicIpOnLaunch={"Value": True})
        return str(made)

    private = [subnet(f"byoc-{NAME}-private-{z}", f"10.42.{i}.0/24", f"{REGION}{z}") for i, z in enumerate("abc")]
    public = subnet(f"byoc-{NAME}-public-debug", "10.42.100.0/24", f"{REGION}a", public=True)

    def security_group(name: str, port: int, cidr: str) -> str:
        made = ec2.create_security_group(
            GroupName=name,
            Description=name,
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": TAGS}],
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=made,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}],
        )
        return str(made)

    endpoints_sg = security_group(f"byoc-{NAME}-endpoints", 443, "10.42.0.0/16")
    ssh_sg = security_group(f"byoc-{NAME}-debug-ssh", 22, "0.0.0.0/0")
    ec2.create_vpc_endpoint(VpcId=vpc_id, ServiceName=f"com.amazonaws.{REGION}.s3", VpcEndpointType="Gateway")
    for service in ("ecr.api", "ecr.dkr", "sts", "kms", "logs", "ec2"):
        ec2.create_vpc_endpoint(
            VpcId=vpc_id,
            ServiceName=f"com.amazonaws.{REGION}.{service}",
            VpcEndpointType="Interface",
            SubnetIds=private,
            SecurityGroupIds=[endpoints_sg],
            PrivateDnsEnabled=True,
        )
    ec2.create_network_interface(SubnetId=public, Groups=[ssh_sg], Description="debug bastion")
    ec2.create_volume(
        AvailabilityZone=f"{REGION}a",
        Size=50,
        Encrypted=True,
        KmsKeyId=platform["Arn"],
        TagSpecifications=[{"ResourceType": "volume", "Tags": TAGS}],
    )
    for template, secure in ((f"byoc-{NAME}-system-nodes", True), (f"byoc-{NAME}-legacy-nodes", False)):
        ebs = {"Encrypted": True, "KmsKeyId": platform["Arn"], "VolumeSize": 50} if secure else {"VolumeSize": 50}
        ec2.create_launch_template(
            LaunchTemplateName=template,
            LaunchTemplateData={
                "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
                if secure
                else {"HttpTokens": "optional", "HttpPutResponseHopLimit": 2},
                "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": ebs}],
            },
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": TAGS}],
        )
    return vpc_id, private, public, ssh_sg


def _seed_cluster(
    client: Callable[[str], Any], platform: dict[str, Any], role: str, private: list[str], public: str
) -> None:
    eks = client("eks")
    eks.create_cluster(
        name=f"byoc-{NAME}",
        roleArn=role,
        resourcesVpcConfig={"subnetIds": private, "endpointPrivateAccess": True, "endpointPublicAccess": False},
        encryptionConfig=[{"resources": ["secrets"], "provider": {"keyArn": platform["Arn"]}}],
        logging={
            "clusterLogging": [
                {"types": ["api", "audit", "authenticator", "controllerManager", "scheduler"], "enabled": True}
            ]
        },
        tags={"byoc:deployment": NAME},
    )
    node_role = f"arn:aws:iam::{ACCOUNT}:role/byoc-{NAME}-nodes"
    eks.create_nodegroup(clusterName=f"byoc-{NAME}", nodegroupName="system", subnets=private, nodeRole=node_role)
    eks.create_nodegroup(clusterName=f"byoc-{NAME}", nodegroupName="gpu-debug", subnets=[public], nodeRole=node_role)


def _seed_queue(client: Callable[[str], Any], platform: dict[str, Any]) -> None:
    sqs = client("sqs")
    queue = sqs.create_queue(QueueName=f"byoc-{NAME}", Attributes={"KmsMasterKeyId": platform["Arn"]})["QueueUrl"]
    sqs.set_queue_attributes(
        QueueUrl=queue,
        Attributes={
            "Policy": _document(
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "sqs:*",
                    "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:byoc-{NAME}",
                    "Condition": INSECURE,
                }
            )
        },
    )


def start_moto() -> tuple[ThreadedMotoServer, str]:
    """A moto server on 127.0.0.1 (a free port) that knows AWS-managed IAM policies; returns it and its URL."""
    # AdministratorAccess must exist to be attached; moto loads AWS-managed policies only when asked
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def seed(endpoint: str) -> dict[str, str]:
    """Create deployment `live` on the moto server at `endpoint`; returns the ids the tests refer to."""
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint)

    platform = _seed_kms(client)
    _seed_s3(client, platform)
    _seed_logs(client, platform)
    trail_role, cluster_role = _seed_iam(client)
    _seed_trails(client, platform, trail_role)
    vpc_id, private, public, ssh_sg = _seed_network(client, platform)
    _seed_cluster(client, platform, cluster_role, private, public)
    _seed_queue(client, platform)
    return {"platform_key": platform["KeyId"], "platform_key_arn": platform["Arn"], "vpc": vpc_id, "ssh_sg": ssh_sg}


# -- the stand-in Kubernetes API ---------------------------------------------------------------------------------
def _object(
    api_version: str, kind: str, name: str, spec: dict[str, Any], namespace: str | None = None, **meta: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {**MANAGED, **meta.pop("labels", {})}, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **({"spec": spec} if spec else {})}


def declared_objects() -> dict[str, list[dict[str, Any]]]:
    """byoc's own Kubernetes objects for deployment `live`, as its plan declares them, by list path."""
    from byoc.engines import program_for
    from byoc.engines.offline import run_offline
    from byoc.resolve import resolve
    from byoc.spec import build_spec
    from compliance.collectors.kubernetes import KINDS

    spec = {"name": NAME, "cloud": "aws", "region": REGION, "model": "llama-3.1-8b-instruct", "shape": "h100x1-fp8"}
    deployment = resolve(build_spec(spec))
    program = program_for(deployment)
    assert program is not None
    objects: dict[str, list[dict[str, Any]]] = {path: [] for path in KINDS.values()}
    for resource in run_offline(deployment, program).resources:
        if resource.type in KINDS:
            objects[KINDS[resource.type]].append(json.loads(json.dumps(resource.inputs)))
    return objects


def cluster_objects(batch_key: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """What the stand-in cluster serves: byoc's declared objects plus planted failures, by list path.

    The PrometheusRule API is left out, as on a cluster where prometheus-operator is not installed (yet). The
    gateway's and the worker's batch flags name the seeded bucket (the plan's name carries the account id, the seeded
    one does not) and `batch_key`, the key the seeded bucket is encrypted with.
    """
    objects = declared_objects()
    for workload in objects["/apis/apps/v1/deployments"]:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            command = container.get("command") or []
            for at, flag in enumerate(command[:-1]):
                if flag == "--batch-store":
                    command[at + 1] = f"s3://byoc-{NAME}-artifacts/batch/"
                elif flag == "--batch-kms-key" and batch_key:
                    command[at + 1] = batch_key
    del objects["/apis/monitoring.coreos.com/v1/prometheusrules"]
    requirements = [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["p5.48xlarge"]}]
    objects["/apis/karpenter.sh/v1/nodepools"].append(
        _object(  # planted: no GPU limit
            "karpenter.sh/v1", "NodePool", "byoc-gpu-burst", {"template": {"spec": {"requirements": requirements}}}
        )
    )
    objects["/apis/karpenter.k8s.aws/v1/ec2nodeclasses"].append(
        _object(  # planted: IMDSv1 and a volume without a customer key
            "karpenter.k8s.aws/v1",
            "EC2NodeClass",
            "byoc-gpu-legacy",
            {
                "metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 2},
                "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": True}}],
            },
        )
    )
    # someone else's namespace: not labelled as byoc's, so never listed
    objects["/api/v1/namespaces"].append(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-sandbox"}}
    )
    return objects


class KubernetesStandIn:
    """A stand-in for a Kubernetes API server (see the module's docstring): start(), kubeconfig(path), stop()."""

    TOKEN = "byoc-test-token"

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        token = self.TOKEN
        served = objects

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._answer(401, {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401})
                    return
                if url.path not in served:
                    self._answer(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
                    return
                wanted = dict(
                    pair.split("=", 1)
                    for pair in ",".join(parse_qs(url.query).get("labelSelector", [])).split(",")
                    if pair
                )
                items = [
                    item
                    for item in served[url.path]
                    if all(item["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
                ]
                self._answer(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> KubernetesStandIn:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "reviewer", "user": {"token": token or self.TOKEN}}],
                    "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "reviewer"}}],
                    "current-context": "standin",
                }
            )
        )
        return path
