"""The time a wake from zero costs the requests that waited for it, as the gateway exports it: a real gateway with
no replica, requests that arrive, then a CPU engine that starts after them (the replica waking)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai

from tests.runtime.conftest import MODEL, Server, free_port, metric, start_engine, start_gateway, wait_for


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_requests_held_for_a_wake_are_measured_apart(tiny_models: dict[str, Path], runtime_dir: Path) -> None:
    port = free_port()
    gateway = start_gateway(
        runtime_dir, [f"dns+http://localhost:{port}"], "--wake-timeout", "120", "--health-interval", "0.2"
    )
    engine: Server | None = None
    try:
        first_tokens: list[float] = []
        failures: list[BaseException] = []

        def ask_streamed() -> None:
            try:
                sent = time.monotonic()
                stream = client(gateway).completions.create(model=MODEL, prompt="One two", max_tokens=3, stream=True)
                for _chunk in stream:
                    first_tokens.append(time.monotonic() - sent)
                    break
                stream.close()
            except BaseException as exc:
                failures.append(exc)

        def ask() -> None:
            try:
                client(gateway).completions.create(model=MODEL, prompt="Three four", max_tokens=2)
            except BaseException as exc:
                failures.append(exc)

        askers = [threading.Thread(target=ask_streamed), threading.Thread(target=ask)]
        for asker in askers:
            asker.start()
        wait_for(lambda: metric(gateway.metrics(), "byoc_gateway_pending_requests") == 2, what="two requests held")
        time.sleep(1.0)  # the wake takes at least this long: both must count it
        engine = start_engine(tiny_models, runtime_dir, port=port, wait=False)  # the replica wakes up
        for asker in askers:
            asker.join(timeout=120)
        assert not failures, failures
        text = gateway.metrics()
        # both held, both measured: the wake itself, and the time to their first token after it
        assert metric(text, "byoc_gateway_wake_seconds_count") == 2
        assert metric(text, "byoc_gateway_wake_seconds_bucket", le="1.0") == 0  # held over a second
        assert metric(text, "byoc_gateway_wake_time_to_first_token_seconds_count") == 2
        assert metric(text, "byoc_gateway_wake_time_to_first_token_seconds_bucket", le="1.0") == 0
        wake_ttft_sum = metric(text, "byoc_gateway_wake_time_to_first_token_seconds_sum") or 0
        assert wake_ttft_sum >= (metric(text, "byoc_gateway_wake_seconds_sum") or 0)
        # the streamed client's own first token came no sooner than the gateway says
        assert first_tokens and first_tokens[0] >= 1.0

        # a request to a replica that is up waits for no wake: the wake metrics stay where they were
        answered = metric(text, "byoc_gateway_requests_total", code="200") or 0
        client(gateway).completions.create(model=MODEL, prompt="Five", max_tokens=2)
        after = gateway.metrics()
        assert metric(after, "byoc_gateway_requests_total", code="200") == answered + 1
        assert metric(after, "byoc_gateway_wake_seconds_count") == 2
        assert metric(after, "byoc_gateway_wake_time_to_first_token_seconds_count") == 2
        assert metric(after, "byoc_gateway_wake_timeouts_total") == 0
    finally:
        gateway.stop()
        if engine is not None:
            engine.stop()


def test_a_request_the_wake_timeout_gave_up_on_is_not_a_wake(runtime_dir: Path) -> None:
    gateway = start_gateway(runtime_dir, [f"http://127.0.0.1:{free_port()}"], "--wake-timeout", "1")
    try:
        try:
            client(gateway).completions.create(model=MODEL, prompt="One", max_tokens=2)
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_wake_seconds_count") == 0
        assert metric(text, "byoc_gateway_wake_time_to_first_token_seconds_count") == 0
        # ...but it is a wake that failed, counted apart (the dashboard's "Wakes from zero" shows it)
        assert metric(text, "byoc_gateway_wake_timeouts_total") == 1
    finally:
        gateway.stop()
