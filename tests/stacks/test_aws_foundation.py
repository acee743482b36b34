"""The AWS foundation's recorded resource graph, checked the way a security reviewer reads it.

The program runs whole under Pulumi's mocks (the offline engine): a wrong property name raises TypeError, so every
branch a spec option opens is run by at least one test here.
"""

from __future__ import annotations

import importlib
import inspect
import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest

from byoc.engines.offline import run_offline
from byoc.plan import Plan, RecordedResource
from tests.conftest import ROOT, deploy
from tests.stacks.plans import graph, one

KEY_ARN = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def documents(plan: Plan) -> list[tuple[RecordedResource, dict[str, Any]]]:
    """Every IAM, key, bucket and queue policy document in the graph."""
    fields = {"policy", "assumeRolePolicy"}
    found = []
    for resource in plan.resources:
        for name in fields & set(resource.inputs):
            found.append((resource, json.loads(resource.inputs[name])))
    return found


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    value = document["Statement"]
    return value if isinstance(value, list) else [value]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- shape of the graph -----------------------------------------------------------------------------------------
def test_components_and_counts() -> None:
    plan = graph()
    types = plan.counts()
    for component in ("Network", "Keys", "Cluster", "GpuCapacity", "ArtifactStore", "AuditTrail", "Identities"):
        assert types[f"byoc:aws:{component}"] == 1
    assert types["aws:ec2/subnet:Subnet"] == 6
    assert types["aws:ec2/natGateway:NatGateway"] == 3
    assert types["aws:kms/key:Key"] == 2
    assert len(plan.resources) > 100


def test_every_resource_has_a_parent_component_and_our_provider() -> None:
    plan = graph()
    components = {r.name for r in plan.resources if r.type.startswith("byoc:")}
    for resource in plan.resources:
        if resource.type.startswith(("byoc:", "pulumi:providers:aws")):
            continue
        assert resource.parent in components, resource.name
        if resource.type.startswith("aws:"):
            assert resource.provider == "aws", resource.name
        if resource.type.startswith("kubernetes:"):
            assert resource.provider == "test-k8s", resource.name


def test_region_is_the_resolved_one() -> None:
    deployment = deploy()
    plan = graph()
    assert one(plan, "pulumi:providers:aws").inputs["region"] == deployment.region == "eu-west-2"
    for endpoint in plan.by_type("aws:ec2/vpcEndpoint:VpcEndpoint"):
        assert endpoint.inputs["serviceName"].startswith("com.amazonaws.eu-west-2.")


def _aws_class(type_token: str) -> type:
    module = type_token.split(":")[1].split("/", maxsplit=1)[0]
    return getattr(importlib.import_module(f"pulumi_aws.{module.replace('-', '_')}"), type_token.split(":")[2])


def test_every_taggable_resource_carries_the_deployment_tag() -> None:
    plan = graph()
    checked = 0
    for resource in plan.resources:
        if not resource.type.startswith("aws:"):
            continue
        if "tags" not in inspect.signature(_aws_class(resource.type)._internal_init).parameters:
            continue
        assert resource.inputs.get("tags", {}).get("byoc:deployment") == "test", resource.name
        checked += 1
    assert checked > 40


# -- encryption -------------------------------------------------------------------------------------------------
def _key_arns(plan: Plan) -> set[str]:
    return {f"arn:aws:kms:eu-west-2:123456789012:key/{k.name}-key-id" for k in plan.by_type("aws:kms/key:Key")}


def test_keys_rotate_and_wait_before_deletion() -> None:
    for key in graph().by_type("aws:kms/key:Key"):
        assert key.inputs["enableKeyRotation"] is True
        assert key.inputs["deletionWindowInDays"] == 30
    assert {a.inputs["name"] for a in graph().by_type("aws:kms/alias:Alias")} == {
        "alias/byoc/test/platform",
        "alias/byoc/test/artifacts",
    }


