"""The GCP foundation as one function of a Deployment: what `byoc plan` records offline and `byoc up` runs live."""

from __future__ import annotations

from typing import Any, cast

import pulumi

from byoc.resolve import Deployment
from stacks.gcp.artifacts import ArtifactStore
from stacks.gcp.audit import AuditTrail
from stacks.gcp.capacity import NODE_POOL, GpuCapacity
from stacks.gcp.cluster import Cluster
from stacks.gcp.context import make_context
from stacks.gcp.identities import Identities
from stacks.gcp.keys import Keys
from stacks.gcp.network import Network
from stacks.gcp.replication import ArtifactReplication, replicates
from stacks.gcp.store import LimitsStore
from stacks.gcp.weights import GkeWeights, shares_weights
from stacks.k8s.serving import Foundation, ServingStack, SharedStore
from stacks.multi_region import CIDR_OUTPUT, LB_ADDRESS_OUTPUT, REGION_OUTPUT

# The gateway's Service becomes an internal passthrough Network Load Balancer: reachable from the VPC only
# (GKE docs, "Create an internal load balancer").
INTERNAL_LOAD_BALANCER = {"networking.gke.io/load-balancer-type": "Internal"}
# A multi-region deployment's gateways are reached from the other regions (the peers' spill-over, clients near
# another region): an internal load balancer answers clients of its own region only unless global access is on
# (GKE docs, "LoadBalancer Service parameters": networking.gke.io/internal-load-balancer-allow-global-access).
GLOBAL_ACCESS = {"networking.gke.io/internal-load-balancer-allow-global-access": "true"}
# Workload Identity: the Kubernetes service account acts as this Google service account.
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"

# Workload Identity: pods get tokens from the GKE metadata server, at 169.254.169.254:80 on Dataplane V2 clusters
# (stacks/gcp/cluster.py); a pod under an egress NetworkPolicy must be let through to it (GKE docs, "Use Workload
# Identity Federation for GKE": network policy).
METADATA_SERVER_EGRESS = [
    {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}
]


def program(deployment: Deployment) -> dict[str, Any]:
    ctx = make_context(deployment)
    identities = Identities(ctx)
    keys = Keys(ctx)
    network = Network(ctx)
    store = ArtifactStore(ctx, keys.key_ids, keys.grants)
    trail = AuditTrail(ctx, keys.key_ids["logs"], keys.grants["logs"], store.log_bucket)
    cluster = Cluster(ctx, network, identities, keys)
    capacity = GpuCapacity(ctx, cluster, network, identities, keys)
    identities.bind_service_accounts(ctx, cluster.cluster)
    identities.grant_bucket_access(ctx, store.bucket_name)
    limits = LimitsStore(ctx, network, keys) if deployment.gateway.store == "managed" else None
    # cold_start.weights_cache node_cache: a Hyperdisk ML volume per zone of the pool (stacks/gcp/weights.py)
    shared_weights = (
        GkeWeights(ctx, cluster, network, identities, keys, store.bucket_name, capacity.zones)
        if shares_weights(deployment)
        else None
    )
    # a multi-region deployment's primary copies the model it builds to the other regions' buckets: replication is
    # in place before the build Job writes (cross-bucket replication copies only what is written after)
    replication = ArtifactReplication(ctx, store.bucket_name).jobs if replicates(deployment) else []
    serving = ServingStack(
        deployment,
        cluster.provider,
        Foundation(
            artifact_root=pulumi.Output.concat("gs://", store.bucket_name),
            # the pool by name (GKE labels every node with it) and its GPU model, which the pool's template carries
            gpu_node_selector={
                "cloud.google.com/gke-nodepool": NODE_POOL,
                "cloud.google.com/gke-accelerator": capacity.accelerator,
            },
            # No NVIDIA GPU Operator: GKE installs the driver (the pool's gpu_driver_installation_config), configures
            # containerd for it and runs its own device plugin, which advertises nvidia.com/gpu and mounts the driver
            # into GPU containers. The operator's operands would need the `nvidia` runtime class its toolkit adds,
            # which GKE supports only with GKE's driver installation and device plugin turned off (GKE docs, "Manage
            # the GPU stack with the NVIDIA GPU Operator"). GPU metrics come from GKE's managed DCGM exporter.
            gpu_operator_values=None,
            vpc_cidr=deployment.network.cidr,
            load_balancer_annotations=INTERNAL_LOAD_BALANCER | (GLOBAL_ACCESS if deployment.multi_region else {}),
            # A multi-region deployment's private entry name fails over on the health Cloud DNS reads of the load
            # balancer's backends (stacks/gcp/global_layer.py). With Local, a node is a healthy backend only while it
            # runs a ready gateway pod (its health check node port answers for the pods on that node); with Cluster
            # every node answers healthy whatever the gateway's state (GKE docs, "LoadBalancer Service concepts":
            # externalTrafficPolicy and health checks). GKE subsetting (stacks/gcp/cluster.py) keeps only those nodes
            # in the load balancer's backends, so Cloud DNS's share of healthy backends is the gateway's.
            external_traffic_policy="Local" if deployment.multi_region else None,
            build_env={
                # the builder names the artifact key on every object it writes (the bucket refuses other keys)
                "BYOC_ARTIFACT_KMS_KEY": keys.key_ids["artifacts"],
                # hf:// sources come from this mirror in the bucket (sources/hf/<org>/<name>[/<revision>])
                "BYOC_HF_MIRROR": pulumi.Output.concat("gs://", store.bucket_name, "/sources/hf"),
            },
            # (Outputs, which Pulumi resolves inside the ServiceAccount's metadata)
            service_account_annotations=cast(
                dict[str, dict[str, str]],
                {role: {WORKLOAD_IDENTITY_ANNOTATION: identities.email(role)} for role in deployment.service_accounts},
            ),
            store=SharedStore(limits.url, limits.password, limits.ca_pem, limits.port, limits.egress_cidrs)
            if limits
            else None,
            depends_on=[*cluster.ready, capacity, *replication],
            artifact_key=keys.key_ids["artifacts"],
            identity_egress=METADATA_SERVER_EGRESS,
            node_weights=shared_weights.volume if shared_weights is not None else None,
        ),
    )
    outputs: dict[str, Any] = {
        REGION_OUTPUT: deployment.region,
        "project": ctx.project,
        "cluster_name": cluster.name,
        "kubeconfig": cluster.kubeconfig,
        "network_id": network.network_id,
        "artifact_bucket": store.bucket_name,
        "audit_log_bucket": trail.bucket_name,
        "secrets_key_id": keys.key_ids["secrets"],
        "disks_key_id": keys.key_ids["disks"],
        "artifact_key_id": keys.key_ids["artifacts"],
        "logs_key_id": keys.key_ids["logs"],
        "builder_service_account": identities.email("builder"),
        "serving_service_account": identities.email("serving"),
        "gpu_node_pool": capacity.node_pool,
        "gateway_service": serving.gateway_service,
        "artifact": serving.artifact_uri,
    }
    if limits:
        outputs["gateway_store"] = limits.url
        outputs["store_key_id"] = keys.key_ids["store"]
    if deployment.multi_region:
        # what the global layer reads of this region (stacks/gcp/global_layer.py): the network to peer and to make
        # the private zone visible to, and the gateway's internal load balancer (its forwarding rule's address,
        # which the zone's health-checked records name)
        outputs |= {
            CIDR_OUTPUT: deployment.network.cidr,
            "network_self_link": network.self_link,
            LB_ADDRESS_OUTPUT: serving.gateway_lb_address,
        }
    return outputs
