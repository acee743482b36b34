"""The gateway's bounded admission queue: one slot, one place in the queue, then 429 at once (never a hang)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.runtime.conftest import MODEL, Server, http, long_stream, metric, start_gateway, wait_for


@pytest.fixture(scope="module")
def narrow_gateway(engine: Server, runtime_dir: Path) -> Iterator[Server]:
    server = start_gateway(runtime_dir, [engine.url], "--max-concurrency", "1", "--max-queue", "1")
    yield server
    server.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_full_queue_is_429_and_the_queued_request_is_served(narrow_gateway: Server) -> None:
    holder = long_stream(client(narrow_gateway))
    queued: list[str] = []
    try:
        next(iter(holder))  # holds the only slot

        def wait_in_queue() -> None:
            answer = client(narrow_gateway).completions.create(model=MODEL, prompt="One", max_tokens=2)
            queued.append(answer.choices[0].text)

        waiter = threading.Thread(target=wait_in_queue)
        waiter.start()
        wait_for(lambda: metric(narrow_gateway.metrics(), "byoc_gateway_queue_depth") == 1, what="a queued request")
        assert metric(narrow_gateway.metrics(), "byoc_gateway_in_flight_requests") == 1
        with pytest.raises(openai.RateLimitError) as caught:
            client(narrow_gateway).completions.create(model=MODEL, prompt="One", max_tokens=2)
        assert caught.value.response.headers["retry-after"] == "1"
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"
    finally:
        holder.close()
    waiter.join(timeout=30)
    assert len(queued) == 1  # served once the slot came back
    text = narrow_gateway.metrics()
    assert metric(text, "byoc_gateway_rate_limited_total", reason="queue_full") == 1
    assert metric(text, "byoc_gateway_queue_depth") == 0
    assert metric(text, "byoc_gateway_requests_total", code="429") == 1


def test_without_auth_the_access_log_says_anonymous(narrow_gateway: Server) -> None:
    client(narrow_gateway).completions.create(model=MODEL, prompt="One", max_tokens=1)
    # access lines are written in batches, within 50 ms
    wait_for(lambda: "key=anonymous" in narrow_gateway.log.read_text(), timeout=5, what="the access line")
    assert http("GET", narrow_gateway.url + "/ready").status == 200
