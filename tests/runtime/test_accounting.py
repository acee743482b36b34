"""What the gateway counts and logs is complete: token usage on every stream, counted once whatever the engine sends,
usage shown to clients only as they asked, cancelled streams metered, and every access line written before the
process exits on SIGTERM (a rolling update must never drop audit lines)."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.runtime.conftest import (
    ENGINE_MODEL,
    MODEL,
    GatewayUnderTest,
    Server,
    http,
    long_stream,
    metric,
    start_gateway,
    wait_for,
)
from tests.runtime.standin import ANSWER, PROMPT_TOKENS, StandInEngine


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _access(server: Server) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if " byoc.gateway.access " in line]


def test_a_stream_without_include_usage_is_still_counted(engine: Server, runtime_dir: Path) -> None:
    # the gateway's --model is the engine's own name: the path where the client's bytes go upstream unchanged
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        chunks = list(
            client(gateway).chat.completions.create(
                model=ENGINE_MODEL,
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=5,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        )
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage and gets none
        list(
            client(gateway).completions.create(
                model=ENGINE_MODEL,
                prompt="One two",
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": False},
                extra_body={"ignore_eos": True},
            )
        )
        wait_for(lambda: len(_access(gateway)) == 2, timeout=5, what="two access lines")
        for line in _access(gateway):
            assert "stream=1" in line and "output_tokens=5" in line, line
            assert int(re.search(r"prompt_tokens=(\d+)", line).group(1)) > 0, line  # type: ignore[union-attr]
        text = gateway.metrics()
        assert metric(text, "byoc_gateway_output_tokens_total", model=ENGINE_MODEL, addon="base") == 10
        assert (metric(text, "byoc_gateway_prompt_tokens_total", model=ENGINE_MODEL, addon="base") or 0) > 0
    finally:
        gateway.stop()


def test_sigterm_flushes_every_access_line(engine: Server, runtime_dir: Path) -> None:
    for trial in range(3):
        gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
        try:
            for _ in range(trial + 1):
                client(gateway).completions.create(model=ENGINE_MODEL, prompt="One", max_tokens=1)
            gateway.process.send_signal(signal.SIGTERM)  # at once: the last line is still in the batch
            assert gateway.process.wait(timeout=30) == 0
        finally:
            gateway.stop()
        lines = _access(gateway)
        assert len(lines) == trial + 1, f"trial {trial}: {len(lines)} access lines of {trial + 1}"
        assert all("status=200" in line for line in lines)


# -- usage once -----------------------------------------------------------------------------------------------------
HELLO = [{"role": "user", "content": "Hello"}]
JSON = {"Content-Type": "application/json"}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


def _stream(
    gateway: Server, kind: str, options: dict[str, bool] | None, model: str = ENGINE_MODEL, tokens: int = 5
) -> list[Any]:
    """A streamed answer of exactly `tokens` tokens, with `stream_options` as given (None: not sent)."""
    extra: dict[str, Any] = {"ignore_eos": True}
    if options is not None:
        extra["stream_options"] = options  # as sent, also the vLLM/TensorRT-LLM field the typed client lacks
    common: dict[str, Any] = {"model": model, "max_tokens": tokens, "temperature": 0, "stream": True}
    if kind == "chat":
        return list(client(gateway).chat.completions.create(messages=HELLO, extra_body=extra, **common))
    return list(client(gateway).completions.create(prompt="One two", extra_body=extra, **common))


def _output_tokens(server: Server) -> int:
    return int(metric(server.metrics(), "byoc_gateway_output_tokens_total", model=ENGINE_MODEL, addon="base") or 0)


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_streamed_usage_reaches_the_client_as_asked_and_is_metered_once(
    engine: Server, runtime_dir: Path, kind: str
) -> None:
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        # not asked (OpenAI's default): no usage anywhere, though the gateway asked the engine for it
        chunks = _stream(gateway, kind, None)
        assert chunks and all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks)  # the usage-only chunk was not passed on

        # include_usage: usage once, on a last chunk with no choices (OpenAI's shape)
        chunks = _stream(gateway, kind, {"include_usage": True})
        *content, last = chunks
        assert all(c.usage is None for c in content) and content
        assert last.choices == [] and last.usage is not None
        assert last.usage.completion_tokens == 5 and last.usage.prompt_tokens > 0
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
        # the same prompt as the first stream: all of it but its last token came from the blocks that one stored
        assert last.usage.prompt_tokens_details is not None
        assert last.usage.prompt_tokens_details.cached_tokens == last.usage.prompt_tokens - 1

        # continuous_usage_stats too (vLLM's and TensorRT-LLM's extension): the running total on every chunk
        chunks = _stream(gateway, kind, CONTINUOUS)
        assert all(c.usage is not None for c in chunks)
        running = [c.usage.completion_tokens for c in chunks]
        assert running == sorted(running) and running[0] <= 1 and running[-1] == 5
        assert chunks[-1].choices == [] and all(c.choices for c in chunks[:-1])

        # each answer's 5 tokens counted once, whatever the client asked to see
        wait_for(lambda: len(_access(gateway)) == 3, timeout=5, what="three access lines")
        assert all("output_tokens=5 " in line for line in _access(gateway)), _access(gateway)
        assert _output_tokens(gateway) == 15
    finally:
        gateway.stop()


def test_a_streamed_tool_call_carries_usage_once(engine: Server, runtime_dir: Path) -> None:
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    tool = {
        "type": "function",
        "function": {"name": "alarm", "parameters": {"type": "object", "properties": {"hour": {"type": "integer"}}}},
    }
    try:
        chunks = list(
            client(gateway).chat.completions.create(
                model=ENGINE_MODEL,
                messages=[{"role": "user", "content": "Wake me at seven"}],
                tools=[tool],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "alarm"}},
                max_tokens=40,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert calls and calls[0].choices[0].delta.tool_calls[0].function.name == "alarm"  # type: ignore[index,union-attr]
        with_usage = [c for c in chunks if c.usage is not None]
        assert with_usage == [chunks[-1]] and chunks[-1].choices == []
        generated = with_usage[0].usage.completion_tokens  # type: ignore[union-attr]
        assert 0 < generated <= 40
        wait_for(lambda: len(_access(gateway)) == 1, timeout=5, what="the access line")
        assert f"output_tokens={generated} " in _access(gateway)[0]
        assert _output_tokens(gateway) == generated
    finally:
        gateway.stop()


def test_the_cpu_engine_follows_trtllm_serve_stream_options(engine: Server) -> None:
    """TensorRT-LLM 1.3.0rc19: no stream_options, no usage; `{}` means include_usage true, continuous false;
    continuous usage rides on every chunk, the role chunk included; cached prompt tokens are reported."""

    def events(options: dict[str, Any] | None, prompt: str = "One two") -> list[dict[str, Any]]:
        body: dict[str, Any] = {"model": ENGINE_MODEL, "prompt": prompt, "max_tokens": 3, "stream": True}
        body.update({"ignore_eos": True, **({"stream_options": options} if options is not None else {})})
        answer = http("POST", engine.url + "/v1/completions", json.dumps(body).encode())
        assert answer.status == 200, answer.body
        found = [e.removeprefix("data: ") for e in answer.body.decode().split("\n\n") if e]
        assert found[-1] == "[DONE]"
        return [json.loads(e) for e in found[:-1]]

    assert all(c.get("usage") is None for c in events(None))
    *content, last = events({})
    assert all(c["usage"] is None for c in content) and last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3
    continuous = events({"continuous_usage_stats": True}, "Three four")  # a prompt not seen: nothing cached
    running = [c["usage"]["completion_tokens"] for c in continuous]
    assert running == sorted(running) and running[-2:] == [3, 3] and continuous[-1]["choices"] == []
    assert all(c["usage"]["prompt_tokens_details"] == {"cached_tokens": 0} for c in continuous)
    alone = http("POST", engine.url + "/v1/completions", json.dumps({"prompt": "x", "stream_options": {}}).encode())
    assert alone.status == 200  # an empty object is falsy: trtllm-serve accepts it without stream
    refused = http(
        "POST",
        engine.url + "/v1/completions",
        json.dumps({"prompt": "x", "stream_options": {"include_usage": True}}).encode(),
    )
    assert refused.status == 400 and "'loc': ('body', 'stream_options')" in refused.json()["error"]
    # the same long prompt twice: the second reuses the first's 32-token blocks from the prefix cache, and the rest of
    # the prompt but its last token from the partial block the first stored when it ended (prompt and answer)
    long_prompt = " ".join(f"word{i}" for i in range(80))
    events({}, long_prompt)
    again = events({}, long_prompt)[-1]["usage"]
    assert again["prompt_tokens"] > 32
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_an_engine_that_sends_usage_on_every_chunk_is_metered_once(runtime_dir: Path, kind: str) -> None:
    """An engine that puts cumulative usage on every chunk whatever it was asked (TensorRT-LLM before PR #10644):
    the client sees usage only as it asked, and each token is counted once."""
    standin = StandInEngine(usage="every")
    gateway = start_gateway(runtime_dir, [standin.url], "--model", ENGINE_MODEL)
    try:
        chunks = _stream(gateway, kind, None)
        assert chunks and all(c.usage is None for c in chunks)
        assert "".join((c.choices[0].delta.content if kind == "chat" else c.choices[0].text) or "" for c in chunks) == (
            "".join(ANSWER)
        )
        chunks = _stream(gateway, kind, {"include_usage": True})
        assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
        assert chunks[-1].usage.completion_tokens == len(ANSWER)  # type: ignore[union-attr]
        chunks = _stream(gateway, kind, CONTINUOUS)
        assert all(c.usage is not None for c in chunks)
        # what the gateway asked for, explicitly, each time: the running usage, for the meter
        assert [r["stream_options"] for r in standin.requests] == [
            {"include_usage": True, "continuous_usage_stats": True}
        ] * 3
        wait_for(lambda: len(_access(gateway)) == 3, timeout=5, what="three access lines")
        for line in _access(gateway):
            assert f"prompt_tokens={PROMPT_TOKENS} output_tokens={len(ANSWER)} " in line, line
        assert _output_tokens(gateway) == 3 * len(ANSWER)
    finally:
        gateway.stop()
        standin.stop()


def test_an_engine_that_sends_no_usage_is_metered_by_its_chunks(runtime_dir: Path) -> None:
    standin = StandInEngine(usage="none")
    gateway = start_gateway(runtime_dir, [standin.url], "--model", ENGINE_MODEL)
    try:
        for kind in ("chat", "completions"):
            chunks = _stream(gateway, kind, {"include_usage": True})
            assert all(c.usage is None for c in chunks)  # nothing to pass on: the gateway invents no usage
        wait_for(lambda: len(_access(gateway)) == 2, timeout=5, what="two access lines")
        assert all(f"output_tokens={len(ANSWER)} usage=counted " in line for line in _access(gateway)), _access(gateway)
        assert _output_tokens(gateway) == 2 * len(ANSWER)
    finally:
        gateway.stop()
        standin.stop()


def test_a_stream_the_client_cancels_is_metered(engine: Server, runtime_dir: Path) -> None:
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        stream = long_stream(client(gateway), model=ENGINE_MODEL)
        received = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 8:
                break
        stream.close()  # the client leaves mid-answer
        wait_for(lambda: len(_access(gateway)) == 1, timeout=10, what="the access line")
        line = _access(gateway)[0]
        assert "status=499" in line and " usage=engine " in line, line
        # the engine's running usage: the prompt it prefilled, and what it had generated when the client left
        prompt = int(re.search(r"prompt_tokens=(\d+)", line).group(1))  # type: ignore[union-attr]
        counted = int(re.search(r"output_tokens=(\d+)", line).group(1))  # type: ignore[union-attr]
        assert 8 <= counted < 1500  # what it was sent, not the whole answer it asked for
        assert _output_tokens(gateway) == counted
        assert metric(gateway.metrics(), "byoc_gateway_requests_total", code="499") == 1
        same_prompt = client(gateway).chat.completions.create(
            model=ENGINE_MODEL, messages=[{"role": "user", "content": "Count to a thousand."}], max_tokens=1
        )
        assert same_prompt.usage is not None and prompt == same_prompt.usage.prompt_tokens > 0
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"include_usage": "yes"}, "stream_options.include_usage"),
        ({"include_usage": True, "continuous_usage_stats": 1}, "stream_options.continuous_usage_stats"),
        ({"include_obfuscation": True}, "stream_options.include_obfuscation"),  # no padding will come
        (["include_usage"], "stream_options"),
    ],
)
def test_stream_options_the_gateway_cannot_honour_are_refused(
    gateway: GatewayUnderTest, options: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=2, stream=True, extra_body={"stream_options": options}
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == param


def test_the_official_clients_obfuscation_off_is_accepted(gateway: GatewayUnderTest) -> None:
    """openai-python sends stream_options.include_obfuscation: false to turn padding off: nothing to refuse."""
    stream = gateway.client().chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},  # type: ignore[typeddict-unknown-key]
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def _sse(gateway: Server, kind: str, options: dict[str, bool] | None) -> list[dict[str, Any] | str]:
    """A streamed answer read raw: each event's JSON, and "[DONE]" as the string."""
    body: dict[str, Any] = {"model": ENGINE_MODEL, "max_tokens": 5, "stream": True}
    body.update({"messages": HELLO} if kind == "chat" else {"prompt": "One two"})
    if options is not None:
        body["stream_options"] = options
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    answer = http("POST", gateway.url + path, json.dumps(body).encode(), JSON)
    assert answer.status == 200, answer.body
    events = [e.removeprefix("data: ") for e in answer.body.decode().split("\n\n") if e.strip()]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


@pytest.mark.parametrize("kind", ["chat", "completions"])
@pytest.mark.parametrize("usage", ["last_content", "twice", "every", "honour"])
def test_a_client_that_asks_for_usage_gets_exactly_one_usage_chunk_whatever_the_engine_sends(
    runtime_dir: Path, kind: str, usage: Any
) -> None:
    """Usage on the last content chunk only, two usage-only chunks, usage on every chunk, one usage chunk: a client
    with `include_usage` gets one chunk with `choices: []`, the stream's identity and the last total, before
    [DONE]; a client that did not ask gets none; each token is counted once."""
    standin = StandInEngine(usage=usage)
    gateway = start_gateway(runtime_dir, [standin.url], "--model", ENGINE_MODEL)
    try:
        chunks = _stream(gateway, kind, {"include_usage": True})  # the official client parses the stream
        assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
        *content, last = chunks
        assert last.choices == [] and {c.id for c in chunks} == {content[0].id}
        assert {c.object for c in chunks} == {content[0].object} and last.model == ENGINE_MODEL
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT_TOKENS, len(ANSWER))

        events = _sse(gateway, kind, {"include_usage": True})
        assert events[-1] == "[DONE]"
        carrying = [e for e in events[:-1] if isinstance(e, dict) and e.get("usage") is not None]
        assert carrying == [events[-2]] and events[-2]["choices"] == []  # type: ignore[index]
        assert events[-2]["usage"]["total_tokens"] == PROMPT_TOKENS + len(ANSWER)  # type: ignore[index]
        assert isinstance(events[-2]["created"], int)  # type: ignore[index]

        events = _sse(gateway, kind, None)
        assert all(isinstance(e, str) or (e.get("usage") is None and e["choices"]) for e in events)

        wait_for(lambda: len(_access(gateway)) == 3, timeout=5, what="three access lines")
        for line in _access(gateway):
            assert f"prompt_tokens={PROMPT_TOKENS} output_tokens={len(ANSWER)} usage=engine " in line, line
        assert _output_tokens(gateway) == 3 * len(ANSWER)
    finally:
        gateway.stop()
        standin.stop()


