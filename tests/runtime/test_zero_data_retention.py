"""Zero data retention: canary strings sent as prompts and as an API key appear in no log line, no error body and
no metric of the gateway or the engine."""

from __future__ import annotations

import json

import openai
import pytest

from tests.runtime.conftest import LOG_FILES, MODEL, GatewayUnderTest, Server, http

PROMPT_CANARY = "zdr-canary-prompt-7f3a9e21c4"
KEY_CANARY = "sk-zdr-canary-key-55b0c4d2e8a1"


def test_no_prompt_completion_or_key_is_retained(gateway: GatewayUnderTest, engine: Server) -> None:
    client = gateway.client()
    secret = [{"role": "user", "content": f"My account number is {PROMPT_CANARY}, keep it safe."}]
    bodies: list[str] = []
    completions: list[str] = []

    answer = client.chat.completions.create(model=MODEL, messages=secret, max_tokens=16, temperature=0)
    completions.append(answer.choices[0].message.content or "")
    streamed = client.completions.create(
        model="sql", prompt=PROMPT_CANARY, max_tokens=16, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    completions.append("".join(c.choices[0].text for c in streamed if c.choices))

    failing_calls = [
        # the gateway's own checks
        lambda: client.chat.completions.create(model=MODEL, messages=secret, extra_body={"temperature": PROMPT_CANARY}),
        lambda: client.chat.completions.create(model=MODEL, messages=secret, extra_body={"stop": [PROMPT_CANARY, 3]}),
        lambda: client.chat.completions.create(model=PROMPT_CANARY, messages=secret),
        # the engine's check (prompt + max_tokens over the window), relayed by the gateway
        lambda: client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": (PROMPT_CANARY + " ") * 200}], max_tokens=1000
        ),
        # a key nobody issued
        lambda: gateway.client(KEY_CANARY).chat.completions.create(model=MODEL, messages=secret),
        gateway.client(KEY_CANARY).models.list,
    ]
    for call in failing_calls:
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        bodies.append(caught.value.response.text)
    # straight to the engine too: its errors must not quote the request either
    engine_error = http(
        "POST",
        engine.url + "/v1/completions",
        json.dumps({"model": "tiny-engine", "prompt": PROMPT_CANARY, "max_tokens": 5000}).encode(),
        {"Content-Type": "application/json"},
    )
    assert engine_error.status == 400
    bodies.append(engine_error.body.decode())

    scraped = [
        gateway.server.metrics(),
        http("GET", gateway.metrics_url).body.decode(),
        http("GET", engine.url + "/prometheus/metrics").body.decode(),
        http("GET", engine.url + "/metrics").body.decode(),
    ]
    logs = {path.name: path.read_text(errors="replace") for path in LOG_FILES if path.exists()}
    assert any("access key=ci" in text for text in logs.values())  # the access lines are there, and carry names

    canaries = [PROMPT_CANARY, KEY_CANARY, KEY_CANARY[3:]] + [c for c in completions if len(c.strip()) >= 12]
    assert len(canaries) >= 4, "the completions were too short to search for"
    for canary in canaries:
        for name, text in logs.items():
            assert canary not in text, f"{canary!r} in {name}"
        for body in bodies:
            assert canary not in body, f"{canary!r} in an error body: {body}"
        for text in scraped:
            assert canary not in text, f"{canary!r} in metrics"
