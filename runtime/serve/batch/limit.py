"""The TTFT-guarded limit on batch lines in flight (issue 22): `BatchLimit`, kept by the gateway.

Batch work shares the engines with online traffic, and what online users notice is time to first token. So the
number of batch lines the gateway lets into the engines at once is an AIMD limit driven by online TTFT, between 0 and
a ceiling (the capacity less --batch-headroom, which stays a fixed floor of free slots):

- **Signal**: the TTFT of each streamed online request, as the gateway measures it (the first content chunk relayed).
  A sample *overlaps* batch work if a batch line was in flight when the request started or was admitted before its
  first token; a *clean* sample is one that did not.
- **Baseline**: the median and p90 of the last `window` clean samples no older than `baseline_seconds`, i.e. online
  TTFT while no batch line was in flight. It needs `min_samples` of them. When online traffic flows and the baseline
  has gone stale (batch lines have been in flight for every online request for `baseline_seconds`), the limit is
  pinned to 0 until `min_samples` fresh clean samples have come: a probe, as Envoy's adaptive concurrency filter pins
  its limit to `min_concurrency` to re-measure minRTT (envoyproxy.io docs, http_filters/adaptive_concurrency_filter,
  "Calculating the minRTT", v1.26+). With no baseline at all (the gateway just started) the limit starts at 0 and
  the first online requests give it one.
- **Decrease** (multiplicative, as Netflix concurrency-limits' `AIMDLimit` and TCP): the limit halves when the p90
  of the online samples since the last change (the last `window` of them) is over `ratio` x the baseline's p90, or
  their median (from 3 samples) is over `ratio` x the baseline's median (each at least the baseline plus `slack`,
  2 ms of jitter), and
  batch work overlapped one of them; and at once when an online request has to queue for an admission slot. Only
  samples of requests that started after the last change count, so one burst of slow samples, all caused by the same
  batch lines, halves the limit once. Of fewer than 10 samples the p90 is their maximum: the first slow sample after
  a change is enough.
- **Increase** (additive): one slot when both are under, at least `min_samples` samples have come since the last
  change, and the batch uses the limit. An increase that is undone before it held for `min_samples` samples doubles
  the samples the next one waits for (up to 16x; reset when one holds): on an engine where any batch line slows
  online requests (a compute-bound CPU engine), each probe costs a slow online request or two, and probes grow rare.
- **Reclaim**: when an online request starts and batch lines let in above the learned limit while online traffic
  was away are still in flight, the newest of them are ended (429 `batch_yield`, the worker sends them again). Lines
  above a limit just halved run to their end: ending them would end every line longer than the gap between two
  online requests, and the batch would not progress (docs/performance.md: `--batch-preempt`).
- **Light online traffic**: a few samples a minute still drive it (a decrease needs one slow sample; an increase
  `min_samples` good ones, so the limit grows slowly, which is the safe side).
- **No online traffic** (none in flight, none started for `idle_seconds`): batch may use every slot up to the
  ceiling. The learned limit is kept and is in force again at the next online arrival, which reclaims the slots
  above it.
- **Online traffic that never streams**: no TTFT is seen, so there is nothing to guard on; the limit is the ceiling
  (the fixed --batch-headroom, as before), and an online request waiting for a slot still stops batch admission.

What others do: vLLM (`priority`, `--scheduling-policy priority`) and SGLang (`--enable-priority-scheduling`) order
their waiting queue by priority and, when KV cache runs out, pre-empt the lowest-priority running request; neither
pre-empts to save an online request's TTFT from compute shared with running sequences. trtllm-serve 1.3.0rc19 (the
pinned engine) takes no priority over HTTP: its request models forbid extra fields, so `priority` is a 400; the LLM
API's `priority` (TensorRT-LLM PR #12362) orders only the PyTorch executor's waiting queue
(`PriorityWaitingQueue`, tensorrt_llm/_torch/pyexecutor/scheduler/waiting_queue.py, with
`scheduler_config.waiting_queue_policy: priority`), and PR #15329, which exposes it in trtllm-serve, came after that
release. A waiting-queue order does nothing below max_batch_size, where the batch class keeps the engine (nothing
waits there). llm-d's batch gateway sends batch requests at a lower priority band, shed first when the pool saturates
(docs/FACTS.md). This limit is the gateway-side equivalent for an engine without priorities: it sheds batch work
(429 `batch_yield`) before online latency moves, not only when the pool is full; and the gateway lets no batch line in
while a streamed online request waits for its first token (gateway.py `_batch_admit`).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("byoc.gateway.batch_limit")


@dataclass(frozen=True)
class BatchLimitSettings:
    ratio: float = 1.2  # online TTFT p90 may be this x the baseline (issue 22's target is 1.25: a margin below it)
    window: int = 20  # online TTFT samples in the p90 that decides an increase
    min_samples: int = 5  # samples needed for a baseline, and between two increases
    baseline_seconds: float = 60.0  # the oldest clean sample the baseline may use; older: probe
    idle_seconds: float = 10.0  # no online request for this long: batch may use every slot up to the ceiling
    # the least online TTFT may move before it counts, when ratio x baseline is less: a few milliseconds of
    # scheduling jitter that no user notices, and that would otherwise read as "1.5x" against a baseline of a few
    # milliseconds (Envoy's gradient controller adds a `min_rtt_buffer` to its measured minRTT for the same reason).
    # A floor, not an addition: added to 1.2x a 16 ms baseline, 5 ms let online TTFT p90 reach 1.36-1.48x under a
    # batch (bench_batch, docs/performance.md), over the 1.25x issue 22 asks
    slack: float = 0.002


def p90(values: list[float]) -> float:
    """The nearest-rank 90th percentile (the smallest value at least 90% of `values` are at or under)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


