"""LoRA adapters: checked against the base checkpoint before they are placed beside it.

trtllm-serve loads a PEFT adapter per request (`lora_request.lora_path`); a wrong one fails only then, on a GPU, for
a user. So the build checks what it can from the files: a PEFT LoRA, rank within max_lora_rank, target modules that
trtllm's LoRA manager knows, and every adapter tensor matching the base layer it patches (same architecture, same
hidden size, same number of layers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byoc.errors import ByocError
from runtime.model_build.plan import LORA_TARGET_MODULES

# Hugging Face module names -> trtllm LoRA module names (tensorrt_llm/lora_manager.py, Llama-style models)
HF_TO_TRTLLM = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_dense",
    "gate_proj": "mlp_h_to_4h",
    "down_proj": "mlp_4h_to_h",
    "up_proj": "mlp_gate",
}
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: str | None
    files: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "base_model": self.base_model,
            "files": self.files,
        }


def read_config(folder: Path, field: str) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ByocError(field, "holds no adapter_config.json", "point it at a PEFT adapter folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ByocError(field, f"adapter_config.json cannot be read: {exc}", "use the PEFT-saved config") from None
    if not isinstance(config, dict):
        raise ByocError(field, "adapter_config.json is not a JSON object", "use the PEFT-saved config")
    return config


def base_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a checkpoint, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _adapter_tensors(folder: Path, field: str) -> dict[str, tuple[int, ...]]:
    safetensors_file = folder / ADAPTER_WEIGHTS[0]
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), "pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    bin_file = folder / ADAPTER_WEIGHTS[1]
    if bin_file.is_file():
        import torch

        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    raise ByocError(field, f"holds neither {' nor '.join(ADAPTER_WEIGHTS)}", "save the adapter with PEFT")


def _num_layers(shapes: dict[str, tuple[int, ...]]) -> int:
    layers = {int(m.group(1)) for k in shapes if (m := re.search(r"\.layers\.(\d+)\.", k))}
    return max(layers) + 1 if layers else 0


def validate_adapter(folder: Path, addon_id: str, declared_rank: int, base_dir: Path, field: str) -> AdapterInfo:
    """Check a PEFT LoRA adapter against the base checkpoint; raise a ByocError (exit 2) naming what is wrong."""
    config = read_config(folder, field)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ByocError(field, f"addon {addon_id} is a {peft_type or 'non-PEFT'} adapter", "addons must be LoRA")
    if config.get("use_dora"):
        raise ByocError(field, f"addon {addon_id} is a DoRA adapter", "trtllm-serve loads plain LoRA adapters only")
    rank = int(config.get("r", 0))
    if rank < 1:
        raise ByocError(field, f"addon {addon_id} declares rank r={rank}", "use the adapter_config.json PEFT saved")
    if rank > declared_rank:
        raise ByocError(
            field,
            f"addon {addon_id} has rank {rank}, above its declared rank {declared_rank} (which sizes max_lora_rank)",
            f"set `rank: {rank}` on the addon in the spec",
        )
    if config.get("modules_to_save"):
        raise ByocError(
            field,
            f"addon {addon_id} also trains full modules ({config['modules_to_save']})",
            "trtllm-serve LoRA patches only the LoRA layers; retrain without modules_to_save",
        )
    shapes = base_shapes(base_dir)
    tensors = _adapter_tensors(folder, field)
    targets: set[str] = set()
    base_layers = _num_layers(shapes)
    for key, shape in sorted(tensors.items()):
        match = _LORA_KEY.match(key)
        if match is None:
            raise ByocError(field, f"addon {addon_id} holds {key}, which is not a LoRA tensor", "save with PEFT")
        module, part = match["module"], match["part"]
        targets.add(module.rsplit(".", 1)[-1])
        base = shapes.get(f"{module}.weight")
        if base is None:
            layer = re.search(r"\.layers\.(\d+)\.", module)
            detail = (
                f"layer {layer.group(1)}, but the base model has {base_layers} layers"
                if layer and int(layer.group(1)) >= base_layers
                else f"{module}, which the base model does not have"
            )
            raise ByocError(
                field,
                f"addon {addon_id} was trained for another base model: it patches {detail}",
                "use an adapter trained on this base model",
            )
        out_features, in_features = base[0], base[-1]
        expected = (rank, in_features) if part == "A" else (out_features, rank)
        if shape != expected:
            raise ByocError(
                field,
                f"addon {addon_id} was trained for another base model: {key} is {list(shape)}, but {module} "
                f"({out_features}x{in_features}) with rank {rank} needs {list(expected)}",
                "use an adapter trained on this base model (same architecture and hidden size)",
            )
    if not targets:
        raise ByocError(field, f"addon {addon_id} holds no LoRA weights", "save the adapter with PEFT")
    unknown = sorted(t for t in targets if HF_TO_TRTLLM.get(t) not in LORA_TARGET_MODULES)
    if unknown:
        raise ByocError(
            field,
            f"addon {addon_id} targets {', '.join(unknown)}, which trtllm-serve LoRA does not patch",
            f"train on {', '.join(HF_TO_TRTLLM)}",
        )
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    base_model = config.get("base_model_name_or_path")
    return AdapterInfo(
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),
        target_modules=sorted(targets),
        base_model=str(base_model) if base_model else None,
        files=files,
    )
