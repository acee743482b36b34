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


def test_the_window_doubles_per_round_then_falls_to_what_the_gateways_held_once_per_window_of_refusals() -> None:
    async def run() -> None:
        window = SendWindow(64)
        assert window.limit == INITIAL
        tickets = [await window.acquire() for _ in range(INITIAL)]  # one round trip of admitted lines
        for ticket in tickets:
            window.release(ticket, True)
        assert window.limit == 2 * INITIAL  # slow start: doubled
        # a burst of 8 lines, the gateways have room for 3: the 4th and every later one is refused at once while
        # the first 3 run. The window falls to the 3 held, once for the whole burst, not once per refusal
        tickets = [await window.acquire() for _ in range(2 * INITIAL)]
        for ticket in tickets[3:]:
            window.release(ticket, False)
        assert window.limit == 3 and window.threshold == 3
        for ticket in tickets[:3]:
            window.release(ticket, True)
        # past the threshold: about one more per round trip (3 + 1/3 + 1/3.3 + 1/3.6, then + 1/3.9)
        assert 3.9 < window.limit < 4
        window.release(await window.acquire(), True)
        assert 4 < window.limit < 4.2
        # a probe: 3 lines run, the 4th sent after the cut is refused: the next window's answer, back to the 3 held
        running = [await window.acquire() for _ in range(3)]
        window.release(await window.acquire(), False)
        assert window.limit == 3
        # answers that say nothing about room (a gateway down, a 5xx) leave it
        window.release(running.pop(), None)
        assert window.limit == 3 and window.in_use == 2
        # nothing held when refused: one line at a time, never none
        for ticket in running:
            window.release(ticket, True)
        for _ in range(4):
            window.release(await window.acquire(), True)  # grows past the threshold...
        window.release(await window.acquire(), False)  # ...then a refusal with nothing else in flight
        assert window.limit == 1 and window.in_use == 0

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


def test_owners_take_turns_for_room_so_a_small_batch_is_not_behind_a_big_one() -> None:
    """Key a's big batch has 100 lines waiting for room when key b's 2-line batch arrives: b's lines get the next
    two rooms that free up in turn with a's, not the 101st and 102nd (a tester's 2-line batch waited 150 s in
    in_progress behind another key's 7,500 lines)."""

    async def run() -> None:
        window = SendWindow(1)
        held = await window.acquire("a")
        order: list[str] = []

        async def sender(owner: str) -> None:
            ticket = await window.acquire(owner)
            order.append(owner)
            await asyncio.sleep(0)
            window.release(ticket, None)

        big = [asyncio.ensure_future(sender("a")) for _ in range(100)]
        await asyncio.sleep(0)
        small = [asyncio.ensure_future(sender("b")) for _ in range(2)]
        await asyncio.sleep(0)
        window.release(held, None)
        await asyncio.wait_for(asyncio.gather(*big, *small), 5)
        assert order[:4] == ["a", "b", "a", "b"] and len(order) == 102

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
