"""The audit trail: Data Access audit logs (ADMIN_READ, DATA_READ, DATA_WRITE) for the services that hold the
deployment's data and keys, and a log sink exporting every Cloud Audit Log of the project to a CMEK bucket under a
locked retention policy, whose own usage logs go to the access-log bucket."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from byoc.names import resource_name
from stacks.gcp.artifacts import private_bucket
from stacks.gcp.context import GcpContext
from stacks.multi_region import is_primary

# Admin Activity logs are always on; Data Access logs are off by default except for BigQuery ("Cloud Audit Logs").
AUDITED_SERVICES = ("storage.googleapis.com", "cloudkms.googleapis.com", "container.googleapis.com")
LOG_TYPES = ("ADMIN_READ", "DATA_READ", "DATA_WRITE")
AUDIT_LOG_FILTER = 'logName:"cloudaudit.googleapis.com"'


class AuditTrail(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    sink_writer: pulumi.Output[str]

    def __init__(
        self,
        ctx: GcpContext,
        key_id: pulumi.Input[str],
        key_grants: list[pulumi.Resource],
        log_bucket: gcp.storage.Bucket,
    ) -> None:
        name = ctx.name
        super().__init__(
            "byoc:gcp:AuditTrail", f"{name}-audit-trail", None, pulumi.ResourceOptions(provider=ctx.provider)
        )
        # The project's audit config is one per project: of a multi-region deployment (its regions share the
        # project), the primary region's stack holds it, so another region's destroy cannot turn it off.
        audited = AUDITED_SERVICES if is_primary(ctx.deployment) else ()
        for service in audited:
            # Authoritative for the service: it replaces the project's audit config for it (docs/gcp-foundation.md).
            gcp.projects.IAMAuditConfig(
                f"{name}-audit-{service.split('.')[0]}",
                project=ctx.project,
                service=service,
                audit_log_configs=[gcp.projects.IAMAuditConfigAuditLogConfigArgs(log_type=kind) for kind in LOG_TYPES],
                opts=ctx.opts(self),
            )
        bucket = private_bucket(
            self,
            ctx,
            "audit-logs",
            key_id,
            key_grants,
            # its usage logs go to the access-log bucket, as the AWS trail bucket's access logs do (that bucket
            # logs nowhere: a log bucket logging into itself would write a log of every log it writes)
            log_bucket=log_bucket,
            noncurrent_days=None,
            retention_days=ctx.log_retention_days,
            retain_on_delete=True,
        )
        sink = gcp.logging.ProjectSink(
            f"{name}-audit-logs",
            name=resource_name(name, "audit-logs"),
            description="Cloud Audit Logs of the project, kept under a locked retention policy",
            project=ctx.project,
            destination=pulumi.Output.concat("storage.googleapis.com/", bucket.name),
            filter=AUDIT_LOG_FILTER,
            unique_writer_identity=True,  # a writer identity of its own, granted on this bucket only
            opts=ctx.opts(self),
        )
        gcp.storage.BucketIAMMember(
            f"{name}-audit-log-writer",
            bucket=bucket.name,
            role="roles/storage.objectCreator",
            member=sink.writer_identity,
            opts=ctx.opts(self),
        )
        self.bucket_name = bucket.name
        self.sink_writer = sink.writer_identity
        self.register_outputs({"bucket": bucket.name, "sink": sink.name})
