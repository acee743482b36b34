"""Every sampling parameter works or is refused with the reason: none is accepted and silently ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.runtime.conftest import KEYS, MODEL, GatewayUnderTest, http

HELLO = [{"role": "user", "content": "Hello, how can I help you today?"}]
AUTH = {"Authorization": f"Bearer {KEYS['ci']}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def tokenizer(tiny_models: dict[str, Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["base"])


def _text(gateway: GatewayUnderTest, kind: str, model: str, stream: bool, **options: Any) -> str:
    """The answer's text, through the official client, for chat or completions, streamed or not."""
    client = gateway.client()
    common: dict[str, Any] = {"model": model, "max_tokens": 4, "stream": stream, **options}
    if kind == "chat":
        answer: Any = client.chat.completions.create(messages=HELLO, **common)  # type: ignore[call-overload]
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        return str(answer.choices[0].message.content)
    answer = client.completions.create(prompt="One two three", **common)  # type: ignore[call-overload]
    if stream:
        return "".join(c.choices[0].text for c in answer if c.choices)
    return str(answer.choices[0].text)


PATHS = [
    pytest.param(kind, model, stream, id=f"{kind}-{model}-{'stream' if stream else 'whole'}")
    for kind in ("chat", "completions")
    for model in (MODEL, "sql")
    for stream in (False, True)
]


@pytest.mark.parametrize(("kind", "model", "stream"), PATHS)
def test_logit_bias_moves_the_choice(
    gateway: GatewayUnderTest, tokenizer: Any, kind: str, model: str, stream: bool
) -> None:
    fox, dog = (tokenizer.convert_tokens_to_ids(t) for t in ("Ġfox", "Ġdog"))
    assert tokenizer.unk_token_id not in (fox, dog)
    options: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}
    assert _text(gateway, kind, model, stream, logit_bias={str(fox): 100, str(dog): 99}, **options) == " fox" * 4
    # -100 bans the token that would have been chosen
    assert _text(gateway, kind, model, stream, logit_bias={str(fox): -100, str(dog): 99}, **options) == " dog" * 4


@pytest.mark.parametrize(("kind", "model", "stream"), PATHS[::3])
def test_min_p_one_keeps_only_the_most_likely_token(
    gateway: GatewayUnderTest, kind: str, model: str, stream: bool
) -> None:
    options: dict[str, Any] = {"max_tokens": 24, "extra_body": {"ignore_eos": True}}
    greedy = _text(gateway, kind, model, stream, temperature=0, **options)
    hot = _text(gateway, kind, model, stream, temperature=2.0, seed=7, **options)
    assert hot != greedy  # a random model at temperature 2 wanders off
    options["extra_body"] = {"ignore_eos": True, "min_p": 1.0}
    assert _text(gateway, kind, model, stream, temperature=2.0, seed=7, **options) == greedy


def test_more_than_four_stop_sequences_are_accepted_up_to_the_configured_bound(gateway: GatewayUnderTest) -> None:
    client = gateway.client()
    six = ["zq1", "zq2", "zq3", "zq4", "zq5", "zq6"]
    assert client.completions.create(model=MODEL, prompt="One", max_tokens=2, stop=six).choices
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="One", max_tokens=2, stop=[f"zq{i}" for i in range(17)])
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "stop"
    assert "at most 16" in error["message"] and "max_stop_sequences" in error["message"]


@pytest.mark.parametrize(
    ("path", "overrides", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ("/v1/completions", {"logprobs": 2}, "logprobs"),
        ("/v1/completions", {"suffix": "and then"}, "suffix"),
    ],
)
def test_what_the_cpu_engine_cannot_do_is_refused_with_the_reason(
    gateway: GatewayUnderTest, path: str, overrides: dict[str, object], param: str
) -> None:
    body: dict[str, object] = {"model": MODEL, "max_tokens": 2, **overrides}
    body.update({"messages": HELLO} if "chat" in path else {"prompt": "One"})
    answer = http("POST", gateway.url + path, json.dumps(body).encode(), AUTH)
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["param"] == param and "not supported by this engine" in error["message"]


def test_bad_logit_bias_is_400(gateway: GatewayUnderTest) -> None:
    for bias in ({"fox": 1}, {"5": 101}, {"5": "up"}, [5]):
        with pytest.raises(openai.BadRequestError) as caught:
            gateway.client().chat.completions.create(model=MODEL, messages=HELLO, extra_body={"logit_bias": bias})
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "logit_bias"
