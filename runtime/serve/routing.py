"""Which replica serves a request: least outstanding, or the one that already holds the prompt's prefix in KV cache.

Modes (`--routing`):

- `least_outstanding`: the ready replica with the fewest requests in progress (ties round-robin). No per-request work.
- `approximate`: the gateway remembers, per replica, the prompt prefixes it sent there: the prompt text (chat: role
  and content of each message in order) cut into `TEXT_BLOCK_CHARS`-character blocks, each keyed by a hash chain, at
  most `MAX_TEXT_BLOCKS` per prompt, kept in a least-recently-used index of `INDEX_BLOCKS_PER_REPLICA` keys per
  replica. Works with any engine; it only knows where prompts went, not what each engine still holds.
- `precise`: the gateway tokenizes the prompt as the engine does (`--routing-tokenizer`: the model's tokenizer
  folder), keys its 32-token blocks as the engine keys them (`EngineBlockPrefix`, the one place that calls
  runtime/serve/prefix_cache.py) and matches them against the blocks each replica reported in
  `POST /kv_cache_events` (trtllm-serve with `enable_block_reuse` and `event_buffer_max_size`; the CPU engine), polled
  every `EVENTS_POLL_SECONDS`; and, as in approximate mode, the blocks this gateway routed there, until a `removed`
  event it drains says they were evicted. The engine's events add what other gateways sent and what it evicted; the
  gateway's own routing covers the events another gateway drained (see "Several gateway replicas") and the ones not
  arrived yet, so a burst of one tenant's requests does not scatter before the events arrive. An eviction that
  another gateway drained is not seen here: as in approximate mode, a request sent there on the old belief misses once
  and stores its blocks again.

Each cache-aware mode is a `RoutingProfile`, as llm-d's inference scheduler composes its plugins: filters drop
replicas (`LoadBound`, `RecentLoadBound`), scorers give each remaining replica a cost, and the replica with the lowest
weighted sum wins (ties round-robin). Costs are counted in prompt blocks to prefill, so the weights are the exchange
rates between them: the blocks the request would prefill there (`TextPrefix` or `EngineBlockPrefix`: its blocks minus
the prefix matched there), the prefill already queued there (`QueuedPrefill`: blocks of requests in progress that
were not cached there), `DECODE_COST_BLOCKS` per request in progress (`OutstandingDecode`), `ADDON_LOAD_COST_BLOCKS`
for an addon unless that replica served it last within `ADDON_AFFINITY_SECONDS` (`LoraAffinity`: an engine keeps only
`max_loras` adapters loaded), and `RECENT_COST_BLOCKS` per recent request (`RecentLoad`). Keying blocks the engine's
way is therefore one scorer: `EngineBlockPrefix.keys`.

The load bound (bounded-load consistent hashing, Mirrokni et al. 2018): a replica is eligible while its outstanding
requests are below `ceil(load_factor * (all outstanding + 1) / replicas)`, so a hot prefix spreads to a second
replica instead of queueing on one; and over time, while its recent requests (decayed, 30 s half-life) are below
`load_factor x their mean + 2`, so a replica that holds the prefixes of many busy tenants hands some of them to another.
The bound over time never passes over a replica that has no request in progress and holds what the request reuses
(its prefix's first `HOME_BLOCKS` blocks, or its addon's adapter): a lone tenant's sequential requests stay where
they hit, and the bound still spreads new tenants (they hold nothing anywhere) and the tenants of busy replicas.

Several gateway replicas (the HPA runs 2 to 6 behind one Service, each with its own routing state): they agree on a
prefix's home without talking, by rendezvous hashing (highest random weight, Thaler and Ravishankar 1998). Each
prompt has a home key, a stable hash of its first `HOME_BLOCKS` blocks; where this gateway knows no eligible replica
that holds at least those leading blocks, the eligible replica with the highest hash of (home key, replica address)
is taken to hold the prompt. Every gateway computes the same ranking, so the first request of a tenant goes to the
same replica whichever gateway takes it, and what each gateway then learns (the prefixes it sent; in precise mode
those and the events it drained) agrees. When the home is over a load bound, the next replica in the ranking is the
home, again the same for every gateway. Why this and not the alternatives: a shared index needs a store on the request
path (another issue's work, and a dependency for every request); the engines' events cannot be the shared truth
because trtllm-serve's `POST /kv_cache_events` drains its queue (tensorrt_llm/serve/openai_server.py, 1.3.0rc19), so
two gateways polling one engine each see part of the events. Rendezvous hashing needs nothing new, costs one 8-byte
blake2b per ready replica per request, and moves only the prefixes of a replica that leaves (no remapping of others).
That drain is also why a precise gateway counts the prefixes it sent until a `removed` event it drains says otherwise,
not only until their `stored` events arrive: another gateway may drain those. When it forgot them after 10 s, a gateway
that had not drained a tenant's events took the tenant for a new one: the recent-load bound then moved it off the idle
replica that held it (one gateway, knowing the holder, keeps it there), and two gateways scattered it over replicas.

Routing state follows the replicas, in every mode: what the router knows of a replica is tied to the replica's
incarnation (`Upstream.incarnation`, runtime/serve/upstreams.py), which changes when the replica leaves the ready set
and comes back, or when it turns out to be a new engine process. trtllm-serve (1.3.0rc19; openai_server.py read at
NVIDIA/TensorRT-LLM 00057725) exposes no per-process identity on the endpoints a health check reads (`/v1/models`
stamps `created` per request, `/version` is the build, `/prometheus/metrics` is a multiprocess registry without
`process_start_time_seconds`); its KV event stream is per process (event ids count from 0 and the first event is
`created`), so precise mode takes a `created` event or event ids that go back as a new process. A forgotten replica
loses its prefix index, reported blocks, queued prefill and LoRA affinity. The limit, in approximate mode: a restart
whose outage falls between two health checks with no request forwarded meanwhile is not seen (no signal tells a new
process from an idle one: uvicorn closes idle connections after 5 s, the gateway its upstream ones after 4 s), so
each tenant held there misses once; trtllm-serve loads its model for minutes, longer than the default 5 s interval.

Per-request cost (measured here, 3 replicas): `least_outstanding` none; `approximate` hashes at most 64 text blocks
and does a dict lookup per block and replica: ~5 us for a short prompt, ~25 us for a 4,600-character one; `precise`
renders the chat template and tokenizes: ~0.1 ms for a short prompt, ~1.3 ms for 1,234 tokens, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from runtime.serve.config import GatewayConfig, RoutingMode, lora_int_id
from runtime.serve.prefix_cache import BASE_ADAPTER, TOKENS_PER_BLOCK, prompt_block_hashes
from runtime.serve.upstreams import Upstream, UpstreamPool, excluded_set

log = logging.getLogger("byoc.gateway.routing")

TEXT_BLOCK_CHARS = 128  # about 32 tokens of English text: the engine's block, in characters
MAX_TEXT_BLOCKS = 64  # prefixes are matched over the first 8,192 characters at most
INDEX_BLOCKS_PER_REPLICA = 65536  # ~6 MiB per replica in the approximate index
MAX_PROMPT_CHARS = 65536  # precise: only the start of a longer prompt is tokenized
ADDON_AFFINITY_SECONDS = 120.0
EVENTS_POLL_SECONDS = 0.1
EVENTS_TIMEOUT = aiohttp.ClientTimeout(total=2, connect=1)
LOAD_FACTOR = 1.25
# The cost of a replica for a request, in prompt blocks to prefill: a running request slows each iteration about as
# much as 2 blocks of prefill on the CPU engine; loading a LoRA adapter costs about 8 (PEFT load from local disk).
DECODE_COST_BLOCKS = 2
ADDON_LOAD_COST_BLOCKS = 8
# Over time too, no replica takes much more than its share: a replica whose recent requests (decayed, 30 s half-life)
# exceed load_factor x the mean + 2 takes no more until they decay; among equals the least recently loaded wins, so
# the prefixes of new tenants are spread over the replicas instead of piling onto whichever had them first.
RECENT_HALF_LIFE_SECONDS = 30.0
RECENT_SLACK = 2.0
RECENT_COST_BLOCKS = 0.5
# A prefix's home (rendezvous hashing across gateway replicas) is decided by its first 4 blocks (~512 characters or
# 128 tokens): prompts that share less than that, such as a common chat-template preamble, are not tied together.
HOME_BLOCKS = 4
_KEY_MASK = (1 << 64) - 1


@dataclass
class RouteKey:
    """What a request is routed by: its prompt's block keys (text or token blocks), the stable key of its leading
    blocks (`home`, empty when the prompt has no full block) and its addon; and the prefill work it was charged to a
    replica (released when the request ends)."""

    blocks: tuple[int, ...]
    addon: str | None
    home: bytes = b""
    home_depth: int = 0  # how many leading blocks the home key covers
    charged: tuple[ReplicaState, int] | None = None


@dataclass(eq=False)
class ReplicaState:
    """What the gateway knows about one incarnation of one replica."""

    incarnation: int  # the Upstream.incarnation this knowledge belongs to
    routed: OrderedDict[int, float] = field(default_factory=OrderedDict)  # block key -> when last routed (LRU)
    reported: set[int] = field(default_factory=set)  # precise: blocks the replica's KV events say it holds
    addons: dict[str, float] = field(default_factory=dict)  # addon -> when last routed here
    prefill_blocks: int = 0  # prompt blocks sent here and not cached there, of requests still in progress
    recent: float = 0.0  # requests routed here, decayed with a RECENT_HALF_LIFE_SECONDS half-life
    recent_at: float = 0.0
    events_supported: bool = True
    # precise: the last KV event id seen, per attention-DP rank (each rank numbers its own events)
    event_ids: dict[int, int] = field(default_factory=dict)

    def recent_load(self, now: float) -> float:
        return float(self.recent * 0.5 ** ((now - self.recent_at) / RECENT_HALF_LIFE_SECONDS))


# -- one routing decision, and the plugins that make it ----------------------------------------------------------
@dataclass(eq=False)
class Candidate:
    """A ready replica as one decision sees it."""

    upstream: Upstream
    state: ReplicaState | None
    recent: float  # its decayed recent requests
    known: int = 0  # leading prompt blocks this gateway knows it holds (set by the prefix scorer)
    matched: int = 0  # the same, or the whole prompt where it is the prefix's rendezvous home


@dataclass
class Decision:
    key: RouteKey
    now: float
    outstanding_bound: int
    recent_bound: float
    addon_home: dict[str, str]  # addon -> the replica that served it last


class Filter(Protocol):
    def admits(self, decision: Decision, candidate: Candidate) -> bool: ...


class Scorer(Protocol):
    def prepare(self, decision: Decision, eligible: list[Candidate]) -> None: ...

    def cost(self, decision: Decision, candidate: Candidate) -> float: ...


class LoadBound:
    """Bounded load: a replica takes a request only while its outstanding requests are below the bound."""

    def admits(self, decision: Decision, candidate: Candidate) -> bool:
        return candidate.upstream.outstanding < decision.outstanding_bound


class RecentLoadBound:
    """Bounded load over time: a replica whose recent requests exceed load_factor x their mean + slack rests, unless
    it has nothing in progress and holds what the request would reuse (its prefix's home blocks, or its addon's
    adapter). The bound spreads the tenants of busy replicas; an idle replica delays no one, and moving a lone tenant
    off it only turns a cache hit into a miss elsewhere."""

    def admits(self, decision: Decision, candidate: Candidate) -> bool:
        if candidate.recent < decision.recent_bound:
            return True
        if candidate.upstream.outstanding > 0:
            return False
        depth = decision.key.home_depth
        return (depth > 0 and candidate.known >= depth) or holds_addon(decision, candidate)


class _NoPreparation:
    def prepare(self, decision: Decision, eligible: list[Candidate]) -> None:
        return None


class QueuedPrefill(_NoPreparation):
    """Prompt blocks already queued for prefill there (requests in progress, not cached there)."""

    def cost(self, decision: Decision, candidate: Candidate) -> float:
        return float(candidate.state.prefill_blocks) if candidate.state is not None else 0.0


class OutstandingDecode(_NoPreparation):
    """Requests in progress there: each slows every iteration."""

    def cost(self, decision: Decision, candidate: Candidate) -> float:
        return float(candidate.upstream.outstanding)


class RecentLoad(_NoPreparation):
    """Requests routed there lately (decayed): among equals, the least recently loaded wins."""

    def cost(self, decision: Decision, candidate: Candidate) -> float:
        return candidate.recent


class LoraAffinity(_NoPreparation):
    """1 where the request's addon would have to be loaded: it was not served there last, within the affinity
    window (an engine keeps only max_loras adapters loaded)."""

    def cost(self, decision: Decision, candidate: Candidate) -> float:
        return 0.0 if decision.key.addon is None or holds_addon(decision, candidate) else 1.0


def holds_addon(decision: Decision, candidate: Candidate) -> bool:
    """The request's addon was served last on this replica, within the affinity window: its adapter is loaded there."""
    addon = decision.key.addon
    if addon is None:
        return False
    url, state = candidate.upstream.url, candidate.state
    served = state.addons.get(addon, -math.inf) if state is not None else -math.inf
    home = decision.addon_home.get(addon) == url
    return home and decision.now - served <= ADDON_AFFINITY_SECONDS


