"""KV cache block keys as TensorRT-LLM computes them, in the CPU engine's events and in the gateway's precise routing.

The expected keys are hardcoded: they were computed with TensorRT-LLM's own `hash_v1_block_key`
(tensorrt_llm/runtime/kv_cache_hash.py, NVIDIA/TensorRT-LLM commit 991de58c52acf039626cabc30e7c4f4106d222fd), chained
as its KV-aware router chains them (`BlockHashMixin._compute_block_hashes` in tensorrt_llm/serve/router.py: the
prompt less its last token, blocks of 32, the last one partial, each block's parent the block before), run apart from
byoc. `cpp_block_hash` below is a second, independent transcription of C++ `BlockKeyHasher::hash`
(cpp/tensorrt_llm/batch_manager/blockKey.cpp) with its integer widths spelled out, for keys not listed here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.serve.config import lora_int_id
from runtime.serve.metrics import GatewayMetrics
from runtime.serve.prefix_cache import block_hash, block_hashes, context_block_hashes, prompt_block_hashes
from runtime.serve.routing import PromptTokenizer, Router
from runtime.serve.upstreams import UpstreamPool
from tests.runtime.conftest import ENGINE_MODEL, MODEL, Server, http, start_engine, start_gateway

ONE_TO_33 = list(range(1, 34))
ONE_TO_64 = list(range(1, 65))
SQL_TASK_ID = 262368  # lora_int_id("sql"): what the gateway sends as lora_request.lora_int_id

# tokens -> keys from upstream's hash_v1_block_key (see the module docstring)
BASE_FIRST = 17831341519058834317  # [1..32], no parent, base model
BASE_33 = [BASE_FIRST, 5728776716359734261]  # 33 tokens: [1..32], then [33] (a partial block)
BASE_64 = [BASE_FIRST, 11197498242826443880]  # 64 tokens: [1..32], then [33..64]
TASK7_33 = [15744835200463573885, 2815820044609255954]  # LoRA task id 7
TASK7_64 = [15744835200463573885, 12705345539903705548]
SQL_64 = [10239143300023271884, 18383775503487470014]  # LoRA task id 262368

MASK32, MASK64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def cpp_block_hash(tokens: list[int], parent_hash: int, lora_task_id: int | None) -> int:
    """BlockKeyHasher::hash as the C++ reads: size_t seed, uint32_t token mix (its `+ 0x9e3779b9` wraps in 32 bits),
    uint64_t id mix; no salt, no extra ids, no multimodal keys."""

    def hash32_mix(a: int, seed: int) -> int:
        a = a & MASK32  # static_cast<uint32_t>(tokenId)
        a = (((a >> 16) ^ a) * 0x45D9F3B) & MASK32
        a = (((a >> 16) ^ a) * 0x45D9F3B) & MASK32
        a = ((a >> 16) ^ a) & MASK32
        a = (a + 0x9E3779B9) & MASK32
        return seed ^ ((a + ((seed << 6) & MASK64) + (seed >> 2)) & MASK64)

    def hash64_mix(c: int, seed: int) -> int:
        c = c & MASK64
        c = ((c ^ (c >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        c = ((c ^ (c >> 27)) * 0x94D049BB133111EB) & MASK64
        c = c ^ (c >> 31)
        return seed ^ ((c + 0x9E3779B9 + ((seed << 6) & MASK64) + (seed >> 2)) & MASK64)

    seed = len(tokens) ^ ((parent_hash * 0xBF58476D1CE4E5B9) & MASK64)
    for token in tokens:
        seed = hash32_mix(token, seed)
    if lora_task_id is not None:
        seed = hash64_mix(lora_task_id, seed)
    return seed


def test_block_keys_are_tensorrt_llm_v1_keys() -> None:
    assert lora_int_id("sql") == SQL_TASK_ID
    assert block_hash(ONE_TO_64[:32]) == BASE_FIRST
    # across a block boundary: a partial last block is keyed only where the caller allows it (the router does)
    assert block_hashes(ONE_TO_33) == BASE_33[:1]
    assert block_hashes(ONE_TO_33, allow_partial=True) == BASE_33
    assert block_hashes(ONE_TO_64) == BASE_64
    assert block_hashes(ONE_TO_33, 7, allow_partial=True) == TASK7_33
    assert block_hashes(ONE_TO_64, 7) == TASK7_64
    assert block_hashes(ONE_TO_64, SQL_TASK_ID) == SQL_64
    # the chain: each block is keyed with its parent's key, the first with 0
    assert block_hash(ONE_TO_64[32:], BASE_FIRST) == BASE_64[1]
    assert block_hash(ONE_TO_64[32:], 0) != BASE_64[1]
    assert block_hash(ONE_TO_64[32:], TASK7_64[0], 7) == TASK7_64[1]
    # a prompt's keys leave its last token out (its KV is computed with the first output token)
    assert prompt_block_hashes([*ONE_TO_64, 99]) == BASE_64
    assert prompt_block_hashes([*ONE_TO_33, 99], 7) == TASK7_33
    assert context_block_hashes([*ONE_TO_33, 99], 7) == TASK7_33[:1]  # the engine stores full blocks only


def test_block_keys_match_the_cpp_algorithm_on_random_tokens() -> None:
    rng = random.Random(5)
    for _ in range(200):
        tokens = [rng.randrange(0, 2**32) for _ in range(rng.randrange(0, 100))]  # ids above 2^31 wrap as in C++
        task = rng.choice([None, rng.randrange(1, 2**64)])
        expected: list[int] = []
        for start in range(0, len(tokens), 32):
            expected.append(cpp_block_hash(tokens[start : start + 32], expected[-1] if expected else 0, task))
        assert block_hashes(tokens, task, allow_partial=True) == expected


# -- the CPU engine's events, and the gateway's keys for the same requests ----------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path], runtime_dir: Path) -> Iterator[Server]:
    server = start_engine(tiny_models, runtime_dir)
    yield server
    server.stop()


def drain(server: Server) -> list[dict[str, object]]:
    answer = http("POST", server.url + "/kv_cache_events")
    assert answer.status == 200
    found: list[dict[str, object]] = answer.json()
    return found


def stored_blocks(events: list[dict[str, object]]) -> list[dict[str, object]]:
    blocks: list[dict[str, object]] = []
    for event in events:
        data = event["data"]
        assert isinstance(data, dict)
        if data["type"] == "stored":
            blocks += data["blocks"]
    return blocks


def complete(server: Server, body: dict[str, object]) -> dict[str, Any]:
    answer = http("POST", server.url + "/v1/completions", json_body(body), {"Content-Type": "application/json"})
    assert answer.status == 200, answer.body
    found: dict[str, Any] = answer.json()
    return found


def json_body(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


def test_engine_events_carry_tensorrt_llm_keys_and_token_ids(engine: Server, tiny_models: dict[str, Path]) -> None:
    drain(engine)
    prompt = [*ONE_TO_64, 7]  # 65 tokens: two full blocks before the last token
    request = {"prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = complete(engine, {**request, "model": ENGINE_MODEL})
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    events = drain(engine)
    assert events and all(set(e) == {"event_id", "data", "window_size"} for e in events)  # no attention DP here
    assert all(isinstance(e["window_size"], int) and e["window_size"] > 0 for e in events)
    stored = [e["data"] for e in events if isinstance(e["data"], dict) and e["data"]["type"] == "stored"]
    # after the prefill, the prompt's full blocks; when the request ends, prompt and answer less the last token: here
    # the partial third block, the prompt's last token and the first generated one (trtllm's storeBlocksForReuse)
    assert len(stored) == 2 and all(set(data) == {"type", "parent_hash", "blocks"} for data in stored)
    assert stored[0]["parent_hash"] is None  # the first block extends nothing
    assert stored[1]["parent_hash"] == BASE_64[1]
    blocks = stored_blocks(events)
    assert [b["block_hash"] for b in blocks[:2]] == BASE_64
    (partial,) = stored[1]["blocks"]
    ids = [t["token_id"] for t in partial["tokens"]]
    assert len(ids) == 2 and ids[0] == 7 and partial["block_hash"] == block_hash(ids, BASE_64[1])
    blocks = blocks[:2]
    for block, tokens in zip(blocks, (ONE_TO_64[:32], ONE_TO_64[32:]), strict=True):
        assert set(block) == {"type", "block_hash", "tokens", "cache_level", "priority"}  # lora_id: not serialized
        assert block["type"] == "stored_block" and block["cache_level"] == 0 and block["priority"] == 35
        assert block["tokens"] == [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in tokens]

    # an addon's blocks are keyed with the LoRA task id the request carries (trtllm's lora_request.lora_int_id) ...
    lora = {"lora_name": "sql", "lora_int_id": 7, "lora_path": str(tiny_models["sql"])}
    complete(engine, {**request, "model": ENGINE_MODEL, "lora_request": lora})
    assert [b["block_hash"] for b in stored_blocks(drain(engine))][:2] == TASK7_64
    # ... or, asked for by name, with byoc's id for that name (the one the gateway sends)
    complete(engine, {**request, "model": "sql"})
    assert [b["block_hash"] for b in stored_blocks(drain(engine))][:2] == SQL_64
    # the same prompt again: its two blocks are reused, and the usage says so (trtllm's cached_tokens)
    again = complete(engine, {**request, "model": ENGINE_MODEL})
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": 64} and again["usage"]["prompt_tokens"] == 65
    assert stored_blocks(drain(engine)) == []  # the same greedy answer: its partial block is held already
    # a later block of a cached prefix is stored with its parent's key
    complete(engine, {**request, "prompt": [*ONE_TO_64, *range(100, 132), 7], "model": ENGINE_MODEL})
    event, _end = [e["data"] for e in drain(engine) if isinstance(e["data"], dict) and e["data"]["type"] == "stored"]
    assert event["parent_hash"] == BASE_64[1]
    assert [b["block_hash"] for b in event["blocks"]] == [block_hash(list(range(100, 132)), BASE_64[1])]


def test_gateway_keys_a_prompt_as_the_engine_reports_it(
    engine: Server, tiny_models: dict[str, Path], runtime_dir: Path
) -> None:
    """The same chat request through the gateway (base model and addon): the engine's stored blocks are the full
    blocks of the keys the gateway's precise routing computes; the gateway's last key may be a partial block, which
    TensorRT-LLM's router keys too and the engine stores only when the request ends, with the answer's tokens in it."""
    # least_outstanding: a precise gateway would drain the engine's events before the test reads them
    gateway = start_gateway(runtime_dir, [engine.url], "--addon", "sql=hf://byoc-examples/sql-lora")
    router = Router("precise", UpstreamPool((), 1.0, GatewayMetrics(2.0)), PromptTokenizer(tiny_models["base"]))
    try:
        system = " ".join(f"rule {i} of the house style applies to every answer" for i in range(12))
        for model, addon in ((MODEL, None), ("sql", "sql")):
            body = {
                "model": model,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"hello from {model}"}],
                "max_tokens": 2,
                "temperature": 0,
            }
            key = router.key(True, body, addon)
            assert key is not None and len(key.blocks) >= 3
            drain(engine)
            answer = http(
                "POST", gateway.url + "/v1/chat/completions", json_body(body), {"Content-Type": "application/json"}
            )
            assert answer.status == 200, answer.body
            prefill = drain(engine)[:1]  # the prefill's event; the request's end stores the answer's blocks after it
            stored = [b["block_hash"] for b in stored_blocks(prefill)]
            assert len(stored) >= 2
            assert list(key.blocks[: len(stored)]) == stored
            assert len(key.blocks) - len(stored) <= 1  # at most the partial last block
    finally:
        gateway.stop()


def test_unloading_an_addon_removes_its_blocks_and_only_its(engine: Server, tiny_models: dict[str, Path]) -> None:
    headers = {"Content-Type": "application/json"}
    load = {"lora_name": "legal", "lora_path": str(tiny_models["support"])}
    assert http("POST", engine.url + "/v1/load_lora_adapter", json_body(load), headers).status == 200
    prompt = [*range(200, 264), 7]
    complete(engine, {"prompt": prompt, "max_tokens": 2, "temperature": 0, "model": ENGINE_MODEL})
    complete(engine, {"prompt": prompt, "max_tokens": 2, "temperature": 0, "model": "legal"})
    drain(engine)
    legal = block_hashes(prompt[:-1], lora_int_id("legal"))
    unload = {"lora_name": "legal"}
    assert http("POST", engine.url + "/v1/unload_lora_adapter", json_body(unload), headers).status == 200
    # the generation thread unloads it between iterations: a request makes sure one has run
    complete(engine, {"prompt": [1, 2, 3], "max_tokens": 1, "temperature": 0, "model": ENGINE_MODEL})
    removed = [
        block
        for event in drain(engine)
        if isinstance(event["data"], dict) and event["data"]["type"] == "removed"
        for block in event["data"]["block_hashes"]
    ]
    # its prompt blocks and the partial block its answer ended in; the base model's blocks of the same tokens stay
    assert set(legal) <= set(removed) and len(removed) == len(legal) + 1
    assert not set(block_hashes(prompt[:-1])) & set(removed)
