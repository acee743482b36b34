"""Structured output is enforced: the official client's structured-output helpers, with a pydantic schema, get JSON
that parses against it from a random tiny model, on the base model and on an addon, streamed and not."""

from __future__ import annotations

import json
import re
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.runtime.conftest import ENGINE_MODEL, KEYS, MODEL, GatewayUnderTest, Server, http

ASK = [{"role": "user", "content": "Plan a trip: where, how long, and is it sunny?"}]
AUTH = {"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json"}


class Trip(BaseModel):
    # bounded fields: a random model fills any string or number it is allowed to, up to max_tokens
    city: str = Field(pattern=r"^[A-Za-z ]{1,12}$")
    days: int = Field(ge=1, le=30)
    sunny: bool
    season: Literal["spring", "summer", "autumn", "winter"]


class Weather(BaseModel):
    city: str = Field(pattern=r"^[a-z]{1,10}$")
    unit: Literal["celsius", "fahrenheit"]


class Alarm(BaseModel):
    hour: int = Field(ge=0, le=23)


@pytest.mark.parametrize("model", [MODEL, "sql"])
def test_parse_with_a_pydantic_model(gateway: GatewayUnderTest, model: str) -> None:
    answer = gateway.client().chat.completions.parse(
        model=model, messages=ASK, response_format=Trip, max_completion_tokens=200, temperature=0
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Trip)
    assert Trip.model_validate_json(choice.message.content or "") == choice.message.parsed


@pytest.mark.parametrize("model", [MODEL, "support"])
def test_a_streamed_structured_answer_parses_too(gateway: GatewayUnderTest, model: str) -> None:
    with gateway.client().chat.completions.stream(
        model=model, messages=ASK, response_format=Trip, max_completion_tokens=200, temperature=0.8, seed=3
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Trip)


def test_json_object_on_completions(gateway: GatewayUnderTest) -> None:
    body = {
        "model": MODEL,
        "prompt": "A JSON object:",
        "max_tokens": 200,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": Weather.model_json_schema()}},
    }
    answer = http("POST", gateway.url + "/v1/completions", json.dumps(body).encode(), AUTH)
    assert answer.status == 200, answer.body
    Weather.model_validate_json(answer.json()["choices"][0]["text"])


@pytest.mark.parametrize("model", [MODEL, "sql"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_choice_is_a_valid_call(gateway: GatewayUnderTest, model: str, stream: bool) -> None:
    tools = [openai.pydantic_function_tool(Weather), openai.pydantic_function_tool(Alarm)]
    choice = {"type": "function", "function": {"name": "Alarm"}}
    client = gateway.client()
    if stream:
        with client.chat.completions.stream(
            model=model, messages=ASK, tools=tools, tool_choice=choice, max_completion_tokens=100, temperature=0
        ) as events:
            message = events.get_final_completion().choices[0].message
    else:
        answer = client.chat.completions.parse(
            model=model, messages=ASK, tools=tools, tool_choice=choice, max_completion_tokens=100, temperature=0
        )
        assert answer.choices[0].finish_reason == "tool_calls"
        message = answer.choices[0].message
    assert message.tool_calls and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "Alarm"
    assert isinstance(call.function.parsed_arguments, Alarm)


def test_tool_choice_required_calls_one_of_the_tools(gateway: GatewayUnderTest) -> None:
    tools = [openai.pydantic_function_tool(Weather), openai.pydantic_function_tool(Alarm)]
    answer = gateway.client().chat.completions.parse(
        model=MODEL, messages=ASK, tools=tools, tool_choice="required", max_completion_tokens=100, temperature=0
    )
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name in ("Weather", "Alarm")
    assert isinstance(call.function.parsed_arguments, Weather | Alarm)


def test_a_forced_tool_that_is_not_in_tools_is_400(gateway: GatewayUnderTest) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[openai.pydantic_function_tool(Alarm)],
            tool_choice={"type": "function", "function": {"name": "Weather"}},
        )
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "tool_choice"


# -- schema keywords xgrammar would drop: refused with a 400 naming them, never accepted and ignored ----------------
def _schema_format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _string_schema(**keywords: object) -> dict[str, object]:
    return {"type": "object", "properties": {"contact": {"type": "string", **keywords}}, "required": ["contact"]}


ROOT = "response_format.json_schema.schema"
AT = f"{ROOT}.properties.contact"
UUID = "0b5e4a7c-1d2e-4f60-8a9b-0c1d2e3f4a5b"
# (schema, the keyword's path, an answer that breaks only that keyword: xgrammar lets it through)
DROPPED_KEYWORDS = [
    # xgrammar generates a string from the first of format, pattern, length bounds: the others are dropped
    (_string_schema(format="email", maxLength=12), f"{AT}.maxLength", {"contact": "someone.far.away@example.com"}),
    (_string_schema(format="date", minLength=20), f"{AT}.minLength", {"contact": "2026-12-06"}),
    (_string_schema(format="uuid", pattern="^[a-f]+$"), f"{AT}.pattern", {"contact": UUID}),
    (_string_schema(pattern="^[a-z]+$", maxLength=5), f"{AT}.maxLength", {"contact": "abcdefghijkl"}),
    # a format it has no regex for is not enforced at all
    (_string_schema(format="ipv4-cidr"), f"{AT}.format", {"contact": "not an address"}),
    # keywords it never enforces, anywhere in the schema
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, f"{ROOT}.uniqueItems", [1, 1]),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, f"{ROOT}.properties.a.not", {"a": "x"}),
    ({"type": "number", "multipleOf": 0.5}, f"{ROOT}.multipleOf", 0.3),
    ({"type": "integer", "multipleOf": 3, "minimum": 0}, f"{ROOT}.multipleOf", 4),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, f"{ROOT}.allOf", [True]),
    (
        {"$defs": {"A": {"type": "string", "format": "email", "maxLength": 3}}, "$ref": "#/$defs/A"},
        f"{ROOT}.$defs.A.maxLength",
        "someone@example.com",
    ),
]  # fmt: skip


