"""resolve(spec) -> Deployment: placement, shape, instance type, model architecture and estimates, computed once.

Every command goes through `resolve`; stacks, runtime and compliance read the Deployment and never re-derive
placement or shape rules.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from byoc import __version__, planner, rules, sizing
from byoc.batch import GATEWAY_ROLE, GATEWAY_SERVICE_ACCOUNT, WORKER_ROLE, WORKER_SERVICE_ACCOUNT, BatchPlan
from byoc.caches import NodeCaches
from byoc.catalogs import MEGA_REGIONS, ModelArch, load_catalog, model_from_hf_config
from byoc.clouds import Cloud, Placement, get_cloud
from byoc.coldstart import ColdStartEstimate, estimate_cold_start
from byoc.errors import ByocError, ByocWarning, named, setting
from byoc.names import region_code, resource_name
from byoc.spec import (
    Addon,
    Budget,
    Compliance,
    Encryption,
    Gateway,
    LoadTarget,
    ModelRef,
    Monitoring,
    Network,
    Spec,
    Speculative,
    build_spec,
)


@dataclass(frozen=True)
class ResolvedAutoscaling:
    min_replicas: int
    max_replicas: int
    scale_up_window_s: int
    scale_down_window_s: int
    scale_to_zero_window_s: int | None
    load_target: LoadTarget

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "scale_up_window_s": self.scale_up_window_s,
            "scale_down_window_s": self.scale_down_window_s,
            "scale_to_zero_window_s": self.scale_to_zero_window_s,
            "load_target": self.load_target.model_dump(),
        }


@dataclass(frozen=True)
class Deployment:
    """Everything derived from a Spec; the one object the stacks, runtime and compliance read."""

    spec: Spec
    placement: Placement
    shape: rules.DeploymentShape
    model: ModelArch
    model_source: str
    model_revision: str | None
    max_context: int
    memory: planner.MemoryPlan
    throughput: planner.ThroughputEstimate
    cost: planner.CostEstimate
    autoscaling: ResolvedAutoscaling
    pods: sizing.PodSizing  # the GPU pods' requests, cut from the allocatable of the pool's machines
    disk: sizing.DiskPlan  # the GPU pods' ephemeral storage and the nodes' root disk that holds it
    cold_start: ColdStartEstimate  # a wake from zero, phase by phase, with the spec's cold_start options
    node_image: str | None = None
    caches: NodeCaches | None = None  # cold_start: image, weights and warm pool (byoc/caches.py)
    warnings: tuple[ByocWarning, ...] = ()
    # Every region of the deployment, the primary (`placement`, where the model is built) first: one for a region
    # id, placement.min_regions for a mega-region. `per_region` is the deployment as each region's stack sees it
    # (its own placement, instance types, pod sizing, costs, network range and resource names), same order; empty
    # for a one-region deployment, whose one stack is the deployment itself.
    regions: tuple[Placement, ...] = ()
    per_region: tuple[Deployment, ...] = ()
    # the network range of each region, in `regions`' order (peered for spill-over, so none overlaps another)
    region_cidrs: tuple[str, ...] = ()
    # a regional deployment's multi-region deployment (its name); None for the deployment itself
    parent: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cloud(self) -> str:
        return self.spec.cloud

    @property
    def region(self) -> str:
        return self.placement.region

    @property
    def multi_region(self) -> bool:
        """Placed in more than one region: one Pulumi stack per region plus the global layer (one private name)."""
        return len(self.regions) > 1

    @property
    def residency(self) -> str | None:
        """The residency set a mega-region deployment never leaves (US, EUROPE, APAC; GLOBAL: the whole cloud), or
        None for a region id."""
        requested = self.placement.requested_region.upper()
        return requested if requested in MEGA_REGIONS else None

    @property
    def region_names(self) -> list[str]:
        return [p.region for p in self.regions] or [self.region]

    @property
    def deployment_name(self) -> str:
        """The name the user gave: the multi-region deployment's for one of its regional deployments."""
        return self.parent or self.name

    def peers(self) -> list[tuple[str, str, str]]:
        """The other regions of a multi-region deployment, as (region, regional name, network range): where this
        region's gateway spills over to, inside the residency set. Empty for a one-region deployment."""
        if not self.multi_region:
            return []
        return [
            (p.region, f"{self.deployment_name}-{region_code(p.region)}", cidr)
            for p, cidr in zip(self.regions, self.region_cidrs, strict=True)
            if p.region != self.region
        ]

    def in_region(self, region: str) -> Deployment:
        """The deployment as `region`'s stack sees it (the deployment itself when it has one region).

        Raises:
            KeyError: `region` is not one of the deployment's regions.
        """
        if not self.per_region:
            if region != self.region:
                raise KeyError(region)
            return self
        for regional in self.per_region:
            if regional.region == region:
                return regional
        raise KeyError(region)

    def stack_name(self, region: str | None = None) -> str:
        """The Pulumi stack of one region (`region`: the regional deployment's name, <name>-<region code>), or of the
        global layer (None: <name>-global) of a multi-region deployment. A one-region deployment has one stack,
        named as the deployment."""
        if not self.multi_region:
            return self.name
        return self.in_region(region).name if region else f"{self.name}-global"

    @property
    def cluster_name(self) -> str:
        return resource_name(self.name)

    @property
    def namespace(self) -> str:
        """The Kubernetes namespace of the serving workloads."""
        return resource_name(self.name)

    @property
    def service_accounts(self) -> dict[str, str]:
        """Kubernetes service accounts that get cloud identities: role -> service account name. With batch on, the
        gateway (the Files API's objects) and the batch worker get their own, which reach only batch/."""
        accounts = {"builder": "byoc-builder", "serving": "byoc-serving"}
        if self.batch.enabled:
            accounts |= {GATEWAY_ROLE: GATEWAY_SERVICE_ACCOUNT, WORKER_ROLE: WORKER_SERVICE_ACCOUNT}
        return accounts

    @property
    def batch(self) -> BatchPlan:
        """Batch inference (spec `batch`): on or off, the retention, and what the stacks render for it."""
        return BatchPlan(enabled=self.spec.batch.enabled, retention_hours=self.spec.batch.retention_hours)

    @property
    def gpu_node_disk_gib(self) -> int:
        """The GPU nodes' root disk: every pod slot of the pool's fullest node, sized by byoc/sizing.py."""
        return self.disk.node_disk_gib

    @property
    def capacity(self) -> str:
        return self.spec.capacity

    @property
    def images(self) -> dict[str, str]:
        """Image references for the cluster: the spec's, else the pinned catalog defaults (by digest when known)."""
        return chosen_images(self.spec)

    @property
    def build_sources(self) -> list[tuple[str, str]]:
        """Every source the build Job reads, as (spec field, URI): the model, each addon, the speculative draft
        model (a catalog draft by its catalog source). The stacks grant the build identity read on each one that
        lives in the cloud's object store, and on nothing else."""
        sources = [("model.source", self.model_source)]
        sources += [(f"addons[{i}].source", addon.source) for i, addon in enumerate(self.addons)]
        if self.speculative is not None:
            draft = self.speculative.draft_model
            known = load_catalog().models.get(draft)
            sources.append(("speculative.draft_model", known.source if known else draft))
        return sources

    @property
    def monitoring(self) -> Monitoring:
        return self.spec.monitoring

    @property
    def addons(self) -> list[Addon]:
        return self.spec.addons

    @property
    def kv_cache_fraction(self) -> float:
        return self.spec.kv_cache_fraction

    @property
    def speculative(self) -> Speculative | None:
        return self.spec.speculative

    @property
    def network(self) -> Network:
        return self.spec.network

    @property
    def encryption(self) -> Encryption:
        return self.spec.encryption

    @property
    def compliance(self) -> Compliance:
        return self.spec.compliance

    @property
    def gateway(self) -> Gateway:
        return self.spec.gateway

    @property
    def budget(self) -> Budget | None:
        return self.spec.budget

    @property
    def store(self) -> planner.StoreEstimate | None:
        """The shared store of the gateway replicas (gateway.store: managed), with its price; None without one."""
        return planner.store_estimate(self.cloud) if self.gateway.store == "managed" else None

    @property
    def warm_pool_budget(self) -> planner.WarmPoolBudget | None:
        """What the warm pool spends of the GPU-hour budget in this deployment's region (the primary's for a
        multi-region deployment: each region counts its own pods, at its own placeholders per node; see
        `region_estimates`), or None without both."""
        placeholders = self.caches.warm_pool.placeholders if self.caches else 0
        return planner.warm_pool_budget(placeholders, self.shape, self.budget)

    def estimates(self) -> dict[str, Any]:
        if self.per_region:
            return self._estimates() | {"regions": self.region_estimates()}
        return self._estimates()

    def region_estimates(self) -> dict[str, Any]:
        """Cost per region and in total for a multi-region deployment: every region runs its own replicas
        (autoscaling's bounds hold per region, so each can carry the load alone when another fails), its own
        nodes at its own instance type, and its own standing costs (billed at every replica count, zero included:
        the shared store, the warm pool's nodes, node_cache's volumes), which every figure includes."""
        per: dict[str, Any] = {}
        totals = {
            "floor_hourly_usd": 0.0,
            "at_min_replicas_hourly_usd": 0.0,
            "at_max_replicas_hourly_usd": 0.0,
            "standing_hourly_usd": 0.0,
        }
        for regional in self.per_region or (self,):
            # billed at every replica count: the shared store, the warm pool, node_cache's volumes
            standing = (regional.store.hourly_usd if regional.store else 0.0) + regional.cost.standing.hourly_usd
            figures = {
                "instance_type": regional.placement.instance_type,
                "floor_hourly_usd": round(regional.cost.floor_hourly_usd + standing, 4),
                "at_min_replicas_hourly_usd": round(regional.cost.at_min_replicas.hourly_usd + standing, 4),
                "at_max_replicas_hourly_usd": round(regional.cost.at_max_replicas.hourly_usd + standing, 4),
                "standing_hourly_usd": round(standing, 4),
                "standing": regional.cost.standing.as_dict(),
                # each region's Prometheus counts its own pods against budget.gpu_hours
                "warm_pool_budget": regional.warm_pool_budget.as_dict() if regional.warm_pool_budget else None,
            }
            per[regional.region] = figures
            for key in totals:
                totals[key] += figures[key]  # type: ignore[operator]
        return {"per_region": per, "total": {k: round(v, 4) for k, v in totals.items()}}

    def _estimates(self) -> dict[str, Any]:
        return {
            "memory": self.memory.as_dict(),
            "throughput": self.throughput.as_dict(),
            # the region these figures are for: a multi-region deployment's primary (estimates.regions has every
            # region's, and their total)
            "region": self.region,
            "cost": self.cost.as_dict() | {"region": self.region},
            # the gateway's shared store runs whatever the replica count, zero included
            "store": self.store.as_dict() if self.store else None,
            # a wake from zero of the first replica, phase by phase (byoc/coldstart.py)
            "cold_start": self.cold_start.as_dict(),
            # the warm pool's placeholders spend the GPU-hour budget at zero replicas (docs/operations.md)
            "warm_pool_budget": self.warm_pool_budget.as_dict() if self.warm_pool_budget else None,
        }

    def _regions_document(self) -> list[dict[str, Any]]:
        """Every region of the deployment, the primary first, as plan.json lists them: the same list in the
        deployment's plan and in each regional stack's (a region's evidence judges its replication against all)."""
        placements: tuple[Placement, ...]
        names: tuple[str, ...]
        cidrs: tuple[str, ...]
        if not self.multi_region:
            placements, names, cidrs = (self.placement,), (self.name,), (self.network.cidr,)
        else:
            placements = self.regions
            names = tuple(f"{self.deployment_name}-{region_code(p.region)}" for p in placements)
            cidrs = self.region_cidrs
        return [
            {
                "region": placement.region,
                "stack": name,
                "name": name,
                "network_cidr": cidr,
                "instance_type": placement.instance_type,
                "instance_types": list(placement.instance_types),
                "instance_gpus": placement.instance_gpus,
                "replicas_per_node": placement.replicas_per_node,
                "reason": placement.reason,
            }
            for placement, name, cidr in zip(placements, names, cidrs, strict=True)
        ]

    def plan_document(self) -> dict[str, Any]:
        """The plan.json contract (resources are added by the engine that runs the stacks)."""
        shape = self.shape
        return {
            "byoc_version": __version__,
            "name": self.name,
            "cloud": self.cloud,
            "placement": {
                "cloud": self.placement.cloud,
                "requested_region": self.placement.requested_region,
                "region": self.placement.region,
                "mega_region": self.placement.mega_region,
                "instance_type": self.placement.instance_type,
                # every type of the region whose node holds a replica, best first (the candidates)
                "instance_types": list(self.placement.instance_types),
                # the types the GPU node pool may launch: all candidates on AWS (Karpenter), one on GKE
                "node_pool_types": list(self.pods.instance_types),
                "instance_gpus": self.placement.instance_gpus,
                "replicas_per_node": self.placement.replicas_per_node,
                "reason": self.placement.reason,
                # the residency set a mega-region deployment never leaves, and every region it runs in (its own
                # foundation and Pulumi stack each; the primary, where the model is built, first)
                "residency": self.residency,
                "regions": self._regions_document(),
                "global_stack": f"{self.deployment_name}-global" if self.multi_region else None,
            },
            "pods": self.pods.as_dict(),
            "disk": self.disk.as_dict(),
            "shape": {
                "name": shape.name,
                "gpu": shape.gpu.id,
                "gpu_name": shape.gpu.name,
                "gpu_architecture": shape.gpu.architecture,
                "sm": shape.gpu.sm,
                "gpu_count": shape.count,
                "precision": shape.precision,
                "gpu_memory_gib_each": round(shape.gpu.memory_bytes / planner.GIB, 2),
            },
            "model": {
                "id": self.model.id,
                "source": self.model_source,
                "revision": self.model_revision,
                "architecture": self.model.architecture,
                "params": self.model.params,
                "active_params": self.model.active_params,
                "num_layers": self.model.num_layers,
                "num_heads": self.model.num_heads,
                "num_kv_heads": self.model.num_kv_heads,
                "head_dim": self.model.head_dim,
                "hidden_size": self.model.hidden_size,
                "vocab_size": self.model.vocab_size,
                "max_context": self.model.max_context,
                "addons": [a.model_dump() for a in self.addons],
            },
            "engine": {
                "backend": "pytorch",
                "tensor_parallel_size": shape.tensor_parallel_size,
                "max_seq_len": self.max_context,
                "kv_cache_free_gpu_memory_fraction": self.kv_cache_fraction,
                "kv_cache_dtype": shape.kv_cache_dtype,
                "quantization": None if shape.precision == "bf16" else shape.precision.upper(),
                "lora": bool(self.addons),
                "speculative": self.speculative.model_dump() if self.speculative else None,
            },
            "node_image": self.node_image,
            "cold_start_caches": self.caches.as_dict() if self.caches else None,
            "autoscaling": self.autoscaling.as_dict(),
            "network": self.network.model_dump(),
            "encryption": self.encryption.model_dump(),
            "compliance": self.compliance.model_dump(),
            "gateway": self.gateway.model_dump(),
            "budget": self.budget.model_dump() if self.budget else None,
            "batch": self.batch.as_dict(),
            "estimates": self.estimates(),
            "warnings": [w.as_dict() for w in self.warnings],
        }


