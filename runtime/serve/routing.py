"""Which replica serves a request: least outstanding, or the one that already holds the prompt's prefix in KV cache.

Modes (`--routing`):

- `least_outstanding`: the ready replica with the fewest requests in progress (ties round-robin). No per-request work.
- `approximate`: the gateway remembers, per replica, the prompt prefixes it sent there: the prompt text (chat: role
  and content of each message in order) cut into `TEXT_BLOCK_CHARS`-character blocks, each keyed by a hash chain, at
  most `MAX_TEXT_BLOCKS` per prompt, kept in a least-recently-used index of `INDEX_BLOCKS_PER_REPLICA` keys per
  replica. Works with any engine; it only knows where prompts went, not what each engine still holds.
- `precise`: the gateway tokenizes the prompt as the engine does (`--routing-tokenizer`: the model's tokenizer
  folder), keys its 32-token blocks with the engine's hash chain (runtime/serve/prefix_cache.py) and matches them
  against the blocks each replica reported in `POST /kv_cache_events` (trtllm-serve with `enable_block_reuse` and
  `event_buffer_max_size`; the CPU engine), polled every `EVENTS_POLL_SECONDS`. Blocks routed but not reported yet
  count for `PENDING_SECONDS`, so a burst of one tenant's requests does not scatter before the events arrive.

Both cache-aware modes pick, among the replicas under the load bound, the one where the request costs least, counted
in prompt blocks: the blocks it would prefill there (its blocks minus the prefix matched there), plus the prefill
already queued there (blocks of requests in progress that were not cached there), plus `DECODE_COST_BLOCKS` per request
in progress, plus `ADDON_LOAD_COST_BLOCKS` for an addon unless that replica is the one that served it last, within
`ADDON_AFFINITY_SECONDS` (LoRA affinity: an engine keeps only `max_loras` adapters loaded, so an addon stays where it
was served last instead of being loaded on every replica in turn). So a prefix goes where it
is cached unless that replica is busy prefilling others; a prompt no replica holds goes to the least loaded; ties go
round-robin. The load bound (bounded-load consistent hashing, Mirrokni et
al. 2018): a replica is eligible while its outstanding requests are below `ceil(load_factor * (all outstanding + 1) /
replicas)`, so a hot prefix spreads to a second replica instead of queueing on one; and over time, while its
recent requests (decayed, 30 s half-life) are below `load_factor x their mean + 2`, so a replica that holds the
prefixes of many busy tenants hands some of them to another. Replicas that leave the ready set
are forgotten (a restarted engine's cache is empty).

Per-request cost (measured here, 3 replicas): `least_outstanding` none; `approximate` hashes at most 64 text blocks
and does a dict lookup per block and replica: ~5 us for a short prompt, ~25 us for a 4,600-character one; `precise`
renders the chat template and tokenizes: ~0.1 ms for a short prompt, ~1.3 ms for 1,234 tokens, on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from runtime.serve.config import GatewayConfig, RoutingMode, lora_int_id
from runtime.serve.prefix_cache import BASE_ADAPTER, prompt_block_hashes
from runtime.serve.upstreams import Upstream, UpstreamPool, excluded_set

log = logging.getLogger("byoc.gateway.routing")

TEXT_BLOCK_CHARS = 128  # about 32 tokens of English text: the engine's block, in characters
MAX_TEXT_BLOCKS = 64  # prefixes are matched over the first 8,192 characters at most
INDEX_BLOCKS_PER_REPLICA = 65536  # ~6 MiB per replica in the approximate index
MAX_PROMPT_CHARS = 65536  # precise: only the start of a longer prompt is tokenized
PENDING_SECONDS = 10.0
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


@dataclass
class RouteKey:
    """What a request is routed by: its prompt's block keys (text or token blocks) and its addon; and the prefill
    work it was charged to a replica (released when the request ends)."""

    blocks: tuple[int, ...]
    addon: str | None
    charged: tuple[ReplicaState, int] | None = None


@dataclass(eq=False)
class ReplicaState:
    """What the gateway knows about one replica's cache."""

    routed: OrderedDict[int, float] = field(default_factory=OrderedDict)  # block key -> when last routed (LRU)
    reported: set[int] = field(default_factory=set)  # precise: blocks the replica's KV events say it holds
    addons: dict[str, float] = field(default_factory=dict)  # addon -> when last routed here
    prefill_blocks: int = 0  # prompt blocks sent here and not cached there, of requests still in progress
    recent: float = 0.0  # requests routed here, decayed with a RECENT_HALF_LIFE_SECONDS half-life
    recent_at: float = 0.0

    def recent_load(self, now: float) -> float:
        return float(self.recent * 0.5 ** ((now - self.recent_at) / RECENT_HALF_LIFE_SECONDS))

    events_supported: bool = True


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


