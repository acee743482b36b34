"""What AWS would answer a byoc program run offline (`byoc plan`, under Pulumi's mocks): the computed outputs of
each resource and the answers of the data sources the program reads.

Values only a live account knows are placeholders: the account id is 123456789012 (AWS's documentation account),
availability zones are <region>a/b/c, and ARNs of resources that do not exist yet are made up from their names in
the format of each service's ARN ("Amazon Resource Names", AWS General Reference).
"""

from __future__ import annotations

from typing import Any

from byoc.plan import PLACEHOLDER_SECRET

PLACEHOLDER_ACCOUNT = "123456789012"
# A stack reference (the global layer of a multi-region deployment reads each region's outputs through one)
STACK_REFERENCE = "pulumi:pulumi:StackReference"


def region_of_stack(stack: str) -> str:
    """The AWS region of a regional stack <name>-<region code> (byoc.names.region_code), among the catalog's."""
    from byoc.catalogs import load_catalog
    from byoc.names import region_code

    codes = {region_code(region): region for region in load_catalog().offerings["aws"]}
    return codes[stack.rsplit("/", 1)[-1].rsplit("-", 1)[-1]]


def regional_stack_outputs(stack: str) -> dict[str, Any]:
    """What a regional stack exports for the global layer (stacks/aws/program.py), as a live one would: ids in
    EC2's formats, the gateway NLB's DNS name (<name>-<id>.elb.<region>.amazonaws.com) and CloudWatch's ARN suffixes
    of it and of its target group."""
    region = region_of_stack(stack)
    name = stack.rsplit("/", 1)[-1]
    balancer = f"a{name.replace('-', '')}0123456789abcdef"[:32]
    return {
        "region": region,
        "vpc_id": f"vpc-{name}",
        "private_route_table_ids": [f"rtb-{name}-{zone}" for zone in range(3)],
        "gateway_lb_address": f"{balancer}-0123456789abcdef.elb.{region}.amazonaws.com",
        "gateway_lb_zone_id": "Z0PLACEHOLDER",
        "gateway_lb_arn_suffix": f"net/{balancer}/0123456789abcdef",
        "gateway_target_group_arn_suffix": f"targetgroup/k8s-{name[:20]}/0123456789abcdef",
        "artifact_bucket": f"byoc-{name}-artifacts-{PLACEHOLDER_ACCOUNT}",
        "artifact_key_arn": f"arn:aws:kms:{region}:{PLACEHOLDER_ACCOUNT}:key/{name}-artifacts-key-id",
    }


