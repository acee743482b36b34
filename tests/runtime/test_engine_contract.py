"""What trtllm-serve does that the gateway must take as it comes, shown with the CPU engine speaking the same contract
(docs/gateway.md, "The engine contract"): a failed answer breaks its stream off, a body its request models refuse is
400 with `{"error": "<FastAPI's text>"}`, and older versions end a completion stream with a chat-shaped usage chunk."""

from __future__ import annotations

import json
from http.client import HTTPConnection, IncompleteRead
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.serve.generation import FAULT_AT_TOKEN_ENV
from tests.runtime.conftest import (
    ENGINE_MODEL,
    MODEL,
    Server,
    http,
    long_stream,
    metric,
    start_engine,
    start_gateway,
    wait_for,
)
from tests.runtime.standin import StandInEngine

FAULT_AT = 300  # the faulty engine fails every answer when it reaches its 300th token
SECRET = "the merger closes on Friday"  # request content that must never come back in an error


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(server: Server, max_tokens: int, stream: bool = True) -> Any:
    return client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=stream,
        extra_body={"ignore_eos": True},
    )


def test_a_failed_answer_breaks_the_stream_off_and_the_replica_keeps_serving(
    tiny_models: dict[str, Path], runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_AT_TOKEN_ENV, str(FAULT_AT))
    engine = start_engine(tiny_models, runtime_dir)
    monkeypatch.delenv(FAULT_AT_TOKEN_ENV)
    # a long health interval: only the check the broken stream asks for can change the replica's state in time
    gateway = start_gateway(runtime_dir, [engine.url], "--health-interval", "60")
    try:
        # on the wire, as from trtllm-serve: 200, some chunks, then the connection closes inside the chunked body,
        # with no error event and no [DONE]
        body = {"model": ENGINE_MODEL, "prompt": "One", "max_tokens": FAULT_AT + 10, "stream": True, "ignore_eos": True}
        connection = HTTPConnection("127.0.0.1", engine.port, timeout=60)
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        assert answer.status == 200
        with pytest.raises(IncompleteRead) as cut:
            answer.read()
        connection.close()
        assert 0 < cut.value.partial.count(b"data: ") < FAULT_AT
        assert b"[DONE]" not in cut.value.partial and b'"error"' not in cut.value.partial

        # through the gateway: the OpenAI client raises on the gateway's error event, after the tokens it had
        received = 0
        with pytest.raises(openai.APIError) as caught:
            for _chunk in ask(gateway, FAULT_AT + 10):
                received += 1
        assert not isinstance(caught.value, openai.APIConnectionError)
        assert "stopped in the middle" in caught.value.message
        assert 1 < received <= FAULT_AT  # the role chunk and the tokens before the fault
        # the replica was checked at once, passed, and serves the next request
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_upstream_errors_total", reason="stream_cut") == 1
        assert metric(text, "byoc_gateway_upstreams_ready") == 1
        short = ask(gateway, 5, stream=False)
        assert short.usage.completion_tokens == 5
        assert metric(gateway.metrics(), "byoc_gateway_upstreams_ready") == 1

        # a replica that dies mid-stream is taken out by the same check, long before the next health round
        stream = long_stream(client(gateway), tokens=FAULT_AT - 1)  # a long answer, short of the fault
        next(iter(stream))
        engine.kill()
        with pytest.raises(openai.APIError) as caught:
            list(stream)
        assert "stopped in the middle" in caught.value.message  # what the client sees is the same
        wait_for(lambda: metric(gateway.metrics(), "byoc_gateway_upstreams_ready") == 0, timeout=10, what="out")
    finally:
        gateway.stop()
        engine.stop()


def test_a_body_the_request_models_refuse_is_trtllm_serves_400_and_the_clients_openai_error(
    engine: Server, runtime_dir: Path
) -> None:
    # the CPU engine answers as trtllm-serve's RequestValidationError handler: {"error": str(exc)}, input quoted
    request = {"model": ENGINE_MODEL, "messages": [{"role": "user", "content": "hi"}], "frobnicate": SECRET}
    direct = http("POST", engine.url + "/v1/chat/completions", json.dumps(request).encode())
    assert direct.status == 400
    error = direct.json()
    assert set(error) == {"error"} and isinstance(error["error"], str)
    assert error["error"].startswith("1 validation error:")
    assert "'loc': ('body', 'frobnicate')" in error["error"] and SECRET in error["error"]

    # the same shape from an engine behind the gateway (a body the gateway itself let through): OpenAI's shape for
    # the client, the parameter named, pydantic's words, never the input
    detail = {"type": "int_parsing", "loc": ("body", "messages", 0, "content"), "msg": "Input should be text"}
    refusal = {"error": "1 validation error:\n  " + str({**detail, "input": SECRET})}
    standin = StandInEngine(model=MODEL, status=400, refusal=refusal)
    gateway = start_gateway(runtime_dir, [standin.url])
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": SECRET}])
        body = caught.value.body
        assert isinstance(body, dict) and body["param"] == "messages[0].content"
        assert body["message"] == "messages[0].content: Input should be text"
        assert body["type"] == "invalid_request_error"
        # and trtllm-serve's ErrorResponse shape (what its handlers answer), its message quoting the request
        standin.refusal = {"object": "error", "message": f"bad: {SECRET}", "type": "BadRequestError", "code": 400}
        with pytest.raises(openai.BadRequestError) as caught:
            client(gateway).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": SECRET}])
        assert SECRET not in caught.value.message and "withheld" in caught.value.message
        assert "Friday" not in gateway.log.read_text()
    finally:
        gateway.stop()
        standin.stop()


def test_the_cpu_engine_refuses_a_priority_as_trtllm_serve_1_3_0rc19_does(engine: Server) -> None:
    """trtllm-serve 1.3.0rc19's request models have no `priority` and forbid extra fields (tensorrt_llm/serve/
    openai_protocol.py; PR #15329 added the field after that release): 400 extra_forbidden on both endpoints. The CPU
    engine follows the pin and invents no priority order (docs/performance.md, "What the engine offers")."""
    chat = {"model": ENGINE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "priority": 1.0}
    completion = {"model": ENGINE_MODEL, "prompt": "hi", "max_tokens": 2, "priority": 0.0}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        answer = http("POST", engine.url + path, json.dumps(body).encode())
        assert answer.status == 400, path
        said = answer.json()["error"]
        assert "'type': 'extra_forbidden'" in said and "'loc': ('body', 'priority')" in said


def test_a_completion_streams_usage_chunk_reaches_the_client_as_openai_shapes_it(runtime_dir: Path) -> None:
    # TensorRT-LLM before PRs #12758 and #14708 built a completion stream's usage chunk as a chat chunk with an id
    # of its own; the client gets the stream's id and `text_completion`, as OpenAI sends it
    standin = StandInEngine(model=MODEL, usage_chunk="chat_fresh_id")
    gateway = start_gateway(runtime_dir, [standin.url])
    try:
        chunks = list(
            client(gateway).completions.create(
                model=MODEL, prompt="One", max_tokens=5, stream=True, stream_options={"include_usage": True}
            )
        )
        assert {c.id for c in chunks} == {"cmpl-standin"}
        assert {c.object for c in chunks} == {"text_completion"}
        assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    finally:
        gateway.stop()
        standin.stop()