def chosen_images(spec: Spec) -> dict[str, str]:
    """{"serving": ..., "runtime": ...}: the spec's images, else the pinned catalog defaults (by digest when known)."""
    catalog = load_catalog().images
    chosen = {}
    for role, key in (("serving", "trtllm"), ("runtime", "runtime")):
        given = getattr(spec.images, role)
        entry = catalog[key]
        pinned = f"@{entry['digest']}" if entry.get("digest") else f":{entry['tag']}"
        default = f"{entry['repository']}{pinned}"
        chosen[role] = given or default
    return chosen


def image_warnings(spec: Spec) -> list[ByocWarning]:
    """Images a deployment would reference that nothing publishes, or that are pinned by a movable tag."""
    catalog = load_catalog().images
    warnings = []
    for role, key in (("serving", "trtllm"), ("runtime", "runtime")):
        given = getattr(spec.images, role)
        entry = catalog[key]
        if given is None and not entry.get("digest"):
            warnings.append(
                ByocWarning(
                    f"images.{role}",
                    f"the default {entry['repository']}:{entry['tag']} was never published with a digest "
                    "(no release has run .github/workflows/release-runtime.yml and pinned it): the cluster "
                    "cannot pull it",
                    "build runtime/Dockerfile into your registry (docs/operations.md, 'The runtime image') and set "
                    f"images.{role} to <registry>/byoc-runtime@sha256:<digest>",
                )
            )
        elif given is not None and "@sha256:" not in given:
            warnings.append(
                ByocWarning(
                    f"images.{role}",
                    f"{given} is pinned by tag: a tag pushed again changes what runs, unreviewed",
                    f"pin it by digest: {given.rsplit(':', 1)[0]}@sha256:<digest>",
                )
            )
    return warnings


