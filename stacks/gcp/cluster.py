"""The GKE Standard cluster: regional, private nodes, a private control-plane endpoint (or master authorized
networks from the spec), Workload Identity, Shielded nodes, Dataplane V2, a release channel with the minor version
held, secrets encrypted with the customer key, system and workload logging, and a system node pool. It also yields
the Kubernetes provider the rest of the program uses."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from byoc.catalogs import load_catalog
from byoc.clouds.gcp import MAX_PODS_PER_NODE
from byoc.names import KUBERNETES_DEPLOYMENT_LABEL
from byoc.resolve import Deployment
from stacks.gcp.context import GcpContext
from stacks.gcp.identities import Identities
from stacks.gcp.keys import Keys
from stacks.gcp.network import PODS_RANGE, SERVICES_RANGE, Network

LOGGED_COMPONENTS = ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "WORKLOADS"]
# DCGM: GKE's managed dcgm-exporter on GPU nodes (GPU utilisation and memory), which needs Managed Service for
# Prometheus (GKE docs, "Collect and view DCGM metrics").
MONITORED_COMPONENTS = ["SYSTEM_COMPONENTS", "APISERVER", "CONTROLLER_MANAGER", "SCHEDULER", "DCGM"]
# Maintenance on weekends, 4 hours from 01:00 UTC (RFC 5545 recurrence, as GKE takes it).
MAINTENANCE_WINDOW = ("2026-01-03T01:00:00Z", "2026-01-03T05:00:00Z", "FREQ=WEEKLY;BYDAY=SA,SU")
# The date from which the minor version is held (a fixed time: a moving one would show a change on every preview).
MINOR_VERSION_HELD_FROM = "2026-11-01T00:00:00Z"
COMPUTE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"  # access is narrowed by IAM, not by scopes
# Binary Authorization: GKE evaluates the project's one policy at admission, and an image no allowlist pattern
# matches is refused and audit-logged (Binary Authorization docs, "Policy YAML reference").
ADMISSION_EVALUATION = "PROJECT_SINGLETON_POLICY_ENFORCE"
DEFAULT_ADMISSION = ("ALWAYS_DENY", "ENFORCED_BLOCK_AND_AUDIT_LOG")
DOCKER_HUB = "docker.io"  # where Kubernetes pulls an image whose reference names no registry


def image_pattern(reference: str) -> str:
    """An image reference as Binary Authorization matches it: registry/path/to/image, the reference's own tag or
    digest kept (an exact pattern); a reference without a registry host is Docker Hub's, as Kubernetes pulls it."""
    first, _, rest = reference.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return reference
    return f"{DOCKER_HUB}/{reference}" if rest else f"{DOCKER_HUB}/library/{reference}"


def admitted_images(deployment: Deployment) -> list[str]:
    """What the cluster may run besides GKE's own system images: byoc's pinned images exactly (by digest where
    pinned) and the repositories of the charts it installs (byoc/catalogs/images.yaml `chart_images`)."""
    charts = load_catalog().images["chart_images"]
    # the charts the serving stack installs on GKE (stacks/k8s/serving.py): KEDA always, kube-prometheus-stack
    # unless the spec names its own Prometheus, no GPU Operator (GKE runs the GPU stack); a test ties the two
    installed = ["keda"] + (["kube_prometheus_stack"] if deployment.monitoring.prometheus_url is None else [])
    own = [image_pattern(deployment.images[role]) for role in ("serving", "runtime")]
    return sorted({*own, *(pattern for chart in installed for pattern in charts[chart])})


def kubeconfig(cluster: gcp.container.Cluster) -> pulumi.Output[str]:
    """A kubeconfig that authenticates with gke-gcloud-auth-plugin (the caller's Google credentials)."""

    def render(values: list[Any]) -> str:
        name, endpoint, ca = values
        user = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "gke-gcloud-auth-plugin",
                "installHint": "gcloud components install gke-gcloud-auth-plugin",
                "provideClusterInfo": True,
            }
        }
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": name, "cluster": {"server": f"https://{endpoint}", "certificate-authority-data": ca}}
                ],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
                "current-context": name,
                "users": [{"name": name, "user": user}],
            }
        )

    return pulumi.Output.all(cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate).apply(render)