def rendezvous_rank(home: bytes, url: str) -> bytes:
    """Highest random weight of (prefix home key, replica): every gateway computes the same ranking."""
    return hashlib.blake2b(home + url.encode(), digest_size=8).digest()


class PrefixMatch:
    """The prompt blocks a request would prefill on a replica: its blocks minus the prefix known there. Subclasses
    say how a prompt is cut into block keys (`keys`) and what a replica is known to hold (`matched`)."""

    def keys(self, chat: bool, body: dict[str, Any], addon: str | None) -> RouteKey:
        raise NotImplementedError

    def matched(self, state: ReplicaState, blocks: tuple[int, ...], now: float) -> int:
        raise NotImplementedError

    def measure(self, decision: Decision, candidates: list[Candidate]) -> None:
        """Each replica's known prefix, before the filters (`RecentLoadBound` reads it)."""
        blocks, now = decision.key.blocks, decision.now
        for candidate in candidates:
            known = self.matched(candidate.state, blocks, now) if candidate.state is not None else 0
            candidate.known = candidate.matched = known

    def prepare(self, decision: Decision, eligible: list[Candidate]) -> None:
        blocks = decision.key.blocks
        depth = decision.key.home_depth
        if depth and max(c.known for c in eligible) < depth:
            # this gateway knows no eligible replica holding the prompt's leading blocks: another gateway may have
            # sent them to the prefix's home, and a new prefix goes there, so that every gateway agrees
            home = max(eligible, key=lambda c: rendezvous_rank(decision.key.home, c.upstream.url))
            home.matched = len(blocks)

    def cost(self, decision: Decision, candidate: Candidate) -> float:
        return float(len(decision.key.blocks) - candidate.matched)


