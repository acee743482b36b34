"""How long a wake from zero takes, phase by phase: node launch, image pull, weights fetch, engine load.

Each phase is a size over a rate, or a fixed time, read from byoc/catalogs/coldstart.yaml, where every figure names
its source and says where it is byoc's judgement. The spec's `cold_start` options change the phases:

- `image_cache: true`: on GKE the serving image is on the new node's disk (a secondary boot disk), so the pull costs
  the catalog's `image_pull.cached.gcp` seconds; on EKS it is pulled in parallel (nodeadm's FastImagePull, SOCI), at
  the catalog's faster rate;
- `weights_cache: local_ssd`: each replica fetches the artifact into its volume on the node's local NVMe (written at
  NVMe speed, so the bucket sets the rate); `none`: into its volume on the root disk (written at the root disk's
  throughput); `node_cache`: on AWS the first replica on a node reads the artifact from the bucket through the
  node's Mountpoint for Amazon S3, which keeps it in the node's cache on the local NVMe (or the root disk, where the
  plan puts the node's ephemeral storage there: `weights_on`, at the root disk's rate), and a replica on a node that
  has it reads it from that cache (`weights_fetch_cached`); on GKE every replica reads it from the deployment's
  Hyperdisk ML volume, which the GKE Volume Populator filled from the bucket at deploy (catalog `every_wake`);
- `warm_pool: N`: N nodes already run with the images on them and no replica (stacks/k8s/warm_pool.py), so the
  first wake skips the node launch and the pull; the replica still fetches the artifact, except with `node_cache`,
  where the warm node's placeholders have read it into the node's cache.

Estimates are for the first replica of a deployment at zero; with min_replicas above 0 the deployment never sits
at zero, and the same phases are those of the first replica past the minimum that needs a new node. A replica on
a node that already serves one (a node with several slots) skips the node launch and the pull too; `byoc status`
shows what a wake is waiting for.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from byoc.catalogs import ModelArch
from byoc.planner import weight_bytes
from byoc.rules import DeploymentShape
from byoc.sizing import EPHEMERAL_SPARE

MIB = 1024**2
GIB = 1024**3
CATALOG = "byoc/catalogs/coldstart.yaml"
PHASES = ("node_launch", "image_pull", "weights_fetch", "engine_load")
# Phase names as `byoc estimate`, `byoc status` and the docs say them.
PHASE_WORDS = {
    "node_launch": "node launch",
    "image_pull": "image pull",
    "weights_fetch": "weights fetch",
    "engine_load": "engine load",
}


@functools.cache
def cold_start_catalog() -> dict[str, Any]:
    """byoc/catalogs/coldstart.yaml, read once."""
    with (Path(__file__).parent / "catalogs" / "coldstart.yaml").open() as handle:
        data: dict[str, Any] = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return data


@dataclass(frozen=True)
class Phase:
    """One phase of a wake: its seconds, how they were computed (`basis`), the figure's source and, where the
    figure is byoc's choice rather than a published value, the judgement behind it."""

    name: str  # one of PHASES
    seconds: float
    basis: str
    source: str
    judgement: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 1),
            "basis": self.basis,
            "source": self.source,
            "judgement": self.judgement,
        }


@dataclass(frozen=True)
class ColdStartEstimate:
    """A wake from zero on one cloud: the phases of the first replica, their total, and the options that produced
    them. `new_node_seconds` is a wake that must launch a node (equal to `total_seconds` without a warm pool); the
    gateway's wake timeout is derived from it, since a warm node may be gone (reclaimed, drained) when the wake
    comes."""

    cloud: str
    phases: tuple[Phase, ...]
    new_node_seconds: float
    options: dict[str, Any]
    warm_pool_hourly_usd: float | None
    wake_timeout_s: int
    wake_timeout_basis: str
    # weights_cache node_cache: the weights phase on a node whose cache holds the artifact; None otherwise
    weights_fetch_cached: Phase | None = None
    # the phases of a wake that must launch a node (they sum to new_node_seconds); empty: the same as `phases`
    new_node_phases: tuple[Phase, ...] = ()
    # autoscaling.min_replicas: 0, a wake from zero; above, the deployment never sits at zero and the estimate is
    # that of a replica past the minimum
    min_replicas: int = 0

    def on_node(self, new_node: bool) -> tuple[Phase, ...]:
        """The phases of a wake on a warm-pool node (`phases`) or on a node launched for it (`new_node_phases`)."""
        return (self.new_node_phases or self.phases) if new_node else self.phases

    @property
    def applies_to(self) -> str:
        """What the estimate times, in the words `byoc estimate` and `byoc plan` print after its total."""
        if self.min_replicas == 0:
            return "from zero"
        return f"for a new replica past min_replicas {self.min_replicas} (the deployment never sits at zero)"

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phases": [p.as_dict() for p in self.phases],
            "total_seconds": round(self.total_seconds, 1),
            "new_node_seconds": round(self.new_node_seconds, 1),
            "options": self.options,
            "warm_pool_hourly_usd": None if self.warm_pool_hourly_usd is None else round(self.warm_pool_hourly_usd, 4),
            "wake_timeout_seconds": self.wake_timeout_s,
            "wake_timeout_basis": self.wake_timeout_basis,
            "weights_fetch_cached": None if self.weights_fetch_cached is None else self.weights_fetch_cached.as_dict(),
            "min_replicas": self.min_replicas,
            "from_zero": self.min_replicas == 0,
            "applies_to": self.applies_to,
            "catalog": CATALOG,
        }


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def artifact_bytes(model: ModelArch, shape: DeploymentShape) -> int:
    """What the node fetches: the weights at the shape's precision and the engine files beside them (the same
    figure the pods' volumes are sized with, byoc/sizing.py)."""
    return int(weight_bytes(model, shape.precision) * EPHEMERAL_SPARE)


