"""Refused builds: exit 2, one clear message, and nothing at the destination."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.model_build.conftest import byoc, files_under


def refused(dest: Path, *args: str) -> str:
    run = byoc("build", *args, "--dest", f"file://{dest}", "--output", "json")
    assert run.exit_code == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert files_under(dest) == []
    error = run.result["error"]
    return f"{error['field']}: {error['message']} ({error['hint']})"


def test_missing_source(tmp_path: Path) -> None:
    message = refused(tmp_path / "out", "--source", f"file://{tmp_path}/nowhere", "--shape", "h100x1-fp8")
    assert message.startswith("--source: ")  # the flag typed, not the spec field it fills (model.source)
    assert "does not exist" in message


def test_unknown_architecture(tiny: Path, tmp_path: Path) -> None:
    odd = tmp_path / "gpt2-ish"
    shutil.copytree(tiny, odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (odd / "config.json").write_text(json.dumps(config))
    message = refused(tmp_path / "out", "--source", f"file://{odd}", "--shape", "h100x1-fp8")
    assert "GPT2LMHeadModel" in message
    assert "LlamaForCausalLM" in message  # the hint lists what byoc knows


def test_source_without_weights(tiny: Path, tmp_path: Path) -> None:
    empty = tmp_path / "config-only"
    empty.mkdir()
    shutil.copy(tiny / "config.json", empty / "config.json")
    message = refused(tmp_path / "out", "--source", f"file://{empty}", "--shape", "h100x1-bf16")
    assert "no weights" in message


def test_a_checkpoint_claimed_as_a_catalog_model_it_is_not(tiny: Path, tmp_path: Path) -> None:
    """The issue's case: a 2-layer checkpoint built as llama-3.3-70b-instruct is refused before anything is stored."""
    message = refused(
        tmp_path / "out", "--source", f"file://{tiny}", "--model-id", "llama-3.3-70b-instruct", "--shape", "h100x1-bf16"
    )
    assert message.startswith(f"--source: file://{tiny} is not llama-3.3-70b-instruct: ")
    assert "its config.json has num_hidden_layers 2, the catalog's llama-3.3-70b-instruct has 80" in message
    assert "--model-id" in message  # the way out: an id outside the catalog


# llama-3.1-8b-instruct as its config.json on Hugging Face publishes it (byoc/catalogs/models.yaml holds the same)
_LLAMA_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "vocab_size": 128256,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("architectures", ["Qwen2ForCausalLM"], "Qwen2ForCausalLM"),
        ("num_hidden_layers", 16, "16"),
        ("hidden_size", 2048, "2048"),
        ("vocab_size", 441, "441"),
        ("num_attention_heads", 16, "16"),
        ("num_key_value_heads", 4, "4"),
    ],
)
def test_each_identity_field_is_checked_against_the_catalog(
    tiny: Path, tmp_path: Path, key: str, value: object, shown: str
) -> None:
    """A checkpoint equal to the catalog entry but in one field is refused, naming that field and both values."""
    near = tmp_path / "near-8b"
    shutil.copytree(tiny, near)
    config = json.loads((near / "config.json").read_text()) | _LLAMA_8B
    config[key] = value
    (near / "config.json").write_text(json.dumps(config))
    dest = tmp_path / "out"
    message = refused(
        dest, "--source", f"file://{near}", "--model-id", "llama-3.1-8b-instruct", "--shape", "h100x1-bf16"
    )
    want = _LLAMA_8B[key][0] if key == "architectures" else _LLAMA_8B[key]
    assert f"its config.json has {key} {shown}, the catalog's llama-3.1-8b-instruct has {want}" in message
    # --plan-only reads the same rule (it resolves the same spec)
    run = byoc(
        "build",
        "--source",
        f"file://{near}",
        "--model-id",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-bf16",
        "--plan-only",
        "--output",
        "json",
    )
    assert run.exit_code == 2 and key in run.result["error"]["message"]


def test_a_remote_checkpoint_claimed_as_a_catalog_model_is_refused_after_fetch(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf:// with a catalog id plans from the catalog (offline); the fetched config.json is checked before the build."""
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny, mirror / "meta-llama" / "Llama-3.1-8B-Instruct" / "r1")
    monkeypatch.setenv("BYOC_HF_MIRROR", str(mirror))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    message = refused(
        tmp_path / "out",
        "--source",
        "hf://meta-llama/Llama-3.1-8B-Instruct",
        "--revision",
        "r1",
        "--model-id",
        "llama-3.1-8b-instruct",
        "--shape",
        "h100x1-bf16",
    )
    assert "its config.json has num_hidden_layers 2, the catalog's llama-3.1-8b-instruct has 32" in message


