"""A client's mistake is a 4xx in OpenAI's error shape, naming the parameter as the client sent it; it is never an
upstream error and never costs a replica its place in rotation. A client that leaves stops the work (499)."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.runtime.conftest import KEYS, MODEL, GatewayUnderTest, Server, http, metric, wait_for

HELLO = [{"role": "user", "content": "Hello, how can I help you today?"}]
AUTH = {"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json"}
LONG_PROMPT = [{"role": "user", "content": "one two three four five six seven eight nine ten " * 60}]


def _upstream_health(gateway: GatewayUnderTest) -> tuple[float, float, float]:
    text = gateway.server.metrics()
    errors = sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("byoc_gateway_upstream_errors_total{")
    )
    server_errors = sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("byoc_gateway_requests_total{") and 'code="5' in line
    )
    return errors, server_errors, metric(text, "byoc_gateway_upstreams_ready") or 0


def _assert_openai_error(answer_body: object, param: str | None) -> dict[str, object]:
    assert isinstance(answer_body, dict)
    error = answer_body.get("error", answer_body)  # the openai client unwraps "error"
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        # token ids the model does not have: the engine refuses them (it used to fail inside: 502)
        ("/v1/completions", {"model": MODEL, "prompt": [5, 100000, 7], "max_tokens": 3}, "prompt"),
        ("/v1/completions", {"model": "sql", "prompt": [100000], "max_tokens": 3}, "prompt"),
        # an image part for a text-only model: refused, never dropped on the floor
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            "messages[0].content[0].type",
        ),
        # a token id the model does not have, in logit_bias
        ("/v1/chat/completions", {"model": MODEL, "messages": HELLO, "logit_bias": {"999999": 5}}, "logit_bias"),
        # a schema xgrammar cannot enforce
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": HELLO,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_what_the_engine_refuses_is_a_400_not_an_upstream_error(
    gateway: GatewayUnderTest, path: str, body: dict[str, object], param: str
) -> None:
    before = _upstream_health(gateway)
    for stream in (False, True):
        answer = http("POST", gateway.url + path, json.dumps({**body, "stream": stream}).encode(), AUTH)
        assert answer.status == 400, answer.body
        _assert_openai_error(answer.json(), param)
    assert _upstream_health(gateway) == before  # no upstream error, no 5xx, the replica still in rotation


def test_an_empty_prompt_is_served_not_a_server_error(gateway: GatewayUnderTest) -> None:
    before = _upstream_health(gateway)
    answer = gateway.client().completions.create(model=MODEL, prompt="", max_tokens=3)
    assert answer.choices[0].finish_reason in ("stop", "length")  # it starts a document, as OpenAI's does
    assert _upstream_health(gateway) == before


@pytest.mark.parametrize("model", [MODEL, "sql"])
def test_errors_name_the_parameter_the_client_sent(gateway: GatewayUnderTest, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model=model, messages=LONG_PROMPT, max_completion_tokens=2000)
    error = _assert_openai_error(caught.value.body, "max_completion_tokens")
    assert "max_completion_tokens" in str(error["message"]) and "max_tokens " not in str(error["message"])
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(model=model, messages=HELLO, max_completion_tokens=4096)
    _assert_openai_error(caught.value.body, "max_completion_tokens")


def test_a_body_over_the_limit_is_413_in_openais_shape(gateway: GatewayUnderTest) -> None:
    big = json.dumps({"model": MODEL, "prompt": "x" * (9 * 1024 * 1024)}).encode()
    answer = http("POST", gateway.url + "/v1/completions", big, AUTH)
    assert answer.status == 413
    assert answer.headers["content-type"].startswith("application/json")
    error = _assert_openai_error(answer.json(), "body")
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/chat/completions", 405, "POST"),
        ("PUT", "/v1/completions", 405, "POST"),
        ("POST", "/v1/models", 405, "GET, HEAD"),
        ("GET", "/v1/embeddings", 404, None),
        ("POST", "/v2/chat/completions", 404, None),
    ],
)
def test_unknown_routes_and_wrong_methods_answer_in_openais_shape(
    gateway: GatewayUnderTest, method: str, path: str, status: int, allow: str | None
) -> None:
    answer = http(method, gateway.url + path, b"{}" if method != "GET" else None, AUTH)
    assert answer.status == status
    assert answer.headers["content-type"].startswith("application/json")
    _assert_openai_error(answer.json(), None)
    if allow:
        assert answer.headers["allow"] == allow


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_client_that_leaves_a_non_streamed_request_stops_the_work(
    gateway: GatewayUnderTest, engine: Server, kind: str
) -> None:
    client = gateway.client("single", timeout=1.0)  # max_concurrency: 1
    long = {"max_tokens": 1800, "temperature": 0, "extra_body": {"ignore_eos": True}}
    with pytest.raises(openai.APITimeoutError):
        if kind == "chat":
            client.chat.completions.create(model=MODEL, messages=HELLO, **long)  # type: ignore[arg-type]
        else:
            client.completions.create(model=MODEL, prompt="One two", **long)  # type: ignore[arg-type]
    left = time.monotonic()
    # the key's only slot is free at once: an immediate retry is served, not 429
    retry = gateway.client("single").completions.create(model=MODEL, prompt="One", max_tokens=1)
    assert retry.choices
    assert time.monotonic() - left < 3
    wait_for(lambda: metric(gateway.server.metrics(), "byoc_gateway_in_flight_requests") == 0, timeout=5)
    # the engine stopped generating: no iterations run once it is idle
    time.sleep(0.3)
    http("GET", engine.url + "/metrics")  # drains the iteration stats
    time.sleep(0.5)
    assert http("GET", engine.url + "/metrics").json() == []
    wait_for(
        lambda: any(
            "key=single" in line and "status=499" in line for line in gateway.server.log.read_text().splitlines()
        ),
        timeout=5,
        what="the access line with status 499",
    )


def test_a_client_that_leaves_while_queued_frees_its_place(engine: Server, runtime_dir: object) -> None:
    from pathlib import Path

    from tests.runtime.conftest import long_stream, start_gateway

    assert isinstance(runtime_dir, Path)
    server = start_gateway(runtime_dir, [engine.url], "--max-concurrency", "1", "--max-queue", "1")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        holder = long_stream(client)
        next(iter(holder))
        try:
            with pytest.raises(openai.APITimeoutError):
                client.with_options(timeout=1.0).completions.create(model=MODEL, prompt="One", max_tokens=1)
            wait_for(lambda: metric(server.metrics(), "byoc_gateway_queue_depth") == 0, timeout=5, what="no queue")
        finally:
            holder.close()
        wait_for(lambda: "status=499" in server.log.read_text(), timeout=5, what="the 499 access line")
        assert client.completions.create(model=MODEL, prompt="One", max_tokens=1).choices
    finally:
        server.stop()


def test_a_body_nested_thousands_deep_is_a_400_not_a_500(gateway: GatewayUnderTest) -> None:
    """json's decoder recurses per level: a 200 kB body of brackets must not become a server error."""
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = http("POST", gateway.url + "/v1/chat/completions", deep, {**AUTH, "Content-Type": "application/json"})
    assert answer.status == 400
    error = _assert_openai_error(answer.json(), "body")
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "nope"}}])
def test_a_tool_choice_without_tools_is_refused(gateway: GatewayUnderTest, choice: object) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice, "max_tokens": 3}
    answer = http("POST", gateway.url + "/v1/chat/completions", json.dumps(body).encode(), AUTH)
    assert answer.status == 400
    _assert_openai_error(answer.json(), "tool_choice")


