"""Batch storage checks (issue 22): the batch root, `<artifact bucket>/batch/`, holds batch input, output and error
files (prompts and completions). On each cloud three properties a security reviewer asks of it:

- it is encrypted with the customer's key: the bucket's default encryption is the customer-managed key, and the
  gateway and the worker write every batch object with that same key (`--batch-kms-key`);
- it expires: a lifecycle rule on batch/ deletes current objects, and the noncurrent versions a versioned bucket
  keeps after a delete, no later than the retention (`--batch-retention-hours`) rounded up to days, plus one day
  (byoc/batch.py `expiry_days`);
- only the gateway's and the batch worker's identities can read or write batch/: no wildcard principal, no
  bucket-wide object grant to them, and no other identity's grant that reaches batch/.

What a deployment runs for batch comes from the gateway's (or the worker's) Deployment (`--batch-store`,
`--batch-kms-key`, `--batch-retention-hours` / `--retention-hours`, stacks/k8s/batch.py): without them batch is
off, and the checks do not apply. The checks judge the bucket the batch store names. The controls each evidences:
compliance/catalogs/mappings/ (`*_aws.yaml`, `*_gcp.yaml`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

from compliance.checks.common import as_list, customer_keys_verdict, statements
from compliance.model import Graph, Resource, Verdict, check, not_applicable, not_assessed, verdict

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
AWS_BUCKET = "aws:s3/bucket:Bucket"
AWS_ENCRYPTION = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
AWS_LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
AWS_BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
AWS_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
AWS_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
GCP_BUCKET = "gcp:storage/bucket:Bucket"
GCP_BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
GCP_BUCKET_BINDING = "gcp:storage/bucketIAMBinding:BucketIAMBinding"
GCP_PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
# The role policies and Google service accounts stacks/aws and stacks/gcp give the gateway and the worker.
BATCH_ROLE_POLICIES = ("byoc-gateway", "byoc-batch-worker")
BATCH_ACCOUNT_SUFFIXES = ("-gateway@", "-batch-worker@")
# Managed policies and project roles that reach every object of every bucket.
AWS_WIDE_POLICIES = ("AdministratorAccess", "PowerUserAccess", "AmazonS3FullAccess", "AmazonS3ReadOnlyAccess")
GCP_WIDE_ROLES = ("roles/owner", "roles/editor", "roles/viewer")
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
# The versioned bucket keeps earlier versions: reading or deleting one by VersionId reaches batch data too.
S3_OBJECT_ACTIONS = (
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
)
S3_LIST_ACTIONS = ("s3:ListBucket", "s3:ListBucketVersions")


@dataclass(frozen=True)
class BatchStore:
    """What the gateway's Deployment says of batch: the bucket, the prefix, the key, the retention."""

    bucket: str
    prefix: str  # "batch/"
    kms_key: str | None
    retention_hours: int | None

    @property
    def expiry_days(self) -> int | None:
        """The longest lifecycle expiry that keeps to the retention: whole days, plus one (byoc/batch.py)."""
        return None if self.retention_hours is None else math.ceil(self.retention_hours / 24) + 1


def _flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command and command.index(name) + 1 < len(command) else None


def batch_store(graph: Graph, scheme: str) -> BatchStore | None:
    """The batch store of the gateway's Deployment (scheme s3:// or gs://), or None when no gateway runs batch."""
    for deployment in graph.by_type(DEPLOYMENT):
        for container in as_list(deployment.get("spec.template.spec.containers")):
            command = [str(a) for a in as_list(container.get("command")) + as_list(container.get("args"))]
            store = _flag(command, "--batch-store")
            if store is None or not store.startswith(scheme):
                continue
            bucket, _, prefix = store.removeprefix(scheme).partition("/")
            # the gateway's flag, or the worker's (runtime/serve/batch/worker.py)
            retention = _flag(command, "--batch-retention-hours") or _flag(command, "--retention-hours")
            return BatchStore(
                bucket=bucket,
                prefix=prefix.rstrip("/") + "/" if prefix else "",
                kms_key=_flag(command, "--batch-kms-key"),
                retention_hours=int(retention) if retention and retention.isdigit() else None,
            )
    return None


def _store_for(resource: Resource, graph: Graph, scheme: str, name_key: str) -> BatchStore | Verdict:
    """The batch store when `resource` is the bucket it lives in; else the verdict for this resource."""
    store = batch_store(graph, scheme)
    if store is None:
        if DEPLOYMENT in graph.unassessed:
            reason = graph.unassessed[DEPLOYMENT]
            return not_assessed(f"batch settings are read from the gateway's Deployment: {reason}")
        return not_applicable("no gateway serves batch here (batch.enabled: false)")
    if resource.get(name_key) != store.bucket:
        return not_applicable("not the bucket of the batch store")
    return store


