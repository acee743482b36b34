"""Limits: per-key requests per minute and concurrent requests, and one bounded admission queue for the gateway.

All in memory and O(1) per request. Nothing here ever waits without a deadline: a full queue answers 429 at once,
a queued request that does not get a slot within the queue timeout answers 429 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque


class RequestsPerMinute:
    """A token bucket per key: up to `rpm` requests in a burst, refilled at rpm/60 per second."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rpm: int) -> float:
        """0 if the request may go; else the seconds until it could (for Retry-After)."""
        if rpm <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - last) * rpm / 60.0)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) * 60.0 / rpm


class KeyConcurrency:
    def __init__(self) -> None:
        self._active: dict[str, int] = {}

    def try_enter(self, key: str, limit: int | None) -> bool:
        count = self._active.get(key, 0)
        if limit and count >= limit:
            return False
        self._active[key] = count + 1
        return True

    def leave(self, key: str) -> None:
        count = self._active.get(key, 1) - 1
        if count:
            self._active[key] = count
        else:
            self._active.pop(key, None)


class Admission:
    """At most `max_concurrency` requests hold a slot; up to `max_queue` more wait for one, first come first served."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.active = 0
        self.closed = False  # the gateway drains: no request waits for a slot any more
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout: float) -> str | None:
        """None once a slot is held; else why not: "queue_full", "queue_timeout" or "closed"."""
        if self.closed:
            return "closed"
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            return None
        if len(self._waiters) >= self.max_queue:
            return "queue_full"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        if waiter.done() and not waiter.cancelled():
            return None  # release() handed its slot over
        self._abandon(waiter)
        return "closed" if self.closed else "queue_timeout"

    def close(self) -> None:
        """Every request waiting for a slot is told "closed" at once, and so is every later one."""
        self.closed = True
        for waiter in self._waiters:
            waiter.cancel()

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            self.release()  # we were handed a slot but will not use it: pass it on
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next in line
                return
        self.active -= 1


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
