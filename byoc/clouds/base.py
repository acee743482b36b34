"""What every cloud offers byoc: its instance types, regions, placement and key formats.

One subclass per cloud (aws.py, gcp.py); nothing outside this folder asks which cloud it is. Cloud objects hold no
state: they read the catalogs and answer.

What a cloud cannot do is declared, not discovered: each lists the `Feature`s it lacks with the reason, and a command
asks for the features it needs (`Cloud.check_features`) before anything runs, as SkyPilot's clouds do
(`CloudImplementationFeatures` and `check_features_are_supported`, sky/clouds/cloud.py) and dstack's backend features.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from byoc.caches import ImageCache, NodeCaches, WarmPool, WeightsCache, weights_cache
from byoc.catalogs import CLOUDS, MEGA_REGIONS, Catalog, InstanceType, ModelArch, load_catalog
from byoc.clouds.checks import CapacityNeed, Check, PreflightReport, SweepReport, SweepTarget
from byoc.errors import ByocError, ByocWarning, removal, setting
from byoc.planner import check_warm_pool, warm_pool_hourly_usd
from byoc.rules import GPU_COUNTS, DeploymentShape, shape_name
from byoc.sizing import (
    DiskPlan,
    NodeAllocatable,
    PodNeeds,
    PodSizing,
    Resources,
    WeightsCopy,
    daemonset_requests,
    disk_plan,
    ephemeral_allocatable_gib,
    local_nvme_plan,
    pod_needs,
    slot,
)
from byoc.spec import Spec


@dataclass(frozen=True)
class Placement:
    """Where a deployment runs, and why there."""

    cloud: str
    requested_region: str
    region: str
    mega_region: str | None
    instance_type: str
    instance_types: tuple[str, ...]  # every type in the region that holds a replica, best first
    instance_gpus: int
    replicas_per_node: int
    reason: str


@dataclass(frozen=True)
class AddressRoom:
    """How many replicas a network range leaves addresses for, and what limits it (a sentence for the error)."""

    replicas: int
    limit: str


class Feature(StrEnum):
    """What byoc may ask of a cloud. A cloud lists the ones it lacks in `Cloud.unsupported_features`."""

    STACK = "stack"  # a Pulumi program: plan's resources, preview, up, update, scale, destroy
    PREFLIGHT = "preflight"  # capacity and quota checks before `up` (`byoc preflight`)
    SWEEP = "sweep"  # finding (and deleting) what a destroyed stack left behind, by the deployment's tag or label
    LIVE_EVIDENCE = "live-evidence"  # `byoc compliance report --live`: the account read through the cloud's APIs
    LIVE_OFFERINGS = "live-offerings"  # `byoc regions --refresh`: GPU offerings read from the cloud's API
    NODE_POOL_FALLBACKS = "node-pool-fallbacks"  # a GPU node pool that may launch other types when the first has none
    NODE_WEIGHTS_CACHE = "node-weights-cache"  # cold_start.weights_cache node_cache: one copy per node, shared


FEATURE_USE = {
    Feature.STACK: "a Pulumi program (plan's resources, preview, up, update, scale, destroy)",
    Feature.PREFLIGHT: "preflight (capacity and quotas before up)",
    Feature.SWEEP: "the sweep of what a destroyed stack left",
    Feature.LIVE_EVIDENCE: "live evidence (`byoc compliance report --live`)",
    Feature.LIVE_OFFERINGS: "live offerings (`byoc regions --refresh`)",
    Feature.NODE_POOL_FALLBACKS: "GPU node pools that fall back to other instance types",
    Feature.NODE_WEIGHTS_CACHE: "weights cache shared by the replicas of a node (cold_start.weights_cache node_cache)",
}


@dataclass(frozen=True)
class LaunchStep:
    """An event the node provisioner records while it brings a node up for a pending pod (`reason` on an object
    of `kind`), and what the wake waits for once it has happened (`byoc status`, byoc/wake.py)."""

    reason: str
    kind: str
    waits_for: str


@dataclass(frozen=True)
class Refusal:
    """An event by which the node provisioner says it launches no node for a pending pod: `reason` on an object of
    `kind`, its message beginning with `starts` ("" for any). It counts only while nothing newer moved the pod's
    launch on (`NodeProvisioner.launch_progress`)."""

    reason: str
    kind: str = "Pod"
    starts: str = ""

    def matches(self, event: dict[str, Any]) -> bool:
        from byoc.kube_events import involved, message_of

        return (
            event.get("reason") == self.reason
            and involved(event).get("kind") == self.kind
            and message_of(event).startswith(self.starts)
        )


@dataclass(frozen=True)
class NodeProvisioner:
    """Who launches the GPU nodes, and what of it byoc meets in the cluster (`status`, `destroy`).

    `pools`/`claims`: the custom resources of a controller that launches nodes outside the stack (Karpenter's
    NodePools and NodeClaims): `destroy` deletes the pools and waits for the claims to go before the stack, or the
    controller's instances outlive it. None where the node pools are the stack's own resources (GKE), which Pulumi
    deletes with their nodes.
    `pool_label`: the node label naming the node's pool. `scale_changes`: what `byoc scale` may change in the
    provisioner's resources (Pulumi type token -> input paths; None: any). `replace_guarded`: the type tokens whose
    replacement recreates the cluster or its GPU nodes (`byoc update` refuses it without --allow-replace).
    `launch_steps`: the events by which `byoc status` tells how far a node launch for a waking pod has got.
    `refusals`: the events by which it says it launches none (a stockout, a limit, no instance type fits)."""

    name: str
    pool_label: str
    scale_changes: Mapping[str, frozenset[str] | None]
    replace_guarded: frozenset[str]
    pools: str | None = None
    claims: str | None = None
    launch_steps: tuple[LaunchStep, ...] = ()
    refusals: tuple[Refusal, ...] = ()

    def refused(self, event: dict[str, Any]) -> bool:
        """Whether `event` is one of the provisioner's refusals (`refusals`)."""
        return any(r.matches(event) for r in self.refusals)

    def launch_progress(
        self,
        pod_events: Iterable[dict[str, Any]],
        events: Iterable[dict[str, Any]],
        claims: Mapping[str, dict[str, Any]] | None = None,
        skip_claim: str | None = None,
    ) -> datetime | None:
        """The latest moment the provisioner moved a node launch for one pod on, from `pod_events` (the pod's own):
        its launch steps on the pod (Karpenter's Nominated for a NodeClaim other than `skip_claim` or for a node
        already up; the cluster autoscaler's TriggeredScaleUp), the launch steps of the NodeClaims it was nominated
        for (their events in `events`, and the `lastTransitionTime` of their conditions of those names that are True
        in `claims`, by name). A failure older than this is superseded: something newer happened for the pod."""
        from byoc.kube_events import event_time, involved, nominations, parse_time

        mine = list(pod_events)
        pod_steps = {s.reason for s in self.launch_steps if s.kind == "Pod"}
        claim_steps = {(s.reason, s.kind) for s in self.launch_steps if s.kind != "Pod"}
        times: list[datetime] = []
        for event in mine:
            when = event_time(event)
            if when is None or event.get("reason") not in pod_steps:
                continue
            if event.get("reason") == "Nominated":
                claimed, nodes = nominations([event])
                if not (claimed - {skip_claim}) and not nodes:
                    continue
            times.append(when)
        nominated = nominations(mine)[0] - {skip_claim}
        for event in events:
            about = involved(event)
            when = event_time(event)
            step = (event.get("reason"), about.get("kind"))
            if when is not None and about.get("name") in nominated and step in claim_steps:
                times.append(when)
        for name in nominated:
            claim = (claims or {}).get(name) or {}
            for condition in (claim.get("status") or {}).get("conditions") or []:
                if not isinstance(condition, dict) or condition.get("status") != "True":
                    continue
                if (condition.get("type"), "NodeClaim") in claim_steps:
                    when = parse_time(condition.get("lastTransitionTime"))
                    if when is not None:
                        times.append(when)
        return max(times) if times else None


