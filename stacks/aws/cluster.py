"""The EKS cluster: private API endpoint by default, secrets envelope-encrypted with the platform key, all
control-plane logs on, API access entries, EKS Pod Identity, managed add-ons, and a small on-demand system node
group. It also yields the Kubernetes provider the rest of the program uses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from byoc.catalogs import load_catalog
from byoc.names import KUBERNETES_DEPLOYMENT_LABEL, resource_name
from stacks.aws.context import AwsContext
from stacks.aws.identities import Identities
from stacks.aws.network import Network
from stacks.aws.weights import ADDON as MOUNTPOINT_ADDON
from stacks.aws.weights import ROLE as MOUNTPOINT_ROLE
from stacks.aws.weights import SERVICE_ACCOUNT as MOUNTPOINT_SA

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
# IMDSv2 only, and a hop limit of 1 so that pods (one network hop further) cannot read node credentials: pods get
# their own identities through EKS Pod Identity.
IMDS_HOP_LIMIT = 1


def kubeconfig(cluster: aws.eks.Cluster, region: str) -> pulumi.Output[str]:
    """A kubeconfig that authenticates with `aws eks get-token` (the caller's AWS credentials)."""

    def render(values: list[Any]) -> str:
        name, endpoint, ca = values
        user = {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "aws",
                "args": ["eks", "get-token", "--cluster-name", name, "--region", region, "--output", "json"],
            }
        }
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca}}],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
                "current-context": name,
                "users": [{"name": name, "user": user}],
            }
        )

    return pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(render)


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    arn: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    provider: k8s.Provider
    ready: list[pulumi.Resource]

    def __init__(self, ctx: AwsContext, network: Network, identities: Identities, key_arn: pulumi.Input[str]) -> None:
        name = ctx.name
        deployment = ctx.deployment
        platform = load_catalog().kubernetes["eks"]
        super().__init__("byoc:aws:Cluster", f"{name}-cluster", None, pulumi.ResourceOptions(provider=ctx.provider))
        cluster_name = deployment.cluster_name
        endpoint = deployment.network.endpoint

        # Created before the cluster so that EKS writes into an encrypted group with a retention, not its own.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane",
            name=f"/aws/eks/{cluster_name}/cluster",
            retention_in_days=ctx.log_retention_days,
            kms_key_id=key_arn,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        cluster = aws.eks.Cluster(
            f"{name}-eks",
            name=cluster_name,
            version=platform["version"],
            role_arn=identities.roles["cluster"].arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=network.private_subnet_ids,
                endpoint_private_access=True,
                endpoint_public_access=endpoint != "private",
                # "allowlist": only these CIDRs; "public": open, as the user asked explicitly.
                public_access_cidrs=(
                    deployment.network.allowed_cidrs
                    if endpoint == "allowlist"
                    else ["0.0.0.0/0"]
                    if endpoint == "public"
                    else None
                ),
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key_arn), resources=["secrets"]
            ),
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",  # access entries only; no aws-auth ConfigMap
                bootstrap_cluster_creator_admin_permissions=False,  # the admin is an explicit access entry below
            ),
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
            tags=ctx.tags(),
            opts=ctx.opts(self, depends_on=[log_group]),
        )
        # Karpenter finds the cluster security group for GPU nodes by this tag.
        aws.ec2.Tag(
            f"{name}-cluster-sg-discovery",
            resource_id=cluster.vpc_config.cluster_security_group_id,
            key="karpenter.sh/discovery",
            value=cluster_name,
            opts=ctx.opts(self),
        )

        admin = aws.eks.AccessEntry(
            f"{name}-admin",
            cluster_name=cluster.name,
            principal_arn=ctx.caller_arn,
            type="STANDARD",
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        admin_policy = aws.eks.AccessPolicyAssociation(
            f"{name}-admin",
            cluster_name=cluster.name,
            principal_arn=admin.principal_arn,
            policy_arn=CLUSTER_ADMIN_POLICY,
            access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
            opts=ctx.opts(self),
        )
        # GPU nodes launched by Karpenter join through this entry (managed node groups create theirs).
        aws.eks.AccessEntry(
            f"{name}-gpu-nodes",
            cluster_name=cluster.name,
            principal_arn=identities.roles["gpu_nodes"].arn,
            type="EC2_LINUX",
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )

        # Networking and identity add-ons come before the nodes, the rest after (they need nodes to run on).
        before_nodes = [
            self._addon(ctx, cluster, "vpc-cni", configuration={"enableNetworkPolicy": "true"}),
            self._addon(ctx, cluster, "eks-pod-identity-agent"),
            self._addon(ctx, cluster, "kube-proxy"),
        ]
        nodes = self._system_nodes(ctx, cluster, identities, key_arn, platform["system_nodes"], before_nodes)
        after_nodes = [
            self._addon(ctx, cluster, "coredns", depends_on=[nodes]),
            self._addon(
                ctx,
                cluster,
                "aws-ebs-csi-driver",
                depends_on=[nodes],
                pod_identity=[
                    aws.eks.AddonPodIdentityAssociationArgs(
                        role_arn=identities.roles["ebs_csi"].arn, service_account="ebs-csi-controller-sa"
                    )
                ],
            ),
        ]
        if MOUNTPOINT_ROLE in identities.roles:
            # cold_start.weights_cache node_cache: the weights shared by each GPU node (stacks/aws/weights.py)
            after_nodes.append(
                self._addon(
                    ctx,
                    cluster,
                    MOUNTPOINT_ADDON,
                    depends_on=[nodes],
                    pod_identity=[
                        aws.eks.AddonPodIdentityAssociationArgs(
                            role_arn=identities.roles[MOUNTPOINT_ROLE].arn, service_account=MOUNTPOINT_SA
                        )
                    ],
                )
            )

        self.name = cluster.name
        self.arn = cluster.arn
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.kubeconfig = pulumi.Output.secret(kubeconfig(cluster, ctx.region))
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[admin_policy, nodes]),
        )
        self.ready = [nodes, *after_nodes]
        self._default_storage_class(ctx, key_arn, after_nodes[1])  # after the EBS CSI driver
        self.register_outputs({"name": cluster.name, "endpoint": cluster.endpoint})

    def _addon(
        self,
        ctx: AwsContext,
        cluster: aws.eks.Cluster,
        addon: str,
        configuration: dict[str, Any] | None = None,
        depends_on: list[pulumi.Resource] | None = None,
        pod_identity: list[aws.eks.AddonPodIdentityAssociationArgs] | None = None,
    ) -> aws.eks.Addon:
        # No addon_version: EKS installs the default version for the cluster's Kubernetes version.
        return aws.eks.Addon(
            f"{ctx.name}-{addon}",
            cluster_name=cluster.name,
            addon_name=addon,
            configuration_values=json.dumps(configuration) if configuration else None,
            pod_identity_associations=pod_identity,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            tags=ctx.tags(),
            opts=ctx.opts(self, depends_on=depends_on or []),
        )

    def _system_nodes(
        self,
        ctx: AwsContext,
        cluster: aws.eks.Cluster,
        identities: Identities,
        key_arn: pulumi.Input[str],
        size: dict[str, Any],
        depends_on: Sequence[pulumi.Resource],
    ) -> aws.eks.NodeGroup:
        name = ctx.name
        template = aws.ec2.LaunchTemplate(
            f"{name}-system-nodes",
            name=resource_name(name, "system-nodes"),
            description="byoc system nodes: IMDSv2 only, encrypted root volume",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=IMDS_HOP_LIMIT,
                instance_metadata_tags="disabled",
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=size["disk_gib"],
                        volume_type="gp3",
                        encrypted="true",
                        kms_key_id=key_arn,
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(
                    resource_type=kind, tags=ctx.tags(Name=resource_name(name, "system"))
                )
                for kind in ("instance", "volume")
            ],
            update_default_version=True,
            tags=ctx.tags(),
            opts=ctx.opts(self),
        )
        return aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster.name,
            node_group_name=resource_name(name, "system"),
            node_role_arn=identities.roles["nodes"].arn,
            subnet_ids=cluster.vpc_config.subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            instance_types=[size["instance_type"]],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                desired_size=size["desired"], min_size=size["min"], max_size=size["max"]
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            labels={"byoc.dev/pool": "system"},
            tags=ctx.tags(),
            opts=ctx.opts(self, depends_on=list(depends_on)),
        )

    def _default_storage_class(self, ctx: AwsContext, key_arn: pulumi.Input[str], csi: pulumi.Resource) -> None:
        k8s.storage.v1.StorageClass(
            f"{ctx.name}-gp3-encrypted",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="byoc-gp3-encrypted",
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
                labels={"app.kubernetes.io/managed-by": "byoc", KUBERNETES_DEPLOYMENT_LABEL: ctx.name},
            ),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true", "kmsKeyId": key_arn},
            reclaim_policy="Delete",
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[csi]),
        )
