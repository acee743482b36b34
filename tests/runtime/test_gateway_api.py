"""The official openai client against gateway -> CPU engine: what an application sees."""

from __future__ import annotations

import json
import threading

import openai
import pytest

from tests.runtime.conftest import KEYS, MODEL, GatewayUnderTest, http, long_stream, metric, wait_for

HELLO = [{"role": "user", "content": "Hello, how can I help you today?"}]


def test_chat_completion(gateway: GatewayUnderTest) -> None:
    answer = gateway.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.model == MODEL
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 12


def test_completion(gateway: GatewayUnderTest) -> None:
    answer = gateway.client().completions.create(model=MODEL, prompt="One two three", max_tokens=8, temperature=0)
    assert answer.object == "text_completion"
    assert answer.choices[0].text
    assert answer.usage is not None and answer.usage.completion_tokens <= 8


def test_greedy_is_deterministic_and_max_tokens_is_honoured(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    first, second = (
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
        )
        for _ in range(2)
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None and first.usage.completion_tokens == 6


def test_streaming_with_usage_in_the_last_chunk(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    *content, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 10 or content[-1].choices[0].finish_reason == "stop"
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in content)
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0)
    assert streamed == whole.choices[0].message.content


def test_stream_ends_with_done_and_has_no_usage_unless_asked(gateway: GatewayUnderTest) -> None:
    body = {"model": MODEL, "prompt": "One two", "max_tokens": 5, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json"}
    answer = http("POST", gateway.url + "/v1/completions", json.dumps(body).encode(), headers)
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = [e for e in answer.body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_models_lists_base_and_every_addon(gateway: GatewayUnderTest) -> None:
    models = {m.id: m for m in gateway.client().models.list()}
    assert set(models) == {MODEL, "sql", "support"}  # sql declared with --addon, support learned from the engine


def test_addon_selection_changes_the_output(gateway: GatewayUnderTest) -> None:
    client = gateway.client()

    def answer(model: str) -> str:
        result = client.chat.completions.create(
            model=model, messages=HELLO, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
        )
        assert result.model == model
        return result.choices[0].message.content or ""

    base, sql, support = answer(MODEL), answer("sql"), answer("support")
    assert len({base, sql, support}) == 3
    assert answer("sql") == sql  # and each addon is itself deterministic at temperature 0


def test_wrong_or_missing_key_is_401(gateway: GatewayUnderTest) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        gateway.client("sk-not-a-key-at-all-0000").chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.status_code == 401
    assert http("POST", gateway.url + "/v1/chat/completions", b"{}").status == 401
    with pytest.raises(openai.AuthenticationError):
        gateway.client("sk-not-a-key-at-all-0000").models.list()


def test_unknown_model_is_404_in_openais_shape(gateway: GatewayUnderTest) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="gpt-5", messages=HELLO)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model" and error["code"] == "model_not_found" and error["type"]
    assert "gpt-5" not in error["message"]


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 3}, "top_p"),
        ({"n": 2}, "n"),
        ({"stop": [1, 2]}, "stop"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"lora_request": {"lora_name": "sql"}}, "lora_request"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(
    gateway: GatewayUnderTest, overrides: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        # extra_body replaces the typed arguments, so wrong types reach the wire as a careless client sends them
        gateway.client().chat.completions.create(model=MODEL, messages=HELLO, extra_body=overrides)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert error["message"].startswith(param)


def test_bad_json_is_400(gateway: GatewayUnderTest) -> None:
    headers = {"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json"}
    answer = http("POST", gateway.url + "/v1/chat/completions", b'{"model": "tiny-llama", "messages": [', headers)
    assert answer.status == 400
    assert answer.json()["error"]["param"] == "body"
    assert "JSON" in answer.json()["error"]["message"]


def test_prompt_plus_max_tokens_over_the_context_window_is_400(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    long_prompt = [{"role": "user", "content": "one two three four five six seven eight nine ten " * 60}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=2000)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "max_tokens"
    assert "context window" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4096)  # over the window alone
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "max_tokens"


def test_requests_per_minute_per_key_is_429_with_retry_after(gateway: GatewayUnderTest) -> None:
    client = gateway.client("slow")  # rpm: 2
    for _ in range(2):
        client.completions.create(model=MODEL, prompt="One", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model=MODEL, prompt="One", max_tokens=1)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    gateway.client("ci").completions.create(model=MODEL, prompt="One", max_tokens=1)  # other keys are unaffected
    assert (metric(gateway.server.metrics(), "byoc_gateway_rate_limited_total", reason="key_rpm") or 0) >= 1


def test_concurrent_requests_per_key_is_429(gateway: GatewayUnderTest) -> None:
    client = gateway.client("single")  # max_concurrency: 1
    stream = long_stream(client)
    try:
        next(iter(stream))
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model=MODEL, prompt="One", max_tokens=1)
        assert caught.value.response.headers["retry-after"] == "1"
    finally:
        stream.close()
    # the slot comes back once the stream is closed
    wait_for(lambda: _succeeds(client), what="the key's slot to free up")


def _succeeds(client: openai.OpenAI) -> bool:
    try:
        client.completions.create(model=MODEL, prompt="One", max_tokens=1)
    except openai.RateLimitError:
        return False
    return True


def test_metrics_on_both_ports_with_the_contracted_names(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    client.chat.completions.create(model="sql", messages=HELLO, max_tokens=4, stream=True).close()
    list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0, stream=True))
    main, side = gateway.server.metrics(), http("GET", gateway.metrics_url).body.decode()
    for text in (main, side):
        assert metric(text, "byoc_slo_ttft_p95_seconds") == 1.5
        assert (metric(text, "byoc_gateway_requests_total", model=MODEL, addon="base", code="200") or 0) >= 1
        assert (metric(text, "byoc_gateway_output_tokens_total", model=MODEL, addon="base") or 0) >= 4
        assert (metric(text, "byoc_gateway_prompt_tokens_total", model=MODEL, addon="base") or 0) >= 1
        assert (metric(text, "byoc_gateway_time_to_first_token_seconds_count", model=MODEL, addon="base") or 0) >= 1
        assert (metric(text, "byoc_gateway_inter_token_latency_seconds_count", model=MODEL, addon="base") or 0) >= 1
        assert (metric(text, "byoc_gateway_request_duration_seconds_count", model=MODEL, addon="base") or 0) >= 1
        for gauge in ("in_flight_requests", "queue_depth", "pending_requests"):
            assert metric(text, f"byoc_gateway_{gauge}") is not None
    assert "byoc_gateway_upstream_errors_total" in main or "byoc_gateway_upstream_errors" in main
    assert "sk-" not in main  # no key material, ever


def test_health_and_ready(gateway: GatewayUnderTest) -> None:
    assert http("GET", gateway.url + "/health").status == 200
    ready = http("GET", gateway.url + "/ready")
    assert ready.status == 200 and ready.json()["upstreams_ready"] == 1


def test_engine_keeps_serving_concurrent_requests(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    results: list[str] = []

    def ask() -> None:
        answer = client.completions.create(model=MODEL, prompt="One two", max_tokens=20, temperature=0)
        results.append(answer.choices[0].text)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6 and len(set(results)) == 1  # interleaved generation, same greedy answer
