"""Catalogs: GPUs, instance types, regions and model architectures, as data.

The YAML files beside this module hold every number byoc takes from outside, each with its source in a comment.
This module only reads them into typed, frozen objects; rules about them live in `byoc.rules`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from byoc.errors import ByocError

Precision = Literal["bf16", "fp8", "fp4"]
PRECISIONS: tuple[Precision, ...] = ("bf16", "fp8", "fp4")
MEGA_REGIONS = ("GLOBAL", "US", "EUROPE", "APAC")
CLOUDS = ("aws", "gcp")

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    memory_mib: int
    bandwidth_tbs: float
    tflops: Mapping[str, float]
    sm: int
    architecture: str
    interconnect: Literal["nvlink", "pcie"]

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    def supports(self, precision: str) -> bool:
        return precision in self.tflops


@dataclass(frozen=True)
class InstanceType:
    name: str
    cloud: str
    gpu: str
    gpus: int
    hourly_usd: float
    vcpus: int
    memory_mib: int
    # AWS: the default network card's interfaces and IPv4 addresses per interface (they set the node's max pods)
    enis: int | None = None
    ipv4_per_eni: int | None = None
    # the machine's local NVMe: AWS instance store in GB, GCP Local SSD disks of 375 GiB (instances.yaml)
    local_nvme_gb: int | None = None
    local_ssds: int | None = None

    @property
    def gpu_hourly_usd(self) -> float:
        return self.hourly_usd / self.gpus


@dataclass(frozen=True)
class ModelArch:
    """The numbers of a decoder-only transformer that memory and speed depend on."""

    id: str
    source: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    num_experts: int = 1
    experts_per_token: int = 1
    published_params_b: float | None = None

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the LM head (unless tied): ModelOpt keeps both in BF16 when it quantizes."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def _layer_params(self, experts: int) -> int:
        h, hd = self.hidden_size, self.head_dim
        attention = h * self.num_heads * hd * 2 + h * self.num_kv_heads * hd * 2
        if self.attention_bias:
            attention += self.num_heads * hd + 2 * self.num_kv_heads * hd
        mlp = 3 * h * self.intermediate_size * experts  # gate, up, down projections (SwiGLU)
        router = h * self.num_experts if self.num_experts > 1 else 0
        norms = 2 * h
        return attention + mlp + router + norms

    @property
    def params(self) -> int:
        """All parameters: what the weights take in memory."""
        return self.num_layers * self._layer_params(self.num_experts) + self.embedding_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """Parameters one token passes through: what each decode step reads and computes (MoE: top-k experts)."""
        return self.num_layers * self._layer_params(self.experts_per_token) + self.embedding_params + self.hidden_size

    def kv_bytes_per_token(self, bytes_per_element: float) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes per element."""
        return int(2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element)


@dataclass(frozen=True)
class Catalog:
    gpus: Mapping[str, Gpu]
    instances: Mapping[str, Mapping[str, InstanceType]]
    mega_regions: Mapping[str, Mapping[str, tuple[str, ...]]]
    offerings: Mapping[str, Mapping[str, frozenset[str]]]
    models: Mapping[str, ModelArch]
    kubernetes: Mapping[str, Any]
    images: Mapping[str, Any]

    def regions(self, cloud: str) -> tuple[str, ...]:
        """Every region of a cloud in GLOBAL order: US, EUROPE, APAC, then the rest."""
        ordered: list[str] = []
        for mega in ("US", "EUROPE", "APAC"):
            ordered.extend(self.mega_regions[cloud][mega])
        ordered.extend(sorted(set(self.offerings[cloud]) - set(ordered)))
        return tuple(ordered)

    def mega_region_of(self, cloud: str, region: str) -> str | None:
        for mega, members in self.mega_regions[cloud].items():
            if region in members:
                return mega
        return None


# libyaml's safe loader where PyYAML was built with it (the wheels are): the catalogs are read on every command,
# and the pure-Python loader spends a tenth of a second on them.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(name: str) -> Any:
    with (_HERE / name).open() as handle:
        return yaml.load(handle, Loader=_LOADER)


@functools.cache
def load_catalog() -> Catalog:
    gpus = {gid: Gpu(id=gid, **entry) for gid, entry in _read("gpus.yaml").items()}
    instances = {
        cloud: {name: InstanceType(name=name, cloud=cloud, **entry) for name, entry in types.items()}
        for cloud, types in _read("instances.yaml").items()
    }
    regions = _read("regions.yaml")
    mega = {
        cloud: {name: tuple(members) for name, members in groups.items()}
        for cloud, groups in regions["mega_regions"].items()
    }
    offerings = {
        cloud: {region: frozenset(types) for region, types in by_region.items()}
        for cloud, by_region in regions["offerings"].items()
    }
    models = {mid: ModelArch(id=mid, **entry) for mid, entry in _read("models.yaml").items()}
    return Catalog(
        gpus=gpus,
        instances=instances,
        mega_regions=mega,
        offerings=offerings,
        models=models,
        kubernetes=_read("kubernetes.yaml"),
        images=_read("images.yaml"),
    )


# Hugging Face config.json keys -> ModelArch fields, for models outside the catalog.
_ARCHITECTURES_WE_KNOW = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
}


def model_from_hf_config(model_id: str, source: str, config_path: Path, where: str = "model.source") -> ModelArch:
    """Read a local Hugging Face config.json into a ModelArch; unknown architectures are refused with a hint.

    Raises:
        ByocError: naming `where` (the spec field that pointed at the file) when it is missing or unreadable.
    """
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ByocError(
            where,
            f"{config_path} does not exist",
            f"point {where} at a Hugging Face model's config.json"
            if where != "model.source"
            else "point model.source at a Hugging Face model directory that holds config.json",
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ByocError(where, f"cannot read {config_path}: {exc}", "check that config.json is valid JSON") from None
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in _ARCHITECTURES_WE_KNOW]
    if not known:
        raise ByocError(
            where,
            f"architecture {architectures or 'unknown'} in {config_path} is not one byoc can plan for",
            f"use a model with one of: {', '.join(sorted(_ARCHITECTURES_WE_KNOW))}",
        )
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return ModelArch(
            id=model_id,
            source=source,
            architecture=known[0],
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            max_context=int(config.get("max_position_embeddings") or 4096),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", known[0] == "Qwen2ForCausalLM")),
            num_experts=int(config.get("num_local_experts") or 1),
            experts_per_token=int(config.get("num_experts_per_tok") or 1),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ByocError(
            where,
            f"{config_path} lacks or mangles {exc}",
            "use the config.json the model was published with",
        ) from None
