"""The gateway's Prometheus metrics. The names and labels are a contract: stacks/k8s/monitoring/rules.yaml, the
Grafana dashboard and the KEDA triggers read them. Labels are model, addon and code only: never a key or any text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

BASE = "base"  # the addon label of requests for the base model (as in rules_test.yaml)
UNKNOWN = "unknown"  # the addon label before a request's model is known (401, 429, bad JSON, unknown model)


@dataclass
class ModelSeries:
    """The labelled children of one (model, addon): `labels()` takes a lock and a dict lookup, so keep them."""

    ttft: Histogram
    itl: Histogram
    duration: Histogram
    prompt_tokens: Counter
    output_tokens: Counter
    _requests: Counter
    _model: str
    _addon: str
    _by_code: dict[str, Counter] = field(default_factory=dict)

    def answered(self, code: str) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(model=self._model, addon=self._addon, code=code)
        child.inc()


class GatewayMetrics:
    def __init__(self, ttft_slo: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "byoc_gateway_requests", "Requests answered, by HTTP status.", ["model", "addon", "code"], registry=r
        )
        self.ttft = Histogram(
            "byoc_gateway_time_to_first_token_seconds",
            "From request arrival to the first token sent, streamed answers only (a non-streamed answer's first "
            "token is inside the engine: trtllm_time_to_first_token_seconds).",
            ["model", "addon"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "byoc_gateway_inter_token_latency_seconds",
            "Mean time between output tokens of a streamed answer.",
            ["model", "addon"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "byoc_gateway_request_duration_seconds",
            "From request arrival to the last byte sent.",
            ["model", "addon"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "byoc_gateway_prompt_tokens", "Prompt tokens of answered requests.", ["model", "addon"], registry=r
        )
        self.output_tokens = Counter(
            "byoc_gateway_output_tokens", "Generated tokens of answered requests.", ["model", "addon"], registry=r
        )
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
        self.slo = Gauge("byoc_slo_ttft_p95_seconds", "The deployment's time-to-first-token p95 objective.", registry=r)
        self.slo.set(ttft_slo)
        self._series: dict[tuple[str, str], ModelSeries] = {}

    def series(self, model: str, addon: str) -> ModelSeries:
        found = self._series.get((model, addon))
        if found is None:
            labels = {"model": model, "addon": addon}
            found = ModelSeries(
                self.ttft.labels(**labels),
                self.itl.labels(**labels),
                self.duration.labels(**labels),
                self.prompt_tokens.labels(**labels),
                self.output_tokens.labels(**labels),
                self.requests,
                model,
                addon,
            )
            self._series[(model, addon)] = found
        return found