def resolve_model(ref: str | ModelRef) -> tuple[ModelArch, str, str | None]:
    """The architecture, source URI and revision of a model (a catalog id, or an id with a source)."""
    catalog = load_catalog()
    model_id = ref if isinstance(ref, str) else ref.id
    source = None if isinstance(ref, str) else ref.source
    revision = None if isinstance(ref, str) else ref.revision
    config = None if isinstance(ref, str) else ref.config
    if source and source.startswith("file://"):
        path = Path(urlparse(source).path)
        found = model_from_hf_config(model_id, source, path / "config.json")
        claimed = catalog.models.get(model_id)
        if claimed is not None:
            rules.check_model_identity(claimed, found, source)
        return found, source, revision
    known = catalog.models.get(model_id)
    if known is None and source and config:
        return model_from_hf_config(model_id, source, Path(urlparse(config).path), "model.config"), source, revision
    if known is None:
        if source:
            raise ByocError(
                "model.source",
                f"{model_id} is not in the catalog and {source} cannot be read at plan time (byoc plan is offline)",
                "give the architecture with model.config: file:///path/to/config.json (a local copy of the "
                "model's config.json), or use a catalog id",
            )
        close = difflib.get_close_matches(model_id, list(catalog.models), n=1)
        hint = f"did you mean {close[0]}?" if close else f"use one of {', '.join(catalog.models)}"
        raise ByocError(
            "model",
            f"unknown model {model_id!r}",
            hint + ", or give {id, source: hf://... or s3://..., config: file:///path/config.json}",
        )
    return known, source or known.source, revision