def test_an_engine_with_usage_on_its_last_content_chunk_keeps_continuous_usage(runtime_dir: Path) -> None:
    standin = StandInEngine(usage="last_content")
    gateway = start_gateway(runtime_dir, [standin.url], "--model", ENGINE_MODEL)
    try:
        chunks = _stream(gateway, "chat", CONTINUOUS)
        # the engine's usage stays where it put it (on content), and one usage-only chunk ends the stream
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ANSWER)
        assert chunks[-2].choices and chunks[-2].usage is not None
        assert sum(1 for c in chunks if not c.choices) == 1
    finally:
        gateway.stop()
        standin.stop()


def test_a_cancelled_request_says_where_its_counts_come_from(engine: Server, runtime_dir: Path) -> None:
    """A request the client cancels: the access line says where its counts come from (`usage=none`: a request
    cancelled before the engine's first chunk, nothing known; `usage=engine`: a stream, metered by the engine's running
    usage up to its last chunk)."""
    standin = StandInEngine(delay=3)
    gateway = start_gateway(runtime_dir, [standin.url], "--model", ENGINE_MODEL)
    try:
        impatient = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model=ENGINE_MODEL, messages=HELLO, max_tokens=5)
        with pytest.raises(openai.APITimeoutError):  # a stream left during prefill: nothing came either
            list(impatient.chat.completions.create(model=ENGINE_MODEL, messages=HELLO, max_tokens=5, stream=True))
        wait_for(lambda: len(_access(gateway)) == 2, timeout=10, what="the access lines")
        for line in _access(gateway):
            assert "status=499 prompt_tokens=0 output_tokens=0 usage=none " in line, line
    finally:
        gateway.stop()
        standin.stop()
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        stream = long_stream(client(gateway), model=ENGINE_MODEL)
        for received, _ in enumerate(stream):
            if received == 8:
                break
        stream.close()
        _stream(gateway, "chat", None)  # a whole answer: the engine's usage
        wait_for(lambda: len(_access(gateway)) == 2, timeout=10, what="two access lines")
        cancelled, whole = sorted(_access(gateway), key=lambda line: "status=499" not in line)
        assert "status=499 prompt_tokens=0 " not in cancelled and " usage=engine " in cancelled, cancelled
        assert "status=200 " in whole and " usage=engine " in whole, whole
    finally:
        gateway.stop()


def test_a_tool_message_without_tool_call_id_is_refused_by_the_gateway_not_the_engine(
    engine: Server, runtime_dir: Path
) -> None:
    """OpenAI requires `tool_call_id` on a tool message; trtllm-serve (and so the CPU engine) takes one without."""
    messages = [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "sunny"},
    ]
    gateway = start_gateway(runtime_dir, [engine.url], "--model", ENGINE_MODEL)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client(gateway).chat.completions.create(model=ENGINE_MODEL, messages=messages, max_tokens=2)  # type: ignore[arg-type]
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "messages[2].tool_call_id"
        assert caught.value.status_code == 400
        answered = client(gateway).chat.completions.create(
            model=ENGINE_MODEL,
            messages=[*messages[:2], {**messages[2], "tool_call_id": "call_1"}],  # type: ignore[list-item]
            max_tokens=2,
        )
        assert answered.choices
    finally:
        gateway.stop()
    body = {"model": ENGINE_MODEL, "messages": messages, "max_tokens": 2}
    direct = http("POST", engine.url + "/v1/chat/completions", json.dumps(body).encode(), JSON)
    assert direct.status == 200, direct.body
