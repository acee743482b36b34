"""Several gateway replicas in front of the same engines, in-process and deterministic: real `Router` objects (one per
gateway, each with its own state, as the HPA runs them), engines reduced to their KV block reuse (the CPU engine's
`PrefixCache`, with its KV events), and a simulated clock. Each engine's `POST /kv_cache_events` drains its queue, so
the gateways take turns: each sees part of every engine's events, as two gateways polling one trtllm-serve do.

The shared-prefix benchmark's workload (`python -m runtime.serve.bench --scenario shared-prefix`): tenants with long
system prompts of their own, a request every 1/1.2 s, request i to gateway i mod N. No timing of this machine enters:
a request takes `SERVICE_SECONDS` plus `PREFILL_SECONDS_PER_BLOCK` per block the engine did not have."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtime.serve import routing
from runtime.serve.config import RoutingMode
from runtime.serve.metrics import GatewayMetrics
from runtime.serve.prefix_cache import PrefixCache, context_block_hashes, sequence_block_hashes
from runtime.serve.routing import PromptTokenizer, ReplicaState, Router, apply_events
from runtime.serve.upstreams import Upstream, UpstreamPool

URLS = ("http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000")
TENANTS = 8
SYSTEM_TOKENS = 1200  # 37 full blocks: the bench's ~1,200-token system prompts
KV_CACHE_BLOCKS = 160  # the bench's 5,120 tokens per replica: about four tenants' system prompts
REQUESTS = 96
RATE = 1.2  # requests per second
SERVICE_SECONDS = 0.06
PREFILL_SECONDS_PER_BLOCK = 0.016  # ~0.6 s to prefill a whole system prompt, as the bench's model on one core
OUTPUT_TOKENS = 8


class Clock:
    """Stands in for the `time` module the router reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class TokenIds(PromptTokenizer):
    """The prompt is its token ids already: no tokenizer to load."""

    def __init__(self) -> None:
        pass

    def tokens(self, chat: bool, body: dict[str, Any]) -> list[int] | None:
        return list(body["prompt"])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(routing, "time", fake)
    yield fake


def gateway(mode: RoutingMode) -> Router:
    pool = UpstreamPool((), 1.0, GatewayMetrics(2.0))
    for url in URLS:
        upstream = Upstream(url, None, ready=True)  # type: ignore[arg-type]
        pool.upstreams[url] = upstream
        pool.ready.append(upstream)
    return Router(mode, pool, TokenIds() if mode == "precise" else None)


def body(mode: RoutingMode, tokens: list[int]) -> dict[str, Any]:
    # approximate keys the text; precise the token ids (a completion whose prompt is token ids)
    return {"prompt": tokens if mode == "precise" else " ".join(f"{t:03d}" for t in tokens)}


def drain(engine: PrefixCache, router: Router, url: str) -> None:
    """One gateway's `POST /kv_cache_events` to one engine (Router._poll without the HTTP)."""
    events = engine.drain_events()
    upstream = router.pool.upstreams[url]
    state = router.states.get(url)
    if state is None:
        state = router.states[url] = ReplicaState(upstream.incarnation)
    apply_events(state, events)


def bench_workload(seed: int) -> list[tuple[float, list[int]]]:
    """The shared-prefix benchmark's requests: (when, prompt token ids), a random tenant's system prompt and a
    question."""
    rng = random.Random(seed)
    systems = [[rng.randrange(10, 1000) for _ in range(SYSTEM_TOKENS)] for _ in range(TENANTS)]
    requests = []
    for i in range(REQUESTS):
        tenant = rng.randrange(TENANTS)
        requests.append((i / RATE, systems[tenant] + [rng.randrange(10, 1000) for _ in range(16)]))
    return requests


def serve(
    clock: Clock,
    mode: RoutingMode,
    gateways: int,
    requests: list[tuple[float, list[int]]],
    drainer: Callable[[int], int] = lambda poll: poll,
) -> tuple[float, list[str]]:
    """Request i through gateway i mod `gateways`; every `EVENTS_POLL_SECONDS` the engines' queues are drained by
    gateway `drainer(poll) mod gateways` (the one whose poll came first). The engines' reused / (reused + missed)
    prompt blocks, and the replica each request went to."""
    clock.now = 0.0
    routers = [gateway(mode) for _ in range(gateways)]
    engines = {url: PrefixCache(KV_CACHE_BLOCKS) for url in URLS}
    for engine in engines.values():
        engine.drain_events()  # the `created` event, before any gateway polls
    queue: list[tuple[float, int, Callable[[], None]]] = []
    order = itertools.count()
    placed: list[str] = []

    def at(when: float, action: Callable[[], None]) -> None:
        heapq.heappush(queue, (when, next(order), action))

    def arrive(i: int, tokens: list[int]) -> None:
        router = routers[i % gateways]
        key = router.key(False, body(mode, tokens), None)
        upstream = router.pick(key)
        assert upstream is not None
        upstream.outstanding += 1
        placed.append(upstream.url)
        engine = engines[upstream.url]
        context = context_block_hashes(tokens)
        missed = len(context) - len(engine.match(context))

        def prefilled() -> None:
            engine.store(context, tokens, lambda _: None)

        def finished() -> None:
            sequence = tokens + [7] * OUTPUT_TOKENS
            engine.store(sequence_block_hashes(sequence), sequence, lambda _: None)
            upstream.outstanding -= 1
            router.release(key)

        at(clock.now + PREFILL_SECONDS_PER_BLOCK * missed, prefilled)
        at(clock.now + SERVICE_SECONDS + PREFILL_SECONDS_PER_BLOCK * missed, finished)

    polls = itertools.count()

    def poll() -> None:
        router = routers[drainer(next(polls)) % gateways]
        for url, engine in engines.items():
            drain(engine, router, url)
        if queue:
            at(clock.now + routing.EVENTS_POLL_SECONDS, poll)

    for i, (when, tokens) in enumerate(requests):
        at(when, lambda i=i, tokens=tokens: arrive(i, tokens))  # type: ignore[misc]
    at(0.05, poll)
    while queue:
        clock.now, _, action = heapq.heappop(queue)
        action()
    reused = sum(e.stats.reused_blocks for e in engines.values())
    missed = sum(e.stats.missed_blocks for e in engines.values())
    return reused / (reused + missed), placed


