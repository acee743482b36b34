"""The deployment rules, each written once.

Every command reaches them through `byoc.resolve`. A broken rule raises `ByocError` naming the spec field and a
fix that would work (a shape, a region, a value), so that the user learns before anything is created.
"""

from __future__ import annotations

from dataclasses import dataclass

from byoc.catalogs import PRECISIONS, Gpu, ModelArch, Precision, load_catalog
from byoc.errors import ByocError, ByocWarning, named
from byoc.spec import HPA_WINDOW_MAX, SCALE_TO_ZERO_MIN, SHAPE_PATTERN, Spec

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


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_autoscaling(spec: Spec) -> None:
    """Replica bounds and windows, against what the HPA and KEDA objects they render into accept and do.

    Raises:
        ByocError: min above max; an HPA stabilization window over 3600 s (Kubernetes refuses the object); a
            scale-to-zero window without min_replicas 0, under SCALE_TO_ZERO_MIN, or shorter than the scale-down
            window (KEDA's cooldownPeriod would take every replica straight to zero, kedacore/keda#7770).
    """
    scaling = spec.autoscaling
    for field in ("scale_up_window", "scale_down_window"):
        window = getattr(scaling, field)
        if window > HPA_WINDOW_MAX:
            raise ByocError(
                f"autoscaling.{field}",
                f"{_duration(window)} ({window} s) is longer than the {HPA_WINDOW_MAX} s Kubernetes allows for an "
                "HPA stabilization window; the autoscaler would never be created",
                "use at most 1h (for a slower scale-down to zero, raise scale_to_zero_window instead)",
            )
    if scaling.min_replicas > scaling.max_replicas:
        raise ByocError(
            "autoscaling.min_replicas",
            f"min_replicas {scaling.min_replicas} is above max_replicas {scaling.max_replicas}",
            f"set {named('autoscaling.max_replicas')} to at least {scaling.min_replicas}",
        )
    if scaling.min_replicas > 0 and "scale_to_zero_window" in scaling.model_fields_set:
        raise ByocError(
            "autoscaling.scale_to_zero_window",
            f"scaling to zero needs min_replicas 0, but min_replicas is {scaling.min_replicas}",
            "set min_replicas: 0, or remove scale_to_zero_window",
        )
    if scaling.min_replicas == 0:
        zero, down = scaling.scale_to_zero_window, scaling.scale_down_window
        if zero < SCALE_TO_ZERO_MIN:
            raise ByocError(
                "autoscaling.scale_to_zero_window",
                f"{_duration(zero)} is shorter than {_duration(SCALE_TO_ZERO_MIN)}: KEDA samples activity every 15 s, "
                "so light steady traffic would look idle and the last replica would go between two requests",
                f"use at least {_duration(SCALE_TO_ZERO_MIN)} (1h is the default)",
            )
        if scaling.max_replicas > 1 and zero < down:
            raise ByocError(
                "autoscaling.scale_to_zero_window",
                f"{_duration(zero)} is shorter than scale_down_window {_duration(down)}: after {_duration(zero)} "
                f"idle, KEDA's cooldownPeriod takes up to {scaling.max_replicas} replicas straight to zero, "
                "bypassing the gradual scale-down",
                f"set scale_to_zero_window to at least {_duration(down)}, or shorten scale_down_window",
            )


def check_budget(spec: Spec) -> None:
    """The GPU-hour budget's replica cap against the replica bounds the ScaledObject renders.

    Raises:
        ByocError: budget.cap_replicas above autoscaling.max_replicas (it would cap nothing) or below min_replicas
            (the HPA never goes below its minimum, so the cap could not hold).
    """
    budget = spec.budget
    if budget is None or budget.cap_replicas is None:
        return
    scaling = spec.autoscaling
    if budget.cap_replicas > scaling.max_replicas:
        raise ByocError(
            "budget.cap_replicas",
            f"cap_replicas {budget.cap_replicas} is above autoscaling.max_replicas {scaling.max_replicas}: it "
            "would cap nothing",
            f"use at most {scaling.max_replicas}, or remove cap_replicas to be alerted only",
        )
    if budget.cap_replicas < scaling.min_replicas:
        raise ByocError(
            "budget.cap_replicas",
            f"cap_replicas {budget.cap_replicas} is below autoscaling.min_replicas {scaling.min_replicas}: the "
            "autoscaler never goes below its minimum, so the cap could not hold",
            f"use at least {scaling.min_replicas}, or lower autoscaling.min_replicas",
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
            f"use {named('max_context')} <= {model_max}",
        )


