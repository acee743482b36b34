"""Addons added to a running engine/gateway pair with `byoc addons add`, served on their first request (official openai
client), and removed with `byoc addons remove`: 404 from then on and unloaded from the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from byoc.commands.addons import build_addon
from tests.conftest import ROOT
from tests.runtime.conftest import ENGINE_MODEL, MODEL, Server, free_port, http, metric, start_gateway
from tests.tiny_model import make_lora_adapter


@pytest.fixture(scope="module")
def pair(tiny_models: dict[str, Path], runtime_dir: Path) -> Iterator[tuple[Server, Server]]:
    port = free_port()
    args = ["engine", "--model-dir", str(tiny_models["base"]), "--listen", f"127.0.0.1:{port}"]
    args += ["--model-name", ENGINE_MODEL, "--threads", "1", "--max-lora-rank", "8", "--max-loras", "2"]
    engine = Server("engine", args, runtime_dir, port)  # started with no addon at all
    engine.wait()
    gateway = start_gateway(runtime_dir, [engine.url], "--health-interval", "0.5")
    yield engine, gateway
    gateway.stop()
    engine.stop()


def addons(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "byoc", "addons", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=180, check=False)


def client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def ask(gateway: Server, model: str) -> str:
    answer = client(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me about the weather."}],
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return answer.choices[0].message.content or ""


def resident(engine: Server) -> float:
    text = http("GET", engine.url + "/prometheus/metrics").body.decode()
    return metric(text, "byoc_engine_lora_adapters_resident") or 0.0


def test_an_addon_added_live_serves_its_first_request_and_a_removed_one_is_404(
    pair: tuple[Server, Server], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    engine, gateway = pair
    base_answer = ask(gateway, MODEL)
    with pytest.raises(openai.NotFoundError):
        ask(gateway, "legal")
    where = ["--engine", engine.url, "--gateway", gateway.url, "--dest", str(tmp_path / "adapters")]
    deployment = ["--shape", "h100x1-bf16", "--model-source", f"file://{tiny_models['base']}"]
    added = addons("add", "legal", "--source", str(tiny_models["support"]), *where, *deployment, "--output", "json")
    assert added.returncode == 0, added.stderr + added.stdout
    result = json.loads(added.stdout)
    assert set(result["files"]) >= {"adapter_config.json", "adapter_model.safetensors"}
    manifest = json.loads((tmp_path / "adapters" / "legal" / "manifest.json").read_text())
    assert manifest["files"] == result["files"]
    # the very first request for it is served, through the adapter (not the base model)
    assert ask(gateway, "legal") != base_answer
    assert resident(engine) == 1
    listed = addons("list", "--gateway", gateway.url, "--output", "json")
    assert json.loads(listed.stdout)["addons"] == ["legal"]
    # one name, one adapter: other weights under a served name are refused, and the served ones stay
    again = addons("add", "legal", "--source", str(tiny_models["sql"]), *where, *deployment)
    assert again.returncode == 2 and "already served" in again.stderr
    assert json.loads((tmp_path / "adapters" / "legal" / "manifest.json").read_text())["files"] == result["files"]

    removed = addons("remove", "legal", "--engine", engine.url, "--gateway", gateway.url)
    assert removed.returncode == 0, removed.stderr + removed.stdout
    with pytest.raises(openai.NotFoundError):
        ask(gateway, "legal")
    assert resident(engine) == 0  # unloaded from the model, not only unlisted
    assert ask(gateway, MODEL) == base_answer  # the base model is untouched


def test_addons_follow_the_plan_time_rules(
    pair: tuple[Server, Server], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    engine, gateway = pair
    where = ["--engine", engine.url, "--gateway", gateway.url, "--dest", str(tmp_path / "adapters")]
    base = ["--model-source", f"file://{tiny_models['base']}"]
    # FP8 shapes take no addons (byoc/rules.py), whatever the adapter
    fp8 = addons("add", "sql2", "--source", str(tiny_models["sql"]), *where, *base, "--shape", "h100x1-fp8")
    assert fp8.returncode == 2 and "cannot take LoRA addons" in fp8.stderr
    # a rank above the engine's max_lora_rank (8) is refused by the engine with the build-time adapter check
    wide = make_lora_adapter(tiny_models["base"], tmp_path / "wide", rank=16, seed=5)
    refused = addons("add", "wide", "--source", str(wide), *where, *base, "--shape", "h100x1-bf16")
    assert refused.returncode == 2 and "rank 16" in refused.stderr
    assert "wide" not in {c["id"] for c in http("GET", gateway.url + "/v1/models").json()["data"]}
    with pytest.raises(openai.NotFoundError):
        ask(gateway, "wide")


def test_an_adapter_that_does_not_match_its_manifest_is_refused(
    pair: tuple[Server, Server], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    engine, _ = pair
    built = build_addon("tampered", f"file://{tiny_models['sql']}", tmp_path)
    weights = Path(built["path"]) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    body = json.dumps({"lora_name": "tampered", "lora_path": built["path"]}).encode()
    answer = http("POST", engine.url + "/v1/load_lora_adapter", body, {"Content-Type": "application/json"})
    assert answer.status == 400
    assert "does not match manifest.json" in answer.json()["message"]
    assert "tampered" not in {c["id"] for c in http("GET", engine.url + "/v1/models").json()["data"]}
