"""AWS checks over the deployment's resources (declared in the plan, or read from the account).

Check ids follow Prowler's where Prowler has the same check (kms_cmk_rotation_enabled, s3_bucket_default_encryption,
cloudtrail_multi_region_enabled, vpc_flow_logs_enabled, ...), so that findings line up with an existing Prowler
scan; the others cover what Prowler leaves unmapped for this stack (EKS endpoint and logging, IMDS on node
templates, Karpenter node classes, pod identity trust, the artifact bucket's put policy). The controls each
evidences: compliance/catalogs/mappings/ (`*_aws.yaml`), as Prowler's frameworks list its checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from compliance.checks.common import (
    as_list,
    customer_keys_verdict,
    denies_insecure_transport,
    residency_verdict,
    statements,
)
from compliance.model import (
    Evidence,
    Graph,
    Resource,
    Status,
    Verdict,
    check,
    exception,
    not_applicable,
    not_assessed,
    verdict,
)

KEY = "aws:kms/key:Key"
BUCKET = "aws:s3/bucket:Bucket"
REPLICATION_CONFIG = "aws:s3/bucketReplicationConfig:BucketReplicationConfig"
ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
LOGGING = "aws:s3/bucketLogging:BucketLogging"
TRAIL = "aws:cloudtrail/trail:Trail"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
VPC = "aws:ec2/vpc:Vpc"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SUBNET = "aws:ec2/subnet:Subnet"
ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
CLUSTER = "aws:eks/cluster:Cluster"
ADDON = "aws:eks/addon:Addon"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
QUEUE = "aws:sqs/queue:Queue"
QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy"
PROVIDER = "pulumi:providers:aws"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
EBS_DEFAULT = "aws:ebs/encryptionByDefault:EncryptionByDefault"
EBS_DEFAULT_KEY = "aws:ebs/defaultKmsKey:DefaultKmsKey"
REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
CACHE_SUBNET_GROUP = "aws:elasticache/subnetGroup:SubnetGroup"

# What AWS does when a field is left unset (the API reference of each service): reading "unset" as "off" or "bad"
# where AWS reads it as a default would fail compliant resources.
KMS_ROTATION_DEFAULT_DAYS = 365  # KMS EnableKeyRotation: RotationPeriodInDays defaults to 365
KMS_DELETION_DEFAULT_DAYS = 30  # KMS ScheduleKeyDeletion / CreateKey: PendingWindowInDays defaults to 30
# Karpenter v1 EC2NodeClass defaults: metadataOptions httpTokens required, httpPutResponseHopLimit 1.
KARPENTER_IMDS_DEFAULTS = {"httpTokens": "required", "httpPutResponseHopLimit": 1}
# Automatic rotation exists only for symmetric keys whose material KMS generated in its own store (AWS KMS
# Developer Guide, "Rotating AWS KMS keys": not for asymmetric, HMAC, imported-material or custom-key-store keys);
# Prowler's kms_cmk_rotation_enabled skips the others too.
ROTATABLE_SPEC = "SYMMETRIC_DEFAULT"
ROTATABLE_ORIGIN = "AWS_KMS"
# ScheduleKeyDeletion's PendingWindowInDays is 7 to 30: a key that is not pending deletion will wait at least 7 days.
KMS_DELETION_MIN_DAYS = 7
WILDCARD_ALLOWED = {"AllowRegionalReadActions", "AllowPricingReadActions", "AllowUnscopedInstanceProfileListAction"}
ADMIN_POLICIES = {"AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "AmazonS3FullAccess"}
# Prowler's elasticache_redis_cluster_backup_enabled passes a retention above its audit_config
# minimum_snapshot_retention_period, 7 days by default (prowler/providers/aws/services/elasticache).
SNAPSHOT_RETENTION_MIN_DAYS = 7


def unseen_in_plan(plan: Mapping[str, Any]) -> dict[str, str]:
    """What an AWS plan cannot show, by resource type: those checks are NOT_ASSESSED with this reason, never PASS."""
    encryption = plan.get("encryption") or {}
    unseen = {}
    key = encryption.get("kms_key")
    if key and key != "create":
        unseen[KEY] = (
            f"the customer key {key} (encryption.kms_key) is not in the plan: byoc uses it but does not create it, "
            "so who manages it (the customer or AWS), its rotation, key policy and deletion window are not declared "
            "here; "
            "`byoc compliance report --live` reads them from the account"
        )
    if not encryption.get("ebs_default"):
        unseen[EBS_DEFAULT] = (
            "encryption.ebs_default is off: the region's EBS encryption by default is an account setting byoc does "
            "not manage, so the plan cannot show it; `byoc compliance report --live` reads it (or set "
            "encryption.ebs_default: true)"
        )
    return unseen


def _one(graph: Graph, type_token: str, bucket: Resource) -> Resource | None:
    found = graph.related(type_token, "bucket", bucket.id) or graph.related(type_token, "bucket", bucket.name)
    return found[0] if found else None


def _is_log_target(graph: Graph, bucket: Resource) -> bool:
    """S3 server access logs can only be delivered to an SSE-S3 bucket; such a bucket is judged by that rule."""
    return bool(
        graph.related(LOGGING, "targetBucket", bucket.id) or graph.related(LOGGING, "targetBucket", bucket.name)
    )


# -- KMS --------------------------------------------------------------------------------------------------------
def _unread_policy(key: Resource) -> Verdict | None:
    """A key policy that was not read is no evidence of a good one: ERROR with the API's answer, else NOT_ASSESSED."""
    if key.get("policyError"):
        return Verdict(Status.ERROR, (), key.get("policyError"))
    if key.get("policy") is None:
        return not_assessed("the key policy is not known (not declared, not read)", "policy", None)
    return None


@check(
    id="kms_cmk_rotation_enabled",
    title="Customer-managed keys rotate automatically, at least yearly",
    severity="high",
    resource_types=[KEY],
    remediation="Turn on automatic rotation (enable_key_rotation) with a period of 365 days or less.",
    risk="A key that never rotates exposes more data if its material is ever compromised.",
    cloud="aws",
)
def kms_cmk_rotation_enabled(resource: Resource, graph: Graph) -> Verdict:
    spec = resource.get("keySpec") or resource.get("customerMasterKeySpec") or ROTATABLE_SPEC
    origin = resource.get("origin") or ROTATABLE_ORIGIN
    if spec != ROTATABLE_SPEC or origin != ROTATABLE_ORIGIN:
        kind = f"a {spec} key" if spec != ROTATABLE_SPEC else f"a key of origin {origin}"
        return not_applicable(
            f"AWS KMS cannot rotate {kind} automatically (only symmetric keys with KMS-generated material): "
            "rotate it by hand, with a new key and an alias switch"
        )
    if resource.get("rotationError"):
        return Verdict(Status.ERROR, (), resource.get("rotationError"))
    enabled = resource.get("enableKeyRotation")
    period = resource.get("rotationPeriodInDays")
    days = KMS_ROTATION_DEFAULT_DAYS if period is None else period  # unset: AWS rotates yearly
    ok = enabled is True and days <= KMS_ROTATION_DEFAULT_DAYS
    return verdict(ok, "enableKeyRotation/rotationPeriodInDays", {"enabled": enabled, "period_days": days})


