"""The CPU engine's KV cache block reuse, and the block hashes the gateway's precise routing shares with it.

As in TensorRT-LLM's KV cache manager (`kv_cache_config.enable_block_reuse`): a prompt is cut into blocks of
`TOKENS_PER_BLOCK` tokens; each full block is keyed by a hash chain (the block's tokens and its parent block's key,
the first block seeded with the LoRA adapter, so the base model and every addon have their own blocks). A request
whose leading blocks are cached starts its prefill after them. Cached blocks are evicted least recently used, leaves
before the blocks they extend, within the engine's KV budget. Every block stored and removed is an event in
trtllm-serve's shape (`POST /kv_cache_events`, drained on read), which the gateway's precise routing follows.

Pure Python: the tensors are opaque here, so the gateway imports this module (for `block_hashes`) without torch.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOKENS_PER_BLOCK = 32  # trtllm's default KV cache block size (KvCacheConfig.tokens_per_block)
# trtllm's default is 0 (no events); the CPU engine keeps the last 4096 undrained events (the oldest are dropped).
EVENT_BUFFER_MAX_SIZE = 4096
PRIORITY_DEFAULT = 35  # trtllm's default retention priority, reported in stored events
BASE_ADAPTER = "__base__"


def _root(adapter: str) -> bytes:
    return hashlib.blake2b(b"byoc-kv\x00" + adapter.encode(), digest_size=8).digest()


def block_hashes(
    tokens: Sequence[int], adapter: str = BASE_ADAPTER, block_size: int = TOKENS_PER_BLOCK, limit: int | None = None
) -> list[int]:
    """The hash chain of the full blocks of `tokens` (a partial last block has no key), at most `limit` of them.

    Each hash is an unsigned 64-bit integer: blake2b-64 of the parent block's hash and the block's token ids (int32),
    the first block's parent being a digest of `adapter` (the base model: `BASE_ADAPTER`). About 1 us per block.
    """
    count = len(tokens) // block_size
    if limit is not None:
        count = min(count, limit)
    parent = _root(adapter)
    out: list[int] = []
    for i in range(count):
        chunk = array("i", tokens[i * block_size : (i + 1) * block_size]).tobytes()
        parent = hashlib.blake2b(parent + chunk, digest_size=8).digest()
        out.append(int.from_bytes(parent, "big"))
    return out


@dataclass(eq=False)
class Block:
    """One cached block: its key, its parent's key, its tokens and its KV tensors (per layer: keys, values)."""

    block_hash: int
    parent: int | None
    tokens: tuple[int, ...]
    kv: Any
    children: set[int] = field(default_factory=set)


@dataclass
class ReuseStats:
    """Cumulative, as trtllm's kvCacheStats: blocks taken from the cache and prompt blocks that had to be computed."""

    reused_blocks: int = 0
    missed_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.reused_blocks + self.missed_blocks
        return self.reused_blocks / total if total else 0.0