def _draft_vocab(spec: Spec) -> int | None:
    if spec.speculative is None:
        return None
    draft = spec.speculative.draft_model
    known = load_catalog().models.get(draft)
    if known:
        return known.vocab_size
    if draft.startswith("file://"):
        return model_from_hf_config(draft, draft, Path(urlparse(draft).path) / "config.json").vocab_size
    if draft.startswith(("hf://", "s3://", "gs://")):
        return None  # a remote draft is checked by the builder, which can read it
    close = difflib.get_close_matches(draft, list(load_catalog().models), n=1)
    raise ByocError(
        "speculative.draft_model",
        f"{draft!r} is neither a catalog model nor an hf://, s3:// or gs:// source",
        f"did you mean {close[0]}?" if close else "name a catalog model (`byoc shapes`) or the draft's hf:// URI",
    )


def _smallest_fitting_shape(spec: Spec, model: ModelArch, max_context: int) -> str | None:
    """The cheapest catalog shape on the spec's cloud that is valid for the spec and holds the model."""
    cloud = get_cloud(spec.cloud)
    best: tuple[float, str] | None = None
    for shape in catalog_shapes(spec.cloud):
        if spec.addons and shape.precision != "bf16":
            continue
        memory = planner.plan_memory(model, shape, spec.kv_cache_fraction, max_context)
        if not memory.fits:
            continue
        candidates = cloud.instance_candidates(shape, sizing.pod_needs(shape, model))
        if not candidates:
            continue  # its pods fit none of its machines
        # a replica pays for its whole node when it runs alone (nodes are billed whole: byoc/planner.py)
        price = candidates[0].hourly_usd
        if best is None or price < best[0]:
            best = (price, shape.name)
    return best[1] if best else None


