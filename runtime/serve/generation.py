"""The CPU engine's generation loop: a Hugging Face causal LM (plus PEFT LoRA adapters) stepped token by token.

One worker thread owns the model. Each iteration advances every active request by one token, as TensorRT-LLM's
in-flight batching does (its executor schedules context and generation requests together each iteration,
tensorrt_llm/_torch/pyexecutor/py_executor.py, 1.3.0rc19): a new request's prompt is computed in a forward pass of its
own (prefill), then every request past its prompt is stepped in ONE forward pass over the batch (decode). A decode
step is bound by reading the weights, not by arithmetic, so its cost grows little with the batch: on the benchmarks'
6-layer model one decode of 8 sequences takes ~10 ms where 8 separate ones take ~48 ms (docs/performance.md). That
is what lets work that fills idle slots (the Batch API) cost online requests little, on a GPU and here alike. Each
sequence keeps its own KV cache (its adapter, its prefix-cache blocks); the batch's cache is assembled from them,
left-padded, for the step and the new token's keys and values go back to each. Requests beyond `max_batch_size`, or
beyond the KV budget, wait in the queue; that is what the iteration stats report, in trtllm-serve's JSON shape.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram

from runtime.serve.addons import MAX_LORA_RANK, LoraSlots
from runtime.serve.logs import exception_summary
from runtime.serve.prefix_cache import (
    EVENT_BUFFER_MAX_SIZE,
    PrefixCache,
    PrefixCacheMetrics,
    ReuseStats,
    context_block_hashes,
    sequence_block_hashes,
)
from runtime.serve.structured import Grammars

log = logging.getLogger("byoc.engine")
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter forward pass
TOKENS_PER_BLOCK = 32  # trtllm's default KV cache block size (KvCacheConfig.tokens_per_block)
STATS_KEPT = 1000
# Fault injection for tests (never set in a deployment): every answer that reaches this many generated tokens fails
# there, as an engine error mid-stream would; shorter answers are served normally.
FAULT_AT_TOKEN_ENV = "BYOC_ENGINE_FAULT_AT_TOKEN"


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    min_p: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (-100..100)
    grammar: Any = None  # an xgrammar CompiledGrammar: only tokens that keep the answer valid may be sampled


@dataclass(frozen=True)
class Delta:
    text: str
    completion_tokens: int = 0  # generated so far (trtllm-serve's continuous usage counts them per chunk)


@dataclass(frozen=True)
class Finished:
    text: str  # the last piece of text not yet sent
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from reused blocks (usage.prompt_tokens_details)


@dataclass(frozen=True)
class Failed:
    message: str


Event = Delta | Finished | Failed


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    sampling: Sampling
    adapter: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event]
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    cache: Any = None
    generator: torch.Generator | None = None
    counts: dict[int, int] = field(default_factory=dict)
    sent: int = 0  # characters of text already sent
    scheduled: float | None = None
    first_token: float | None = None
    processors: list[Any] = field(default_factory=list)  # transformers logits processors, in their order
    warpers: list[Any] = field(default_factory=list)  # transformers logits warpers, after temperature/top-k/top-p
    matcher: Any = None  # xgrammar GrammarMatcher
    bitmask: Any = None
    lora_task_id: int | None = None  # lora_request.lora_int_id: part of the KV block keys (None: the base model)
    cached_tokens: int = 0  # prompt tokens taken from reused KV blocks

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class EngineMetrics:
    """trtllm-serve's Prometheus metrics (tensorrt_llm/metrics/collector.py names, buckets and labels)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine_type": "byoc-cpu"}
        names = list(labels)
        r = self.registry
        self.success = Counter(
            "trtllm_request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=r,
        )
        self.e2e = Histogram(
            "trtllm_e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            names,
            buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0),
            registry=r,
        )
        self.ttft = Histogram(
            "trtllm_time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
            registry=r,
        )
        self.tpot = Histogram(
            "trtllm_time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            names,
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
            registry=r,
        )
        self.queue = Histogram(
            "trtllm_request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            names,
            buckets=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0),
            registry=r,
        )
        self._labels = labels

    def finished(self, sequence: Sequence, reason: str, now: float) -> None:
        labels = self._labels
        self.success.labels(**labels, finished_reason=reason).inc()
        self.e2e.labels(**labels).observe(now - sequence.arrival)
        if sequence.first_token is not None:
            self.ttft.labels(**labels).observe(sequence.first_token - sequence.arrival)
            if len(sequence.generated) > 1:
                self.tpot.labels(**labels).observe((now - sequence.first_token) / (len(sequence.generated) - 1))
        if sequence.scheduled is not None:
            self.queue.labels(**labels).observe(sequence.scheduled - sequence.arrival)