def _grammar_accepts(schema: object, answer: object) -> bool:
    import xgrammar

    grammar = xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    return bool(xgrammar.testing._is_grammar_accept_string(grammar, json.dumps(answer)))


@pytest.mark.parametrize(("schema", "param", "breaking"), DROPPED_KEYWORDS)
def test_the_installed_xgrammar_drops_each_keyword_refused(schema: object, param: str, breaking: object) -> None:
    """The table in runtime/serve/structured.py against the xgrammar installed: an answer that breaks only the
    refused keyword is one the grammar lets through, so accepting the schema would let it reach the client."""
    assert _grammar_accepts(schema, breaking)


@pytest.mark.parametrize(
    ("schema", "breaking"),
    [
        ({"type": "string", "maxLength": 3}, "abcd"),
        ({"type": "string", "format": "email"}, "nobody"),
        ({"type": "string", "pattern": "^[a-z]+$"}, "ABC"),
        ({"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50}, 7),
        ({"type": "integer", "multipleOf": 5}, 7),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 1}, [1, 2]),
    ],
)
def test_what_is_accepted_the_installed_xgrammar_enforces(schema: object, breaking: object) -> None:
    from runtime.serve.structured import unenforced

    assert unenforced(schema, "schema") == []
    assert not _grammar_accepts(schema, breaking)


@pytest.mark.parametrize(("schema", "param", "breaking"), DROPPED_KEYWORDS)
def test_a_schema_keyword_the_grammar_would_drop_is_400_naming_it(
    gateway: GatewayUnderTest, engine: Server, schema: dict[str, object], param: str, breaking: object
) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 30, "response_format": _schema_format(schema)}
    keyword = param.rpartition(".")[2]
    # through the gateway (whatever engine is behind it: trtllm-serve's xgrammar drops the same keywords)
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(**body)  # type: ignore[call-overload]
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert keyword in str(error["message"])
    # and the engine on its own, in trtllm-serve's error shape
    answer = http("POST", engine.url + "/v1/chat/completions", json.dumps({**body, "model": ENGINE_MODEL}).encode())
    assert answer.status == 400, answer.body
    assert answer.json()["object"] == "error" and answer.json()["param"] == param