def text_blocks(chat: bool, body: dict[str, Any], addon: str | None) -> tuple[int, ...]:
    """The approximate key: hash chain over `TEXT_BLOCK_CHARS`-character blocks of the prompt (full blocks only)."""
    if chat:
        parts = []
        for message in body.get("messages") or []:
            content = message.get("content")
            parts.append(f"{message.get('role')}\x1f{content if isinstance(content, str) else repr(content)}\x1e")
        text = "".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        text = prompt if isinstance(prompt, str) else repr(prompt)
    count = min(len(text) // TEXT_BLOCK_CHARS, MAX_TEXT_BLOCKS)
    parent = hash(addon or BASE_ADAPTER)
    out = []
    for i in range(count):
        # Python's string hash (SipHash, salted per process): the index lives and dies with this process
        parent = hash((parent, text[i * TEXT_BLOCK_CHARS : (i + 1) * TEXT_BLOCK_CHARS]))
        out.append(parent)
    return tuple(out)


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
        self.tokenizer = tokenizer
        self.load_factor = load_factor
        self.states: dict[str, ReplicaState] = {}
        # addon -> the replica that served it last: its adapter is surely loaded there (engines keep only max_loras)
        self.addon_home: dict[str, str] = {}
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- per request -----------------------------------------------------------------------------------------
    def key(self, chat: bool, body: dict[str, Any], addon: str | None) -> RouteKey | None:
        """The request's route key; None in least_outstanding mode (no work at all)."""
        if self.mode == "least_outstanding":
            return None
        if self.mode == "precise" and self.tokenizer is not None:
            try:
                tokens = self.tokenizer.tokens(chat, body)
            except Exception:  # a template that fails here fails in the engine too: route by load
                tokens = None
            if tokens is not None:
                # TensorRT-LLM's V1 block keys, as its KV-aware router computes them (prefix_cache.py)
                task_id = lora_int_id(addon) if addon else None
                return RouteKey(tuple(prompt_block_hashes(tokens, task_id)), addon)
            return RouteKey((), addon)
        return RouteKey(text_blocks(chat, body, addon), addon)

    def pick(self, key: RouteKey | None, exclude: Upstream | Collection[Upstream] | None = None) -> Upstream | None:
        """The replica for this request, and (cache-aware modes) remember that its prefix went there."""
        if key is None:
            return self.pool.pick(exclude)
        excluded = excluded_set(exclude)
        candidates = [u for u in self.pool.ready if u not in excluded]
        if not candidates:
            return None
        if len(self.states) > len(self.pool.ready):
            self._forget_gone()
        self.release(key)  # a retry: the first replica's charge goes
        now = time.monotonic()
        total = sum(u.outstanding for u in candidates)
        bound = math.ceil(self.load_factor * (total + 1) / len(candidates))
        self._turn += 1
        count = len(candidates)
        recent = {}
        for upstream in candidates:
            known = self.states.get(upstream.url)
            recent[upstream.url] = known.recent_load(now) if known is not None else 0.0
        recent_bound = self.load_factor * sum(recent.values()) / count + RECENT_SLACK
        blocks = len(key.blocks)
        best: Upstream | None = None
        best_cost = math.inf
        best_new = blocks
        for i in range(count):
            upstream = candidates[(self._turn + i) % count]
            load = recent[upstream.url]
            if upstream.outstanding >= bound or load >= recent_bound:
                continue
            state = self.states.get(upstream.url)
            new = blocks - (self._matched(state, key.blocks, now) if state is not None else 0)
            # the prefill this request would cost there, the prefill already queued there, the running requests,
            # and an adapter load if the addon was not served there lately
            cost = new + DECODE_COST_BLOCKS * upstream.outstanding + RECENT_COST_BLOCKS * load
            if state is not None:
                cost += state.prefill_blocks
            if key.addon is not None and (
                self.addon_home.get(key.addon) != upstream.url
                or now - (state.addons.get(key.addon, -math.inf) if state is not None else -math.inf)
                > ADDON_AFFINITY_SECONDS
            ):
                cost += ADDON_LOAD_COST_BLOCKS
            if cost < best_cost:
                best, best_cost, best_new = upstream, cost, new
        if best is None:  # every replica at the bound (cannot happen with load_factor >= 1): the least busy
            best = min(candidates, key=lambda u: u.outstanding)
        state = self._remember(best, key, now)
        state.recent, state.recent_at = state.recent_load(now) + 1.0, now
        state.prefill_blocks += best_new
        key.charged = (state, best_new)
        return best

    def release(self, key: RouteKey | None) -> None:
        """The request ended (or is retried elsewhere): its prefill no longer weighs on the replica."""
        if key is not None and key.charged is not None:
            state, blocks = key.charged
            state.prefill_blocks = max(0, state.prefill_blocks - blocks)
            key.charged = None

    def _matched(self, state: ReplicaState, blocks: tuple[int, ...], now: float) -> int:
        matched = 0
        routed, reported = state.routed, state.reported
        precise = self.mode == "precise" and state.events_supported
        for block in blocks:
            if precise and block in reported:
                matched += 1
                continue
            when = routed.get(block)
            if when is None or (precise and now - when > PENDING_SECONDS):
                break
            matched += 1
        return matched

    def _remember(self, upstream: Upstream, key: RouteKey, now: float) -> ReplicaState:
        state = self.states.get(upstream.url)
        if state is None:
            state = self.states[upstream.url] = ReplicaState()
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

    def _forget_gone(self) -> None:
        ready = {u.url for u in self.pool.ready}
        for url in list(self.states):
            if url not in ready:
                log.info("routing: forgetting the cache of %s (left the ready set)", url)
                del self.states[url]
                for addon in [a for a, home in self.addon_home.items() if home == url]:
                    del self.addon_home[addon]

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
        state = self.states.get(upstream.url)
        if state is None:
            state = self.states[upstream.url] = ReplicaState()
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
        apply_events(state, events)


def apply_events(state: ReplicaState, events: Any) -> None:
    """Fold trtllm-serve KV cache events (stored / removed / created) into what a replica holds."""
    if not isinstance(events, list):
        return
    reported = state.reported
    for event in events:
        data = event.get("data") if isinstance(event, dict) else None
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
                state.routed.pop(block_hash, None)  # evicted: no longer "routed there, not reported yet"
        elif kind == "created":  # the engine (re)started: whatever was known is gone
            reported.clear()
            state.routed.clear()
