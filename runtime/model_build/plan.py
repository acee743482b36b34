"""The build plan: everything about building a model for a shape that can be decided without a GPU.

Pure: a function of the Deployment and the pinned tool versions. The Kubernetes stack puts its trtllm-serve options
in a ConfigMap and its artifact location in the serving pods; the builder (`byoc build`) executes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from byoc.catalogs import load_catalog
from byoc.resolve import Deployment

SERVE_PORT = 8000
MODEL_DIR = "/models/model"
ADAPTER_DIR = "/models/adapters"
DRAFT_DIR = "/models/draft"
OPTIONS_PATH = "/etc/byoc/options.yaml"
# trtllm's module names for LoRA targets (tensorrt_llm/lora_manager.py): attention q/k/v/output and the MLP.
LORA_TARGET_MODULES = ["attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h", "mlp_4h_to_h", "mlp_gate"]
MODELOPT_CONFIGS = {"fp8": "FP8_DEFAULT_CFG", "fp4": "NVFP4_DEFAULT_CFG"}
# trtllm-serve's scheduler budget per iteration (its default): prefill chunks and decode tokens together.
MAX_NUM_TOKENS = 8192
# trtllm's default is 0 (no KV cache events); 1024 events between two 100 ms polls is ample at any batch size.
KV_EVENT_BUFFER_MAX_SIZE = 1024


@dataclass(frozen=True)
class Calibration:
    dataset: str
    samples: int
    sequence_length: int


@dataclass(frozen=True)
class BuildPlan:
    model_id: str
    source: str
    revision: str | None
    shape: str
    precision: str
    quantization: str | None  # the ModelOpt config name, None for BF16 (copied as is)
    kv_cache_dtype: str
    calibration: Calibration | None
    tensor_parallel_size: int
    options: dict[str, Any]
    tool_versions: dict[str, str]
    cache_key: str
    merged_adapter: str | None = None  # a LoRA adapter folded into the weights before quantizing (live merge)

    @property
    def artifact_prefix(self) -> str:
        """Content-addressed: the same inputs always land in the same place, so a second build is a cache hit."""
        return f"artifacts/{self.model_id}/{self.cache_key}"

    def serve_command(self) -> list[str]:
        """The exact trtllm-serve command line the serving container runs."""
        return [
            "trtllm-serve",
            MODEL_DIR,
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVE_PORT),
            "--backend",
            "pytorch",
            "--tp_size",
            str(self.tensor_parallel_size),
            "--max_seq_len",
            str(self.options["max_seq_len"]),
            "--kv_cache_free_gpu_memory_fraction",
            str(self.options["kv_cache_config"]["free_gpu_memory_fraction"]),
            "--extra_llm_api_options",
            OPTIONS_PATH,
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "source": self.source,
            "revision": self.revision,
            "shape": self.shape,
            "precision": self.precision,
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "calibration": None if self.calibration is None else self.calibration.__dict__,
            "tensor_parallel_size": self.tensor_parallel_size,
            "options": self.options,
            "tool_versions": self.tool_versions,
            "cache_key": self.cache_key,
            "merged_adapter": self.merged_adapter,
            "artifact_prefix": self.artifact_prefix,
            "serve_command": self.serve_command(),
        }


def tool_versions() -> dict[str, str]:
    images = load_catalog().images
    return {"tensorrt_llm": str(images["trtllm"]["version"]), "modelopt": str(images["modelopt"]["version"])}


def serve_options(deployment: Deployment) -> dict[str, Any]:
    """The LLM-API options trtllm-serve reads (`--extra_llm_api_options`)."""
    shape = deployment.shape
    options: dict[str, Any] = {
        "backend": "pytorch",
        "tensor_parallel_size": shape.tensor_parallel_size,
        # the planner's saturation batch, within trtllm's CUDA-graph batch sizes
        "max_batch_size": max(8, min(512, deployment.throughput.batch_size)),
        "max_num_tokens": MAX_NUM_TOKENS,
        "max_seq_len": deployment.max_context,
        "kv_cache_config": {
            "free_gpu_memory_fraction": deployment.kv_cache_fraction,
            "enable_block_reuse": True,
            # KV cache events (stored/removed block hashes) for `POST /kv_cache_events`, which the gateway's
            # `--routing precise` polls every 100 ms; the buffer holds what arrives between two polls
            "event_buffer_max_size": KV_EVENT_BUFFER_MAX_SIZE,
            "dtype": "fp8" if shape.kv_cache_dtype == "fp8" else "auto",
        },
        # per-request perf metrics feed /prometheus/metrics; iteration stats feed /metrics (KV cache use)
        "return_perf_metrics": True,
        "enable_iter_perf_stats": True,
        # response_format and forced tool calls are enforced only with a grammar backend; without one
        # trtllm-serve accepts them and returns free text. xgrammar works with LoRA, FP8/NVFP4 and speculative
        # decoding (TensorRT-LLM blog "Combining Guided Decoding and Speculative Decoding").
        "guided_decoding_backend": "xgrammar",
    }
    if deployment.addons:
        options["lora_config"] = {
            "max_lora_rank": max(a.rank for a in deployment.addons),
            "max_loras": len(deployment.addons),
            "max_cpu_loras": len(deployment.addons),
            "lora_target_modules": LORA_TARGET_MODULES,
        }
    if deployment.speculative is not None:
        options["speculative_config"] = {
            "decoding_type": "DraftTarget",
            "max_draft_len": deployment.speculative.max_draft_tokens,
            "speculative_model_dir": DRAFT_DIR,
        }
    return options


# ModelOpt's hf_ptq example defaults: 512 calibration samples of 512 tokens.
DEFAULT_CALIBRATION = Calibration("byoc-builtin", 512, 512)


def build_plan(
    deployment: Deployment, merged_adapter: str | None = None, calibration: Calibration | None = None
) -> BuildPlan:
    """The build for a Deployment.

    `merged_adapter` (a URI) folds one LoRA adapter into the weights before quantizing; `calibration` replaces the
    default calibration of quantized shapes. Both are part of the cache key, so a build that uses them lands at its
    own prefix (not the one a deployment's serving pods read).
    """
    shape = deployment.shape
    quantization = MODELOPT_CONFIGS.get(shape.precision)
    calibration = (calibration or DEFAULT_CALIBRATION) if quantization else None
    options = serve_options(deployment)
    versions = tool_versions()
    key_inputs = {
        "source": deployment.model_source,
        "revision": deployment.model_revision,
        "precision": shape.precision,
        "gpu_architecture": f"sm{shape.gpu.sm}",
        "tensor_parallel_size": shape.tensor_parallel_size,
        "lora": options.get("lora_config"),
        "addons": [a.model_dump() for a in deployment.addons],
        "calibration": None if calibration is None else calibration.__dict__,
        "tools": versions,
    }
    # Keys added only when used, so that every other build keeps the key (and artifact) it always had.
    if deployment.speculative is not None:
        key_inputs["speculative"] = deployment.speculative.model_dump()
    if merged_adapter is not None:
        key_inputs["merged_adapter"] = merged_adapter
    digest = hashlib.sha256(json.dumps(key_inputs, sort_keys=True).encode()).hexdigest()[:24]
    return BuildPlan(
        model_id=deployment.model.id,
        source=deployment.model_source,
        revision=deployment.model_revision,
        shape=shape.name,
        precision=shape.precision,
        quantization=quantization,
        kv_cache_dtype=shape.kv_cache_dtype,
        calibration=calibration,
        tensor_parallel_size=shape.tensor_parallel_size,
        options=options,
        tool_versions=versions,
        cache_key=digest,
        merged_adapter=merged_adapter,
    )