class TextPrefix(PrefixMatch):
    """approximate: blocks of the prompt text, matched against the prefixes this gateway sent to each replica."""

    def keys(self, chat: bool, body: dict[str, Any], addon: str | None) -> RouteKey:
        text = prompt_text(chat, body)
        count = min(len(text) // TEXT_BLOCK_CHARS, MAX_TEXT_BLOCKS)
        parent = hash(addon or BASE_ADAPTER)
        out = []
        for i in range(count):
            # Python's string hash (SipHash, salted per process): the index lives and dies with this process
            parent = hash((parent, text[i * TEXT_BLOCK_CHARS : (i + 1) * TEXT_BLOCK_CHARS]))
            out.append(parent)
        home, depth = b"", min(count, HOME_BLOCKS)
        if depth:
            # the home key must be the same in every gateway process: blake2b, not the salted hash above
            leading = (addon or BASE_ADAPTER) + "\x00" + text[: depth * TEXT_BLOCK_CHARS]
            home = hashlib.blake2b(leading.encode(), digest_size=8).digest()
        return RouteKey(tuple(out), addon, home, depth)

    def matched(self, state: ReplicaState, blocks: tuple[int, ...], now: float) -> int:
        return sent_prefix(state, blocks)


class EngineBlockPrefix(PrefixMatch):
    """precise: the prompt's tokens keyed as the engine keys its KV blocks, matched against the blocks each replica
    reported in its KV events and the blocks this gateway routed there, less those its events reported evicted."""

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self.tokenizer = tokenizer

    def keys(self, chat: bool, body: dict[str, Any], addon: str | None) -> RouteKey:
        try:
            tokens = self.tokenizer.tokens(chat, body)
        except Exception:  # a template that fails here fails in the engine too: route by load
            tokens = None
        if tokens is None:
            return RouteKey((), addon)
        blocks = engine_block_keys(tokens, addon)
        # the home is keyed by full blocks only: a partial last block changes with every question
        depth = min((len(tokens) - 1) // TOKENS_PER_BLOCK, len(blocks), HOME_BLOCKS)
        home = (blocks[depth - 1] & _KEY_MASK).to_bytes(8, "big") if depth > 0 else b""
        return RouteKey(blocks, addon, home, depth)

    def matched(self, state: ReplicaState, blocks: tuple[int, ...], now: float) -> int:
        # a replica without /kv_cache_events reports nothing: what was sent there, as in approximate
        matched = 0
        routed, reported = state.routed, state.reported
        for block in blocks:
            if block not in reported and block not in routed:
                break
            matched += 1
        return matched


def sent_prefix(state: ReplicaState, blocks: tuple[int, ...]) -> int:
    """The leading blocks this gateway sent to the replica (and that were not reported evicted)."""
    matched = 0
    routed = state.routed
    for block in blocks:
        if block not in routed:
            break
        matched += 1
    return matched


def engine_block_keys(tokens: Sequence[int], addon: str | None) -> tuple[int, ...]:
    """The engine's keys of the prompt's blocks: the one call to swap when the engine keys blocks differently.

    TensorRT-LLM's V1 block keys, the addon's LoRA task id mixed in, as its KV-aware router computes them
    (prefix_cache.py)."""
    task_id = lora_int_id(addon) if addon else None
    return tuple(prompt_block_hashes(tokens, task_id))


@dataclass
class RoutingProfile:
    """One mode: the prefix scorer that keys prompts, the filters, and the weighted scorers."""

    prefix: PrefixMatch
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[Scorer, float], ...]

    def choose(self, decision: Decision, candidates: list[Candidate]) -> Candidate:
        self.prefix.measure(decision, candidates)
        eligible = [c for c in candidates if all(f.admits(decision, c) for f in self.filters)]
        if not eligible:  # every replica at a bound (cannot happen with load_factor >= 1): the least busy
            return min(candidates, key=lambda c: c.upstream.outstanding)
        for scorer, _ in self.scorers:
            scorer.prepare(decision, eligible)
        best, best_cost = eligible[0], math.inf
        for candidate in eligible:  # in round-robin order: the first of equals wins
            cost = sum(weight * scorer.cost(decision, candidate) for scorer, weight in self.scorers)
            if cost < best_cost:
                best, best_cost = candidate, cost
        return best


def cache_aware_profile(prefix: PrefixMatch) -> RoutingProfile:
    """approximate and precise differ only in how prompts are keyed and matched (the prefix scorer)."""
    return RoutingProfile(
        prefix=prefix,
        filters=(LoadBound(), RecentLoadBound()),
        scorers=(
            (prefix, 1.0),
            (QueuedPrefill(), 1.0),
            (OutstandingDecode(), DECODE_COST_BLOCKS),
            (LoraAffinity(), ADDON_LOAD_COST_BLOCKS),
            (RecentLoad(), RECENT_COST_BLOCKS),
        ),
    )


class PromptTokenizer:
    """The engine's prompt tokens, made in the gateway (precise routing): the model's chat template and tokenizer.

    Mirrors the CPU engine's `_prompt_ids` and trtllm-serve's chat handler: the template with the generation prompt,
    then the tokenizer without special tokens; a completion's string prompt with them; token ids as they are.
    """

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)

    def tokens(self, chat: bool, body: dict[str, Any]) -> list[int] | None:
        if chat:
            messages = []
            for message in body.get("messages") or []:
                content = message.get("content")
                if isinstance(content, list):
                    content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                entry = {k: message[k] for k in ("name", "tool_calls", "tool_call_id") if message.get(k) is not None}
                entry["role"], entry["content"] = str(message.get("role", "user")), content or ""
                messages.append(entry)
            options: dict[str, Any] = {}
            if body.get("tools"):
                options["tools"] = [t["function"] for t in body["tools"] if isinstance(t, dict) and "function" in t]
            if body.get("reasoning_effort") is not None:
                options["reasoning_effort"] = body["reasoning_effort"]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **options)
            return list(self.tokenizer(text[:MAX_PROMPT_CHARS], add_special_tokens=False)["input_ids"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt[:MAX_PROMPT_CHARS])["input_ids"])
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        return None


