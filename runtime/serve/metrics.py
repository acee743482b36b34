"""The gateway's Prometheus metrics. The names and labels are a contract: stacks/k8s/monitoring/rules.yaml, the
Grafana dashboard and the KEDA triggers read them. Labels are model, addon and code only: never a key or any text.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
# A wake from zero takes seconds (a warm node) to many minutes (a new GPU node, an image pull, a large model):
# byoc/catalogs/coldstart.yaml; the gateway holds a request up to --wake-timeout (derived from that estimate).
WAKE_BUCKETS = (1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0, 900.0, 1200.0, 1800.0)

BASE = "base"  # the addon label of requests for the base model (as in rules_test.yaml)
UNKNOWN = "unknown"  # the addon label before a request's model is known (401, 429, bad JSON, unknown model)


class LocalHistogram:
    """One labelled histogram child, counted without prometheus_client's per-sample locks: the gateway observes
    and is scraped on its one event-loop thread. Buckets as Prometheus defines them (a sample counts in every bucket
    whose `le` bound is at least its value; the last, `+Inf`, counts all)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> Sequence[tuple[str, float]]:
        """Cumulative counts keyed by `le`, as the exposition format writes them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        return out


class ModelSeries:
    """What the gateway counts per (model, addon): plain numbers, read by `SeriesCollector` at scrape time
    (prometheus_client's labelled children take a lock per increment, a real share of a proxied request)."""

    __slots__ = (
        "addon", "by_code", "cached_tokens", "duration", "itl", "model", "output_tokens", "prompt_tokens", "ttft"
    )  # fmt: skip

    def __init__(self, model: str, addon: str) -> None:
        self.model, self.addon = model, addon
        self.ttft = LocalHistogram(TTFT_BUCKETS)
        self.itl = LocalHistogram(ITL_BUCKETS)
        self.duration = LocalHistogram(DURATION_BUCKETS)
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.by_code: dict[str, int] = {}

    def answered(self, code: str) -> None:
        self.by_code[code] = self.by_code.get(code, 0) + 1


class SeriesCollector(Collector):
    """The per-(model, addon) series, under the names and help the contract fixes."""

    def __init__(self, series: dict[tuple[str, str], ModelSeries]) -> None:
        self.series = series

    def describe(self) -> list[Metric]:
        return []  # no fixed set of series: collected fresh at every scrape

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "addon"]
        requests = CounterMetricFamily("byoc_gateway_requests", REQUESTS_HELP, labels=[*labels, "code"])
        histograms = [
            (HistogramMetricFamily("byoc_gateway_time_to_first_token_seconds", TTFT_HELP, labels=labels), "ttft"),
            (HistogramMetricFamily("byoc_gateway_inter_token_latency_seconds", ITL_HELP, labels=labels), "itl"),
            (HistogramMetricFamily("byoc_gateway_request_duration_seconds", DURATION_HELP, labels=labels), "duration"),
        ]
        prompt = CounterMetricFamily("byoc_gateway_prompt_tokens", PROMPT_HELP, labels=labels)
        output = CounterMetricFamily("byoc_gateway_output_tokens", OUTPUT_HELP, labels=labels)
        cached = CounterMetricFamily("byoc_gateway_cached_tokens", CACHED_HELP, labels=labels)
        for one in list(self.series.values()):
            values = [one.model, one.addon]
            for code, count in sorted(one.by_code.items()):
                requests.add_metric([*values, code], count)
            for family, name in histograms:
                histogram: LocalHistogram = getattr(one, name)
                family.add_metric(values, histogram.buckets(), histogram.total)
            prompt.add_metric(values, one.prompt_tokens)
            output.add_metric(values, one.output_tokens)
            cached.add_metric(values, one.cached_tokens)
        yield requests
        for family, _ in histograms:
            yield family
        yield prompt
        yield output
        yield cached


REQUESTS_HELP = "Requests answered, by HTTP status."
TTFT_HELP = (
    "From request arrival to the first token sent, streamed answers only (a non-streamed answer's first "
    "token is inside the engine: trtllm_time_to_first_token_seconds)."
)
ITL_HELP = "Mean time between output tokens of a streamed answer."
DURATION_HELP = "From request arrival to the last byte sent."
PROMPT_HELP = "Prompt tokens of answered requests."
OUTPUT_HELP = "Generated tokens of answered requests."
CACHED_HELP = "Prompt tokens of answered requests that the engine served from its KV cache (prompt_tokens_details)."


class GatewayMetrics:
    def __init__(self, ttft_slo: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self._series: dict[tuple[str, str], ModelSeries] = {}
        r.register(SeriesCollector(self._series))
        self.in_flight = Gauge("byoc_gateway_in_flight_requests", "Requests being served by an upstream.", registry=r)
        self.queue_depth = Gauge(
            "byoc_gateway_queue_depth", "Requests waiting for an admission slot (--max-concurrency).", registry=r
        )
        self.pending = Gauge(
            "byoc_gateway_pending_requests",
            "Requests held because no upstream is ready: the autoscaler's wake-up signal.",
            registry=r,
        )
        self.upstream_errors = Counter(
            "byoc_gateway_upstream_errors", "Failed exchanges with an upstream, by reason.", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "byoc_gateway_rate_limited", "Requests answered 429, by reason.", ["reason"], registry=r
        )
        self.upstreams_ready = Gauge(
            "byoc_gateway_upstreams_ready", "Upstream replicas passing health checks.", registry=r
        )
        # -- wakes from zero (issue 24): requests that arrived while no replica was ready --------------------
        self.wake = Histogram(
            "byoc_gateway_wake_seconds",
            "How long a request was held while no replica was ready, until one was (requests that waited for a "
            "wake from zero and got a replica).",
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.wake_ttft = Histogram(
            "byoc_gateway_wake_time_to_first_token_seconds",
            "From arrival to the first token of a request that waited for a wake: the first streamed token, or "
            "the whole answer of a non-streamed request answered 200.",
            buckets=WAKE_BUCKETS,
            registry=r,
        )
        self.wake_timeouts = Counter(
            "byoc_gateway_wake_timeouts",
            "Requests held while no replica was ready that --wake-timeout gave up on (answered 503 "
            "no_replica_ready): the wakes that failed, which byoc_gateway_wake_seconds does not count.",
            registry=r,
        )
        self.slo = Gauge("byoc_slo_ttft_p95_seconds", "The deployment's time-to-first-token p95 objective.", registry=r)
        self.slo.set(ttft_slo)

    def series(self, model: str, addon: str) -> ModelSeries:
        found = self._series.get((model, addon))
        if found is None:
            found = self._series[(model, addon)] = ModelSeries(model, addon)
        return found
