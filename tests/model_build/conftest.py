"""Shared pieces of the build tests: the tiny model and adapters (made once per session), the CLI, a moto server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from byoc.cli import app
from tests.tiny_model import make_lora_adapter, make_tiny_llama, make_tokenizer

# Calibration is a forward pass over samples x tokens; on two CPU cores the default 512 x 512 takes ~30 s for the
# tiny model, so most tests calibrate on fewer samples (one end-to-end run uses the default; see docs/build.md).
FAST_CALIBRATION = ["--calibration-samples", "16", "--calibration-seq-len", "128"]


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The last stdout line: the command's JSON result (with --output json)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert lines, f"no output; stderr: {self.stderr}"
        data = json.loads(lines[-1])
        assert isinstance(data, dict)
        return data

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()[:-1] if line.startswith("{")]


def byoc(*args: str, env: dict[str, str] | None = None) -> Run:
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny(models: Path) -> Path:
    return make_tiny_llama(models / "tiny-llama")


@pytest.fixture(scope="session")
def lora(tiny: Path, models: Path) -> Path:
    return make_lora_adapter(tiny, models / "lora-support", rank=8)


def make_other_base(folder: Path) -> Path:
    """A Llama with another hidden size (64): an adapter trained on it does not fit the tiny model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer: Any = make_tokenizer(folder)
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    model: Any = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def foreign_lora(models: Path) -> Path:
    base = make_other_base(models / "other-base")
    return make_lora_adapter(base, models / "lora-other-base", rank=8)


@pytest.fixture()
def aws_env() -> Iterator[dict[str, str]]:
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="eu-west-2",
        AWS_REGION="eu-west-2",
    )
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)
