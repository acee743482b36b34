"""Google service accounts: one per node pool kind (system and GPU nodes, each a dedicated least-privilege node
account instead of the Compute Engine default) and one per workload (model builder, serving pods), the workload
ones bound to their Kubernetes service accounts through Workload Identity.

Accounts are created first (the node pools and the key grants name them); bucket access and the Workload Identity
bindings come once the bucket and the cluster (whose workload pool they name) exist.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from byoc.batch import BATCH_PREFIX, GATEWAY_ROLE, WORKER_ROLE
from stacks.gcp.context import GcpContext

# GKE docs, "Harden your cluster's security": node service accounts get the predefined minimal role (logs,
# metrics, metadata), plus reading images from Artifact Registry.
NODE_ROLES = ("roles/container.defaultNodeServiceAccount", "roles/artifactregistry.reader")
PURPOSES = {
    "nodes": "GKE system nodes",
    "gpu-nodes": "GKE GPU nodes",
    "builder": "model builder Job (Workload Identity)",
    "serving": "serving pods (Workload Identity)",
}


def objects_under(bucket: pulumi.Input[str], prefixes: list[str]) -> pulumi.Output[str]:
    """A CEL condition: the bucket itself (object listing is checked on it) or objects under these prefixes."""
    path = pulumi.Output.concat("projects/_/buckets/", bucket)
    clauses = [pulumi.Output.concat('resource.name == "', path, '"')]
    clauses += [pulumi.Output.concat('resource.name.startsWith("', path, "/objects/", p, '/")') for p in prefixes]
    return pulumi.Output.all(*clauses).apply(" || ".join)


class Identities(pulumi.ComponentResource):
    accounts: dict[str, gcp.serviceaccount.Account]

    def __init__(self, ctx: GcpContext) -> None:
        name = ctx.name
        super().__init__(
            "byoc:gcp:Identities", f"{name}-identities", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        self.accounts = {
            role: gcp.serviceaccount.Account(
                f"{name}-{role}",
                account_id=ctx.account_id(role),
                display_name=f"byoc {name}: {purpose}",
                description=f"byoc {name}: {purpose}",
                opts=ctx.opts(self),
            )
            for role, purpose in {**PURPOSES, **batch_purposes(ctx)}.items()
        }
        for role in ("nodes", "gpu-nodes"):
            for granted in NODE_ROLES:
                gcp.projects.IAMMember(
                    f"{name}-{role}-{granted.split('/')[-1].replace('.', '-')}",
                    project=ctx.project,
                    role=granted,
                    member=self.accounts[role].member,
                    opts=ctx.opts(self),
                )
        self.register_outputs({role: a.email for role, a in self.accounts.items()})

    def email(self, role: str) -> pulumi.Output[str]:
        return self.accounts[role].email

    def bind_service_accounts(self, ctx: GcpContext, cluster: pulumi.Resource) -> None:
        """Workload Identity: the builder and serving Kubernetes service accounts may act as their Google service
        accounts. The workload pool exists once the cluster does (binding earlier fails)."""
        deployment = ctx.deployment
        for role, service_account in deployment.service_accounts.items():
            gcp.serviceaccount.IAMMember(
                f"{ctx.name}-{role}-workload-identity",
                service_account_id=self.accounts[role].name,
                role="roles/iam.workloadIdentityUser",
                member=pulumi.Output.concat(
                    "serviceAccount:", ctx.project, ".svc.id.goog[", deployment.namespace, "/", service_account, "]"
                ),
                opts=ctx.opts(self, depends_on=[cluster]),
            )

    def grant_bucket_access(self, ctx: GcpContext, bucket: pulumi.Output[str]) -> None:
        """The builder reads sources/ and adapters/ and writes artifacts/; serving only reads artifacts/ and adapters/.
        The builder also reads each gs:// source the spec names (model, addons, draft model) in its own bucket.
        Cloud Storage encrypts with its own service agent, so neither needs the artifact key."""
        name = ctx.name
        grants = {
            "builder-read": ("builder", "roles/storage.objectViewer", ["sources", "adapters", "artifacts"]),
            "builder-write": ("builder", "roles/storage.objectCreator", ["artifacts"]),
            "serving-read": ("serving", "roles/storage.objectViewer", ["artifacts", "adapters"]),
        }
        for grant, (role, granted, prefixes) in grants.items():
            gcp.storage.BucketIAMMember(
                f"{name}-{grant}",
                bucket=bucket,
                role=granted,
                member=self.accounts[role].member,
                condition=gcp.storage.BucketIAMMemberConditionArgs(
                    title=f"byoc-{grant}",
                    description=f"only {', '.join(p + '/' for p in prefixes)}",
                    expression=objects_under(bucket, prefixes),
                ),
                opts=ctx.opts(self),
            )
        self._grant_batch_access(ctx, bucket)
        deployment = ctx.deployment
        addon_ids = [addon.id for addon in deployment.addons]
        for field, source in deployment.build_sources:
            if not source.startswith("gs://"):
                continue  # hf:// comes through the bucket's mirror; other schemes are refused at validate
            # the source lives in the customer's own bucket (gs://bucket/prefix): object read on that prefix only
            what = {"model.source": "model", "speculative.draft_model": "draft-model"}.get(field)
            what = what or f"addon-{addon_ids[int(field.removeprefix('addons[').split(']')[0])]}"
            source_bucket, _, prefix = source.removeprefix("gs://").partition("/")
            prefix = prefix.strip("/")
            gcp.storage.BucketIAMMember(
                f"{name}-builder-{what}-source",
                bucket=source_bucket,
                role="roles/storage.objectViewer",
                member=self.accounts["builder"].member,
                condition=gcp.storage.BucketIAMMemberConditionArgs(
                    # unique per binding: the provider tells same-role bindings of one member apart by the title
                    title=f"byoc-{what}-source"[:100],
                    description=f"{field}: {source}"[:256],
                    expression=objects_under(source_bucket, [prefix]),
                )
                if prefix
                else None,
                opts=ctx.opts(self),
            )

    def _grant_batch_access(self, ctx: GcpContext, bucket: pulumi.Output[str]) -> None:
        """batch.enabled: the gateway and the batch worker create, read and delete objects under batch/ and list
        that prefix, nothing else of the bucket. roles/storage.objectUser is the narrowest predefined role with
        storage.objects.create/get/list/delete (objectCreator cannot delete, objectAdmin adds IAM on objects)."""
        for role in batch_purposes(ctx):
            gcp.storage.BucketIAMMember(
                f"{ctx.name}-{role}-batch",
                bucket=bucket,
                role=BATCH_OBJECT_ROLE,
                member=self.accounts[role].member,
                condition=gcp.storage.BucketIAMMemberConditionArgs(
                    title=f"byoc-{role}-batch",
                    description=f"only {BATCH_PREFIX}",
                    expression=batch_objects_condition(bucket),
                ),
                opts=ctx.opts(self),
            )


# roles/storage.objectUser: storage.objects.{create,delete,get,list,restore,update}, multipart uploads, managed
# folders; no bucket or IAM permissions (IAM docs, "Cloud Storage roles").
BATCH_OBJECT_ROLE = "roles/storage.objectUser"


def batch_purposes(ctx: GcpContext) -> dict[str, str]:
    """The Google service accounts batch adds (batch.enabled): role -> purpose. Nothing without batch."""
    if not ctx.deployment.batch.enabled:
        return {}
    return {
        GATEWAY_ROLE: "gateway pods, batch files (Workload Identity)",
        WORKER_ROLE: "batch worker (Workload Identity)",
    }


def batch_objects_condition(bucket: pulumi.Input[str]) -> pulumi.Output[str]:
    """A CEL condition: objects under batch/, and object listings whose prefix lies under batch/.

    An object request's resource is the object (projects/_/buckets/B/objects/NAME: IAM docs, "Resource attributes
    for Cloud Storage"); a list request's resource is the bucket, so the listing is granted on the request's prefix
    attribute `storage.googleapis.com/objectListPrefix` instead (IAM docs, "API attributes"), never bucket-wide.
    """
    path = pulumi.Output.concat("projects/_/buckets/", bucket, "/objects/", BATCH_PREFIX)
    return pulumi.Output.concat(
        'resource.name.startsWith("',
        path,
        '") || api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("',
        BATCH_PREFIX,
        '")',
    )
