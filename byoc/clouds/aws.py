"""Amazon Web Services: regions, instance types, KMS key ARNs and the live EC2 offerings."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from byoc.caches import ImageCache
from byoc.catalogs import InstanceType, load_catalog
from byoc.clouds.base import AddressRoom, Cloud, LaunchStep, NodeProvisioner, Placement, Refusal
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepReport, SweepTarget
from byoc.errors import ByocError, ByocFailure, ByocWarning
from byoc.rules import DeploymentShape
from byoc.sizing import GIB, KUBELET_DEFAULT_MAX_PODS, DiskPlan, NodeAllocatable, eks_allocatable
from byoc.spec import Spec

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


ZONES = 3  # the VPC spans three zones: a private and a public subnet in each (stacks/aws/network.py)
# Interface endpoints keep these API calls inside the VPC: image pulls (ECR api + dkr), credentials (STS), keys
# (KMS), logs (CloudWatch Logs) and the EC2 API (Karpenter, the VPC CNI). Each takes an address in every private
# subnet.
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "kms", "logs", "ec2")
# What each private subnet gives up before any node: AWS reserves the first four addresses and the last (VPC User
# Guide, "Subnet CIDR blocks"); EKS needs at least six for the control plane's network interfaces (EKS User Guide,
# "Subnet requirements for clusters"); one per interface endpoint; one for the gateway's internal load balancer.
SUBNET_ADDRESSES_TAKEN = 5 + 6 + len(INTERFACE_ENDPOINTS) + 1


def subnet_cidrs(cidr: str) -> tuple[list[str], list[str]]:
    """Three large private subnets (a quarter of the range each) and three small public ones (for NAT and an
    optional load balancer) carved from the last quarter."""
    network = ipaddress.IPv4Network(cidr)
    quarters = list(network.subnets(prefixlen_diff=2))
    public = list(quarters[3].subnets(prefixlen_diff=2))
    return [str(q) for q in quarters[:ZONES]], [str(p) for p in public[:ZONES]]


def node_addresses(enis: int | None, ipv4_per_eni: int | None) -> int:
    """Addresses a node can take from its subnet with the VPC CNI in its default mode (secondary IPs, no prefix
    delegation): every IPv4 address of every interface it can attach, its own and its pods' (the CNI keeps a warm
    interface's addresses allocated before pods use them). Unknown figures: the kubelet's 110 pods and the node."""
    if enis is None or ipv4_per_eni is None:
        return KUBELET_DEFAULT_MAX_PODS + 1
    return enis * ipv4_per_eni


class Aws(Cloud):
    name = "aws"
    title = "AWS"
    key_pattern = re.compile(r"^arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+$")
    key_example = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    stack_program = "stacks.aws.program:program"
    global_stack_program = "stacks.aws.global_layer:program"
    offline_answers = "byoc.clouds.aws_offline"
    provider_sdk = "pulumi-aws"
    # Karpenter launches the GPU nodes from a NodePool that allows every type of placement.instance_types
    # (stacks/aws/capacity.py); its NodeClaims are the instances, which it terminates when the NodePool goes.
    node_provisioner = NodeProvisioner(
        name="Karpenter",
        pool_label="karpenter.sh/nodepool",
        scale_changes={"kubernetes:karpenter.sh/v1:NodePool": None},  # its GPU limit follows max_replicas
        replace_guarded=frozenset(
            {
                "aws:eks/cluster:Cluster",
                "aws:eks/nodeGroup:NodeGroup",
                "kubernetes:karpenter.sh/v1:NodePool",
                "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
            }
        ),
        pools="nodepools.karpenter.sh",
        claims="nodeclaims.karpenter.sh",
        # Karpenter's events (karpenter.sh/docs/concepts/nodeclaims, "NodeClaim example"): Nominated on the pod
        # ("Pod should schedule on: nodeclaim/NAME"), then on the NodeClaim each status condition's transition
        # ("Status condition transitioned, Type: Launched, Status: Unknown -> True, Reason: Launched").
        launch_steps=(
            LaunchStep("Nominated", "Pod", "Karpenter's NodeClaim to launch an EC2 instance"),
            LaunchStep("Launched", "NodeClaim", "the instance to boot and register with the cluster (Registered)"),
            LaunchStep(
                "Registered",
                "NodeClaim",
                "the node to be ready with its GPUs advertised by the device plugin (Initialized)",
            ),
            LaunchStep("Initialized", "NodeClaim", "the scheduler to bind the pod to the new node"),
        ),
        # Karpenter's own FailedScheduling on the pod ("Failed to schedule pod, %s": kubernetes-sigs/karpenter
        # pkg/controllers/provisioning/scheduling/events.go `PodFailedToScheduleEvent`; the kube-scheduler's own
        # FailedScheduling reads "0/N nodes are available") and EC2 having no capacity for a NodeClaim
        # (pkg/controllers/nodeclaim/lifecycle/events.go `InsufficientCapacityErrorEvent`)
        refusals=(
            Refusal("FailedScheduling", "Pod", "Failed to schedule pod"),
            Refusal("InsufficientCapacityError", "NodeClaim"),
        ),
    )
    object_store_scheme = "s3://"
    # EKS: publicAccessCidrs takes at most 40 blocks and refuses private (RFC 1918) ranges (EKS User Guide,
    # "Cluster API server endpoint"; the API answers InvalidParameterException).
    allowed_cidrs_max = 40
    allowed_cidrs_private = False
    private_allowlist_reason = (
        "EKS refuses private ranges in publicAccessCidrs; private networks reach the private endpoint in the VPC"
    )

    unsupported_fields: ClassVar[dict[str, str]] = {
        "access.security_group": "it turns on GKE's Google Groups for RBAC; on EKS people reach the cluster through "
        "access entries (docs/aws-foundation.md)",
        "cold_start.image_disk": "it is a GKE secondary boot disk image; EKS GPU nodes pull with SOCI parallel pull "
        "(nodeadm's FastImagePull) onto the instance store instead (docs/operations.md, 'Cold start')",
    }

    def capacity_blockers(self, cluster: Any, node_pool: str, waiting: list[dict[str, Any]]) -> list[str]:
        """Karpenter's words, about the GPU NodePool `node_pool` and the `waiting` serving pods only, each only while
        nothing newer moved the launch on for the pods it concerns (`NodeProvisioner.launch_progress`: a later
        nomination, another NodeClaim Launched or Registered):
        - a NodeClaim of the pool (label karpenter.sh/nodepool) whose Launched condition failed since the pods were
          made (its lastTransitionTime, else the NodeClaim's creation): False, or Unknown with the launch error's
          reason ("LaunchFailed"; kubernetes-sigs/karpenter pkg/controllers/nodeclaim/lifecycle/launch.go
          `SetUnknownWithReason`);
        - an InsufficientCapacityError event on a NodeClaim of the pool since the pods were made (Karpenter deletes
          a NodeClaim EC2 had no capacity for, so only its event is left: "NodeClaim NAME event: ...", lifecycle
          events.go): the pool read from the NodeClaim's label while it exists, else from its generated name
          (nodeclaimtemplate.go `GenerateName: "<pool>-"`: the pool and five characters);
        - the pods' FailedScheduling from Karpenter ("Failed to schedule pod, %s", provisioning/scheduling/events.go
          `PodFailedToScheduleEvent`): the pool's limits ("all available instance types exceed limits for
          nodepool", "node limits have been exhausted for nodepool", scheduling/scheduler.go), or no pool can take
          the pod ("incompatible with nodepool "NAME", ... no instance type satisfied resources {...}");
        - the pool's NoCompatibleInstanceTypes ("NodePool requirements filtered out all compatible available instance
          types", scheduling/events.go)."""
        from byoc.kube_events import (
            event_time,
            events_about,
            generated_by,
            involved,
            message_of,
            nominations,
            since_any,
        )

        provisioner = self.node_provisioner
        claims: dict[str, dict[str, Any]] = {}
        for claim in cluster.list(provisioner.claims) or []:
            name = (claim.get("metadata") or {}).get("name")
            if isinstance(name, str) and name:
                claims[name] = claim
        events = [e for e in cluster.list("events") or [] if isinstance(e, dict)]
        since = since_any(waiting)
        by_pod = [(pod, events_about(events, [pod])) for pod in waiting]

        def of_pool(claim: str) -> bool:
            if claim in claims:
                labels = (claims[claim].get("metadata") or {}).get("labels") or {}
                return bool(labels.get(provisioner.pool_label) == node_pool)
            return generated_by(claim, f"{node_pool}-")

        def current(when: datetime | None, claim: str | None = None) -> bool:
            """A failure at `when` still holds: no pod it concerns (those nominated for `claim`, else every
            waiting pod) has moved on since."""
            concerned = [pe for _, pe in by_pod if claim is not None and claim in nominations(pe)[0]] or [
                pe for _, pe in by_pod
            ]
            for pod_events in concerned:
                moved = provisioner.launch_progress(pod_events, events, claims, skip_claim=claim)
                if when is None or moved is None or moved <= when:
                    return True
            return False

        reasons: list[str] = []
        for name, claim in sorted(claims.items()):
            if not of_pool(name):
                continue
            failure = launch_failure(claim)
            if failure is None:
                continue
            when, message = failure
            if since is not None and when is not None and when < since:
                continue  # an earlier wake's NodeClaim
            if not current(when, name):
                continue
            if "InsufficientInstanceCapacity" in message or "insufficient capacity" in message.lower():
                reasons.append(f"no capacity in the zone: NodeClaim {name}: {message}")
            else:
                reasons.append(f"NodeClaim {name} not launched: {message}")
        for event in events:
            about = involved(event)
            when = event_time(event)
            if since is not None and when is not None and when < since:
                continue
            message = message_of(event)
            claim = str(about.get("name") or "")
            if about.get("kind") == "NodeClaim" and event.get("reason") == "InsufficientCapacityError":
                if of_pool(claim) and current(when, claim):
                    reasons.append(f"no capacity in the zone: {message}")
            elif (
                about.get("kind") == "NodePool"
                and about.get("name") == node_pool
                and event.get("reason") == "NoCompatibleInstanceTypes"
                and current(when)
            ):
                reasons.append(f"the NodePool {node_pool} can launch no instance type: {message}")
        for _, pod_events in by_pod:
            moved = provisioner.launch_progress(pod_events, events, claims)
            for event in pod_events:
                when = event_time(event)
                if provisioner.refused(event) and (moved is None or when is None or when >= moved):
                    reasons.append(karpenter_refusal(node_pool, message_of(event)))
        return reasons

    def key_region(self, key: str) -> str | None:
        match = self.key_pattern.match(key)
        return match["region"] if match else None

    def local_nvme_gib(self, instance: InstanceType) -> float | None:
        # the instance store, in decimal GB as EC2 and Karpenter count it (byoc/catalogs/instances.yaml)
        return None if instance.local_nvme_gb is None else instance.local_nvme_gb * 1e9 / GIB

    def image_cache(self, spec: Spec, serving_image: str, disk: DiskPlan) -> ImageCache:
        """SOCI parallel pull and unpack (nodeadm's `FastImagePull` feature gate, AL2023, experimental: layers
        download and unpack concurrently instead of one stream at a time; no SOCI index or image rebuild needed),
        only where containerd's store is the instance store: AWS reports pulls slower with it below 600 MiB/s of
        volume throughput, and the gp3 root volume runs at 500 (stacks/aws/capacity.py). byoc does not use an EBS
        snapshot with the image pre-pulled: that is Bottlerocket's data volume (AWS Containers blog, "Reduce
        container startup time on Amazon EKS with Bottlerocket data volume"), while these nodes run AL2023, whose
        containerd moves onto the instance-store RAID0 where a snapshot volume could not be its store."""
        if not spec.cold_start.image_cache:
            return ImageCache("pulled", "cold_start.image_cache is false: each new GPU node pulls the serving image")
        if disk.ephemeral_on != "local_nvme":
            return ImageCache(
                "pulled",
                "each new GPU node pulls the serving image onto its gp3 root volume (500 MiB/s): FastImagePull is "
                "slower than a plain pull below 600 MiB/s, so it stays off",
                how="cold_start.weights_cache: local_ssd on instance types with instance store puts containerd on "
                "the NVMe RAID0, where byoc turns FastImagePull on",
            )
        return ImageCache(
            "fast_image_pull",
            "each new GPU node pulls the serving image with SOCI parallel pull and unpack (nodeadm FastImagePull) "
            "onto the instance-store RAID0",
        )

    def node_allocatable(self, instance: InstanceType) -> NodeAllocatable:
        # nodeadm's kubelet reservations on the memory Karpenter assumes for a type it has not seen yet: a pod that
        # does not fit by Karpenter's reckoning gets no node of that type
        return eks_allocatable(instance)

    def address_room(
        self, cidr: str, shape: DeploymentShape, placement: Placement, pool: tuple[str, ...]
    ) -> AddressRoom | None:
        # Pods take VPC addresses (the VPC CNI) from the subnet of their node's zone, so nodes run out of subnet
        # before anything else, zone by zone: each private subnet is counted on its own, the system nodes spread
        # over the zones as the managed node group spreads them, for the pool's type that holds the fewest replicas.
        private, _ = subnet_cidrs(cidr)
        free = [ipaddress.IPv4Network(s).num_addresses - SUBNET_ADDRESSES_TAKEN for s in private]
        system = load_catalog().kubernetes["eks"]["system_nodes"]
        system_node = node_addresses(system["enis"], system["ipv4_per_eni"])
        count = int(system["max"])
        system_per_subnet = [
            count // len(private) + (1 if i < count % len(private) else 0) for i in range(len(private))
        ]
        worst: AddressRoom | None = None
        for name in pool:
            instance = self.instance_types[name]
            per_node = node_addresses(instance.enis, instance.ipv4_per_eni)
            per_node_replicas = max(1, instance.gpus // shape.count)  # as the NodePool's GPU limit counts them
            per_zone = [max(0, f - n * system_node) // per_node for f, n in zip(free, system_per_subnet, strict=True)]
            nodes = sum(per_zone)
            replicas = nodes * per_node_replicas - 1  # one GPU slot is the model build Job's
            one_zone = min(per_zone) * per_node_replicas - 1
            if worst is None or replicas < worst.replicas:
                worst = AddressRoom(
                    replicas,
                    f"each private subnet ({', '.join(private)}) has {free[0]:,} addresses for nodes; the {count} "
                    f"system nodes take {system_node} each and each {name} node {per_node} from its zone's subnet "
                    f"(VPC CNI), so {' + '.join(map(str, per_zone))} GPU nodes over the three zones, one slot kept "
                    f"for the build Job (GPUs in one zone only: {max(0, one_zone)} replicas)",
                )
        return worst

    # Karpenter's EC2NodeClass amiSelectorTerms alias: family@version, the version an amazon-eks-ami release tag
    # (vYYYYMMDD) for AL2023 or a Bottlerocket release (v1.x.y); Karpenter picks the NVIDIA variant for GPU
    # instance types (karpenter.sh/docs/concepts/nodeclasses). EKS 1.33+ has no AL2 AMIs.
    node_image_pattern = re.compile(
        r"^(?P<family>al2023|bottlerocket)@(?P<version>latest|v[0-9]{8}|v[0-9]+\.[0-9]+\.[0-9]+)$"
    )

    def node_image(self, requested: str | None) -> tuple[str | None, list[ByocWarning]]:
        image = requested or str(self.catalog.kubernetes["eks"]["ami_alias"])
        match = self.node_image_pattern.match(image)
        if not match:
            raise ByocError(
                "node_image",
                f"{image!r} is not a Karpenter AMI alias byoc can use on EKS "
                f"{self.catalog.kubernetes['eks']['version']}",
                "write family@version: al2023@v20260512 (an amazon-eks-ami release), bottlerocket@v1.x.y, or "
                "al2023@latest; AL2 has no AMIs for EKS 1.33 and later",
            )
        warnings = []
        if match["version"] == "latest":
            warnings.append(
                ByocWarning(
                    "node_image",
                    f"{image} follows every AMI release: each one drift-replaces every GPU node (a model reload "
                    "each; with one replica, an outage)",
                    f"pin a dated alias such as {self.catalog.kubernetes['eks']['ami_alias']}",
                )
            )
        return image, warnings

    def provider_managed_key(self, key: str) -> str | None:
        # AWS-managed keys (alias/aws/<service>) have a key policy only AWS controls: no grants for EKS
        # (cluster-api-provider-aws#2432), no use by CloudTrail or CloudWatch Logs, no rotation settings of yours.
        # The evidence pack fails every customer-managed-key check on one.
        if key.startswith("alias/aws/") or ":alias/aws/" in key:
            alias = key.split("alias/", 1)[1]
            return (
                f"alias/{alias} is an AWS-managed key: its key policy is AWS's, so EKS cannot be granted it and "
                "CloudTrail, CloudWatch Logs and the artifact bucket cannot use it as a customer-managed key"
            )
        return None

    def account_identity(self, region: str, field: str) -> str:
        """The AWS account the credential chain reaches (STS GetCallerIdentity), before any live collection.

        Raises:
            ByocFailure: naming `field`: no credentials found, the endpoint unreachable, or STS refusing them.
        """
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"})
        try:
            return str(boto3.client("sts", region_name=region, config=config).get_caller_identity()["Account"])
        except NoCredentialsError:
            raise ByocFailure(
                field,
                "no AWS credentials found",
                "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or run in a role), then run it again",
            ) from None
        except EndpointConnectionError as exc:
            raise ByocFailure(field, f"cannot reach AWS STS ({exc})", "check the network or AWS_ENDPOINT_URL") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ByocFailure(
                field,
                f"AWS refused the credentials: {error.get('Code', 'error')}: {error.get('Message', '')}".strip(),
                "check that the credentials are current (aws sts get-caller-identity)",
            ) from None
        except BotoCoreError as exc:
            raise ByocFailure(field, f"AWS credentials could not be used: {exc}", "check the AWS profile") from None

    def collect_evidence(
        self, deployment: str, region: str, requested: str, kubeconfig: Path | None, customer_keys: list[str]
    ) -> Any:
        from compliance.collectors.aws import collect

        return collect(deployment, region, requested, kubeconfig, customer_keys)

    def live_offerings(self, regions: Iterable[str]) -> dict[str, frozenset[str] | str]:
        """EC2 DescribeInstanceTypeOfferings per region (AWS_ENDPOINT_URL and the usual credential chain apply)."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        wanted = sorted(self.instance_types)
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})
        result: dict[str, frozenset[str] | str] = {}
        for region in regions:
            client: EC2Client = boto3.client("ec2", region_name=region, config=config)
            try:
                offered: set[str] = set()
                pages = client.get_paginator("describe_instance_type_offerings").paginate(
                    LocationType="region", Filters=[{"Name": "instance-type", "Values": wanted}]
                )
                for page in pages:
                    offered.update(o["InstanceType"] for o in page.get("InstanceTypeOfferings", []))
                result[region] = frozenset(offered)
            except NoCredentialsError:
                raise ByocFailure(
                    "--refresh",
                    "no AWS credentials found",
                    "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or drop --refresh",
                ) from None
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                # The endpoint is down or unreachable: every other region would wait out the same timeouts.
                raise ByocFailure(
                    "--refresh", f"cannot reach the EC2 API ({exc})", "check the network or AWS_ENDPOINT_URL"
                ) from None
            except ClientError as exc:
                error = exc.response.get("Error", {})
                result[region] = f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
            except BotoCoreError as exc:
                result[region] = f"{type(exc).__name__}: {exc}"
        return result

    def preflight(self, need: CapacityNeed) -> PreflightReport:
        """STS identity, EC2 zone offerings and the EC2 vCPU quota (byoc/clouds/aws_preflight.py)."""
        from byoc.clouds.aws_preflight import preflight

        return preflight(need)

    def sweep(self, target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
        """Tagged instances, load balancers, launch templates, ENIs, volumes, security groups
        (byoc/clouds/aws_sweep.py)."""
        from byoc.clouds.aws_sweep import sweep

        return sweep(target, delete, **options)


def karpenter_refusal(node_pool: str, message: str) -> str:
    """Karpenter's FailedScheduling on a pod ("Failed to schedule pod, %s"), with what it means for the GPU pool
    `node_pool` (sources: `Aws.capacity_blockers`)."""
    if "exceed limits for nodepool" in message or "limits have been exhausted for nodepool" in message:
        return f"the NodePool's GPU limit is reached: {message}"
    if f'incompatible with nodepool "{node_pool}"' in message:
        return f"the NodePool {node_pool} cannot launch a node the pod fits on: {message}"
    return f"Karpenter launches no node for the pod: {message}"


def launch_failure(claim: dict[str, Any]) -> tuple[datetime | None, str] | None:
    """A NodeClaim's failed Launched condition (False, or Unknown with a reason other than AwaitingReconciliation):
    when it failed (its lastTransitionTime, else the NodeClaim's creation) and its message; None if it did not."""
    from byoc.kube_events import parse_time

    for condition in (claim.get("status") or {}).get("conditions") or []:
        if not isinstance(condition, dict) or condition.get("type") != "Launched":
            continue
        failed = condition.get("status") == "False" or (
            condition.get("status") == "Unknown" and condition.get("reason") not in (None, "", "AwaitingReconciliation")
        )
        if failed:
            when = parse_time(condition.get("lastTransitionTime")) or parse_time(
                (claim.get("metadata") or {}).get("creationTimestamp")
            )
            return when, str(condition.get("message") or condition.get("reason") or "")
    return None
