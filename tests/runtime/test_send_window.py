"""The batch worker's send window (runtime/serve/batch/window.py): it finds what the gateways admit and follows it,
instead of holding a fixed number of lines at them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtime.model_build.stores import open_store
from runtime.serve.batch.window import INITIAL, SendWindow
from tests.runtime.conftest import MODEL, metric, start_gateway, wait_for
from tests.runtime.standin import StandInEngine
from tests.runtime.test_batch_worker import (
    WORKER_TOKEN,
    Worker,
    assert_exactly_one_result_each,
    chat_line,
    state_of,
    write_batch,
)


def test_the_window_doubles_per_round_then_grows_by_one_and_halves_once_per_window_of_refusals() -> None:
    async def run() -> None:
        window = SendWindow(64)
        assert window.limit == INITIAL
        tickets = [await window.acquire() for _ in range(INITIAL)]  # one round trip of admitted lines
        for ticket in tickets:
            window.release(ticket, True)
        assert window.limit == 2 * INITIAL  # slow start: doubled
        # every line of a window refused: it halves once, not once per refusal
        tickets = [await window.acquire() for _ in range(2 * INITIAL)]
        for ticket in tickets:
            window.release(ticket, False)
        assert window.limit == INITIAL and window.threshold == INITIAL
        # past the threshold: about one more per round trip
        for _ in range(INITIAL):
            window.release(await window.acquire(), True)
        assert INITIAL + 0.9 < window.limit < INITIAL + 1.1
        # a line sent after the cut and refused: the next window's answer, so it halves again
        window.release(await window.acquire(), False)
        assert window.limit < INITIAL
        # answers that say nothing about room (a gateway down, a 5xx) leave it
        before = window.limit
        window.release(await window.acquire(), None)
        assert window.limit == before and window.in_use == 0

    asyncio.run(run())


def test_senders_wait_for_room_in_order_and_a_cancelled_one_gives_its_room_on() -> None:
    async def run() -> None:
        window = SendWindow(1)
        held = await window.acquire()
        order: list[str] = []

        async def sender(name: str) -> None:
            await window.acquire()
            order.append(name)

        first, second = asyncio.ensure_future(sender("a")), asyncio.ensure_future(sender("b"))
        await asyncio.sleep(0)
        first.cancel()
        window.release(held, None)  # the room goes to "b": "a" left the queue
        await asyncio.wait_for(second, 1)
        await asyncio.sleep(0)
        assert order == ["b"] and window.in_use == 1
        assert first.cancelled()

    asyncio.run(run())


def test_a_worker_with_a_high_ceiling_finds_the_engines_slots_and_rarely_hears_no(tmp_path: Path) -> None:
    """A worker allowed 500 lines in flight, in front of one engine that runs 4 batch lines at once: the gateway
    answers the lines beyond 4 with batch_yield. The window shrinks to what is admitted, so the gateway refuses far
    fewer lines than the batch has (a fixed 500 in flight would be refused ~500 times a second), and the batch still
    completes with exactly one result per custom_id."""
    token = tmp_path / "token"
    token.write_text(WORKER_TOKEN + "\n")
    engine = StandInEngine(model=MODEL, batch_seconds=0.1)
    gateway = start_gateway(
        tmp_path, [engine.url], "--batch-worker-token-file", str(token), "--max-concurrency", "4",
        "--batch-slots-per-replica", "4", "--batch-headroom", "0", "--batch-ttft-ratio", "0",
    )  # fmt: skip
    root = f"file://{tmp_path / 'batch'}"
    store = open_store(root, "--batch-store")
    lines = [
        {**chat_line(f"w{i:04d}", "x"), "body": {**chat_line("", "x")["body"], "user": "batch"}} for i in range(200)
    ]
    batch_id = write_batch(store, lines)
    worker = Worker(tmp_path, gateway.url, root, token, "--concurrency", "500")
    try:
        wait_for(lambda: state_of(store, batch_id).get("status") == "completed", 60, "the batch to complete")
        scraped = gateway.metrics()
    finally:
        worker.stop()
        gateway.stop()
        engine.stop()
    admitted = metric(scraped, "byoc_gateway_batch_requests_total", decision="admitted") or 0
    yielded = metric(scraped, "byoc_gateway_batch_requests_total", decision="yielded") or 0
    assert admitted == 200
    assert yielded < 100, f"{yielded:.0f} refusals for 200 lines"
    assert_exactly_one_result_each(store, state_of(store, batch_id), [line["custom_id"] for line in lines])