# What says which model a checkpoint is, as its config.json names it (the catalog's own names differ): a
# checkpoint that claims a catalog id must match the catalog on each, or sizing, the cache key and the artifact's
# name would all describe a model that is not there.
MODEL_IDENTITY = (
    ("architecture", "architectures"),
    ("num_layers", "num_hidden_layers"),
    ("hidden_size", "hidden_size"),
    ("vocab_size", "vocab_size"),
    ("num_heads", "num_attention_heads"),
    ("num_kv_heads", "num_key_value_heads"),
)


def check_model_identity(catalog: ModelArch, found: ModelArch, source: str, field: str = "model.source") -> None:
    """Refuse a checkpoint (read from its config.json) that is not the catalog model it is built or planned as."""
    for name, key in MODEL_IDENTITY:
        want, have = getattr(catalog, name), getattr(found, name)
        if want != have:
            raise ByocError(
                field,
                f"{source} is not {catalog.id}: its config.json has {key} {have}, the catalog's {catalog.id} has "
                f"{want}",
                f"point it at {catalog.id}'s own checkpoint ({catalog.source}), or give this checkpoint an id outside "
                "the catalog (model.id / --model-id): byoc then reads its architecture from its config.json",
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


LOCAL_SCHEME = "file://"
# The clouds' object stores (byoc.clouds: Cloud.object_store_scheme).
OBJECT_STORE_SCHEMES = ("s3://", "gs://")


def check_sources_reachable_from_cluster(spec: Spec, object_store_scheme: str) -> None:
    """A cloud deployment's build Job runs in the cluster: it cannot read a path on the operator's machine.

    Checks every source a cloud deployment reads (the model, each addon, the speculative draft model): a file://
    path, or another cloud's object store (s3:// on Google Cloud, gs:// on AWS), which no grant of the cluster's
    identity reaches.

    Raises:
        ByocError: naming the field that holds such a source, with the way out (upload, then s3/gs/hf).
    """
    sources: list[tuple[str, str | None]] = []
    if not isinstance(spec.model, str):
        sources.append(("model.source", spec.model.source))
    sources += [(f"addons[{i}].source", addon.source) for i, addon in enumerate(spec.addons)]
    if spec.speculative is not None:
        sources.append(("speculative.draft_model", spec.speculative.draft_model))
    store = f"{object_store_scheme}BUCKET/models/"
    for field, source in sources:
        other = next(
            (s for s in OBJECT_STORE_SCHEMES if s != object_store_scheme and (source or "").startswith(s)), None
        )
        if source and other is not None:
            # The build Job reads with the cluster's own cloud identity (an IAM role on EKS, a Google service
            # account on GKE): it holds no credentials for the other cloud's store, so no grant could make it work.
            raise ByocError(
                field,
                f"{source} is in another cloud's object store; the deployment's build Job reads its sources with "
                f"the cluster's own identity, which can be granted read on {object_store_scheme} buckets only",
                f"copy it to a {object_store_scheme} bucket (or publish it on hf://) and set {field} to that URI",
            )
        if source and source.startswith(LOCAL_SCHEME):
            config = ""
            if field == "model.source":
                config = " (keep model.config: file://.../config.json for the architecture)"
            raise ByocError(
                field,
                f"{source} is a path on this machine; the deployment's build Job runs in the cluster and cannot "
                "read it",
                f"upload the folder (or `byoc build --source {source} --dest {store}`) and set {field} to its "
                f"{store}... / hf:// URI{config}",
            )


def deliberate_choices(spec: Spec) -> list[ByocWarning]:
    """Spec values the evidence pack fails on purpose: allowed (a team may choose them), said out loud.

    Every compliance FAIL that a spec value causes is either refused by a rule above or warned here;
    tests/unit/test_spec_vs_evidence.py plans each such value and checks the pack agrees.
    """
    warnings = []
    if spec.network.endpoint == "public":
        warnings.append(
            ByocWarning(
                "network.endpoint",
                "public opens the Kubernetes API endpoint to the whole internet; the evidence pack fails the "
                "private-endpoint check (HIPAA 164.312(e)(1), SOC 2 CC6.6, ISO 27001 A.8.20/A.8.22)",
                "use private (the default), or allowlist with allowed_cidrs",
            )
        )
    return warnings