def _covers_prefix(rule_prefix: str, prefix: str) -> bool:
    """Whether a lifecycle rule under `rule_prefix` applies to every object under `prefix`."""
    return prefix.startswith(rule_prefix)


def _days_verdict(store: BatchStore, current: list[int], noncurrent: list[int], path: str, value: Any) -> Verdict:
    limit = store.expiry_days
    if limit is None:
        return not_assessed("the gateway's --batch-retention-hours is not known", path, value)
    ok = bool(current) and min(current) <= limit and bool(noncurrent) and min(noncurrent) <= limit
    reason = (
        ""
        if ok
        else f"batch/ must expire within {limit} days (retention {store.retention_hours} h rounded up, plus one "
        f"day), its noncurrent versions too; found {min(current) if current else 'no'} day(s) for current objects "
        f"and {min(noncurrent) if noncurrent else 'no'} for noncurrent ones"
    )
    return verdict(ok, path, value, reason)


# -- AWS ---------------------------------------------------------------------------------------------------------
def _aws_bucket_arn(store: BatchStore) -> str:
    return f"arn:aws:s3:::{store.bucket}"


@check(
    id="s3_batch_storage_cmk_encryption",
    title="Batch files are encrypted with the deployment's customer-managed key",
    severity="high",
    resource_types=[AWS_BUCKET],
    remediation="Keep the artifact bucket's default SSE-KMS key and run the gateway and the batch worker with "
    "--batch-kms-key set to that same key (byoc renders both).",
    risk="Batch inputs and outputs hold prompts and completions; under another key the customer cannot revoke or "
    "audit access to them.",
    cloud="aws",
)
def s3_batch_storage_cmk(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "s3://", "bucket")
    if isinstance(store, Verdict):
        return store
    configs = graph.related(AWS_ENCRYPTION, "bucket", resource.id) or graph.related(
        AWS_ENCRYPTION, "bucket", resource.name
    )
    default = configs[0].get("rules.0.applyServerSideEncryptionByDefault") if configs else None
    bucket_key = (default or {}).get("kmsMasterKeyId")
    value = {"bucketDefaultKey": bucket_key, "batchKmsKey": store.kms_key}
    holds = (
        (default or {}).get("sseAlgorithm") == "aws:kms" and store.kms_key is not None and store.kms_key == bucket_key
    )
    return customer_keys_verdict(graph, [bucket_key], "sse default key / --batch-kms-key", value, holds=holds)


@check(
    id="s3_batch_storage_expiry",
    title="Batch files expire within the retention plus a day",
    severity="high",
    resource_types=[AWS_BUCKET],
    remediation="Add a lifecycle rule on batch/ with expiration days at most ceil(retention_hours / 24) + 1 and "
    "noncurrent version expiration within the same (byoc renders expire-batch-files).",
    risk="Prompts and completions left behind by a worker that was down would stay in the bucket indefinitely.",
    cloud="aws",
)
def s3_batch_storage_expiry(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "s3://", "bucket")
    if isinstance(store, Verdict):
        return store
    configs = graph.related(AWS_LIFECYCLE, "bucket", resource.id) or graph.related(
        AWS_LIFECYCLE, "bucket", resource.name
    )
    rules = [
        rule
        for config in configs
        for rule in as_list(config.get("rules"))
        if isinstance(rule, dict)
        and rule.get("status") == "Enabled"
        and _covers_prefix(str((rule.get("filter") or {}).get("prefix", rule.get("prefix")) or ""), store.prefix)
    ]
    current = [int(r["expiration"]["days"]) for r in rules if (r.get("expiration") or {}).get("days")]
    noncurrent = [
        int(r["noncurrentVersionExpiration"]["noncurrentDays"])
        for r in rules
        if (r.get("noncurrentVersionExpiration") or {}).get("noncurrentDays")
    ]
    return _days_verdict(store, current, noncurrent, "lifecycle rules on batch/", rules)


def _reaches(resource_pattern: str, arn: str) -> bool:
    return fnmatch.fnmatchcase(arn, resource_pattern)


def _object_actions(statement: dict[str, Any]) -> list[str]:
    """The statement's actions that read, write or delete objects (wildcards included)."""
    if "NotAction" in statement:
        return ["NotAction"]
    found = []
    for action in as_list(statement.get("Action")):
        text = str(action)
        if any(fnmatch.fnmatchcase(wanted.lower(), text.lower()) for wanted in S3_OBJECT_ACTIONS):
            found.append(text)
    return found