def sharing_a_home(mode: RoutingMode, count: int, seed: int = 0) -> list[list[int]]:
    """`count` tenants' system prompts whose rendezvous home is the same replica."""
    rng = random.Random(seed)
    router = gateway(mode)
    by_home: dict[str, list[list[int]]] = {}
    while True:
        system = [rng.randrange(10, 1000) for _ in range(SYSTEM_TOKENS)]
        key = router.key(False, body(mode, system + [1] * 16), None)
        assert key is not None
        home = max(URLS, key=lambda url: routing.rendezvous_rank(key.home, url))
        by_home.setdefault(home, []).append(system)
        if len(by_home[home]) == count:
            return by_home[home]


def test_a_precise_gateway_counts_what_it_sent_until_the_engine_reports_it_evicted(clock: Clock) -> None:
    """Another gateway may drain the `stored` events of the prompts this one sent: what it sent still counts, however
    long ago, and a `removed` event it drains is what takes it back. (It counted for 10 s only: then a gateway that had
    not drained a tenant's events took the replica holding it for an empty one.)"""
    router = gateway("precise")
    tokens = sharing_a_home("precise", 1)[0] + [5] * 16
    key = router.key(False, body("precise", tokens), None)
    assert key is not None
    upstream = router.pick(key)
    assert upstream is not None
    clock.now += 600.0  # no event drained here meanwhile
    prefix = routing.EngineBlockPrefix(TokenIds())
    state = router.states[upstream.url]
    assert prefix.matched(state, key.blocks, clock.now) == len(key.blocks)
    evicted = {"event_id": 7, "data": {"type": "removed", "block_hashes": list(key.blocks[10:])}}
    apply_events(state, [evicted])
    assert prefix.matched(state, key.blocks, clock.now) == 10


@pytest.mark.parametrize("mode", ["precise", "approximate"])
def test_tenants_of_one_idle_replica_stay_there_whichever_gateway_takes_them(clock: Clock, mode: RoutingMode) -> None:
    """Three tenants whose rendezvous home is the same replica, a request every 2 s in turn (each tenant every 6 s,
    each gateway seeing it every 12 s), and one gateway draining every event (its polls come first). The replica's
    recent requests pass the recent-load bound, but it is idle and holds them: one gateway keeps them there, and so
    must two. Before, the precise gateway that drained none of the events forgot after 10 s where it had sent each
    tenant, took it for a new one, moved it off the busy-looking replica, and the gateways scattered the three over
    two replicas (hit rate 0.833 against one gateway's 0.917)."""
    systems = sharing_a_home(mode, 3)
    rng = random.Random(1)
    requests = [(i * 2.0, systems[i % 3] + [rng.randrange(10, 1000) for _ in range(16)]) for i in range(36)]
    single, alone = serve(clock, mode, 1, requests, drainer=lambda poll: 0)
    pair, placed = serve(clock, mode, 2, requests, drainer=lambda poll: 0)
    assert len(set(alone)) == 1
    assert placed == alone, "two gateways moved a tenant off the idle replica that holds it"
    assert pair == single


@pytest.mark.parametrize("seed", [16, 27])
@pytest.mark.parametrize("mode", ["precise", "approximate"])
def test_two_gateways_keep_the_prefix_hit_rate_of_one_on_the_benchmarks_workload(
    clock: Clock, mode: RoutingMode, seed: int
) -> None:
    """The shared-prefix benchmark's workload (8 tenants, 96 requests), one gateway against two, the gateways taking
    turns at draining the engines' events. Seed 16 is the benchmark's; with seed 27 precise fell to 0.898x before the
    fix above (0.892 -> 0.801; 0.940x now). Not every workload passes: of seeds 10-29, seed 18 in precise (0.897x
    before the fix, 0.896x after) and seed 28 in approximate (0.888x) stay under 0.9x, because their rendezvous homes
    put five or six of the eight tenants on one replica (room for about four), and the recent-load bound, whose slack
    of `RECENT_SLACK` requests is per gateway, spreads them later with two gateways than with one (docs/performance.md,
    "Precise mode with two gateways: why the hit rate varied")."""
    single, _ = serve(clock, mode, 1, bench_workload(seed))
    pair, _ = serve(clock, mode, 2, bench_workload(seed))
    assert pair >= 0.9 * single, (single, pair)
