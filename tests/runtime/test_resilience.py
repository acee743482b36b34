"""Replicas that come, go and die: scale from zero, a retry before the first byte, a stream cut mid-way."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from tests.runtime.conftest import (
    MODEL,
    Server,
    free_port,
    http,
    long_stream,
    metric,
    start_engine,
    start_gateway,
    wait_for,
)


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_scale_from_zero_then_a_stream_cut_when_the_engine_dies(
    tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    port = free_port()
    # dns+http: the gateway resolves the name itself, as with the headless Service in the cluster
    gateway = start_gateway(
        runtime_dir, [f"dns+http://localhost:{port}"], "--wake-timeout", "120", "--health-interval", "0.2"
    )
    engine: Server | None = None
    try:
        ready = http("GET", gateway.url + "/ready")
        assert ready.status == 200 and ready.json()["holding"] is True  # takes requests at zero replicas
        answers: list[str] = []
        failures: list[BaseException] = []

        def ask() -> None:
            try:
                answer = client(gateway).completions.create(model=MODEL, prompt="One two", max_tokens=3)
                answers.append(answer.choices[0].text)
            except BaseException as exc:
                failures.append(exc)

        waiting = threading.Thread(target=ask)
        waiting.start()
        wait_for(lambda: (metric(gateway.metrics(), "byoc_gateway_pending_requests") or 0) >= 1, what="pending")
        engine = start_engine(tiny_models, runtime_dir, port=port, wait=False)  # the replica wakes up
        waiting.join(timeout=120)
        assert not failures and len(answers) == 1
        assert metric(gateway.metrics(), "byoc_gateway_pending_requests") == 0

        # the engine dies in the middle of an answer: an error event, then a clean end of the stream
        stream = long_stream(client(gateway))
        received = 0
        with pytest.raises(openai.APIError) as caught:
            for _chunk in stream:
                received += 1
                if received == 3:
                    engine.kill()
        assert not isinstance(caught.value, openai.APIConnectionError)  # the HTTP response itself ended cleanly
        assert "stopped in the middle" in caught.value.message
        assert received >= 3
        assert (metric(gateway.metrics(), "byoc_gateway_upstream_errors_total", reason="stream_cut") or 0) == 1
        assert (metric(gateway.metrics(), "byoc_gateway_requests_total", code="502") or 0) == 1
    finally:
        gateway.stop()
        if engine is not None:
            engine.stop()


def test_no_replica_within_the_wake_timeout_is_503_with_retry_after(runtime_dir: Path) -> None:
    gateway = start_gateway(runtime_dir, [f"http://127.0.0.1:{free_port()}"], "--wake-timeout", "1")
    try:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert 1.0 <= time.monotonic() - started < 10
        assert metric(gateway.metrics(), "byoc_gateway_upstream_errors_total", reason="no_upstream") == 1
    finally:
        gateway.stop()


def test_a_request_that_fails_before_its_first_byte_is_retried_on_another_replica(
    tiny_models: dict[str, Path], runtime_dir: Path, engine: Server
) -> None:
    doomed = start_engine(tiny_models, runtime_dir)
    # a long health interval: the gateway still believes in the dead replica when the requests arrive
    gateway = start_gateway(runtime_dir, [doomed.url, engine.url], "--health-interval", "60")
    try:
        wait_for(lambda: http("GET", gateway.url + "/ready").json()["upstreams_ready"] == 2, what="two replicas")
        doomed.kill()
        for _ in range(4):  # round-robin between equally idle replicas: one of these goes to the dead one first
            answer = client(gateway).completions.create(model=MODEL, prompt="One two", max_tokens=2)
            assert answer.choices[0].text is not None
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_upstream_errors_total", reason="connect") == 1  # then out of rotation
        assert metric(text, "byoc_gateway_requests_total", code="200") == 4
        assert metric(text, "byoc_gateway_upstreams_ready") == 1
    finally:
        gateway.stop()
        doomed.stop()


def test_hash_key_output_admits_the_key_and_never_its_own_text(engine: Server, runtime_dir: Path) -> None:
    """The file `byoc serve hash-key > keys.yaml` writes: the real key gets 200, the line's text 401."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    key = "sk-real-4d7a1c9e0b3f6a2d8e5c"
    printed = subprocess.run(
        [sys.executable, "-m", "byoc", "serve", "hash-key", "--name", "ci"],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    ).stdout
    keys = runtime_dir / "hash-key-output.yaml"
    keys.write_text(printed)
    gateway = start_gateway(runtime_dir, [engine.url], keys=keys)
    try:
        assert "1 API keys (1 sha256, 0 plaintext)" in gateway.log.read_text()

        def ask(token: str) -> int:
            try:
                openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0).completions.create(
                    model=MODEL, prompt="One", max_tokens=1
                )
            except openai.AuthenticationError as error:
                return error.status_code
            return 200

        assert ask(key) == 200
        assert ask(printed.strip()) == 401
        assert ask(printed.strip().removeprefix("- ")) == 401
    finally:
        gateway.stop()


def test_an_addon_asked_for_before_the_replica_is_known_is_served_not_404(
    tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    """Ready means ready: a gateway that takes requests before it has heard from a replica (start-up, scale from
    zero) holds a request for a replica's addon until the replica lists it, and serves it."""
    port = free_port()
    gateway = start_gateway(
        runtime_dir, [f"http://127.0.0.1:{port}"], "--wake-timeout", "120", "--health-interval", "0.2"
    )
    engine: Server | None = None
    try:
        assert http("GET", gateway.url + "/ready").json()["holding"] is True
        answers: list[str] = []
        failures: list[BaseException] = []

        def ask() -> None:
            try:
                answer = client(gateway).completions.create(model="support", prompt="One two", max_tokens=3)
                answers.append(answer.model)
            except BaseException as exc:
                failures.append(exc)

        waiting = threading.Thread(target=ask)
        waiting.start()
        wait_for(lambda: (metric(gateway.metrics(), "byoc_gateway_pending_requests") or 0) >= 1, what="pending")
        engine = start_engine(tiny_models, runtime_dir, port=port, wait=False)
        waiting.join(timeout=120)
        assert not failures, failures
        assert answers == ["support"]
        assert "support" in {m.id for m in client(gateway).models.list()}
        with pytest.raises(openai.NotFoundError):  # a name no replica serves is still 404 once they are known
            client(gateway).completions.create(model="no-such-addon", prompt="One", max_tokens=1)
    finally:
        gateway.stop()
        if engine is not None:
            engine.stop()


class _FailingAnswers(BaseHTTPRequestHandler):
    """A replica that is up and healthy but fails every answer with an error event, as trtllm-serve does."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
        else:
            self._send(200, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        error = {"object": "error", "message": "generation failed", "type": "InternalServerError", "code": 500}
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL, "choices": []}
        events = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(error)}\n\n"
        self._send(200, events.encode(), "text/event-stream")


def test_an_answer_the_replica_fails_keeps_the_replica_in_rotation(runtime_dir: Path) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _FailingAnswers)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    gateway = start_gateway(runtime_dir, [f"http://127.0.0.1:{upstream.server_address[1]}"], "--health-interval", "60")
    try:
        for _ in range(2):
            with pytest.raises(openai.APIError) as caught:
                list(
                    client(gateway).chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                )
            assert "failed while generating" in caught.value.message
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_upstream_errors_total", reason="stream_error") == 2
        assert metric(text, "byoc_gateway_upstreams_ready") == 1  # a failed answer is not a failed replica
        assert metric(text, "byoc_gateway_requests_total", code="502") == 2
    finally:
        gateway.stop()
        upstream.shutdown()
        upstream.server_close()