class BatchLimit:
    """An AIMD limit on batch lines in flight, guarded by online TTFT (see the module's docstring).

    The gateway calls `online_started()` when an online request is admitted, `online_sample(token, ttft_seconds)`
    with its TTFT, `online_queued()` when one waits for a slot, `batch_admitted(in_flight)` for each batch line let
    in, and reads `allowed(ceiling, batch_in_flight)` (batch lines that may be in flight now)."""

    def __init__(self, settings: BatchLimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.limit = 0  # the learned limit (with online traffic); the ceiling bounds it when read
        self.ceiling = 0  # the last ceiling seen: the limit never grows past it
        # online TTFTs (seconds) of requests begun since the last change of the limit, and whether batch work overlapped
        self.recent: deque[tuple[float, bool]] = deque(maxlen=settings.window)
        self.since_change = 0  # samples since the last change (all of them, not only the window's)
        self.clean: deque[tuple[float, float]] = deque(maxlen=settings.window)  # (when, TTFT) with no batch work
        # increases that a decrease undid before they had held for `min_samples`: each doubles the good samples the
        # next increase waits for (at most 16x), so a limit that cannot grow probes ever less often
        self.failed_increases = 0
        self.increased_at = -math.inf
        self.changed_at = -math.inf  # when the limit last changed
        self.decreased_at = -math.inf
        self.last_online = -math.inf  # when an online request last started or answered
        self.online_now = 0  # online requests admitted and not yet answered (their first token or end)
        self.admitted_seq = 0  # batch lines admitted so far (a sample overlaps if this moved during it)
        self.demand = False  # a batch line was refused since the last change
        self.peak = 0  # the most batch lines in flight since the last change
        # when an online TTFT was last seen (or online traffic began): none for baseline_seconds while online
        # requests come means they do not stream, and there is no TTFT to guard on
        self.streamed_seen = clock()
        self.mode = "learned"  # learned | idle | probe | unmeasured: why the limit in force is what it is

    # -- inputs ----------------------------------------------------------------------------------------------
    def online_started(self, batch_in_flight: int) -> tuple[float, int, bool]:
        """An online request is admitted: a token for `online_sample` / `online_ended`."""
        now = self.clock()
        if self.online_now == 0 and now - self.last_online >= self.settings.idle_seconds:
            self.streamed_seen = now  # online traffic resumes: its first TTFTs are yet to come
        self.last_online = now
        self.online_now += 1
        return (now, self.admitted_seq, batch_in_flight > 0)

    def online_ended(self) -> None:
        self.online_now = max(0, self.online_now - 1)
        self.last_online = self.clock()

    def online_queued(self, started: float) -> None:
        """An online request waits for an admission slot: halve at once."""
        if started > self.decreased_at:
            self._decrease("an online request waits for a slot")

    def batch_admitted(self, in_flight: int) -> None:
        """A batch line was let in; `in_flight`: batch lines in flight with it."""
        self.admitted_seq += 1
        self.peak = max(self.peak, in_flight)

    def batch_refused(self) -> None:
        """A batch line was told to yield: the batch wants more than it has (the limit may grow)."""
        self.demand = True

    def online_sample(self, token: tuple[float, int, bool], ttft: float, batch_in_flight: int) -> None:
        """An online request's time to first token, seconds, and the batch lines in flight then."""
        started, seq, busy_at_start = token
        now = self.clock()
        self.streamed_seen = now
        overlapped = busy_at_start or self.admitted_seq != seq
        if not overlapped:
            self.clean.append((now, ttft))
        if started <= self.changed_at:
            return  # it began under the limit before the last change: it says nothing about this one
        self.recent.append((ttft, overlapped))
        self.since_change += 1
        baseline = self.baseline()
        if baseline is None:
            return
        ratio = self.settings.ratio
        ttfts = [t for t, _ in self.recent]
        # p90 of the samples since the last change: of fewer than 10 it is their maximum, so the first slow sample
        # after a change is enough to halve (the safe side); of more, one in ten may be slow. And their median, from
        # 3 samples: on a busy host the p90 of a few samples is mostly noise (the baseline's too), while a batch line
        # that slows every online request moves the median, which noise spikes barely touch
        slack = self.settings.slack
        over = p90(ttfts) > max(ratio * baseline[1], baseline[1] + slack)
        if len(ttfts) >= 3:
            over = over or statistics.median(ttfts) > max(ratio * baseline[0], baseline[0] + slack)
        if over:
            if any(o for _, o in self.recent):
                self._decrease(
                    f"online TTFT p50/p90 {statistics.median(ttfts) * 1000:.1f}/{p90(ttfts) * 1000:.1f} ms over "
                    f"{ratio} x baseline {baseline[0] * 1000:.1f}/{baseline[1] * 1000:.1f} ms "
                    f"(at least + {slack * 1000:.0f} ms)"
                )
            return
        if self.increased_at == self.changed_at and self.since_change >= self.settings.min_samples:
            self.failed_increases = 0  # the last increase held
        # grow only a limit the batch used and wants more than (Netflix AIMDLimit grows only when in flight >=
        # limit / 2): a limit grown while no batch ran has been proven by nothing. Used since the last change, not
        # at this sample's answer: a worker that keeps the limit full refills a finished line's slot a moment later
        used = self.demand and max(self.peak, batch_in_flight) >= self.limit
        wait = self.settings.min_samples << self.failed_increases
        if used and self.since_change >= wait and self.limit < self.ceiling:
            self.limit += 1
            log.info("batch limit %d -> %d: online TTFT holds", self.limit - 1, self.limit)
            self.changed_at = self.increased_at = now
            self.recent.clear()
            self.since_change = 0
            self.demand = False
            self.peak = 0

    def _decrease(self, why: str) -> None:
        if self.limit == 0:
            return
        now = self.clock()
        log.info("batch limit %d -> %d: %s", self.limit, self.limit // 2, why)
        if self.increased_at == self.changed_at:  # the last change was an increase, and it did not hold
            self.failed_increases = min(self.failed_increases + 1, 4)
        self.limit //= 2
        self.changed_at = self.decreased_at = now
        self.recent.clear()
        self.since_change = 0
        self.demand = False
        self.peak = 0

    # -- output ----------------------------------------------------------------------------------------------
    def baseline(self) -> tuple[float, float] | None:
        """Online TTFT (median, p90) with no batch work in flight, seconds (None: too few fresh clean samples)."""
        fresh = [ttft for when, ttft in self.clean if self.clock() - when <= self.settings.baseline_seconds]
        if len(fresh) < self.settings.min_samples:
            return None
        return statistics.median(fresh), p90(fresh)

    def allowed(self, ceiling: int) -> int:
        """Batch lines that may be in flight now, given the ceiling (capacity less --batch-headroom)."""
        self.ceiling = max(0, ceiling)
        self.limit = min(self.limit, self.ceiling)
        now = self.clock()
        if self.online_now == 0 and now - self.last_online >= self.settings.idle_seconds:
            self.mode = "idle"
            return self.ceiling
        if now - self.streamed_seen > self.settings.baseline_seconds:
            # online traffic, but none streamed lately: no TTFT to guard on, the fixed headroom only
            self.mode = "unmeasured"
            return self.ceiling
        if self.baseline() is None:
            self.mode = "probe"  # re-measure online TTFT with no batch line in flight
            return 0
        self.mode = "learned"
        return self.limit