# What `byoc scale` may change on every cloud (Pulumi type token -> the input paths that may differ; None: any): the
# KEDA bounds, the serving Deployment's starting replica count (KEDA owns it from then on) and the spec record in the
# engine ConfigMap (byoc.yaml, read by the build Job; no pod template hashes it, so nothing rolls).
SCALE_CHANGES: Mapping[str, frozenset[str] | None] = {
    "kubernetes:keda.sh/v1alpha1:ScaledObject": None,
    "kubernetes:apps/v1:Deployment": frozenset({"spec.replicas"}),
    "kubernetes:core/v1:ConfigMap": frozenset({"data.byoc.yaml"}),
}


GPU_RESOURCE = "nvidia.com/gpu"  # the extended resource NVIDIA's device plugin registers
# How long a GPU node may be in the cluster without advertising GPU_RESOURCE before status calls it a blocker: a node
# of the wake under way has none until its driver and device plugin start (22 s to 57 s after it joined in the
# recorded wakes, tests/lifecycle/data/wake/recorded; GKE installs the driver on first boot, which takes minutes), and
# that is a wake's step, not a fault. byoc's judgement: ten minutes, several times the longest seen.
GPU_REGISTRATION_GRACE = timedelta(minutes=10)

# The private address ranges of RFC 1918 (not Python's wider is_private, which also covers documentation ranges).
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class Cloud(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    key_pattern: ClassVar[re.Pattern[str]]
    key_example: ClassVar[str]
    # The object store the cluster reads models from (s3://, gs://): the way out for a local file:// source.
    object_store_scheme: ClassVar[str]
    # The API endpoint's allowlist (network.allowed_cidrs): how many CIDRs the cloud takes, and whether private
    # ranges may be listed.
    allowed_cidrs_max: ClassVar[int]
    allowed_cidrs_private: ClassVar[bool]
    private_allowlist_reason: ClassVar[str] = ""
    # "module:function" of the cloud's Pulumi program (a function of a Deployment), or None while there is none.
    stack_program: ClassVar[str | None] = None
    # "module:function" of the global layer of a multi-region deployment (one private name, health checks, the
    # peering between the regions' networks), run as its own stack after the regional ones
    global_stack_program: ClassVar[str | None] = None
    # The module that answers for the cloud under Pulumi's mocks (`resource_outputs`, `call_answer`): byoc plan.
    offline_answers: ClassVar[str]
    # The pip extra (byoc.extras) the program's provider SDK comes in, or None when the plain install has it.
    stack_extra: ClassVar[str | None] = None
    # The distribution of the program's provider SDK (its version is pinned in byoc.pulumi_sdks.SDK_PINS and
    # recorded in the stack at every `up`).
    provider_sdk: ClassVar[str | None] = None
    # The features this cloud lacks, with the reason (said to the user when a command needs one).
    unsupported_features: ClassVar[Mapping[Feature, str]] = {}
    # Who launches the GPU nodes (Karpenter on EKS, the cluster autoscaler on GKE).
    node_provisioner: ClassVar[NodeProvisioner]

    # -- features ----------------------------------------------------------------------------------------------
    def supports(self, feature: Feature) -> bool:
        return feature not in self.unsupported_features

    def check_features(self, features: Iterable[Feature], field: str, hint: str = "") -> None:
        """Refuse, before anything runs, a command that needs what this cloud lacks.

        Raises:
            ByocError: naming `field`, each missing feature and the cloud's reason.
        """
        missing = [f for f in features if not self.supports(f)]
        if missing:
            reasons = "; ".join(f"{FEATURE_USE[f]}: {self.unsupported_features[f]}" for f in missing)
            raise ByocError(field, f"byoc on {self.title} has no {reasons}", hint or f"use --cloud {self._other()}")

    def _other(self) -> str:
        return next(c for c in CLOUDS if c != self.name)

    @property
    def node_pool_fallbacks(self) -> bool:
        """Whether the GPU node pool may launch any type of Placement.instance_types when the first has no capacity
        (Karpenter's NodePool, stacks/aws/capacity.py) or only Placement.instance_type (a GKE node pool has one
        machine type): the planner warns about the larger, dearer fallbacks."""
        return self.supports(Feature.NODE_POOL_FALLBACKS)

    @property
    def scale_changes(self) -> Mapping[str, frozenset[str] | None]:
        """What `byoc scale` may change: the Kubernetes objects every cloud scales, and the GPU node pool's bound."""
        return {**SCALE_CHANGES, **self.node_provisioner.scale_changes}

    # -- offline plans (byoc/engines/offline.py) ---------------------------------------------------------------
    def offline_outputs(
        self, type_token: str, logical_name: str, name: str, inputs: dict[str, Any], region: str
    ) -> tuple[str | None, dict[str, Any]]:
        """What the cloud computes for a resource the program registers offline: its id (None: a placeholder id)
        and outputs beyond the inputs (ARNs, endpoints, emails), in the cloud's formats (`offline_answers`)."""
        outputs: tuple[str | None, dict[str, Any]] = self._offline().resource_outputs(
            type_token, logical_name, name, inputs, region
        )
        return outputs

    def offline_call(self, token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
        """What the cloud's data source `token` answers offline (the account, zones, the project), or None."""
        answer: dict[str, Any] | None = self._offline().call_answer(token, args, region)
        return answer

    def _offline(self) -> Any:
        import importlib

        return importlib.import_module(self.offline_answers)

    # -- status ------------------------------------------------------------------------------------------------
    def gpu_blockers(
        self, cluster: Any, node_pool: str, pods: list[dict[str, Any]], now: datetime | None = None
    ) -> list[str]:
        """Why this deployment's GPU replicas are not coming, in the node provisioner's own words (its objects'
        conditions and events), then nodes of the pool `node_pool` whose GPUs never registered. `pods`: the
        deployment's serving pods. Only what concerns them counts: nothing when none of them waits for a node (a pod
        bound to a node waits for no GPUs), and of the rest only their own events since they were made, the GPU
        pool's objects (byoc/kube_events.py), never another pool's, pod's or an earlier wake's."""
        from byoc.kube_events import created, waits_for_node

        waiting = [p for p in pods if waits_for_node(p)]
        if not waiting:
            return []
        reasons = self.capacity_blockers(cluster, node_pool, waiting)
        now = now or datetime.now(UTC)
        for node in cluster.list("nodes") or []:
            meta = node.get("metadata") or {}
            if (meta.get("labels") or {}).get(self.node_provisioner.pool_label) != node_pool:
                continue
            joined = created(node)
            if joined is not None and now - joined < GPU_REGISTRATION_GRACE:
                continue  # a node of this wake: its driver and device plugin are still starting
            offered = (node.get("status") or {}).get("allocatable")
            if not isinstance(offered, dict):
                continue  # no status yet: nothing says its GPUs are missing
            allocatable = str(offered.get(GPU_RESOURCE) or "0")
            if allocatable in ("0", ""):
                reasons.append(
                    f"node {meta.get('name') or '(unnamed)'}'s GPUs never registered (allocatable {GPU_RESOURCE} "
                    f"{allocatable}): check the GPU driver and device plugin on it"
                )
        return list(dict.fromkeys(reasons))

    @abstractmethod
    def capacity_blockers(self, cluster: Any, node_pool: str, waiting: list[dict[str, Any]]) -> list[str]:
        """Why the node provisioner launches no GPU node for the `waiting` pods (serving pods not bound to a node):
        no capacity, no quota, its limit reached; read from their events and the pool `node_pool`'s objects only."""

    @property
    def catalog(self) -> Catalog:
        return load_catalog()

    @property
    def instance_types(self) -> Mapping[str, InstanceType]:
        return self.catalog.instances[self.name]

    @property
    def regions(self) -> tuple[str, ...]:
        return self.catalog.regions(self.name)

    def offerings(self, region: str) -> frozenset[str]:
        return self.catalog.offerings[self.name].get(region, frozenset())

    # -- shapes ------------------------------------------------------------------------------------------------
    def max_gpus(self, gpu: str) -> int:
        return max((t.gpus for t in self.instance_types.values() if t.gpu == gpu), default=0)

    def gpu_types(self, shape: DeploymentShape) -> list[InstanceType]:
        """Instance types with enough of the shape's GPUs, best first: fewest GPUs that suffice, then cheapest."""
        fitting = [t for t in self.instance_types.values() if t.gpu == shape.gpu.id and t.gpus >= shape.count]
        return sorted(fitting, key=lambda t: (t.gpus, t.hourly_usd, t.name))

    def instance_candidates(self, shape: DeploymentShape, needs: PodNeeds | None = None) -> list[InstanceType]:
        """Instance types that can hold one replica and the build Job, best first: enough GPUs, and a slot of the
        node's allocatable (byoc/sizing.py) that holds what the serving pod and the build Job need. `needs`
        defaults to what any model needs on the shape."""
        needs = needs or pod_needs(shape)
        return [t for t in self.gpu_types(shape) if self.fits(t, shape, needs)]

    # -- node sizing (byoc/sizing.py) --------------------------------------------------------------------------
    @abstractmethod
    def node_allocatable(self, instance: InstanceType) -> NodeAllocatable:
        """What the kubelet of a node of this type offers pods: the cloud's published reservation formula."""

    @property
    def gpu_daemonsets(self) -> Resources:
        """The DaemonSets every GPU node runs (byoc/catalogs/kubernetes.yaml gpu_node_daemonsets)."""
        return daemonset_requests(self.catalog.kubernetes["gpu_node_daemonsets"][self.name])

    def gpu_node_pods(self, weights_cache: str = "none") -> Resources:
        """What runs on every GPU node besides byoc's GPU pods: the DaemonSets, and with weights_cache node_cache
        the driver that shares the weights and its Mountpoint Pod (gpu_node_daemonsets_node_cache)."""
        pods = self.gpu_daemonsets
        if weights_cache == "node_cache":
            extra = self.catalog.kubernetes.get("gpu_node_daemonsets_node_cache", {}).get(self.name, [])
            pods = pods + daemonset_requests(extra)
        return pods

    def slot(self, instance: InstanceType, shape: DeploymentShape, weights_cache: str = "none") -> Resources:
        """One replica's (or the build Job's) share of a node of this type."""
        return slot(self.node_allocatable(instance), self.gpu_node_pods(weights_cache), instance.gpus // shape.count)

    def fits(self, instance: InstanceType, shape: DeploymentShape, needs: PodNeeds) -> bool:
        room = self.slot(instance, shape)
        return needs.serving.fits_in(room) and needs.build.fits_in(room)

    def pod_sizing(
        self, shape: DeploymentShape, instance_types: tuple[str, ...], needs: PodNeeds, weights_cache: str = "none"
    ) -> PodSizing:
        """The requests of the GPU pods: the smallest slot of the pool's types, so that each type holds them (with
        room left for what `weights_cache` node_cache adds to every node)."""
        types = [self.instance_types[name] for name in instance_types]
        slots = [self.slot(t, shape, weights_cache) for t in types]
        smallest = Resources(min(s.cpu_m for s in slots), min(s.memory_mib for s in slots))
        first = types[0]
        return PodSizing(
            instance_types=instance_types,
            priced_on=first.name,
            allocatable=self.node_allocatable(first),
            daemonsets=self.gpu_node_pods(weights_cache),
            replicas_per_node=first.gpus // shape.count,
            slot=smallest,
            needs=needs,
        )

    def disk_plan(
        self, shape: DeploymentShape, instance_types: tuple[str, ...], model: ModelArch, weights_cache: str = "none"
    ) -> DiskPlan:
        """The GPU pods' ephemeral storage and the root disk that holds them on the pool's fullest node (one disk
        size for every type of the pool: Karpenter's EC2NodeClass and a GKE node pool each set one). With
        `weights_cache` local_ssd (or node_cache) the ephemeral storage is the local NVMe (byoc/sizing.py
        local_nvme_plan) when every type of the pool holds its own slots' pods on its own NVMe: Karpenter's
        `instanceStorePolicy: RAID0` and GKE's Local SSD ephemeral storage make each node's own NVMe its ephemeral
        storage, so a small type with one slot needs only one slot's worth. Otherwise the root disk holds them, and
        `DiskPlan.why_root_disk` says which type cannot."""
        slots = max(self.instance_types[name].gpus // shape.count for name in instance_types)
        formula = self.node_allocatable(self.instance_types[instance_types[0]]).formula
        # with node_cache no serving pod holds a copy of its own: the node holds one (AWS) or a volume does (GKE)
        copy = self.node_cache_weights_copy if weights_cache == "node_cache" else "per_pod"
        on_root = disk_plan(model, shape.precision, slots, formula, copy)
        # node_cache keeps the node's one copy in the Mountpoint Pod's emptyDir: on the NVMe too when it is there
        if weights_cache not in ("local_ssd", "node_cache"):
            return on_root
        per_type: list[tuple[int, DiskPlan]] = []
        for name in instance_types:
            nvme = self.local_nvme_gib(self.instance_types[name])
            if nvme is None:
                return replace(on_root, why_root_disk=f"{name} has no local NVMe")
            own = self.instance_types[name].gpus // shape.count
            on_nvme = local_nvme_plan(model, shape.precision, own, formula, nvme, copy)
            if on_nvme is None:
                need = replace(on_root, slots=own).required_gib
                return replace(
                    on_root,
                    why_root_disk=f"a {name} node's {own} pod(s) need {need} GiB of ephemeral storage, more than the "
                    f"{ephemeral_allocatable_gib(formula, nvme):.0f} GiB its {nvme:.0f} GiB of local NVMe allocates "
                    f"(byoc/sizing.py required_gib)",
                )
            per_type.append((own, on_nvme))
        # plan.json shows the fullest node (the most slots; of those, the least NVMe), as the root disk plan does
        return max(per_type, key=lambda item: (item[0], -(item[1].local_nvme_gib or 0.0)))[1]

    # -- cold start caches (byoc/caches.py; spec cold_start) ---------------------------------------------------
    def local_nvme_gib(self, instance: InstanceType) -> float | None:
        """The local NVMe a node of this type can use as ephemeral storage, GiB; None: it has none."""
        return None

    def pool_local_nvme_gib(self, instance_types: tuple[str, ...]) -> float | None:
        """The least local NVMe of the pool's types (what any node of the pool has at least), None if one has none."""
        sizes = [self.local_nvme_gib(self.instance_types[name]) for name in instance_types]
        return None if any(size is None for size in sizes) else min(s for s in sizes if s is not None)

    def image_cache(self, spec: Spec, serving_image: str, disk: DiskPlan) -> ImageCache:
        """How a new GPU node of this cloud gets the serving image, given the spec's cold_start and where the node's
        ephemeral storage (and containerd's store) lies."""
        return ImageCache("pulled", "each new GPU node pulls the serving image")

    def node_caches(
        self,
        spec: Spec,
        pool: tuple[str, ...],
        disk: DiskPlan,
        serving_image: str,
        replicas_per_node: int,
        region: str,
    ) -> NodeCaches:
        """The cold-start caches of a deployment in `region`: image, weights and warm pool (plan.json
        `cold_start_caches`)."""
        instance = self.instance_types[pool[0]]
        # the NVMe every node of the pool has at least (the disk plan shows the fullest node's)
        nvme = self.pool_local_nvme_gib(pool) if disk.ephemeral_on == "local_nvme" else None
        weights = weights_cache(spec.cold_start.weights_cache, disk.ephemeral_on, nvme, disk.why_root_disk)
        if spec.cold_start.weights_cache == "node_cache":
            self.check_features(
                [Feature.NODE_WEIGHTS_CACHE],
                "cold_start.weights_cache",
                setting("cold_start.weights_cache", "local_ssd"),
            )
            self.check_node_weights(pool, "cold_start.weights_cache")
            weights = self.node_weights_cache(pool, disk, weights, "cold_start.weights_cache")
        nodes = spec.cold_start.warm_pool
        scaling = spec.autoscaling
        check_warm_pool(nodes, scaling.min_replicas, scaling.max_replicas, replicas_per_node, instance.name, region)
        return NodeCaches(
            image=self.image_cache(spec, serving_image, disk),
            weights=weights,
            warm_pool=WarmPool(
                nodes, nodes * replicas_per_node, instance.name, warm_pool_hourly_usd(instance, nodes), region
            ),
            region=region,
        )

    # Why weights_cache node_cache cannot serve a deployment in several regions (None: it can).
    node_weights_multi_region: ClassVar[str | None] = None
    # Where weights_cache node_cache keeps the artifact (byoc/sizing.py WeightsCopy): in each node's ephemeral
    # storage (AWS: the Mountpoint Pod's cache), or on a volume outside it (GKE: Hyperdisk ML)
    node_cache_weights_copy: ClassVar[WeightsCopy] = "per_node"

    def check_node_weights(self, pool: tuple[str, ...], field: str) -> None:
        """Raises ByocError naming `field` where a machine type of the pool cannot share the weights; every type
        can, unless the cloud says otherwise."""
        return None

    def node_weights_cache(
        self, pool: tuple[str, ...], disk: DiskPlan, weights: WeightsCache, field: str
    ) -> WeightsCache:
        """weights_cache node_cache on this cloud, given the pool's machine types and the disk plan; `weights` is the
        node-local cache (byoc/caches.py weights_cache), which this cloud keeps (check_node_weights has passed)."""
        return weights

    def no_room_error(self, shape: DeploymentShape, needs: PodNeeds, hint: str) -> ByocError:
        """A shape whose pods fit no type its pool may launch: what they need, and the most a type offers."""
        types = self.gpu_types(shape)
        best = max(types, key=lambda t: (self.slot(t, shape).memory_mib, self.slot(t, shape).cpu_m))
        room = self.slot(best, shape)
        return ByocError(
            "shape",
            f"{shape.name}'s pods fit no {self.title} machine its GPU pool may launch: a replica needs "
            f"{needs.serving.text()} of host CPU and memory and the build Job {needs.build.text()}, and the "
            f"roomiest, {best.name}, leaves {room.text()} per replica once the kubelet and the GPU node's "
            "DaemonSets have theirs (byoc/sizing.py)",
            hint,
        )

    def check_shape(self, shape: DeploymentShape) -> None:
        most = self.max_gpus(shape.gpu.id)
        if most == 0:
            offered = sorted({t.gpu for t in self.instance_types.values()})
            raise ByocError(
                "shape",
                f"{self.title} has no instance type with {shape.gpu.name} GPUs",
                f"use one of the GPUs {', '.join(offered)} on {self.name}, or another cloud",
            )
        if shape.count > most:
            fewer = max(c for c in GPU_COUNTS if c <= most)
            raise ByocError(
                "shape",
                f"{shape.name} needs {shape.count} GPUs in one instance; {self.title}'s largest "
                f"{shape.gpu.name} instance has {most}",
                f"try {shape_name(shape.gpu.id, fewer, shape.precision)}",
            )

    # -- regions -----------------------------------------------------------------------------------------------
    def regions_offering(
        self, shape: DeploymentShape, regions: Iterable[str] | None = None, needs: PodNeeds | None = None
    ) -> list[str]:
        names = {t.name for t in self.instance_candidates(shape, needs)}
        return [r for r in (regions or self.regions) if self.offerings(r) & names]

    def _unknown_region(self, region: str) -> ByocError:
        for other in CLOUDS:
            if other != self.name and region in load_catalog().offerings[other]:
                return ByocError(
                    "region",
                    f"{region} is a {other} region, not {_a(self.name)} one",
                    f"use --cloud {other}, or {_a(self.name)} region such as {self.regions[0]}",
                )
        close = difflib.get_close_matches(region, list(self.regions) + list(MEGA_REGIONS), n=1)
        hint = f"did you mean {close[0]}?" if close else f"use {', '.join(MEGA_REGIONS)} or a {self.name} region"
        return ByocError("region", f"unknown {self.name} region {region!r}", hint)

    def place(self, requested: str, shape: DeploymentShape, needs: PodNeeds | None = None) -> Placement:
        """Pick the concrete region and instance type for a shape; a mega-region takes its first region that can.
        Only types whose node holds the pods' `needs` count (byoc/sizing.py).

        Raises:
            ByocError: naming the region, or the shape when no type of its GPU holds its pods.
        """
        self.check_shape(shape)
        candidates = self.instance_candidates(shape, needs)
        if not candidates:
            raise self.no_room_error(shape, needs or pod_needs(shape), "try a shape with more GPUs (`byoc shapes`)")
        mega = requested.upper() if requested.upper() in MEGA_REGIONS else None
        if mega:
            members = self.regions if mega == "GLOBAL" else self.catalog.mega_regions[self.name][mega]
            offering = self.regions_offering(shape, members, needs)
            if not offering:
                elsewhere = self.regions_offering(shape, needs=needs)
                hint = (
                    f"use region GLOBAL or one of {', '.join(elsewhere[:4])}"
                    if elsewhere
                    else f"no {self.name} region offers it; try another shape (`byoc shapes`)"
                )
                raise ByocError("region", f"no {mega} region of {self.name} offers {shape.gpu.name} instances", hint)
            region = offering[0]
            skipped = members[: members.index(region)]
            reason = f"first {mega} region offering {shape.gpu.name} ({self._names(candidates)})"
            if skipped:
                reason += f"; {_do_not(skipped)}"
        else:
            region = requested
            if region not in self.regions:
                raise self._unknown_region(region)
            if not self.regions_offering(shape, [region], needs):
                mega_of = self.catalog.mega_region_of(self.name, region)
                nearby = self.regions_offering(
                    shape, self.catalog.mega_regions[self.name].get(mega_of or "", ()), needs
                )
                alternatives = nearby or self.regions_offering(shape, needs=needs)
                raise ByocError(
                    "region",
                    f"{region} does not offer {shape.gpu.name} instances ({self._names(candidates)})",
                    f"use {' or '.join(alternatives[:3])}" if alternatives else "try another shape (`byoc shapes`)",
                )
            reason = f"{region} was asked for and offers {shape.gpu.name}"
        offered = [t for t in candidates if t.name in self.offerings(region)]
        chosen = offered[0]
        return Placement(
            cloud=self.name,
            requested_region=requested,
            region=region,
            mega_region=self.catalog.mega_region_of(self.name, region),
            instance_type=chosen.name,
            instance_types=tuple(t.name for t in offered),
            instance_gpus=chosen.gpus,
            replicas_per_node=chosen.gpus // shape.count,
            reason=reason,
        )

    def place_regions(
        self,
        requested: str,
        shape: DeploymentShape,
        needs: PodNeeds | None = None,
        regions: list[str] | None = None,
        min_regions: int | None = None,
    ) -> tuple[Placement, ...]:
        """Every region a deployment runs in, the primary first. A region id pins it to that one region; a
        mega-region (or GLOBAL) places it in `min_regions` regions of the set (default 2) that offer the shape: the
        ones given in `regions`, in their order, or those whose cheapest node that holds a replica costs least, then
        in the catalog's order of preference. A mega-region never places outside its set.

        Raises:
            ByocError: naming `placement.regions`, `placement.min_regions` or the region (exit 2).
        """
        mega = requested.upper() if requested.upper() in MEGA_REGIONS else None
        if not mega:
            if regions is not None and regions != [requested]:
                raise ByocError(
                    "placement.regions",
                    f"region {requested} pins the deployment to {requested}; it cannot also place in "
                    f"{', '.join(r for r in regions if r != requested)}",
                    "use a mega-region (US, EUROPE, APAC, GLOBAL) as region to place in several regions",
                )
            if (min_regions or 1) > 1:
                raise ByocError(
                    "placement.min_regions",
                    f"region {requested} pins the deployment to one region, not {min_regions}",
                    "use a mega-region (US, EUROPE, APAC, GLOBAL) as region, or leave min_regions out",
                )
            return (self.place(requested, shape, needs),)
        members = self.regions if mega == "GLOBAL" else self.catalog.mega_regions[self.name][mega]
        wanted = min_regions if min_regions is not None else 2
        candidates = self.instance_candidates(shape, needs)
        offering = self.regions_offering(shape, members, needs) if candidates else []
        if regions is not None:
            for region in regions:
                if region not in self.regions:
                    raise ByocError("placement.regions", self._unknown_region(region).message, f"use {mega} regions")
                if region not in members:
                    raise ByocError(
                        "placement.regions",
                        f"{region} is not in {mega}: a {mega} deployment serves and stores only in "
                        f"{', '.join(members)}",
                        f"list {mega} regions only, or use region GLOBAL",
                    )
                if region not in offering:
                    raise ByocError(
                        "placement.regions",
                        f"{region} does not offer {shape.gpu.name} instances for {shape.name}",
                        f"{mega} regions that do: {', '.join(offering)}" if offering else "try another shape",
                    )
            if len(regions) < wanted:
                more = [r for r in offering if r not in regions]
                raise ByocError(
                    "placement.regions",
                    f"lists {_count(len(regions), 'region')}, fewer than placement.min_regions {wanted}"
                    + (" (its default)" if min_regions is None else ""),
                    (f"add one of {', '.join(more)}" if more else f"no other {mega} region offers {shape.gpu.name}")
                    + ", or set placement.min_regions: 1 to run in one region",
                )
            chosen = list(regions)
            why = "listed in placement.regions"
        else:
            if len(offering) < wanted:
                elsewhere = [r for r in self.regions_offering(shape, needs=needs) if r not in members]
                raise ByocError(
                    "region",
                    f"{shape.name} needs {_count(wanted, mega + ' region')} of {self.name} that offer "
                    f"{shape.gpu.name} instances; "
                    + (
                        f"only {', '.join(offering)} does"
                        if len(offering) == 1
                        else "none does"
                        if not offering
                        else f"only {', '.join(offering)} do"
                    ),
                    (f"set placement.min_regions: {len(offering)}, or " if offering else "")
                    + (
                        "use region GLOBAL (also " + ", ".join(elsewhere[:4]) + ")"
                        if elsewhere
                        else "try another shape (`byoc shapes`)"
                    ),
                )
            prices = {r: self._cheapest_in(r, candidates) for r in offering}
            chosen = sorted(offering, key=lambda r: (prices[r], offering.index(r)))[:wanted]
            lacking = [r for r in members if r not in offering]
            why = (
                f"cheapest {wanted} of the {len(offering)} {mega} regions offering {shape.gpu.name}: "
                f"{', '.join(offering)}" + (f"; {_do_not(lacking)}" if lacking else "")
            )
        placements = []
        for index, region in enumerate(chosen):
            one = self.place(region, shape, needs)
            role = "primary" if index == 0 else f"region {index + 1}"
            placements.append(
                replace(
                    one,
                    requested_region=requested,
                    reason=f"{mega} {role} of {len(chosen)} ({why}): {one.instance_type} "
                    f"${self.instance_types[one.instance_type].hourly_usd:.2f}/h list price",
                )
            )
        return tuple(placements)

    def _cheapest_in(self, region: str, candidates: list[InstanceType]) -> float:
        """The hourly list price of the cheapest type offered in `region` that holds a replica (what one node
        costs there; the catalog's prices are the reference region's, byoc/catalogs/instances.yaml)."""
        offered = self.offerings(region)
        return min(t.hourly_usd for t in candidates if t.name in offered)

    @staticmethod
    def _names(types: list[InstanceType]) -> str:
        return ", ".join(t.name for t in types)

    # -- keys --------------------------------------------------------------------------------------------------
    @abstractmethod
    def key_region(self, key: str) -> str | None:
        """The region a customer-managed key lives in, from its id."""

    def provider_managed_key(self, key: str) -> str | None:
        """Why `key` is a key the cloud provider manages (and so cannot be used for byoc's encryption), or None."""
        return None

    def check_kms_key(self, key: str, region: str) -> None:
        if key == "create":
            return
        managed = self.provider_managed_key(key)
        if managed:
            raise ByocError(
                "encryption.kms_key",
                managed,
                f"use `create` (byoc creates customer-managed keys), or a customer-managed key like {self.key_example}",
            )
        if not self.key_pattern.match(key):
            raise ByocError(
                "encryption.kms_key",
                f"{key!r} is not a {self.title} key id",
                f"use `create`, or a key like {self.key_example}",
            )
        key_region = self.key_region(key)
        if key_region != region:
            raise ByocError(
                "encryption.kms_key",
                f"the key lives in {key_region} but the deployment is placed in {region}; keys are regional",
                f"use a key in {region}, or `create`",
            )

    # Spec fields that mean nothing on this cloud, with why: given explicitly, they are refused rather than ignored.
    unsupported_fields: ClassVar[dict[str, str]] = {}

    def check_fields(self, spec: Spec) -> None:
        """Refuse a spec field this cloud has no use for, when the user set it (defaults are fine).

        Raises:
            ByocError: naming the field and why it does not apply.
        """
        for path, why in self.unsupported_fields.items():
            node: Any = spec
            *parents, leaf = path.split(".")
            for name in parents:
                if name not in node.model_fields_set:
                    node = None
                    break
                node = getattr(node, name)
            if node is not None and leaf in node.model_fields_set:
                raise ByocError(path, f"does not apply on {self.title}: {why}", removal(path))

    # -- addresses -------------------------------------------------------------------------------------------
    # The range sizes network.cidr may take (byoc.spec.Network): the hint names the smallest one that fits.
    NETWORK_PREFIXES = range(20, 15, -1)

    def address_room(
        self, cidr: str, shape: DeploymentShape, placement: Placement, pool: tuple[str, ...]
    ) -> AddressRoom | None:
        """The most replicas (plus the model build Job) the deployment's network range has addresses and node
        limits for, on the GPU node types of `pool`; None where the cloud sets no such limit."""
        return None

    def check_address_room(
        self, spec: Spec, shape: DeploymentShape, placement: Placement, pool: tuple[str, ...]
    ) -> None:
        """Refuse a max_replicas whose nodes the network range could never hold: the cluster would stop scaling
        short of it, with pods pending and no error anyone sees before the load arrives.

        Raises:
            ByocError: on autoscaling.max_replicas, with the limit and a larger range or fewer replicas as the fix.
        """
        # the warm pool's placeholders take a replica's place each, on nodes of their own (cold_start.warm_pool)
        warm = spec.cold_start.warm_pool * (self.instance_types[placement.instance_type].gpus // shape.count)
        wanted = spec.autoscaling.max_replicas + warm
        room = self.address_room(spec.network.cidr, shape, placement, pool)
        if room is None or wanted <= room.replicas:
            return
        address = ipaddress.IPv4Network(spec.network.cidr).network_address
        larger = ""
        for prefix in self.NETWORK_PREFIXES:
            cidr = str(ipaddress.IPv4Network(f"{address}/{prefix}", strict=False))
            bigger = self.address_room(cidr, shape, placement, pool)
            if prefix < ipaddress.IPv4Network(spec.network.cidr).prefixlen and bigger and bigger.replicas >= wanted:
                larger = f", or give network.cidr a larger range (a /{prefix} such as {cidr} holds {bigger.replicas})"
                break
        else:
            larger = " (even a /16, the largest network.cidr, holds fewer)"
        fewer = (
            f"set autoscaling.max_replicas to {room.replicas - warm} or fewer"
            if room.replicas - warm >= 1
            else "use a larger range"
        )
        counted = f" (max_replicas + {warm} warm-pool placeholders)" if warm else ""
        raise ByocError(
            "autoscaling.max_replicas",
            f"{wanted} replicas{counted} do not fit {self.title}'s limits for network.cidr {spec.network.cidr}: "
            f"{room.limit}; at most {room.replicas} replica(s) fit",
            fewer + larger,
        )

    # -- nodes -------------------------------------------------------------------------------------------------
    def node_image(self, requested: str | None) -> tuple[str | None, list[ByocWarning]]:
        """The GPU nodes' image for the spec's `node_image` (None: the cloud's pinned default), and warnings.

        Raises:
            ByocError: naming node_image, when the cloud cannot use it.
        """
        return requested, []

    # -- network -----------------------------------------------------------------------------------------------
    def check_allowed_cidrs(self, cidrs: list[str]) -> None:
        """The endpoint allowlist against the cloud's own limits (count, private ranges).

        Raises:
            ByocError: naming network.allowed_cidrs, with the limit and its source.
        """
        import ipaddress

        if len(cidrs) > self.allowed_cidrs_max:
            raise ByocError(
                "network.allowed_cidrs",
                f"{len(cidrs)} CIDRs; {self.title} takes at most {self.allowed_cidrs_max} for the API endpoint",
                "merge neighbouring ranges, or reach the endpoint through a VPN/bastion with endpoint: private",
            )
        if not self.allowed_cidrs_private:
            for index, cidr in enumerate(cidrs):
                network = ipaddress.ip_network(cidr)
                private = next((b for b in RFC1918 if network.overlaps(ipaddress.ip_network(b))), None)
                if private:
                    raise ByocError(
                        f"network.allowed_cidrs[{index}]",
                        f"{cidr} overlaps the private (RFC 1918) range {private}; {self.private_allowlist_reason}",
                        "list only public addresses (your offices' or CI runners' egress IPs)",
                    )

    def account_identity(self, region: str, field: str) -> str:
        """The account the credentials reach, checked before reading the live account (ByocFailure if none)."""
        self.check_features([Feature.LIVE_EVIDENCE], field)
        raise NotImplementedError(f"{self.title} declares live evidence but reads no account")

    def collect_evidence(
        self, deployment: str, region: str, requested: str, kubeconfig: Path | None, customer_keys: list[str]
    ) -> Any:
        """The deployment's resources read from the live account, as a compliance Graph (compliance/collectors)."""
        self.check_features([Feature.LIVE_EVIDENCE], "--cloud")
        raise NotImplementedError(f"{self.title} declares live evidence but has no collector")

    # -- live data ---------------------------------------------------------------------------------------------
    def live_offerings(self, regions: Iterable[str]) -> dict[str, frozenset[str] | str]:
        """Ask the cloud which of our instance types each region offers (an error string where it could not)."""
        self.check_features([Feature.LIVE_OFFERINGS], "--refresh", "drop --refresh, or add --cloud aws")
        raise NotImplementedError(f"{self.title} declares live offerings but reads none")

    # -- lifecycle (byoc up / destroy) -------------------------------------------------------------------------
    def preflight(self, need: CapacityNeed) -> PreflightReport:
        """Before anything is created: credentials, the instance type's offering in the region's zones, and the
        GPU quota for `need` (see aws_preflight.py). A cloud without a live preflight says so, without failing."""
        return PreflightReport(
            self.name,
            need.region,
            (Check("preflight", "unknown", f"byoc has no live preflight for {self.title} yet"),),
        )

    def sweep(self, target: SweepTarget, delete: bool, **options: Any) -> SweepReport:
        """After the stack is destroyed: what controllers left behind, tagged with the deployment or its cluster
        (found, and with `delete` removed). A cloud without a sweep reports that it could not look."""
        return SweepReport(target.region, skipped=f"byoc has no leftover sweep for {self.title} yet")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _do_not(regions: Iterable[str]) -> str:
    regions = list(regions)
    return f"{', '.join(regions)} {'does' if len(regions) == 1 else 'do'} not"


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
