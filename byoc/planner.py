"""Memory fit, throughput and cost of a model on a deployment shape.

Memory follows how trtllm-serve (PyTorch backend) spends a GPU: the weights load first, the runtime keeps a reserve
for its context, workspaces and activations, and the KV cache takes `kv_cache_fraction` of what is left
(`--kv_cache_free_gpu_memory_fraction`).

Throughput is an analytical roofline: prefill is compute-bound, decode reads the weights and the KV cache once per
step and is bandwidth-bound until the batch is large enough to be compute-bound. Its efficiency factors were fitted
to NVIDIA's published TensorRT-LLM throughput tables (byoc/catalogs/benchmarks.yaml); docs/estimates.md explains the
model and `python scripts/calibrate_planner.py` re-fits and prints the error on every published point.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

from byoc.catalogs import InstanceType, ModelArch, load_catalog
from byoc.errors import ByocError, ByocWarning, named
from byoc.rules import DeploymentShape

GIB = 1024**3

# Bytes per weight at each precision. NVFP4 stores 4-bit values plus one FP8 scale per 16 values (ModelOpt NVFP4,
# block size 16). ModelOpt leaves the embedding and LM head in BF16 (its default configs disable "*lm_head*").
WEIGHT_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1 / 16}
KV_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0}

# Memory trtllm-serve keeps per GPU besides weights and KV cache: CUDA context, cuBLAS/NCCL workspaces, CUDA graphs
# and activation buffers for max_num_tokens 8192. byoc's estimate; trtllm-serve measures the real free memory at
# start-up, so a shape at the edge may hold a little more or less KV cache than planned.
RUNTIME_RESERVE_BYTES_PER_GPU = int(2.5 * GIB)

# --- fitted to NVIDIA's published TensorRT-LLM numbers (see docs/estimates.md) ----------------------------------
BANDWIDTH_EFFICIENCY = 0.80  # share of datasheet HBM bandwidth a decode step achieves
DECODE_COMPUTE_EFFICIENCY = 0.40  # share of dense tensor TFLOPS in large-batch decode
PREFILL_COMPUTE_EFFICIENCY = 0.60  # share of dense tensor TFLOPS in prefill
STEP_OVERHEAD_S = 0.008  # fixed cost of one scheduler iteration (Python scheduler, sampling, launch)
# NVFP4 GEMMs reach a smaller share of their (twice as high) peak than FP8 and BF16 ones.
PRECISION_COMPUTE_EFFICIENCY: dict[str, float] = {"bf16": 1.0, "fp8": 1.0, "fp4": 0.6}
MAX_BATCH_SIZE = 2048  # trtllm-bench's largest CUDA-graph batch in the published runs
# Tensor-parallel scaling: all-reduce after every attention and MLP block costs more over PCIe than NVLink.
TP_EFFICIENCY: dict[str, dict[int, float]] = {
    "nvlink": {1: 1.0, 2: 0.90, 4: 0.82, 8: 0.74},  # 2 fitted; 4 and 8 extrapolated
    "pcie": {1: 1.0, 2: 0.80, 4: 0.65, 8: 0.50},
}

DEFAULT_INPUT_TOKENS = 1000
DEFAULT_OUTPUT_TOKENS = 1000


@dataclass(frozen=True)
class MemoryPlan:
    gpu_memory_bytes: int
    weight_bytes: int
    runtime_reserve_bytes: int
    kv_cache_bytes: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    max_context: int
    concurrent_sequences: int
    fits: bool

    @property
    def shortfall_bytes(self) -> int:
        """KV bytes missing for one max-context sequence (0 when it fits)."""
        return max(0, self.kv_bytes_per_token * self.max_context - self.kv_cache_bytes)

    def as_dict(self) -> dict[str, object]:
        return {
            "gpu_memory_gib": round(self.gpu_memory_bytes / GIB, 2),
            "weights_gib": round(self.weight_bytes / GIB, 2),
            "runtime_reserve_gib": round(self.runtime_reserve_bytes / GIB, 2),
            "kv_cache_gib": round(self.kv_cache_bytes / GIB, 2),
            "kv_cache_dtype": self.kv_cache_dtype,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "max_context": self.max_context,
            "concurrent_sequences_at_max_context": self.concurrent_sequences,
            "fits": self.fits,
        }


def weight_bytes(model: ModelArch, precision: str) -> int:
    quantized = model.params - model.embedding_params
    return int(quantized * WEIGHT_BYTES[precision] + model.embedding_params * WEIGHT_BYTES["bf16"])


def plan_memory(model: ModelArch, shape: DeploymentShape, kv_cache_fraction: float, max_context: int) -> MemoryPlan:
    total = shape.memory_bytes
    weights = weight_bytes(model, shape.precision)
    reserve = RUNTIME_RESERVE_BYTES_PER_GPU * shape.count
    free = max(0, total - weights - reserve)
    kv_cache = int(free * kv_cache_fraction)
    per_token = model.kv_bytes_per_token(KV_BYTES[shape.kv_cache_dtype])
    capacity = kv_cache // per_token
    return MemoryPlan(
        gpu_memory_bytes=total,
        weight_bytes=weights,
        runtime_reserve_bytes=reserve,
        kv_cache_bytes=kv_cache,
        kv_cache_dtype=shape.kv_cache_dtype,
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=capacity,
        max_context=max_context,
        concurrent_sequences=capacity // max_context,
        fits=capacity >= max_context,
    )


def longest_context_that_fits(memory: MemoryPlan) -> int:
    """The largest max_context one sequence can have in this KV cache, rounded down to 1024 tokens."""
    return (memory.kv_capacity_tokens // 1024) * 1024


@dataclass(frozen=True)
class ThroughputEstimate:
    input_tokens: int
    output_tokens: int
    batch_size: int
    output_tokens_per_s: float
    requests_per_s: float
    decode_step_s: float
    prefill_s_per_request: float
    bound: Literal["memory-bandwidth", "compute", "prefill"]

    def as_dict(self) -> dict[str, object]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "batch_size": self.batch_size,
            "output_tokens_per_s": round(self.output_tokens_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 3),
            "decode_step_ms": round(self.decode_step_s * 1000, 2),
            "prefill_ms_per_request": round(self.prefill_s_per_request * 1000, 2),
            "bound": self.bound,
        }


def _expert_share_read(model: ModelArch, batch: int) -> float:
    """Share of a MoE layer's experts a decode step touches: each token picks k of E experts."""
    if model.num_experts <= 1:
        return 1.0
    untouched = (1 - model.experts_per_token / model.num_experts) ** batch
    return 1 - untouched


