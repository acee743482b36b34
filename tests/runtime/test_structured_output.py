"""Structured output is enforced: the official client's structured-output helpers, with a pydantic schema, get JSON
that parses against it from a random tiny model, on the base model and on an addon, streamed and not."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from tests.runtime.conftest import KEYS, MODEL, GatewayUnderTest, http

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
