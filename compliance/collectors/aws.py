"""Read a live AWS deployment into the same graph shape the plan gives (Pulumi type tokens, camelCase inputs), so
that the same checks judge what exists.

Scoped to what carries the tag byoc:deployment=<name> (and, where AWS has no tag filter, to byoc's names). Honours
AWS_ENDPOINT_URL (and per-service AWS_ENDPOINT_URL_<SERVICE>) and the usual credential chain. A service that refuses
(AccessDenied) or cannot be reached leaves its resource types marked unreadable: their checks report ERROR with the
reason, and the rest of the report is still written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from byoc.names import DEPLOYMENT_TAG, resource_name
from compliance.checks import aws as t
from compliance.checks.batch import AWS_LIFECYCLE as LIFECYCLE
from compliance.evaluate import allowed_regions
from compliance.model import Graph, Resource


class _Session:
    def __init__(self, deployment: str, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.deployment = deployment
        self.region = region
        self.session: Any = boto3.session.Session(region_name=region)
        self.config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        self.resources: list[Resource] = []
        self.errors: dict[str, str] = {}
        self.aws_managed_keys: set[str] = set()  # keys the deployment uses whose KeyManager is AWS (ARN and id)

    def client(self, service: str) -> Any:
        return self.session.client(service, config=self.config)

    def add(self, type_token: str, name: str, id_: str, inputs: dict[str, Any]) -> None:
        self.resources.append(Resource(type_token, name, id_, inputs, "live", self.region))

    def by_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]


def _tags(pairs: list[dict[str, str]] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {p[key]: p[value] for p in pairs or []}


def _json(document: Any) -> str:
    if isinstance(document, str):
        document = json.loads(unquote(document))
    return json.dumps(document)


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _missing(exc: Exception, *codes: str) -> bool:
    return _error_code(exc) in codes


def _reason(exc: Exception) -> str:
    """An API error as a reviewer reads it: `Code: message` for AWS errors, the exception otherwise."""
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    if error:
        message = str(error.get("Message", "")).strip()
        if message.startswith("<"):  # an HTML error page (an endpoint that does not serve this API)
            message = "the endpoint does not serve this API"
        return f"{error.get('Code', 'error')}: {message.splitlines()[0] if message else ''}".strip()[:300]
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()[:300]


# -- one collector per service ----------------------------------------------------------------------------------
def _key_inputs(kms: Any, key_id: str, tags: dict[str, str]) -> dict[str, Any]:
    """A key as the checks read it: kind, state, rotation (where AWS can rotate it) and policy."""
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    inputs: dict[str, Any] = {
        "keyId": meta["KeyId"],
        "arn": meta["Arn"],
        "description": meta.get("Description"),
        "keyManager": meta.get("KeyManager"),
        "keySpec": meta.get("KeySpec") or meta.get("CustomerMasterKeySpec"),
        "keyUsage": meta.get("KeyUsage"),
        "origin": meta.get("Origin"),
        "keyState": meta.get("KeyState"),
        "deletionDate": meta["DeletionDate"].isoformat() if meta.get("DeletionDate") else None,
        "tags": tags,
    }
    # GetKeyRotationStatus answers UnsupportedOperationException for keys AWS cannot rotate: not asked of them
    if inputs["keySpec"] in (None, t.ROTATABLE_SPEC) and inputs["origin"] in (None, t.ROTATABLE_ORIGIN):
        try:
            status = kms.get_key_rotation_status(KeyId=meta["KeyId"])
        except Exception as exc:  # a key pending deletion, or a customer key this identity may not read
            inputs["rotationError"] = f"could not read the key's rotation: {_reason(exc)}"
        else:
            inputs["enableKeyRotation"] = status.get("KeyRotationEnabled")
            inputs["rotationPeriodInDays"] = status.get("RotationPeriodInDays")
    try:
        inputs["policy"] = _json(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    except Exception as exc:
        inputs["policyError"] = f"could not read the key policy: {_reason(exc)}"
    return inputs


def _kms(s: _Session) -> None:
    kms = s.client("kms")
    for page in kms.get_paginator("list_keys").paginate():
        for entry in page["Keys"]:
            key_id = entry["KeyId"]
            tags = _tags(kms.list_resource_tags(KeyId=key_id).get("Tags"), "TagKey", "TagValue")
            if tags.get(DEPLOYMENT_TAG) != s.deployment:
                continue
            s.add(t.KEY, tags.get("byoc:key", key_id), key_id, _key_inputs(kms, key_id, tags))


def _key_references(resources: list[Resource]) -> dict[str, list[str]]:
    """The KMS keys the deployment's resources name (bucket, trail, log group, cluster, volume, queue, the gateway's
    store): key -> users."""
    found: dict[str, list[str]] = {}
    for r in resources:
        if r.type == t.ENCRYPTION:
            keys = [
                rule.get("applyServerSideEncryptionByDefault", {}).get("kmsMasterKeyId")
                for rule in r.get("rules") or []
            ]
        elif r.type in (t.TRAIL, t.LOG_GROUP):
            keys = [r.get("kmsKeyId")]
        elif r.type == t.QUEUE:
            keys = [r.get("kmsMasterKeyId")]
        elif r.type == t.CLUSTER:
            keys = [(c.get("provider") or {}).get("keyArn") for c in r.get("encryptionConfig") or []]
        elif r.type == t.REPLICATION_GROUP:
            keys = [r.get("kmsKeyId")]
        elif r.type == t.LAUNCH_TEMPLATE:
            keys = [(m.get("ebs") or {}).get("kmsKeyId") for m in r.get("blockDeviceMappings") or []]
        else:
            continue
        for key in keys:
            if key:
                found.setdefault(str(key), []).append(r.name)
    return found


def _customer_keys(s: _Session, given: list[str]) -> None:
    """Keys the deployment uses but byoc did not create (encryption.kms_key: a customer key carries no byoc tag):
    read like byoc's own, so that their rotation, policy and deletion state are judged, not assumed."""
    if t.KEY in s.errors:
        return
    references = _key_references(s.resources)
    for key in given:
        references.setdefault(key, []).append("encryption.kms_key")
    known = {str(h) for r in s.by_type(t.KEY) for h in (r.id, r.get("arn"))}
    kms = s.client("kms")
    for reference, users in sorted(references.items()):
        if reference in known or reference.split("key/")[-1] in known:
            continue
        if reference.startswith("alias/aws/") or ":alias/aws/" in reference:
            continue  # AWS-managed by name (alias/aws/s3): no rotation or policy of the customer's
        try:
            inputs = _key_inputs(kms, reference, {})
        except Exception as exc:
            s.errors[t.KEY] = f"could not read the customer key {reference} ({', '.join(users)} use it): {_reason(exc)}"
            continue
        known |= {inputs["keyId"], inputs["arn"]}
        if inputs.get("keyManager") == "AWS":
            # AWS-managed: no rotation or policy of the customer's; the checks on its users fail on it
            s.aws_managed_keys |= {reference, inputs["keyId"], inputs["arn"]}
            continue
        s.add(t.KEY, f"customer key {inputs['keyId']}", inputs["keyId"], inputs | {"usedBy": sorted(users)})