def test_adapter_for_another_base(tiny: Path, foreign_lora: Path, tmp_path: Path) -> None:
    message = refused(
        tmp_path / "out", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--addon", f"x=file://{foreign_lora}"
    )
    assert message.startswith("--addon: ")
    assert "addon x was trained for another base model" in message


def test_adapter_rank_above_the_declared_rank(tiny: Path, lora: Path, tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        f"name: t\ncloud: aws\nregion: GLOBAL\nshape: h100x1-bf16\nmodel: {{id: tiny, source: 'file://{tiny}'}}\n"
        f"addons: [{{id: support, source: 'file://{lora}', rank: 4}}]\n"
    )
    message = refused(tmp_path / "out", "-f", str(spec))
    assert "rank 8, above its declared rank 4" in message
    assert "rank: 8" in message


def test_fp4_on_a_non_blackwell_shape(tiny: Path, tmp_path: Path) -> None:
    message = refused(tmp_path / "out", "--source", f"file://{tiny}", "--shape", "h100x1-fp4")
    assert "Blackwell" in message


def test_lora_on_a_quantized_shape(tiny: Path, lora: Path, tmp_path: Path) -> None:
    message = refused(
        tmp_path / "out", "--source", f"file://{tiny}", "--shape", "h100x1-fp8", "--addon", f"a=file://{lora}"
    )
    assert "cannot take LoRA addons" in message
    assert "h100x1-bf16" in message


def test_hf_source_needs_a_mirror_or_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOC_HF_MIRROR", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    message = refused(tmp_path / "out", "--source", "hf://acme/tiny-llama", "--shape", "h100x1-bf16")
    assert "BYOC_HF_MIRROR" in message and "HF_HUB_CACHE" in message
    assert "never downloads" in message


def test_hf_source_through_a_mirror(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(tiny, mirror / "acme" / "tiny-llama" / "r1")
    monkeypatch.setenv("BYOC_HF_MIRROR", str(mirror))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    common = ["--source", "hf://acme/tiny-llama", "--shape", "h100x1-bf16", "--output", "json"]
    missing = byoc("build", *common, "--revision", "r2", "--dest", f"file://{tmp_path}/out")
    assert missing.exit_code == 2
    assert "not in the configured mirror" in missing.result["error"]["message"]
    run = byoc("build", *common, "--revision", "r1", "--dest", f"file://{tmp_path}/out")
    assert run.exit_code == 0, run.stderr
    manifest = json.loads((Path(run.result["artifact"].removeprefix("file://")) / "manifest.json").read_text())
    assert manifest["source"] | {"digest": None} == {
        "uri": "hf://acme/tiny-llama",
        "revision": "r1",
        "resolved_revision": "r1",
        "via": "mirror",
        "digest": None,
    }
    assert manifest["model_id"] == "tiny-llama"


def test_hf_source_through_a_hub_cache(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.delenv("BYOC_HF_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    run = byoc(
        "build", "--source", "hf://acme/tiny-llama", "--shape", "h100x1-bf16", "--dest", f"file://{tmp_path}/out",
        "--output", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    manifest = json.loads((Path(run.result["artifact"].removeprefix("file://")) / "manifest.json").read_text())
    assert manifest["source"]["resolved_revision"] == commit
    assert manifest["source"]["via"] == "hf-cache"


def test_gs_destination_needs_google_cloud_storage(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the runtime extra installs google-cloud-storage; an image without it must say what is missing, and no test
    # may reach Google (a real client would look for credentials on the network)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    run = byoc("build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--dest", "gs://bucket", "-o", "json")
    assert run.exit_code == 2
    assert "google-cloud-storage" in run.result["error"]["message"]
    assert "pip install google-cloud-storage" in run.result["error"]["hint"]


def test_flags_without_a_spec_need_source_and_shape() -> None:
    run = byoc("build", "--shape", "h100x1-fp8", "--dest", "file:///tmp/x")
    assert run.exit_code == 2
    assert "--source: is required without -f" in run.stderr


def test_build_needs_a_destination(tiny: Path) -> None:
    run = byoc("build", "--source", f"file://{tiny}", "--shape", "h100x1-bf16")
    assert run.exit_code == 2
    assert "--dest" in run.stderr


def test_malformed_addon_flag(tiny: Path, tmp_path: Path) -> None:
    message = refused(tmp_path / "out", "--source", f"file://{tiny}", "--shape", "h100x1-bf16", "--addon", "oops")
    assert "NAME=URI" in message
