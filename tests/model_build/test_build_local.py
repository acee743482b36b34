"""Real builds of the tiny Llama on CPU into a file:// store: FP8, NVFP4, BF16 + addon, live merge, cache hits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open

from tests.model_build.conftest import FAST_CALIBRATION, byoc, files_under

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tensors(folder: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                found[key] = handle.get_tensor(key)
    return found


def assert_manifest_matches(artifact: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((artifact / "manifest.json").read_text())
    on_disk = {p.relative_to(artifact).as_posix() for p in files_under(artifact)} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (artifact / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, name
    options = (artifact / "options.yaml").read_bytes()
    assert manifest["options_sha256"] == hashlib.sha256(options).hexdigest()
    return manifest


def artifact_path(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def fp8_build(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The issue's command, as a real process: byoc build --source file://TINY --shape h100x1-fp8 --dest file://OUT."""
    out = tmp_path_factory.mktemp("fp8-store")
    command = [sys.executable, "-m", "byoc", "build", "--source", f"file://{tiny}", "--shape", "h100x1-fp8"]
    command += ["--dest", f"file://{out}", "--output", "json", "--calibration-samples", "64"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    lines = done.stdout.strip().splitlines()
    events = [json.loads(line) for line in lines[:-1]]
    assert {e["event"] for e in events} >= {"step", "progress"}
    assert any(e.get("step") == "calibrate" and e["event"] == "progress" for e in events)
    return json.loads(lines[-1]), out


def test_fp8_build_is_a_real_fp8_checkpoint(fp8_build: tuple[dict[str, Any], Path], tiny: Path) -> None:
    result, out = fp8_build
    assert result["cache_hit"] is False
    artifact = artifact_path(result["artifact"])
    assert artifact.parent.parent == out / "artifacts"
    assert artifact.name == result["cache_key"]
    model = artifact / "model"
    weights = tensors(model)
    for layer in (0, 1):
        for name in LINEAR:
            group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"model.layers.{layer}.{group}.{name}"
            assert str(weights[f"{prefix}.weight"].dtype) == "torch.float8_e4m3fn"
            assert str(weights[f"{prefix}.weight_scale"].dtype) == "torch.float32"
            assert float(weights[f"{prefix}.input_scale"]) > 0  # calibrated activation range
        # FP8 KV cache scales (kv_cache_dtype fp8 on quantized shapes)
        assert float(weights[f"model.layers.{layer}.self_attn.k_proj.k_scale"]) > 0
        assert f"model.layers.{layer}.self_attn.v_proj.v_scale" in weights
    assert str(weights["lm_head.weight"].dtype) == "torch.bfloat16"  # ModelOpt keeps the head in BF16
    quant = json.loads((model / "hf_quant_config.json").read_text())
    assert quant["quantization"]["quant_algo"] == "FP8"
    assert quant["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert quant["producer"] == {"name": "modelopt", "version": "0.47.0"}
    for name in TOKENIZER_FILES:
        assert (model / name).read_bytes() == (tiny / name).read_bytes()
    manifest = assert_manifest_matches(artifact)
    assert manifest["source"]["uri"] == f"file://{tiny}"
    assert manifest["shape"] == "h100x1-fp8"
    assert manifest["precision"] == "fp8"
    assert manifest["quantization"] == "FP8_DEFAULT_CFG"
    assert manifest["gpu_architecture"] == "sm90"
    assert manifest["tensor_parallel_size"] == 1
    assert manifest["modelopt_version"] == "0.47.0"
    assert manifest["tensorrt_llm_version"]
    assert manifest["cache_key"] == result["cache_key"]
    assert manifest["calibration"] == {"dataset": "byoc-builtin", "samples": 64, "sequence_length": 512}
    assert manifest["built_at"].endswith("Z")
    assert manifest["addons"] == []
    options = yaml.safe_load((artifact / "options.yaml").read_text())
    assert options["kv_cache_config"]["dtype"] == "fp8"
    assert "lora_config" not in options


def test_second_identical_build_is_a_cache_hit(fp8_build: tuple[dict[str, Any], Path], tiny: Path) -> None:
    first, out = fp8_build
    before = {p: p.stat().st_mtime_ns for p in files_under(out)}
    run = byoc(
        "build", "--source", f"file://{tiny}", "--shape", "h100x1-fp8", "--dest", f"file://{out}",
        "--output", "json", "--calibration-samples", "64",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.result["cache_hit"] is True
    assert run.result["uploaded"] == 0
    assert run.result["artifact"] == first["artifact"]
    assert {p: p.stat().st_mtime_ns for p in files_under(out)} == before


def test_nvfp4_build_packs_weights_with_block_scales(tiny: Path, tmp_path: Path) -> None:
    run = byoc(
        "build", "--source", f"file://{tiny}", "--shape", "b200x1-fp4", "--dest", f"file://{tmp_path}",
        "--output", "json", *FAST_CALIBRATION,
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    artifact = artifact_path(run.result["artifact"])
    weights = tensors(artifact / "model")
    q = "model.layers.0.self_attn.q_proj"
    # two FP4 (E2M1) values per byte; one FP8 scale per block of 16 inputs; a global FP32 scale
    assert str(weights[f"{q}.weight"].dtype) == "torch.uint8"
    assert tuple(weights[f"{q}.weight"].shape) == (128, 64)
    assert str(weights[f"{q}.weight_scale"].dtype) == "torch.float8_e4m3fn"
    assert tuple(weights[f"{q}.weight_scale"].shape) == (128, 8)
    assert str(weights[f"{q}.weight_scale_2"].dtype) == "torch.float32"
    assert float(weights[f"{q}.input_scale"]) > 0
    quant = json.loads((artifact / "model" / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "NVFP4"
    assert quant["group_size"] == 16
    assert quant["kv_cache_quant_algo"] == "FP8"
    manifest = assert_manifest_matches(artifact)
    assert manifest["gpu_architecture"] == "sm100"
    assert manifest["quantization"] == "NVFP4_DEFAULT_CFG"
    for name in TOKENIZER_FILES:
        assert (artifact / "model" / name).is_file()


def test_bf16_build_places_the_addon_beside_the_model(tiny: Path, lora: Path, tmp_path: Path) -> None:
    run = byoc(
        "build", "--source", f"file://{tiny}", "--shape", "a100x1-bf16", "--addon", f"support=file://{lora}",
        "--kv-cache-fraction", "0.8", "--dest", f"file://{tmp_path}", "--output", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    artifact = artifact_path(run.result["artifact"])
    # BF16: the checkpoint as is
    assert (artifact / "model" / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    assert not (artifact / "model" / "hf_quant_config.json").exists()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (artifact / "adapters" / "support" / name).read_bytes() == (lora / name).read_bytes()
    options = yaml.safe_load((artifact / "options.yaml").read_text())
    assert options["lora_config"]["max_lora_rank"] == 8
    assert options["lora_config"]["max_loras"] == 1
    assert "attn_q" in options["lora_config"]["lora_target_modules"]
    assert options["kv_cache_config"] == {
        "free_gpu_memory_fraction": 0.8,
        "enable_block_reuse": True,
        "event_buffer_max_size": 1024,
        "dtype": "auto",
    }
    manifest = assert_manifest_matches(artifact)
    assert manifest["addons"][0]["id"] == "support"
    assert manifest["addons"][0]["path"] == "adapters/support"
    assert manifest["addons"][0]["rank"] == 8
    assert manifest["addons"][0]["target_modules"] == ["q_proj", "v_proj"]
    assert manifest["quantization"] is None


def test_live_merge_folds_the_adapter_in_before_quantizing(tiny: Path, lora: Path, tmp_path: Path) -> None:
    common = ["--source", f"file://{tiny}", "--shape", "h100x1-fp8", "--output", "json", *FAST_CALIBRATION]
    plain = byoc("build", *common, "--dest", f"file://{tmp_path}")
    merged = byoc("build", *common, "--merge-adapter", f"file://{lora}", "--dest", f"file://{tmp_path}")
    assert plain.exit_code == 0 and merged.exit_code == 0, merged.stderr
    assert plain.result["cache_key"] != merged.result["cache_key"]  # the merge is part of the key
    a = tensors(artifact_path(plain.result["artifact"]) / "model")
    b = tensors(artifact_path(merged.result["artifact"]) / "model")
    layer = "model.layers.0.self_attn"
    # the adapter patches q_proj and v_proj only: those weights change, k_proj stays bit-identical
    assert not a[f"{layer}.q_proj.weight"].view(torch.uint8).equal(b[f"{layer}.q_proj.weight"].view(torch.uint8))
    assert a[f"{layer}.k_proj.weight"].view(torch.uint8).equal(b[f"{layer}.k_proj.weight"].view(torch.uint8))
    manifest = json.loads((artifact_path(merged.result["artifact"]) / "manifest.json").read_text())
    assert manifest["merged_adapter"]["source"] == f"file://{lora}"
    assert manifest["merged_adapter"]["rank"] == 8


def test_plan_only_prints_the_plan_and_writes_nothing(tiny: Path, tmp_path: Path) -> None:
    run = byoc(
        "build", "--source", f"file://{tiny}", "--shape", "h100x2-fp8", "--dest", f"file://{tmp_path}",
        "--plan-only", "--output", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    plan = run.result["plan"]
    assert plan["tensor_parallel_size"] == 2
    assert plan["quantization"] == "FP8_DEFAULT_CFG"
    assert plan["serve_command"][:2] == ["trtllm-serve", "/models/model"]
    assert run.result["artifact"] == f"file://{tmp_path}/{plan['artifact_prefix']}"
    assert yaml.safe_load(run.result["options_yaml"]) == plan["options"]
    assert files_under(tmp_path) == []
    text = byoc("build", "--source", f"file://{tiny}", "--shape", "h100x2-fp8", "--plan-only")
    assert text.exit_code == 0
    assert "trtllm-serve /models/model" in text.stdout
    assert "tensor_parallel_size: 2" in text.stdout