@check(
    id="s3_batch_storage_access_scoped",
    title="Only the gateway and the batch worker reach batch files",
    severity="critical",
    resource_types=[AWS_BUCKET],
    remediation="Grant s3 object actions on <bucket>/batch/* only to the gateway's and the batch worker's roles, "
    "scoped to batch/; never to a wildcard principal or bucket-wide.",
    risk="Another identity reading batch/ would see every batch's prompts and completions.",
    cloud="aws",
)
def s3_batch_storage_access(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "s3://", "bucket")
    if isinstance(store, Verdict):
        return store
    bucket_arn = _aws_bucket_arn(store)
    batch_object = f"{bucket_arn}/{store.prefix}any-object"
    other_object = f"{bucket_arn}/not-{store.prefix}any-object"
    wrong: list[str] = []
    for policy in graph.by_type(AWS_BUCKET_POLICY):
        for s in statements(policy.get("policy")):
            principal = s.get("Principal")
            aws_principals = as_list(principal.get("AWS")) if isinstance(principal, dict) else []
            public = principal == "*" or "*" in aws_principals
            if s.get("Effect") == "Allow" and public:
                wrong.append(f"bucket policy {s.get('Sid') or '(no Sid)'}: a wildcard principal")
    for policy in graph.by_type(AWS_ROLE_POLICY):
        name = str(policy.get("name", ""))
        batch_role = name in BATCH_ROLE_POLICIES
        for s in statements(policy.get("policy")):
            listing = [a for a in as_list(s.get("Action")) if a in S3_LIST_ACTIONS]
            if batch_role and s.get("Effect") == "Allow" and listing:
                listed = as_list((s.get("Condition") or {}).get("StringLike", {}).get("s3:prefix"))
                if not listed or not all(str(p).startswith(store.prefix) for p in listed):
                    wrong.append(f"{name}: {s.get('Sid') or listing[0]} lists beyond {store.prefix}")
            if s.get("Effect") != "Allow" or not _object_actions(s):
                continue
            targets = [str(r) for r in as_list(s.get("Resource"))] or ["NotResource"]
            label = f"{name}: {s.get('Sid') or _object_actions(s)}"
            if batch_role and any(t == "NotResource" or _reaches(t, other_object) for t in targets):
                wrong.append(f"{label} reaches beyond {store.prefix}")
            elif not batch_role and any(t == "NotResource" or _reaches(t, batch_object) for t in targets):
                wrong.append(f"{label} reaches {store.prefix}")
    for attachment in graph.by_type(AWS_ATTACHMENT):
        arn = str(attachment.get("policyArn", ""))
        if arn.rsplit("/", 1)[-1] in AWS_WIDE_POLICIES:
            wrong.append(f"{attachment.name}: {arn} reaches every bucket")
    return verdict(not wrong, "bucket policy / role policies reaching batch/", wrong)


# -- GCP ---------------------------------------------------------------------------------------------------------
@check(
    id="gcp_batch_storage_cmek",
    title="Batch files are encrypted with the deployment's customer-managed key",
    severity="high",
    resource_types=[GCP_BUCKET],
    remediation="Keep the artifact bucket's default Cloud KMS key (Google-managed keys refused) and run the gateway "
    "and the batch worker with --batch-kms-key set to that same key (byoc renders both).",
    risk="Batch inputs and outputs hold prompts and completions; under Google's key the customer cannot revoke or "
    "audit access to them.",
    cloud="gcp",
)
def gcp_batch_storage_cmek(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "gs://", "name")
    if isinstance(store, Verdict):
        return store
    key = resource.get("encryption.defaultKmsKeyName")
    restricted = resource.get("encryption.googleManagedEncryptionEnforcementConfig.restrictionMode")
    value = {"defaultKmsKeyName": key, "googleManaged": restricted, "batchKmsKey": store.kms_key}
    ok = str(key or "").startswith("projects/") and store.kms_key == key and restricted == "FullyRestricted"
    return verdict(ok, "encryption / --batch-kms-key", value)


