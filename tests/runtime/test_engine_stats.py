"""The engine: trtllm-serve's stats and Prometheus endpoints, and the sidecar that turns its stats into gauges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.runtime.conftest import ENGINE_MODEL, Server, free_port, http, long_stream, metric, wait_for


@pytest.fixture(scope="module")
def sidecar(engine: Server, runtime_dir: Path) -> Iterator[Server]:
    port = free_port()
    server = Server(
        "engine-stats",
        ["engine-stats", "--engine", engine.url, "--listen", f"127.0.0.1:{port}", "--interval", "0.2"],
        runtime_dir,
        port,
    )
    server.wait()
    yield server
    server.stop()


def engine_client(engine: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_engine_speaks_trtllm_serves_endpoints(engine: Server) -> None:
    assert http("GET", engine.url + "/health").status == 200
    assert "version" in http("GET", engine.url + "/version").json()
    models = http("GET", engine.url + "/v1/models").json()["data"]
    assert models[0]["id"] == ENGINE_MODEL
    # trtllm-serve's per-request LoRA selection
    client = engine_client(engine)
    lora = {"lora_request": {"lora_name": "sql", "lora_int_id": 7, "lora_path": "/models/adapters/sql"}}
    by_lora = client.completions.create(model=ENGINE_MODEL, prompt="One", max_tokens=6, temperature=0, extra_body=lora)
    by_name = client.completions.create(model="sql", prompt="One", max_tokens=6, temperature=0)
    base = client.completions.create(model=ENGINE_MODEL, prompt="One", max_tokens=6, temperature=0)
    assert by_lora.choices[0].text == by_name.choices[0].text != base.choices[0].text
    stats = http("GET", engine.url + "/metrics").json()
    assert isinstance(stats, list) and stats
    newest = stats[-1]
    for field in ("iter", "iterLatencyMS", "numActiveRequests", "numQueuedRequests", "timestamp"):
        assert field in newest
    for field in ("maxNumBlocks", "usedNumBlocks", "freeNumBlocks", "tokensPerBlock"):
        assert field in newest["kvCacheStats"]
    assert "numScheduledRequests" in newest["inflightBatchingStats"]
    text = http("GET", engine.url + "/prometheus/metrics").body.decode()
    for name in (
        "trtllm_time_to_first_token_seconds_bucket",
        "trtllm_e2e_request_latency_seconds_bucket",
        "trtllm_time_per_output_token_seconds_bucket",
        "trtllm_request_queue_time_seconds_bucket",
    ):
        assert name in text
    assert (metric(text, "trtllm_request_success_total", finished_reason="length") or 0) >= 3


def test_engine_rejects_what_trtllm_serve_rejects(engine: Server) -> None:
    headers = {"Content-Type": "application/json"}
    over = {"model": ENGINE_MODEL, "prompt": "One", "max_tokens": 4096}
    answer = http("POST", engine.url + "/v1/completions", json.dumps(over).encode(), headers)
    assert answer.status == 400 and answer.json()["object"] == "error" and answer.json()["param"] == "max_tokens"
    unknown = {"model": ENGINE_MODEL, "prompt": "One", "lora_request": {"lora_name": "nope", "lora_path": "/x"}}
    assert http("POST", engine.url + "/v1/completions", json.dumps(unknown).encode(), headers).status == 400


def test_sidecar_exports_kv_cache_and_queue_gauges(engine: Server, sidecar: Server) -> None:
    idle = sidecar.metrics()
    assert metric(idle, "byoc_engine_up") == 1
    streams = [long_stream(engine_client(engine), model=ENGINE_MODEL, tokens=1200) for _ in range(2)]
    try:
        for stream in streams:
            next(iter(stream))

        def busy() -> bool:
            text = sidecar.metrics()
            return (metric(text, "byoc_engine_active_requests") or 0) >= 2 and (
                metric(text, "byoc_engine_kv_cache_utilization") or 0
            ) > 0

        wait_for(busy, what="the sidecar to see two active requests")
        utilization = metric(sidecar.metrics(), "byoc_engine_kv_cache_utilization")
        assert utilization is not None and 0 < utilization <= 1
        assert metric(sidecar.metrics(), "byoc_engine_queued_requests") == 0
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: metric(sidecar.metrics(), "byoc_engine_active_requests") == 0, what="the engine to go idle")
    assert metric(sidecar.metrics(), "byoc_engine_kv_cache_utilization") == 0


def test_sidecar_without_an_engine_reports_down_but_stays_healthy(runtime_dir: Path) -> None:
    port = free_port()
    server = Server(
        "engine-stats",
        ["engine-stats", "--engine", f"http://127.0.0.1:{free_port()}", "--listen", f"127.0.0.1:{port}"],
        runtime_dir,
        port,
    )
    try:
        server.wait()
        wait_for(lambda: metric(server.metrics(), "byoc_engine_up") == 0, what="byoc_engine_up 0")
        assert "NaN" in server.metrics()  # no stale KV value for the alert to fire on
    finally:
        server.stop()
