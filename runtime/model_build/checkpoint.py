"""Turning a Hugging Face checkpoint into the model folder for a shape: ModelOpt quantization and export, or a copy.

FP8 and FP4 shapes: load in BF16, optionally merge one LoRA adapter ("live merge"; ModelOpt cannot export a
peft-wrapped model), quantize with the plan's ModelOpt config plus FP8 KV-cache scales, calibrate on the built-in
set, export the unified Hugging Face checkpoint (the format trtllm-serve's PyTorch backend loads), and copy the
tokenizer and other support files, which the export does not write. BF16 shapes: the checkpoint as is (or merged).

Calibration is a max-calibration forward pass; it runs on CPU for FP8 and NVFP4 alike (only a forward pass *after*
NVFP4 quantization needs CUDA, and the build never runs one). On a GPU machine the model goes to the GPUs.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from byoc.errors import ByocFailure
from runtime.model_build.calibration import batches, token_windows
from runtime.model_build.plan import Calibration
from runtime.model_build.progress import Events

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# files the export writes itself; everything else in the source (tokenizer, chat template, ...) is copied over
EXPORT_WRITES = ("config.json", "generation_config.json", "hf_quant_config.json")
CALIBRATION_BATCH = 16


# Unquantized weight dtypes: what a manifest's `precision` or a config's `torch_dtype` says for a plain checkpoint.
FULL_PRECISIONS = frozenset({"bf16", "bfloat16", "fp16", "float16", "half", "fp32", "float32", "float"})


def _json_object(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def quantization_of(folder: Path) -> tuple[str, str] | None:
    """(what the weights are quantized to, the file that says so), or None for full-precision weights.

    Read where each producer writes it: ModelOpt's unified export (`hf_quant_config.json`: `quantization.quant_algo`
    and `kv_cache_quant_algo`, e.g. FP8, NVFP4, W4A8_AWQ; newer ModelOpt also puts `quantization_config` with
    `quant_method: modelopt` and `quant_algo` in config.json), any other Hugging Face quantizer (config.json
    `quantization_config.quant_method`: gptq, awq, fp8, bitsandbytes, compressed-tensors, ...), and byoc's artifact
    manifest (`precision` fp8/fp4, `quantization`).
    """
    modelopt = _json_object(folder / "hf_quant_config.json").get("quantization")
    if isinstance(modelopt, dict):
        for key in ("quant_algo", "kv_cache_quant_algo"):
            if modelopt.get(key):
                what = str(modelopt[key]) + (" KV cache" if key == "kv_cache_quant_algo" else "")
                return what, "hf_quant_config.json"
    quantization = _json_object(folder / "config.json").get("quantization_config")
    if isinstance(quantization, dict) and quantization:
        what = quantization.get("quant_algo") or quantization.get("quant_method") or "quantized"
        return str(what), "config.json quantization_config"
    manifest = _json_object(folder / "manifest.json")
    precision = manifest.get("precision")
    if isinstance(precision, str) and precision.lower() not in FULL_PRECISIONS:
        return precision.upper(), "manifest.json precision"
    if manifest.get("quantization"):
        return str(manifest["quantization"]), "manifest.json quantization"
    return None


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES


def has_weights(folder: Path) -> bool:
    return any(p.is_file() and p.name.endswith((".safetensors", ".bin")) for p in folder.iterdir())


def _visible_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def copy_support_files(source: Path, target: Path) -> list[str]:
    """Copy the tokenizer, chat template and other non-weight files the export does not write."""
    copied = []
    for path in _visible_files(source):
        relative = path.relative_to(source)
        if is_weight_file(path.name) or (target / relative).exists() or relative.as_posix() in EXPORT_WRITES:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)
        copied.append(relative.as_posix())
    return copied


def copy_checkpoint(source: Path, target: Path, events: Events, step: str) -> None:
    """The checkpoint as is (BF16 shapes, draft models), with byte progress."""
    files = list(_visible_files(source))
    total = sum(p.stat().st_size for p in files)
    done = 0
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        done += path.stat().st_size
        events.progress(step, done, total, "bytes")
    events.progress(step, total, total, "bytes", final=True)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """ModelOpt and transformers print to stdout, which carries the JSON events: keep their chatter aside."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        try:
            hf_logging: Any = importlib.import_module("transformers.utils.logging")
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        yield buffer


def _failure(step: str, exc: Exception, chatter: io.StringIO) -> ByocFailure:
    tail = chatter.getvalue().strip().splitlines()[-3:]
    detail = f" (last output: {' | '.join(tail)})" if tail else ""
    return ByocFailure(step, f"{type(exc).__name__}: {exc}{detail}", "see the build log; rerun with the same command")


