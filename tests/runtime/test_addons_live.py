"""Addons added to a running engine/gateway pair with `byoc addons add`, served on their first request (official openai
client), and removed with `byoc addons remove`: 404 from then on and unloaded from the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from byoc.commands.addons import build_addon
from tests.conftest import ROOT
from tests.runtime.conftest import ENGINE_MODEL, KEYS, MODEL, Server, free_port, http, metric, start_gateway
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


def addons(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BYOC_API_KEY"} | {"PYTHONPATH": str(ROOT)}
    if key is not None:
        env["BYOC_API_KEY"] = key
    command = [sys.executable, "-m", "byoc", "addons", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=180, check=False)


def one_line(result: subprocess.CompletedProcess[str], code: int, flag: str) -> str:
    """The command failed as a user should see it: its exit code, one line naming the flag, no traceback."""
    assert result.returncode == code, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), result.stderr
    return lines[0]


def models_of(server: Server) -> set[str]:
    return {c["id"] for c in http("GET", server.url + "/v1/models").json()["data"]}


@contextmanager
def fake_engine(load_status: int, delay: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """A replica that lists a base model and answers every POST with `load_status` after `delay` seconds (an engine
    failing, overloaded, or without the load endpoint, as trtllm-serve is). Yields its URL and the POSTs' paths."""
    posts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(200, {"object": "list", "data": [{"id": ENGINE_MODEL, "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(self.path)
            time.sleep(delay)
            self._answer(load_status, {"object": "error", "message": "engine busy", "code": load_status})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posts
    finally:
        server.shutdown()
        server.server_close()


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

    # a replica that cannot be reached stops the remove before any replica unloads: never on some replicas only
    dead = f"http://127.0.0.1:{free_port()}"
    stopped = addons("remove", "legal", "--engine", engine.url, "--engine", dead, "--gateway", gateway.url)
    assert "cannot be reached" in one_line(stopped, 1, "--engine")
    assert "legal" in models_of(engine) and ask(gateway, "legal") != base_answer

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
    assert not (tmp_path / "adapters").exists()  # the adapter built for the engine that refused it is gone
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


def test_an_addon_named_like_a_base_model_is_refused_before_any_work(
    pair: tuple[Server, Server], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    engine, gateway = pair
    dest = tmp_path / "adapters"
    where = ["--engine", engine.url, "--gateway", gateway.url, "--dest", str(dest)]
    deployment = ["--shape", "h100x1-bf16", "--model-source", f"file://{tiny_models['base']}"]
    before = models_of(engine)
    # the gateway's name for the base model, and the engine's own
    for name in (MODEL, ENGINE_MODEL):
        started = time.monotonic()
        result = addons("add", name, "--source", str(tiny_models["sql"]), *where, *deployment, "--output", "json")
        assert "base model" in one_line(result, 2, "NAME")
        assert json.loads(result.stdout)["error"]["field"] == "NAME"
        assert time.monotonic() - started < 30  # refused, not a 60 s wait for the gateway
    assert not dest.exists()
    assert models_of(engine) == before
    # the engine's own endpoint refuses them too, naming lora_name
    for name in (ENGINE_MODEL, "Bad_Name", "x" * 64):
        body = json.dumps({"lora_name": name, "lora_path": str(tiny_models["sql"])}).encode()
        answer = http("POST", engine.url + "/v1/load_lora_adapter", body, {"Content-Type": "application/json"})
        assert answer.status == 400 and answer.json()["param"] == "lora_name", answer.body
    assert models_of(engine) == before


def test_an_add_that_fails_on_a_replica_leaves_nothing_behind(
    pair: tuple[Server, Server], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The first replica loads the addon, the second cannot: the first unloads it again and the files go."""
    engine, gateway = pair
    dest = tmp_path / "adapters"
    deployment = ["--shape", "h100x1-bf16", "--model-source", f"file://{tiny_models['base']}"]
    source = ["--source", str(tiny_models["sql"])]
    dead = f"http://127.0.0.1:{free_port()}"
    # a replica down: found before anything is built
    down = addons(
        "add",
        "legal",
        *source,
        "--engine",
        engine.url,
        "--engine",
        dead,
        "--gateway",
        gateway.url,
        "--dest",
        str(dest),
        *deployment,
        "--output",
        "json",
    )
    assert "cannot be reached" in one_line(down, 1, "--engine")
    assert json.loads(down.stdout)["error"]["exit_code"] == 1
    # a replica answering an error, or nothing in time, once the first one has loaded the addon; the silent one may
    # have loaded it, so it is asked to unload too
    load, unload = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
    for status, delay, says, asked in (
        (503, 0.0, "answered 503", [load]),
        (200, 5.0, "did not answer", [load, unload]),
    ):
        with fake_engine(status, delay) as (failing, posts):
            where = ["--engine", engine.url, "--engine", failing, "--gateway", gateway.url, "--dest", str(dest)]
            result = addons("add", "legal", *source, *where, *deployment, "--timeout", "2", "--output", "json")
        assert posts == asked
        line = one_line(result, 1, "--engine")
        assert says in line and "unloaded from 1 replica(s)" in line, line
        assert json.loads(result.stdout)["error"]["field"] == "--engine"
        assert not dest.exists()
        assert "legal" not in models_of(engine)
    # a replica that loads it but is not behind this gateway: the gateway never lists it, and the load is undone
    with fake_engine(200) as (elsewhere, posts):
        where = ["--engine", elsewhere, "--gateway", gateway.url, "--dest", str(dest)]
        result = addons("add", "legal", *source, *where, *deployment, "--wait", "2", "--output", "json")
    line = one_line(result, 1, "--gateway")
    assert "did not list addon legal within 2s" in line and "unloaded from 1 replica(s), its files removed" in line
    assert posts == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
    assert not dest.exists()
    # an engine without the load endpoint (trtllm-serve) is told apart from a failing one
    with fake_engine(404) as (trtllm, _):
        result = addons(
            "add", "legal", *source, "--engine", trtllm, "--gateway", gateway.url, "--dest", str(dest), *deployment
        )
    assert "cannot take addons while it runs" in one_line(result, 2, "--engine")
    assert not dest.exists()
    assert "legal" not in models_of(gateway)


def test_the_gateway_key_comes_from_byoc_api_key(
    pair: tuple[Server, Server], keys_file: Path, runtime_dir: Path
) -> None:
    engine, _ = pair
    keyed = start_gateway(runtime_dir, [engine.url], keys=keys_file)
    try:
        unset = addons("list", "--gateway", keyed.url, "--output", "json")
        line = one_line(unset, 2, "BYOC_API_KEY")
        assert "not set" in line and "export BYOC_API_KEY=" in line
        wrong = addons("list", "--gateway", keyed.url, key="sk-not-a-key-of-this-gateway")
        assert "refused" in one_line(wrong, 2, "BYOC_API_KEY")
        right = addons("list", "--gateway", keyed.url, "--output", "json", key=KEYS["ci"])
        assert right.returncode == 0, right.stderr
        assert json.loads(right.stdout) == {"addons": []}
    finally:
        keyed.stop()
