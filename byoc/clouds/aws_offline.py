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


def resource_outputs(
    type_token: str, logical_name: str, name: str, inputs: dict[str, Any], region: str
) -> tuple[str | None, dict[str, Any]]:
    """The id (None: the engine's placeholder) and the outputs AWS computes for a resource of `type_token`;
    `name` is the physical name the program gave (or the logical name)."""
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
    }
    return answers.get(token)