def _node_launch(cloud: str, warm: bool) -> Phase:
    entry = cold_start_catalog()["node_launch"][cloud]
    if warm:
        return Phase("node_launch", 0.0, "skipped: a warm-pool node is already running", entry["source"])
    return Phase(
        "node_launch",
        float(entry["seconds"]),
        "from the pending pod to a new GPU node with its GPUs advertised",
        entry["source"],
        entry.get("judgement"),
    )


def _image_pull(cloud: str, image_cache: bool, warm: bool) -> Phase:
    entry = cold_start_catalog()["image_pull"]
    if warm:
        return Phase("image_pull", 0.0, "skipped: the warm-pool node has the image", entry["image_source"])
    size = float(entry["image_gib"]) * GIB
    if image_cache:
        cached = entry["cached"][cloud]
        if "seconds" in cached:  # the image is on the node's disk before the pod lands
            return Phase(
                "image_pull", float(cached["seconds"]), "image_cache: the image is on the node", cached["source"],
                cached.get("judgement"),
            )  # fmt: skip
        rate = float(cached["rate_mib_s"])  # pulled faster (AWS: SOCI parallel pull), still pulled
        return Phase(
            "image_pull",
            size / (rate * MIB),
            f"image_cache: {_gib(size)} image pulled in parallel at {rate:,.0f} MiB/s",
            cached["source"],
            f"image size: {entry['image_source']}; rate: {cached.get('judgement')}",
        )
    rate = float(entry["rate_mib_s"])
    return Phase(
        "image_pull",
        size / (rate * MIB),
        f"{_gib(size)} image at {rate:,.0f} MiB/s (pull and extract)",
        entry["rate_source"],
        f"image size: {entry['image_source']}; rate: {entry['rate_judgement']}",
    )


def _weights_fetch(cloud: str, size: int, weights_cache: str, cached: bool = False, on: str | None = None) -> Phase:
    # local_ssd and none: every replica fetches into its own volume, on a warm-pool node too (a node-wide copy in
    # the pod's namespace would need a hostPath, which its restricted Pod Security level forbids). node_cache: the
    # node's Mountpoint keeps one copy for every replica on the node (stacks/k8s/weights.py), so a node that has
    # it (`cached`: a warm-pool node, whose placeholders read it) serves it from its own disk; on GKE the copy is
    # a Hyperdisk ML volume filled before any replica starts, so every wake reads it (`every_wake`). `on`: where the
    # plan puts the node's ephemeral storage ("local_nvme" or "root_disk"; None: where `weights_cache` asks, the
    # local NVMe for local_ssd and node_cache); on the root disk, the root disk's rate applies, cached or not.
    entry = cold_start_catalog()["weights_fetch"]
    on_nvme = weights_cache in ("local_ssd", "node_cache") if on is None else on == "local_nvme"
    root = entry["write"]["root_disk"][cloud]
    shared = entry["read"]["node_cache"].get(cloud) if weights_cache == "node_cache" else None
    if shared is not None and (cached or shared.get("every_wake")):
        every_wake = bool(shared.get("every_wake"))
        read = shared if every_wake or on_nvme else root
        rate = float(read["rate_mib_s"])
        where = (
            "the deployment's Hyperdisk ML volume, attached read-only to the node,"
            if every_wake
            else "the node's Mountpoint cache on its local NVMe"
            if on_nvme
            else "the node's Mountpoint cache on its root disk"
        )
        return Phase(
            "weights_fetch",
            size / (rate * MIB),
            f"{_gib(size)} read and checked from {where} at {rate:,.0f} MiB/s",
            read["source"],
            read.get("judgement"),
        )
    bucket = entry["bucket"][cloud]
    write = entry["write"]["local_ssd"] if on_nvme else root
    disk = "local NVMe" if on_nvme else "root disk"
    where = "the node's local NVMe" if on_nvme else "the pod's volume on the root disk"
    if weights_cache == "node_cache":
        where = f"the node's Mountpoint cache on its {disk} (the first replica on the node)"
    rate = min(float(bucket["rate_mib_s"]), float(write["rate_mib_s"]))
    limit = "bucket" if float(bucket["rate_mib_s"]) <= float(write["rate_mib_s"]) else "disk"
    chosen = bucket if limit == "bucket" else write
    return Phase(
        "weights_fetch",
        size / (rate * MIB),
        f"{_gib(size)} from the bucket into {where} at {rate:,.0f} MiB/s (the {limit}'s rate)",
        chosen["source"],
        chosen.get("judgement"),
    )


