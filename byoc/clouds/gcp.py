"""Google Cloud: regions, machine types and Cloud KMS key ids (offerings from the offline table); the live preflight
and the leftover sweep."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from byoc.catalogs import InstanceType
from byoc.clouds.base import Cloud
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepReport, SweepTarget
from byoc.sizing import NodeAllocatable, gke_allocatable

# What people write when they mean Google's default encryption at rest: no key of theirs at all.
GOOGLE_MANAGED = frozenset(
    {"google", "google-managed", "google_managed", "gmek", "google-default-encryption", "google_default_encryption"}
)


class Gcp(Cloud):
    name = "gcp"
    title = "Google Cloud"
    key_pattern = re.compile(
        r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/locations/(?P<region>[a-z0-9-]+)/keyRings/[\w-]+/cryptoKeys/[\w-]+$"
    )
    key_example = "projects/my-project/locations/europe-west4/keyRings/byoc/cryptoKeys/cluster"
    object_store_scheme = "gs://"
    # GKE master authorized networks: at most 50 CIDRs for a cluster's public endpoint (GKE docs, "Add authorized
    # networks for control plane access"); private ranges reach the private endpoint from inside the VPC instead.
    allowed_cidrs_max = 50
    allowed_cidrs_private = False
    private_allowlist_reason = (
        "byoc authorizes the VPC's own range itself and keeps other private ranges off the control plane's "
        "allowlist: reach the private endpoint from them through Cloud VPN or Interconnect"
    )
    unsupported_fields: ClassVar[dict[str, str]] = {
        "node_image": "GKE nodes run Container-Optimized OS at the cluster's GKE version, held by a maintenance "
        "exclusion (docs/gcp-foundation.md); node_image is a Karpenter AMI alias on AWS",
        "encryption.ebs_default": "it is the AWS account's EBS setting; GKE boot disks and volumes are encrypted "
        "with the deployment's Cloud KMS keys already",
        "network.nat_gateways": "Cloud NAT is regional: one NAT serves every zone",
    }
    stack_program = "stacks.gcp.program:program"
    stack_extra = "gcp"  # pulumi_gcp comes with the gcp extra
    provider_sdk = "pulumi-gcp"

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None

    def node_allocatable(self, instance: InstanceType) -> NodeAllocatable:
        # GKE Standard's reservations ("Plan GKE node sizes"); the node pool has one machine type
        return gke_allocatable(instance)

    def provider_managed_key(self, key: str) -> str | None:
        # Google-managed encryption keys are Google's: you cannot revoke them, rotate them on your schedule or see
        # their use in your audit logs, and GKE secrets encryption and CMEK buckets take a Cloud KMS key only.
        if key.strip().lower() in GOOGLE_MANAGED:
            return (
                f"{key!r} is Google-managed encryption: Google holds that key, so you cannot revoke it, rotate it or "
                "audit its use, and GKE secrets encryption and CMEK buckets need a Cloud KMS key of yours"
            )
        if "/cryptoKeyVersions/" in key:
            return f"{key!r} is a key version: GKE, Compute Engine and Cloud Storage take the key, and rotate it"
        return None

    def preflight(self, need: CapacityNeed) -> PreflightReport:
        """Credentials, the GPU's zones in the region and the GPU quotas (byoc/clouds/gcp_preflight.py)."""
        from byoc.clouds.gcp_preflight import preflight

        return preflight(need)

    def sweep(self, target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
        """What is left labelled byoc-deployment=<name> (or named after it) once the stack is destroyed
        (byoc/clouds/gcp_sweep.py)."""
        from byoc.clouds.gcp_sweep import sweep

        return sweep(target, delete, **options)
