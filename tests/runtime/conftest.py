"""Real servers on 127.0.0.1 for the serving runtime: the CPU engine with a tiny Llama and two LoRA addons, and the
gateway in front of it, each a `byoc serve ...` subprocess whose every log line is kept for the retention test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ROOT

MODEL = "tiny-llama"  # what clients call the base model at the gateway
ENGINE_MODEL = "tiny-engine"  # what the engine calls it (the gateway rewrites one into the other)
KEYS = {
    "ci": "sk-ci-3f9a0c7e5b1d4e8f9a2b6c0d",
    "slow": "sk-slow-7d2e9b4c1a6f0e3d8c5b",
    "single": "sk-single-5c8e1f4a7b0d3e6f9a2c",
}
STARTUP_SECONDS = 90.0
LOG_FILES: list[Path] = []  # every process's output, for the zero-data-retention test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Http:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Http:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Http(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return Http(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or (series.startswith(name + "{") and all(f'{k}="{v}"' in series for k, v in labels.items())):
            return float(value)
    return None


class Server:
    """A `byoc serve ...` subprocess with its output in a file."""

    def __init__(self, name: str, args: list[str], folder: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = folder / f"{name}-{port}.log"
        LOG_FILES.append(self.log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "byoc", "serve", *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )

    def wait(self, path: str = "/health", timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.log.name} exited with {self.process.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError):
                if http("GET", self.url + path).status == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.log.name} did not answer {path} within {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        return http("GET", self.url + "/metrics").body.decode()


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def tiny_models(runtime_dir: Path) -> dict[str, Path]:
    from tests.tiny_model import make_lora_adapter, make_tiny_llama

    base = make_tiny_llama(runtime_dir / "tiny-llama")
    return {
        "base": base,
        "sql": make_lora_adapter(base, runtime_dir / "sql-lora", seed=1),
        "support": make_lora_adapter(base, runtime_dir / "support-lora", seed=2),
    }


def start_engine(models: dict[str, Path], folder: Path, port: int | None = None, wait: bool = True) -> Server:
    port = port or free_port()
    args = [
        "engine",
        "--model-dir",
        str(models["base"]),
        "--addon",
        f"sql={models['sql']}",
        "--addon",
        f"support={models['support']}",
        "--listen",
        f"127.0.0.1:{port}",
        "--model-name",
        ENGINE_MODEL,
        "--threads",
        "1",
    ]
    server = Server("engine", args, folder, port)
    if wait:
        server.wait()
    return server


def start_gateway(
    folder: Path, upstreams: list[str], *extra: str, keys: Path | None = None, wait: bool = True
) -> Server:
    port = free_port()
    args = ["gateway", "--listen", f"127.0.0.1:{port}", "--model", MODEL, "--max-context", "2048"]
    for upstream in upstreams:
        args += ["--upstream", upstream]
    args += ["--api-keys", str(keys)] if keys else ["--insecure-no-auth"]
    server = Server("gateway", [*args, *extra], folder, port)
    if wait:
        server.wait("/ready")
    return server


@pytest.fixture(scope="session")
def keys_file(runtime_dir: Path) -> Path:
    from runtime.serve.keys import hash_key_entry

    limits = {"ci": (600, 8), "slow": (2, None), "single": (None, 1)}
    entries = "".join(hash_key_entry(name, KEYS[name], *limits[name]) for name in KEYS)
    path = runtime_dir / "keys.yaml"
    path.write_text("keys:\n" + "".join("  " + line + "\n" for line in entries.splitlines()))
    return path


@pytest.fixture(scope="session")
def engine(tiny_models: dict[str, Path], runtime_dir: Path) -> Iterator[Server]:
    server = start_engine(tiny_models, runtime_dir)
    yield server
    server.stop()


@dataclass
class GatewayUnderTest:
    server: Server
    metrics_url: str

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str = "ci", **options: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=KEYS.get(key, key), **{"max_retries": 0, "timeout": 60, **options}
        )


@pytest.fixture(scope="session")
def gateway(engine: Server, keys_file: Path, runtime_dir: Path) -> Iterator[GatewayUnderTest]:
    metrics_port = free_port()
    server = start_gateway(
        runtime_dir,
        [engine.url],
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--addon",
        "sql=hf://byoc-examples/sql-lora",  # declared; `support` is learned from the engine's /v1/models
        "--ttft-slo",
        "1.5",
        "--health-interval",
        "0.5",
        keys=keys_file,
    )
    yield GatewayUnderTest(server, f"http://127.0.0.1:{metrics_port}/metrics")
    server.stop()


def long_stream(client: openai.OpenAI, model: str = MODEL, tokens: int = 1500) -> openai.Stream[Any]:
    """A streamed answer that runs for seconds (the tiny model ignores its end token), to hold a slot."""
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to a thousand."}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