def test_every_data_store_is_encrypted_with_our_keys() -> None:
    plan = graph()
    keys = _key_arns(plan)
    for rule in plan.by_type("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"):
        default = rule.inputs["rules"][0]["applyServerSideEncryptionByDefault"]
        if rule.name == "test-access-logs":
            assert default["sseAlgorithm"] == "AES256"  # S3 access logs cannot target an SSE-KMS bucket
        else:
            assert default["sseAlgorithm"] == "aws:kms"
            assert default["kmsMasterKeyId"] in keys
            assert rule.inputs["rules"][0]["bucketKeyEnabled"] is True
    for group in plan.by_type("aws:cloudwatch/logGroup:LogGroup"):
        assert group.inputs["kmsKeyId"] in keys, group.name
        assert group.inputs["retentionInDays"] == 365
    cluster = one(plan, "aws:eks/cluster:Cluster").inputs
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    assert cluster["encryptionConfig"]["provider"]["keyArn"] in keys
    template = one(plan, "aws:ec2/launchTemplate:LaunchTemplate").inputs
    ebs = template["blockDeviceMappings"][0]["ebs"]
    assert (ebs["encrypted"], ebs["kmsKeyId"] in keys) == ("true", True)
    node_class = one(plan, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass").inputs["spec"]
    volume = node_class["blockDeviceMappings"][0]["ebs"]
    assert volume["encrypted"] is True and volume["kmsKeyID"] in keys
    assert one(plan, "aws:sqs/queue:Queue").inputs["kmsMasterKeyId"] in keys
    assert one(plan, "aws:cloudtrail/trail:Trail").inputs["kmsKeyId"] in keys
    storage = one(plan, "kubernetes:storage.k8s.io/v1:StorageClass").inputs
    assert storage["parameters"]["encrypted"] == "true" and storage["parameters"]["kmsKeyId"] in keys


def test_a_given_key_replaces_the_created_ones() -> None:
    plan = graph(encryption={"kms_key": KEY_ARN})
    assert plan.by_type("aws:kms/key:Key") == []
    assert one(plan, "aws:eks/cluster:Cluster").inputs["encryptionConfig"]["provider"]["keyArn"] == KEY_ARN
    assert one(plan, "aws:cloudtrail/trail:Trail").inputs["kmsKeyId"] == KEY_ARN
    for group in plan.by_type("aws:cloudwatch/logGroup:LogGroup"):
        assert group.inputs["kmsKeyId"] == KEY_ARN


def test_key_policies_name_services_with_conditions() -> None:
    for key in graph().by_type("aws:kms/key:Key"):
        for statement in statements(json.loads(key.inputs["policy"])):
            principal = statement["Principal"]
            if "Service" in principal:
                assert "Condition" in statement, statement["Sid"]
            elif statement["Sid"] != "AccountAdministers":
                assert all(":role/" in arn for arn in as_list(principal["AWS"])), statement["Sid"]


# -- network ----------------------------------------------------------------------------------------------------
def test_private_subnets_in_three_zones_tagged_for_karpenter() -> None:
    plan = graph()
    private = [s for s in plan.by_type("aws:ec2/subnet:Subnet") if "private" in s.name]
    assert sorted(s.inputs["availabilityZone"] for s in private) == ["eu-west-2a", "eu-west-2b", "eu-west-2c"]
    for subnet in private:
        assert subnet.inputs["tags"]["karpenter.sh/discovery"] == "byoc-test"
        assert subnet.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1"
    for subnet in plan.by_type("aws:ec2/subnet:Subnet"):
        assert subnet.inputs.get("mapPublicIpOnLaunch", False) is False


def test_flow_logs_on_everything() -> None:
    flow = one(graph(), "aws:ec2/flowLog:FlowLog").inputs
    assert flow["trafficType"] == "ALL"
    assert flow["vpcId"] == "test-vpc-id"
    assert flow["logDestinationType"] == "cloud-watch-logs"


def test_default_security_group_has_no_rules() -> None:
    default = one(graph(), "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup").inputs
    assert not default.get("ingress") and not default.get("egress")


def test_interface_endpoints_private_and_https_from_the_vpc_only() -> None:
    plan = graph()
    services = {
        e.inputs["serviceName"].split(".", 3)[-1]: e.inputs for e in plan.by_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    assert set(services) == {"s3", "ecr.api", "ecr.dkr", "sts", "kms", "logs", "ec2"}
    assert services["s3"]["vpcEndpointType"] == "Gateway"
    for name, inputs in services.items():
        if name != "s3":
            assert inputs["privateDnsEnabled"] is True
    (group,) = [g.inputs for g in plan.by_type("aws:ec2/securityGroup:SecurityGroup") if g.name == "test-endpoints"]
    assert [(r["fromPort"], r["toPort"], r["cidrBlocks"]) for r in group["ingress"]] == [(443, 443, ["10.42.0.0/16"])]


def test_single_nat_gateway_option() -> None:
    plan = graph(network={"nat_gateways": "single"})
    assert len(plan.by_type("aws:ec2/natGateway:NatGateway")) == 1
    private_routes = [rt for rt in plan.by_type("aws:ec2/routeTable:RouteTable") if "private" in rt.name]
    assert {rt.inputs["routes"][0]["natGatewayId"] for rt in private_routes} == {"test-nat-0-id"}


def test_cidr_sizes_the_subnets() -> None:
    plan = graph(network={"cidr": "172.20.0.0/20"})
    assert one(plan, "aws:ec2/vpc:Vpc").inputs["cidrBlock"] == "172.20.0.0/20"
    cidrs = sorted(s.inputs["cidrBlock"] for s in plan.by_type("aws:ec2/subnet:Subnet"))
    assert "172.20.0.0/22" in cidrs and "172.20.12.0/24" in cidrs


# -- cluster ----------------------------------------------------------------------------------------------------
def test_endpoint_private_by_default() -> None:
    vpc_config = one(graph(), "aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert vpc_config["endpointPrivateAccess"] is True
    assert vpc_config["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in vpc_config


def test_endpoint_allowlist() -> None:
    network = {"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24"]}
    vpc_config = one(graph(network=network), "aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert vpc_config["endpointPublicAccess"] is True
    assert vpc_config["publicAccessCidrs"] == ["203.0.113.0/24"]


def test_endpoint_public_only_when_asked() -> None:
    vpc_config = one(graph(network={"endpoint": "public"}), "aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert vpc_config["endpointPublicAccess"] is True
    assert vpc_config["publicAccessCidrs"] == ["0.0.0.0/0"]


def test_cluster_logging_access_and_addons() -> None:
    plan = graph()
    cluster = one(plan, "aws:eks/cluster:Cluster").inputs
    assert set(cluster["enabledClusterLogTypes"]) == {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    assert cluster["accessConfig"] == {"authenticationMode": "API", "bootstrapClusterCreatorAdminPermissions": False}
    assert cluster["version"] == "1.34"
    admin = [e for e in plan.by_type("aws:eks/accessEntry:AccessEntry") if e.inputs["type"] == "STANDARD"]
    assert admin[0].inputs["principalArn"] == "arn:aws:iam::123456789012:role/byoc-deployer"  # the IAM role, not STS
    addons = {a.inputs["addonName"]: a.inputs for a in plan.by_type("aws:eks/addon:Addon")}
    assert set(addons) == {"vpc-cni", "coredns", "kube-proxy", "aws-ebs-csi-driver", "eks-pod-identity-agent"}
    assert json.loads(addons["vpc-cni"]["configurationValues"]) == {"enableNetworkPolicy": "true"}
    assert addons["aws-ebs-csi-driver"]["podIdentityAssociations"][0]["serviceAccount"] == "ebs-csi-controller-sa"


def test_imdsv2_on_every_launch_template_and_node_class() -> None:
    plan = graph()
    for template in plan.by_type("aws:ec2/launchTemplate:LaunchTemplate"):
        metadata = template.inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required"
        assert metadata["httpPutResponseHopLimit"] == 1
    for node_class in plan.by_type("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"):
        metadata = node_class.inputs["spec"]["metadataOptions"]
        assert metadata["httpTokens"] == "required"
        assert metadata["httpPutResponseHopLimit"] == 1


def test_system_node_group_on_demand_with_the_launch_template() -> None:
    group = one(graph(), "aws:eks/nodeGroup:NodeGroup").inputs
    assert group["capacityType"] == "ON_DEMAND"
    assert group["launchTemplate"]["id"] == "test-system-nodes-id"


# -- GPU capacity -----------------------------------------------------------------------------------------------
def _node_pool(plan: Plan) -> dict[str, Any]:
    spec: dict[str, Any] = one(plan, "kubernetes:karpenter.sh/v1:NodePool").inputs["spec"]
    return spec


def _requirement(spec: dict[str, Any], key: str) -> list[str]:
    return next(r["values"] for r in spec["template"]["spec"]["requirements"] if r["key"] == key)


def test_node_pool_allows_only_the_shapes_instance_types() -> None:
    spec = _node_pool(graph())
    assert _requirement(spec, "node.kubernetes.io/instance-type") == ["p5.4xlarge", "p5.48xlarge"]
    assert _requirement(spec, "karpenter.sh/capacity-type") == ["on-demand"]
    assert spec["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"


def test_b200_fp4_in_the_us_on_p6() -> None:
    plan = graph(region="US", shape="b200x8-fp4", model="llama-3.3-70b-instruct")
    spec = _node_pool(plan)
    assert _requirement(spec, "node.kubernetes.io/instance-type") == ["p6-b200.48xlarge"]
    assert one(plan, "pulumi:providers:aws").inputs["region"] == "us-east-1"
    node_class = one(plan, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass").inputs["spec"]
    # 70B in BF16 (131 GiB) plus its FP4 build: on the instance store (8 x 3.8 TB) by default, else on the root disk
    assert node_class["instanceStorePolicy"] == "RAID0"
    on_root = graph(
        region="US", shape="b200x8-fp4", model="llama-3.3-70b-instruct", cold_start={"weights_cache": "none"}
    )
    disk = one(on_root, "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass").inputs["spec"]["blockDeviceMappings"][0]
    assert int(disk["ebs"]["volumeSize"].removesuffix("Gi")) >= 250


def test_spot_capacity() -> None:
    assert _requirement(_node_pool(graph(capacity="spot")), "karpenter.sh/capacity-type") == ["spot"]


def test_gpu_limit_follows_max_replicas() -> None:
    small = _node_pool(graph(autoscaling={"max_replicas": 1}))["limits"]["nvidia.com/gpu"]
    large = _node_pool(graph(autoscaling={"max_replicas": 12}))["limits"]["nvidia.com/gpu"]
    assert int(small) == 8  # one p5.48xlarge (the largest allowed type) holds a replica and the build Job
    assert int(large) == 16  # 13 one-GPU pods: two p5.48xlarge


def test_interruption_queue_and_rules() -> None:
    plan = graph()
    patterns = [json.loads(r.inputs["eventPattern"]) for r in plan.by_type("aws:cloudwatch/eventRule:EventRule")]
    kinds = {p["detail-type"][0] for p in patterns}
    assert "EC2 Spot Instance Interruption Warning" in kinds and "AWS Health Event" in kinds
    for target in plan.by_type("aws:cloudwatch/eventTarget:EventTarget"):
        assert target.inputs["arn"] == "arn:aws:sqs:eu-west-2:123456789012:byoc-test"


def test_karpenter_release_is_pinned() -> None:
    releases = graph().by_type("kubernetes:helm.sh/v3:Release")
    release = next(r.inputs for r in releases if r.inputs["name"] == "karpenter")
    assert release["chart"] == "oci://public.ecr.aws/karpenter/karpenter"
    assert release["version"] == "1.8.1"
    assert release["values"]["settings"]["clusterName"] == "byoc-test"


# -- buckets and the trail --------------------------------------------------------------------------------------
def test_buckets_private_versioned_owner_enforced_tls_only() -> None:
    plan = graph()
    buckets = {b.name for b in plan.by_type("aws:s3/bucket:Bucket")}
    assert buckets == {"test-artifacts", "test-access-logs", "test-audit-trail"}
    for block in plan.by_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"):
        for setting in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block.inputs[setting] is True
    assert len(plan.by_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")) == 3
    for versioning in plan.by_type("aws:s3/bucketVersioning:BucketVersioning"):
        assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    for ownership in plan.by_type("aws:s3/bucketOwnershipControls:BucketOwnershipControls"):
        assert ownership.inputs["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    for bucket_policy in plan.by_type("aws:s3/bucketPolicy:BucketPolicy"):
        denies = [s for s in statements(json.loads(bucket_policy.inputs["policy"])) if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies), bucket_policy.name
    logged = {log.name: log.inputs["targetBucket"] for log in plan.by_type("aws:s3/bucketLogging:BucketLogging")}
    assert logged == {"test-artifacts": "test-access-logs-id", "test-audit-trail": "test-access-logs-id"}


def test_artifact_bucket_refuses_unencrypted_puts() -> None:
    plan = graph()
    bucket_policy = next(p for p in plan.by_type("aws:s3/bucketPolicy:BucketPolicy") if p.name == "test-artifacts")
    sids = {s["Sid"]: s for s in statements(json.loads(bucket_policy.inputs["policy"]))}
    assert sids["DenyPutsWithoutKms"]["Condition"] == {
        "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}
    }
    assert "DenyPutsWithAnotherKey" in sids


def test_trail_multi_region_validated_encrypted_with_data_events() -> None:
    trail = one(graph(), "aws:cloudtrail/trail:Trail").inputs
    assert trail["isMultiRegionTrail"] is True
    assert trail["enableLogFileValidation"] is True
    assert trail["includeGlobalServiceEvents"] is True
    assert trail["cloudWatchLogsGroupArn"].endswith(":*")
    data = next(s for s in trail["advancedEventSelectors"] if s["name"] == "Artifact bucket object access")
    arn_selector = next(f for f in data["fieldSelectors"] if f["field"] == "resources.ARN")
    assert arn_selector["startsWiths"] == ["arn:aws:s3:::byoc-test-artifacts-123456789012/"]


def test_trail_declares_management_events_the_way_prowler_recognises() -> None:
    trail = one(graph(), "aws:cloudtrail/trail:Trail").inputs
    management = [s for s in trail["advancedEventSelectors"] if s["name"] == "Management events selector"]
    assert len(management) == 1
    fields = management[0]["fieldSelectors"]
    assert fields == [{"field": "eventCategory", "equals": ["Management"]}]  # read and write: no readOnly filter


def test_ebs_encryption_by_default_is_off_unless_asked() -> None:
    assert graph().by_type("aws:ebs/encryptionByDefault:EncryptionByDefault") == []
    assert graph().by_type("aws:ebs/defaultKmsKey:DefaultKmsKey") == []


@pytest.mark.parametrize("kms_key", ["create", KEY_ARN])
def test_ebs_encryption_by_default_with_the_platform_key(kms_key: str) -> None:
    plan = graph(encryption={"kms_key": kms_key, "ebs_default": True})
    assert one(plan, "aws:ebs/encryptionByDefault:EncryptionByDefault").inputs["enabled"] is True
    key = one(plan, "aws:ebs/defaultKmsKey:DefaultKmsKey").inputs["keyArn"]
    assert key == (
        KEY_ARN
        if kms_key == KEY_ARN
        else one(plan, "aws:eks/cluster:Cluster").inputs["encryptionConfig"]["provider"]["keyArn"]
    )


# -- identities -------------------------------------------------------------------------------------------------
def test_no_wildcard_admin_anywhere() -> None:
    for resource, document in documents(graph()):
        for statement in statements(document):
            if statement["Effect"] != "Allow":
                continue
            actions = as_list(statement.get("Action", []))
            assert "*" not in actions and "*:*" not in actions, resource.name
            if resource.type == "aws:iam/rolePolicy:RolePolicy" and as_list(statement["Resource"]) == ["*"]:
                # only the read-only calls AWS offers no resource-level permission for (see karpenter_policy.py)
                assert statement["Sid"] in {
                    "AllowRegionalReadActions",
                    "AllowPricingReadActions",
                    "AllowUnscopedInstanceProfileListAction",
                }, statement["Sid"]
    attached = {
        a.inputs["policyArn"].rsplit("/", 1)[-1]
        for a in graph().by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    }
    assert not attached & {"AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "AmazonS3FullAccess"}


def test_pod_roles_trust_only_this_clusters_pods() -> None:
    plan = graph()
    roles = {r.inputs["name"]: json.loads(r.inputs["assumeRolePolicy"]) for r in plan.by_type("aws:iam/role:Role")}
    for role in ("byoc-test-builder", "byoc-test-serving", "byoc-test-karpenter", "byoc-test-ebs-csi"):
        statement = statements(roles[role])[0]
        assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == (
            "arn:aws:eks:eu-west-2:123456789012:cluster/byoc-test"
        )
    bindings = {
        (a.inputs["namespace"], a.inputs["serviceAccount"]): a.inputs["roleArn"]
        for a in plan.by_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
    }
    assert bindings[("byoc-test", "byoc-builder")].endswith("role/byoc-test-builder")
    assert bindings[("byoc-test", "byoc-serving")].endswith("role/byoc-test-serving")


def _role_policy(plan: Plan, role: str) -> list[dict[str, Any]]:
    found = [p for p in plan.by_type("aws:iam/rolePolicy:RolePolicy") if p.name == f"test-{role}"]
    return statements(json.loads(found[0].inputs["policy"]))


def test_builder_writes_only_its_prefix_and_serving_only_reads() -> None:
    plan = graph()
    builder = _role_policy(plan, "builder")
    writes = [s for s in builder if "s3:PutObject" in s["Action"]]
    assert [w["Resource"] for w in writes] == ["arn:aws:s3:::byoc-test-artifacts-123456789012/artifacts/*"]
    serving = _role_policy(plan, "serving")
    actions = {a for s in serving for a in as_list(s["Action"])}
    assert actions == {"s3:GetObject", "s3:ListBucket", "kms:Decrypt", "kms:DescribeKey"}


def test_model_in_the_customers_bucket_is_readable_by_the_builder() -> None:
    model = {"id": "llama-3.1-8b-instruct", "source": "s3://acme-models/llama/8b/"}
    builder = _role_policy(graph(model=model), "builder")
    read = next(s for s in builder if s.get("Sid") == "ReadModelSource")
    assert read["Resource"] == "arn:aws:s3:::acme-models/llama/8b/*"
    assert all(s.get("Sid") != "ReadModelSource" for s in _role_policy(graph(), "builder"))


# -- the engine and the Pulumi project --------------------------------------------------------------------------
def test_a_wrong_property_name_fails_the_plan() -> None:
    def broken(deployment: Any) -> dict[str, Any]:
        aws.s3.Bucket("oops", bucket_name_typo="x")  # type: ignore[call-arg]
        return {}

    with pytest.raises(TypeError):
        run_offline(deploy(), broken)


def test_pulumi_project_runs_the_same_program(tmp_path: Path) -> None:
    """What `pulumi preview -C stacks/aws` runs: __main__.py reads the spec from the stack config."""
    spec = tmp_path / "byoc.yaml"
    # one region, whose stack may have any name (a multi-region one's stacks: tests/stacks/test_multi_region.py)
    spec.write_text((ROOT / "examples" / "byoc.yaml").read_text() + "placement: {min_regions: 1}\n")
    deployment = deploy(name="demo")

    def via_main(_: Any) -> dict[str, Any]:
        pulumi.runtime.set_config("byoc:spec", str(spec))
        runpy.run_path(str(ROOT / "stacks" / "aws" / "__main__.py"), run_name="__main__")
        return {}

    from_main = run_offline(deployment, via_main)
    from_cli = graph(name="demo", max_context=32768, autoscaling={"min_replicas": 0, "max_replicas": 4})
    assert from_main.counts() == from_cli.counts()
    assert one(from_main, "aws:eks/cluster:Cluster").inputs == one(from_cli, "aws:eks/cluster:Cluster").inputs
    assert _node_pool(from_main) == _node_pool(from_cli)