def catalog_shapes(cloud_name: str) -> list[rules.DeploymentShape]:
    """Every shape a cloud can run: each GPU it offers, at each count it can hold, at each precision it supports."""
    catalog = load_catalog()
    cloud = get_cloud(cloud_name)
    shapes = []
    for gpu in catalog.gpus.values():
        for count in rules.GPU_COUNTS:
            if count > cloud.max_gpus(gpu.id):
                continue
            for precision in gpu.tflops:
                if rules.precision_error(gpu, precision) is None:
                    shapes.append(rules.parse_shape(rules.shape_name(gpu.id, count, precision)))
    return shapes


class ModelDoesNotFit(ByocError):
    """The model's weights and one sequence's KV cache do not fit the shape's GPUs (exit 2): `byoc estimate` still
    shows the memory lines that say why."""


def check_fit(spec: Spec, model: ModelArch, shape: rules.DeploymentShape, memory: planner.MemoryPlan) -> None:
    """Raises ModelDoesNotFit naming `shape`, with the cheapest shape that holds the model or the context that fits."""
    if memory.fits:
        return
    gib = planner.GIB
    needed = memory.kv_bytes_per_token * memory.max_context
    detail = (
        f"{model.id} does not fit {shape.name} at max_context {memory.max_context}: weights "
        f"{memory.weight_bytes / gib:.1f} GiB leave {memory.kv_cache_bytes / gib:.1f} GiB of KV cache "
        f"(kv_cache_fraction {spec.kv_cache_fraction}), one sequence needs {needed / gib:.1f} GiB"
    )
    options = []
    smallest = _smallest_fitting_shape(spec, model, memory.max_context)
    if smallest:
        options.append(f"try {smallest}, the cheapest shape that holds it with its node billed whole")
    longest = planner.longest_context_that_fits(memory)
    if longest >= 1024:
        options.append(f"set {named('max_context')} <= {longest}")
    raise ModelDoesNotFit(
        "shape", detail, ", or ".join(options) or "no catalog shape holds this model; use a larger GPU"
    )


def place(spec: Spec, shape: rules.DeploymentShape, model: ModelArch, needs: sizing.PodNeeds) -> tuple[Placement, ...]:
    """The cloud's placement in every region of the deployment (the primary first), among the machines whose nodes
    hold the shape's pods; when none does, the refusal names the cheapest shape whose pods fit.

    Raises:
        ByocError: naming the region or the shape.
    """
    cloud = get_cloud(spec.cloud)
    cloud.check_shape(shape)
    if not cloud.instance_candidates(shape, needs):
        context = min(spec.max_context or model.max_context, model.max_context)
        other = _smallest_fitting_shape(spec, model, context)
        hint = f"try {other}, the cheapest shape whose pods fit its machines" if other else "use a larger GPU"
        raise cloud.no_room_error(shape, needs, hint)
    return cloud.place_regions(spec.region, shape, needs, spec.placement.regions, spec.placement.min_regions)