def prompt_text(chat: bool, body: dict[str, Any]) -> str:
    """The text approximate routing keys: chat messages' role and content in order, or the completion prompt."""
    if chat:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content")
            parts.append(f"{message.get('role')}\x1f{content if isinstance(content, str) else repr(content)}\x1e")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else repr(prompt)


def make_router(config: GatewayConfig, pool: UpstreamPool) -> Router:
    """The gateway's router for its `routing` settings (the tokenizer loads here, at start-up, for precise)."""
    tokenizer = (
        PromptTokenizer(config.routing_tokenizer) if config.routing == "precise" and config.routing_tokenizer else None
    )
    return Router(config.routing, pool, tokenizer, config.routing_load_factor)


class Router:
    """Picks a ready replica per request (see the module docstring); holds no request text, only hashes."""

    def __init__(
        self,
        mode: RoutingMode,
        pool: UpstreamPool,
        tokenizer: PromptTokenizer | None = None,
        load_factor: float = LOAD_FACTOR,
    ) -> None:
        if mode == "precise" and tokenizer is None:
            raise ValueError("precise routing needs the model's tokenizer")
        self.mode = mode
        self.pool = pool
        self.load_factor = load_factor
        self.profile: RoutingProfile | None = None  # None: least_outstanding, the pool's own pick
        if mode == "precise" and tokenizer is not None:
            self.profile = cache_aware_profile(EngineBlockPrefix(tokenizer))
        elif mode == "approximate":
            self.profile = cache_aware_profile(TextPrefix())
        self.states: dict[str, ReplicaState] = {}
        # addon -> the replica that served it last: its adapter is surely loaded there (engines keep only max_loras)
        self.addon_home: dict[str, str] = {}
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- per request -----------------------------------------------------------------------------------------
    def key(self, chat: bool, body: dict[str, Any], addon: str | None) -> RouteKey | None:
        """The request's route key; None in least_outstanding mode (no work at all)."""
        if self.profile is None:
            return None
        return self.profile.prefix.keys(chat, body, addon)

    def pick(self, key: RouteKey | None, exclude: Upstream | Collection[Upstream] | None = None) -> Upstream | None:
        """The replica for this request, and (cache-aware modes) remember that its prefix went there."""
        if key is None or self.profile is None:
            return self.pool.pick(exclude)
        excluded = excluded_set(exclude)
        ready = [u for u in self.pool.ready if u not in excluded]
        if not ready:
            return None
        if len(self.states) > len(self.pool.ready):
            self._forget_gone()
        self.release(key)  # a retry: the first replica's charge goes
        now = time.monotonic()
        self._turn += 1
        count = len(ready)
        candidates = []
        for i in range(count):
            upstream = ready[(self._turn + i) % count]
            state = self._state(upstream)
            candidates.append(Candidate(upstream, state, state.recent_load(now) if state is not None else 0.0))
        total = sum(u.outstanding for u in ready)
        decision = Decision(
            key,
            now,
            outstanding_bound=math.ceil(self.load_factor * (total + 1) / count),
            recent_bound=self.load_factor * sum(c.recent for c in candidates) / count + RECENT_SLACK,
            addon_home=self.addon_home,
        )
        best = self.profile.choose(decision, candidates)
        state = self._remember(best.upstream, key, now)
        state.recent, state.recent_at = state.recent_load(now) + 1.0, now
        new = len(key.blocks) - best.known  # the prefill it really queues there, as far as this gateway knows
        state.prefill_blocks += new
        key.charged = (state, new)
        return best.upstream

    def release(self, key: RouteKey | None) -> None:
        """The request ended (or is retried elsewhere): its prefill no longer weighs on the replica."""
        if key is not None and key.charged is not None:
            state, blocks = key.charged
            state.prefill_blocks = max(0, state.prefill_blocks - blocks)
            key.charged = None

    # -- what is known per replica ---------------------------------------------------------------------------
    def _state(self, upstream: Upstream) -> ReplicaState | None:
        """What is known of this replica's current incarnation (None: nothing yet)."""
        state = self.states.get(upstream.url)
        if state is not None and state.incarnation != upstream.incarnation:
            self.forget(upstream.url, "it came back as a new engine process or after leaving the ready set")
            return None
        return state

    def _remember(self, upstream: Upstream, key: RouteKey, now: float) -> ReplicaState:
        state = self._state(upstream)
        if state is None:
            state = self.states[upstream.url] = ReplicaState(upstream.incarnation)
        routed = state.routed
        for block in reversed(key.blocks):  # parents end up most recent: leaves are evicted first
            routed[block] = now
            routed.move_to_end(block)
        while len(routed) > INDEX_BLOCKS_PER_REPLICA:
            routed.popitem(last=False)
        if key.addon is not None:
            state.addons[key.addon] = now
            self.addon_home[key.addon] = upstream.url
        return state

    def forget(self, url: str, why: str) -> None:
        """Drop everything known of a replica: its prefix index, reported blocks, queued prefill, LoRA affinity."""
        if self.states.pop(url, None) is not None:
            log.info("routing: forgetting the cache of %s (%s)", url, why)
        for addon in [a for a, home in self.addon_home.items() if home == url]:
            del self.addon_home[addon]

    def _forget_gone(self) -> None:
        ready = {u.url for u in self.pool.ready}
        for url in list(self.states):
            if url not in ready:
                self.forget(url, "left the ready set")

    # -- precise: KV cache events ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.mode != "precise":
            return
        self._session = aiohttp.ClientSession(timeout=EVENTS_TIMEOUT)
        self._task = asyncio.create_task(self._follow_events(), name="kv-cache-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _follow_events(self) -> None:
        while True:
            ready = list(self.pool.ready)
            if len(self.states) > len(ready):
                self._forget_gone()
            await asyncio.gather(*(self._poll(u) for u in ready), return_exceptions=True)
            await asyncio.sleep(EVENTS_POLL_SECONDS)

    async def _poll(self, upstream: Upstream) -> None:
        assert self._session is not None
        state = self._state(upstream)
        if state is None:
            state = self.states[upstream.url] = ReplicaState(upstream.incarnation)
        if not state.events_supported:
            return
        try:
            async with self._session.post(upstream.url + "/kv_cache_events") as response:
                if response.status == 404:
                    log.warning("routing: %s has no /kv_cache_events: routing to it by sent prefixes", upstream.url)
                    state.events_supported = False
                    return
                if response.status != 200:
                    return
                events = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        if not isinstance(events, list):
            return
        restart = new_process_at(state, events)
        if restart is not None:
            # the engine restarted in place: its cache is empty, whatever any mode knew of it goes
            self.pool.renewed(upstream, "its KV events started over")
            self.forget(upstream.url, "its KV events started over: a new engine process")
            state = self.states[upstream.url] = ReplicaState(upstream.incarnation)
            events = events[restart:]
        apply_events(state, events)


def new_process_at(state: ReplicaState, events: list[Any]) -> int | None:
    """Where in this batch a new engine process begins, or None. trtllm's KV cache event manager numbers events from
    0 in each process (per attention-DP rank) and sends `created` first; drained by several pollers, each still sees
    its share in increasing order, so an id that does not increase, or a `created`, is a new process."""
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            continue
        data = event.get("data")
        if isinstance(data, dict) and data.get("type") == "created" and state.event_ids:
            return i
        event_id, rank = event.get("event_id"), event.get("attention_dp_rank") or 0
        if isinstance(event_id, int) and isinstance(rank, int):
            last = state.event_ids.get(rank)
            if last is not None and event_id <= last:
                return i
    return None


def apply_events(state: ReplicaState, events: Any) -> None:
    """Fold trtllm-serve KV cache events (stored / removed / created) into what a replica holds."""
    if not isinstance(events, list):
        return
    reported = state.reported
    for event in events:
        if not isinstance(event, dict):
            continue
        event_id, rank = event.get("event_id"), event.get("attention_dp_rank") or 0
        if isinstance(event_id, int) and isinstance(rank, int):
            state.event_ids[rank] = event_id
        data = event.get("data")
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind == "stored":
            for block in data.get("blocks") or []:
                if isinstance(block, dict) and isinstance(block.get("block_hash"), int):
                    reported.add(block["block_hash"])
        elif kind == "removed":
            for block_hash in data.get("block_hashes") or []:
                reported.discard(block_hash)
                state.routed.pop(block_hash, None)  # evicted: what this gateway sent there is gone too
        elif kind == "created":  # the engine (re)started: whatever was known of its cache is gone
            reported.clear()
            state.routed.clear()