def hardened_node_config(
    ctx: GcpContext, service_account: pulumi.Input[str], disk_key: pulumi.Input[str], network_tag: str, **settings: Any
) -> gcp.container.NodePoolNodeConfigArgs:
    """What every byoc node has: its own service account, a CMEK boot disk, Shielded VM with secure boot, the GKE
    metadata server (pods never see node credentials), no legacy metadata endpoints, COS with containerd."""
    return gcp.container.NodePoolNodeConfigArgs(
        service_account=service_account,
        oauth_scopes=[COMPUTE_SCOPE],
        boot_disk_kms_key=disk_key,
        image_type=ctx.platform["image_type"],
        shielded_instance_config=gcp.container.NodePoolNodeConfigShieldedInstanceConfigArgs(
            enable_secure_boot=True, enable_integrity_monitoring=True
        ),
        workload_metadata_config=gcp.container.NodePoolNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
        metadata={"disable-legacy-endpoints": "true"},
        tags=[network_tag],  # the firewall rules' target
        resource_labels=ctx.labels(),
        **settings,
    )


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    id: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: list[pulumi.Resource]
    cluster: gcp.container.Cluster

    def __init__(self, ctx: GcpContext, network: Network, identities: Identities, keys: Keys) -> None:
        name = ctx.name
        deployment = ctx.deployment
        platform = ctx.platform
        super().__init__("byoc:gcp:Cluster", f"{name}-cluster", None, pulumi.ResourceOptions(provider=ctx.provider))
        endpoint = deployment.network.endpoint
        # "private": only the VPC reaches the private endpoint; "allowlist": the VPC, and a public endpoint for these
        # CIDRs only (as EKS keeps its private endpoint beside the allow-listed public one); "public": open, as the
        # user asked explicitly.
        authorized = {
            "private": [deployment.network.cidr],
            "allowlist": [deployment.network.cidr, *deployment.network.allowed_cidrs],
            "public": ["0.0.0.0/0"],
        }[endpoint]
        start, end, recurrence = MAINTENANCE_WINDOW
        admission = self._admission_policy(ctx)
        security_group = deployment.spec.access.security_group
        cluster = gcp.container.Cluster(
            f"{name}-gke",
            name=deployment.cluster_name,
            description=f"byoc {name}",
            location=ctx.region,  # regional: the control plane and system nodes in three zones
            network=network.network_id,
            subnetwork=network.subnet_id,
            networking_mode="VPC_NATIVE",
            ip_allocation_policy=gcp.container.ClusterIpAllocationPolicyArgs(
                cluster_secondary_range_name=PODS_RANGE,
                services_secondary_range_name=SERVICES_RANGE,
                stack_type="IPV4",
            ),
            default_max_pods_per_node=MAX_PODS_PER_NODE,
            private_cluster_config=gcp.container.ClusterPrivateClusterConfigArgs(
                enable_private_nodes=True,
                enable_private_endpoint=endpoint == "private",
                master_ipv4_cidr_block=network.addresses.control_plane,
            ),
            master_authorized_networks_config=gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
                cidr_blocks=[
                    gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                        cidr_block=cidr, display_name=f"byoc {endpoint} {index}"
                    )
                    for index, cidr in enumerate(authorized)
                ],
                gcp_public_cidrs_access_enabled=False,  # not every Google Cloud address, only these
            ),
            master_auth=gcp.container.ClusterMasterAuthArgs(
                client_certificate_config=gcp.container.ClusterMasterAuthClientCertificateConfigArgs(
                    issue_client_certificate=False  # IAM only
                )
            ),
            # Set explicitly: the default of both changed over GKE's life, and a change replaces the cluster.
            datapath_provider="ADVANCED_DATAPATH",  # Dataplane V2: NetworkPolicy enforced by eBPF
            enable_shielded_nodes=True,
            enable_intranode_visibility=True,  # pod-to-pod traffic on one node reaches the flow logs too
            # a multi-region deployment: the gateway's internal load balancer has GCE_VM_IP NEG backends of only the
            # nodes that run a gateway pod (externalTrafficPolicy Local), whose health Cloud DNS's health-checked
            # entry name reads: it counts an internal passthrough load balancer healthy while at least 20% of its
            # backends are (Cloud DNS docs, "DNS routing policies and health checks"), a share all the cluster's
            # nodes as backends would dilute
            enable_l4_ilb_subsetting=True if ctx.deployment.multi_region else None,
            enable_legacy_abac=False,
            # Google Groups for RBAC: RoleBindings may name the groups nested in gke-security-groups@<domain>
            authenticator_groups_config=(
                gcp.container.ClusterAuthenticatorGroupsConfigArgs(security_group=security_group)
                if security_group
                else None
            ),
            # only the images the project's policy admits run (byoc's own, its charts', GKE's system images)
            binary_authorization=gcp.container.ClusterBinaryAuthorizationArgs(evaluation_mode=ADMISSION_EVALUATION),
            workload_identity_config=gcp.container.ClusterWorkloadIdentityConfigArgs(
                workload_pool=pulumi.Output.concat(ctx.project, ".svc.id.goog")
            ),
            database_encryption=gcp.container.ClusterDatabaseEncryptionArgs(
                state="ENCRYPTED", key_name=keys.key_ids["secrets"]
            ),
            release_channel=gcp.container.ClusterReleaseChannelArgs(channel=platform["release_channel"]),
            min_master_version=platform["version"],
            maintenance_policy=gcp.container.ClusterMaintenancePolicyArgs(
                recurring_window=gcp.container.ClusterMaintenancePolicyRecurringWindowArgs(
                    start_time=start, end_time=end, recurrence=recurrence
                ),
                maintenance_exclusions=[
                    gcp.container.ClusterMaintenancePolicyMaintenanceExclusionArgs(
                        exclusion_name="byoc-hold-minor-version",
                        start_time=MINOR_VERSION_HELD_FROM,
                        exclusion_options=gcp.container.ClusterMaintenancePolicyMaintenanceExclusionExclusionOptionsArgs(
                            scope="NO_MINOR_UPGRADES", end_time_behavior="UNTIL_END_OF_SUPPORT"
                        ),
                    )
                ],
            ),
            logging_config=gcp.container.ClusterLoggingConfigArgs(enable_components=LOGGED_COMPONENTS),
            monitoring_config=gcp.container.ClusterMonitoringConfigArgs(
                enable_components=MONITORED_COMPONENTS,
                # for the DCGM metrics; set explicitly (its default changed: on for new clusters since GKE 1.27)
                managed_prometheus=gcp.container.ClusterMonitoringConfigManagedPrometheusArgs(enabled=True),
            ),
            addons_config=gcp.container.ClusterAddonsConfigArgs(
                http_load_balancing=gcp.container.ClusterAddonsConfigHttpLoadBalancingArgs(disabled=False),
                gce_persistent_disk_csi_driver_config=(
                    gcp.container.ClusterAddonsConfigGcePersistentDiskCsiDriverConfigArgs(enabled=True)
                ),
                # Dataplane V2 enforces NetworkPolicy itself; the Calico add-on must stay off with it
                network_policy_config=gcp.container.ClusterAddonsConfigNetworkPolicyConfigArgs(disabled=True),
            ),
            # The default pool is removed once the cluster exists; until then it is as hardened as the others.
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config=self._default_pool_config(ctx, identities, keys, network),
            # `destroy` must be able to delete it (Pulumi's own `protect` is the place for a guard, per stack)
            deletion_protection=False,
            resource_labels=ctx.labels(),
            # the policy first: a cluster enforcing the project's default policy would admit anything meanwhile
            opts=ctx.opts(self, depends_on=[*keys.grants["secrets"], *keys.grants["disks"], admission]),
        )
        system = platform["system_nodes"]
        system_pool = gcp.container.NodePool(
            f"{name}-system",
            name="system",
            cluster=cluster.id,
            location=ctx.region,
            initial_node_count=system["min_per_zone"],
            autoscaling=gcp.container.NodePoolAutoscalingArgs(
                min_node_count=system["min_per_zone"], max_node_count=system["max_per_zone"]
            ),
            management=gcp.container.NodePoolManagementArgs(auto_repair=True, auto_upgrade=True),
            upgrade_settings=gcp.container.NodePoolUpgradeSettingsArgs(
                strategy="SURGE", max_surge=1, max_unavailable=0
            ),
            node_config=hardened_node_config(
                ctx,
                identities.email("nodes"),
                keys.key_ids["disks"],
                network.network_tag,
                machine_type=system["machine_type"],
                disk_size_gb=system["disk_gib"],
                disk_type=system["disk_type"],
                labels={"byoc.dev/pool": "system"},
            ),
            opts=ctx.opts(self, depends_on=keys.grants["disks"]),
        )

        self.cluster = cluster
        self.name = cluster.name
        self.id = cluster.id
        self.kubeconfig = pulumi.Output.secret(kubeconfig(cluster))
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[system_pool]),
        )
        self.ready = [system_pool]
        self._default_storage_class(ctx, keys.key_ids["disks"])
        self.register_outputs({"name": cluster.name, "endpoint": cluster.endpoint})

    def _admission_policy(self, ctx: GcpContext) -> gcp.binaryauthorization.Policy:
        """The project's Binary Authorization policy: GKE's system images (Google's global policy), byoc's pinned
        images and its charts' repositories are admitted; anything else is refused and audit-logged. A project has
        one policy: this one replaces what the project had (docs/gcp-foundation.md)."""
        evaluation, enforcement = DEFAULT_ADMISSION
        return gcp.binaryauthorization.Policy(
            f"{ctx.name}-admission",
            project=ctx.project,
            description=f"byoc {ctx.name}: only byoc's pinned images, its charts' images and GKE system images",
            global_policy_evaluation_mode="ENABLE",
            admission_whitelist_patterns=[
                gcp.binaryauthorization.PolicyAdmissionWhitelistPatternArgs(name_pattern=pattern)
                for pattern in admitted_images(ctx.deployment)
            ],
            default_admission_rule=gcp.binaryauthorization.PolicyDefaultAdmissionRuleArgs(
                evaluation_mode=evaluation, enforcement_mode=enforcement
            ),
            opts=ctx.opts(self),
        )

    @staticmethod
    def _default_pool_config(
        ctx: GcpContext, identities: Identities, keys: Keys, network: Network
    ) -> gcp.container.ClusterNodeConfigArgs:
        return gcp.container.ClusterNodeConfigArgs(
            service_account=identities.email("nodes"),
            oauth_scopes=[COMPUTE_SCOPE],
            boot_disk_kms_key=keys.key_ids["disks"],
            image_type=ctx.platform["image_type"],
            shielded_instance_config=gcp.container.ClusterNodeConfigShieldedInstanceConfigArgs(
                enable_secure_boot=True, enable_integrity_monitoring=True
            ),
            workload_metadata_config=gcp.container.ClusterNodeConfigWorkloadMetadataConfigArgs(mode="GKE_METADATA"),
            metadata={"disable-legacy-endpoints": "true"},
            tags=[network.network_tag],
            resource_labels=ctx.labels(),
        )

    def _default_storage_class(self, ctx: GcpContext, key_id: pulumi.Input[str]) -> None:
        k8s.storage.v1.StorageClass(
            f"{ctx.name}-pd-encrypted",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="byoc-pd-encrypted",
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
                labels={"app.kubernetes.io/managed-by": "byoc", KUBERNETES_DEPLOYMENT_LABEL: ctx.name},
            ),
            provisioner="pd.csi.storage.gke.io",
            parameters={
                "type": "pd-balanced",
                "disk-encryption-kms-key": key_id,
                # the PD CSI driver's `labels` parameter ("key1=value1,key2=value2") labels every disk it creates,
                # so the leftover sweep finds volumes by the deployment's label (byoc/clouds/gcp_sweep.py)
                "labels": ",".join(f"{k}={v}" for k, v in ctx.labels().items()),
            },
            reclaim_policy="Delete",
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
