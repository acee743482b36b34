"""Every check on a graph where it passes and on one where it fails (small graphs built here, AWS, Kubernetes and
GCP). A check registered without a case here fails test_every_check_has_a_case."""

from __future__ import annotations

import json
from typing import Any

import pytest

from compliance.checks import all_checks
from compliance.evaluate import allowed_regions, evaluate
from compliance.model import Graph, Resource, Status

KEY_ARN = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
GCP_KEY = "projects/p/locations/europe-west4/keyRings/r/cryptoKeys/k"
SECURE = {"Bool": {"aws:SecureTransport": "false"}}


def r(type_token: str, inputs: dict[str, Any], name: str = "x", id_: str | None = None) -> Resource:
    return Resource(type_token, name, id_ or f"{name}-id", inputs, "plan")


STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
HDML = {"type": "hyperdisk-ml", "provisioned-throughput-on-create": "2400Mi"}
KMS_PARAMETER = "disk-encryption-kms-key"
# stacks/gcp/weights.py: objects under one artifact's prefix, and listings under it
PREFIX_ONLY = (
    'resource.name.startsWith("projects/_/buckets/data/objects/artifacts/m/k/") || '
    'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("artifacts/m/k/")'
)


def populator_grant(role: str, expression: str) -> Resource:
    member = (
        "principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p.svc.id.goog/subject/"
        "ns/byoc-t/sa/byoc-t-weights-populator"
    )
    condition = {"title": "byoc-weights-populator", "expression": expression}
    inputs = {"bucket": "data", "role": role, "member": member, "condition": condition}
    return r("gcp:storage/bucketIAMMember:BucketIAMMember", inputs)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def bucket(name: str = "b", role: str = "artifacts") -> Resource:
    return r("aws:s3/bucket:Bucket", {"tags": {"byoc:bucket": role}}, name)


def on_bucket(type_token: str, inputs: dict[str, Any], name: str = "b") -> Resource:
    return r(type_token, {"bucket": f"{name}-id", **inputs}, name)


def sse(algorithm: str, key: str | None = None) -> Resource:
    default = {"sseAlgorithm": algorithm, **({"kmsMasterKeyId": key} if key else {})}
    return on_bucket(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        {"rules": [{"applyServerSideEncryptionByDefault": default}]},
    )


def trail(**inputs: Any) -> Resource:
    return r("aws:cloudtrail/trail:Trail", inputs)


def cluster(**inputs: Any) -> Resource:
    return r("aws:eks/cluster:Cluster", inputs)


REDIS = "gcp:redis/instance:Instance"
VPC_GCP = "gcp:compute/network:Network"
SUBNET = "aws:ec2/subnet:Subnet"


def store(**inputs: Any) -> Resource:
    return r("aws:elasticache/replicationGroup:ReplicationGroup", inputs, "store")


def batch_gateway(store: str, key: str | None, retention: int = 24) -> Resource:
    """The gateway's Deployment serving batch from `store` (stacks/k8s/batch.py renders these flags)."""
    command = ["byoc", "serve", "gateway", "--batch-store", store, "--batch-retention-hours", str(retention)]
    command += ["--batch-kms-key", key] if key else []
    return r("kubernetes:apps/v1:Deployment", {"spec": {"template": {"spec": {"containers": [{"command": command}]}}}})


BATCH_S3 = [r("aws:s3/bucket:Bucket", {"bucket": "data"}, "b"), batch_gateway("s3://data/batch/", KEY_ARN)]
BATCH_GCS_BUCKET = {
    "name": "data",
    "encryption": {
        "defaultKmsKeyName": GCP_KEY,
        "googleManagedEncryptionEnforcementConfig": {"restrictionMode": "FullyRestricted"},
    },
}
BATCH_GCS = [r("gcp:storage/bucket:Bucket", BATCH_GCS_BUCKET, "b"), batch_gateway("gs://data/batch/", GCP_KEY)]
BATCH_ONLY = (
    'resource.name.startsWith("projects/_/buckets/data/objects/batch/") || '
    'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("batch/")'
)


def s3_lifecycle(days: int, noncurrent: int = 1, prefix: str = "batch/") -> Resource:
    rule = {
        "id": "r",
        "status": "Enabled",
        "filter": {"prefix": prefix},
        "expiration": {"days": days},
        "noncurrentVersionExpiration": {"noncurrentDays": noncurrent},
    }
    return on_bucket("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", {"rules": [rule]})


