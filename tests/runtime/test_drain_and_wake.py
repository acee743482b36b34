"""What the gateway says while replicas come and go under it: the model list during a wake, and the SIGTERM drain."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import openai

from tests.runtime.conftest import (
    KEYS,
    MODEL,
    GatewayUnderTest,
    Http,
    Server,
    free_port,
    http,
    metric,
    start_gateway,
    wait_for,
)

COMPLETION = b'{"model": "' + MODEL.encode() + b'", "prompt": "One", "max_tokens": 2}'


def _ask_in_background(url: str, answers: list[Http]) -> threading.Thread:
    asker = threading.Thread(
        target=lambda: answers.append(
            http("POST", url + "/v1/completions", COMPLETION, {"Content-Type": "application/json"})
        )
    )
    asker.start()
    return asker


def _draining(answer: Http) -> bool:
    return (
        answer.status == 503
        and int(answer.headers["retry-after"]) >= 1
        and answer.json()["error"]["code"] == "gateway_draining"
    )


def test_the_model_list_says_partial_while_no_replica_can_list_its_addons(
    gateway: GatewayUnderTest, runtime_dir: Path
) -> None:
    # no replica is up (a wake from zero): the addons only replicas know are unknown, and the list says so
    waking = start_gateway(
        runtime_dir, [f"http://127.0.0.1:{free_port()}"], "--addon", "sql=hf://byoc-examples/sql-lora"
    )
    try:
        listed = http("GET", waking.url + "/v1/models")
        assert listed.status == 200
        assert listed.json()["partial"] is True
        assert [m["id"] for m in listed.json()["data"]] == [MODEL, "sql"]  # the base and the declared addon
        client = openai.OpenAI(base_url=waking.url + "/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {MODEL, "sql"}  # the official client reads it as a list
        # one addon by name: "not known yet" (503, retry), never a 404 that says it does not exist
        unknown = http("GET", waking.url + "/v1/models/support")
        assert unknown.status == 503 and int(unknown.headers["retry-after"]) >= 1
        assert unknown.json()["error"]["code"] == "no_replica_ready"
        assert http("GET", waking.url + "/v1/models/sql").status == 200
    finally:
        waking.stop()
    # with a replica ready the list is whole: the replica's own addon is there, and nothing says partial
    whole = http("GET", gateway.url + "/v1/models", headers={"Authorization": f"Bearer {KEYS['ci']}"})
    assert whole.status == 200 and "partial" not in whole.json()
    assert {"support", "sql", MODEL} <= {m["id"] for m in whole.json()["data"]}
    gone = http("GET", gateway.url + "/v1/models/no-such-addon", headers={"Authorization": f"Bearer {KEYS['ci']}"})
    assert gone.status == 404


def test_the_drain_refuses_new_requests_with_503_and_finishes_those_in_progress(
    engine: Server, runtime_dir: Path
) -> None:
    gateway = start_gateway(runtime_dir, [engine.url])
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to a thousand."}],
            max_tokens=400,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # the tiny model would stop anywhere: the stream runs for seconds
        )
        chunks: list[str] = []
        reasons: list[str | None] = []
        usage: list[int] = []
        failures: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in stream:
                    if chunk.usage is not None:
                        usage.append(chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        chunks.append(choice.delta.content or "")
                        reasons.append(choice.finish_reason)
            except BaseException as exc:
                failures.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: len(chunks) >= 3, what="the stream to start")
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: http("GET", gateway.url + "/ready").status == 503, what="/ready to say draining")
        assert reader.is_alive()  # the stream is still running: the drain is what we are looking at
        refused = http(
            "POST",
            gateway.url + "/v1/completions",
            b'{"model": "' + MODEL.encode() + b'", "prompt": "One", "max_tokens": 2}',
            {"Content-Type": "application/json"},
        )
        assert refused.status == 503, refused.body
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "gateway_draining"
        reader.join(timeout=60)
        assert not failures, failures
        assert reasons[-1] == "length" and usage == [400]  # the stream in progress ran to its end
        assert gateway.process.wait(timeout=30) == 0
        assert "status=503" in gateway.log.read_text() and "reason=draining" in gateway.log.read_text()
    finally:
        gateway.stop()


def test_the_drain_answers_a_request_held_for_a_waking_replica_at_once(runtime_dir: Path) -> None:
    # scale from zero: no replica yet, the request is held (up to --wake-timeout); SIGTERM must not leave it there
    waking = start_gateway(runtime_dir, [f"http://127.0.0.1:{free_port()}"], "--wake-timeout", "100")
    try:
        answers: list[Http] = []
        asker = _ask_in_background(waking.url, answers)
        wait_for(lambda: metric(waking.metrics(), "byoc_gateway_pending_requests") == 1, what="the request held")
        signalled = time.monotonic()
        waking.process.send_signal(signal.SIGTERM)
        asker.join(timeout=10)
        assert answers and _draining(answers[0]), answers  # answered at once: its client retries elsewhere
        assert waking.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 5
        assert "status=503" in waking.log.read_text() and "reason=draining" in waking.log.read_text()
    finally:
        waking.stop()


def test_the_drain_answers_queued_requests_at_once_and_ends_streams_at_its_deadline(
    engine: Server, runtime_dir: Path
) -> None:
    gateway = start_gateway(runtime_dir, [engine.url], "--max-concurrency", "1", "--drain-seconds", "3")
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count to a thousand."}],
            max_tokens=1900,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},  # runs far longer than the 3 s drain
        )
        chunks: list[str] = []
        failures: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in stream:
                    chunks.extend(choice.delta.content or "" for choice in chunk.choices)
            except BaseException as exc:
                failures.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: len(chunks) >= 3, what="the stream to start")
        answers: list[Http] = []
        asker = _ask_in_background(gateway.url, answers)  # the one slot is taken: it waits in the queue
        wait_for(lambda: metric(gateway.metrics(), "byoc_gateway_queue_depth") == 1, what="the request queued")
        signalled = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        asker.join(timeout=10)
        assert answers and _draining(answers[0]), answers
        assert reader.is_alive()  # the stream in progress still runs
        assert metric(gateway.metrics(), "byoc_gateway_requests_total", code="503") == 1  # counted as answered 503
        reader.join(timeout=10)
        # the deadline ended it with the gateway's error event (the client raises), and the whole drain kept to 3 s
        assert failures and isinstance(failures[0], openai.APIError), failures
        assert "gateway replica shut down" in str(failures[0])
        assert gateway.process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 3 + 1.5
        log = gateway.log.read_text()
        assert "status=503" in log and "reason=drain_deadline" in log and "reason=draining" in log
    finally:
        gateway.stop()