def _check_multi_region(spec: Spec, placements: tuple[Placement, ...]) -> None:
    """What a deployment in several regions needs of the spec: room in its name for the region code, a range per
    region (they are peered, so they must not overlap), and keys byoc can create in each region.

    Raises:
        ByocError: naming `name`, `network.cidr` or `encryption.kms_key` (exit 2).
    """
    from byoc.spec import NAME_MAX, REGION_SUFFIX_MAX

    if len(spec.name) > NAME_MAX - REGION_SUFFIX_MAX:
        raise ByocError(
            "name",
            f"{spec.name!r} has {len(spec.name)} characters; a deployment in {len(placements)} regions names each "
            f"region's resources <name>-<region code> and so takes at most {NAME_MAX - REGION_SUFFIX_MAX}",
            "shorten the name",
        )
    for index, placement in enumerate(placements):
        _regional_cidr(spec.network.cidr, index, placement.region)
    if spec.encryption.kms_key != "create":
        raise ByocError(
            "encryption.kms_key",
            f"a key lives in one region, and this deployment runs in {len(placements)} "
            f"({', '.join(p.region for p in placements)})",
            "leave kms_key at create (byoc creates customer-managed keys in each region), or use a region id",
        )


def _regional_cidr(cidr: str, index: int, region: str) -> str:
    """The network range of a deployment's `index`-th region: network.cidr for the primary, then the next blocks of
    the same size (10.42.0.0/16, 10.43.0.0/16, ...). Regions are peered for spill-over, so their ranges must not
    overlap, and each must stay inside the private range network.cidr is in.

    Raises:
        ByocError: naming `network.cidr` when a block would leave the private range (exit 2).
    """
    import ipaddress

    base = ipaddress.IPv4Network(cidr)  # the spec holds only private IPv4 ranges (spec.Network)
    try:
        block: ipaddress.IPv4Network | None = ipaddress.IPv4Network(
            f"{base.network_address + index * base.num_addresses}/{base.prefixlen}"
        )
    except ValueError:
        block = None
    ranges = map(ipaddress.IPv4Network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
    private = next((p for p in ranges if base.subnet_of(p)), None)
    if block is None or private is None or not block.subnet_of(private):
        raise ByocError(
            "network.cidr",
            f"{cidr} leaves no room for {region}'s range (region {index + 1} takes block {index + 1} of its size "
            f"after it, counting {cidr} as block 0, to be peered without overlap)",
            "use a range lower in its private block, e.g. 10.42.0.0/16",
        )
    return str(block)


def _regional_spec(spec: Spec, index: int, region: str) -> Spec:
    """The spec one region's stack runs: the deployment's name with the region's code (regional resources of one
    account or project never share a name) and the region's own network range."""
    network = spec.network.model_copy(update={"cidr": _regional_cidr(spec.network.cidr, index, region)})
    return spec.model_copy(update={"name": f"{spec.name}-{region_code(region)}", "network": network})


BuildLocation = Literal["cluster", "local"]


def _spot_warnings(spec: Spec, cloud_title: str) -> list[ByocWarning]:
    """Spot capacity is billed at the Spot price, which moves by zone and hour and which byoc's catalog does not
    hold: the costs shown are the on-demand list prices, the most Spot can cost (EC2 Spot and GCE Spot VMs are both
    priced at or below on-demand)."""
    if spec.capacity != "spot":
        return []
    return [
        ByocWarning(
            "capacity",
            f"spot: the costs are {cloud_title}'s on-demand list prices, an upper bound; Spot nodes bill at the Spot "
            "price of their zone and hour, below that, and may be reclaimed at any time",
            "for Spot figures see the cloud's Spot pricing pages; cost.price_source in plan.json says the basis",
        )
    ]


def resolve(spec: Spec, *, build_location: BuildLocation = "cluster") -> Deployment:
    """Apply every rule to the spec and compute the Deployment, or raise the first ByocError.

    `build_location` is where the model build reads its sources: "cluster" (a cloud deployment's build Job: a
    file:// source is refused) or "local" (`byoc build` on this machine).
    """
    rules.check_kv_cache_fraction(spec)
    rules.check_autoscaling(spec)
    rules.check_network(spec)
    rules.check_budget(spec)
    cloud = get_cloud(spec.cloud)
    cloud.check_fields(spec)
    cloud.check_allowed_cidrs(spec.network.allowed_cidrs)
    if build_location == "cluster":
        rules.check_sources_reachable_from_cluster(spec, cloud.object_store_scheme)
    shape = rules.parse_shape(spec.shape)
    rules.check_addons(spec, shape)
    cloud.check_shape(shape)
    model, source, revision = resolve_model(spec.model)
    max_context = spec.max_context or model.max_context
    rules.check_max_context(max_context, model.max_context, model.id)
    memory = planner.plan_memory(model, shape, spec.kv_cache_fraction, max_context)
    check_fit(spec, model, shape, memory)
    needs = sizing.pod_needs(shape, model)
    placements = place(spec, shape, model, needs)
    if len(placements) == 1:
        return _resolve_in(spec, placements[0], shape, model, source, revision, max_context, memory, needs)
    # a key byoc cannot use at all (a provider-managed one) is named as such; any other key meets the multi-region
    # rule on keys first, not a region check whose fix ("a key in <region>") would only lead to that rule
    if cloud.provider_managed_key(spec.encryption.kms_key):
        cloud.check_kms_key(spec.encryption.kms_key, placements[0].region)
    _check_multi_region(spec, placements)
    if spec.cold_start.weights_cache == "node_cache" and cloud.node_weights_multi_region:
        raise ByocError(
            "cold_start.weights_cache",
            f"node_cache cannot serve a deployment in {len(placements)} regions: {cloud.node_weights_multi_region}",
            f"{setting('cold_start.weights_cache', 'local_ssd')}, or {setting('placement.min_regions', 1)}",
        )
    cidrs = tuple(_regional_cidr(spec.network.cidr, i, p.region) for i, p in enumerate(placements))
    per_region = tuple(
        replace(
            _resolve_in(
                _regional_spec(spec, index, placement.region),
                placement,
                shape,
                model,
                source,
                revision,
                max_context,
                memory,
                needs,
            ),
            regions=placements,
            region_cidrs=cidrs,
            parent=spec.name,
        )
        for index, placement in enumerate(placements)
    )
    primary = _resolve_in(spec, placements[0], shape, model, source, revision, max_context, memory, needs)
    # each region's own warnings too (another region's machine may cost a whole 8-GPU node), each said once, and
    # named by its region where the primary does not share it
    said = {(w.field, w.message) for w in primary.warnings}
    warnings = list(primary.warnings)
    for regional in per_region[1:]:
        for warning in regional.warnings:
            if (warning.field, warning.message) not in said:
                said.add((warning.field, warning.message))
                warnings.append(ByocWarning(warning.field, f"{regional.region}: {warning.message}", warning.hint))
    if primary.caches is not None:  # the caches and the warm pool are rendered in every region, each its own
        caches = [(r.region, r.caches) for r in per_region if r.caches is not None]
        pool = replace(primary.caches.warm_pool, per_region=tuple(c.warm_pool for _, c in caches))
        primary = replace(primary, caches=replace(primary.caches, warm_pool=pool, per_region=tuple(caches)))
    return replace(primary, regions=placements, per_region=per_region, region_cidrs=cidrs, warnings=tuple(warnings))


def plan_cold_start(
    spec: Spec,
    cloud: Cloud,
    shape: rules.DeploymentShape,
    model: ModelArch,
    pool: tuple[str, ...],
    replicas_per_node: int,
    node_hourly_usd: float | None,
    region: str | None = None,
) -> tuple[sizing.DiskPlan, NodeCaches, ColdStartEstimate]:
    """Where the GPU pool's pods and weights lie (the disk plan and the cold-start caches) and the wake from zero
    they give: `byoc plan` (plan.json `disk`, `cold_start_caches`, `estimates.cold_start`) and `byoc shapes --model`
    (`cold_start_seconds`, with the spec's defaults) both reach it, so they cannot disagree. `region`: the region
    the pool is in (None: the spec's region), which a refusal names."""
    disk = cloud.disk_plan(shape, pool, model, spec.cold_start.weights_cache)
    caches = cloud.node_caches(
        spec, pool, disk, chosen_images(spec)["serving"], replicas_per_node, region or spec.region
    )
    asked = spec.cold_start
    # what the plan renders, not only what the spec asks: GKE caches the image only with a disk image, EKS pulls
    # with SOCI only onto the instance store, and weights a type's NVMe cannot hold stay on the root disk
    image_cache = caches.image.mode in ("secondary_boot_disk", "fast_image_pull")
    why = []
    if asked.image_cache and not image_cache:
        why.append(f"image_cache: {caches.image.detail}")
    if asked.weights_cache != "none" and caches.weights.on == "root_disk":
        why.append(f"weights_cache: {caches.weights.detail}")
    cold_start = estimate_cold_start(
        cloud.name,
        model,
        shape,
        image_cache=image_cache,
        weights_cache="node_cache"
        if caches.weights.shared_by_node
        else "local_ssd"
        if caches.weights.on == "local_nvme"
        else "none",
        warm_pool=asked.warm_pool,
        min_replicas=spec.autoscaling.min_replicas,
        node_hourly_usd=node_hourly_usd,
        weights_on=caches.weights.on if caches.weights.on in ("local_nvme", "root_disk") else None,
        asked={"image_cache": asked.image_cache, "weights_cache": asked.weights_cache},
        why=tuple(why),
    )
    return disk, caches, cold_start


def node_pool(cloud: Cloud, placement: Placement) -> tuple[str, ...]:
    """The machine types the GPU node pool may launch: every type of the placement that holds a replica where the
    cloud's pool falls back between types (Karpenter's NodePool), else the placement's one (a GKE node pool)."""
    return placement.instance_types if cloud.node_pool_fallbacks else (placement.instance_type,)


def wake_from_zero(
    cloud: Cloud,
    model_ref: str | ModelRef,
    model: ModelArch,
    shape: rules.DeploymentShape,
    needs: sizing.PodNeeds,
    fallback: str,
    cold_start: dict[str, Any] | None = None,
    max_replicas: int = 1,
    node_hourly_usd: float | None = None,
    region: str = "GLOBAL",
    min_replicas: int = 0,
) -> tuple[NodeCaches, ColdStartEstimate]:
    """The caches and the cold start `byoc plan` gives `model` (spec `model`: `model_ref`) on `shape` in `region`
    (a region, or a mega-region: its first region that offers the shape) with the spec's `cold_start` options (None:
    the spec's defaults), through plan_cold_start, so that `byoc estimate` and `byoc shapes --model` say the plan's
    figure. `fallback`: the type to assume where no region offers the shape.

    Raises:
        ByocError: naming a cold_start field the cloud cannot render (e.g. node_cache on a type without it).
    """
    spec = build_spec(
        {
            "name": "estimate",
            "cloud": cloud.name,
            "region": region,
            "model": model_ref,
            "shape": shape.name,
            "cold_start": cold_start or {},
            "autoscaling": {"min_replicas": min_replicas, "max_replicas": max_replicas},
        }
    )
    try:
        placed = cloud.place(region, shape, needs)
        pool, where = node_pool(cloud, placed), placed.region
    except ByocError:
        pool, where = (fallback,), region
    replicas_per_node = cloud.instance_types[pool[0]].gpus // shape.count
    _, caches, estimate = plan_cold_start(spec, cloud, shape, model, pool, replicas_per_node, node_hourly_usd, where)
    return caches, estimate


def _resolve_in(
    spec: Spec,
    placement: Placement,
    shape: rules.DeploymentShape,
    model: ModelArch,
    source: str,
    revision: str | None,
    max_context: int,
    memory: planner.MemoryPlan,
    needs: sizing.PodNeeds,
) -> Deployment:
    """Everything that depends on the region: the key's region, node image, address room, pod sizing, disk, costs,
    caches and cold start."""
    cloud = get_cloud(spec.cloud)
    cloud.check_kms_key(spec.encryption.kms_key, placement.region)
    node_image, warnings = cloud.node_image(spec.node_image)
    rules.check_speculative(spec, model.vocab_size, _draft_vocab(spec))
    pool = node_pool(cloud, placement)
    cloud.check_address_room(spec, shape, placement, pool)
    pods = cloud.pod_sizing(shape, pool, needs, spec.cold_start.weights_cache)
    throughput = planner.estimate_throughput(model, shape, memory)
    instance = cloud.instance_types[placement.instance_type]
    cost = planner.estimate_cost(
        shape,
        throughput,
        instance,
        min_replicas=spec.autoscaling.min_replicas,
        max_replicas=spec.autoscaling.max_replicas,
        price_source=f"{cloud.title} on-demand list price of {instance.name} (byoc/catalogs/instances.yaml)"
        + (": an upper bound, capacity is spot" if spec.capacity == "spot" else ""),
        fallbacks=[cloud.instance_types[t] for t in placement.instance_types] if cloud.node_pool_fallbacks else [],
    )
    disk, caches, cold_start = plan_cold_start(
        spec, cloud, shape, model, pool, pods.replicas_per_node, cost.node.hourly_usd, placement.region
    )
    # what the caches bill at every replica count, zero included, in this region
    volumes = caches.weights.disk
    cost = replace(
        cost,
        standing=planner.StandingCost(
            warm_pool_nodes=caches.warm_pool.nodes,
            warm_pool_hourly_usd=caches.warm_pool.hourly_usd,
            weights_disk_zones=volumes.zones if volumes else 0,
            weights_disk_monthly_usd_per_zone=volumes.monthly_usd_per_zone if volumes else 0.0,
        ),
    )
    scaling = spec.autoscaling
    target = scaling.load_target or LoadTarget(
        type="concurrent_requests", value=planner.default_concurrency_target(throughput)
    )
    autoscaling = ResolvedAutoscaling(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        scale_up_window_s=scaling.scale_up_window,
        scale_down_window_s=scaling.scale_down_window,
        scale_to_zero_window_s=scaling.scale_to_zero_window if scaling.min_replicas == 0 else None,
        load_target=target,
    )
    return Deployment(
        spec=spec,
        placement=placement,
        regions=(placement,),
        shape=shape,
        model=model,
        model_source=source,
        model_revision=revision,
        max_context=max_context,
        memory=memory,
        throughput=throughput,
        cost=cost,
        autoscaling=autoscaling,
        pods=pods,
        disk=disk,
        cold_start=cold_start,
        node_image=node_image,
        caches=caches,
        warnings=(
            *warnings,
            *rules.deliberate_choices(spec),
            *image_warnings(spec),
            *planner.cost_warnings(shape, cost, model.id),
            *_spot_warnings(spec, cloud.title),
        ),
    )
