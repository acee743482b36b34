"""Limits: per-key requests per minute, tokens per minute, concurrent requests and token budgets, and one bounded
admission queue for the gateway.

`LocalLimiter` keeps the per-key limits in this process's memory, O(1) per request: the gateway without `--store`,
and each replica's share of the limits while the store is unreachable (runtime/serve/store.py keeps them across
replicas otherwise). Nothing here ever waits without a deadline: a full queue answers 429 at once, a queued request
that does not get a slot within the queue timeout answers 429 too.

Tokens per minute are charged in two steps, as Envoy AI Gateway and LiteLLM do: a request is admitted while the key's
bucket holds its prompt estimate (charged at once), and the real usage (prompt + completion) settles the difference
once the answer ends; a bucket can go into debt, and the key waits until it has paid it back. The completion's length
is not known before it is generated, and charging `max_tokens` up front would refuse most keys long before their limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class KeyLimits:
    """One key's limits as the limiter applies them (0: none)."""

    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    budget_tokens: int = 0
    budget_period: str = "month"  # "day" or "month", UTC

    def share(self, replicas: int, budget_used: int) -> KeyLimits:
        """This replica's part while the store is unreachable: each limit divided by the replica count (a limit
        set stays at least 1), the budget's remainder (from `budget_used`, the last count the store gave) likewise."""
        if replicas <= 1 and not self.budget_tokens:
            return self

        def part(limit: int) -> int:
            return max(1, limit // replicas) if limit else 0

        budget = max(1, (self.budget_tokens - budget_used) // max(1, replicas)) if self.budget_tokens else 0
        return KeyLimits(part(self.rpm), part(self.tpm), part(self.max_concurrency), budget, self.budget_period)


@dataclass(frozen=True)
class BudgetPeriod:
    """The UTC calendar period a budget counts in: its id (`2026-12-06` or `2026-12`) and when it ends (epoch s)."""

    id: str
    ends: int
    starts: int = 0

    @classmethod
    def of(cls, period: str, now: float | None = None) -> BudgetPeriod:
        moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
        if period == "day":
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return cls(
                start.strftime("%Y-%m-%d"), int((start + dt.timedelta(days=1)).timestamp()), int(start.timestamp())
            )
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + dt.timedelta(days=32)).replace(day=1)
        return cls(start.strftime("%Y-%m"), int(following.timestamp()), int(start.timestamp()))

    @classmethod
    def current(cls, period: str) -> BudgetPeriod:
        """The period now, computed once per period (a datetime per request would be a tenth of the limiter's cost)."""
        now = time.time()
        found = _CURRENT.get(period)
        if found is None or not found.starts <= now < found.ends:
            found = _CURRENT[period] = cls.of(period, now)
        return found

    @property
    def reset_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.ends, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_CURRENT: dict[str, BudgetPeriod] = {}


@dataclass
class Ticket:
    """An admitted request: what it holds (a concurrency slot), what it was charged (its prompt estimate), where
    (the store, or this replica's memory)."""

    key: str
    limits: KeyLimits
    estimate: int
    slot: str | None = None  # the concurrency slot's id, when the key has a concurrency limit
    # what the key's budget holds for the request while it runs: its prompt estimate and the most it may generate
    # (max_tokens, else the rest of the context), settled to the real usage at the end (0: the estimate)
    reserved: int = 0
    local: bool = True
    period: BudgetPeriod | None = None
    settled: bool = False


@dataclass(frozen=True)
class Refusal:
    """Why a request is not admitted: `key_rpm`, `key_tpm`, `key_concurrency` or `budget`; seconds until it may be."""

    reason: str
    wait: float
    limits: KeyLimits
    period: BudgetPeriod | None = None  # the budget's period (reason `budget`): its end is the reset time


class TokenBucket:
    """`per_minute` units in a burst, refilled at per_minute/60 per second; may go into debt (a settled usage above
    its estimate), and then refuses until refilled above zero."""

    __slots__ = ("level", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.level = float(per_minute)
        self.stamp = now

    def wait(self, cost: int, per_minute: int, now: float) -> float:
        """0 when `cost` units (at most a full bucket) are there; else the seconds until they are."""
        self.level = min(float(per_minute), self.level + (now - self.stamp) * per_minute / 60.0)
        self.stamp = now
        needed = min(float(cost), float(per_minute)) if cost > 0 else 1.0
        if self.level >= needed:
            return 0.0
        return (needed - self.level) * 60.0 / per_minute


class LocalLimiter:
    """Per-key limits in this process's memory (see the module's docstring)."""

    def __init__(self) -> None:
        self._rpm: dict[str, TokenBucket] = {}
        self._tpm: dict[str, TokenBucket] = {}
        self._active: dict[str, int] = {}
        self._used: dict[tuple[str, str], int] = {}  # (key, budget period id) -> tokens

    def admit(self, key: str, limits: KeyLimits, estimate: int, reserve: int = 0) -> Ticket | Refusal:
        """Every limit is checked before any is charged: a refused request costs the key nothing. The budget holds
        `reserve` tokens (at least the estimate) while the request runs, so that concurrent requests cannot spend it
        many times over: a budget is passed by at most the last request admitted."""
        reserve = max(reserve, estimate)
        now = time.monotonic()
        period = BudgetPeriod.current(limits.budget_period) if limits.budget_tokens else None
        if period is not None and self._used.get((key, period.id), 0) >= limits.budget_tokens:
            return Refusal("budget", max(1.0, period.ends - time.time()), limits, period)
        rpm = tpm = None
        if limits.rpm:
            rpm = self._rpm.get(key) or self._rpm.setdefault(key, TokenBucket(limits.rpm, now))
            wait = rpm.wait(1, limits.rpm, now)
            if wait:
                return Refusal("key_rpm", wait, limits)
        if limits.tpm:
            tpm = self._tpm.get(key) or self._tpm.setdefault(key, TokenBucket(limits.tpm, now))
            wait = tpm.wait(estimate, limits.tpm, now)
            if wait:
                return Refusal("key_tpm", wait, limits)
        if limits.max_concurrency and self._active.get(key, 0) >= limits.max_concurrency:
            return Refusal("key_concurrency", 1.0, limits)
        if rpm is not None:
            rpm.level -= 1.0
        if tpm is not None:
            tpm.level -= estimate
        self._active[key] = self._active.get(key, 0) + 1
        if period is not None:
            self._used[(key, period.id)] = self._used.get((key, period.id), 0) + reserve
        return Ticket(key, limits, estimate, local=True, period=period, reserved=reserve)

    def settle(self, ticket: Ticket, tokens: int) -> None:
        """The request ended having used `tokens` (prompt + completion): its slot back, the estimate corrected."""
        if ticket.settled:
            return
        ticket.settled = True
        count = self._active.get(ticket.key, 1) - 1
        if count > 0:
            self._active[ticket.key] = count
        else:
            self._active.pop(ticket.key, None)
        delta = tokens - ticket.estimate
        bucket = self._tpm.get(ticket.key)
        if bucket is not None and ticket.limits.tpm:
            bucket.level -= delta
        if ticket.period is not None:
            slot = (ticket.key, ticket.period.id)
            self._used[slot] = max(0, self._used.get(slot, 0) + tokens - (ticket.reserved or ticket.estimate))

    def used(self, key: str, period: str) -> int:
        return self._used.get((key, BudgetPeriod.of(period).id), 0)


# A prompt's tokens before any tokenizer has seen it: about 4 characters a token for English text (OpenAI's rule of
# thumb, "What are tokens and how to count them"), plus 3 tokens a chat message for its role and separators and 3 to
# prime the reply (the OpenAI cookbook's num_tokens_from_messages). Settled with the engine's real count afterwards.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3


def completion_bound(body: dict[str, Any], max_context: int, estimate: int) -> int:
    """The most tokens a request may generate: its max_tokens (or chat's max_completion_tokens), else what the
    context leaves after the prompt (an engine generates up to it: trtllm-serve's default when max_tokens is
    unset). What a budget holds for the request while it runs."""
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return max(1, max_context - estimate)


def prompt_estimate(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a validated chat or completions body (token ids count one each)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
        return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * (len(messages) + 1)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / CHARS_PER_TOKEN)
    if isinstance(prompt, list):
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += math.ceil(len(item) / CHARS_PER_TOKEN)
            elif isinstance(item, list):
                total += len(item)
            else:
                total += 1  # a token id
        return total
    return 0