def test_the_same_keywords_in_a_tool_are_400_too(gateway: GatewayUnderTest) -> None:
    tools = [
        openai.pydantic_function_tool(Alarm),
        {"type": "function", "function": {"name": "mail", "parameters": _string_schema(format="email", maxLength=9)}},
    ]
    for choice in ("required", {"type": "function", "function": {"name": "mail"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            gateway.client().chat.completions.create(
                model=MODEL,
                messages=ASK,
                tools=tools,
                tool_choice=choice,
                max_tokens=30,  # type: ignore[arg-type]
            )
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "tools[1].function.parameters.properties.contact.maxLength"


def test_what_the_grammar_enforces_together_is_still_accepted_and_enforced(gateway: GatewayUnderTest) -> None:
    """Length bounds alone, a format alone, an integer step inside a two-sided range: enforced, so served."""
    schema = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 2, "maxLength": 4},
            "day": {"type": "string", "format": "date"},
            "step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50},
        },
        "required": ["code", "day", "step"],
        "additionalProperties": False,
    }
    answer = gateway.client().chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=120,
        temperature=0,
        response_format=_schema_format(schema),  # type: ignore[arg-type]
    )
    assert answer.choices[0].finish_reason == "stop"
    data = json.loads(answer.choices[0].message.content or "")
    assert 2 <= len(data["code"]) <= 4
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["day"])
    assert data["step"] % 5 == 0 and 0 <= data["step"] <= 50


# -- a tool call cut by max_tokens is a tool call with partial arguments, on every path -----------------------------
TOOLS = [openai.pydantic_function_tool(Weather), openai.pydantic_function_tool(Alarm)]
NAMES = {"Weather", "Alarm"}


def _call(
    client: openai.OpenAI, model: str, choice: object, max_tokens: int, stream: bool
) -> tuple[str, list[dict[str, str]], str | None]:
    """(finish_reason, [{name, arguments}], content) of one answer, streamed or not, put together as a client does."""
    options = {
        "model": model,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": choice,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if not stream:
        choice_ = client.chat.completions.create(**options).choices[0]  # type: ignore[call-overload]
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice_.message.tool_calls or []]
        return str(choice_.finish_reason), calls, choice_.message.content
    reason, content, calls_by_index = None, "", {}  # type: ignore[var-annotated]
    for chunk in client.chat.completions.create(**options, stream=True):  # type: ignore[call-overload]
        for part in chunk.choices:
            reason = part.finish_reason or reason
            content += part.delta.content or ""
            for call in part.delta.tool_calls or []:
                entry = calls_by_index.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += (call.function.name or "") if call.function else ""
                entry["arguments"] += (call.function.arguments or "") if call.function else ""
    return str(reason), list(calls_by_index.values()), content or None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "Weather"}}], ids=["required", "named"]
)
@pytest.mark.parametrize("via", ["gateway", "engine"])
def test_a_tool_call_cut_by_max_tokens_is_a_tool_call_with_partial_arguments(
    gateway: GatewayUnderTest, engine: Server, via: str, choice: object, stream: bool
) -> None:
    if via == "gateway":
        client, model = gateway.client(), MODEL
    else:
        client, model = openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0), ENGINE_MODEL
    whole = client.chat.completions.create(  # type: ignore[call-overload]
        model=model, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=100, temperature=0
    )
    assert whole.choices[0].finish_reason == "tool_calls"
    name = whole.choices[0].message.tool_calls[0].function.name
    full = whole.choices[0].message.tool_calls[0].function.arguments
    json.loads(full)
    tokens = whole.usage.completion_tokens
    # cut early (for "required": inside the grammar's wrapper, before the tool's name is complete) and late (inside
    # the arguments, two thirds of the way)
    for max_tokens in (2, tokens * 2 // 3):
        reason, calls, content = _call(client, model, choice, max_tokens, stream)
        assert reason == "length"
        assert content is None  # never the grammar's {"name": ..., "parameters": ...} wrapper as text
        assert len(calls) == 1, calls
        assert calls[0]["name"] in (name, "")
        assert full.startswith(calls[0]["arguments"]) and calls[0]["arguments"] != full
    assert calls[0]["name"] == name and calls[0]["arguments"]  # the late cut: the tool and part of its arguments
