"""How many batch lines the worker has at the gateways at once: a window that grows while lines are admitted and
shrinks when the gateways tell lines to yield, as TCP's congestion window does (RFC 5681: slow start, then
congestion avoidance; one decrease per window of lines: refusals of lines sent before the last cut were answers to
the old window, not the new one).

Unlike TCP, which halves because a loss says only "too much", a gateway's refusal comes at once and says how much
is too much: it holds the lines sent before the refused one that are still in flight, and had no room beside them.
So a refusal sets the window to those lines. Halving instead left the gateways' room half empty after every probe
until the window grew back, one line per round trip (a line's whole generation): the batch's share of the idle
capacity fell from 0.48 to 0.07-0.26 in bench_batch (docs/performance.md).

The gateways admit batch lines only into the slots online traffic leaves idle (runtime/serve/gateway.py
`_batch_admit`), and answer the rest at once with 429 `batch_yield` and a Retry-After. A worker holding a fixed number
of lines in flight would either leave a scaled-out deployment's idle slots empty (too few) or keep the gateways busy
refusing the surplus every second (too many: a 4,096-line worker in front of one 8-slot engine sent ~4,000 refused
requests a second). With the window the worker finds what the gateways admit and follows it as replicas come and go,
and `--concurrency` is only the ceiling.
"""

from __future__ import annotations

import asyncio
from collections import deque

INITIAL = 4  # lines in flight before anything is known (RFC 5681's initial window is 2-4 segments)


class SendWindow:
    """`acquire` before sending a line, `release` with what the gateway answered (synchronous: it may run in a
    `finally` of a cancelled task).

    `limit`: lines that may be in flight now (1..ceiling). Admitted lines grow it, by one each while under the
    threshold (slow start: doubling per round trip), then by 1/limit each (one per round trip); a refusal of a line
    sent after the last cut sets the threshold and the limit to the lines sent before it still in flight (at least
    1). Answers that are neither (a gateway
    down, a 5xx, a cancelled send) leave it as it is: they say nothing about the slots. Waiters get room in arrival
    order within an owner, and owners take turns (round-robin): one key's batches of thousands of lines waiting for
    room must not hold another key's 2-line batch behind all of them. `acquire` returns the line's ticket (its place
    in sending order), which `release` takes back.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = float(min(INITIAL, ceiling))
        self.threshold = float(ceiling)
        self.in_use = 0
        self._sent = 0  # tickets given
        self._cut_at = 0  # tickets given at the last cut: refusals of these answer the window before it
        self._in_flight: set[int] = set()  # tickets acquired and not released
        # senders waiting for room, by owner; the owners in turn order (dicts keep insertion order)
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}

    async def acquire(self, owner: str = "") -> int:
        if not self._waiters and self.in_use < int(self.limit):
            self.in_use += 1
            self._sent += 1
            self._in_flight.add(self._sent)
            return self._sent
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(owner, deque()).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # given room just as it was cancelled: pass it on
                self.in_use -= 1
            elif waiter in self._waiters.get(owner, ()):
                self._waiters[owner].remove(waiter)
                if not self._waiters[owner]:
                    del self._waiters[owner]
            self._wake()
            raise
        self._sent += 1
        self._in_flight.add(self._sent)
        return self._sent

    def release(self, ticket: int, admitted: bool | None) -> None:
        """`admitted`: True when the line got its result, False when it was told to yield (429 batch_yield or the
        owner's rate limit), None otherwise."""
        self.in_use -= 1
        self._in_flight.discard(ticket)
        if admitted is True:
            grow = 1.0 if self.limit < self.threshold else 1.0 / self.limit
            self.limit = min(float(self.ceiling), self.limit + grow)
        elif admitted is False and ticket > self._cut_at:
            # what the gateways held when they refused: the lines sent before this one (those sent after it, in the
            # same burst, were most likely refused too and are on their way back)
            held = sum(1 for other in self._in_flight if other < ticket)
            self.threshold = max(1.0, min(self.limit, float(held)))
            self.limit = self.threshold
            self._cut_at = self._sent
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < int(self.limit):
            owner = next(iter(self._waiters))  # the owner whose turn it is
            queue = self._waiters.pop(owner)
            waiter = queue.popleft()
            if queue:
                self._waiters[owner] = queue  # back of the turn order
            if not waiter.done():
                waiter.set_result(None)
                self.in_use += 1
