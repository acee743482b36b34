"""The CPU engine's KV cache block reuse, and the block keys the gateway's precise routing shares with it.

As in TensorRT-LLM's KV cache manager (`kv_cache_config.enable_block_reuse`): a prompt is cut into blocks of
`TOKENS_PER_BLOCK` tokens and each block is keyed by TensorRT-LLM's V1 block key (`block_hash`: the block's token
ids, its parent block's key, and the LoRA task id of an adapter request, so the base model and every addon have their
own blocks). A request whose leading blocks are cached starts its prefill after them. Cached blocks are evicted least
recently used, leaves before the blocks they extend, within the engine's KV budget. Every block stored and removed is
an event in trtllm-serve's shape (`POST /kv_cache_events`, drained on read), which the gateway's precise routing
follows: with the same keys, it routes by what trtllm-serve itself reports.

Which blocks (the catalog pins TensorRT-LLM 1.3.0rc19; read in the newest stored versions, see docs/gateway.md "The
engine contract"): the KV cache manager keys a request's tokens less the last one, whose KV is not computed yet
(`storeContextBlocks` in cpp/tensorrt_llm/batch_manager/kvCacheManager.cpp stores the full blocks of `prompt[:-1]`
once the prefill is done; its `storeBlocksForReuse`, when the request ends, stores the blocks of prompt and output less
the last token, a partial last block included: `chopVectorIntoBlocks(uniqueTokens, size - 1, tokensPerBlock, true)`;
read at commit b35ac1b6). The engine here does both (`sequence_block_hashes` for the second), so a chat's next turn,
whose prompt holds the previous answer, reuses the answer's blocks. A cached block whose tokens start the prompt's
next block is reused for as many tokens as agree (trtllm's partial reuse, `enable_partial_reuse` on by default): that
is how a stored partial last block is reused. TensorRT-LLM's own KV-aware router
(`BlockHashMixin._compute_block_hashes` in tensorrt_llm/serve/router.py, commit 00895e31) keys `prompt[:-1]` too, the
last block partial: `prompt_block_hashes` does the same, so its full blocks are the ones the engine reports.

Pure Python: the tensors are opaque here, so the gateway imports this module (for the keys) without torch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOKENS_PER_BLOCK = 32  # trtllm's default KV cache block size (KvCacheConfig.tokens_per_block)
# trtllm's default is 0 (no events); the CPU engine keeps the last 4096 undrained events (the oldest are dropped).
EVENT_BUFFER_MAX_SIZE = 4096
PRIORITY_DEFAULT = 35  # trtllm's default retention priority, reported in stored events
BASE_ADAPTER = "__base__"

# TensorRT-LLM's V1 block key, `BlockKeyHasher::hash` (cpp/tensorrt_llm/batch_manager/blockKey.cpp, read at commit
# 0bd2980d75e7c5dc45524c1290555b92acf0e478) and its Python mirror `hash_v1_block_key`
# (tensorrt_llm/runtime/kv_cache_hash.py, commit 991de58c52acf039626cabc30e7c4f4106d222fd); the catalog pins
# TensorRT-LLM 1.3.0rc19 (byoc/catalogs/images.yaml), whose tag the stored copies do not name. C++ size_t and
# uint32_t arithmetic wraps, so every step here is masked to 64 or 32 bits.
_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_PARENT_MULTIPLIER = 0xBF58476D1CE4E5B9
_MIX32_MULTIPLIER = 0x45D9F3B
_MIX64_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_GOLDEN = 0x9E3779B9  # the boost::hash_combine constant


def _combine(seed: int, mixed: int) -> int:
    """boost::hash_combine in 64 bits: `seed ^ (mixed + (seed << 6) + (seed >> 2))`."""
    return (seed ^ ((mixed + (seed << 6) + (seed >> 2)) & _MASK64)) & _MASK64


def _mix_token(token_id: int, seed: int) -> int:
    """A token id: truncated to uint32, scrambled, and the golden constant added in 32 bits (both operands are
    uint32_t in the C++), before it is combined into the 64-bit seed."""
    x = token_id & _MASK32
    for _ in range(2):
        x = (((x >> 16) ^ x) * _MIX32_MULTIPLIER) & _MASK32
    x = (x >> 16) ^ x
    return _combine(seed, (x + _GOLDEN) & _MASK32)


def _mix_id(value: int, seed: int) -> int:
    """A 64-bit id (the LoRA task id): splitmix64's finalizer, then combined with the golden constant in 64 bits."""
    x = value & _MASK64
    x = ((x ^ (x >> 30)) * _MIX64_MULTIPLIERS[0]) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX64_MULTIPLIERS[1]) & _MASK64
    x ^= x >> 31
    return _combine(seed, x + _GOLDEN)


