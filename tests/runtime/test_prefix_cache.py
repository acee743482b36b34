"""The CPU engine's KV block reuse, seen from outside: the same answers with and without it, hit counters that move,
and `POST /kv_cache_events` that always describes what the cache holds (trtllm-serve's shape)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from runtime.serve.prefix_cache import TOKENS_PER_BLOCK, context_block_hashes
from tests.runtime.conftest import ENGINE_MODEL, Server, free_port, http, metric

BUDGET_BLOCKS = 8  # a small KV budget, so that a handful of prompts evict each other


def start(models: dict[str, Path], folder: Path, *extra: str) -> Server:
    port = free_port()
    args = ["engine", "--model-dir", str(models["base"]), "--addon", f"sql={models['sql']}"]
    args += ["--listen", f"127.0.0.1:{port}", "--model-name", ENGINE_MODEL, "--threads", "1", *extra]
    server = Server("engine", args, folder, port)
    server.wait()
    return server


@pytest.fixture(scope="module")
def engines(tiny_models: dict[str, Path], runtime_dir: Path) -> Iterator[tuple[Server, Server]]:
    reuse = start(tiny_models, runtime_dir, "--kv-cache-tokens", str(BUDGET_BLOCKS * TOKENS_PER_BLOCK))
    plain = start(tiny_models, runtime_dir, "--disable-block-reuse")
    yield reuse, plain
    reuse.stop()
    plain.stop()


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(server: Server, prompt: list[int], model: str = ENGINE_MODEL) -> str:
    answer = client(server).completions.create(
        model=model, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].text


def counters(server: Server) -> tuple[float, float]:
    text = http("GET", server.url + "/prometheus/metrics").body.decode()
    return (
        metric(text, "trtllm_kv_cache_reused_blocks_total") or 0.0,
        metric(text, "trtllm_kv_cache_missed_blocks_total") or 0.0,
    )


def events(server: Server) -> list[dict[str, object]]:
    answer = http("POST", server.url + "/kv_cache_events")
    assert answer.status == 200
    found: list[dict[str, object]] = answer.json()
    return found


def tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(10, 400) for _ in range(count)]


def test_greedy_answers_are_the_same_with_and_without_reuse(engines: tuple[Server, Server]) -> None:
    reuse, plain = engines
    rng = random.Random(7)
    system = tokens(rng, 3 * TOKENS_PER_BLOCK)  # a shared "system prompt" of three full blocks
    first, second = system + tokens(rng, 20), system + tokens(rng, 25)
    before = counters(reuse)
    assert greedy(reuse, first) == greedy(plain, first)  # computed in full, then stored
    assert greedy(reuse, second) == greedy(plain, second)  # three blocks reused
    assert greedy(reuse, first) == greedy(plain, first)  # all of its full blocks reused
    reused, missed = (after - was for after, was in zip(counters(reuse), before, strict=True))
    assert reused == 3 + 3
    assert missed == 3
    # blocks are per base model and addon: the same tokens through an addon reuse nothing of the base model's
    assert greedy(reuse, first, "sql") == greedy(plain, first, "sql")
    assert counters(reuse)[0] - before[0] == 6
    # with reuse off the engine reports no events
    assert events(plain) == []


def test_events_describe_what_the_cache_holds(engines: tuple[Server, Server]) -> None:
    reuse, _ = engines
    held: set[int] = set()

    def replay() -> None:
        for event in events(reuse):
            data = event["data"]
            assert isinstance(data, dict) and "event_id" in event
            if data["type"] == "stored":
                parent = data["parent_hash"]
                assert parent is None or parent in held  # a block is stored after the block it extends
                for block in data["blocks"]:
                    assert block["type"] == "stored_block" and len(block["tokens"]) == TOKENS_PER_BLOCK
                    held.add(block["block_hash"])
            elif data["type"] == "removed":
                assert set(data["block_hashes"]) <= held
                held.difference_update(data["block_hashes"])

    replay()  # everything since the engine started
    rng = random.Random(11)
    shared = tokens(rng, 2 * TOKENS_PER_BLOCK)
    prompts = [shared + tokens(rng, 2 * TOKENS_PER_BLOCK + 5) for _ in range(3)] + [tokens(rng, 100) for _ in range(3)]
    for prompt in prompts * 2:  # 6 prompts of 3-4 blocks in a budget of 8: evictions on the way
        hashes = context_block_hashes(prompt)  # TensorRT-LLM's keys of the blocks before the last token
        expected = 0
        for block_hash in hashes:
            if block_hash not in held:
                break
            expected += 1
        reused_before, _ = counters(reuse)
        greedy(reuse, prompt)
        reused_after, _ = counters(reuse)
        # what the events said the cache held is exactly what this request found in it
        assert reused_after - reused_before == expected
        replay()
        assert len(held) <= BUDGET_BLOCKS
        assert set(hashes) <= held  # the prompt's blocks are cached now
