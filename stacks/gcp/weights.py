"""The weights shared by the GPU nodes on GKE (cold_start.weights_cache node_cache): a Hyperdisk ML volume in each
zone of the GPU pool, filled once per build from the artifact's prefix by the GKE Volume Populator, attached
read-only by every GPU node of the zone (the StorageClass, data source and claim: stacks/k8s/weights.py).

Sources:
- GKE docs, "Automate data transfer from Cloud Storage to a Hyperdisk ML volume using GKE Volume Populator":
  GKE 1.33.2-gke.4780000 or later; Workload Identity Federation for GKE, the Kubernetes service account that the
  `GCPDataSource` names granted roles/storage.objectViewer on the bucket as the principal
  `principal://iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<project>.svc.id.goog/
  subject/ns/<namespace>/sa/<name>`; the transfer Job runs on nodes of the compute class `gcs-to-hdml-compute-class`,
  which on a Standard cluster without node auto-provisioning is a node pool labelled and tainted
  `cloud.google.com/compute-class=gcs-to-hdml-compute-class`; a multi-zone StorageClass gets a copy in every zone it
  lists, and the Job completes only when every zone has it.
- GKE docs, "About GKE Volume Populator": a managed component, on by default on Standard and Autopilot clusters, so
  the cluster itself needs no setting beyond Workload Identity and the Compute Engine PD CSI driver, which
  stacks/gcp/cluster.py already turns on (pulumi-gcp's `gcp.container.Cluster` has no field for the populator).
- The PD CSI driver's StorageClass parameters (kubernetes-sigs/gcp-compute-persistent-disk-csi-driver,
  pkg/common/parameters.go): `type`, `provisioned-throughput-on-create`, `disk-encryption-kms-key`, `labels`,
  `enable-multi-zone-provisioning` (one zonal disk per zone of the topology, GKE docs "Accelerate AI/ML data loading
  with Hyperdisk ML").
- CMEK: Compute Engine encrypts the disks through its service agent, service-<number>@compute-system, which
  stacks/gcp/keys.py already grants the deployment's disk key (the key of the GPU nodes' boot disks).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_gcp as gcp

from byoc.catalogs import load_catalog
from byoc.names import KUBERNETES_DEPLOYMENT_LABEL, resource_name
from byoc.resolve import Deployment
from runtime.model_build.plan import build_plan
from stacks.gcp.cluster import Cluster, hardened_node_config
from stacks.gcp.context import GcpContext
from stacks.gcp.identities import Identities
from stacks.gcp.keys import Keys
from stacks.gcp.network import Network

PROVISIONER = "pd.csi.storage.gke.io"
ZONE_LABEL = "topology.gke.io/zone"
DATA_SOURCE = ("datalayer.gke.io/v1", "GCPDataSource")  # the "GCPDataSource" CRD reference
TRANSFER_POOL = "byoc-weights-transfer"
COMPUTE_CLASS_LABEL = "cloud.google.com/compute-class"
READER_ROLE = "roles/storage.objectViewer"  # the guide's role: storage.objects.get and .list, nothing else of note


def shares_weights(deployment: Deployment) -> bool:
    """Whether the plan renders the zone-shared weights (cold_start.weights_cache node_cache)."""
    caches = deployment.caches
    return caches is not None and caches.weights.shared_by_node


def populator_account(deployment: Deployment) -> str:
    """The Kubernetes service account the GCPDataSource names (the transfer Job's identity)."""
    return resource_name(deployment.name, "weights-populator")


def artifact_only(bucket: pulumi.Input[str], prefix: str) -> pulumi.Output[str]:
    """A CEL condition: objects under the artifact's prefix, and listings whose prefix lies under it.

    An object request's resource is the object (projects/_/buckets/B/objects/NAME); a list request's resource is
    the bucket, so the listing is granted on the request's `storage.googleapis.com/objectListPrefix` attribute
    instead (IAM docs, "Resource attributes for Cloud Storage" and "API attributes"), never bucket-wide."""
    return pulumi.Output.concat(
        'resource.name.startsWith("projects/_/buckets/',
        bucket,
        "/objects/",
        prefix,
        '/") || api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("',
        prefix,
        '/")',
    )


class GkeWeights(pulumi.ComponentResource):
    """The populator's bucket grant and the transfer Job's node pool; `volume` is what the serving stack renders."""

    volume: Any  # stacks.k8s.weights.PopulatedWeightsVolume

    def __init__(
        self,
        ctx: GcpContext,
        cluster: Cluster,
        network: Network,
        identities: Identities,
        keys: Keys,
        bucket: pulumi.Output[str],
        zones: pulumi.Input[list[str]],
    ) -> None:
        from stacks.k8s.weights import PopulatedWeightsVolume

        name = ctx.name
        deployment = ctx.deployment
        super().__init__("byoc:gcp:Weights", f"{name}-weights", None, pulumi.ResourceOptions(provider=ctx.provider))
        hdml: dict[str, Any] = load_catalog().kubernetes["gke"]["hyperdisk_ml"]
        prefix = build_plan(deployment).artifact_prefix
        account = populator_account(deployment)
        # the transfer Job's Kubernetes service account reads the artifact's prefix, and nothing else of the bucket
        # (Cloud Storage decrypts the CMEK objects through its own service agent: no key grant)
        grant = gcp.storage.BucketIAMMember(
            f"{name}-weights-populator-read",
            bucket=bucket,
            role=READER_ROLE,
            member=pulumi.Output.concat(
                "principal://iam.googleapis.com/projects/",
                ctx.project_number,
                "/locations/global/workloadIdentityPools/",
                ctx.project,
                ".svc.id.goog/subject/ns/",
                deployment.namespace,
                "/sa/",
                account,
            ),
            condition=gcp.storage.BucketIAMMemberConditionArgs(
                title="byoc-weights-populator",
                description=f"only the built artifact: {prefix}/",
                expression=artifact_only(bucket, prefix),
            ),
            opts=ctx.opts(self, depends_on=[cluster.cluster]),  # the workload pool exists with the cluster
        )
        transfer = hdml["transfer"]
        compute_class = str(transfer["compute_class"])
        # The transfer Job's nodes: from zero, one per zone at most (one Job per zone copies into that zone's
        # volume), removed by the cluster autoscaler once the copy is done.
        pool = gcp.container.NodePool(
            f"{name}-weights-transfer",
            name=TRANSFER_POOL,
            cluster=cluster.id,
            location=ctx.region,
            node_locations=zones,
            initial_node_count=0,
            autoscaling=gcp.container.NodePoolAutoscalingArgs(min_node_count=0, max_node_count=1),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            node_config=hardened_node_config(
                ctx,
                identities.email("nodes"),
                keys.key_ids["disks"],
                network.network_tag,
                machine_type=transfer["machine_type"],
                disk_size_gb=transfer["disk_gib"],
                disk_type=transfer["disk_type"],
                labels={
                    COMPUTE_CLASS_LABEL: compute_class,
                    "byoc.dev/pool": "weights-transfer",
                    KUBERNETES_DEPLOYMENT_LABEL: name,
                },
                taints=[
                    gcp.container.NodePoolNodeConfigTaintArgs(
                        key=COMPUTE_CLASS_LABEL, value=compute_class, effect="NO_SCHEDULE"
                    )
                ],
            ),
            opts=ctx.opts(self, depends_on=keys.grants["disks"]),
        )
        self.volume = PopulatedWeightsVolume(
            provisioner=PROVISIONER,
            parameters={
                "type": "hyperdisk-ml",
                "provisioned-throughput-on-create": f"{int(hdml['provisioned_throughput_mib_s'])}Mi",
                "disk-encryption-kms-key": keys.key_ids["disks"],
                "enable-multi-zone-provisioning": "true",
                # the leftover sweep finds the volumes by the deployment's label (byoc/clouds/gcp_sweep.py)
                "labels": ",".join(f"{k}={v}" for k, v in ctx.labels().items()),
            },
            zone_label=ZONE_LABEL,
            zones=zones,
            bucket_root=pulumi.Output.concat("gs://", bucket),
            data_source=DATA_SOURCE,
            service_account=account,
            transfer_compute_class=compute_class,
            transfer_machine_family=str(transfer["machine_family"]),
            depends_on=[grant, pool, *keys.grants["disks"]],
        )
        self.register_outputs({"transfer_pool": pool.name})