class Generator:
    """Owns the model and the worker thread; `submit` from the event loop, events come back on the loop."""

    def __init__(
        self,
        model_dir: Path,
        addons: dict[str, Path],
        model_name: str,
        max_batch_size: int,
        kv_cache_tokens: int,
        threads: int,
        enable_block_reuse: bool = True,
        event_buffer_max_size: int = EVENT_BUFFER_MAX_SIZE,
        max_loras: int | None = None,
        max_lora_rank: int = MAX_LORA_RANK,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        refuse_quantized(model_dir)
        torch.set_num_threads(threads)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        # float32 on CPU: bfloat16 matmuls are emulated on most CPUs and slower
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        self.model = model
        self.addons = dict(addons)
        self.config: Any = model.config
        self.max_context = int(getattr(self.config, "max_position_embeddings", 2048))
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self.eos_ids = self._eos_ids()
        self.metrics = EngineMetrics(model_name)
        # LoRA adapters: at most max_loras in the model, the others loaded on first use; added and removed live
        self.lora = LoraSlots(model_dir, self.addons, max_loras, max_lora_rank, self.metrics.registry, model_name)
        self.model = self.lora.load_initial(self.model)
        self.max_batch_size = max_batch_size
        self.max_blocks = max(1, kv_cache_tokens // TOKENS_PER_BLOCK)
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._wake = threading.Condition()
        self._stats: deque[dict[str, Any]] = deque(maxlen=STATS_KEPT)
        self._iteration = 0
        self._alloc_total = 0
        self._decode_put_off = False  # the last iteration computed prompts only (see _run)
        # trtllm's kv_cache_config.enable_block_reuse: prompt blocks kept and reused across requests (prefix_cache.py)
        self.prefix_cache: PrefixCache | None = None
        if enable_block_reuse:
            self.prefix_cache = PrefixCache(
                self.max_blocks, event_buffer_max_size=event_buffer_max_size, window_size=self.max_context
            )
            PrefixCacheMetrics(self.prefix_cache, self.metrics.registry)
        fault = os.environ.get(FAULT_AT_TOKEN_ENV, "")
        self._fault_at: int | None = int(fault) if fault.isdigit() else None
        self._running = True
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- called from the event loop --------------------------------------------------------------------------
    @property
    def grammars(self) -> Grammars:
        """xgrammar for this tokenizer, made on the first request that asks for structured output."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer, self.vocab_size)
            return self._grammars

    def submit(self, sequence: Sequence) -> None:
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()

    def drain_stats(self) -> list[dict[str, Any]]:
        """Iteration stats since the last call, as trtllm-serve's /metrics returns them (it drains a queue too)."""
        taken: list[dict[str, Any]] = []
        while self._stats:
            taken.append(self._stats.popleft())
        return taken

    def wake(self) -> None:
        """Tell the generation thread there is work besides requests (an addon to unload)."""
        with self._wake:
            self._wake.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the generation thread and wait (up to `timeout` seconds) for the pass it is computing to end, so
        that nothing touches the model or its caches once this returns."""
        with self._wake:
            self._running = False
            self._wake.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the worker thread -----------------------------------------------------------------------------------
    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / TOKENS_PER_BLOCK)

    def _to_completion(self, s: Sequence) -> int:
        """KV blocks `s` holds once it has generated all it may: its prompt and max_tokens, within the context."""
        return self._blocks(min(len(s.prompt) + s.sampling.max_tokens, self.max_context))

    def _admit(self) -> int:
        """Move waiting requests into the batch, in arrival order, while there is room in it and the KV budget holds
        every running request to its completion, as trtllm-serve's default capacity scheduler does
        (GUARANTEED_NO_EVICT: a request is scheduled only if the blocks it needs to its last token are free beside
        what the running ones will still need; cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp,
        `getRemainingBlocksToCompletion`). So no running sequence ever outgrows the budget, and a request without
        max_tokens (which then means the rest of the context) holds room for all of it. One request is let in
        even if it alone exceeds the budget, so that it is answered rather than queued forever."""
        used = sum(self._blocks(s.length + 1) for s in self._active)
        reserved = sum(self._to_completion(s) for s in self._active)
        admitted = 0
        with self._wake:
            while self._waiting and len(self._active) < self.max_batch_size:
                head = self._waiting[0]
                if head.cancelled:
                    self._waiting.popleft()
                    continue
                need = self._to_completion(head)
                if reserved + need > self.max_blocks and self._active:
                    break
                self._waiting.popleft()
                head.scheduled = time.perf_counter()
                self._active.append(head)
                reserved += need
                used += self._blocks(len(head.prompt) + 1)
                admitted += 1
        if self.prefix_cache is not None:
            # as in trtllm, a running sequence's full prompt blocks are the cached blocks (counted once); the rest of
            # its blocks (the partial last one, its output) are its own: the cache lives in what they leave
            shared = sum((len(s.prompt) - 1) // TOKENS_PER_BLOCK for s in self._active)
            self.prefix_cache.trim(self.max_blocks - used + shared)
        return admitted

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while self._running and not self._waiting and not self._active and not self.lora.pending_unload:
                        self._wake.wait()
                    if not self._running:
                        return
                self.model = self.lora.apply_unloads(self.model, {s.adapter for s in self._active}, self.prefix_cache)
                self._admit()
                started = time.perf_counter()
                context = sum(1 for s in self._active if s.cache is None)
                context_tokens = sum(len(s.prompt) for s in self._active if s.cache is None)
                completed = 0
                # Context requests first, one forward pass each (their first token goes out at once); then, if no
                # request came meanwhile, every generation request in one forward pass. A request that arrives while
                # a pass runs waits for that one pass only, then its prompt is computed: as in trtllm-serve, where
                # new requests are fetched before every iteration and a context request rides in the next forward
                # pass beside the generation requests (docs/source/developer-guide/overview.md, "During each
                # iteration": request fetching, scheduling, model execution). Computing the decode pass as well
                # before looking again would make a new request wait for two passes, which trtllm-serve's fused
                # iteration does not. The decode pass is put off once at most: arrivals that keep coming must not
                # starve the requests already generating (trtllm-serve's iteration never leaves them out).
                prompts = [s for s in self._active if s.cache is None and not s.cancelled]
                for sequence in prompts:
                    completed += self._guarded(sequence, lambda s=sequence: self._step(s))
                if prompts and not self._decode_put_off:
                    self._decode_put_off = True
                    completed += self._retire_cancelled()
                    self._record(started, context, context_tokens, completed, len(prompts), 0)
                    continue
                self._decode_put_off = False
                decoding = [s for s in self._active if not s.cancelled]
                for group in _padding_bounded_groups(decoding):
                    if len(group) > 1:
                        rows = self._decode_batch(group)
                        for sequence, row in zip(group, rows, strict=True):
                            completed += self._guarded(sequence, lambda s=sequence, r=row: self._step(s, r))
                    else:
                        completed += self._guarded(group[0], lambda s=group[0]: self._step(s))
                completed += self._retire_cancelled()
                # a prompt computed in this iteration may be decoded in it too: scheduled once, generation as well
                scheduled = len({id(s) for s in prompts} | {id(s) for s in decoding})
                self._record(started, context, context_tokens, completed, scheduled, len(decoding))

    def _retire_cancelled(self) -> int:
        return sum(self._retire(s) for s in [s for s in self._active if s.cancelled])

    def _guarded(self, sequence: Sequence, step: Any) -> int:
        """Run one sequence's step; 1 when it has finished (or failed) and left the batch."""
        done = True
        try:
            done = step()
        except Exception as exc:  # one bad request must not stop the engine
            log.error("generation failed: %s", exception_summary(exc))
            sequence.emit(Failed("generation failed inside the engine"))
        return self._retire(sequence) if done else 0

    def _retire(self, sequence: Sequence) -> int:
        self._active.remove(sequence)
        sequence.cache = None
        return 1

    def _decode_batch(self, batch: list[Sequence]) -> list[torch.Tensor | None]:
        """One forward pass for the next token of every sequence in `batch` (each past its prompt).

        Returns each sequence's last-position logits (vocab,), float32, and appends the new token's keys and values
        to each sequence's own cache. The batch's cache is each sequence's, left-padded to the longest with its
        padding masked out (attention_mask 0) and each row at its own position (position_ids), as transformers'
        batched generation does. If the batched pass fails, every row is None: each sequence then takes a pass of its
        own, so that one bad request fails alone.
        """
        from transformers import DynamicCache

        lengths = [s.cache.get_seq_length() for s in batch]
        width = max(lengths)
        layers = len(batch[0].cache.layers)
        cache: Any = DynamicCache()
        try:
            for layer in range(layers):
                keys, values = [], []
                for s, n in zip(batch, lengths, strict=True):
                    k, v = s.cache.layers[layer].keys, s.cache.layers[layer].values
                    if n < width:
                        k = torch.nn.functional.pad(k, (0, 0, width - n, 0))
                        v = torch.nn.functional.pad(v, (0, 0, width - n, 0))
                    keys.append(k)
                    values.append(v)
                cache.update(torch.cat(keys), torch.cat(values), layer)
            mask = torch.zeros(len(batch), width + 1, dtype=torch.long)
            for row, n in enumerate(lengths):
                mask[row, width - n :] = 1
            kwargs: dict[str, Any] = {
                "input_ids": torch.tensor([[s.generated[-1]] for s in batch], dtype=torch.long),
                "attention_mask": mask,
                "position_ids": torch.tensor([[n] for n in lengths], dtype=torch.long),
                "cache": cache,
                "use_cache": True,
                "logits_to_keep": 1,
            }
            if self.lora.peft:
                kwargs["adapter_names"] = [s.adapter for s in batch]
            logits = self.model(**kwargs).logits[:, -1].float()
        except Exception as exc:
            log.error("batched decode failed, stepping its sequences one by one: %s", exception_summary(exc))
            return [None] * len(batch)
        for row, s in enumerate(batch):
            for layer in range(layers):
                step = cache.layers[layer]
                s.cache.update(step.keys[row : row + 1, :, -1:], step.values[row : row + 1, :, -1:], layer)
        return list(logits)

    def _step(self, s: Sequence, logits: torch.Tensor | None = None) -> bool:
        """Advance one sequence by one token; True when it has finished.

        `logits`: this step's, when a batched decode computed them; otherwise this sequence's own forward pass does.
        """
        hashes: list[int] = []  # the prompt's block keys, at prefill when blocks are reused
        reused = 0
        if logits is None:
            if s.cache is None:
                inputs, hashes, reused = self._prefill(s)
                if s.sampling.seed is not None:
                    s.generator = torch.Generator().manual_seed(s.sampling.seed % (2**63))
                self._prepare(s)
                self._alloc_total += self._blocks(len(s.prompt))
            else:
                inputs = torch.tensor([[s.generated[-1]]], dtype=torch.long)
            kwargs: dict[str, Any] = {"input_ids": inputs, "cache": s.cache, "use_cache": True, "logits_to_keep": 1}
            if self.lora.peft:
                kwargs["adapter_names"] = [s.adapter]
            logits = self.model(**kwargs).logits[0, -1].float()
        if s.first_token is None and self.prefix_cache is not None and len(hashes) > reused:
            cache, prefix = s.cache, self.prefix_cache
            prefix.store(
                hashes,
                s.prompt,
                lambda i: prefix.block_kv(cache, i),
                start=reused,
                adapter=s.adapter,
                lora_task_id=s.lora_task_id,
            )
        token = self._sample(s, logits)
        now = time.perf_counter()
        if s.first_token is None:
            s.first_token = now
        s.generated.append(token)
        s.counts[token] = s.counts.get(token, 0) + 1
        if self._fault_at is not None and len(s.generated) >= self._fault_at:
            raise RuntimeError(f"injected fault ({FAULT_AT_TOKEN_ENV})")
        if s.length % TOKENS_PER_BLOCK == 1:
            self._alloc_total += 1
        if s.matcher is not None:
            s.matcher.accept_token(token)
            # the grammar allows an end token only once the answer is complete, and nothing after it
            eos = s.matcher.is_terminated()
        else:
            eos = token in self.eos_ids and not s.sampling.ignore_eos and len(s.generated) > s.sampling.min_tokens
        ids = s.generated[:-1] if eos and token in self.eos_ids else s.generated
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in s.sampling.stop:
            at = text.find(stop)
            if at != -1:
                return self._finish(s, text[:at], "stop", now)
        if eos:
            return self._finish(s, text, "stop", now)
        if len(s.generated) >= s.sampling.max_tokens:
            return self._finish(s, text, "length", now)
        # hold back what could still become a stop sequence, and half a multi-byte character
        safe = len(text) - max((len(x) for x in s.sampling.stop), default=1) + 1
        while safe > s.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe > s.sent:
            s.emit(Delta(text[s.sent : safe], len(s.generated)))
            s.sent = safe
        return False

    def _prefill(self, s: Sequence) -> tuple[torch.Tensor, list[int], int]:
        """The prompt tokens still to compute, the prompt's block keys and how many blocks came from the cache.

        Sets the sequence's KV cache: empty, or the cached blocks of its longest cached prefix.
        """
        from transformers import DynamicCache

        self.model = self.lora.ensure(self.model, s.adapter, {a.adapter for a in self._active})
        s.cache = DynamicCache()
        if self.prefix_cache is None:
            return torch.tensor([s.prompt], dtype=torch.long), [], 0
        # full blocks before the last prompt token: that token is always computed (it gives the first logits)
        hashes = context_block_hashes(s.prompt, s.lora_task_id, TOKENS_PER_BLOCK)
        found = self.prefix_cache.match(hashes)
        # then the next block's leading tokens (up to the last prompt token), from a cached block that starts alike:
        # a previous answer's partial last block, or a block that differs further on
        start = len(found) * TOKENS_PER_BLOCK
        wanted = s.prompt[start : min(start + TOKENS_PER_BLOCK, len(s.prompt) - 1)]
        partial = None
        if wanted:
            parent = found[-1].block_hash if found else None
            partial = self.prefix_cache.match_partial(parent, wanted, s.lora_task_id, counted=len(found) < len(hashes))
        if found or partial:
            s.cache = self.prefix_cache.restore(found, partial)
            s.cached_tokens = start + (partial[1] if partial else 0)
        return torch.tensor([s.prompt[s.cached_tokens :]], dtype=torch.long), hashes, len(found)

    def _finish(self, s: Sequence, text: str, reason: str, now: float) -> bool:
        if self.prefix_cache is not None:
            # as trtllm's storeBlocksForReuse when a request ends: prompt and output less the last token (its KV is
            # not computed), the last block partial; the cache holds exactly those tokens' KV. Stored before the
            # answer is complete, so that a client that has its answer finds its blocks in the events.
            tokens = s.prompt + s.generated
            hashes = sequence_block_hashes(tokens, s.lora_task_id, TOKENS_PER_BLOCK)
            cache, prefix = s.cache, self.prefix_cache
            prefix.store(
                hashes,
                tokens[:-1],
                lambda i: prefix.block_kv(cache, i),
                adapter=s.adapter,
                lora_task_id=s.lora_task_id,
            )
        # counted before the answer is complete: a client that has its answer finds it in the metrics
        self.metrics.finished(s, reason, now)
        s.emit(Finished(text[s.sent :], reason, len(s.prompt), len(s.generated), s.cached_tokens))
        return True

    def _prepare(self, s: Sequence) -> None:
        """The per-request logits processors: transformers' own, and xgrammar's matcher for structured output."""
        from transformers import MinPLogitsWarper, SequenceBiasLogitsProcessor

        p = s.sampling
        if p.logit_bias:
            s.processors.append(SequenceBiasLogitsProcessor([[[token], bias] for token, bias in p.logit_bias.items()]))
        if p.min_p > 0:
            s.warpers.append(MinPLogitsWarper(p.min_p))
        if p.grammar is not None:
            s.matcher, s.bitmask = self.grammars.matcher(p.grammar)

    def _sample(self, s: Sequence, logits: torch.Tensor) -> int:
        p = s.sampling
        if s.matcher is not None:
            self.grammars.mask(s.matcher, s.bitmask, logits)
        if s.processors:
            last = torch.tensor([[s.generated[-1] if s.generated else s.prompt[-1]]], dtype=torch.long)
            for processor in s.processors:
                logits = processor(last, logits.unsqueeze(0))[0]
        if s.counts and (p.frequency_penalty or p.presence_penalty or p.repetition_penalty != 1.0):
            ids = torch.tensor(list(s.counts), dtype=torch.long)
            counts = torch.tensor(list(s.counts.values()), dtype=logits.dtype)
            if p.repetition_penalty != 1.0:
                chosen = logits[ids]
                logits[ids] = torch.where(chosen > 0, chosen / p.repetition_penalty, chosen * p.repetition_penalty)
            logits[ids] -= p.frequency_penalty * counts + p.presence_penalty
        if p.temperature <= 1e-5:
            return int(torch.argmax(logits))  # greedy: temperature 0 is deterministic
        logits = logits / p.temperature
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < p.top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            probs = probs / probs.sum()
        if s.warpers:
            scores = torch.log(probs).unsqueeze(0)
            for warper in s.warpers:
                scores = warper(None, scores)
            probs = torch.softmax(scores[0], dim=-1)
        return int(torch.multinomial(probs, 1, generator=s.generator))

    def _record(
        self, started: float, context: int, context_tokens: int, completed: int, scheduled: int, generation: int
    ) -> None:
        """One iteration's stats. `scheduled`: requests this iteration computed a token for; `generation`: those the
        decode pass stepped (0 when it was put off: the requests already generating were not scheduled)."""
        self._iteration += 1
        used = sum(self._blocks(s.length) for s in self._active)
        waiting = len(self._waiting)
        reuse = self.prefix_cache.stats if self.prefix_cache is not None else ReuseStats()
        self._stats.append(
            {
                "iter": self._iteration,
                "iterLatencyMS": (time.perf_counter() - started) * 1000,
                "timestamp": datetime.now(UTC).strftime("%m-%d-%Y %H:%M:%S"),
                "numActiveRequests": len(self._active),
                "numQueuedRequests": waiting,
                "numCompletedRequests": completed,
                "numNewActiveRequests": context,
                "maxNumActiveRequests": self.max_batch_size,
                "maxBatchSizeStatic": self.max_batch_size,
                "maxBatchSizeRuntime": self.max_batch_size,
                "maxNumTokensStatic": self.max_blocks * TOKENS_PER_BLOCK,
                "maxNumTokensRuntime": self.max_blocks * TOKENS_PER_BLOCK,
                "cpuMemUsage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gpuMemUsage": 0,
                "pinnedMemUsage": 0,
                "kvCacheStats": {
                    "maxNumBlocks": self.max_blocks,
                    "freeNumBlocks": self.max_blocks - used,
                    "usedNumBlocks": used,
                    "tokensPerBlock": TOKENS_PER_BLOCK,
                    "allocTotalBlocks": self._alloc_total,
                    "allocNewBlocks": self._alloc_total,
                    "reusedBlocks": reuse.reused_blocks,
                    "missedBlocks": reuse.missed_blocks,
                    "cacheHitRate": reuse.hit_rate,
                },
                "inflightBatchingStats": {
                    "numScheduledRequests": scheduled,
                    "numContextRequests": context,
                    "numGenRequests": generation,
                    "numPausedRequests": 0,
                    "numCtxTokens": context_tokens,
                    "microBatchId": 0,
                    "avgNumDecodedTokensPerIter": 1.0,
                },
            }
        )


def _padding_bounded_groups(batch: list[Sequence]) -> list[list[Sequence]]:
    """`batch` split into decode passes, each at most half padding (cells of the padded cache that hold no token).

    The batched cache is left-padded to its longest sequence, and a pass costs what its padded cache holds: one
    sequence of 1,900 tokens beside seven of 20 made each of the eight pay for 1,900 (on the tiny test Llama, 100 tokens
    each took 1.7 s batched where the long one alone and the seven together took 0.5 s in all). TensorRT-LLM's paged
    KV cache has no padding, so a pass there costs each sequence its own length; a second pass here costs one more read
    of the weights, which is what a batch saves, so a sequence joins a pass only while the pass stays at most half
    padding."""
    groups: list[list[Sequence]] = []
    real = 0
    # shortest first: each new member is its pass's longest, and the short ones fill a pass before a long one may
    for s in sorted(batch, key=lambda s: s.length):
        if groups and (len(groups[-1]) + 1) * s.length <= 2 * (real + s.length):
            groups[-1].append(s)
            real += s.length
        else:
            groups.append([s])
            real = s.length
    return groups


def refuse_quantized(model_dir: Path) -> None:
    """Raise ByocError (exit 2) for a quantized checkpoint: this engine would serve it wrong, not slowly.

    transformers on CPU loads an FP8 or NVFP4 ModelOpt export by ignoring its scales (the weights come out as the raw
    quantized values), and other quantizers need kernels this engine does not have: the answers would be wrong
    numbers with no error. trtllm-serve on a GPU is what serves these.
    """
    from byoc.errors import ByocError
    from runtime.model_build.checkpoint import quantization_of

    found = quantization_of(model_dir)
    if found is not None:
        what, where = found
        raise ByocError(
            "--model-dir",
            f"{model_dir} holds quantized weights ({what}, per {where}); the CPU engine serves full-precision "
            "weights only and would compute wrong numbers from them",
            "serve the shape's BF16 artifact with the CPU engine, or serve this one with trtllm-serve on a GPU",
        )


def cpu_threads_default() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))
