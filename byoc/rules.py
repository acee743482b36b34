"""The deployment rules, each written once.

Every command reaches them through `byoc.resolve`. A broken rule raises `ByocError` naming the spec field and a
fix that would work (a shape, a region, a value), so that the user learns before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from byoc.catalogs import PRECISIONS, Gpu, Precision, load_catalog
from byoc.errors import ByocError
from byoc.spec import SHAPE_PATTERN, Spec

GPU_COUNTS = (1, 2, 4, 8)
FP8_MIN_SM = 89  # Ada (sm89) and Hopper (sm90) have FP8 tensor cores; Ampere (sm80) does not.
FP4_MIN_SM = 100  # NVFP4 needs Blackwell tensor cores (sm100/103/120).


@dataclass(frozen=True)
class DeploymentShape:
    """`<gpu>x<count>-<precision>`: how many of which GPU serve one replica, at which weight precision."""

    gpu: Gpu
    count: int
    precision: Precision

    @property
    def name(self) -> str:
        return shape_name(self.gpu.id, self.count, self.precision)

    @property
    def tensor_parallel_size(self) -> int:
        return self.count

    @property
    def kv_cache_dtype(self) -> str:
        # Quantized shapes keep the KV cache in FP8 too: half the bytes per token of BF16.
        return "bf16" if self.precision == "bf16" else "fp8"

    @property
    def memory_bytes(self) -> int:
        return self.gpu.memory_bytes * self.count


def shape_name(gpu: str, count: int, precision: str) -> str:
    return f"{gpu}x{count}-{precision}"


def precision_error(gpu: Gpu, precision: str) -> str | None:
    """Why this GPU cannot run this precision, or None when it can."""
    if precision == "fp8" and gpu.sm < FP8_MIN_SM:
        return f"FP8 needs an Ada, Hopper or Blackwell GPU (sm89+); {gpu.name} is sm{gpu.sm}"
    if precision == "fp4" and gpu.sm < FP4_MIN_SM:
        return f"FP4 (NVFP4) needs a Blackwell GPU (sm100+); {gpu.name} is sm{gpu.sm}"
    return None


def parse_shape(text: str, field: str = "shape") -> DeploymentShape:
    """Parse and check a shape on its own: GPU known, precision supported by it, count 1/2/4/8."""
    catalog = load_catalog()
    match = SHAPE_PATTERN.match(text)
    if not match:
        raise ByocError(field, f"{text!r} is not <gpu>x<count>-<precision>", "write it like h100x1-fp8")
    gpu_id, count, precision = match["gpu"], int(match["count"]), match["precision"]
    gpu = catalog.gpus.get(gpu_id)
    if gpu is None:
        raise ByocError(field, f"unknown GPU {gpu_id!r} in {text}", f"use one of {', '.join(catalog.gpus)}")
    if precision not in PRECISIONS:
        raise ByocError(field, f"unknown precision {precision!r} in {text}", f"use one of {', '.join(PRECISIONS)}")
    if count not in GPU_COUNTS:
        nearest = min((c for c in GPU_COUNTS if c >= count), default=8)
        raise ByocError(
            field,
            f"{text} asks for {count} GPUs; a replica uses 1, 2, 4 or 8 (tensor parallelism)",
            f"try {shape_name(gpu_id, nearest, precision)}",
        )
    reason = precision_error(gpu, precision)
    if reason:
        raise ByocError(field, f"{text}: {reason}", f"try {_same_gpu_or_better(gpu, count, precision)}")
    return DeploymentShape(gpu=gpu, count=count, precision=precision)


def _same_gpu_or_better(gpu: Gpu, count: int, precision: str) -> str:
    """Two working alternatives: the same GPU at the best precision it has, or a GPU that has the precision."""
    same = next(shape_name(gpu.id, count, p) for p in ("fp8", "bf16") if precision_error(gpu, p) is None)
    better = {"fp8": "h100", "fp4": "b200"}[precision]
    return f"{same} or {shape_name(better, count, precision)}"


def check_addons(spec: Spec, shape: DeploymentShape) -> None:
    if spec.addons and shape.precision != "bf16":
        bf16 = shape_name(shape.gpu.id, shape.count, "bf16")
        raise ByocError(
            "addons",
            f"shape {shape.name} cannot take LoRA addons: addons run on BF16 shapes",
            f"try {bf16}, or remove the addons",
        )


def check_autoscaling(spec: Spec) -> None:
    scaling = spec.autoscaling
    if scaling.min_replicas > scaling.max_replicas:
        raise ByocError(
            "autoscaling.min_replicas",
            f"min_replicas {scaling.min_replicas} is above max_replicas {scaling.max_replicas}",
            f"set max_replicas to at least {scaling.min_replicas}",
        )
    if scaling.min_replicas > 0 and "scale_to_zero_window" in scaling.model_fields_set:
        raise ByocError(
            "autoscaling.scale_to_zero_window",
            f"scaling to zero needs min_replicas 0, but min_replicas is {scaling.min_replicas}",
            "set min_replicas: 0, or remove scale_to_zero_window",
        )


def check_kv_cache_fraction(spec: Spec) -> None:
    if not 0 < spec.kv_cache_fraction < 1:
        raise ByocError(
            "kv_cache_fraction",
            f"{spec.kv_cache_fraction} is not strictly between 0 and 1",
            "use e.g. 0.9 (trtllm-serve's default)",
        )


def check_network(spec: Spec) -> None:
    network = spec.network
    if network.endpoint == "allowlist" and not network.allowed_cidrs:
        raise ByocError(
            "network.allowed_cidrs",
            "endpoint: allowlist needs at least one CIDR",
            "list the CIDRs of your offices or CI runners, e.g. allowed_cidrs: [203.0.113.0/24]",
        )
    if network.allowed_cidrs and network.endpoint != "allowlist":
        raise ByocError(
            "network.allowed_cidrs",
            f"allowed_cidrs only apply with endpoint: allowlist (endpoint is {network.endpoint})",
            "set endpoint: allowlist, or remove allowed_cidrs",
        )


def check_max_context(max_context: int, model_max: int, model_id: str) -> None:
    if max_context > model_max:
        raise ByocError(
            "max_context",
            f"{max_context} is longer than {model_id}'s context window of {model_max}",
            f"use max_context <= {model_max}",
        )


def check_speculative(spec: Spec, target_vocab: int, draft_vocab: int | None) -> None:
    if spec.speculative is None or draft_vocab is None:
        return
    if draft_vocab != target_vocab:
        raise ByocError(
            "speculative.draft_model",
            f"{spec.speculative.draft_model} has a vocabulary of {draft_vocab}, the target {target_vocab}: "
            "a draft must share the target's tokenizer",
            "pick a smaller model of the same family",
        )
