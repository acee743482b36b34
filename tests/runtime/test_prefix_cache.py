"""The CPU engine's KV block reuse, seen from outside: the same answers with and without it, hit counters that move,
and `POST /kv_cache_events` that always describes what the cache holds (trtllm-serve's shape)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from runtime.serve.prefix_cache import TOKENS_PER_BLOCK, block_hash, context_block_hashes
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
    # all of its full blocks reused, and its last 19 prompt tokens from the partial block its first answer stored
    # (prompt and answer less the last token): the KV of a partly matched block gives the same answer
    assert greedy(reuse, first) == greedy(plain, first)
    reused, missed = (after - was for after, was in zip(counters(reuse), before, strict=True))
    assert reused == 3 + 3 + 1
    assert missed == 3
    # blocks are per base model and addon: the same tokens through an addon reuse nothing of the base model's
    assert greedy(reuse, first, "sql") == greedy(plain, first, "sql")
    assert counters(reuse)[0] - before[0] == 7
    # with reuse off the engine reports no events
    assert events(plain) == []


def test_events_describe_what_the_cache_holds(engines: tuple[Server, Server]) -> None:
    reuse, _ = engines
    held: dict[int, tuple[int | None, list[int]]] = {}  # block key -> (parent key, token ids), as the events say

    def replay() -> None:
        for event in events(reuse):
            data = event["data"]
            assert isinstance(data, dict) and "event_id" in event
            if data["type"] == "stored":
                parent = data["parent_hash"]
                assert parent is None or parent in held  # a block is stored after the block it extends
                blocks = data["blocks"]
                for i, block in enumerate(blocks):
                    ids = [t["token_id"] for t in block["tokens"]]
                    # full blocks, but for a request's last one when it ends (storeBlocksForReuse: partial)
                    assert block["type"] == "stored_block" and 0 < len(ids) <= TOKENS_PER_BLOCK
                    assert len(ids) == TOKENS_PER_BLOCK or i == len(blocks) - 1
                    held[block["block_hash"]] = (parent, ids)
                    parent = block["block_hash"]
            elif data["type"] == "removed":
                assert set(data["block_hashes"]) <= set(held)
                for gone in data["block_hashes"]:
                    del held[gone]

    def partly_held(parent: int | None, wanted: list[int]) -> bool:
        """A held block after `parent` whose first tokens are the prompt's next ones (trtllm's partial reuse)."""
        return any(p == parent and ids[:1] == wanted[:1] for p, ids in held.values()) if wanted else False

    replay()  # everything since the engine started
    rng = random.Random(11)
    shared = tokens(rng, 2 * TOKENS_PER_BLOCK)
    prompts = [shared + tokens(rng, 2 * TOKENS_PER_BLOCK + 5) for _ in range(3)] + [tokens(rng, 100) for _ in range(3)]
    for prompt in prompts * 2:  # 6 prompts of 3-4 blocks in a budget of 8: evictions on the way
        hashes = context_block_hashes(prompt)  # TensorRT-LLM's keys of the blocks before the last token
        expected = 0
        for key in hashes:
            if key not in held:
                break
            expected += 1
        start = expected * TOKENS_PER_BLOCK
        wanted = prompt[start : min(start + TOKENS_PER_BLOCK, len(prompt) - 1)]
        expected += partly_held(hashes[expected - 1] if expected else None, wanted)
        reused_before, _ = counters(reuse)
        greedy(reuse, prompt)
        reused_after, _ = counters(reuse)
        # what the events said the cache held is exactly what this request found in it
        assert reused_after - reused_before == expected
        replay()
        assert len(held) <= BUDGET_BLOCKS
        assert set(hashes) <= set(held)  # the prompt's blocks are cached now


def test_a_next_turn_reuses_the_previous_answer_from_its_stored_blocks(engines: tuple[Server, Server]) -> None:
    """As trtllm's storeBlocksForReuse: when a request ends, its prompt and answer less the last token are stored,
    the last block partial, and announced with TensorRT-LLM's V1 keys; a next turn that holds the answer reuses it."""
    reuse, plain = engines
    rng = random.Random(23)
    first = tokens(rng, 70)  # 2 full blocks of prompt[:-1] at the prefill
    events(reuse)  # drained: what follows is this request's
    answer = client(reuse).completions.create(
        model=ENGINE_MODEL, prompt=first, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 40
    stored = [e["data"] for e in events(reuse) if e["data"]["type"] == "stored"]  # type: ignore[index]
    blocks = [block for data in stored for block in data["blocks"]]  # type: ignore[index]
    held = [[t["token_id"] for t in block["tokens"]] for block in blocks]
    # prefill: blocks 0-1; end: block 2 (prompt 64-69, answer 0-25) and the partial block 3 (answer 26-38)
    assert [len(ids) for ids in held] == [32, 32, 32, 13]
    sequence = [token for ids in held for token in ids]  # prompt + answer less its last token
    assert sequence[:70] == first
    # each key is TensorRT-LLM's V1 key of its tokens and its parent's key, computed here one block at a time
    parent = 0
    for block, ids in zip(blocks, held, strict=True):
        parent = block_hash(ids, parent)
        assert block["block_hash"] == parent
    assert stored[1]["parent_hash"] == blocks[1]["block_hash"]  # type: ignore[index]
    # the next turn: the conversation so far and a new question; its prompt less the last token is 128 tokens
    second = sequence + tokens(rng, 20)
    turn = client(reuse).completions.create(
        model=ENGINE_MODEL, prompt=second, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    assert turn.usage is not None and turn.usage.prompt_tokens_details is not None
    # three full blocks and the 13 tokens of the partial one: the whole previous answer as it was stored
    assert turn.usage.prompt_tokens_details.cached_tokens == len(sequence) == 109
    assert turn.choices[0].text == greedy_text(plain, second, 8)


def greedy_text(server: Server, prompt: list[int], max_tokens: int) -> str:
    answer = client(server).completions.create(
        model=ENGINE_MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].text