def _s3(s: _Session) -> None:
    from botocore.exceptions import ClientError

    s3 = s.client("s3")
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        try:
            tags = _tags(s3.get_bucket_tagging(Bucket=name).get("TagSet"))
        except ClientError as exc:
            if _missing(exc, "NoSuchTagSet", "NoSuchBucket"):
                continue
            raise
        if tags.get(DEPLOYMENT_TAG) != s.deployment:
            continue
        # ListBuckets spans every region: the bucket's own region is what residency is judged on
        location = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"

        def read(call: Callable[..., Any], *absent: str) -> Any:
            """One bucket setting; None where the bucket has none (each API has its own not-found code)."""
            try:
                return call(Bucket=name)  # noqa: B023 - called at once, inside this iteration
            except ClientError as exc:
                if _missing(exc, *absent):
                    return None
                raise

        lock = read(s3.get_object_lock_configuration, "ObjectLockConfigurationNotFoundError")
        replication = read(s3.get_bucket_replication, "ReplicationConfigurationNotFoundError")
        s.add(
            t.BUCKET,
            name,
            name,
            {
                "bucket": name,
                "tags": tags,
                "region": location,
                "objectLockEnabled": (lock or {}).get("ObjectLockConfiguration", {}).get("ObjectLockEnabled"),
                "replicationRules": (replication or {}).get("ReplicationConfiguration", {}).get("Rules"),
            },
        )

        encryption = read(s3.get_bucket_encryption, "ServerSideEncryptionConfigurationNotFoundError")
        if encryption:
            rules = []
            for rule in encryption["ServerSideEncryptionConfiguration"]["Rules"]:
                default = rule.get("ApplyServerSideEncryptionByDefault", {})
                rules.append(
                    {
                        "applyServerSideEncryptionByDefault": {
                            "sseAlgorithm": default.get("SSEAlgorithm"),
                            "kmsMasterKeyId": default.get("KMSMasterKeyID"),
                        },
                        "bucketKeyEnabled": rule.get("BucketKeyEnabled", False),
                    }
                )
            s.add(t.ENCRYPTION, name, name, {"bucket": name, "rules": rules})
        versioning = read(s3.get_bucket_versioning)
        if versioning and versioning.get("Status"):
            s.add(
                t.VERSIONING, name, name, {"bucket": name, "versioningConfiguration": {"status": versioning["Status"]}}
            )
        block = read(s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration")
        if block:
            config = block["PublicAccessBlockConfiguration"]
            s.add(
                t.PUBLIC_ACCESS,
                name,
                name,
                {
                    "bucket": name,
                    "blockPublicAcls": config.get("BlockPublicAcls"),
                    "blockPublicPolicy": config.get("BlockPublicPolicy"),
                    "ignorePublicAcls": config.get("IgnorePublicAcls"),
                    "restrictPublicBuckets": config.get("RestrictPublicBuckets"),
                },
            )
        ownership = read(s3.get_bucket_ownership_controls, "OwnershipControlsNotFoundError")
        if ownership:
            rule = ownership["OwnershipControls"]["Rules"][0]
            s.add(t.OWNERSHIP, name, name, {"bucket": name, "rule": {"objectOwnership": rule.get("ObjectOwnership")}})
        policy = read(s3.get_bucket_policy, "NoSuchBucketPolicy")
        if policy:
            s.add(t.BUCKET_POLICY, name, name, {"bucket": name, "policy": _json(policy["Policy"])})
        logging = read(s3.get_bucket_logging)
        enabled = (logging or {}).get("LoggingEnabled")
        if enabled:
            s.add(
                t.LOGGING,
                name,
                name,
                {
                    "bucket": name,
                    "targetBucket": enabled.get("TargetBucket"),
                    "targetPrefix": enabled.get("TargetPrefix"),
                },
            )
        lifecycle = read(s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration")
        if lifecycle:
            # the batch expiry check reads these (compliance/checks/batch.py), in the plan's camelCase shape
            s.add(LIFECYCLE, name, name, {"bucket": name, "rules": [_lifecycle_rule(r) for r in lifecycle["Rules"]]})


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A GetBucketLifecycleConfiguration rule as Pulumi's BucketLifecycleConfiguration input names it."""
    expiration = rule.get("Expiration") or {}
    noncurrent = rule.get("NoncurrentVersionExpiration") or {}
    flt = rule.get("Filter") or {}
    prefix = flt.get("Prefix", (flt.get("And") or {}).get("Prefix", rule.get("Prefix", "")))
    return {
        "id": rule.get("ID"),
        "status": rule.get("Status"),
        "filter": {"prefix": prefix},
        "expiration": {"days": expiration["Days"]} if "Days" in expiration else None,
        "noncurrentVersionExpiration": (
            {"noncurrentDays": noncurrent["NoncurrentDays"]} if "NoncurrentDays" in noncurrent else None
        ),
    }


def _selectors(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {
        "Equals": "equals",
        "StartsWith": "startsWiths",
        "EndsWith": "endsWiths",
        "NotEquals": "notEquals",
        "NotStartsWith": "notStartsWiths",
        "NotEndsWith": "notEndsWiths",
    }
    return [
        {
            "name": selector.get("Name"),
            "fieldSelectors": [
                {"field": f["Field"], **{names[k]: v for k, v in f.items() if k in names}}
                for f in selector.get("FieldSelectors", [])
            ],
        }
        for selector in raw
    ]


def _cloudtrail(s: _Session) -> None:
    trails = s.client("cloudtrail")
    for trail in trails.describe_trails(includeShadowTrails=False).get("trailList", []):
        arn = trail["TrailARN"]
        listed = trails.list_tags(ResourceIdList=[arn]).get("ResourceTagList", [])
        tags = _tags(listed[0].get("TagsList") if listed else [])
        if tags.get(DEPLOYMENT_TAG) != s.deployment:
            continue
        selectors = trails.get_event_selectors(TrailName=arn)
        status = trails.get_trail_status(Name=arn)
        s.add(
            t.TRAIL,
            trail["Name"],
            arn,
            {
                "name": trail["Name"],
                "s3BucketName": trail.get("S3BucketName"),
                "isMultiRegionTrail": trail.get("IsMultiRegionTrail"),
                "includeGlobalServiceEvents": trail.get("IncludeGlobalServiceEvents"),
                "enableLogFileValidation": trail.get("LogFileValidationEnabled"),
                "kmsKeyId": trail.get("KmsKeyId"),
                "cloudWatchLogsGroupArn": trail.get("CloudWatchLogsLogGroupArn"),
                "advancedEventSelectors": _selectors(selectors.get("AdvancedEventSelectors", [])),
                "eventSelectors": [
                    {
                        "readWriteType": e.get("ReadWriteType"),
                        "includeManagementEvents": e.get("IncludeManagementEvents"),
                        "excludeManagementEventSources": e.get("ExcludeManagementEventSources", []),
                        "dataResources": e.get("DataResources", []),
                    }
                    for e in selectors.get("EventSelectors", [])
                ],
                "isLogging": status.get("IsLogging"),
                "tags": tags,
            },
        )


def _logs(s: _Session) -> None:
    logs = s.client("logs")
    for prefix in (f"/byoc/{s.deployment}/", f"/aws/eks/byoc-{s.deployment}/"):
        for page in logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=prefix):
            for group in page.get("logGroups", []):
                s.add(
                    t.LOG_GROUP,
                    group["logGroupName"],
                    group.get("arn", group["logGroupName"]),
                    {
                        "name": group["logGroupName"],
                        "kmsKeyId": group.get("kmsKeyId"),
                        "retentionInDays": group.get("retentionInDays"),
                    },
                )


def _eks(s: _Session) -> None:
    eks = s.client("eks")
    for name in eks.list_clusters().get("clusters", []):
        cluster = eks.describe_cluster(name=name)["cluster"]
        if cluster.get("tags", {}).get(DEPLOYMENT_TAG) != s.deployment:
            continue
        vpc = cluster.get("resourcesVpcConfig", {})
        enabled = [
            kind
            for entry in cluster.get("logging", {}).get("clusterLogging", [])
            if entry.get("enabled")
            for kind in entry.get("types", [])
        ]
        access = cluster.get("accessConfig", {})
        s.add(
            t.CLUSTER,
            name,
            cluster.get("arn", name),
            {
                "name": name,
                "vpcConfig": {
                    "endpointPrivateAccess": vpc.get("endpointPrivateAccess"),
                    "endpointPublicAccess": vpc.get("endpointPublicAccess"),
                    "publicAccessCidrs": vpc.get("publicAccessCidrs"),
                    "subnetIds": vpc.get("subnetIds"),
                },
                "encryptionConfig": [
                    {"provider": {"keyArn": c.get("provider", {}).get("keyArn")}, "resources": c.get("resources", [])}
                    for c in cluster.get("encryptionConfig", [])
                ],
                "enabledClusterLogTypes": enabled,
                "accessConfig": {
                    "authenticationMode": access.get("authenticationMode"),
                    "bootstrapClusterCreatorAdminPermissions": access.get("bootstrapClusterCreatorAdminPermissions"),
                },
                "tags": cluster.get("tags", {}),
            },
        )
        try:
            addons = eks.list_addons(clusterName=name).get("addons", [])
            for addon in addons:
                described = eks.describe_addon(clusterName=name, addonName=addon)["addon"]
                s.add(
                    t.ADDON,
                    addon,
                    described.get("addonArn", addon),
                    {
                        "clusterName": name,
                        "addonName": addon,
                        "configurationValues": described.get("configurationValues") or "{}",
                    },
                )
        except Exception as exc:  # the add-ons API alone refusing must not hide the cluster's other checks
            s.errors[t.ADDON] = f"could not read eks add-ons: {_reason(exc)}"
        for group_name in eks.list_nodegroups(clusterName=name).get("nodegroups", []):
            group = eks.describe_nodegroup(clusterName=name, nodegroupName=group_name)["nodegroup"]
            s.add(
                t.NODE_GROUP,
                group_name,
                group.get("nodegroupArn", group_name),
                {"subnetIds": group.get("subnets", []), "capacityType": group.get("capacityType")},
            )


def _rule(permission: dict[str, Any]) -> dict[str, Any]:
    """An EC2 IpPermission in the shape of a Pulumi security group rule."""
    return {
        "protocol": permission.get("IpProtocol"),
        "fromPort": permission.get("FromPort"),
        "toPort": permission.get("ToPort"),
        "cidrBlocks": [r["CidrIp"] for r in permission.get("IpRanges", [])],
        "ipv6CidrBlocks": [r["CidrIpv6"] for r in permission.get("Ipv6Ranges", [])],
        "securityGroups": [p.get("GroupId") for p in permission.get("UserIdGroupPairs", [])],
        "prefixListIds": [p.get("PrefixListId") for p in permission.get("PrefixListIds", [])],
    }


def _ebs(s: _Session) -> None:
    """The region's account-level EBS settings: encryption by default and its default key."""
    ec2 = s.client("ec2")
    enabled = ec2.get_ebs_encryption_by_default().get("EbsEncryptionByDefault")
    inputs: dict[str, Any] = {"enabled": enabled}
    try:
        key = ec2.get_ebs_default_kms_key_id().get("KmsKeyId")
    except Exception as exc:  # the key alone unreadable: say so on the setting, keep the rest
        inputs["kmsKeyError"] = f"could not read the default EBS key: {_reason(exc)}"
    else:
        s.add(t.EBS_DEFAULT_KEY, "ebs-default-kms-key", s.region, {"keyArn": key})
    s.add(t.EBS_DEFAULT, "ebs-encryption-by-default", s.region, inputs)


def _ec2(s: _Session) -> None:
    ec2 = s.client("ec2")
    tagged = [{"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [s.deployment]}]
    for vpc in ec2.describe_vpcs(Filters=tagged).get("Vpcs", []):
        vpc_id = vpc["VpcId"]
        in_vpc = [{"Name": "vpc-id", "Values": [vpc_id]}]
        s.add(t.VPC, vpc_id, vpc_id, {"cidrBlock": vpc.get("CidrBlock"), "tags": _tags(vpc.get("Tags"))})
        for log in ec2.describe_flow_logs(Filters=[{"Name": "resource-id", "Values": [vpc_id]}]).get("FlowLogs", []):
            s.add(
                t.FLOW_LOG,
                log["FlowLogId"],
                log["FlowLogId"],
                {
                    "vpcId": vpc_id,
                    "trafficType": log.get("TrafficType"),
                    "logDestinationType": log.get("LogDestinationType"),
                    "logDestination": log.get("LogDestination") or log.get("LogGroupName"),
                },
            )
        for page in ec2.get_paginator("describe_security_groups").paginate(Filters=in_vpc):
            for group in page.get("SecurityGroups", []):
                default = group.get("GroupName") == "default"
                s.add(
                    t.DEFAULT_SG if default else t.SECURITY_GROUP,
                    group["GroupId"] if default else group.get("GroupName", group["GroupId"]),
                    group["GroupId"],
                    {
                        "name": group.get("GroupName"),
                        "vpcId": vpc_id,
                        "ingress": [_rule(r) for r in group.get("IpPermissions", [])],
                        "egress": [_rule(r) for r in group.get("IpPermissionsEgress", [])],
                        "tags": _tags(group.get("Tags")),
                    },
                )
        for subnet in ec2.describe_subnets(Filters=in_vpc).get("Subnets", []):
            s.add(
                t.SUBNET,
                _tags(subnet.get("Tags")).get("Name", subnet["SubnetId"]),
                subnet["SubnetId"],
                {"mapPublicIpOnLaunch": subnet.get("MapPublicIpOnLaunch", False), "tags": _tags(subnet.get("Tags"))},
            )
        for endpoint in ec2.describe_vpc_endpoints(Filters=in_vpc).get("VpcEndpoints", []):
            s.add(
                t.ENDPOINT,
                endpoint["VpcEndpointId"],
                endpoint["VpcEndpointId"],
                {
                    "vpcId": vpc_id,
                    "serviceName": endpoint.get("ServiceName"),
                    "vpcEndpointType": endpoint.get("VpcEndpointType"),
                    "privateDnsEnabled": endpoint.get("PrivateDnsEnabled"),
                },
            )
    for template in ec2.describe_launch_templates(Filters=tagged).get("LaunchTemplates", []):
        template_id = template["LaunchTemplateId"]
        versions = ec2.describe_launch_template_versions(LaunchTemplateId=template_id, Versions=["$Latest"])
        data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        metadata = data.get("MetadataOptions", {})
        s.add(
            t.LAUNCH_TEMPLATE,
            template["LaunchTemplateName"],
            template_id,
            {
                "metadataOptions": {
                    "httpTokens": metadata.get("HttpTokens"),
                    "httpPutResponseHopLimit": metadata.get("HttpPutResponseHopLimit"),
                },
                "blockDeviceMappings": [
                    {
                        "deviceName": m.get("DeviceName"),
                        "ebs": {
                            "encrypted": m.get("Ebs", {}).get("Encrypted"),
                            "kmsKeyId": m.get("Ebs", {}).get("KmsKeyId"),
                        },
                    }
                    for m in data.get("BlockDeviceMappings", [])
                ],
            },
        )


def _iam(s: _Session) -> None:
    iam = s.client("iam")
    prefix = resource_name(s.deployment, "")
    for page in iam.get_paginator("list_roles").paginate():
        for role in page.get("Roles", []):
            name = role["RoleName"]
            if not name.startswith(prefix):
                continue
            tags = _tags(iam.list_role_tags(RoleName=name).get("Tags"))
            if tags.get(DEPLOYMENT_TAG) != s.deployment:
                continue
            s.add(
                t.ROLE,
                name,
                name,
                {
                    "name": name,
                    "description": role.get("Description"),
                    "assumeRolePolicy": _json(role["AssumeRolePolicyDocument"]),
                },
            )
            for policy_name in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
                document = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
                s.add(
                    t.ROLE_POLICY,
                    f"{name}/{policy_name}",
                    f"{name}:{policy_name}",
                    {"role": name, "name": policy_name, "policy": _json(document)},
                )
            for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
                s.add(
                    t.ATTACHMENT,
                    f"{name}/{attached['PolicyName']}",
                    attached["PolicyArn"],
                    {"role": name, "policyArn": attached["PolicyArn"]},
                )


def _sqs(s: _Session) -> None:
    from botocore.exceptions import ClientError

    sqs = s.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=resource_name(s.deployment))["QueueUrl"]
    except ClientError as exc:
        if _missing(exc, "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return
        raise
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
    s.add(t.QUEUE, resource_name(s.deployment), url, {"url": url, "kmsMasterKeyId": attributes.get("KmsMasterKeyId")})
    if attributes.get("Policy"):
        s.add(
            t.QUEUE_POLICY, resource_name(s.deployment), url, {"queueUrl": url, "policy": _json(attributes["Policy"])}
        )


def _member_cluster(elasticache: Any, members: list[str]) -> dict[str, Any]:
    """The first member cluster of a replication group ({} when it has none or none can be found)."""
    from botocore.exceptions import ClientError

    if not members:
        return {}
    try:
        clusters = elasticache.describe_cache_clusters(CacheClusterId=members[0]).get("CacheClusters", [])
    except ClientError as exc:
        if _missing(exc, "CacheClusterNotFound"):
            return {}
        raise
    return dict(clusters[0]) if clusters else {}


def _elasticache(s: _Session) -> None:
    """The gateway's shared store (stacks/aws/store.py): replication groups tagged with the deployment, in the shape
    the plan declares them (ReplicationGroup and its cache subnet group)."""
    elasticache = s.client("elasticache")
    for page in elasticache.get_paginator("describe_replication_groups").paginate():
        for group in page.get("ReplicationGroups", []):
            arn = group.get("ARN")
            tags = _tags(elasticache.list_tags_for_resource(ResourceName=arn).get("TagList")) if arn else {}
            if tags.get(DEPLOYMENT_TAG) != s.deployment:
                continue
            # the subnet group and security groups are the member clusters' (DescribeCacheClusters)
            # (moto 5.2 creates no member clusters: both stay unknown there, and their checks say NOT_ASSESSED)
            cluster = _member_cluster(elasticache, group.get("MemberClusters", []))
            subnet_group = cluster.get("CacheSubnetGroupName")
            security_groups = cluster.get("SecurityGroups")
            s.add(
                t.REPLICATION_GROUP,
                group["ReplicationGroupId"],
                group["ReplicationGroupId"],
                {
                    "engine": group.get("Engine"),
                    "atRestEncryptionEnabled": group.get("AtRestEncryptionEnabled"),
                    "kmsKeyId": group.get("KmsKeyId"),
                    "transitEncryptionEnabled": group.get("TransitEncryptionEnabled"),
                    "transitEncryptionMode": group.get("TransitEncryptionMode"),
                    "authTokenEnabled": group.get("AuthTokenEnabled"),
                    "userGroupIds": group.get("UserGroupIds", []),
                    "automaticFailoverEnabled": group.get("AutomaticFailover") == "enabled",
                    "multiAzEnabled": group.get("MultiAZ") == "enabled",
                    "snapshotRetentionLimit": group.get("SnapshotRetentionLimit", 0),
                    "autoMinorVersionUpgrade": group.get("AutoMinorVersionUpgrade"),
                    "subnetGroupName": subnet_group,
                    "securityGroupIds": (
                        None if security_groups is None else [g.get("SecurityGroupId") for g in security_groups]
                    ),
                    "tags": tags,
                },
            )
            if subnet_group:
                described = elasticache.describe_cache_subnet_groups(CacheSubnetGroupName=subnet_group)
                for found in described.get("CacheSubnetGroups", []):
                    s.add(
                        t.CACHE_SUBNET_GROUP,
                        found["CacheSubnetGroupName"],
                        found["CacheSubnetGroupName"],
                        {
                            "name": found["CacheSubnetGroupName"],
                            "subnetIds": [n.get("SubnetIdentifier") for n in found.get("Subnets", [])],
                        },
                    )


COLLECTORS: dict[str, tuple[Callable[[_Session], None], tuple[str, ...]]] = {
    "kms": (_kms, (t.KEY,)),
    "s3": (
        _s3,
        (t.BUCKET, t.ENCRYPTION, t.VERSIONING, t.PUBLIC_ACCESS, t.OWNERSHIP, t.BUCKET_POLICY, t.LOGGING, LIFECYCLE),
    ),
    "cloudtrail": (_cloudtrail, (t.TRAIL,)),
    "logs": (_logs, (t.LOG_GROUP,)),
    "eks": (_eks, (t.CLUSTER, t.NODE_GROUP, t.ADDON)),
    "ec2": (_ec2, (t.VPC, t.FLOW_LOG, t.DEFAULT_SG, t.SECURITY_GROUP, t.SUBNET, t.ENDPOINT, t.LAUNCH_TEMPLATE)),
    "ebs": (_ebs, (t.EBS_DEFAULT, t.EBS_DEFAULT_KEY)),
    "iam": (_iam, (t.ROLE, t.ROLE_POLICY, t.ATTACHMENT)),
    "sqs": (_sqs, (t.QUEUE, t.QUEUE_POLICY)),
    "elasticache": (_elasticache, (t.REPLICATION_GROUP, t.CACHE_SUBNET_GROUP)),
}


def _run(session: _Session) -> Iterator[tuple[str, str]]:
    for service, (collector, _) in COLLECTORS.items():
        try:
            collector(session)
        except Exception as exc:  # AccessDenied, no credentials, unreachable, an answer botocore cannot parse
            yield service, _reason(exc)


# Settings of the account or region, read whatever the deployment: not evidence that the deployment exists.
ACCOUNT_LEVEL = (t.EBS_DEFAULT, t.EBS_DEFAULT_KEY, t.PROVIDER)


def collect(
    deployment: str,
    region: str,
    requested_region: str,
    kubeconfig: Path | None = None,
    customer_keys: list[str] | None = None,
) -> Graph:
    """Every byoc resource of the deployment in the region, in plan shape; unreadable services recorded.

    With a kubeconfig, the Kubernetes objects byoc declares (namespaces, NetworkPolicies, NodePools,
    EC2NodeClasses, workloads, ...) are read through the cluster's API too; without one they are recorded as not
    assessed ("no cluster access"), so their checks say so instead of staying silent.

    Keys the deployment's resources use without byoc's tag (a customer key), and `customer_keys` (the plan's
    encryption.kms_key), are read too. When no resource carries the deployment's tag, the graph says so
    (`not_found`): the report's headline.
    """
    from compliance.collectors import kubernetes

    session = _Session(deployment, region)
    failed = []
    for service, reason in _run(session):
        failed.append(service)
        for type_token in COLLECTORS[service][1]:
            session.errors[type_token] = f"could not read {service}: {reason}"
    try:
        _customer_keys(session, customer_keys or [])
    except Exception as exc:
        session.errors.setdefault(t.KEY, f"could not read the deployment's customer keys: {_reason(exc)}")
    not_found = None
    if not [r for r in session.resources if r.type not in ACCOUNT_LEVEL]:
        unread = f" ({', '.join(failed)} could not be read)" if failed else ""
        not_found = (
            f"no resource in {region} carries the tag {DEPLOYMENT_TAG}={deployment}{unread}: check --deployment, "
            "--region and the account the credentials belong to"
        )
    session.add(t.PROVIDER, "aws", "aws", {"region": region})
    cluster = kubernetes.read_cluster(kubeconfig, region) if kubeconfig else kubernetes.without_access()
    return Graph(
        resources=session.resources + cluster.resources,
        deployment=deployment,
        region=region,
        requested_region=requested_region,
        allowed_regions=allowed_regions("aws", requested_region, region),
        source="live",
        errors={**session.errors, **cluster.errors},
        unassessed=cluster.unassessed,
        cloud="aws",
        not_found=not_found,
        customer_keys=tuple(customer_keys or ()),
        aws_managed_keys=tuple(sorted(session.aws_managed_keys)),
    )