@check(
    id="gcp_batch_storage_expiry",
    title="Batch files expire within the retention plus a day",
    severity="high",
    resource_types=[GCP_BUCKET],
    remediation="Add Delete lifecycle rules with matches_prefixes [batch/]: age at most ceil(retention_hours / 24) "
    "+ 1, and days_since_noncurrent_time within the same (byoc renders both).",
    risk="Prompts and completions left behind by a worker that was down would stay in the bucket indefinitely.",
    cloud="gcp",
)
def gcp_batch_storage_expiry(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "gs://", "name")
    if isinstance(store, Verdict):
        return store
    rules = [
        rule
        for rule in as_list(resource.get("lifecycleRules"))
        if isinstance(rule, dict)
        and (rule.get("action") or {}).get("type") == "Delete"
        and (
            not (rule.get("condition") or {}).get("matchesPrefixes")
            or any(_covers_prefix(str(p), store.prefix) for p in rule["condition"]["matchesPrefixes"])
        )
    ]
    conditions = [rule.get("condition") or {} for rule in rules]
    current = [int(c["age"]) for c in conditions if c.get("age") and c.get("withState") in (None, "LIVE", "ANY")]
    noncurrent = [int(c["daysSinceNoncurrentTime"]) for c in conditions if c.get("daysSinceNoncurrentTime")]
    noncurrent += [int(c["age"]) for c in conditions if c.get("age") and c.get("withState") in ("ARCHIVED", "ANY")]
    return _days_verdict(store, current, noncurrent, "lifecycleRules (Delete) on batch/", rules)


def _quoted_after(expression: str, marker: str) -> list[str]:
    """The string literals that follow `marker` in a CEL expression (up to the closing quote)."""
    return [part.split('"', 1)[0] for part in expression.split(marker)[1:]]


def _condition_prefixes(expression: str, store: BatchStore) -> tuple[list[str], list[str], bool]:
    """(object prefixes, listing prefixes, bucket-wide?) a Cloud Storage IAM condition admits on the bucket."""
    objects = _quoted_after(expression, f"/buckets/{store.bucket}/objects/")
    listings = _quoted_after(expression, 'objectListPrefix", "").startsWith("')
    bucket_wide = f'resource.name == "projects/_/buckets/{store.bucket}"' in expression
    return objects, listings, bucket_wide


def _only_batch(expression: str, store: BatchStore) -> bool:
    """A condition that admits objects under the batch prefix (and listings of it) and nothing else of the bucket."""
    objects, listings, bucket_wide = _condition_prefixes(expression, store)
    return (
        bool(objects)
        and not bucket_wide
        and all(p.startswith(store.prefix) for p in objects)
        and all(p.startswith(store.prefix) for p in listings)
    )


def _reaches_batch(expression: str, store: BatchStore) -> bool:
    """A condition (or none) under which a grant on the bucket can reach objects under the batch prefix."""
    if not expression:
        return True
    objects, listings, bucket_wide = _condition_prefixes(expression, store)
    overlaps = [p for p in objects if store.prefix.startswith(p) or p.startswith(store.prefix)]
    return bool(overlaps) or (bucket_wide and not objects and not listings)


@check(
    id="gcp_batch_storage_access_scoped",
    title="Only the gateway and the batch worker reach batch files",
    severity="critical",
    resource_types=[GCP_BUCKET],
    remediation="Grant object roles on the bucket to the gateway's and the batch worker's service accounts only "
    "under an IAM condition on objects/batch/; grant no one else a role that reaches batch/, and no public member.",
    risk="Another identity reading batch/ would see every batch's prompts and completions.",
    cloud="gcp",
)
def gcp_batch_storage_access(resource: Resource, graph: Graph) -> Verdict:
    store = _store_for(resource, graph, "gs://", "name")
    if isinstance(store, Verdict):
        return store
    wrong: list[str] = []
    for grant in graph.by_type(GCP_BUCKET_MEMBER, GCP_BUCKET_BINDING):
        if grant.get("bucket") not in (store.bucket, resource.id):
            continue
        members = [str(m) for m in as_list(grant.get("member")) + as_list(grant.get("members"))]
        expression = str(grant.get("condition.expression") or "")
        role = str(grant.get("role", ""))
        for member in members:
            if member in PUBLIC_MEMBERS:
                wrong.append(f"{grant.name}: {member} holds {role}")
            elif any(s in member for s in BATCH_ACCOUNT_SUFFIXES):
                if not _only_batch(expression, store):
                    wrong.append(f"{grant.name}: {member} holds {role} beyond {store.prefix}")
            elif role.startswith("roles/storage.object") and _reaches_batch(expression, store):
                wrong.append(f"{grant.name}: {member} holds {role} reaching {store.prefix}")
    for grant in graph.by_type(GCP_PROJECT_MEMBER):
        role = str(grant.get("role", ""))
        if role in GCP_WIDE_ROLES or role.startswith("roles/storage."):
            wrong.append(f"{grant.name}: {grant.get('member')} holds {role} on the project (every bucket)")
    return verdict(not wrong, "bucket IAM grants reaching batch/", wrong)
