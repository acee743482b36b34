"""Customer-managed Cloud KMS keys in the placement region, one per use: GKE application-layer secrets encryption,
node boot disks, model artifacts, and logs (the audit and access-log buckets). Each key is granted to exactly the
Google service agent that uses it; a key id in the spec is used for every use instead (and granted the same way).

The grants matter before anything uses a key: GKE, Compute Engine and Cloud Storage encrypt through their own
service agents (not the node or workload service accounts), and a pool or bucket created before its grant fails
with permission denied. Components take `Keys.grants[use]` as `depends_on`.
"""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from byoc.names import resource_name
from stacks.gcp.context import GcpContext

# 90 days: the CIS Google Cloud Foundations Benchmark (1.10, "KMS encryption keys are rotated within 90 days").
ROTATION_PERIOD = "7776000s"
# Destroyed key versions wait this long (the longest Cloud KMS allows is 120 days; 30 as AWS's deletion window),
# so a mistaken destroy can be undone.
DESTROY_SCHEDULED_DURATION = "2592000s"
ENCRYPTER_DECRYPTER = "roles/cloudkms.cryptoKeyEncrypterDecrypter"

# use -> (description, the service agent's domain, or None for the Cloud Storage agent read from the project)
USES: dict[str, tuple[str, str | None]] = {
    "secrets": ("GKE application-layer secrets encryption", "container-engine-robot.iam.gserviceaccount.com"),
    "disks": ("GKE node boot disks", "compute-system.iam.gserviceaccount.com"),
    "artifacts": ("model checkpoints, built artifacts and LoRA adapters in Cloud Storage", None),
    "logs": ("the audit-log and access-log buckets", None),
}


class Keys(pulumi.ComponentResource):
    key_ids: dict[str, pulumi.Output[str]]
    grants: dict[str, list[pulumi.Resource]]
    created: bool

    def __init__(self, ctx: GcpContext) -> None:
        name = ctx.name
        super().__init__("byoc:gcp:Keys", f"{name}-keys", None, pulumi.ResourceOptions(provider=ctx.provider))
        given = ctx.deployment.encryption.kms_key
        self.created = given == "create"
        self.key_ids, self.grants = {}, {}
        if self.created:
            ring = gcp.kms.KeyRing(
                f"{name}-ring",
                name=resource_name(name),
                location=ctx.region,  # keys are regional, as the cluster and the buckets that use them
                opts=ctx.opts(self),
            )
        granted: dict[str, gcp.kms.CryptoKeyIAMMember] = {}
        for use, (_, agent_domain) in USES.items():
            if self.created:
                key = gcp.kms.CryptoKey(
                    f"{name}-{use}",
                    name=use,
                    key_ring=ring.id,
                    purpose="ENCRYPT_DECRYPT",
                    rotation_period=ROTATION_PERIOD,
                    destroy_scheduled_duration=DESTROY_SCHEDULED_DURATION,
                    version_template=gcp.kms.CryptoKeyVersionTemplateArgs(
                        algorithm="GOOGLE_SYMMETRIC_ENCRYPTION", protection_level="SOFTWARE"
                    ),
                    labels=ctx.labels(**{"byoc-key": use}),
                    opts=ctx.opts(self),
                )
                key_id: pulumi.Output[str] = key.id
                grant_name = f"{name}-{use}"
            else:
                key_id = pulumi.Output.from_input(given)
                grant_name = f"{name}-given-{agent_domain.split('.')[0] if agent_domain else 'storage'}"
            member = (
                ctx.service_agent(agent_domain)
                if agent_domain
                else pulumi.Output.concat("serviceAccount:", ctx.storage_agent)
            )
            if grant_name not in granted:  # a given key is granted once per agent
                granted[grant_name] = gcp.kms.CryptoKeyIAMMember(
                    grant_name,
                    crypto_key_id=key_id,
                    role=ENCRYPTER_DECRYPTER,
                    member=member,
                    opts=ctx.opts(self),
                )
            self.key_ids[use] = key_id
            self.grants[use] = [granted[grant_name]]
        self.register_outputs(dict(self.key_ids))