class PrefixCache:
    """Reusable KV blocks, least recently used first out, within `capacity_blocks`.

    Thread-safe: the generation thread matches and stores, the event loop drains events. `capacity_blocks` is the
    budget the engine's KV cache has left once the blocks of running sequences are counted (`trim`).
    """

    def __init__(
        self,
        capacity_blocks: int,
        block_size: int = TOKENS_PER_BLOCK,
        event_buffer_max_size: int = EVENT_BUFFER_MAX_SIZE,
    ) -> None:
        self.capacity_blocks = capacity_blocks
        self.block_size = block_size
        self.stats = ReuseStats()
        self._blocks: OrderedDict[int, Block] = OrderedDict()  # oldest use first
        self._events: deque[dict[str, Any]] = deque(maxlen=max(1, event_buffer_max_size))
        self._event_id = 0
        self._lock = threading.Lock()
        self._event(
            {"type": "created", "num_blocks_per_cache_level": [capacity_blocks, 0]},
        )

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    # -- the generation thread -------------------------------------------------------------------------------
    def match(self, hashes: Sequence[int]) -> list[Block]:
        """The cached blocks of the longest cached prefix of `hashes` (marked used), and the reuse counters."""
        with self._lock:
            found: list[Block] = []
            for block_hash in hashes:
                block = self._blocks.get(block_hash)
                if block is None:
                    break
                found.append(block)
            # children before parents: the most recently used end of the order holds the root, so leaves go first
            for block in reversed(found):
                self._blocks.move_to_end(block.block_hash)
            self.stats.reused_blocks += len(found)
            self.stats.missed_blocks += len(hashes) - len(found)
            return found

    def store(self, hashes: Sequence[int], tokens: Sequence[int], kv_of_block: Any, start: int = 0) -> int:
        """Keep blocks `start..len(hashes)-1` of a prompt; `kv_of_block(i)` gives block i's tensors. Returns how
        many were new. Stored blocks become one `stored` event (trtllm: parent_hash and the blocks in order)."""
        stored: list[dict[str, Any]] = []
        first_parent: int | None = None
        with self._lock:
            for i in range(start, len(hashes)):
                block_hash = hashes[i]
                parent = hashes[i - 1] if i > 0 else None
                if parent is not None and parent not in self._blocks:
                    break  # evicted while this prompt ran: its descendants would be unreachable
                if block_hash in self._blocks:
                    continue
                chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
                self._blocks[block_hash] = Block(block_hash, parent, chunk, kv_of_block(i))
                if parent is not None:
                    self._blocks[parent].children.add(block_hash)
                if not stored:
                    first_parent = parent
                stored.append(
                    {
                        "type": "stored_block",
                        "block_hash": block_hash,
                        "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in chunk],
                        "cache_level": 0,
                        "priority": PRIORITY_DEFAULT,
                    }
                )
            for block_hash in reversed(hashes):  # children before parents, as in `match`
                if block_hash in self._blocks:
                    self._blocks.move_to_end(block_hash)
            if stored:
                self._event({"type": "stored", "parent_hash": first_parent, "blocks": stored})
            self._trim_locked(self.capacity_blocks)
        return len(stored)

    def trim(self, capacity_blocks: int) -> None:
        """Set the budget (blocks not held by running sequences) and evict down to it."""
        with self._lock:
            self.capacity_blocks = max(0, capacity_blocks)
            self._trim_locked(self.capacity_blocks)

    def _trim_locked(self, capacity: int) -> None:
        removed: list[int] = []
        while len(self._blocks) > capacity:
            oldest = next(iter(self._blocks))
            self._remove_locked(oldest, removed)
        if removed:
            self._event({"type": "removed", "block_hashes": removed})

    def _remove_locked(self, block_hash: int, removed: list[int]) -> None:
        block = self._blocks.pop(block_hash, None)
        if block is None:
            return
        removed.append(block_hash)
        for child in list(block.children):
            self._remove_locked(child, removed)  # unreachable without their parent
        if block.parent is not None and block.parent in self._blocks:
            self._blocks[block.parent].children.discard(block_hash)

    def clear_adapter(self, adapter: str) -> int:
        """Remove every block of one adapter (it was unloaded). Returns how many."""
        root = _root(adapter)
        first_hashes = set()
        with self._lock:
            for block in self._blocks.values():
                if block.parent is None and block.tokens:
                    chunk = array("i", block.tokens).tobytes()
                    if int.from_bytes(hashlib.blake2b(root + chunk, digest_size=8).digest(), "big") == block.block_hash:
                        first_hashes.add(block.block_hash)
            removed: list[int] = []
            for block_hash in first_hashes:
                self._remove_locked(block_hash, removed)
            if removed:
                self._event({"type": "removed", "block_hashes": removed})
        return len(removed)

    # -- KV tensors (torch, imported by the engine only) -----------------------------------------------------
    @staticmethod
    def restore(blocks: Sequence[Block]) -> Any:
        """A transformers `DynamicCache` holding `blocks` in order: the prefix a prefill continues from."""
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        layers = len(blocks[0].kv)
        for layer in range(layers):
            keys = torch.cat([b.kv[layer][0] for b in blocks], dim=2)
            values = torch.cat([b.kv[layer][1] for b in blocks], dim=2)
            cache.update(keys, values, layer)
        return cache

    def block_kv(self, cache: Any, index: int) -> list[tuple[Any, Any]]:
        """Block `index`'s keys and values, per layer, copied out of a `DynamicCache` ([1, kv_heads, block, dim])."""
        start, end = index * self.block_size, (index + 1) * self.block_size
        return [
            (layer.keys[:, :, start:end, :].clone(), layer.values[:, :, start:end, :].clone()) for layer in cache.layers
        ]

    # -- the event loop --------------------------------------------------------------------------------------
    def drain_events(self) -> list[dict[str, Any]]:
        """The events since the last call, oldest first (trtllm-serve's `POST /kv_cache_events`)."""
        with self._lock:
            taken = list(self._events)
            self._events.clear()
        return taken

    def _event(self, data: dict[str, Any]) -> None:
        self._events.append({"event_id": self._event_id, "data": data, "window_size": 0})
        self._event_id += 1


class PrefixCacheMetrics:
    """The reuse counters on the engine's /prometheus/metrics, read at scrape time (no per-request cost)."""

    def __init__(self, cache: PrefixCache, registry: Any) -> None:
        self.cache = cache
        registry.register(self)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.cache.stats
        yield CounterMetricFamily(
            "trtllm_kv_cache_reused_blocks", "Prompt KV blocks taken from the cache.", value=stats.reused_blocks
        )
        yield CounterMetricFamily(
            "trtllm_kv_cache_missed_blocks", "Prompt KV blocks computed (not in the cache).", value=stats.missed_blocks
        )
        yield GaugeMetricFamily("trtllm_kv_cache_hit_rate", "reused / (reused + missed) blocks.", value=stats.hit_rate)
        yield GaugeMetricFamily("trtllm_kv_cache_cached_blocks", "Reusable blocks held.", value=len(self.cache))