def _load(source: Path, merge_adapter: Path | None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement: dict[str, Any] = {"device_map": "auto"} if torch.cuda.is_available() else {}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, **placement)
    if merge_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, merge_adapter).merge_and_unload()
    model.train(False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def _forward_loop(
    tokenizer: Any, calibration: Calibration, max_positions: int, events: Events
) -> Callable[[Any], None]:
    length = min(calibration.sequence_length, max_positions)
    windows = token_windows(tokenizer, calibration.samples, length)

    def loop(model: Any) -> None:
        import torch

        device = next(model.parameters()).device
        done = 0
        with torch.no_grad():
            for batch in batches(windows, CALIBRATION_BATCH):
                ids = torch.tensor(batch, dtype=torch.long, device=device)
                model(input_ids=ids, attention_mask=torch.ones_like(ids))
                done += len(batch)
                events.progress("calibrate", done, len(windows), "samples")
        events.progress("calibrate", len(windows), len(windows), "samples", final=True)

    return loop


def quantize(
    source: Path,
    target: Path,
    quantization: str,
    kv_cache_dtype: str,
    calibration: Calibration,
    merge_adapter: Path | None,
    events: Events,
) -> dict[str, Any]:
    """Quantize with ModelOpt and export the unified HF checkpoint into target; returns what was done."""
    timings: dict[str, float] = {}  # load includes importing torch, transformers and ModelOpt
    started = time.monotonic()
    with _quiet() as chatter:
        try:
            # ModelOpt ships no type information
            modelopt: Any = importlib.import_module("modelopt")
            mtq: Any = importlib.import_module("modelopt.torch.quantization")
            export_hf_checkpoint = importlib.import_module("modelopt.torch.export").export_hf_checkpoint
            core_utils: Any = importlib.import_module("modelopt.torch.quantization.utils.core_utils")
            update_quant_cfg_with_kv_cache_quant = core_utils.update_quant_cfg_with_kv_cache_quant
        except ImportError as exc:
            raise ByocFailure(
                "quantize",
                f"NVIDIA ModelOpt cannot be imported ({exc})",
                "pip install 'byoc-inference[runtime]' (nvidia-modelopt without its [hf] extra) and requests",
            ) from None
        try:
            events.step(
                "load", f"loading {source.name} in BF16" + (" and merging the adapter" if merge_adapter else "")
            )
            model, tokenizer = _load(source, merge_adapter)
            timings["load"] = round(time.monotonic() - started, 3)
            config = getattr(mtq, quantization)
            if kv_cache_dtype == "fp8":
                config = update_quant_cfg_with_kv_cache_quant(config, mtq.FP8_KV_CFG["quant_cfg"])
            max_positions = int(getattr(model.config, "max_position_embeddings", calibration.sequence_length))
            loop = _forward_loop(tokenizer, calibration, max_positions, events)
            events.step(
                "calibrate",
                f"{quantization}: calibrating on {calibration.samples} samples of "
                f"{min(calibration.sequence_length, max_positions)} tokens ({calibration.dataset})",
            )
            started = time.monotonic()
            model = mtq.quantize(model, config, forward_loop=loop)
            timings["calibrate"] = round(time.monotonic() - started, 3)
            events.step("export", f"exporting the quantized checkpoint to {target.name}/")
            started = time.monotonic()
            target.mkdir(parents=True, exist_ok=True)
            export_hf_checkpoint(model, export_dir=target)
            timings["export"] = round(time.monotonic() - started, 3)
        except ByocFailure:
            raise
        except Exception as exc:
            raise _failure("quantize", exc, chatter) from None
    copied = copy_support_files(source, target)
    return {
        "modelopt_installed": str(modelopt.__version__),
        "kv_cache_quantization": "FP8" if kv_cache_dtype == "fp8" else None,
        "support_files": copied,
        "timings": timings,
    }


def merge_bf16(source: Path, target: Path, merge_adapter: Path, events: Events) -> dict[str, Any]:
    """BF16 shape with a live merge: the base with one adapter folded in, saved as a normal checkpoint."""
    with _quiet() as chatter:
        try:
            events.step("merge", f"merging the adapter into {source.name} (BF16)")
            model, _ = _load(source, merge_adapter)
            target.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(target, safe_serialization=True)
        except Exception as exc:
            raise _failure("merge", exc, chatter) from None
    return {"support_files": copy_support_files(source, target)}