def test_the_engines_own_words_reach_the_client_when_they_quote_no_content(gateway: GatewayUnderTest) -> None:
    """A schema that names no content but cannot compile: the engine's 400 says why, and the client reads it (the
    scrubber used to withhold it for naming `json_schema`, a value of the request's structure)."""
    schema = {"type": "object", "minProperties": 1, "additionalProperties": False}  # satisfiable by no object
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model=MODEL,
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    error = _assert_openai_error(caught.value.body, "response_format.json_schema.schema")
    assert "not a JSON schema the engine can enforce" in str(error["message"])
    assert "withheld" not in str(error["message"])


def test_an_engine_message_that_quotes_content_is_still_withheld() -> None:
    """trtllm-serve answers a bad request with pydantic's words, which quote the input (`input_value=...`)."""
    from runtime.serve.openai_api import upstream_error

    secret = "my card number is 4111 1111 1111 1111"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": secret}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "pin 9921"}}},
        "stop": ["END-OF-ANSWER"],
    }
    quotes = [
        f"1 validation error for ChatCompletionRequest: messages.0 input_value='{secret}'",
        "schema: description 'pin 9921' is not allowed",
        "stop sequence 'END-OF-ANSWER' too long",
    ]
    for message in quotes:
        raw = json.dumps({"object": "error", "message": message, "type": "BadRequestError", "code": 400}).encode()
        error = upstream_error(400, raw, body)
        assert "withheld because it quoted the request" in error.message
    # the request's structure is not content: parameter names, type names, enum-like values pass
    harmless = "response_format.json_schema.schema is not a JSON schema the engine can enforce (RuntimeError)"
    raw = json.dumps({"object": "error", "message": harmless, "type": "BadRequestError", "code": 400}).encode()
    assert upstream_error(400, raw, body).message == harmless
    raw = json.dumps({"object": "error", "message": "role user: bad", "type": "BadRequestError", "code": 400})
    assert upstream_error(400, raw.encode(), body).message == "role user: bad"
    # a short value of the client's that is also one of the engine's words is no quote (found by a new user:
    # `"user": "engine"`, `"stop": ["the"]`, a message `schema` withheld the harmless message above)
    for coincidence in (
        {**body, "user": "engine"},
        {**body, "stop": ["the"]},
        {**body, "messages": [{"role": "user", "content": "schema"}]},
        {**body, "messages": [{"role": "user", "content": "enforce"}]},
    ):
        raw = json.dumps({"object": "error", "message": harmless, "type": "BadRequestError", "code": 400}).encode()
        assert upstream_error(400, raw, coincidence).message == harmless, coincidence
    # ...but the same short value between quotes, as Python's repr and pydantic show an input, is withheld
    quoted = "stop: 'the' is not a valid stop sequence"
    raw = json.dumps({"object": "error", "message": quoted, "type": "BadRequestError", "code": 400}).encode()
    assert "withheld because it quoted the request" in upstream_error(400, raw, {**body, "stop": ["the"]}).message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 3}, "top_p"),
        ({"stop": [3]}, "stop"),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"frobnicate": True}, "frobnicate"),  # trtllm-serve forbids unknown fields too (extra="forbid")
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # only with stream: true
    ],
)
def test_the_gateway_and_the_engine_refuse_a_request_with_one_validator(
    gateway: GatewayUnderTest, engine: Server, body: dict[str, object], param: str
) -> None:
    """One parser for both: the same parameter named; the engine answers as trtllm-serve's RequestValidationError
    handler does (`{"error": str(exc)}`, FastAPI's text naming the parameter's location)."""
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 2, **body}
    through = http("POST", gateway.url + "/v1/chat/completions", json.dumps(request).encode(), AUTH)
    direct = http(
        "POST",
        engine.url + "/v1/chat/completions",
        json.dumps({**request, "model": "tiny-engine"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert through.status == direct.status == 400, (through.body, direct.body)
    error = _assert_openai_error(through.json(), param)
    refused = direct.json()
    assert set(refused) == {"error"} and refused["error"].startswith("1 validation error:")
    # the location names the same parameter: ('body', 'messages', 0, 'role') for messages[0].role
    where = ", ".join(repr(int(p) if p.isdigit() else p) for p in param.replace("[", ".").replace("]", "").split("."))
    assert f"'loc': ('body', {where})" in refused["error"]
    assert str(error["message"]).startswith(f"{param}: ")


def test_the_engine_takes_trtllm_serves_own_fields_the_gateway_refuses(
    gateway: GatewayUnderTest, engine: Server
) -> None:
    lora = {"lora_request": {"lora_name": "sql", "lora_int_id": 1, "lora_path": "/models/adapters/sql"}}
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 2, **lora}
    through = http("POST", gateway.url + "/v1/chat/completions", json.dumps(request).encode(), AUTH)
    assert through.status == 400 and through.json()["error"]["param"] == "lora_request"
    direct = http(
        "POST",
        engine.url + "/v1/chat/completions",
        json.dumps({**request, "model": "tiny-engine"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert direct.status == 200, direct.body


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        ("('body', 'max_tokens')", "max_completion_tokens"),  # the name the client sent (the gateway renamed it)
        ("('body', 'lora_request', 'lora_path')", "model.lora_path"),  # what the gateway added: the client's `model`
        ("('body', 'messages', 1, 'content', 0, 'text')", "messages[1].content[0].text"),
        ("('body',)", None),
    ],
)
def test_trtllm_serves_validation_text_names_the_parameter_and_never_the_input(loc: str, param: str | None) -> None:
    """trtllm-serve's `{"error": str(RequestValidationError)}` (FastAPI's text: one Python dict per error, quoting the
    input) becomes OpenAI's error shape: `param` from `loc`, pydantic's `msg`, and nothing of `input`."""
    from runtime.serve.openai_api import upstream_error

    secret = "the password is swordfish"
    body = {"model": MODEL, "messages": [{"role": "user", "content": secret}], "max_tokens": 5}
    text = f"1 validation error:\n  {{'type': 'int_type', 'loc': {loc}, 'msg': 'Input should be a valid integer', "
    text += f"'input': '{secret}'}}\n  File \"openai_server.py\", line 1, in openai_chat\n    POST /v1/chat/completions"
    error = upstream_error(400, json.dumps({"error": text}).encode(), body, {"max_tokens": "max_completion_tokens"})
    assert error.status == 400 and error.kind == "invalid_request_error" and error.param == param
    assert "Input should be a valid integer" in error.message and "swordfish" not in error.message
    # pydantic's own words are dropped too when they quote the request
    quoting = text.replace("Input should be a valid integer", f"Value error, {secret}")
    error = upstream_error(400, json.dumps({"error": quoting}).encode(), body)
    assert "swordfish" not in error.message


def test_a_lone_surrogate_is_the_clients_400_naming_where_not_a_replica_failure(
    gateway: GatewayUnderTest, engine: Server
) -> None:
    """JSON lets `\\ud800` stand alone; no tokenizer can take it. Found by a new user: it came back 502 "the model
    replica failed" and raised the upstream-error alerts. It is the client's mistake, named where it is, and never
    reaches a replica; an emoji's surrogate pair is still text."""
    errors_before = _upstream_health(gateway)
    for path, request, param in (
        ("chat/completions", {"messages": [{"role": "user", "content": "x\\ud800"}]}, "messages[0].content"),
        ("completions", {"prompt": "x\\udfff y"}, "prompt"),
    ):
        raw = json.dumps({"model": MODEL, "max_tokens": 2, **request}).replace("\\\\u", "\\u").encode()
        for stream in (False, True):
            body = raw[:-1] + (b', "stream": true}' if stream else b"}")
            through = http("POST", f"{gateway.url}/v1/{path}", body, AUTH)
            assert through.status == 400, through.body
            error = _assert_openai_error(through.json(), param)
            assert "surrogate" in str(error["message"])
        direct = http("POST", f"{engine.url}/v1/{path}", raw, {"Content-Type": "application/json"})
        assert direct.status == 400, direct.body
    assert _upstream_health(gateway) == errors_before
    emoji = json.dumps({"model": MODEL, "max_tokens": 2, "prompt": "ok \U0001f600"}).encode()  # ascii: a pair
    assert b"\\ud83d\\ude00" in emoji
    assert http("POST", gateway.url + "/v1/completions", emoji, AUTH).status == 200
