"""Back-pressure is the engine's, not the client's: an engine that answers 429 or 503 before the first byte (vLLM,
SGLang when full) has the request tried on every other ready replica; when none is left the client gets that status
with Retry-After, typed as OpenAI types it, and the busy replica stays in rotation. trtllm-serve (the CPU engine
here) queues work beyond its batch limits instead of refusing it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.runtime.conftest import MODEL, Server, free_port, http, metric, start_gateway, wait_for
from tests.runtime.standin import ANSWER, StandInEngine

HI = [{"role": "user", "content": "hi"}]


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _gateway(runtime_dir: Path, engines: list[StandInEngine]) -> Server:
    gateway = start_gateway(runtime_dir, [e.url for e in engines], "--health-interval", "0.5")
    wait_for(
        lambda: http("GET", gateway.url + "/ready").json()["upstreams_ready"] == len(engines),
        what="every replica ready",
    )
    return gateway


@pytest.fixture
def engines(request: pytest.FixtureRequest) -> Iterator[list[StandInEngine]]:
    made = [StandInEngine(**options) for options in request.param]
    yield made
    for engine in made:
        engine.stop()


@pytest.mark.parametrize("engines", [[{"status": 429, "retry_after": "30"}] * 2], indirect=True)
@pytest.mark.parametrize("stream", [False, True])
def test_every_replica_busy_is_429_with_the_engines_retry_after(
    runtime_dir: Path, engines: list[StandInEngine], stream: bool
) -> None:
    gateway = _gateway(runtime_dir, engines)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            client(gateway).chat.completions.create(model=MODEL, messages=HI, max_tokens=5, stream=stream)
        assert caught.value.status_code == 429
        assert caught.value.response.headers["retry-after"] == "30"
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["type"] == "requests" and caught.value.body["code"] == "rate_limit_exceeded"
        assert "the engine is full" not in caught.value.message  # the engine's body is not passed on
        assert [len(e.requests) for e in engines] == [1, 1]  # each replica tried, once
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_upstream_errors_total", reason="status_429") == 2
        assert metric(text, "byoc_gateway_rate_limited_total", reason="engine") == 1
        assert metric(text, "byoc_gateway_requests_total", code="429") == 1
        assert metric(text, "byoc_gateway_upstreams_ready") == 2  # busy is not down
    finally:
        gateway.stop()


@pytest.mark.parametrize("engines", [[{"status": 503}, {"status": 503}]], indirect=True)
def test_every_replica_overloaded_is_503_with_the_gateways_estimate(
    runtime_dir: Path, engines: list[StandInEngine]
) -> None:
    gateway = _gateway(runtime_dir, engines)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client(gateway).completions.create(model=MODEL, prompt="One", max_tokens=5)
        assert caught.value.status_code == 503
        assert int(caught.value.response.headers["retry-after"]) >= 1  # no engine said: the gateway's estimate
        assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"
        assert [len(e.requests) for e in engines] == [1, 1]
        assert metric(gateway.metrics(), "byoc_gateway_upstreams_ready") == 2
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "engines",
    [[{"status": 429}, {}], [{"status": 503, "retry_after": "5"}, {}], [{"status": 502}, {}], [{"status": 504}, {}]],
    indirect=True,
    ids=["429", "503", "502", "504"],
)
def test_one_busy_replica_and_one_free_every_request_succeeds(runtime_dir: Path, engines: list[StandInEngine]) -> None:
    busy, free = engines
    gateway = _gateway(runtime_dir, engines)
    try:
        for i in range(8):
            if i % 2:
                chunks = list(
                    client(gateway).chat.completions.create(model=MODEL, messages=HI, max_tokens=5, stream=True)
                )
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(ANSWER)
            else:
                answer = client(gateway).completions.create(model=MODEL, prompt="One", max_tokens=5)
                assert answer.choices[0].text == "".join(ANSWER)
        assert len(free.requests) == 8
        assert len(busy.requests) >= 1  # it was asked, and it stays in rotation
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_requests_total", code="200") == 8
        assert metric(text, "byoc_gateway_upstreams_ready") == 2
    finally:
        gateway.stop()


def test_busy_and_unreachable_replicas_give_the_busy_answer(runtime_dir: Path) -> None:
    """A 429 without Retry-After, a 503 with one, a replica that is gone: 429 (one replica is up and will take work
    again) with the only Retry-After an engine gave."""
    engines = [StandInEngine(status=429), StandInEngine(status=503, retry_after="7"), StandInEngine()]
    gateway = _gateway(runtime_dir, engines)
    engines[2].stop()  # refuses connections from now on; the gateway learns it on the first request that tries it
    try:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as caught:
                client(gateway).completions.create(model=MODEL, prompt="One", max_tokens=5)
            assert caught.value.response.headers["retry-after"] == "7"
        assert [len(e.requests) for e in engines[:2]] == [2, 2]
    finally:
        gateway.stop()
        for engine in engines[:2]:
            engine.stop()


def test_the_cpu_engine_queues_beyond_its_batch_size(tiny_models: dict[str, Path], runtime_dir: Path) -> None:
    """trtllm-serve has no queue limit and no 429: work beyond max_batch_size waits. So does the CPU engine."""
    port = free_port()
    args = ["engine", "--model-dir", str(tiny_models["base"]), "--listen", f"127.0.0.1:{port}", "--threads", "1"]
    engine = Server("engine-batch1", [*args, "--max-batch-size", "1", "--model-name", MODEL], runtime_dir, port)
    try:
        engine.wait()
        statuses: list[int] = []

        def ask() -> None:
            body = {"model": MODEL, "prompt": "One two", "max_tokens": 12, "ignore_eos": True}
            statuses.append(http("POST", engine.url + "/v1/completions", json.dumps(body).encode()).status)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert statuses == [200] * 6
        stats = http("GET", engine.url + "/metrics").json()
        assert max(s["numQueuedRequests"] for s in stats) >= 1  # they did wait: one ran at a time
        assert max(s["numActiveRequests"] for s in stats) == 1
    finally:
        engine.stop()