def _engine_load(model: ModelArch, shape: DeploymentShape) -> Phase:
    entry = cold_start_catalog()["engine_load"]
    shard = weight_bytes(model, shape.precision) / shape.count
    rate = float(entry["load_rate_mib_s_per_gpu"])
    fixed = float(entry["fixed_seconds"])
    gpus = f"each of {shape.count} GPUs" if shape.count > 1 else "the GPU"
    return Phase(
        "engine_load",
        shard / (rate * MIB) + fixed,
        f"{_gib(shard)} into {gpus} at {rate:,.0f} MiB/s, plus {fixed:.0f} s of start-up (CUDA, KV cache, graphs)",
        entry["load_source"],
        f"{entry['load_judgement']} Start-up: {entry['fixed_judgement']}",
    )


def wake_timeout(new_node_seconds: float) -> tuple[int, str]:
    """The gateway's --wake-timeout (seconds) for a wake estimated at `new_node_seconds`: x the catalog's margin,
    rounded up to the minute, at least its floor; and the sentence that says so."""
    entry = cold_start_catalog()["wake_timeout"]
    margin, floor = float(entry["margin"]), int(entry["floor_seconds"])
    seconds = max(floor, math.ceil(new_node_seconds * margin / 60) * 60)
    return seconds, (
        f"{new_node_seconds:.0f} s (a wake that launches a node) x {margin:g}, rounded up to the minute, at least "
        f"{floor} s: {entry['judgement']}"
    )


def estimate_cold_start(
    cloud: str,
    model: ModelArch,
    shape: DeploymentShape,
    *,
    image_cache: bool = True,
    weights_cache: str = "local_ssd",
    warm_pool: int = 0,
    min_replicas: int = 0,
    node_hourly_usd: float | None = None,
    weights_on: str | None = None,
    asked: dict[str, Any] | None = None,
    why: tuple[str, ...] = (),
) -> ColdStartEstimate:
    """The cold start of the first replica of `model` on `shape` on `cloud` ("aws" | "gcp"), with the `cold_start`
    options the plan renders (byoc/spec.py ColdStart). `node_hourly_usd` prices the warm pool (None: not priced).
    `weights_on`: where the plan puts the node's ephemeral storage, "local_nvme" or "root_disk" (None: where
    `weights_cache` asks). `asked`: the spec's image_cache and weights_cache, where the plan renders other ones
    (`options` then says both, and `why` the plan's reasons, in plan.json's words). `min_replicas` above 0: the
    estimate is that of a replica past the minimum, not a wake from zero (`applies_to` says which).

    Raises:
        KeyError: a cloud the catalog has no figures for.
    """
    size = artifact_bytes(model, shape)
    warm = warm_pool > 0

    def phases(on_warm_node: bool) -> tuple[Phase, ...]:
        return (
            _node_launch(cloud, on_warm_node),
            _image_pull(cloud, image_cache, on_warm_node),
            _weights_fetch(
                cloud, size, weights_cache, cached=on_warm_node and weights_cache == "node_cache", on=weights_on
            ),
            _engine_load(model, shape),
        )

    first = phases(warm)
    cold = phases(False)
    new_node = sum(p.seconds for p in cold)
    timeout, basis = wake_timeout(new_node)
    rendered = {"image_cache": image_cache, "weights_cache": weights_cache}
    if weights_on is not None:
        rendered["weights_on"] = weights_on
    said = {"image_cache": image_cache, "weights_cache": weights_cache} | (asked or {})
    options: dict[str, Any] = said | {"warm_pool": warm_pool}
    if said != {k: rendered[k] for k in said} or (weights_on == "root_disk" and weights_cache != "none"):
        options |= {"plan_renders": rendered, "why": list(why)}
    return ColdStartEstimate(
        cloud=cloud,
        phases=first,
        new_node_seconds=new_node,
        options=options,
        warm_pool_hourly_usd=None if node_hourly_usd is None else warm_pool * node_hourly_usd,
        wake_timeout_s=timeout,
        wake_timeout_basis=basis,
        weights_fetch_cached=_weights_fetch(cloud, size, weights_cache, cached=True, on=weights_on)
        if weights_cache == "node_cache"
        else None,
        new_node_phases=cold,
        min_replicas=min_replicas,
    )


def duration_words(seconds: float) -> str:
    """`4 min 10 s`, `45 s`, `1 h 2 min`: how status and estimate say a duration."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