def resource_outputs(
    type_token: str, logical_name: str, name: str, inputs: dict[str, Any], region: str
) -> tuple[str | None, dict[str, Any]]:
    """The id (None: the engine's placeholder) and the outputs AWS computes for a resource of `type_token`;
    `name` is the physical name the program gave (or the logical name)."""
    if type_token == STACK_REFERENCE:
        return name, {"outputs": regional_stack_outputs(name), "secretOutputNames": []}
    service = type_token.split(":")[1].split("/", maxsplit=1)[0] if type_token.startswith("aws:") else "resource"
    outputs: dict[str, Any] = {"arn": inputs.get("arn") or f"arn:aws:{service}:{region}:{PLACEHOLDER_ACCOUNT}:{name}"}
    computed: dict[str, dict[str, Any]] = {
        "aws:iam/role:Role": {
            "name": name,
            "arn": f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/{name}",
        },
        "aws:kms/key:Key": {
            "keyId": f"{logical_name}-key-id",
            "arn": f"arn:aws:kms:{region}:{PLACEHOLDER_ACCOUNT}:key/{logical_name}-key-id",
        },
        "aws:s3/bucket:Bucket": {
            "bucket": inputs.get("bucket") or logical_name,
            "arn": f"arn:aws:s3:::{inputs.get('bucket') or logical_name}",
        },
        "aws:eks/cluster:Cluster": {
            "endpoint": f"https://{name}.eks.{region}.example",
            "certificateAuthority": {"data": "cGxhY2Vob2xkZXI="},
            "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{logical_name}"},
            "arn": f"arn:aws:eks:{region}:{PLACEHOLDER_ACCOUNT}:cluster/{name}",
        },
        "aws:sqs/queue:Queue": {
            "url": f"https://sqs.{region}.amazonaws.com/{PLACEHOLDER_ACCOUNT}/{name}",
            "arn": f"arn:aws:sqs:{region}:{PLACEHOLDER_ACCOUNT}:{name}",
        },
        "aws:cloudwatch/logGroup:LogGroup": {
            "arn": f"arn:aws:logs:{region}:{PLACEHOLDER_ACCOUNT}:log-group:{name}",
        },
        "aws:ec2/launchTemplate:LaunchTemplate": {"latestVersion": 1},
        "aws:ec2/eip:Eip": {"allocationId": f"eipalloc-{logical_name}"},
        "aws:elasticache/replicationGroup:ReplicationGroup": {
            "primaryEndpointAddress": (
                f"master.{inputs.get('replicationGroupId', name)}.abc123.{region}.cache.amazonaws.com"
            ),
        },
        # the gateway store's AUTH token and the batch worker token (random.RandomPassword), which a live run
        # generates
        "random:index/randomPassword:RandomPassword": {"result": PLACEHOLDER_SECRET},
    }
    outputs.update(computed.get(type_token, {}))
    return None, outputs


def call_answer(token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
    """What the AWS data source `token` answers (None: not an AWS data source byoc reads)."""
    zones = [f"{region}{suffix}" for suffix in "abc"]
    deployer = f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:role/byoc-deployer"
    answers: dict[str, dict[str, Any]] = {
        "aws:index/getCallerIdentity:getCallerIdentity": {
            "accountId": PLACEHOLDER_ACCOUNT,
            "arn": f"arn:aws:sts::{PLACEHOLDER_ACCOUNT}:assumed-role/byoc-deployer/session",
            "userId": "AROAEXAMPLE:session",
            "id": PLACEHOLDER_ACCOUNT,
        },
        "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"},
        "aws:iam/getSessionContext:getSessionContext": {"issuerArn": deployer, "arn": args.get("arn")},
        "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": zones, "zoneIds": zones},
        # the gateway Service's NLB and its target group, found by the in-tree cloud provider's tags
        # (stacks/aws/program.py)
        "aws:lb/getLoadBalancer:getLoadBalancer": _load_balancer(args, region),
        "aws:lb/getTargetGroup:getTargetGroup": _target_group(args, region),
    }
    return answers.get(token)


def _service_of(args: dict[str, Any]) -> str:
    tags = args.get("tags") or {}
    return str(tags.get("kubernetes.io/service-name", "service")).replace("/", "-")


def _load_balancer(args: dict[str, Any], region: str) -> dict[str, Any]:
    name = f"a{_service_of(args).replace('-', '')}"[:32]
    arn = f"arn:aws:elasticloadbalancing:{region}:{PLACEHOLDER_ACCOUNT}:loadbalancer/net/{name}/0123456789abcdef"
    return {
        "arn": arn,
        "arnSuffix": f"net/{name}/0123456789abcdef",
        "dnsName": f"{name}-0123456789abcdef.elb.{region}.amazonaws.com",
        "zoneId": "Z0PLACEHOLDER",
        "name": name,
        "id": arn,
        "tags": args.get("tags") or {},
    }


def _target_group(args: dict[str, Any], region: str) -> dict[str, Any]:
    name = f"k8s-{_service_of(args)}"[:32]
    arn = f"arn:aws:elasticloadbalancing:{region}:{PLACEHOLDER_ACCOUNT}:targetgroup/{name}/0123456789abcdef"
    return {
        "arn": arn,
        "arnSuffix": f"targetgroup/{name}/0123456789abcdef",
        "name": name,
        "id": arn,
        "tags": args.get("tags") or {},
    }
