"""The model is built once, in the primary region, and copied to every other region of a multi-region deployment by
Cloud Storage cross-bucket replication: one Storage Transfer Service replication job per other region, from the
primary's artifact bucket (artifacts/ only) to that region's bucket, where Cloud Storage encrypts each copy with the
bucket's default key, the region's own artifact key (CMEK; the bucket refuses Google-managed keys).

Why this and not the build Job writing to every bucket: replication is the platform's, event-driven (Pub/Sub
notifications of the source bucket, "most objects in minutes, objects over 1 GiB can take several hours"), and keeps
the builder's grants to its own region's bucket. Like S3 Replication it copies only objects written after the job
exists ("Use cross-bucket replication": existing objects need a one-off transfer), so the job is part of the
primary's stack and its build Job waits for it; the destinations are named, not read (each region's bucket is
byoc-<regional name>-artifacts-<project number>, stacks/gcp/context.py), and exist first: the other regions' stacks
come up before the primary's.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from byoc.names import resource_name
from byoc.resolve import Deployment
from stacks.gcp.context import GcpContext
from stacks.gcp.identities import objects_under
from stacks.multi_region import is_primary

# Only the built model is copied: batch files and the source mirror stay in the region that wrote them.
REPLICATED_PREFIX = "artifacts/"


def replicates(deployment: Deployment) -> bool:
    """The primary region of a multi-region deployment replicates its artifacts; no other stack does."""
    return deployment.multi_region and is_primary(deployment)


class ArtifactReplication(pulumi.ComponentResource):
    """A cross-bucket replication job per other region, and the Storage Transfer Service agent's grants it needs:
    what the console grants when it creates one (legacyBucketOwner on the source, to add its Pub/Sub notification;
    legacyBucketWriter on the destination), object reads on the source, and Pub/Sub for the notifications ("Use
    cross-bucket replication", "Grant required roles")."""

    jobs: list[gcp.storage.TransferJob]

    def __init__(self, ctx: GcpContext, bucket_name: pulumi.Output[str]) -> None:
        name = ctx.name
        super().__init__(
            "byoc:gcp:ArtifactReplication",
            f"{name}-artifact-replication",
            None,
            pulumi.ResourceOptions(provider=ctx.provider),
        )
        agent = gcp.storage.get_transfer_project_service_account_output(
            project=ctx.project, opts=pulumi.InvokeOutputOptions(provider=ctx.provider)
        )
        member = pulumi.Output.concat("serviceAccount:", agent.email)
        grants: list[pulumi.Resource] = [
            # Google's documented grant for a replication job's source (a legacy role takes no IAM condition): it
            # lists objects and adds the bucket's Pub/Sub notification; it reads no object
            gcp.storage.BucketIAMMember(
                f"{name}-replication-source-owner",
                bucket=bucket_name,
                role="roles/storage.legacyBucketOwner",
                member=member,
                opts=ctx.opts(self),
            ),
            # reads of artifacts/ only: batch files (prompts and completions) in the same bucket stay out of reach
            gcp.storage.BucketIAMMember(
                f"{name}-replication-source-read",
                bucket=bucket_name,
                role="roles/storage.objectViewer",
                member=member,
                condition=gcp.storage.BucketIAMMemberConditionArgs(
                    title="byoc-replication-read",
                    description=f"only {REPLICATED_PREFIX}",
                    expression=objects_under(bucket_name, [REPLICATED_PREFIX.rstrip("/")]),
                ),
                opts=ctx.opts(self),
            ),
        ]
        grants += [
            gcp.projects.IAMMember(
                f"{name}-replication-pubsub",
                project=ctx.project,
                role="roles/pubsub.editor",
                member=member,
                opts=ctx.opts(self),
            ),
            # Cloud Storage publishes the source bucket's change notifications through its own service agent
            gcp.projects.IAMMember(
                f"{name}-storage-notifications",
                project=ctx.project,
                role="roles/pubsub.publisher",
                member=pulumi.Output.concat("serviceAccount:", ctx.storage_agent),
                opts=ctx.opts(self),
            ),
        ]
        self.jobs = []
        for region, peer, _cidr in ctx.deployment.peers():
            destination = pulumi.Output.concat(resource_name(peer, "artifacts", ""), ctx.project_number)
            writer = gcp.storage.BucketIAMMember(
                f"{name}-replication-to-{peer}",
                bucket=destination,
                role="roles/storage.legacyBucketWriter",
                member=member,
                opts=ctx.opts(self),
            )
            self.jobs.append(
                gcp.storage.TransferJob(
                    f"{name}-artifacts-to-{peer}",
                    # a replication job takes no custom name
                    description=f"byoc {ctx.deployment.deployment_name}: the built model to {region}",
                    project=ctx.project,
                    replication_spec=gcp.storage.TransferJobReplicationSpecArgs(
                        gcs_data_source=gcp.storage.TransferJobReplicationSpecGcsDataSourceArgs(
                            bucket_name=bucket_name
                        ),
                        gcs_data_sink=gcp.storage.TransferJobReplicationSpecGcsDataSinkArgs(bucket_name=destination),
                        object_conditions=gcp.storage.TransferJobReplicationSpecObjectConditionsArgs(
                            include_prefixes=[REPLICATED_PREFIX]
                        ),
                        transfer_options=gcp.storage.TransferJobReplicationSpecTransferOptionsArgs(
                            # the artifact is content-addressed: a copy is never changed, and deletes stay local
                            delete_objects_unique_in_sink=False,
                            delete_objects_from_source_after_transfer=False,
                        ),
                    ),
                    opts=ctx.opts(self, depends_on=[*grants, writer]),
                )
            )
        self.register_outputs({"jobs": [job.name for job in self.jobs]})
