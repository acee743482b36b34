"""The longest deployment name the spec accepts fits every name byoc derives from it, in every object it renders.

A spec value that renders into a cloud or Kubernetes object must not break that object's own limits: a name of
NAME_MAX characters plans, and every derived name is checked against the limit its API documents.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from byoc.manifests import HELM_RELEASE, kubernetes_objects
from byoc.spec import NAME_MAX
from tests.stacks.plans import graph

LONGEST = ("n" + "0123456789abcdef" * 2)[:NAME_MAX]
assert len(LONGEST) == NAME_MAX

# (type token, input) -> the longest value its API accepts, with the source of the number.
CLOUD_NAME_LIMITS: dict[tuple[str, str], int] = {
    ("aws:s3/bucket:Bucket", "bucket"): 63,  # S3 bucket naming rules
    ("aws:iam/role:Role", "name"): 64,  # IAM quotas: role name
    ("aws:iam/rolePolicy:RolePolicy", "name"): 128,  # IAM quotas: policy name
    ("aws:iam/policy:Policy", "name"): 128,
    ("aws:iam/instanceProfile:InstanceProfile", "name"): 128,
    ("aws:kms/alias:Alias", "name"): 256,  # KMS CreateAlias AliasName
    ("aws:eks/cluster:Cluster", "name"): 100,  # EKS CreateCluster name
    ("aws:eks/nodeGroup:NodeGroup", "nodeGroupName"): 63,  # EKS CreateNodegroup nodegroupName
    ("aws:sqs/queue:Queue", "name"): 80,  # SQS CreateQueue QueueName
    ("aws:cloudwatch/eventRule:EventRule", "name"): 64,  # EventBridge PutRule Name
    ("aws:cloudwatch/logGroup:LogGroup", "name"): 512,  # CloudWatch Logs CreateLogGroup
    ("aws:cloudtrail/trail:Trail", "name"): 128,  # CloudTrail CreateTrail Name
    ("aws:ec2/launchTemplate:LaunchTemplate", "name"): 128,  # EC2 CreateLaunchTemplate
    ("aws:ec2/securityGroup:SecurityGroup", "name"): 255,  # EC2 CreateSecurityGroup GroupName
    ("aws:elasticache/replicationGroup:ReplicationGroup", "replicationGroupId"): 40,  # CreateReplicationGroup
    ("aws:elasticache/subnetGroup:SubnetGroup", "name"): 255,  # CreateCacheSubnetGroup CacheSubnetGroupName
    ("gcp:redis/instance:Instance", "name"): 40,  # Memorystore for Redis instance id
    ("gcp:compute/globalAddress:GlobalAddress", "name"): 63,  # Compute Engine resource names (RFC 1035)
    ("gcp:serviceaccount/account:Account", "accountId"): 30,  # IAM service account ID: 6-30 characters
    ("gcp:storage/bucket:Bucket", "name"): 63,  # Cloud Storage bucket naming (without dots)
    ("gcp:container/cluster:Cluster", "name"): 40,  # GKE cluster name
    ("gcp:container/nodePool:NodePool", "name"): 40,  # GKE node pool name
    ("gcp:kms/keyRing:KeyRing", "name"): 63,  # Cloud KMS resource IDs
    ("gcp:kms/cryptoKey:CryptoKey", "name"): 63,
    ("gcp:compute/network:Network", "name"): 63,  # Compute Engine resource names (RFC 1035)
    ("gcp:compute/subnetwork:Subnetwork", "name"): 63,
    ("gcp:compute/router:Router", "name"): 63,
    ("gcp:compute/firewall:Firewall", "name"): 63,
    ("gcp:logging/projectBucketConfig:ProjectBucketConfig", "bucketId"): 100,  # Logging bucket IDs
    ("gcp:logging/projectSink:ProjectSink", "name"): 100,
}
# Kubernetes: names that become DNS labels (Service, Namespace, and a Job's pods' job-name label) take 63
# characters, other object names 253 (DNS subdomain); label values 63; Helm release names 53 (Helm 3).
DNS_LABEL_KINDS = {"Service", "Namespace", "Job"}
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

SPECS = {
    "aws": {
        "name": LONGEST,
        "shape": "h100x1-bf16",
        "addons": [{"id": "a" * 63, "source": "s3://b/a"}],
        # node_cache renders the most: the Mountpoint role, the weights PV, PVC and holder DaemonSet
        "cold_start": {"weights_cache": "node_cache"},
    },
    "gcp": {
        "name": LONGEST,
        "cloud": "gcp",
        "region": "EUROPE",
        "shape": "h100x8-fp8",
        # node_cache: the weights StorageClass, data source, claim, populator account and transfer pool
        "cold_start": {"weights_cache": "node_cache"},
    },
}


def _plan(cloud: str) -> Any:
    plan = graph(**SPECS[cloud])
    if not plan.resources:
        pytest.fail(f"the {cloud} program recorded no resources")
    return plan


@pytest.mark.parametrize("cloud", sorted(SPECS))
def test_cloud_names_fit_their_limits(cloud: str) -> None:
    plan = _plan(cloud)
    checked = 0
    for resource in plan.resources:
        for (type_token, field), limit in CLOUD_NAME_LIMITS.items():
            value = resource.inputs.get(field)
            if resource.type == type_token and isinstance(value, str):
                checked += 1
                assert len(value) <= limit, f"{type_token} {field} {value!r}: {len(value)} > {limit}"
    assert checked >= 10, f"only {checked} names checked: the limits table no longer matches the program"


@pytest.mark.parametrize("cloud", sorted(SPECS))
def test_kubernetes_names_and_labels_fit(cloud: str) -> None:
    plan = _plan(cloud)
    for obj in kubernetes_objects(plan):
        metadata = obj.get("metadata", {})
        name = metadata.get("name", "")
        limit = 63 if obj["kind"] in DNS_LABEL_KINDS else 253
        assert len(name) <= limit, f"{obj['kind']} {name!r}: {len(name)} > {limit}"
        if obj["kind"] in DNS_LABEL_KINDS:
            assert DNS_LABEL.match(name), f"{obj['kind']} {name!r} is not a DNS label"
        for key, value in (metadata.get("labels") or {}).items():
            assert len(str(value)) <= 63, f"{obj['kind']} {name} label {key}={value!r}"
    for release in plan.by_type(HELM_RELEASE):
        assert len(str(release.inputs.get("name", ""))) <= 53
