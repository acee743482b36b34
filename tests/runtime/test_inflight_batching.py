"""The CPU engine steps every request past its prompt in one forward pass per iteration, as TensorRT-LLM's in-flight
batching does, and a request's answer does not depend on what else is in the batch.

The Generator is driven directly (no HTTP): the tiny Llama and two LoRA adapters from tests/tiny_model.py, greedy
sampling, so that an answer is a fixed function of its prompt and adapter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.serve.generation import BASE_ADAPTER, Failed, Finished, Generator, Sampling, Sequence

PROMPTS = [  # different lengths: the batch's cache is left-padded to the longest
    "The quick brown fox",
    "Customer managed keys encrypt every store at rest. A private endpoint keeps",
    "Hello",
    "One two three four five six seven eight nine ten. Scale to zero when idle, and",
]


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generator]:
    from tests.tiny_model import make_lora_adapter, make_tiny_llama

    folder = tmp_path_factory.mktemp("inflight")
    base = make_tiny_llama(folder / "base")
    addons = {"sql": make_lora_adapter(base, folder / "sql", seed=1)}
    engine = Generator(
        base, addons, "tiny", max_batch_size=8, kv_cache_tokens=4096, threads=1, enable_block_reuse=False
    )
    yield engine
    engine.stop()


async def _answer(engine: Generator, prompt: str, adapter: str = BASE_ADAPTER, tokens: int = 24) -> list[int]:
    ids = engine.tokenizer(prompt)["input_ids"]
    sequence = Sequence(
        ids,
        Sampling(max_tokens=tokens, temperature=0.0, ignore_eos=True),
        adapter,
        asyncio.get_running_loop(),
        asyncio.Queue(),
    )
    engine.submit(sequence)
    while True:
        event = await sequence.events.get()
        if isinstance(event, Finished):
            return sequence.generated
        assert not isinstance(event, Failed), event.message


def _together(engine: Generator, requests: list[tuple[str, str]]) -> list[list[int]]:
    async def run() -> list[list[int]]:
        return list(await asyncio.gather(*(_answer(engine, p, a) for p, a in requests)))

    return asyncio.run(run())


def test_a_batched_answer_is_the_answer_the_request_gets_alone(generator: Generator) -> None:
    alone = [_together(generator, [(p, BASE_ADAPTER)])[0] for p in PROMPTS]
    batched = _together(generator, [(p, BASE_ADAPTER) for p in PROMPTS])
    assert batched == alone
    assert all(len(a) == 24 for a in alone)


def test_sequences_with_different_adapters_share_one_pass_and_keep_their_own_answers(generator: Generator) -> None:
    requests = [(p, "sql" if i % 2 else BASE_ADAPTER) for i, p in enumerate(PROMPTS)]
    alone = [_together(generator, [r])[0] for r in requests]
    assert alone[1] != _together(generator, [(PROMPTS[1], BASE_ADAPTER)])[0]  # the adapter changes the answer
    assert _together(generator, requests) == alone


def test_running_requests_take_one_forward_pass_per_token_between_them(generator: Generator) -> None:
    """8 requests of 24 tokens: 8 prompt passes, then 23 passes of 8 rows, not 8 x 23 passes of one.

    Counted on the model's own embedding layer (each forward pass embeds its input ids once).
    """
    shapes: list[tuple[int, ...]] = []
    hook = generator.model.get_input_embeddings().register_forward_hook(
        lambda _module, args, _out: shapes.append(tuple(args[0].shape))
    )
    try:
        answers = _together(generator, [(PROMPTS[i % len(PROMPTS)], BASE_ADAPTER) for i in range(8)])
    finally:
        hook.remove()
    assert all(len(a) == 24 for a in answers)
    assert sum(rows for rows, _ in shapes) == 8 + 8 * 23  # each prompt once, then each later token once
    # the batch moves together: 8 prompt passes, 23 passes of 8 rows, a few more while prompts arrive
    assert len(shapes) <= 8 + 23 + 8, shapes
    assert max(rows for rows, _ in shapes) == 8


def test_requests_that_keep_arriving_do_not_starve_the_ones_already_generating(generator: Generator) -> None:
    """A new request arrives during every forward pass (a stream of short requests faster than the engine computes
    prompts): each gets its prompt computed in the next iteration, but the decode pass is put off at most once in a
    row, so a long answer already generating gets a token at least every second iteration (trtllm-serve's: every
    iteration, its prompts and decodes share one pass), not none until the stream stops."""
    stream: list[Sequence] = []
    passes: list[tuple[int, int]] = []  # (the long request's tokens so far, the engine's iteration) at each pass

    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        ids = generator.tokenizer(PROMPTS[1])["input_ids"]
        long = Sequence(ids, Sampling(max_tokens=40, temperature=0.0, ignore_eos=True), BASE_ADAPTER, loop,
                        asyncio.Queue())  # fmt: skip

        def arrive(_module: object, _args: object, _out: object) -> None:
            passes.append((len(long.generated), generator._iteration))
            if len(passes) <= 60:  # one short request per pass, while the long one generates
                short = Sequence(generator.tokenizer(PROMPTS[0])["input_ids"], Sampling(max_tokens=1), BASE_ADAPTER,
                                 loop, asyncio.Queue())  # fmt: skip
                stream.append(short)
                generator.submit(short)

        generator.submit(long)
        hook = generator.model.get_input_embeddings().register_forward_hook(arrive)
        try:
            while True:
                if isinstance(await long.events.get(), Finished):
                    return long.generated
        finally:
            hook.remove()

    answer = asyncio.run(run())
    assert len(answer) == 40
    assert len(stream) == 60
    # during the stream the long answer kept coming: a token at least every second iteration
    (tokens_at_start, first), (tokens_at_end, last) = passes[0], passes[60]
    assert last - first >= 10, passes  # the stream lasted many iterations
    assert tokens_at_end - tokens_at_start >= (last - first) // 2, passes[:61]


def test_iteration_stats_count_the_requests_each_pass_computed(generator: Generator) -> None:
    """trtllm-serve's /metrics iteration stats: numContextRequests are the prompts an iteration computed and
    numGenRequests the requests it decoded a token for, so over a run they add up to one context request per request
    and one generation request per token after the first; an iteration that computes prompts only (the decode pass
    put off for the arrivals) scheduled no generation request, though others are generating."""
    # the generator is shared by this module's tests: the last iteration of the one before records its stats just
    # after its answers went out, so wait until nothing more comes before counting
    while generator.drain_stats() or generator._active or generator._waiting:
        time.sleep(0.05)
    answers = _together(generator, [(PROMPTS[i % len(PROMPTS)], BASE_ADAPTER) for i in range(8)])
    assert all(len(a) == 24 for a in answers)
    # the last iteration's stats are recorded just after its answers went out
    stats: list[dict[str, object]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(s["numCompletedRequests"] for s in stats) < 8:  # type: ignore[misc]
        stats += generator.drain_stats()
        time.sleep(0.01)
    batching: list[dict[str, int]] = [s["inflightBatchingStats"] for s in stats]  # type: ignore[misc]
    assert sum(b["numContextRequests"] for b in batching) == 8
    assert sum(b["numGenRequests"] for b in batching) == 8 * 23
    for b in batching:
        assert max(b["numContextRequests"], b["numGenRequests"]) <= b["numScheduledRequests"] <= 8, b
    prompts_only = [b for b in batching if b["numContextRequests"] and not b["numGenRequests"]]
    assert prompts_only and all(b["numScheduledRequests"] == b["numContextRequests"] for b in prompts_only)


def test_a_long_sequence_does_not_make_short_ones_beside_it_pay_for_its_length(generator: Generator) -> None:
    """A batch's cache is left-padded to its longest sequence, so one sequence of ~1,900 tokens in the pass of seven
    short ones made each of the eight cost 1,900 tokens of attention and copying (3.4x slower than the long one and
    the seven computed apart, on this model). The short ones now share a pass and the long one takes its own; every
    answer is still the one it gets alone."""
    long_prompt = generator.tokenizer("word " * 1000)["input_ids"][:1900]
    requests = [generator.tokenizer.decode(long_prompt)] + [PROMPTS[1 + 2 * (i % 2)] for i in range(7)]
    alone = [_together(generator, [(p, BASE_ADAPTER)])[0] for p in requests]
    shapes: list[tuple[int, ...]] = []
    hook = generator.model.get_input_embeddings().register_forward_hook(
        lambda _module, args, _out: shapes.append(tuple(args[0].shape))
    )
    try:
        batched = _together(generator, [(p, BASE_ADAPTER) for p in requests])
    finally:
        hook.remove()
    assert batched == alone
    decode_rows = [rows for rows, width in shapes if width == 1]
    assert 7 in decode_rows, decode_rows  # the short ones still decode together
    assert 8 not in decode_rows, decode_rows  # never padded to the long one


def test_running_requests_never_outgrow_the_kv_budget(tmp_path_factory: pytest.TempPathFactory) -> None:
    """8 blocks of KV (256 tokens) and 8 requests that each grow to ~110 tokens (4 blocks): as trtllm-serve's
    GUARANTEED_NO_EVICT scheduler does, a request is let in only when the budget holds it and the running ones to
    their last token, so two run at once and the rest wait in the queue; the blocks in use never exceed the budget
    (they reached 32 of 8 when only the prompt was counted at admission)."""
    from tests.tiny_model import make_tiny_llama

    base = make_tiny_llama(tmp_path_factory.mktemp("kv") / "base")
    engine = Generator(base, {}, "tiny", max_batch_size=8, kv_cache_tokens=256, threads=1, enable_block_reuse=False)
    try:

        async def run() -> list[list[int]]:
            return list(await asyncio.gather(*(_answer(engine, p, tokens=100) for p in PROMPTS * 2)))

        answers = asyncio.run(run())
        stats = engine.drain_stats()
    finally:
        engine.stop()
    assert all(len(a) == 100 for a in answers)
    kv = [s["kvCacheStats"] for s in stats]
    assert max(k["usedNumBlocks"] for k in kv) <= 8 and min(k["freeNumBlocks"] for k in kv) >= 0
    assert max(s["numActiveRequests"] for s in stats) == 2
    assert max(s["numQueuedRequests"] for s in stats) >= 5


def test_stop_returns_once_the_generation_thread_has_ended(tmp_path: Path) -> None:
    """An engine shutting down (SIGTERM) stops its generator while requests run: stop() returns only once the pass
    being computed has ended and the thread is gone, so nothing computes on the model after it."""
    from tests.tiny_model import make_tiny_llama

    engine = Generator(
        make_tiny_llama(tmp_path / "base"), {}, "tiny", max_batch_size=8, kv_cache_tokens=4096, threads=1
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        sequences = [
            Sequence(
                engine.tokenizer(p)["input_ids"],
                Sampling(max_tokens=400, temperature=0.0, ignore_eos=True),
                BASE_ADAPTER,
                loop,
                asyncio.Queue(),
            )
            for p in PROMPTS
        ]
        for sequence in sequences:
            engine.submit(sequence)
        while not any(s.generated for s in sequences):
            await asyncio.sleep(0.01)
        engine.stop()
        assert not engine._thread.is_alive()
        computed = [len(s.generated) for s in sequences]
        await asyncio.sleep(0.2)
        assert [len(s.generated) for s in sequences] == computed

    asyncio.run(run())