def block_hash(tokens: Sequence[int], parent_hash: int = 0, lora_task_id: int | None = None) -> int:
    """TensorRT-LLM's V1 key of one block: an unsigned 64-bit integer, as trtllm-serve reports it in KV events.

    `parent_hash` is the key of the block before (0 for a prompt's first block); `lora_task_id` is the request's
    `lora_request.lora_int_id` (None for the base model). No cache salt (byoc sends none: the C++ key of a salted
    request mixes `std::hash` of the salt, not reproducible outside the engine's process) and no token extra ids
    (those are for prompt tables).
    """
    seed = (len(tokens) ^ (parent_hash * _PARENT_MULTIPLIER)) & _MASK64
    for token_id in tokens:
        seed = _mix_token(token_id, seed)
    if lora_task_id is not None:
        seed = _mix_id(lora_task_id, seed)
    return seed


def block_hashes(
    tokens: Sequence[int],
    lora_task_id: int | None = None,
    tokens_per_block: int = TOKENS_PER_BLOCK,
    allow_partial: bool = False,
) -> list[int]:
    """The chained keys of `tokens` cut into blocks of `tokens_per_block`, each block's parent the one before.

    A partial last block has a key only with `allow_partial` (as `chopVectorIntoBlocks(..., allowPartial)`).
    About 10 us per 32-token block.
    """
    count = len(tokens) // tokens_per_block
    if allow_partial and len(tokens) % tokens_per_block:
        count += 1
    out: list[int] = []
    parent = 0
    for i in range(count):
        parent = block_hash(tokens[i * tokens_per_block : (i + 1) * tokens_per_block], parent, lora_task_id)
        out.append(parent)
    return out


def prompt_block_hashes(
    prompt: Sequence[int], lora_task_id: int | None = None, tokens_per_block: int = TOKENS_PER_BLOCK
) -> list[int]:
    """A prompt's keys as TensorRT-LLM's KV-aware router computes them (tensorrt_llm/serve/router.py): the prompt
    less its last token, the last block partial. The full blocks are the ones the engine stores after the prefill."""
    return block_hashes(prompt[:-1], lora_task_id, tokens_per_block, allow_partial=True)


def context_block_hashes(
    prompt: Sequence[int], lora_task_id: int | None = None, tokens_per_block: int = TOKENS_PER_BLOCK
) -> list[int]:
    """The keys of the blocks the engine reuses and stores for a prompt (`storeContextBlocks`): the full blocks of
    the prompt less its last token, which is always computed (it gives the first logits)."""
    return block_hashes(prompt[:-1], lora_task_id, tokens_per_block)


def sequence_block_hashes(
    tokens: Sequence[int], lora_task_id: int | None = None, tokens_per_block: int = TOKENS_PER_BLOCK
) -> list[int]:
    """The keys of the blocks the engine stores when a request ends (`storeBlocksForReuse`): its prompt and output
    less the last token (whose KV is never computed), the last block partial."""
    return block_hashes(tokens[:-1], lora_task_id, tokens_per_block, allow_partial=True)