def estimate_throughput(
    model: ModelArch,
    shape: DeploymentShape,
    memory: MemoryPlan,
    input_tokens: int = DEFAULT_INPUT_TOKENS,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> ThroughputEstimate:
    """Output tokens/s of one replica at saturation (an offline, infinite-rate load like trtllm-bench throughput)."""
    gpu = shape.gpu
    tp = TP_EFFICIENCY[gpu.interconnect][shape.count]
    bandwidth = gpu.bandwidth_tbs * 1e12 * shape.count * BANDWIDTH_EFFICIENCY * tp
    peak = gpu.tflops[shape.precision] * 1e12 * shape.count * tp * PRECISION_COMPUTE_EFFICIENCY[shape.precision]
    sequence = input_tokens + output_tokens
    # trtllm's default scheduler (GUARANTEED_NO_EVICT) admits a request only with KV blocks for its whole sequence.
    batch = max(1, min(MAX_BATCH_SIZE, memory.kv_capacity_tokens // sequence))
    attention_width = model.num_layers * model.num_heads * model.head_dim

    # Prefill: 2 FLOPs per parameter per token plus causal attention over the prompt.
    prefill_flops = 2 * model.active_params * input_tokens + 2 * attention_width * input_tokens**2
    prefill_s = prefill_flops / (peak * PREFILL_COMPUTE_EFFICIENCY)

    # Decode: one step reads the weights (the experts the batch touches) and every sequence's KV cache.
    expert_weights = (model.params - model.active_params) * WEIGHT_BYTES[shape.precision]
    dense_weights = weight_bytes(model, shape.precision) - expert_weights
    context = input_tokens + output_tokens / 2
    bytes_read = dense_weights + expert_weights * _expert_share_read(model, batch)
    bytes_read += batch * context * memory.kv_bytes_per_token
    flops = batch * (2 * model.active_params + 4 * attention_width * context)
    memory_s = bytes_read / bandwidth
    compute_s = flops / (peak * DECODE_COMPUTE_EFFICIENCY)
    step_s = max(memory_s, compute_s) + STEP_OVERHEAD_S

    # A batch of B sequences turns over in `output_tokens` steps plus B prefills interleaved between them.
    decode_total = output_tokens * step_s
    prefill_total = batch * prefill_s
    tokens_per_s = batch * output_tokens / (decode_total + prefill_total)
    if prefill_total > decode_total:
        bound: Literal["memory-bandwidth", "compute", "prefill"] = "prefill"
    else:
        bound = "compute" if compute_s > memory_s else "memory-bandwidth"
    return ThroughputEstimate(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        batch_size=batch,
        output_tokens_per_s=tokens_per_s,
        requests_per_s=tokens_per_s / output_tokens,
        decode_step_s=step_s,
        prefill_s_per_request=prefill_s,
        bound=bound,
    )


@dataclass(frozen=True)
class NodeFleet:
    """Replicas on whole nodes: a node is billed whole, however few of its GPUs the replicas use."""

    replicas: int
    nodes: int
    hourly_usd: float

    def as_dict(self) -> dict[str, object]:
        return {"replicas": self.replicas, "nodes": self.nodes, "hourly_usd": round(self.hourly_usd, 4)}


@dataclass(frozen=True)
class Node:
    """An instance type a replica runs on, at the price used, and how many replicas it holds."""

    instance_type: str
    gpus: int
    hourly_usd: float
    replicas_per_node: int

    def fleet(self, replicas: int) -> NodeFleet:
        nodes = math.ceil(replicas / self.replicas_per_node)
        return NodeFleet(replicas=replicas, nodes=nodes, hourly_usd=nodes * self.hourly_usd)

    def as_dict(self) -> dict[str, object]:
        return {
            "instance_type": self.instance_type,
            "gpus": self.gpus,
            "hourly_usd": round(self.hourly_usd, 4),
            "replicas_per_node": self.replicas_per_node,
        }


@dataclass(frozen=True)
class StandingCost:
    """What a deployment pays every hour beside its serving nodes, whatever the replica count (zero included): the
    warm pool's idle GPU nodes (cold_start.warm_pool, byoc/caches.py WarmPool) and weights_cache node_cache's
    volumes on GKE (a Hyperdisk ML volume in each zone of the GPU pool, billed monthly while it exists). USD; one
    region's (a multi-region deployment pays it in every region: Deployment.region_estimates)."""

    warm_pool_nodes: int = 0
    warm_pool_hourly_usd: float = 0.0
    weights_disk_zones: int = 0
    weights_disk_monthly_usd_per_zone: float = 0.0

    @property
    def weights_disk_hourly_usd(self) -> float:
        return self.weights_disk_zones * self.weights_disk_monthly_usd_per_zone / HOURS_PER_MONTH

    @property
    def hourly_usd(self) -> float:
        return self.warm_pool_hourly_usd + self.weights_disk_hourly_usd

    def as_dict(self) -> dict[str, object]:
        return {
            "hourly_usd": round(self.hourly_usd, 4),
            "monthly_usd": round(self.hourly_usd * HOURS_PER_MONTH, 2),
            "warm_pool_nodes": self.warm_pool_nodes,
            "warm_pool_hourly_usd": round(self.warm_pool_hourly_usd, 4),
            "weights_disk_zones": self.weights_disk_zones,
            "weights_disk_hourly_usd": round(self.weights_disk_hourly_usd, 4),
            "weights_disk_monthly_usd": round(self.weights_disk_zones * self.weights_disk_monthly_usd_per_zone, 2),
        }

    @property
    def what(self) -> str:
        """`the warm pool`, `the weights volumes` or both: what it is, in a few words."""
        return standing_what(self.warm_pool_hourly_usd > 0, self.weights_disk_zones > 0)

    def words(self) -> str:
        """`warm pool 2 nodes $13.76/h, weights volumes in 3 zones $1.19/h`: its parts, as the plan and the estimate
        say them."""
        parts = []
        if self.warm_pool_hourly_usd:
            parts.append(f"warm pool {_nodes(self.warm_pool_nodes)} {_dollars(self.warm_pool_hourly_usd)}")
        if self.weights_disk_zones:
            zones = f"{self.weights_disk_zones} zone{'' if self.weights_disk_zones == 1 else 's'}"
            parts.append(f"weights volumes in {zones} {_dollars(self.weights_disk_hourly_usd)}")
        return ", ".join(parts)


def standing_what(warm_pool: bool, weights_volumes: bool) -> str:
    """What a StandingCost (or its as_dict) holds, in a few words."""
    return " and ".join(p for p, on in (("the warm pool", warm_pool), ("the weights volumes", weights_volumes)) if on)


# What the per-replica share and `cost_per_million_output_tokens` assume; plan.json and `byoc estimate` say it.
PACKED_BASIS = "saturation: every replica kept busy and every node full of replicas (no GPU paid for and unused)"


@dataclass(frozen=True)
class CostEstimate:
    """What a deployment costs as it is billed: whole nodes. `replica_hourly_usd` and
    `cost_per_million_output_tokens` are a replica's share of a full node; the fleets say what min_replicas,
    one serving replica and max_replicas cost in whole nodes."""

    gpu_hourly_usd: float
    replica_hourly_usd: float
    cost_per_million_output_tokens: float
    price_source: str
    node: Node
    at_min_replicas: NodeFleet
    serving_floor: NodeFleet  # at min_replicas, or at one replica when min_replicas is 0: the cost of serving
    at_max_replicas: NodeFleet
    cost_per_million_output_tokens_at_floor: float  # the serving floor's nodes, its replicas saturated
    fallback_nodes: tuple[Node, ...] = ()  # larger types the node pool may launch when the node has no capacity
    standing: StandingCost = StandingCost()  # paid at every replica count beside the fleets' nodes

    @property
    def floor_hourly_usd(self) -> float:
        return self.serving_floor.hourly_usd

    @property
    def paid_at_min_replicas_hourly_usd(self) -> float:
        """What is billed at min_replicas (zero included): its nodes and the standing cost."""
        return self.at_min_replicas.hourly_usd + self.standing.hourly_usd

    def as_dict(self) -> dict[str, object]:
        return {
            "gpu_hourly_usd": round(self.gpu_hourly_usd, 4),
            "replica_hourly_usd": round(self.replica_hourly_usd, 4),
            "cost_per_million_output_tokens": round(self.cost_per_million_output_tokens, 4),
            "price_source": self.price_source,
            "basis": PACKED_BASIS,
            "node": self.node.as_dict(),
            "floor_hourly_usd": round(self.floor_hourly_usd, 4),
            "at_min_replicas": self.at_min_replicas.as_dict(),
            "serving_floor": self.serving_floor.as_dict(),
            "at_max_replicas": self.at_max_replicas.as_dict(),
            "cost_per_million_output_tokens_at_floor": round(self.cost_per_million_output_tokens_at_floor, 4),
            "fallback_nodes": [f.as_dict() for f in self.fallback_nodes],
            # billed at every replica count on top of the fleets above: the warm pool, node_cache's volumes
            "standing": self.standing.as_dict(),
            "paid_at_min_replicas_hourly_usd": round(self.paid_at_min_replicas_hourly_usd, 4),
        }


@dataclass(frozen=True)
class StoreEstimate:
    """The gateway replicas' shared store (gateway.store: managed): one managed Redis-compatible service per
    deployment, billed every hour whatever the replica count (zero included)."""

    service: str
    nodes: int
    hourly_usd: float
    price_source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "nodes": self.nodes,
            "hourly_usd": round(self.hourly_usd, 4),
            "monthly_usd": round(self.hourly_usd * HOURS_PER_MONTH, 2),
            "price_source": self.price_source,
        }


# 730 hours: the month AWS and Google price monthly figures with (365 x 24 / 12).
HOURS_PER_MONTH = 730


def store_estimate(cloud: str) -> StoreEstimate:
    """The shared store's list price (byoc/catalogs/kubernetes.yaml `shared_store`, sourced there)."""
    entry = load_catalog().kubernetes["shared_store"][cloud]
    hourly = float(entry.get("hourly_usd", 0.0)) or float(entry["hourly_usd_per_node"]) * int(entry["nodes"])
    return StoreEstimate(
        service=str(entry["service"]), nodes=int(entry["nodes"]), hourly_usd=hourly, price_source=entry["price_source"]
    )


# `byoc estimate --price-per-gpu-hour`: the user's own price per GPU-hour, for every node a figure prices within
# `priced_per_gpu_hour` (the serving nodes, each region's, the warm pool's). It prices only: which machine a shape
# lands on stays the plan's choice, made on list prices.
_PRICE_PER_GPU_HOUR: ContextVar[float | None] = ContextVar("byoc_price_per_gpu_hour", default=None)


@contextlib.contextmanager
def priced_per_gpu_hour(price: float | None) -> Iterator[None]:
    """Within it, every node is priced at `price` USD per GPU-hour x its GPUs (None: the catalog's list prices)."""
    token = _PRICE_PER_GPU_HOUR.set(price)
    try:
        yield
    finally:
        _PRICE_PER_GPU_HOUR.reset(token)


def node_hourly_usd(instance: InstanceType, price_per_gpu_hour: float | None = None) -> float:
    """What one node of `instance` costs per hour (USD): `price_per_gpu_hour` x its GPUs where given (or set by
    `priced_per_gpu_hour`), else the catalog's on-demand list price (byoc/catalogs/instances.yaml)."""
    price = price_per_gpu_hour if price_per_gpu_hour is not None else _PRICE_PER_GPU_HOUR.get()
    return instance.hourly_usd if price is None else price * instance.gpus


def _node(instance: InstanceType, shape: DeploymentShape, price_per_gpu_hour: float | None) -> Node:
    return Node(
        instance.name, instance.gpus, node_hourly_usd(instance, price_per_gpu_hour), instance.gpus // shape.count
    )


def _per_million(hourly_usd: float, tokens_per_s: float) -> float:
    return hourly_usd / (tokens_per_s * 3600) * 1e6


def estimate_cost(
    shape: DeploymentShape,
    throughput: ThroughputEstimate,
    instance: InstanceType,
    *,
    min_replicas: int,
    max_replicas: int,
    price_source: str,
    price_per_gpu_hour: float | None = None,
    fallbacks: Sequence[InstanceType] = (),
) -> CostEstimate:
    """Cost of replicas of `shape` on `instance` nodes, each node billed whole.

    Prices are each instance type's list price, or `price_per_gpu_hour` x its GPUs when given. `fallbacks` are the
    other types the node pool may launch; those with more GPUs than `instance` are kept (they cost more per node).
    """
    node = _node(instance, shape, price_per_gpu_hour)
    gpu_hourly = node.hourly_usd / node.gpus
    replica_hourly = gpu_hourly * shape.count
    floor = node.fleet(max(1, min_replicas))
    return CostEstimate(
        gpu_hourly_usd=gpu_hourly,
        replica_hourly_usd=replica_hourly,
        cost_per_million_output_tokens=_per_million(replica_hourly, throughput.output_tokens_per_s),
        price_source=price_source,
        node=node,
        at_min_replicas=node.fleet(min_replicas),
        serving_floor=floor,
        at_max_replicas=node.fleet(max_replicas),
        cost_per_million_output_tokens_at_floor=_per_million(
            floor.hourly_usd, throughput.output_tokens_per_s * floor.replicas
        ),
        fallback_nodes=tuple(
            _node(t, shape, price_per_gpu_hour) for t in fallbacks if t.gpus > instance.gpus and t.gpus >= shape.count
        ),
    )


def _dollars(usd: float) -> str:
    return f"${usd:,.2f}/h"


def _nodes(count: int) -> str:
    return f"{count} node" if count == 1 else f"{count} nodes"


def floor_text(cost: CostEstimate) -> str:
    """The floor in words: what is paid at min_replicas (its whole nodes and the standing cost: the warm pool,
    node_cache's volumes), and at 0 what one serving replica adds."""
    floor, standing = cost.serving_floor, cost.standing
    paid = _dollars(cost.paid_at_min_replicas_hourly_usd) if cost.paid_at_min_replicas_hourly_usd else "$0/h"
    if cost.at_min_replicas.replicas == 0:
        serving = f"{_dollars(floor.hourly_usd + standing.hourly_usd)} while serving (1 replica, {_nodes(floor.nodes)}"
        if not standing.hourly_usd:
            return f"{paid} at min_replicas 0, {serving})"
        return f"{paid} at min_replicas 0 ({standing.words()}), {serving}, plus those)"
    if not standing.hourly_usd:
        return f"{paid} at min_replicas {floor.replicas} ({_nodes(floor.nodes)})"
    return f"{paid} at min_replicas {floor.replicas} ({_nodes(floor.nodes)}, {standing.words()})"


def cost_warnings(shape: DeploymentShape, cost: CostEstimate, model_id: str) -> list[ByocWarning]:
    """Where the per-replica share understates the bill: a replica that leaves most of a node unused, and a node
    pool that may launch a larger (dearer) instance type when the chosen one has no capacity."""
    warnings = []
    node = cost.node
    low, high = cost.at_min_replicas.replicas, cost.at_max_replicas.replicas
    # replicas that always fill whole nodes (a fixed count, a multiple of the node's slots) cost their share exactly
    fills_nodes = low == high and low % node.replicas_per_node == 0
    if node.replicas_per_node > 1 and not fills_nodes:
        article = "an" if node.instance_type[:1] in "aeio" else "a"
        warnings.append(
            ByocWarning(
                "shape",
                f"{shape.name} takes {shape.count} of the {node.gpus} GPUs of {article} {node.instance_type} node, "
                f"which is billed whole at {_dollars(node.hourly_usd)}: the floor is {floor_text(cost)}, not the "
                f"{_dollars(cost.replica_hourly_usd)} per replica that a full node works out to",
                f"up to {node.replicas_per_node} replicas share one node at that price; `byoc shapes --model "
                f"{model_id}` ranks shapes by the cost of one replica on whole nodes",
            )
        )
    if cost.fallback_nodes:
        larger = " or ".join(
            f"{f.instance_type} ({f.gpus} GPUs, {_dollars(f.hourly_usd)})" for f in cost.fallback_nodes
        )
        dearest = max(f.hourly_usd for f in cost.fallback_nodes)
        warnings.append(
            ByocWarning(
                "shape",
                f"the GPU node pool may also launch {larger} when {node.instance_type} "
                f"({_dollars(node.hourly_usd)}) has no capacity: one replica alone on such a node costs up to "
                f"{_dollars(dearest)}, {dearest / node.hourly_usd:.1f}x the price of {node.instance_type}",
                "placement.node_pool_types in plan.json lists the types the node pool may launch",
            )
        )
    return warnings


def default_concurrency_target(throughput: ThroughputEstimate) -> int:
    """Concurrent requests per replica to scale on: half the saturation batch keeps latency near its floor."""
    return max(1, min(256, math.floor(throughput.batch_size / 2)))


# --- warm pool (cold_start.warm_pool; issue 24) -------------------------------------------------------------------
def warm_pool_hourly_usd(instance: InstanceType, nodes: int) -> float:
    """What `nodes` idle GPU nodes of `instance` cost per hour (USD, the catalog's on-demand list price, billed whole
    whether a replica runs on them or not; or the price `priced_per_gpu_hour` sets): the price of skipping the node
    launch on a wake (byoc/caches.py)."""
    return round(node_hourly_usd(instance) * nodes, 2)


@dataclass(frozen=True)
class WarmPoolBudget:
    """What the warm pool spends of a GPU-hour budget (spec `budget`): the budget's rules count every running pod of
    the namespace by the GPUs it requests (stacks/k8s/budget.py, docs/operations.md "GPU-hour budget"), and each
    placeholder requests a serving replica's GPUs, so the pool alone spends the budget at zero replicas. Counting
    it is right (its nodes are paid); this says how fast."""

    placeholders: int
    gpus: int  # the GPUs the placeholders request together
    budget_gpu_hours: float  # budget.gpu_hours, per period
    period: str  # budget.period
    stops_the_pool: bool  # budget.cap_replicas set: a spent budget empties the pool (stacks/k8s/warm_pool.py)

    @property
    def gpu_hours_per_day(self) -> float:
        return self.gpus * 24.0

    @property
    def days_at_zero_replicas(self) -> float:
        """Days the budget lasts with no serving replica and no build: the pool's spending alone."""
        return self.budget_gpu_hours / self.gpu_hours_per_day

    def as_dict(self) -> dict[str, Any]:
        return {
            "placeholders": self.placeholders,
            "gpus": self.gpus,
            "gpu_hours_per_day": round(self.gpu_hours_per_day, 2),
            "budget_gpu_hours": self.budget_gpu_hours,
            "period": self.period,
            "days_at_zero_replicas": round(self.days_at_zero_replicas, 2),
            "stops_the_pool": self.stops_the_pool,
            "words": self.words(),
        }

    def words(self) -> str:
        """The sentence `byoc plan` and `byoc estimate` print."""
        gpus = f"{self.gpus} GPU{'' if self.gpus == 1 else 's'}"
        then = (
            "once it is spent, cap_replicas empties the warm pool too, until the period ends"
            if self.stops_the_pool
            else "the pool keeps running once it is spent (no cap_replicas: alerts only)"
        )
        return (
            f"the warm pool's placeholders hold {gpus}: {self.gpu_hours_per_day:,.0f} GPU-hours a day of budget."
            f"gpu_hours ({self.budget_gpu_hours:,g} a {self.period}), which last {self.days_at_zero_replicas:,.1f} "
            f"days at zero replicas; {then}"
        )


def warm_pool_budget(placeholders: int, shape: DeploymentShape, budget: Any) -> WarmPoolBudget | None:
    """The warm pool's share of a GPU-hour budget (`budget`: the spec's Budget), or None without a pool or a budget."""
    if not placeholders or budget is None:
        return None
    return WarmPoolBudget(
        placeholders=placeholders,
        gpus=placeholders * shape.count,
        budget_gpu_hours=float(budget.gpu_hours),
        period=str(budget.period),
        stops_the_pool=budget.cap_replicas is not None,
    )


def check_warm_pool(
    nodes: int, min_replicas: int, max_replicas: int, replicas_per_node: int, instance_type: str, region: str
) -> None:
    """A warm node is taken only by a replica that needs a node the first min_replicas do not already hold: the
    nodes `max_replicas` fill less those `min_replicas` fill, at `replicas_per_node` on `region`'s `instance_type`
    (a replica past the minimum lands first in a free slot of the minimum's last node). A pool larger than that
    keeps GPU nodes no replica can ever take: refused. A multi-region deployment checks each region, whose machine
    (and so replicas per node) may differ.

    Raises:
        ByocError: naming cold_start.warm_pool (or its flag, byoc.errors.fields_as_flags), the region and its
            machine; the fix says the most that can be used.
    """
    extra = max(max_replicas - min_replicas, 0)
    per_node = max(replicas_per_node, 1)
    held = math.ceil(min_replicas / per_node)
    most = max(math.ceil(max_replicas / per_node) - held, 0)
    if nodes <= most:
        return
    node_word = "node" if most == 1 else "nodes"
    if extra == 0:
        fills = (
            f"min_replicas {min_replicas} and max_replicas {max_replicas} leave no replica past the minimum to take "
            "a warm node"
        )
    elif most == 0:
        fills = (
            f"the {extra} replica(s) past min_replicas {min_replicas} (up to max_replicas {max_replicas}) fit on the "
            f"{held} {instance_type} node(s) the minimum already holds there ({per_node} replica(s) per node)"
        )
    else:
        fills = (
            f"the {extra} replica(s) past min_replicas {min_replicas} (up to max_replicas {max_replicas}) need at "
            f"most {most} {instance_type} {node_word} there beyond the minimum's {held} ({per_node} replica(s) per "
            "node)"
        )
    raise ByocError(
        "cold_start.warm_pool",
        f"{nodes} warm node(s) in {region}, but {fills}: "
        + ("they" if most == 0 else "the others")
        + " would be billed and never used",
        f"set {named('cold_start.warm_pool')} to at most {most}, or raise {named('autoscaling.max_replicas')}"
        + (f" or lower {named('autoscaling.min_replicas')}" if min_replicas else ""),
    )