@check(
    id="kms_key_deletion_window",
    title="Keys wait at least 7 days before deletion",
    severity="medium",
    resource_types=[KEY],
    remediation="Set deletion_window_in_days to 30 so a mistaken deletion can be cancelled.",
    risk="A key deleted at once makes every object encrypted under it unreadable for good.",
    cloud="aws",
)
def kms_key_deletion_window(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("deletionWindowInDays")
    if resource.source == "live":
        state = resource.get("keyState")
        if state == "PendingDeletion":
            when = resource.get("deletionDate")
            return verdict(
                False,
                "keyState/deletionDate",
                {"state": state, "deletion_date": when},
                f"the key is scheduled for deletion on {when}: data under it becomes unreadable then",
            )
        if state is None:
            return not_assessed("the key's state could not be read", "keyState", state)
        # the window is chosen when deletion is scheduled, and KMS allows no less than 7 days
        return verdict(
            True, "keyState", state, f"not pending deletion; KMS waits at least {KMS_DELETION_MIN_DAYS} days"
        )
    days = KMS_DELETION_DEFAULT_DAYS if value is None else value  # unset: AWS waits 30 days
    return verdict(days >= 7, "deletionWindowInDays", days)


@check(
    id="kms_key_policy_no_public_access",
    title="Key policies grant no one outside the account",
    severity="critical",
    resource_types=[KEY],
    remediation="Remove statements whose principal is * (or another account) from the key policy.",
    risk="A public key policy lets anyone decrypt data encrypted under the key.",
    cloud="aws",
)
def kms_key_policy_no_public_access(resource: Resource, graph: Graph) -> Verdict:
    if unread := _unread_policy(resource):
        return unread
    public = [
        s.get("Sid", "?")
        for s in statements(resource.get("policy"))
        if s.get("Effect") == "Allow" and s.get("Principal") in ("*", {"AWS": "*"}) and not s.get("Condition")
    ]
    return verdict(not public, "policy.Statement[Principal=*]", public)


@check(
    id="kms_key_policy_service_conditions",
    title="Key policies let AWS services use a key only with conditions",
    severity="high",
    resource_types=[KEY],
    remediation="Add aws:SourceArn / aws:SourceAccount or encryption-context conditions to service statements.",
    risk="A service principal without conditions can be used by other accounts (confused deputy).",
    cloud="aws",
)
def kms_key_policy_service_conditions(resource: Resource, graph: Graph) -> Verdict:
    if unread := _unread_policy(resource):
        return unread
    unconditioned = [
        s.get("Sid", "?")
        for s in statements(resource.get("policy"))
        if s.get("Effect") == "Allow" and "Service" in (s.get("Principal") or {}) and not s.get("Condition")
    ]
    return verdict(not unconditioned, "policy.Statement[Principal.Service, no Condition]", unconditioned)


# -- S3 ---------------------------------------------------------------------------------------------------------
@check(
    id="s3_bucket_default_encryption",
    title="Buckets encrypt objects by default",
    severity="high",
    resource_types=[BUCKET],
    remediation="Add a server-side encryption configuration (aws:kms with a customer key).",
    risk="Objects written without encryption are readable by anyone who gets the disks or a copy.",
    cloud="aws",
)
def s3_bucket_default_encryption(resource: Resource, graph: Graph) -> Verdict:
    config = _one(graph, ENCRYPTION, resource)
    algorithm = config.get("rules.0.applyServerSideEncryptionByDefault.sseAlgorithm") if config else None
    return verdict(algorithm in ("aws:kms", "aws:kms:dsse", "AES256"), "rules[0].sseAlgorithm", algorithm)


@check(
    id="s3_bucket_kms_encryption",
    title="Data buckets encrypt with a customer-managed KMS key",
    severity="high",
    resource_types=[BUCKET],
    remediation="Use sse_algorithm aws:kms with the deployment's key, and a bucket key.",
    risk="SSE-S3 keys are AWS's: you cannot revoke them, audit their use, or crypto-shred the data.",
    cloud="aws",
)
def s3_bucket_kms_encryption(resource: Resource, graph: Graph) -> Verdict:
    if _is_log_target(graph, resource):
        return not_applicable("an S3 server access log target can only use SSE-S3 (AWS requirement)")
    config = _one(graph, ENCRYPTION, resource)
    key = config.get("rules.0.applyServerSideEncryptionByDefault.kmsMasterKeyId") if config else None
    manager = config.get("rules.0.applyServerSideEncryptionByDefault.kmsKeyManager") if config else None
    return customer_keys_verdict(graph, [key], "rules[0].kmsMasterKeyId", key, manager=manager)


@check(
    id="s3_bucket_versioning_enabled",
    title="Buckets keep object versions",
    severity="medium",
    resource_types=[BUCKET],
    remediation="Enable versioning on the bucket.",
    risk="Without versions an overwrite or delete cannot be undone.",
    cloud="aws",
)
def s3_bucket_versioning_enabled(resource: Resource, graph: Graph) -> Verdict:
    config = _one(graph, VERSIONING, resource)
    status = config.get("versioningConfiguration.status") if config else None
    return verdict(status == "Enabled", "versioningConfiguration.status", status)


@check(
    id="s3_bucket_level_public_access_block",
    title="Buckets block all public access",
    severity="critical",
    resource_types=[BUCKET],
    remediation="Turn on all four Block Public Access settings for the bucket.",
    risk="A bucket policy or ACL could make model weights or logs public.",
    cloud="aws",
)
def s3_bucket_level_public_access_block(resource: Resource, graph: Graph) -> Verdict:
    config = _one(graph, PUBLIC_ACCESS, resource)
    settings = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    values = {s: config.get(s) if config else None for s in settings}
    return verdict(all(v is True for v in values.values()), "publicAccessBlock", values)


@check(
    id="s3_bucket_acl_disabled",
    title="Bucket ACLs are disabled (BucketOwnerEnforced)",
    severity="medium",
    resource_types=[BUCKET],
    remediation="Set object ownership to BucketOwnerEnforced.",
    risk="ACLs grant access outside the bucket policy and are easy to get wrong.",
    cloud="aws",
)
def s3_bucket_acl_disabled(resource: Resource, graph: Graph) -> Verdict:
    config = _one(graph, OWNERSHIP, resource)
    value = config.get("rule.objectOwnership") if config else None
    return verdict(value == "BucketOwnerEnforced", "rule.objectOwnership", value)


@check(
    id="s3_bucket_secure_transport_policy",
    title="Buckets refuse requests without TLS",
    severity="high",
    resource_types=[BUCKET],
    remediation="Add a bucket policy statement denying s3:* when aws:SecureTransport is false.",
    risk="Data could be read or changed in transit over plain HTTP.",
    cloud="aws",
)
def s3_bucket_secure_transport_policy(resource: Resource, graph: Graph) -> Verdict:
    config = _one(graph, BUCKET_POLICY, resource)
    ok = bool(config) and denies_insecure_transport(config.get("policy") if config else None)
    return verdict(ok, "policy.Deny[aws:SecureTransport=false]", ok)


@check(
    id="s3_bucket_deny_unencrypted_puts",
    title="The artifact bucket refuses objects not encrypted with KMS",
    severity="medium",
    resource_types=[BUCKET],
    remediation="Deny s3:PutObject unless s3:x-amz-server-side-encryption is aws:kms.",
    risk="A client could store model data under a weaker or foreign key.",
    cloud="aws",
)
def s3_bucket_deny_unencrypted_puts(resource: Resource, graph: Graph) -> Verdict:
    role = (resource.get("tags") or {}).get("byoc:bucket")
    if role != "artifacts":
        return not_applicable(f"only the artifact bucket takes writes from workloads (this is {role or 'another'})")
    config = _one(graph, BUCKET_POLICY, resource)
    denied = [
        s.get("Sid")
        for s in statements(config.get("policy") if config else None)
        if s.get("Effect") == "Deny"
        and s.get("Condition", {}).get("StringNotEquals", {}).get("s3:x-amz-server-side-encryption") == "aws:kms"
    ]
    return verdict(bool(denied), "policy.Deny[s3:x-amz-server-side-encryption!=aws:kms]", denied)


@check(
    id="s3_bucket_server_access_logging_enabled",
    title="Bucket access is logged to the log bucket",
    severity="medium",
    resource_types=[BUCKET],
    remediation="Enable server access logging to the deployment's access-log bucket.",
    risk="Without access logs nobody can tell who read or wrote model data.",
    cloud="aws",
)
def s3_bucket_server_access_logging_enabled(resource: Resource, graph: Graph) -> Verdict:
    if _is_log_target(graph, resource):
        return not_applicable("the access-log bucket itself (logging it into itself would loop)")
    config = _one(graph, LOGGING, resource)
    target = config.get("targetBucket") if config else None
    return verdict(bool(target), "logging.targetBucket", target)


# Properties Prowler maps to these frameworks that byoc declines by design: reported as exceptions with the reason.
@check(
    id="s3_bucket_object_lock",
    title="Buckets lock objects against deletion (Object Lock)",
    severity="low",
    resource_types=[BUCKET],
    remediation="None by design: versioning (s3_bucket_versioning_enabled) keeps overwritten and deleted objects.",
    risk="Without a WORM lock, an administrator can delete object versions.",
    cloud="aws",
)
def s3_bucket_object_lock(resource: Resource, graph: Graph) -> Verdict:
    enabled = resource.get("objectLockEnabled")
    if enabled is True or enabled == "Enabled":
        return verdict(True, "objectLockEnabled", enabled)
    return exception(
        "byoc declines Object Lock by design: a locked object cannot be deleted before its retention ends, so "
        "`byoc destroy` and a customer's request to erase model data or logs could not be honoured; recovery comes "
        "from versioning and the KMS key's 30-day deletion window",
        "objectLockEnabled",
        enabled,
    )


@check(
    id="s3_bucket_cross_region_replication",
    title="Buckets replicate to another region",
    severity="low",
    resource_types=[BUCKET],
    remediation="None by design: keep data in the spec's region; recover from versions in the same region.",
    risk="A regional outage makes the bucket's data unavailable until the region recovers.",
    cloud="aws",
)
def s3_bucket_cross_region_replication(resource: Resource, graph: Graph) -> Verdict:
    names = {resource.get("bucket"), resource.id, resource.name} - {None, ""}
    configs = [c for c in graph.by_type(REPLICATION_CONFIG) if c.get("bucket") in names]
    if configs:
        # a multi-region deployment's primary copies the model into the other regions' buckets (docs/multi-region.md):
        # each destination is judged by where its replica key lives, which must be a region of the deployment
        rules = [rule for config in configs for rule in (config.get("rules") or [])]
        targets = [
            ((rule.get("destination") or {}).get("encryptionConfiguration") or {}).get("replicaKmsKeyId") or ""
            for rule in rules
        ]
        regions = [arn.split(":")[3] if arn.count(":") >= 5 else "" for arn in targets]
        allowed = set(graph.regions or (graph.region,))
        inside = bool(regions) and all(region in allowed for region in regions)
        return Verdict(
            Status.PASS if inside else Status.FAIL,
            (
                Evidence(
                    "replicationConfiguration/rules",
                    [{"id": r.get("id"), "to": t} for r, t in zip(rules, targets, strict=True)],
                ),
            ),
            "replicates to "
            + ", ".join(region or "an unknown region" for region in regions)
            + (
                ", regions of the deployment (inside its residency set)"
                if inside
                else f": outside the deployment's regions {', '.join(sorted(allowed))}"
            ),
        )
    rules = resource.get("replicationRules")
    return exception(
        "byoc declines cross-region replication by design (data residency): a deployment's model data, adapters "
        "and logs stay in the region(s) the spec chose (data_residency_region; a multi-region deployment copies "
        "only the built model, from its primary, into its other regions); versioning gives recovery in-region",
        "replicationRules",
        rules,
    )


# -- EBS account default ----------------------------------------------------------------------------------------
@check(
    id="ec2_ebs_default_encryption",
    title="New EBS volumes in the region are encrypted by default with a customer key",
    severity="high",
    resource_types=[EBS_DEFAULT],
    remediation="Set encryption.ebs_default: true in the spec (EBS encryption by default with the platform key).",
    risk="A volume created outside byoc's launch templates (a snapshot copy, a manual volume) would be unencrypted.",
    cloud="aws",
)
def ec2_ebs_default_encryption(resource: Resource, graph: Graph) -> Verdict:
    enabled = resource.get("enabled")
    if enabled is True and resource.get("kmsKeyError"):
        return Verdict(Status.ERROR, (Evidence("ebsEncryptionByDefault", enabled),), resource.get("kmsKeyError"))
    keys = graph.by_type(EBS_DEFAULT_KEY)
    key = keys[0].get("keyArn") if keys else None
    value = {"enabled": enabled, "kms_key": key}
    return customer_keys_verdict(graph, [key], "ebsEncryptionByDefault/defaultKmsKey", value, holds=enabled is True)


# -- CloudTrail -------------------------------------------------------------------------------------------------
@check(
    id="cloudtrail_multi_region_enabled",
    title="The trail records every region",
    severity="high",
    resource_types=[TRAIL],
    remediation="Set is_multi_region_trail on the trail.",
    risk="Activity in other regions (e.g. someone starting resources there) goes unrecorded.",
    cloud="aws",
)
def cloudtrail_multi_region_enabled(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("isMultiRegionTrail")
    return verdict(value is True, "isMultiRegionTrail", value)


@check(
    id="cloudtrail_log_file_validation_enabled",
    title="Trail log files are signed (validation on)",
    severity="medium",
    resource_types=[TRAIL],
    remediation="Enable log file validation on the trail.",
    risk="Altered or deleted log files could not be detected.",
    cloud="aws",
)
def cloudtrail_log_file_validation_enabled(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("enableLogFileValidation")
    return verdict(value is True, "enableLogFileValidation", value)


@check(
    id="cloudtrail_kms_encryption_enabled",
    title="Trail logs are encrypted with a customer key",
    severity="medium",
    resource_types=[TRAIL],
    remediation="Set kms_key_id on the trail to the deployment's key.",
    risk="Audit logs reveal the account's activity; they deserve the same key control as the data.",
    cloud="aws",
)
def cloudtrail_kms_encryption_enabled(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("kmsKeyId")
    return customer_keys_verdict(graph, [key], "kmsKeyId", key)


@check(
    id="cloudtrail_cloudwatch_logging_enabled",
    title="The trail delivers to CloudWatch Logs for monitoring",
    severity="medium",
    resource_types=[TRAIL],
    remediation="Set cloud_watch_logs_group_arn and a delivery role on the trail.",
    risk="Events can be alerted on only once they reach a log service.",
    cloud="aws",
)
def cloudtrail_cloudwatch_logging_enabled(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("cloudWatchLogsGroupArn")
    return verdict(bool(value), "cloudWatchLogsGroupArn", value)


@check(
    id="cloudtrail_s3_dataevents_enabled",
    title="The trail records object-level access to the artifact bucket",
    severity="medium",
    resource_types=[TRAIL],
    remediation="Add an advanced event selector for Data events on AWS::S3::Object under the artifact bucket "
    "(reads and writes).",
    risk="Management events alone do not show who read or wrote model files.",
    cloud="aws",
)
def cloudtrail_s3_dataevents_enabled(resource: Resource, graph: Graph) -> Verdict:
    artifacts = [b for b in graph.by_type(BUCKET) if (b.get("tags") or {}).get("byoc:bucket") == "artifacts"]
    # an object under the artifact bucket; without the bucket in the graph, any bucket's objects are accepted
    where = f"arn:aws:s3:::{artifacts[0].get('bucket') or artifacts[0].name}/" if artifacts else None
    events = [
        {
            "eventCategory": "Data",
            "eventSource": "s3.amazonaws.com",
            "resources.type": "AWS::S3::Object",
            "readOnly": ro,
        }
        | ({"resources.ARN": f"{where}models/checkpoint.safetensors"} if where else {})
        for ro in ("true", "false")
    ]
    lenient = frozenset() if where else frozenset({"resources.ARN"})
    advanced = as_list(resource.get("advancedEventSelectors"))
    classic = as_list(resource.get("eventSelectors"))
    if advanced:
        recorded = [e for e in events if any(_advanced_records(s, e, lenient) for s in advanced)]
    else:
        recorded = [e for e in events if any(_classic_records_object(s, e) for s in classic)]
    missing = [f"{'reads' if e['readOnly'] == 'true' else 'writes'}" for e in events if e not in recorded]
    value = {"artifact_objects": f"{where}*" if where else "any bucket", "not_recorded": missing}
    reason = f"object-level {' and '.join(missing)} are not recorded" if missing else ""
    return verdict(not missing, "eventSelectors[Data, AWS::S3::Object]", value, reason)


def _classic_records_object(selector: Mapping[str, Any], event: Mapping[str, str]) -> bool:
    """A classic selector's DataResources of type AWS::S3::Object: a value is an ARN prefix (`arn:aws:s3` for all)."""
    kind = selector.get("readWriteType") or "All"
    if kind != "All" and (kind == "ReadOnly") != (event["readOnly"] == "true"):
        return False
    for data in as_list(selector.get("dataResources")):
        if (data.get("type") or data.get("Type")) != "AWS::S3::Object":
            continue
        values = [str(v) for v in as_list(data.get("values") or data.get("Values"))]
        arn = event.get("resources.ARN")
        if any(arn is None or arn.startswith(v) for v in values):
            return True
    return False


@check(
    id="cloudtrail_global_service_events_enabled",
    title="The trail records global services (IAM, STS)",
    severity="medium",
    resource_types=[TRAIL],
    remediation="Set include_global_service_events on the trail.",
    risk="Changes to roles and policies would not be recorded.",
    cloud="aws",
)
def cloudtrail_global_service_events_enabled(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("includeGlobalServiceEvents")
    value = True if value is None else value  # unset: CloudTrail includes global service events
    return verdict(value is True, "includeGlobalServiceEvents", value)


# Advanced event selector operators (CloudTrail AdvancedFieldSelector), by the camelCase names Pulumi and the
# collector give them. Positive operators match when any value matches; negative ones when no value does; every
# operator of a field, and every field of a selector, must hold; an event is recorded when any selector matches.
SELECTOR_OPERATORS = {
    "equals": lambda value, given: value in given,
    "startsWiths": lambda value, given: any(value.startswith(g) for g in given),
    "endsWiths": lambda value, given: any(value.endswith(g) for g in given),
    "notEquals": lambda value, given: value not in given,
    "notStartsWiths": lambda value, given: not any(value.startswith(g) for g in given),
    "notEndsWiths": lambda value, given: not any(value.endswith(g) for g in given),
}
# The management events the audit controls rely on: every use of the keys (KMS Decrypt/GenerateDataKey are
# read-only management events: who used the model key is the record HIPAA 164.312(b) asks for), and reads and
# writes on every service byoc's stack runs on.
AUDITED_SOURCES = (
    "kms.amazonaws.com",
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    "s3.amazonaws.com",
    "ec2.amazonaws.com",
    "eks.amazonaws.com",
    "cloudtrail.amazonaws.com",
    "logs.amazonaws.com",
    "sqs.amazonaws.com",
)
AUDITED_EVENTS = tuple(
    {"eventCategory": "Management", "eventSource": source, "readOnly": read_only}
    for source in AUDITED_SOURCES
    for read_only in ("true", "false")
)


def _advanced_records(
    selector: Mapping[str, Any], event: Mapping[str, str], lenient: frozenset[str] = frozenset()
) -> bool:
    """Whether one advanced selector records `event`; fields in `lenient` are not judged (not known here)."""
    for field in as_list(selector.get("fieldSelectors")):
        name = field.get("field")
        operators = {k: [str(v) for v in as_list(field.get(k))] for k in SELECTOR_OPERATORS if field.get(k)}
        if name in lenient:
            continue
        if name not in event:
            if operators:
                return False  # a field management events do not carry (or one byoc cannot judge): not counted
            continue
        if not all(SELECTOR_OPERATORS[k](event[name], given) for k, given in operators.items()):
            return False
    return True


def _classic_records(selector: Mapping[str, Any], event: Mapping[str, str]) -> bool:
    if selector.get("includeManagementEvents") is False:
        return False
    kind = selector.get("readWriteType") or "All"  # unset: CloudTrail records reads and writes
    if kind != "All" and (kind == "ReadOnly") != (event["readOnly"] == "true"):
        return False
    return event["eventSource"] not in as_list(selector.get("excludeManagementEventSources"))


def _unrecorded_management_events(resource: Resource) -> tuple[list[str], str]:
    """The audited management events (AUDITED_EVENTS) the trail's selectors leave out, and which form said so.

    Advanced selectors (every operator on eventCategory, eventSource and readOnly) take precedence, as in CloudTrail;
    else classic selectors (IncludeManagementEvents, ReadWriteType, ExcludeManagementEventSources); neither:
    CloudTrail's default, which records every management event.
    """
    advanced = as_list(resource.get("advancedEventSelectors"))
    classic = as_list(resource.get("eventSelectors"))
    if advanced:
        form = "advanced selectors"
        recorded = [e for e in AUDITED_EVENTS if any(_advanced_records(s, e) for s in advanced)]
    elif classic:
        form = "classic selectors"
        recorded = [e for e in AUDITED_EVENTS if any(_classic_records(s, e) for s in classic)]
    else:
        return [], "no selectors: CloudTrail's default records all management events"
    missing = [
        f"{e['eventSource']} {'read' if e['readOnly'] == 'true' else 'write'}"
        for e in AUDITED_EVENTS
        if e not in recorded
    ]
    return missing, form


@check(
    id="cloudtrail_multi_region_enabled_logging_management_events",
    title="A multi-region trail is logging every management event (KMS use included)",
    severity="high",
    resource_types=[TRAIL],
    remediation="Keep the trail multi-region and logging, with a management-events selector (read and write) that "
    "excludes no event source (kms.amazonaws.com least of all).",
    risk="Control-plane changes (keys, roles, buckets) could happen without a record.",
    cloud="aws",
)
def cloudtrail_multi_region_management_events(resource: Resource, graph: Graph) -> Verdict:
    missing, form = _unrecorded_management_events(resource)
    logging = resource.get("isLogging", resource.get("enableLogging"))
    logging = True if logging is None else logging  # unset: a new trail starts logging
    multi = resource.get("isMultiRegionTrail") is True
    ok = not missing and multi and logging is True
    value = {"multi_region": multi, "logging": logging, "selectors": form, "not_recorded": missing}
    reason = f"the {form} leave out management events: {', '.join(missing)}" if missing else ""
    return verdict(ok, "isMultiRegionTrail/isLogging/eventSelectors", value, reason)


# -- CloudWatch Logs --------------------------------------------------------------------------------------------
@check(
    id="cloudwatch_log_group_kms_encryption_enabled",
    title="Log groups are encrypted with a customer key",
    severity="medium",
    resource_types=[LOG_GROUP],
    remediation="Set kms_key_id on the log group.",
    risk="Logs can hold identifiers and network metadata; they need key control too.",
    cloud="aws",
)
def cloudwatch_log_group_kms_encryption_enabled(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("kmsKeyId")
    return customer_keys_verdict(graph, [key], "kmsKeyId", key)


@check(
    id="cloudwatch_log_group_retention_policy_specific_days_enabled",
    title="Log groups keep logs for at least a year",
    severity="low",
    resource_types=[LOG_GROUP],
    remediation="Set retention_in_days to 365 or more.",
    risk="Logs expiring early cannot support an investigation or an audit period.",
    cloud="aws",
)
def cloudwatch_log_group_retention(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("retentionInDays")
    if not value:  # unset (or 0 in Pulumi): CloudWatch Logs keeps the events forever
        return verdict(True, "retentionInDays", value, "unset: logs never expire")
    return verdict(value >= 365, "retentionInDays", value)


# -- network ----------------------------------------------------------------------------------------------------
@check(
    id="vpc_flow_logs_enabled",
    title="VPC flow logs record all traffic",
    severity="medium",
    resource_types=[VPC],
    remediation="Add a flow log (traffic type ALL) for the VPC.",
    risk="Without flow logs, network-level investigation is impossible.",
    cloud="aws",
)
def vpc_flow_logs_enabled(resource: Resource, graph: Graph) -> Verdict:
    logs = graph.related(FLOW_LOG, "vpcId", resource.id)
    kinds = [log.get("trafficType") for log in logs]
    return verdict("ALL" in kinds, "flowLog.trafficType", kinds)


@check(
    id="ec2_securitygroup_default_restrict_traffic",
    title="The VPC's default security group allows nothing",
    severity="medium",
    resource_types=[DEFAULT_SG],
    remediation="Remove every rule from the default security group.",
    risk="Resources launched without a group would get the default's rules.",
    cloud="aws",
)
def ec2_securitygroup_default_restrict_traffic(resource: Resource, graph: Graph) -> Verdict:
    rules = as_list(resource.get("ingress")) + as_list(resource.get("egress"))
    return verdict(not rules, "ingress+egress", rules)


@check(
    id="ec2_securitygroup_no_internet_ingress",
    title="Security groups admit no traffic from the internet",
    severity="high",
    resource_types=[SECURITY_GROUP, DEFAULT_SG],
    remediation="Limit ingress to the VPC CIDR or to other security groups.",
    risk="An open port is reachable by anyone.",
    cloud="aws",
)
def ec2_securitygroup_no_internet_ingress(resource: Resource, graph: Graph) -> Verdict:
    open_rules = [
        rule
        for rule in as_list(resource.get("ingress"))
        if "0.0.0.0/0" in as_list(rule.get("cidrBlocks")) or "::/0" in as_list(rule.get("ipv6CidrBlocks"))
    ]
    return verdict(not open_rules, "ingress[cidrBlocks 0.0.0.0/0 or ::/0]", open_rules)


@check(
    id="vpc_subnet_no_public_ip_by_default",
    title="Subnets do not give instances public addresses",
    severity="medium",
    resource_types=[SUBNET],
    remediation="Set map_public_ip_on_launch to false.",
    risk="Nodes with public addresses are reachable from the internet.",
    cloud="aws",
)
def vpc_subnet_no_public_ip_by_default(resource: Resource, graph: Graph) -> Verdict:
    value = bool(resource.get("mapPublicIpOnLaunch", False))
    return verdict(not value, "mapPublicIpOnLaunch", value)


@check(
    id="vpc_endpoints_for_aws_apis",
    title="AWS APIs are reached through private VPC endpoints",
    severity="medium",
    resource_types=[VPC],
    remediation="Add an S3 gateway endpoint and interface endpoints for ECR, STS, KMS, Logs and EC2.",
    risk="Model artifacts and credentials would cross the NAT and the internet.",
    cloud="aws",
)
def vpc_endpoints_for_aws_apis(resource: Resource, graph: Graph) -> Verdict:
    services = sorted(
        str(e.get("serviceName", "")).split(".", 3)[-1] for e in graph.related(ENDPOINT, "vpcId", resource.id)
    )
    needed = {"s3", "ecr.api", "ecr.dkr", "sts", "kms"}
    return verdict(needed <= set(services), "vpcEndpoints.serviceName", services)


# -- EKS --------------------------------------------------------------------------------------------------------
@check(
    id="eks_cluster_kms_cmk_encryption_in_secrets_enabled",
    title="Kubernetes secrets are envelope-encrypted with a customer key",
    severity="high",
    resource_types=[CLUSTER],
    remediation="Add an encryption config for secrets with the deployment's KMS key.",
    risk="Secrets in etcd would rely on AWS-managed encryption only.",
    cloud="aws",
)
def eks_cluster_secrets_encryption(resource: Resource, graph: Graph) -> Verdict:
    config = resource.get("encryptionConfig") or {}
    configs = as_list(config)
    keys = [(c.get("provider") or {}).get("keyArn") for c in configs if "secrets" in as_list(c.get("resources"))]
    return customer_keys_verdict(graph, keys, "encryptionConfig", configs)


@check(
    id="eks_control_plane_logging_all_types_enabled",
    title="All control-plane log types are on",
    severity="medium",
    resource_types=[CLUSTER],
    remediation="Enable api, audit, authenticator, controllerManager and scheduler logs.",
    risk="Without the audit log, actions against the Kubernetes API leave no record.",
    cloud="aws",
)
def eks_control_plane_logging(resource: Resource, graph: Graph) -> Verdict:
    enabled = sorted(as_list(resource.get("enabledClusterLogTypes")))
    needed = {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    return verdict(needed <= set(enabled), "enabledClusterLogTypes", enabled)


@check(
    id="eks_cluster_private_endpoint_enabled",
    title="The Kubernetes API is reachable from inside the VPC",
    severity="medium",
    resource_types=[CLUSTER],
    remediation="Enable the private endpoint (endpoint_private_access).",
    risk="Nodes and operators would reach the API over the internet.",
    cloud="aws",
)
def eks_cluster_private_endpoint(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("vpcConfig.endpointPrivateAccess")
    return verdict(value is True, "vpcConfig.endpointPrivateAccess", value)


@check(
    id="eks_cluster_not_publicly_accessible",
    title="The Kubernetes API is not open to the internet",
    severity="critical",
    resource_types=[CLUSTER],
    remediation="Use network.endpoint: private, or allowlist with your CIDRs (never 0.0.0.0/0).",
    risk="Anyone on the internet can reach the API server and try credentials or exploits.",
    cloud="aws",
)
def eks_cluster_not_publicly_accessible(resource: Resource, graph: Graph) -> Verdict:
    # unset: EKS makes the endpoint public, open to 0.0.0.0/0 (CreateCluster's VpcConfigRequest defaults)
    public = resource.get("vpcConfig.endpointPublicAccess", True)
    cidrs = as_list(resource.get("vpcConfig.publicAccessCidrs")) or ["0.0.0.0/0"]
    ok = public is not True or "0.0.0.0/0" not in cidrs
    return verdict(ok, "vpcConfig.endpointPublicAccess/publicAccessCidrs", {"public": public, "cidrs": cidrs})


@check(
    id="eks_cluster_access_entries_only",
    title="Cluster access is granted through explicit access entries",
    severity="medium",
    resource_types=[CLUSTER],
    remediation="Use authentication_mode API and bootstrap_cluster_creator_admin_permissions false.",
    risk="The aws-auth ConfigMap and implicit creator admin are easy to misconfigure and hard to audit.",
    cloud="aws",
)
def eks_cluster_access_entries_only(resource: Resource, graph: Graph) -> Verdict:
    mode = resource.get("accessConfig.authenticationMode")
    # unset in a declaration: EKS grants the creator cluster admin (CreateCluster's default is true); a live
    # cluster that does not report it says nothing either way
    default = None if resource.source == "live" else True
    creator = resource.get("accessConfig.bootstrapClusterCreatorAdminPermissions", default)
    return verdict(mode == "API" and creator is not True, "accessConfig", {"mode": mode, "creator_admin": creator})


@check(
    id="eks_network_policy_enforced",
    title="The VPC CNI enforces Kubernetes network policies",
    severity="medium",
    resource_types=[ADDON],
    remediation="Configure the vpc-cni add-on with enableNetworkPolicy true.",
    risk="NetworkPolicies would be accepted but not enforced.",
    cloud="aws",
)
def eks_network_policy_enforced(resource: Resource, graph: Graph) -> Verdict:
    if resource.get("addonName") != "vpc-cni":
        return not_applicable("network policies are the CNI add-on's job")
    import json

    raw = resource.get("configurationValues") or "{}"
    value = (json.loads(raw) if isinstance(raw, str) else raw).get("enableNetworkPolicy")
    return verdict(value in ("true", True), "configurationValues.enableNetworkPolicy", value)


@check(
    id="eks_nodes_in_private_subnets",
    title="Nodes run in private subnets",
    severity="high",
    resource_types=[NODE_GROUP],
    remediation="Place node groups in the private subnets only.",
    risk="Nodes in public subnets can be exposed directly to the internet.",
    cloud="aws",
)
def eks_nodes_in_private_subnets(resource: Resource, graph: Graph) -> Verdict:
    subnets = {s.id: s for s in graph.by_type(SUBNET)}
    used = as_list(resource.get("subnetIds"))
    public = [s for s in used if s in subnets and subnets[s].get("mapPublicIpOnLaunch")]
    public += [s for s in used if s in subnets and "kubernetes.io/role/elb" in (subnets[s].get("tags") or {})]
    return verdict(bool(used) and not public, "subnetIds", used)


# -- instance metadata and volumes ------------------------------------------------------------------------------
@check(
    id="ec2_launch_template_imdsv2_required",
    title="Node launch templates require IMDSv2 with a hop limit of 1",
    severity="high",
    resource_types=[LAUNCH_TEMPLATE],
    remediation="Set metadata_options http_tokens required and http_put_response_hop_limit 1.",
    risk="IMDSv1 and a higher hop limit let pods steal node credentials (SSRF).",
    cloud="aws",
)
def ec2_launch_template_imdsv2(resource: Resource, graph: Graph) -> Verdict:
    tokens = resource.get("metadataOptions.httpTokens")
    hops = resource.get("metadataOptions.httpPutResponseHopLimit")
    return verdict(tokens == "required" and hops == 1, "metadataOptions", {"httpTokens": tokens, "hopLimit": hops})


@check(
    id="ec2_launch_template_ebs_encrypted",
    title="Node volumes are encrypted with a customer key",
    severity="high",
    resource_types=[LAUNCH_TEMPLATE],
    remediation="Set encrypted and kms_key_id on every block device mapping.",
    risk="Model weights and scratch data on node disks would be unencrypted or under AWS keys.",
    cloud="aws",
)
def ec2_launch_template_ebs_encrypted(resource: Resource, graph: Graph) -> Verdict:
    volumes = [m.get("ebs", {}) for m in as_list(resource.get("blockDeviceMappings"))]
    encrypted = all(v.get("encrypted") in ("true", True) for v in volumes)
    keys = [v.get("kmsKeyId") for v in volumes]
    return customer_keys_verdict(graph, keys, "blockDeviceMappings[].ebs", volumes, holds=encrypted)


@check(
    id="karpenter_nodeclass_imdsv2_required",
    title="GPU node classes require IMDSv2 with a hop limit of 1",
    severity="high",
    resource_types=[NODE_CLASS],
    remediation="Set metadataOptions httpTokens required and httpPutResponseHopLimit 1 on the EC2NodeClass.",
    risk="Pods on GPU nodes could read node credentials.",
    cloud="aws",
)
def karpenter_nodeclass_imdsv2(resource: Resource, graph: Graph) -> Verdict:
    # unset: Karpenter's EC2NodeClass defaults are already IMDSv2 with a hop limit of 1
    tokens = resource.get("spec.metadataOptions.httpTokens", KARPENTER_IMDS_DEFAULTS["httpTokens"])
    hops = resource.get(
        "spec.metadataOptions.httpPutResponseHopLimit", KARPENTER_IMDS_DEFAULTS["httpPutResponseHopLimit"]
    )
    return verdict(tokens == "required" and hops == 1, "spec.metadataOptions", {"httpTokens": tokens, "hopLimit": hops})


@check(
    id="karpenter_nodeclass_ebs_encrypted",
    title="GPU node volumes are encrypted with a customer key",
    severity="high",
    resource_types=[NODE_CLASS],
    remediation="Set encrypted true and kmsKeyID on the EC2NodeClass block device mappings.",
    risk="Model weights on GPU nodes would sit on disks without customer key control.",
    cloud="aws",
)
def karpenter_nodeclass_ebs_encrypted(resource: Resource, graph: Graph) -> Verdict:
    volumes = [m.get("ebs", {}) for m in as_list(resource.get("spec.blockDeviceMappings"))]
    encrypted = all(v.get("encrypted") is True for v in volumes)
    keys = [v.get("kmsKeyID") for v in volumes]
    return customer_keys_verdict(graph, keys, "spec.blockDeviceMappings[].ebs", volumes, holds=encrypted)


@check(
    id="karpenter_nodepool_bounded",
    title="The GPU node pool launches only the shape's instance types, within a GPU limit",
    severity="medium",
    resource_types=[NODE_POOL],
    remediation="Restrict node.kubernetes.io/instance-type to the shape's types and set limits.nvidia.com/gpu.",
    risk="An unbounded pool can launch unapproved or runaway capacity.",
    cloud="aws",
)
def karpenter_nodepool_bounded(resource: Resource, graph: Graph) -> Verdict:
    requirements = resource.get("spec.template.spec.requirements") or []
    types = next((r.get("values") for r in requirements if r.get("key") == "node.kubernetes.io/instance-type"), None)
    limit = resource.get("spec.limits.nvidia.com/gpu") or (resource.get("spec.limits") or {}).get("nvidia.com/gpu")
    return verdict(
        bool(types) and bool(limit), "spec.requirements/limits", {"instance_types": types, "gpu_limit": limit}
    )


# -- queues -----------------------------------------------------------------------------------------------------
@check(
    id="sqs_queues_server_side_encryption_enabled",
    title="Queues are encrypted with a customer key",
    severity="medium",
    resource_types=[QUEUE],
    remediation="Set kms_master_key_id on the queue.",
    risk="Messages at rest would rely on AWS-managed keys.",
    cloud="aws",
)
def sqs_queue_encryption(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("kmsMasterKeyId")
    return customer_keys_verdict(graph, [key], "kmsMasterKeyId", key)


@check(
    id="sqs_queue_secure_transport_policy",
    title="Queues refuse requests without TLS",
    severity="medium",
    resource_types=[QUEUE],
    remediation="Add a queue policy denying sqs:* when aws:SecureTransport is false.",
    risk="Queue traffic could travel unencrypted.",
    cloud="aws",
)
def sqs_queue_secure_transport(resource: Resource, graph: Graph) -> Verdict:
    policies = graph.related(QUEUE_POLICY, "queueUrl", resource.get("url") or "") or graph.by_type(QUEUE_POLICY)
    ok = any(denies_insecure_transport(p.get("policy")) for p in policies)
    return verdict(ok, "queuePolicy.Deny[aws:SecureTransport=false]", ok)


# -- IAM --------------------------------------------------------------------------------------------------------
def _wildcard_actions(statement: dict[str, Any]) -> bool:
    """Every action (`*`), every action of a service (`s3:*`), or NotAction (everything but some)."""
    if "NotAction" in statement:
        return True
    return any(str(a) == "*" or str(a).endswith(":*") for a in as_list(statement.get("Action")))


def _wildcard_resources(statement: dict[str, Any]) -> bool:
    """Every resource: `*` anywhere in Resource, or NotResource (all but some)."""
    return "NotResource" in statement or "*" in [str(r) for r in as_list(statement.get("Resource"))]


@check(
    id="iam_inline_policy_no_administrative_privileges",
    title="No role policy allows every action, or every resource outside read-only lookups",
    severity="critical",
    resource_types=[ROLE_POLICY],
    remediation="Name actions and resources; keep '*' resources to read-only calls AWS cannot scope.",
    risk="A wildcard policy turns any compromise of the role into control of the account.",
    cloud="aws",
)
def iam_no_wildcards(resource: Resource, graph: Graph) -> Verdict:
    offending = []
    for statement in statements(resource.get("policy")):
        if statement.get("Effect") != "Allow":
            continue
        every_resource = _wildcard_resources(statement)
        if _wildcard_actions(statement) or (every_resource and statement.get("Sid") not in WILDCARD_ALLOWED):
            offending.append(statement.get("Sid") or str(statement.get("Action", statement.get("NotAction"))))
    return verdict(not offending, "Statement[Allow, * ]", offending)


@check(
    id="iam_role_no_administrator_managed_policy",
    title="No role has an administrator managed policy attached",
    severity="critical",
    resource_types=[ATTACHMENT],
    remediation="Detach AdministratorAccess-style policies; grant what the role needs.",
    risk="Full-admin roles make least privilege impossible.",
    cloud="aws",
)
def iam_no_admin_attachment(resource: Resource, graph: Graph) -> Verdict:
    policy = str(resource.get("policyArn", "")).rsplit("/", 1)[-1]
    return verdict(policy not in ADMIN_POLICIES, "policyArn", resource.get("policyArn"))


@check(
    id="iam_role_trust_confused_deputy_protection",
    title="Roles that AWS services assume are limited to this account's resources",
    severity="high",
    resource_types=[ROLE],
    remediation="Add aws:SourceAccount / aws:SourceArn conditions to service trust statements.",
    risk="Another account's use of the same service could assume the role (confused deputy).",
    cloud="aws",
)
def iam_role_trust_conditions(resource: Resource, graph: Graph) -> Verdict:
    trust = statements(resource.get("assumeRolePolicy"))
    services = [str(s.get("Principal", {}).get("Service")) for s in trust if "Service" in (s.get("Principal") or {})]
    # EC2 and the EKS control plane do not send source conditions for instance and cluster roles.
    needs = [
        s
        for s in trust
        if set(as_list((s.get("Principal") or {}).get("Service"))) - {"ec2.amazonaws.com", "eks.amazonaws.com"}
    ]
    if not needs:
        return not_applicable(f"trusted by {services or 'no service'}: no source condition exists for it")
    ok = all(s.get("Condition") for s in needs)
    return verdict(ok, "assumeRolePolicy.Condition", [s.get("Condition") for s in needs])


def _other_grants(policy: Resource, graph: Graph) -> list[str]:
    """What else grants to the role `policy` (an inline policy byoc writes) is attached to: managed policies attached
    to it and other inline policies on it. A role's permissions are the union of all of them (IAM User Guide,
    "Policy evaluation logic"), so a scope check that reads one policy alone passes a role that an attached
    AmazonS3ReadOnlyAccess has opened to every bucket. The plan names a role by id in one input and by name in
    another: either matches."""
    ref = policy.get("role")
    refs = {ref} if ref else set()
    for role in graph.by_type(ROLE):
        if ref in (role.id, role.get("name"), role.name):
            refs |= {role.id, role.get("name")}
    refs.discard(None)
    attached = [str(a.get("policyArn")) for a in graph.by_type(ATTACHMENT) if a.get("role") in refs]
    inline = [
        str(p.get("name") or p.name) for p in graph.by_type(ROLE_POLICY) if p is not policy and p.get("role") in refs
    ]
    return attached + inline


@check(
    id="iam_workload_roles_scoped_to_prefixes",
    title="Workload roles reach only their own S3 prefixes",
    severity="high",
    resource_types=[ROLE_POLICY],
    remediation="Limit s3 actions to the bucket's sources/, adapters/, artifacts/ and batch/ prefixes, and attach no "
    "other policy (managed or inline) to the role.",
    risk="A serving pod able to write, or to read outside its prefix, widens any compromise.",
    cloud="aws",
)
def iam_workload_roles_scoped(resource: Resource, graph: Graph) -> Verdict:
    name = str(resource.get("name", ""))
    # (the gateway's and the batch worker's with batch.enabled: their batch/ scope is s3_batch_storage_access_scoped's)
    if name not in ("byoc-builder", "byoc-serving", "byoc-gateway", "byoc-batch-worker"):
        return not_applicable("not a workload role policy")
    too_wide = []
    for s in statements(resource.get("policy")):
        if s.get("Effect") != "Allow":
            continue
        label = s.get("Sid") or str(s.get("Action", s.get("NotAction")))
        if _wildcard_actions(s) or _wildcard_resources(s):
            too_wide.append(label)  # `*` on `*`, a whole service, NotAction/NotResource: never a workload's scope
            continue
        if any(str(a).lower().startswith("s3:") for a in as_list(s.get("Action"))) and any(
            str(r).endswith("/*")
            and not any(p in str(r) for p in ("/sources/", "/adapters/", "/artifacts/", "/batch/"))
            # the builder's reads of the spec's own s3:// sources (stacks/aws/identities.py: model, addons, draft)
            and not re.fullmatch(r"Read(ModelSource|DraftModelSource|Addon[0-9]+Source)", str(s.get("Sid", "")))
            for r in as_list(s.get("Resource"))
        ):
            too_wide.append(label)
    too_wide += _other_grants(resource, graph)
    return verdict(not too_wide, "Statement[Allow].Action/Resource, and the role's other policies", too_wide)


# Mountpoint for Amazon S3 CSI driver (cold_start.weights_cache node_cache, stacks/aws/weights.py): its role reads
# one built artifact's prefix (artifacts/<model>/<cache key>/) and decrypts with one key, through S3 only.
MOUNTPOINT_POLICY = "byoc-mountpoint_s3"
MOUNTPOINT_ACTIONS = {"s3:listbucket", "s3:getobject", "kms:decrypt"}
ARTIFACT_OBJECTS = re.compile(r"arn:aws[-a-z]*:s3:::[^/*]+/artifacts/[^/*]+/[^/*]+/\*")
ARTIFACT_LISTING = re.compile(r"artifacts/[^/*]+/[^/*]+/\*")
KMS_KEY_ARN = re.compile(r"arn:aws[-a-z]*:kms:[-a-z0-9]+:[0-9]{12}:key/[^*]+")


def _mountpoint_statement_too_wide(statement: dict[str, Any]) -> bool:
    actions = {str(a).lower() for a in as_list(statement.get("Action"))}
    resources = [str(r) for r in as_list(statement.get("Resource"))]
    if "NotAction" in statement or "NotResource" in statement or not actions <= MOUNTPOINT_ACTIONS or not resources:
        return True
    condition = statement.get("Condition") or {}
    if "s3:getobject" in actions and not all(ARTIFACT_OBJECTS.fullmatch(r) for r in resources):
        return True
    if "s3:listbucket" in actions:
        prefixes = as_list((condition.get("StringLike") or {}).get("s3:prefix"))
        if not prefixes or not all(ARTIFACT_LISTING.fullmatch(str(p)) for p in prefixes):
            return True
    if "kms:decrypt" in actions:
        via = (condition.get("StringEquals") or {}).get("kms:ViaService")
        if len(resources) != 1 or not KMS_KEY_ARN.fullmatch(resources[0]) or not str(via or "").startswith("s3."):
            return True
    return False


@check(
    id="iam_mountpoint_driver_reads_artifact_prefix_only",
    title="The Mountpoint for Amazon S3 CSI driver's role reads only the model artifact's prefix with its key",
    severity="high",
    resource_types=[ROLE_POLICY],
    remediation="Grant s3:ListBucket (s3:prefix artifacts/<model>/<key>/*), s3:GetObject on that prefix and "
    "kms:Decrypt on the artifact key with kms:ViaService s3.<region>.amazonaws.com, nothing else, and attach no "
    "other policy (managed or inline) to the role.",
    risk="The driver serves every GPU node; a wider grant lets any pod that mounts a volume of the driver read "
    "or change other objects of the account.",
    cloud="aws",
)
def iam_mountpoint_driver_scoped(resource: Resource, graph: Graph) -> Verdict:
    if str(resource.get("name", "")) != MOUNTPOINT_POLICY:
        return not_applicable("not the Mountpoint CSI driver's role policy")
    too_wide = [
        s.get("Sid") or str(s.get("Action", s.get("NotAction")))
        for s in statements(resource.get("policy"))
        if s.get("Effect") == "Allow" and _mountpoint_statement_too_wide(s)
    ]
    too_wide += _other_grants(resource, graph)
    return verdict(not too_wide, "Statement[Allow].Action/Resource/Condition, and the role's other policies", too_wide)


# -- ElastiCache: the gateway's shared store (stacks/aws/store.py) ----------------------------------------------
# The ids are Prowler's (prowler/providers/aws/services/elasticache/<id>); Prowler reads the same replication-group
# fields from DescribeReplicationGroups.
@check(
    id="elasticache_redis_cluster_rest_encryption_enabled",
    title="The gateway's store is encrypted at rest",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Create the replication group with at_rest_encryption_enabled (it cannot be turned on later).",
    risk="Per-key limits, budgets and usage records would sit unencrypted on ElastiCache's disks and snapshots.",
    cloud="aws",
)
def elasticache_rest_encryption(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("atRestEncryptionEnabled")  # unset: false (CreateReplicationGroup's default)
    return verdict(value is True, "atRestEncryptionEnabled", value)


@check(
    id="elasticache_redis_cluster_cmk_encryption",
    title="The gateway's store is encrypted with the deployment's customer-managed key",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Set kms_key_id to the deployment's KMS key (encryption.kms_key, or the platform key byoc creates).",
    risk="With ElastiCache's own key, the customer cannot revoke or audit access to the data through their key.",
    cloud="aws",
)
def elasticache_cmk_encryption(resource: Resource, graph: Graph) -> Verdict:
    key = resource.get("kmsKeyId")
    return customer_keys_verdict(graph, [key], "kmsKeyId", key, holds=resource.get("atRestEncryptionEnabled") is True)


@check(
    id="elasticache_redis_cluster_in_transit_encryption_enabled",
    title="The gateway's store accepts TLS connections only",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Set transit_encryption_enabled and transit_encryption_mode required.",
    risk="Keys' usage and the AUTH token would cross the network in clear.",
    cloud="aws",
)
def elasticache_in_transit_encryption(resource: Resource, graph: Graph) -> Verdict:
    enabled = resource.get("transitEncryptionEnabled")
    # unset with TLS on: ElastiCache creates the group in `required` mode (CreateReplicationGroup,
    # TransitEncryptionMode); `preferred` also takes plaintext connections, a migration state
    mode = resource.get("transitEncryptionMode") or ("required" if enabled is True else None)
    return verdict(enabled is True and mode == "required", "transitEncryptionEnabled/Mode", [enabled, mode])


@check(
    id="elasticache_redis_replication_group_auth_enabled",
    title="The gateway's store requires authentication",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Set an AUTH token (auth_token) or RBAC user groups (user_group_ids).",
    risk="Anything that reaches the port could read or reset every key's limits and usage.",
    cloud="aws",
)
def elasticache_auth_enabled(resource: Resource, graph: Graph) -> Verdict:
    # a plan records the token as [secret] (present); the account says AuthTokenEnabled
    token = resource.get("authToken") or resource.get("authTokenEnabled")
    groups = as_list(resource.get("userGroupIds"))
    return verdict(bool(token) or bool(groups), "authToken/userGroupIds", {"auth": bool(token), "users": groups})


@check(
    id="elasticache_redis_cluster_automatic_failover_enabled",
    title="The gateway's store fails over automatically",
    severity="medium",
    resource_types=[REPLICATION_GROUP],
    remediation="Run at least two nodes with automatic_failover_enabled.",
    risk="A failed primary would leave every gateway replica on its per-replica fallback until someone acts.",
    cloud="aws",
)
def elasticache_automatic_failover(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("automaticFailoverEnabled")
    return verdict(value is True, "automaticFailoverEnabled", value)


@check(
    id="elasticache_redis_cluster_multi_az_enabled",
    title="The gateway's store keeps a replica in another zone",
    severity="medium",
    resource_types=[REPLICATION_GROUP],
    remediation="Set multi_az_enabled with a replica (num_cache_clusters 2 or more).",
    risk="A zone outage would take the store down with it.",
    cloud="aws",
)
def elasticache_multi_az(resource: Resource, graph: Graph) -> Verdict:
    value = resource.get("multiAzEnabled")
    return verdict(value is True, "multiAzEnabled", value)


@check(
    id="elasticache_redis_cluster_backup_enabled",
    title=f"The gateway's store keeps automatic snapshots for more than {SNAPSHOT_RETENTION_MIN_DAYS} days",
    severity="medium",
    resource_types=[REPLICATION_GROUP],
    remediation=f"Set snapshot_retention_limit above {SNAPSHOT_RETENTION_MIN_DAYS} days.",
    risk="The usage ledger and budgets could not be restored after a loss.",
    cloud="aws",
)
def elasticache_backup(resource: Resource, graph: Graph) -> Verdict:
    days = resource.get("snapshotRetentionLimit") or 0  # unset: 0, no automatic snapshots
    return verdict(float(days) > SNAPSHOT_RETENTION_MIN_DAYS, "snapshotRetentionLimit", days)


@check(
    id="elasticache_redis_cluster_auto_minor_version_upgrades",
    title="The gateway's store takes minor engine upgrades automatically",
    severity="low",
    resource_types=[REPLICATION_GROUP],
    remediation="Set auto_minor_version_upgrade.",
    risk="Security fixes in minor engine versions would wait for someone to apply them.",
    cloud="aws",
)
def elasticache_auto_minor_upgrades(resource: Resource, graph: Graph) -> Verdict:
    # unset: on (ElastiCache opts Valkey 7.2+ and Redis OSS 6+ groups in; the Pulumi/Terraform default is true)
    value = resource.get("autoMinorVersionUpgrade", True)
    return verdict(value is True, "autoMinorVersionUpgrade", value)


@check(
    id="elasticache_cluster_uses_public_subnet",
    title="The gateway's store sits in private subnets only",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Give the replication group a subnet group of the VPC's private subnets.",
    risk="A node in a public subnet is one route away from the internet.",
    cloud="aws",
)
def elasticache_private_subnets(resource: Resource, graph: Graph) -> Verdict:
    name = resource.get("subnetGroupName")
    if name is None:
        return not_assessed("the replication group's subnet group is not known (its member clusters were not read)")
    groups = [g for g in graph.by_type(CACHE_SUBNET_GROUP) if name in (g.get("name"), g.name, g.id)]
    if not groups:
        return not_assessed(f"the subnet group {name!r} was not found with the deployment", "subnetGroupName", name)
    subnets = {s.id: s for s in graph.by_type(SUBNET)}
    used = as_list(groups[0].get("subnetIds"))
    unknown = [s for s in used if s not in subnets]
    if unknown:
        return not_assessed(f"subnets {unknown} are not among the deployment's", "subnetIds", used)
    public = [
        s
        for s in used
        if subnets[s].get("mapPublicIpOnLaunch") or "kubernetes.io/role/elb" in (subnets[s].get("tags") or {})
    ]
    return verdict(bool(used) and not public, "subnetGroup.subnetIds", {"subnets": used, "public": public})


@check(
    id="elasticache_store_open_to_the_cluster_only",
    title="The gateway's store admits its port from the cluster's nodes only",
    severity="high",
    resource_types=[REPLICATION_GROUP],
    remediation="Attach one security group whose only ingress is the store's port from the cluster security group.",
    risk="Any workload in the VPC (or beyond) could reach the store and try the AUTH token.",
    cloud="aws",
)
def elasticache_open_to_cluster_only(resource: Resource, graph: Graph) -> Verdict:
    if resource.source == "live" and resource.get("securityGroupIds") is None:
        return not_assessed("the replication group's security groups are not known (its member clusters were not read)")
    attached = as_list(resource.get("securityGroupIds"))
    groups = [g for g in graph.by_type(SECURITY_GROUP) if g.id in attached]
    if not attached:
        return verdict(False, "securityGroupIds", attached, "no security group: the VPC's default group applies")
    if len(groups) < len(attached):
        return not_assessed("an attached security group is not among the deployment's", "securityGroupIds", attached)
    too_wide = [
        rule
        for group in groups
        for rule in as_list(group.get("ingress"))
        if as_list(rule.get("cidrBlocks"))
        or as_list(rule.get("ipv6CidrBlocks"))
        or not as_list(rule.get("securityGroups"))
    ]
    return verdict(not too_wide, "securityGroups.ingress", too_wide)


# -- residency --------------------------------------------------------------------------------------------------
@check(
    id="data_residency_region",
    title="Every regional resource is in one of the deployment's regions, each inside the residency set",
    severity="high",
    resource_types=[PROVIDER, BUCKET, KEY, CLUSTER, TRAIL, LOG_GROUP, QUEUE, VPC],
    remediation="Keep region on the provider and on every resource inside the spec's region or mega-region.",
    risk="Data stored outside the agreed jurisdiction breaks residency commitments.",
    cloud="aws",
)
def data_residency_region(resource: Resource, graph: Graph) -> Verdict:
    region = resource.get("region") or resource.region or graph.region
    regional = (BUCKET, KEY, CLUSTER, TRAIL, LOG_GROUP, QUEUE, VPC)
    if resource.type == PROVIDER and region in graph.allowed_regions and not graph.by_type(*regional):
        # The provider's region is only what was asked for: with no regional resource there is no data to place.
        return Verdict(
            Status.NOT_ASSESSED,
            (Evidence("region", region),),
            f"no regional resource of deployment {graph.deployment} was found in {region}: nothing holds data there",
        )
    return residency_verdict(graph, region, resource.type == PROVIDER, "region")