@dataclass(eq=False)
class Block:
    """One cached block: its key, its parent's key, its tokens, the adapter it was computed with (its blocks go when
    the adapter is unloaded) and its KV tensors (per layer: keys, values)."""

    block_hash: int
    parent: int | None
    tokens: tuple[int, ...]
    adapter: str
    kv: Any
    children: set[int] = field(default_factory=set)
    lora_task_id: int | None = None  # part of its key; a partial match must not cross adapters


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
        window_size: int = 0,
    ) -> None:
        self.capacity_blocks = capacity_blocks
        # trtllm reports the attention window its blocks belong to: with full attention, the maximum sequence length
        self.window_size = window_size
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

    def match_partial(
        self, parent: int | None, tokens: Sequence[int], lora_task_id: int | None, counted: bool
    ) -> tuple[Block, int] | None:
        """A cached block after `parent` (None: a first block) whose leading tokens agree with `tokens`, the next
        block's tokens, and how many agree: the most of any such block, at least one. As trtllm's partial reuse
        (`findMatchingBlock` with `enable_partial_reuse`), the agreeing tokens' KV is copied, not shared. `counted`:
        `tokens` is a block `match` counted as missed (a full one), now a reused one."""
        with self._lock:
            if parent is None:
                candidates = [b for b in self._blocks.values() if b.parent is None]
            else:
                holder = self._blocks.get(parent)
                candidates = [self._blocks[c] for c in holder.children if c in self._blocks] if holder else []
            best: tuple[Block, int] | None = None
            for block in candidates:
                if block.lora_task_id != lora_task_id:
                    continue
                agree = 0
                for mine, theirs in zip(tokens, block.tokens, strict=False):
                    if mine != theirs:
                        break
                    agree += 1
                if agree and (best is None or agree > best[1]):
                    best = (block, agree)
            if best is not None:
                self._blocks.move_to_end(best[0].block_hash)
                self.stats.reused_blocks += 1
                if counted:
                    self.stats.missed_blocks -= 1
            return best

    def store(
        self,
        hashes: Sequence[int],
        tokens: Sequence[int],
        kv_of_block: Any,
        start: int = 0,
        adapter: str = BASE_ADAPTER,
        lora_task_id: int | None = None,
    ) -> int:
        """Keep blocks `start..len(hashes)-1` of `tokens` computed with `adapter` (the last one may be partial);
        `kv_of_block(i)` gives block i's tensors. Returns how many were new. Stored blocks become one `stored` event
        (trtllm's `KVCacheEventSerializer` in tensorrt_llm/_utils.py: parent_hash and the blocks in order, each with
        its token ids; `lora_id` is left out there, so here too)."""
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
                self._blocks[block_hash] = Block(
                    block_hash, parent, chunk, adapter, kv_of_block(i), lora_task_id=lora_task_id
                )
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
        with self._lock:
            removed: list[int] = []
            for block in [b for b in self._blocks.values() if b.adapter == adapter and b.parent is None]:
                self._remove_locked(block.block_hash, removed)  # and its descendants: same adapter, same chain
            if removed:
                self._event({"type": "removed", "block_hashes": removed})
        return len(removed)

    # -- KV tensors (torch, imported by the engine only) -----------------------------------------------------
    @staticmethod
    def restore(blocks: Sequence[Block], partial: tuple[Block, int] | None = None) -> Any:
        """A transformers `DynamicCache` holding `blocks` in order, then the first tokens of a partially matched
        block: the prefix a prefill continues from."""
        import torch
        from transformers import DynamicCache

        parts: list[list[tuple[Any, Any]]] = [b.kv for b in blocks]
        if partial is not None:
            block, agree = partial
            parts.append([(k[:, :, :agree, :], v[:, :, :agree, :]) for k, v in block.kv])
        cache = DynamicCache()
        for layer in range(len(parts[0])):
            keys = torch.cat([kv[layer][0] for kv in parts], dim=2)
            values = torch.cat([kv[layer][1] for kv in parts], dim=2)
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
        self._events.append({"event_id": self._event_id, "data": data, "window_size": self.window_size})
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