def role_policy(name: str, resource: str) -> Resource:
    statement = {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": resource}
    return r("aws:iam/rolePolicy:RolePolicy", {"name": name, "policy": policy(statement)}, name)


def gcs_grant(member: str, expression: str | None, role: str = "roles/storage.objectUser") -> Resource:
    inputs: dict[str, Any] = {"bucket": "data", "role": role, "member": member}
    if expression is not None:
        inputs["condition"] = {"title": "t", "expression": expression}
    return r("gcp:storage/bucketIAMMember:BucketIAMMember", inputs, "grant")


def gcs_rules(age: int, noncurrent: int = 1) -> dict[str, Any]:
    delete = {"type": "Delete"}
    return {
        "lifecycleRules": [
            {"action": delete, "condition": {"age": age, "matchesPrefixes": ["batch/"], "withState": "LIVE"}},
            {"action": delete, "condition": {"daysSinceNoncurrentTime": noncurrent, "matchesPrefixes": ["batch/"]}},
        ]
    }


def cache_subnets(subnet: str) -> Resource:
    return r("aws:elasticache/subnetGroup:SubnetGroup", {"name": "g", "subnetIds": [f"{subnet}-id"]}, "g")


def store_group(rule: dict[str, Any]) -> Resource:
    return r("aws:ec2/securityGroup:SecurityGroup", {"ingress": [{"fromPort": 6379, "toPort": 6379, **rule}]}, "sg")


def pod(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "namespace": "byoc-t"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": containers, **spec}}},
    }


GOOD_CONTAINER = {
    "name": "c",
    "image": "nvcr.io/nvidia/x@sha256:" + "a" * 64,
    "securityContext": {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    },
}
GOOD_POD = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "automountServiceAccountToken": False,
}
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NAMESPACE = "kubernetes:core/v1:Namespace"
SELECTORS_DATA = [
    {
        "name": "d",
        "fieldSelectors": [
            {"field": "eventCategory", "equals": ["Data"]},
            {"field": "resources.type", "equals": ["AWS::S3::Object"]},
        ],
    }
]
SELECTORS_MGMT = [{"name": "m", "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]}]}]
ENDPOINTS = ["s3", "ecr.api", "ecr.dkr", "sts", "kms"]

# check id -> (resources where it passes, resources where it fails)
CASES: dict[str, tuple[list[Resource], list[Resource]]] = {
    "kms_cmk_rotation_enabled": (
        [r("aws:kms/key:Key", {"enableKeyRotation": True})],
        [r("aws:kms/key:Key", {"enableKeyRotation": False})],
    ),
    "kms_key_deletion_window": (
        [r("aws:kms/key:Key", {"deletionWindowInDays": 30})],
        [r("aws:kms/key:Key", {"deletionWindowInDays": 5})],
    ),
    "kms_key_policy_no_public_access": (
        [
            r(
                "aws:kms/key:Key",
                {
                    "policy": policy(
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": "arn:aws:iam::1:root"},
                            "Action": "kms:*",
                            "Resource": "*",
                        }
                    )
                },
            )
        ],
        [
            r(
                "aws:kms/key:Key",
                {"policy": policy({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"})},
            )
        ],
    ),
    "kms_key_policy_service_conditions": (
        [
            r(
                "aws:kms/key:Key",
                {
                    "policy": policy(
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "logs.amazonaws.com"},
                            "Action": "kms:*",
                            "Resource": "*",
                            "Condition": {"A": {}},
                        }
                    )
                },
            )
        ],
        [
            r(
                "aws:kms/key:Key",
                {
                    "policy": policy(
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "logs.amazonaws.com"},
                            "Action": "kms:*",
                            "Resource": "*",
                        }
                    )
                },
            )
        ],
    ),
    "s3_bucket_default_encryption": ([bucket(), sse("AES256")], [bucket()]),
    "s3_bucket_kms_encryption": ([bucket(), sse("aws:kms", KEY_ARN)], [bucket(), sse("AES256")]),
    "s3_bucket_versioning_enabled": (
        [
            bucket(),
            on_bucket("aws:s3/bucketVersioning:BucketVersioning", {"versioningConfiguration": {"status": "Enabled"}}),
        ],
        [
            bucket(),
            on_bucket("aws:s3/bucketVersioning:BucketVersioning", {"versioningConfiguration": {"status": "Suspended"}}),
        ],
    ),
    "s3_bucket_level_public_access_block": (
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
                dict.fromkeys(
                    ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"), True
                ),
            ),
        ],
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
                {
                    "blockPublicAcls": True,
                    "blockPublicPolicy": False,
                    "ignorePublicAcls": True,
                    "restrictPublicBuckets": True,
                },
            ),
        ],
    ),
    "s3_bucket_acl_disabled": (
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
                {"rule": {"objectOwnership": "BucketOwnerEnforced"}},
            ),
        ],
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketOwnershipControls:BucketOwnershipControls", {"rule": {"objectOwnership": "ObjectWriter"}}
            ),
        ],
    ),
    "s3_bucket_secure_transport_policy": (
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPolicy:BucketPolicy",
                {
                    "policy": policy(
                        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*", "Condition": SECURE}
                    )
                },
            ),
        ],
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPolicy:BucketPolicy",
                {
                    "policy": policy(
                        {"Effect": "Allow", "Principal": {"AWS": "x"}, "Action": "s3:GetObject", "Resource": "*"}
                    )
                },
            ),
        ],
    ),
    "s3_bucket_deny_unencrypted_puts": (
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPolicy:BucketPolicy",
                {
                    "policy": policy(
                        {
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:PutObject",
                            "Resource": "*",
                            "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
                        }
                    )
                },
            ),
        ],
        [
            bucket(),
            on_bucket(
                "aws:s3/bucketPolicy:BucketPolicy",
                {
                    "policy": policy(
                        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": "*", "Condition": SECURE}
                    )
                },
            ),
        ],
    ),
    "s3_bucket_server_access_logging_enabled": (
        [bucket(), on_bucket("aws:s3/bucketLogging:BucketLogging", {"targetBucket": "logs-id"})],
        [bucket()],
    ),
    "cloudtrail_multi_region_enabled": ([trail(isMultiRegionTrail=True)], [trail(isMultiRegionTrail=False)]),
    "cloudtrail_log_file_validation_enabled": (
        [trail(enableLogFileValidation=True)],
        [trail(enableLogFileValidation=False)],
    ),
    "cloudtrail_kms_encryption_enabled": ([trail(kmsKeyId=KEY_ARN)], [trail()]),
    "cloudtrail_cloudwatch_logging_enabled": (
        [trail(cloudWatchLogsGroupArn="arn:aws:logs:x:1:log-group:g:*")],
        [trail()],
    ),
    "cloudtrail_s3_dataevents_enabled": (
        [trail(advancedEventSelectors=SELECTORS_DATA)],
        [trail(advancedEventSelectors=SELECTORS_MGMT)],
    ),
    "cloudtrail_global_service_events_enabled": (
        [trail(includeGlobalServiceEvents=True)],
        [trail(includeGlobalServiceEvents=False)],
    ),
    "cloudtrail_multi_region_enabled_logging_management_events": (
        [trail(isMultiRegionTrail=True, advancedEventSelectors=SELECTORS_MGMT + SELECTORS_DATA)],
        [trail(isMultiRegionTrail=True, advancedEventSelectors=SELECTORS_DATA)],
    ),
    "s3_bucket_object_lock": ([r("aws:s3/bucket:Bucket", {"objectLockEnabled": True})], []),
    "ec2_ebs_default_encryption": (
        [
            r("aws:ebs/encryptionByDefault:EncryptionByDefault", {"enabled": True}),
            r("aws:ebs/defaultKmsKey:DefaultKmsKey", {"keyArn": KEY_ARN}),
        ],
        [
            r("aws:ebs/encryptionByDefault:EncryptionByDefault", {"enabled": False}),
            r("aws:ebs/defaultKmsKey:DefaultKmsKey", {"keyArn": KEY_ARN}),
        ],
    ),
    "cloudwatch_log_group_kms_encryption_enabled": (
        [r("aws:cloudwatch/logGroup:LogGroup", {"kmsKeyId": KEY_ARN})],
        [r("aws:cloudwatch/logGroup:LogGroup", {})],
    ),
    "cloudwatch_log_group_retention_policy_specific_days_enabled": (
        [r("aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": 365})],
        [r("aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": 30})],
    ),
    "vpc_flow_logs_enabled": (
        [r("aws:ec2/vpc:Vpc", {}, "v"), r("aws:ec2/flowLog:FlowLog", {"vpcId": "v-id", "trafficType": "ALL"})],
        [r("aws:ec2/vpc:Vpc", {}, "v"), r("aws:ec2/flowLog:FlowLog", {"vpcId": "v-id", "trafficType": "REJECT"})],
    ),
    "ec2_securitygroup_default_restrict_traffic": (
        [r("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", {})],
        [r("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup", {"ingress": [{"fromPort": 0}]})],
    ),
    "ec2_securitygroup_no_internet_ingress": (
        [r("aws:ec2/securityGroup:SecurityGroup", {"ingress": [{"fromPort": 443, "cidrBlocks": ["10.0.0.0/16"]}]})],
        [r("aws:ec2/securityGroup:SecurityGroup", {"ingress": [{"fromPort": 443, "cidrBlocks": ["0.0.0.0/0"]}]})],
    ),
    "vpc_subnet_no_public_ip_by_default": (
        [r("aws:ec2/subnet:Subnet", {"mapPublicIpOnLaunch": False})],
        [r("aws:ec2/subnet:Subnet", {"mapPublicIpOnLaunch": True})],
    ),
    "vpc_endpoints_for_aws_apis": (
        [r("aws:ec2/vpc:Vpc", {}, "v")]
        + [
            r("aws:ec2/vpcEndpoint:VpcEndpoint", {"vpcId": "v-id", "serviceName": f"com.amazonaws.eu-west-2.{s}"}, s)
            for s in ENDPOINTS
        ],
        [
            r("aws:ec2/vpc:Vpc", {}, "v"),
            r("aws:ec2/vpcEndpoint:VpcEndpoint", {"vpcId": "v-id", "serviceName": "com.amazonaws.eu-west-2.s3"}),
        ],
    ),
    "eks_cluster_kms_cmk_encryption_in_secrets_enabled": (
        [cluster(encryptionConfig={"provider": {"keyArn": KEY_ARN}, "resources": ["secrets"]})],
        [cluster()],
    ),
    "eks_control_plane_logging_all_types_enabled": (
        [cluster(enabledClusterLogTypes=["api", "audit", "authenticator", "controllerManager", "scheduler"])],
        [cluster(enabledClusterLogTypes=["api"])],
    ),
    "eks_cluster_private_endpoint_enabled": (
        [cluster(vpcConfig={"endpointPrivateAccess": True})],
        [cluster(vpcConfig={"endpointPrivateAccess": False})],
    ),
    "eks_cluster_not_publicly_accessible": (
        [cluster(vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]})],
        [cluster(vpcConfig={"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]})],
    ),
    "eks_cluster_access_entries_only": (
        [cluster(accessConfig={"authenticationMode": "API", "bootstrapClusterCreatorAdminPermissions": False})],
        [cluster(accessConfig={"authenticationMode": "CONFIG_MAP"})],
    ),
    "eks_network_policy_enforced": (
        [r("aws:eks/addon:Addon", {"addonName": "vpc-cni", "configurationValues": '{"enableNetworkPolicy": "true"}'})],
        [r("aws:eks/addon:Addon", {"addonName": "vpc-cni", "configurationValues": "{}"})],
    ),
    "eks_nodes_in_private_subnets": (
        [
            r("aws:ec2/subnet:Subnet", {"mapPublicIpOnLaunch": False}, "s"),
            r("aws:eks/nodeGroup:NodeGroup", {"subnetIds": ["s-id"]}),
        ],
        [
            r("aws:ec2/subnet:Subnet", {"mapPublicIpOnLaunch": True}, "s"),
            r("aws:eks/nodeGroup:NodeGroup", {"subnetIds": ["s-id"]}),
        ],
    ),
    "ec2_launch_template_imdsv2_required": (
        [
            r(
                "aws:ec2/launchTemplate:LaunchTemplate",
                {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1.0}},
            )
        ],
        [
            r(
                "aws:ec2/launchTemplate:LaunchTemplate",
                {"metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 2}},
            )
        ],
    ),
    "ec2_launch_template_ebs_encrypted": (
        [
            r(
                "aws:ec2/launchTemplate:LaunchTemplate",
                {"blockDeviceMappings": [{"ebs": {"encrypted": "true", "kmsKeyId": KEY_ARN}}]},
            )
        ],
        [r("aws:ec2/launchTemplate:LaunchTemplate", {"blockDeviceMappings": [{"ebs": {"encrypted": "false"}}]})],
    ),
    "karpenter_nodeclass_imdsv2_required": (
        [
            r(
                "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
                {"spec": {"metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1}}},
            )
        ],
        [r("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", {"spec": {"metadataOptions": {"httpTokens": "optional"}}})],
    ),
    "karpenter_nodeclass_ebs_encrypted": (
        [
            r(
                "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
                {"spec": {"blockDeviceMappings": [{"ebs": {"encrypted": True, "kmsKeyID": KEY_ARN}}]}},
            )
        ],
        [
            r(
                "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
                {"spec": {"blockDeviceMappings": [{"ebs": {"encrypted": True}}]}},
            )
        ],
    ),
    "karpenter_nodepool_bounded": (
        [
            r(
                "kubernetes:karpenter.sh/v1:NodePool",
                {
                    "spec": {
                        "limits": {"nvidia.com/gpu": "8"},
                        "template": {
                            "spec": {
                                "requirements": [{"key": "node.kubernetes.io/instance-type", "values": ["p5.48xlarge"]}]
                            }
                        },
                    }
                },
            )
        ],
        [r("kubernetes:karpenter.sh/v1:NodePool", {"spec": {"template": {"spec": {"requirements": []}}}})],
    ),
    "sqs_queues_server_side_encryption_enabled": (
        [r("aws:sqs/queue:Queue", {"kmsMasterKeyId": KEY_ARN})],
        [r("aws:sqs/queue:Queue", {})],
    ),
    "sqs_queue_secure_transport_policy": (
        [
            r("aws:sqs/queue:Queue", {}),
            r(
                "aws:sqs/queuePolicy:QueuePolicy",
                {
                    "policy": policy(
                        {"Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": "*", "Condition": SECURE}
                    )
                },
            ),
        ],
        [r("aws:sqs/queue:Queue", {})],
    ),
    "iam_inline_policy_no_administrative_privileges": (
        [
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {"policy": policy({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"})},
            )
        ],
        [r("aws:iam/rolePolicy:RolePolicy", {"policy": policy({"Effect": "Allow", "Action": "*", "Resource": "*"})})],
    ),
    "iam_role_no_administrator_managed_policy": (
        [
            r(
                "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                {"policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"},
            )
        ],
        [
            r(
                "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                {"policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
            )
        ],
    ),
    "iam_role_trust_confused_deputy_protection": (
        [
            r(
                "aws:iam/role:Role",
                {
                    "assumeRolePolicy": policy(
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "pods.eks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {"StringEquals": {}},
                        }
                    )
                },
            )
        ],
        [
            r(
                "aws:iam/role:Role",
                {
                    "assumeRolePolicy": policy(
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "pods.eks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    )
                },
            )
        ],
    ),
    "iam_workload_roles_scoped_to_prefixes": (
        [
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {
                    "name": "byoc-serving",
                    "policy": policy(
                        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/artifacts/*"}
                    ),
                },
            )
        ],
        [
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {
                    "name": "byoc-serving",
                    "policy": policy({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/*"}),
                },
            )
        ],
    ),
    "iam_mountpoint_driver_reads_artifact_prefix_only": (
        [
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {
                    "name": "byoc-mountpoint_s3",
                    "policy": policy(
                        {
                            "Effect": "Allow",
                            "Action": ["s3:ListBucket"],
                            "Resource": "arn:aws:s3:::b",
                            "Condition": {"StringLike": {"s3:prefix": ["artifacts/llama/0123abcd/*"]}},
                        },
                        {
                            "Effect": "Allow",
                            "Action": ["s3:GetObject"],
                            "Resource": "arn:aws:s3:::b/artifacts/llama/0123abcd/*",
                        },
                        {
                            "Effect": "Allow",
                            "Action": ["kms:Decrypt"],
                            "Resource": "arn:aws:kms:eu-west-2:123456789012:key/artifacts",
                            "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-2.amazonaws.com"}},
                        },
                    ),
                },
            )
        ],
        [
            # the whole artifacts/ prefix (every model's) and any key: the grants AWS's own example gives
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {
                    "name": "byoc-mountpoint_s3",
                    "policy": policy(
                        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::b"},
                        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/artifacts/*"},
                        {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": "*"},
                    ),
                },
            )
        ],
    ),
    "data_residency_region": (
        [r("pulumi:providers:aws", {"region": "eu-west-2"}), r("aws:s3/bucket:Bucket", {"region": "eu-west-2"})],
        [r("pulumi:providers:aws", {"region": "us-east-1"})],
    ),
    "k8s_namespace_pod_security_restricted": (
        [
            r(
                NAMESPACE,
                {"metadata": {"name": "byoc-t", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
            )
        ],
        [r(NAMESPACE, {"metadata": {"name": "byoc-t", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}})],
    ),
    "k8s_namespace_default_deny_network_policy": (
        [
            r(NAMESPACE, {"metadata": {"name": "byoc-t"}}),
            r(
                "kubernetes:networking.k8s.io/v1:NetworkPolicy",
                {
                    "metadata": {"name": "deny", "namespace": "byoc-t"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
                },
            ),
        ],
        [
            r(NAMESPACE, {"metadata": {"name": "byoc-t"}}),
            r(
                "kubernetes:networking.k8s.io/v1:NetworkPolicy",
                {
                    "metadata": {"name": "allow", "namespace": "byoc-t"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
                },
            ),
        ],
    ),
    "k8s_workload_security_context_restricted": (
        [r(DEPLOYMENT, pod([GOOD_CONTAINER], **GOOD_POD))],
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "securityContext": {"readOnlyRootFilesystem": False}}], **GOOD_POD))],
    ),
    "k8s_no_service_account_token": (
        [r(DEPLOYMENT, pod([GOOD_CONTAINER], automountServiceAccountToken=False))],
        [r(DEPLOYMENT, pod([GOOD_CONTAINER]))],
    ),
    "k8s_secrets_mounted_as_files": (
        [r(DEPLOYMENT, pod([GOOD_CONTAINER]))],
        [
            r(
                DEPLOYMENT,
                pod([{**GOOD_CONTAINER, "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}]),
            )
        ],
    ),
    "gateway_zero_data_retention": (
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--api-keys", "f"]}]))],
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--log-prompts"]}]))],
    ),
    "gateway_requires_api_keys": (
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--api-keys", "f"]}]))],
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--insecure-no-auth"]}]))],
    ),
    "gateway_tls_enabled": (
        [
            r(
                DEPLOYMENT,
                pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--tls-cert", "c", "--tls-key", "k"]}]),
            )
        ],
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "command": ["byoc", "serve", "gateway", "--api-keys", "f"]}]))],
    ),
    "k8s_services_not_internet_facing": (
        [
            r(
                "kubernetes:core/v1:Service",
                {
                    "metadata": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}},
                    "spec": {"type": "LoadBalancer"},
                },
            )
        ],
        [r("kubernetes:core/v1:Service", {"metadata": {}, "spec": {"type": "LoadBalancer"}})],
    ),
    "k8s_disruption_budgets": (
        [
            r(DEPLOYMENT, pod([GOOD_CONTAINER])),
            r(
                "kubernetes:policy/v1:PodDisruptionBudget",
                {"metadata": {"name": "p", "namespace": "byoc-t"}, "spec": {"selector": {"matchLabels": {"a": "b"}}}},
            ),
        ],
        [r(DEPLOYMENT, pod([GOOD_CONTAINER]))],
    ),
    "k8s_third_party_images_pinned": (
        [r(DEPLOYMENT, pod([GOOD_CONTAINER]))],
        [r(DEPLOYMENT, pod([{**GOOD_CONTAINER, "image": "nginx:1.27"}]))],
    ),
    "helm_releases_pinned": (
        [r("kubernetes:helm.sh/v3:Release", {"version": "1.8.1"})],
        [r("kubernetes:helm.sh/v3:Release", {})],
    ),
    "monitoring_alerts_defined": (
        [
            r(
                "kubernetes:monitoring.coreos.com/v1:PrometheusRule",
                {
                    "spec": {
                        "groups": [
                            {
                                "rules": [
                                    {"alert": "ByocErrorRatioHigh"},
                                    {"alert": "ByocReplicasUnavailable"},
                                    {"alert": "ByocTTFTHigh"},
                                ]
                            }
                        ]
                    }
                },
            )
        ],
        [r("kubernetes:monitoring.coreos.com/v1:PrometheusRule", {"spec": {"groups": [{"rules": [{"record": "x"}]}]}})],
    ),
    "k8s_storage_class_encrypted": (
        [r("kubernetes:storage.k8s.io/v1:StorageClass", {"parameters": {"encrypted": "true", "kmsKeyId": KEY_ARN}})],
        [r("kubernetes:storage.k8s.io/v1:StorageClass", {"parameters": {"type": "gp3"}})],
    ),
    "gcp_kms_key_rotation_enabled": (
        [r("gcp:kms/cryptoKey:CryptoKey", {"rotationPeriod": "7776000s"})],
        [r("gcp:kms/cryptoKey:CryptoKey", {})],
    ),
    "gcp_storage_bucket_cmek": (
        [r("gcp:storage/bucket:Bucket", {"encryption": {"defaultKmsKeyName": GCP_KEY}})],
        [r("gcp:storage/bucket:Bucket", {})],
    ),
    "gcp_storage_bucket_public_access_prevention": (
        [r("gcp:storage/bucket:Bucket", {"publicAccessPrevention": "enforced", "uniformBucketLevelAccess": True})],
        [r("gcp:storage/bucket:Bucket", {"publicAccessPrevention": "inherited", "uniformBucketLevelAccess": True})],
    ),
    "gcp_storage_bucket_versioning": (
        [r("gcp:storage/bucket:Bucket", {"versioning": {"enabled": True}})],
        [r("gcp:storage/bucket:Bucket", {})],
    ),
    "gcp_gke_database_encryption": (
        [r("gcp:container/cluster:Cluster", {"databaseEncryption": {"state": "ENCRYPTED", "keyName": GCP_KEY}})],
        [r("gcp:container/cluster:Cluster", {"databaseEncryption": {"state": "DECRYPTED"}})],
    ),
    "gcp_gke_private_nodes": (
        [r("gcp:container/cluster:Cluster", {"privateClusterConfig": {"enablePrivateNodes": True}})],
        [r("gcp:container/cluster:Cluster", {})],
    ),
    "gcp_gke_control_plane_not_public": (
        [r("gcp:container/cluster:Cluster", {"privateClusterConfig": {"enablePrivateEndpoint": True}})],
        [
            r(
                "gcp:container/cluster:Cluster",
                {"masterAuthorizedNetworksConfig": {"cidrBlocks": [{"cidrBlock": "0.0.0.0/0"}]}},
            )
        ],
    ),
    "gcp_gke_network_policy": (
        [r("gcp:container/cluster:Cluster", {"datapathProvider": "ADVANCED_DATAPATH"})],
        [r("gcp:container/cluster:Cluster", {"datapathProvider": "LEGACY_DATAPATH"})],
    ),
    "gcp_gke_logging_components": (
        [
            r(
                "gcp:container/cluster:Cluster",
                {"loggingConfig": {"enableComponents": ["SYSTEM_COMPONENTS", "APISERVER"]}},
            )
        ],
        [r("gcp:container/cluster:Cluster", {"loggingConfig": {"enableComponents": ["WORKLOADS"]}})],
    ),
    "gcp_gke_node_boot_disk_cmek": (
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {"bootDiskKmsKey": GCP_KEY}})],
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {}})],
    ),
    "gcp_gke_storage_class_cmek": (
        [r(STORAGE_CLASS, {"provisioner": "pd.csi.storage.gke.io", "parameters": {**HDML, KMS_PARAMETER: GCP_KEY}})],
        [r(STORAGE_CLASS, {"provisioner": "pd.csi.storage.gke.io", "parameters": HDML})],
    ),
    "gcp_weights_populator_reads_artifact_prefix_only": (
        [populator_grant("roles/storage.objectViewer", PREFIX_ONLY)],
        [populator_grant("roles/storage.objectViewer", PREFIX_ONLY.replace("artifacts/m/k/", "artifacts/"))],
    ),
    "gcp_gke_metadata_server": (
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {"workloadMetadataConfig": {"mode": "GKE_METADATA"}}})],
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {"workloadMetadataConfig": {"mode": "GCE_METADATA"}}})],
    ),
    "gcp_audit_data_access_logs": (
        [
            r(
                "gcp:projects/iAMAuditConfig:IAMAuditConfig",
                {"auditLogConfigs": [{"logType": t} for t in ("DATA_READ", "DATA_WRITE", "ADMIN_READ")]},
            )
        ],
        [r("gcp:projects/iAMAuditConfig:IAMAuditConfig", {"auditLogConfigs": [{"logType": "ADMIN_READ"}]})],
    ),
    "gcp_logging_sink_exports_audit_logs": (
        [
            r(
                "gcp:logging/projectSink:ProjectSink",
                {"destination": "storage.googleapis.com/b", "filter": 'logName:"cloudaudit.googleapis.com"'},
            )
        ],
        [r("gcp:logging/projectSink:ProjectSink", {"destination": "storage.googleapis.com/b", "filter": ""})],
    ),
    "gcp_iam_no_primitive_roles": (
        [r("gcp:projects/iAMMember:IAMMember", {"role": "roles/storage.objectViewer"})],
        [r("gcp:projects/iAMMember:IAMMember", {"role": "roles/editor"})],
    ),
    "gcp_data_residency_region": (
        [r("gcp:storage/bucket:Bucket", {"location": "EUROPE-WEST4"})],
        [r("gcp:storage/bucket:Bucket", {"location": "US-CENTRAL1"})],
    ),
    "gcp_subnetwork_flow_logs": (
        [r("gcp:compute/subnetwork:Subnetwork", {"logConfig": {"aggregationInterval": "INTERVAL_5_SEC"}})],
        [r("gcp:compute/subnetwork:Subnetwork", {})],
    ),
    "gcp_firewall_no_ingress_from_internet": (
        [
            r(
                "gcp:compute/firewall:Firewall",
                {"direction": "INGRESS", "denies": [{"protocol": "all"}], "sourceRanges": ["0.0.0.0/0"]},
            ),
            r("gcp:compute/firewall:Firewall", {"allows": [{"protocol": "tcp"}], "sourceRanges": ["10.0.0.0/28"]}),
        ],
        [r("gcp:compute/firewall:Firewall", {"allows": [{"protocol": "tcp"}], "sourceRanges": ["0.0.0.0/0"]})],
    ),
    "gcp_gke_node_service_account_not_default": (
        [
            r("gcp:container/nodePool:NodePool", {"nodeConfig": {"serviceAccount": "n@p.iam.gserviceaccount.com"}}),
            r("gcp:container/cluster:Cluster", {"removeDefaultNodePool": True}),
        ],
        [
            r(
                "gcp:container/nodePool:NodePool",
                {"nodeConfig": {"serviceAccount": "1-compute@developer.gserviceaccount.com"}},
            )
        ],
    ),
    "gcp_gke_shielded_nodes_secure_boot": (
        [
            r(
                "gcp:container/nodePool:NodePool",
                {
                    "nodeConfig": {
                        "shieldedInstanceConfig": {"enableSecureBoot": True, "enableIntegrityMonitoring": True}
                    }
                },
            )
        ],
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {}})],
    ),
    "gcp_gke_node_pool_bounded": (
        [
            r(
                "gcp:container/nodePool:NodePool",
                {"nodeConfig": {"machineType": "a3-highgpu-8g"}, "autoscaling": {"totalMaxNodeCount": 2.0}},
            )
        ],
        [r("gcp:container/nodePool:NodePool", {"nodeConfig": {"machineType": "a3-highgpu-8g"}})],
    ),
    # the gateway's shared store: ElastiCache (AWS) and Memorystore for Redis (GCP)
    "elasticache_redis_cluster_rest_encryption_enabled": (
        [store(atRestEncryptionEnabled=True)],
        [store()],
    ),
    "elasticache_redis_cluster_cmk_encryption": (
        [store(atRestEncryptionEnabled=True, kmsKeyId=KEY_ARN)],
        [store(atRestEncryptionEnabled=True, kmsKeyId="alias/aws/elasticache")],
    ),
    "elasticache_redis_cluster_in_transit_encryption_enabled": (
        [store(transitEncryptionEnabled=True, transitEncryptionMode="required")],
        [store(transitEncryptionEnabled=True, transitEncryptionMode="preferred")],
    ),
    "elasticache_redis_replication_group_auth_enabled": (
        [store(authToken="[secret]")],
        [store()],
    ),
    "elasticache_redis_cluster_automatic_failover_enabled": (
        [store(automaticFailoverEnabled=True)],
        [store(automaticFailoverEnabled=False)],
    ),
    "elasticache_redis_cluster_multi_az_enabled": ([store(multiAzEnabled=True)], [store()]),
    "elasticache_redis_cluster_backup_enabled": (
        [store(snapshotRetentionLimit=14.0)],
        [store(snapshotRetentionLimit=7.0)],
    ),
    "elasticache_redis_cluster_auto_minor_version_upgrades": (
        [store(autoMinorVersionUpgrade=True)],
        [store(autoMinorVersionUpgrade=False)],
    ),
    "elasticache_cluster_uses_public_subnet": (
        [store(subnetGroupName="g"), cache_subnets("private"), r(SUBNET, {}, "private")],
        [store(subnetGroupName="g"), cache_subnets("public"), r(SUBNET, {"mapPublicIpOnLaunch": True}, "public")],
    ),
    "elasticache_store_open_to_the_cluster_only": (
        [store(securityGroupIds=["sg-id"]), store_group({"securityGroups": ["sg-cluster"]})],
        [store(securityGroupIds=["sg-id"]), store_group({"cidrBlocks": ["10.42.0.0/16"]})],
    ),
    "gcp_memorystore_redis_cmek": (
        [r(REDIS, {"customerManagedKey": GCP_KEY})],
        [r(REDIS, {})],
    ),
    "gcp_memorystore_redis_in_transit_encryption": (
        [r(REDIS, {"transitEncryptionMode": "SERVER_AUTHENTICATION"})],
        [r(REDIS, {"transitEncryptionMode": "DISABLED"})],
    ),
    "gcp_memorystore_redis_auth_enabled": ([r(REDIS, {"authEnabled": True})], [r(REDIS, {})]),
    "gcp_memorystore_redis_private_service_access": (
        [r(REDIS, {"connectMode": "PRIVATE_SERVICE_ACCESS", "authorizedNetwork": "vpc-id"}), r(VPC_GCP, {}, "vpc")],
        [r(REDIS, {"connectMode": "DIRECT_PEERING", "authorizedNetwork": "vpc-id"}), r(VPC_GCP, {}, "vpc")],
    ),
    "gcp_memorystore_redis_high_availability": ([r(REDIS, {"tier": "STANDARD_HA"})], [r(REDIS, {"tier": "BASIC"})]),
    # batch storage (compliance/checks/batch.py): the bucket the gateway's --batch-store names
    "s3_batch_storage_cmk_encryption": (
        [*BATCH_S3, sse("aws:kms", KEY_ARN)],
        [*BATCH_S3, sse("AES256")],
    ),
    "s3_batch_storage_expiry": ([*BATCH_S3, s3_lifecycle(2)], [*BATCH_S3, s3_lifecycle(30, noncurrent=30)]),
    "s3_batch_storage_access_scoped": (
        [*BATCH_S3, role_policy("byoc-batch-worker", "arn:aws:s3:::data/batch/*")],
        [*BATCH_S3, role_policy("byoc-serving", "arn:aws:s3:::data/*")],
    ),
    "gcp_batch_storage_cmek": (
        BATCH_GCS,
        [r("gcp:storage/bucket:Bucket", {"name": "data"}, "b"), batch_gateway("gs://data/batch/", GCP_KEY)],
    ),
    "gcp_batch_storage_expiry": (
        [r("gcp:storage/bucket:Bucket", {**BATCH_GCS_BUCKET, **gcs_rules(2)}, "b"), BATCH_GCS[1]],
        [r("gcp:storage/bucket:Bucket", {**BATCH_GCS_BUCKET, **gcs_rules(7, noncurrent=30)}, "b"), BATCH_GCS[1]],
    ),
    "gcp_batch_storage_access_scoped": (
        [*BATCH_GCS, gcs_grant("serviceAccount:byoc-t-batch-worker@p.iam.gserviceaccount.com", BATCH_ONLY)],
        [*BATCH_GCS, gcs_grant("allUsers", None, "roles/storage.objectViewer")],
    ),
    "gcp_memorystore_redis_backup_enabled": (
        [r(REDIS, {"persistenceConfig": {"persistenceMode": "RDB"}})],
        [r(REDIS, {"persistenceConfig": {"persistenceMode": "DISABLED"}})],
    ),
}


# Checks of properties byoc declines by design: on byoc's resources they report EXCEPTION with the reason.
DECLINED: dict[str, list[Resource]] = {
    "s3_bucket_object_lock": [bucket()],
    "s3_bucket_cross_region_replication": [bucket()],
}


def statuses(check_id: str, resources: list[Resource]) -> set[Status]:
    cloud = "gcp" if check_id.startswith("gcp_") else "aws"
    region = "europe-west4" if cloud == "gcp" else "eu-west-2"
    graph = Graph(resources, "t", region, "EUROPE", allowed_regions(cloud, "EUROPE", region), "plan")
    found = {f.status for f in evaluate(graph) if f.check.id == check_id}
    return found - {Status.NOT_APPLICABLE}


def test_an_audit_sink_into_an_unlocked_bucket_fails() -> None:
    sink = r(
        "gcp:logging/projectSink:ProjectSink",
        {"destination": "storage.googleapis.com/logs", "filter": 'logName:"cloudaudit.googleapis.com"'},
    )
    locked = {"retentionPeriod": "31536000", "isLocked": True}
    for retention, expected in (({**locked, "isLocked": False}, Status.FAIL), (locked, Status.PASS)):
        logs = r("gcp:storage/bucket:Bucket", {"name": "logs", "retentionPolicy": retention})
        assert statuses("gcp_logging_sink_exports_audit_logs", [sink, logs]) == {expected}


def test_every_check_has_a_case() -> None:
    assert {c.id for c in all_checks()} == set(CASES) | set(DECLINED)


@pytest.mark.parametrize("check_id", sorted(CASES))
def test_check_passes_and_fails(check_id: str) -> None:
    passing, failing = CASES[check_id]
    assert statuses(check_id, passing) == {Status.PASS}
    if check_id not in DECLINED:
        assert statuses(check_id, failing) == {Status.FAIL}


@pytest.mark.parametrize("check_id", sorted(DECLINED))
def test_a_declined_property_is_an_exception_with_its_reason(check_id: str) -> None:
    graph = Graph(DECLINED[check_id], "t", "eu-west-2", "EUROPE", ("eu-west-2",), "plan")
    found = [f for f in evaluate(graph) if f.check.id == check_id]
    assert [f.status for f in found] == [Status.EXCEPTION]
    assert "by design" in found[0].reason


def workload_policy(*statements: dict[str, Any]) -> Resource:
    return r("aws:iam/rolePolicy:RolePolicy", {"name": "byoc-serving", "policy": policy(*statements)})


# Edges: a field left unset means what AWS (or Karpenter) does by default; a wildcard anywhere is a wildcard.
# (check id, resources, expected status, why)
EDGES: list[tuple[str, list[Resource], Status, str]] = [
    (
        "cloudwatch_log_group_retention_policy_specific_days_enabled",
        [r("aws:cloudwatch/logGroup:LogGroup", {})],
        Status.PASS,
        "retention unset: CloudWatch Logs keeps events forever",
    ),
    (
        "cloudwatch_log_group_retention_policy_specific_days_enabled",
        [r("aws:cloudwatch/logGroup:LogGroup", {"retentionInDays": 0})],
        Status.PASS,
        "retention 0 (Pulumi's never-expire)",
    ),
    (
        "kms_cmk_rotation_enabled",
        [r("aws:kms/key:Key", {"enableKeyRotation": True})],
        Status.PASS,
        "rotation period unset: KMS rotates every 365 days",
    ),
    (
        "kms_cmk_rotation_enabled",
        [r("aws:kms/key:Key", {"enableKeyRotation": True, "rotationPeriodInDays": 730})],
        Status.FAIL,
        "rotation every two years is not yearly",
    ),
    (
        "kms_key_deletion_window",
        [r("aws:kms/key:Key", {})],
        Status.PASS,
        "deletion window unset: KMS waits 30 days",
    ),
    (
        "cloudtrail_global_service_events_enabled",
        [trail()],
        Status.PASS,
        "unset: CloudTrail includes global service events",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [trail(isMultiRegionTrail=True)],
        Status.PASS,
        "no selectors: CloudTrail records all management events",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [trail(isMultiRegionTrail=True, eventSelectors=[{"readWriteType": "All", "includeManagementEvents": True}])],
        Status.PASS,
        "the classic selector form",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [
            trail(
                isMultiRegionTrail=True,
                advancedEventSelectors=[
                    {
                        "name": "Management events selector",
                        "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]}],
                    }
                ],
            )
        ],
        Status.PASS,
        "the advanced selector Prowler recognises",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [trail(isMultiRegionTrail=True, eventSelectors=[{"readWriteType": "WriteOnly"}])],
        Status.FAIL,
        "write-only management events",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [
            trail(
                isMultiRegionTrail=True,
                advancedEventSelectors=[
                    {
                        "name": "m",
                        "fieldSelectors": [
                            {"field": "eventCategory", "equals": ["Management"]},
                            {"field": "readOnly", "equals": ["false"]},
                        ],
                    }
                ],
            )
        ],
        Status.FAIL,
        "an advanced selector that drops read events",
    ),
    (
        "cloudtrail_multi_region_enabled_logging_management_events",
        [trail(isMultiRegionTrail=True, isLogging=False)],
        Status.FAIL,
        "a stopped trail",
    ),
    ("eks_cluster_not_publicly_accessible", [cluster()], Status.FAIL, "vpcConfig unset: EKS is public to 0.0.0.0/0"),
    (
        "eks_cluster_not_publicly_accessible",
        [cluster(vpcConfig={"endpointPublicAccess": True})],
        Status.FAIL,
        "public without CIDRs: open to 0.0.0.0/0",
    ),
    (
        "eks_cluster_access_entries_only",
        [cluster(accessConfig={"authenticationMode": "API"})],
        Status.FAIL,
        "bootstrapClusterCreatorAdminPermissions unset: EKS makes the creator admin",
    ),
    ("eks_control_plane_logging_all_types_enabled", [cluster()], Status.FAIL, "unset: no control-plane logs"),
    (
        "karpenter_nodeclass_imdsv2_required",
        [r("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", {"spec": {}})],
        Status.PASS,
        "metadataOptions unset: Karpenter defaults to IMDSv2, hop limit 1",
    ),
    ("s3_bucket_versioning_enabled", [bucket()], Status.FAIL, "versioning unset: never enabled"),
    (
        "ec2_securitygroup_no_internet_ingress",
        [r("aws:ec2/securityGroup:SecurityGroup", {"ingress": [{"fromPort": 22, "ipv6CidrBlocks": ["::/0"]}]})],
        Status.FAIL,
        "open to the IPv6 internet",
    ),
    (
        "iam_workload_roles_scoped_to_prefixes",
        [workload_policy({"Effect": "Allow", "Action": "*", "Resource": "*"})],
        Status.FAIL,
        "* on *",
    ),
    (
        "iam_workload_roles_scoped_to_prefixes",
        [workload_policy({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/artifacts/*"})],
        Status.FAIL,
        "every S3 action, even on the right prefix",
    ),
    (
        "iam_workload_roles_scoped_to_prefixes",
        [workload_policy({"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": ["arn:aws:kms:x", "*"]})],
        Status.FAIL,
        "Resource * anywhere in the list",
    ),
    (
        "iam_workload_roles_scoped_to_prefixes",
        [workload_policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b/artifacts/*"})],
        Status.FAIL,
        "NotAction allows everything else",
    ),
    (
        "gcp_weights_populator_reads_artifact_prefix_only",
        [
            populator_grant("roles/storage.objectViewer", PREFIX_ONLY),
            r(
                "gcp:projects/iAMMember:IAMMember",
                {"role": "roles/storage.objectViewer", "member": populator_grant("", "").get("member")},
                name="project-wide",
            ),
        ],
        Status.FAIL,
        "the bucket grant is scoped, but the same principal holds the role on the project: every bucket",
    ),
    (
        "iam_workload_roles_scoped_to_prefixes",
        [
            r(
                "aws:iam/rolePolicy:RolePolicy",
                {
                    "name": "byoc-serving",
                    "role": "serving-id",
                    "policy": policy(
                        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::b/artifacts/*"}
                    ),
                },
            ),
            r("aws:iam/role:Role", {"name": "byoc-serving"}, name="serving"),
            r(
                "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                {"role": "byoc-serving", "policyArn": "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"},
                name="extra",
            ),
        ],
        Status.FAIL,
        "the inline policy is scoped, but a managed policy attached to the same role (by name) opens every bucket",
    ),
    (
        "iam_inline_policy_no_administrative_privileges",
        [workload_policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b/artifacts/*"})],
        Status.FAIL,
        "NotAction allows everything else",
    ),
    (
        "iam_inline_policy_no_administrative_privileges",
        [workload_policy({"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/x", "*"]})],
        Status.FAIL,
        "Resource * next to a named resource",
    ),
]


@pytest.mark.parametrize(("check_id", "resources", "expected", "why"), EDGES, ids=[e[3] for e in EDGES])
def test_edges_unset_means_default_and_wildcards_anywhere(
    check_id: str, resources: list[Resource], expected: Status, why: str
) -> None:
    assert statuses(check_id, resources) == {expected}, why


def test_every_check_cites_known_controls_with_metadata() -> None:
    for check in all_checks():
        assert check.controls and check.remediation and check.risk and check.title
        assert check.severity in {"low", "medium", "high", "critical"}


def test_a_log_target_bucket_is_judged_by_the_sse_s3_rule() -> None:
    logs = bucket("logs", role="access-logs")
    resources = [logs, r("aws:s3/bucketLogging:BucketLogging", {"bucket": "b-id", "targetBucket": "logs-id"}, "b")]
    graph = Graph(resources, "t", "eu-west-2", "EUROPE", ("eu-west-2",), "plan")
    kms = [f for f in evaluate(graph) if f.check.id == "s3_bucket_kms_encryption"]
    assert [f.status for f in kms] == [Status.NOT_APPLICABLE]
    assert "SSE-S3" in kms[0].reason


def test_a_check_that_breaks_on_odd_input_reports_error_not_crash() -> None:
    odd = r("aws:eks/addon:Addon", {"addonName": "vpc-cni", "configurationValues": "not json"})
    graph = Graph([odd], "t", "eu-west-2", "EUROPE", ("eu-west-2",), "plan")
    found = [f for f in evaluate(graph) if f.check.id == "eks_network_policy_enforced"]
    assert found[0].status == Status.ERROR


def test_docs_coverage_tables_are_generated_from_the_checks() -> None:
    from pathlib import Path

    from compliance.coverage import coverage_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "compliance-coverage.md"
    assert docs.read_text() == coverage_markdown(), (
        "run: byoc compliance checks --markdown > docs/compliance-coverage.md"
    )


def test_residency_is_not_assessed_when_nothing_regional_exists() -> None:
    """An empty account must not pass a residency control on the strength of the region asked for."""
    from compliance.evaluate import evaluate

    provider = Resource(type="pulumi:providers:aws", name="aws", id="", inputs={"region": "eu-west-2"}, source="live")
    graph = Graph([provider], "demo", "eu-west-2", "eu-west-2", ("eu-west-2",), "live", cloud="aws")
    (finding,) = [f for f in evaluate(graph) if f.check.id == "data_residency_region"]
    assert finding.status.value == "NOT_ASSESSED" and "nothing holds data" in finding.reason
