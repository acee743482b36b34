"""The OpenAI-compatible gateway in front of trtllm-serve replicas.

One asyncio process. Per request, in this order: API key (401), the body (413 over 8 MiB, 400), the model or addon
(404; held like the rest while no replica has listed its addons yet), the key's limits in one decision (its token
budget: 429 `insufficient_quota`; its requests and tokens per minute and concurrent requests: 429
`rate_limit_exceeded`; in this process's memory, or across every gateway replica with --store: runtime/serve/store.py),
a held wait while no replica is ready (scale from zero:
`byoc_gateway_pending_requests`, 503 after --wake-timeout), an admission slot or a place in the bounded queue (429
when full or after --queue-timeout), then the least busy ready replica. A request that fails before its first byte
(unreachable, 502/504) or that a busy engine turns away (429/503: vLLM and SGLang do when full; trtllm-serve queues)
is tried on each other ready replica once; a stream cut mid-way ends with an error event. What the engine refuses
as invalid (any other 4xx) is the client's mistake: relayed, never retried, never held against the replica.
Streamed usage is asked of the engine on every chunk and passed on only as the client asked (runtime/serve/relay.py).
A client that leaves cancels its request wherever it is (499): every slot it held is freed and the upstream
connection closed, and the stream is metered to its last chunk (the engine's running usage).

Zero data retention: request and response bodies pass through memory only. Logs carry one access line per request
(key name, model, status, token counts, latency); metrics carry model, addon and status; error bodies name the
parameter at fault, never its value.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from runtime.serve.batch.layout import OWNER_HEADER, YIELD_HEADER
from runtime.serve.batch.limit import BatchLimit, BatchLimitSettings
from runtime.serve.config import ADAPTER_ROOT, Addon, GatewayConfig, lora_int_id
from runtime.serve.keys import ApiKey, KeyRing
from runtime.serve.ledger import ReplicaBusyTime, UsageLedger, store_client
from runtime.serve.limits import (
    Admission,
    KeyLimits,
    LocalLimiter,
    Refusal,
    Ticket,
    completion_bound,
    prompt_estimate,
    retry_after,
)
from runtime.serve.logs import AccessLog, exception_summary
from runtime.serve.loop import loop_name
from runtime.serve.metrics import BASE, UNKNOWN, GatewayMetrics
from runtime.serve.openai_api import ApiError, Kind, ParsedRequest, error_body, parse_json, upstream_error, validate
from runtime.serve.peers import Peer, PeerAnswer, PeerPool, SpillOver
from runtime.serve.relay import EventBlocks, StreamEditor, answer_usage, rename_model
from runtime.serve.routing import make_router
from runtime.serve.sse import SseResponse
from runtime.serve.upstream_http import UpstreamClient, UpstreamResponse
from runtime.serve.upstreams import Upstream, UpstreamPool

log = logging.getLogger("byoc.gateway")
# Retry-After of a batch line refused while the batch limit is 0 (runtime/serve/batch/limit.py)
BATCH_PAUSED_RETRY_SECONDS = 5.0

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_BODY_BYTES = 8 * 1024 * 1024
UPSTREAM_CONNECT_SECONDS = 5.0
# Idle upstream connections are dropped before trtllm-serve drops them: its uvicorn closes a connection idle for
# TIMEOUT_KEEP_ALIVE = 5 s (tensorrt_llm/serve/openai_server.py); reusing one it is closing would fail the request.
UPSTREAM_KEEPALIVE_SECONDS = 4.0
NO_REPLICA_RETRY_AFTER = "10"
DRAINING_RETRY_AFTER = "1"
# An engine's "not now" before the first byte (vLLM and SGLang answer 429 or 503 when full; trtllm-serve queues
# instead) or a proxy in front of it failing (502, 504): another replica can take the request.
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
BUSY_RETRY_MAX_SECONDS = 60.0
# What an interrupted stream ends with: OpenAI's clients raise an APIError on an event that carries "error".
STREAM_CUT = (
    b'data: {"error": {"message": "the model replica stopped in the middle of the answer; retry the request", '
    b'"type": "server_error", "param": null, "code": "upstream_stream_interrupted"}}\n\n'
)
# A stream still running at the end of the drain (SIGTERM + drain_seconds): the gateway ends it, the client retries.
STREAM_DRAINED = (
    b'data: {"error": {"message": "this gateway replica shut down before the answer ended; retry the request", '
    b'"type": "server_error", "param": null, "code": "gateway_draining"}}\n\n'
)
# aiohttp's AppRunner waits this long for handlers after the drain has ended the answers (its default is 60 s)
CLOSE_SECONDS = 1.0
STREAM_ERROR = (
    b'data: {"error": {"message": "the model replica failed while generating this answer; retry the request", '
    b'"type": "server_error", "param": null, "code": "upstream_stream_error"}}\n\n'
)


@dataclass
class Outcome:
    """What one request's access line and metrics say."""

    key: str = "-"
    addon: str = UNKNOWN
    code: str = "500"
    stream: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, served from the engine's KV cache (its prompt_tokens_details)
    replica_seconds: float = 0.0  # its share of the busy time of the replicas it was sent to (ReplicaBusyTime)
    first_token: float | None = None
    last_token: float | None = None
    reason: str = ""
    streamed: bool = False  # some of a streamed answer arrived from the engine
    usage_seen: bool = False  # the engine sent usage (cumulative: the last one counts, once)
    content_chunks: int = 0  # streamed chunks that carried generated text: the count when no usage came
    # where the access line's counts come from: `engine` (its usage), `counted` (one output token per chunk of
    # generated text, prompt unknown: lower bounds), `none` (nothing known: both 0, lower bounds if the engine worked)
    usage_source: str = "none"
    batch: bool = False  # a batch line sent by the batch worker on behalf of `key` (the batch admission class)
    waited_for_wake: bool = False  # held while no replica was ready, until one was (byoc_gateway_wake_* metrics)
    online_token: tuple[float, int, bool] | None = None  # an online request's entry in the batch limit (BatchLimit)
    # -- regions (runtime/serve/peers.py) --
    spillable: bool = False  # may go to a peer region: peers exist, not a batch line, not spilled here already
    spilled_from: str | None = None  # the region that spilled it here (its X-Byoc-Spilled-From header)
    region: str = ""  # the peer region that served it ("": this one)
    spill_reason: str = ""  # why it went to a peer: no_replica, saturated, overloaded
    awaiting_first: bool = False  # a streamed online request whose first token has not come: batch lines wait


class Gateway:
    def __init__(self, config: GatewayConfig, keys: list[ApiKey] | None) -> None:
        self.config = config
        self.keys = KeyRing(keys)
        self.metrics = GatewayMetrics(config.ttft_slo)
        self.pool = UpstreamPool(config.upstreams, config.health_interval, self.metrics)
        self.router = make_router(config, self.pool)  # --routing: least_outstanding, approximate, precise
        self.file_keys = keys or []
        self.limiter = LocalLimiter()
        self.store: Any = None  # runtime/serve/store.py Store with --store: `store.client` is its redis.asyncio.Redis
        self.shared: Any = None  # runtime/serve/store.py SharedLimiter with --store
        self._limits: dict[ApiKey, KeyLimits] = {}
        self.admission = Admission(config.max_concurrency, config.max_queue)
        self.declared = {a.name: a for a in config.addons}
        self.pending = 0
        self.in_flight = 0
        self.draining = False
        self.drain_started = asyncio.Event()
        self.answers: dict[UpstreamResponse, Outcome] = {}  # answers being relayed: the drain's deadline ends them
        self.typical_duration = 0.0  # seconds, a moving average of answered requests (Retry-After when busy)
        self.access_log = AccessLog()
        self.busy = ReplicaBusyTime()
        # the peer regions' gateways (--peer-region), only those inside the residency set (--residency)
        self.peers = PeerPool(config, config.residency_regions(), self.metrics.registry)
        self.region_down = False  # a request spilled for want of a replica: the next spill at once, until one is ready
        self.spilling = 0  # requests being answered by a peer region
        self.peer_answers: dict[aiohttp.ClientResponse, Outcome] = {}  # their answers (the drain's deadline ends them)
        self.ledger: UsageLedger | None = None  # with --store: usage per key, model and addon in the shared store
        self.created = int(time.time())
        self._session: UpstreamClient | None = None
        # Gauges read at scrape time: no per-request cost.
        self.metrics.pending.set_function(lambda: self.pending)
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.queue_depth.set_function(lambda: self.admission.queued)
        # -- batch admission class (issue 22) --
        self.batch_digest = config.batch_worker_digest()
        self.online_in_flight = 0
        # streamed online requests admitted whose first token has not come yet: no batch line is let in meanwhile
        self.online_awaiting_first = 0
        # batch lines being forwarded, oldest first (a dict keeps their order: the newest are reclaimed first)
        self.batch_lines: dict[asyncio.Task[web.StreamResponse], None] = {}
        self.preempted: set[asyncio.Task[web.StreamResponse]] = set()
        self.borrowed: dict[asyncio.Task[web.StreamResponse], None] = {}  # lines above the batch limit (idle spells)
        self.batch_decisions = Counter(
            "byoc_gateway_batch_requests",
            "Batch lines from the batch worker, by decision: admitted, or yielded (429 batch_yield) to online traffic.",
            ["decision"],
            registry=self.metrics.registry,
        )
        self.batch_in_flight = 0  # batch lines being forwarded
        if self.batch_digest is not None:
            Gauge(
                "byoc_gateway_batch_capacity",
                "Requests this gateway may have in flight before batch lines stop being admitted: its share of the "
                "ready engines' slots less --batch-headroom (divided among the gateway replicas), or "
                "--max-concurrency less the headroom if lower.",
                registry=self.metrics.registry,
            ).set_function(self.batch_capacity)
        self.batch_limit: BatchLimit | None = None
        if self.batch_digest is not None and config.batch_ttft_ratio:
            settings = BatchLimitSettings(
                ratio=config.batch_ttft_ratio,
                window=config.batch_ttft_window,
                baseline_seconds=config.batch_baseline_seconds,
                idle_seconds=config.batch_idle_seconds,
            )
            self.batch_limit = BatchLimit(settings, clock=time.perf_counter)
            Gauge(
                "byoc_gateway_batch_limit",
                "Batch lines that may be in flight now: the TTFT-guarded AIMD limit (the capacity less "
                "--batch-headroom with no online traffic, 0 while the online TTFT baseline is re-measured).",
                registry=self.metrics.registry,
            ).set_function(self._batch_allowed)
            Gauge(
                "byoc_gateway_batch_ttft_baseline_seconds",
                "Online TTFT p90 with no batch line in flight, that the batch limit keeps online TTFT near "
                "(NaN: not measured yet).",
                registry=self.metrics.registry,
            ).set_function(self._batch_baseline)

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # the upstream hop's own small client: aiohttp's was a quarter of the gateway's CPU per request
        self._session = UpstreamClient(
            UPSTREAM_CONNECT_SECONDS, self.config.upstream_timeout, keepalive_seconds=UPSTREAM_KEEPALIVE_SECONDS
        )
        settings = self.config.store_settings()
        if settings is not None:
            from runtime.serve.store import SharedLimiter, Store

            self.store = Store(
                settings,
                self.config.store_lease_seconds,
                self.config.replicas_hint,
                self.metrics.registry,
                on_keys=self._store_keys,
                file_key_names=[k.name for k in self.file_keys],
            )
            self.shared = SharedLimiter(self.store)
            await self.store.start()
        if self.config.store is not None:
            self.ledger = await _open_ledger(self.config)
            self.ledger.register_metrics(self.metrics.registry)
            self.ledger.start()
        await self.pool.start()
        await self.router.start()
        await self.peers.start()

    def _store_keys(self, entries: dict[str, str]) -> None:
        """The keys in the store changed (`byoc keys`): serve the keys file's merged with them, from now on."""
        if not self.keys.enabled:
            return
        from runtime.serve.store import merge_keys

        self.keys.replace(merge_keys(self.file_keys, entries))
        self._limits.clear()
        log.info("API keys reloaded from the store: %s", self.keys.describe())

    def drain(self) -> None:
        """SIGTERM: no new request, and none left waiting (held for a replica, or queued for a slot): each is
        answered 503 `gateway_draining` at once, and its client retries on another gateway replica."""
        self.draining = True
        self.drain_started.set()
        self.admission.close()

    def end_answers(self) -> int:
        """The drain's deadline: every answer still being relayed ends now (a stream with the gateway's error event),
        and its engine stops generating. How many there were."""
        answers = list(self.answers.items())
        for response, outcome in answers:
            outcome.reason = "drain_deadline"
            response.close()
        spilled = list(self.peer_answers.items())
        for peer_response, outcome in spilled:
            outcome.reason = "drain_deadline"
            peer_response.close()
        return len(answers) + len(spilled)

    async def stop(self) -> None:
        await self.peers.stop()
        await self.router.stop()
        await self.pool.stop()
        if self.store is not None:
            await self.store.stop()
        if self._session is not None:
            await self._session.close()
        if self.ledger is not None:
            await self.ledger.close()  # the last usage written before the process exits
            with contextlib.suppress(Exception):
                await self.ledger.redis.aclose()

    @property
    def session(self) -> UpstreamClient:
        assert self._session is not None, "Gateway.start() first"
        return self._session

    def app(self) -> web.Application:
        """The API. Routes go in the list: `_routes` ends with a catch-all (OpenAI-shaped 404) that would shadow
        any route added after it."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        _routes(
            app,
            [
                ("POST", "/v1/chat/completions", self.chat_completions),
                ("POST", "/v1/completions", self.completions),
                ("GET", "/v1/models", self.list_models),
                ("GET", "/v1/models/{model}", self.get_model),
                ("GET", "/health", self.health),
                ("GET", "/ready", self.ready),
                ("GET", "/metrics", self.prometheus),
                *self._batch_routes(),
            ],
        )
        return app

    # -- batch API (--batch-store): runtime/serve/batch/api.py -------------------------------------------------------
    def _batch_routes(self) -> list[tuple[str, str, Any]]:
        """/v1/files and /v1/batches with --batch-store; none without (they answer 404 as unknown routes do)."""
        if self.config.batch_store is None:
            return []
        from runtime.serve.batch.api import BatchApi, open_batch_store

        store = open_batch_store(self.config.batch_store, self.config.batch_kms_key)
        api = BatchApi(store, self.keys, self.access_log, self._serves_model, self.config.batch_retention_hours)
        return api.routes()

    def _serves_model(self, name: str) -> bool:
        """A batch's model: one this gateway serves, or one it cannot rule out yet (no replica has listed addons)."""
        try:
            self._resolve_model(name)
        except ApiError:
            return False
        return True

    def metrics_app(self) -> web.Application:
        app = web.Application()
        _routes(app, [("GET", "/metrics", self.prometheus), ("GET", "/health", self.health)])
        return app

    # -- small endpoints -------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        """200 when requests can be taken: served now, or held while a replica wakes from zero.

        A gateway that said "not ready" at zero replicas would be taken out of its load balancer, and the request
        that should wake the deployment would never arrive.
        """
        ready = len(self.pool.ready)
        body: dict[str, Any] = {
            "upstreams_ready": ready,
            "upstreams_known": len(self.pool.upstreams),
            "draining": self.draining,
            # what peer regions' gateways read before they spill a request here (runtime/serve/peers.py)
            "saturated": self.admission.active >= self.admission.max_concurrency or self.admission.queued > 0,
        }
        if self.config.region is not None:
            body["region"] = self.config.region
        if self.draining or not self.pool.discovered.is_set():
            return web.json_response({**body, "ready": False}, status=503)
        if ready == 0 and self.config.wake_timeout <= 0:
            return web.json_response({**body, "ready": False, "reason": "no upstream ready"}, status=503)
        return web.json_response({**body, "ready": True, "holding": ready == 0})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _model_cards(self) -> list[dict[str, Any]]:
        created = self.created
        cards = [{"id": self.config.model, "object": "model", "created": created, "owned_by": "byoc"}]
        names = list(self.declared) + [n for n in self.pool.learned_addons() if n not in self.declared]
        for name in names:
            if name != self.config.model:
                cards.append(
                    {"id": name, "object": "model", "created": created, "owned_by": "byoc", "parent": self.config.model}
                )
        return cards

    async def list_models(self, request: web.Request) -> web.Response:
        """The base model and its addons. With no replica ready, the addons only replicas know (not declared with
        --addon) cannot be listed: the list says `"partial": true` rather than wake the deployment (a monitor polling
        the list would keep GPUs up); a request naming such an addon is still held and served."""
        if self.keys.authenticate(request.headers.get("Authorization")) is None:
            return self._error(_unauthorized())
        await self._first_discovery()
        body: dict[str, Any] = {"object": "list", "data": self._model_cards()}
        if not self.pool.ready:
            body["partial"] = True
        return web.json_response(body)

    async def get_model(self, request: web.Request) -> web.Response:
        if self.keys.authenticate(request.headers.get("Authorization")) is None:
            return self._error(_unauthorized())
        await self._first_discovery()
        for card in self._model_cards():
            if card["id"] == request.match_info["model"]:
                return web.json_response(card)
        if not self.pool.ready:
            # it may be an addon a replica will list once one is ready: not known yet is not "no such model"
            return self._error(
                ApiError(
                    503,
                    "model: not known until a model replica is ready (the deployment may be scaling up from zero); "
                    "a request naming it is held until then",
                    param="model",
                    kind="server_error",
                    code="no_replica_ready",
                    retry_after=NO_REPLICA_RETRY_AFTER,
                )
            )
        return self._error(_unknown_model())

    async def _first_discovery(self) -> None:
        """At start-up, wait for the first round of asking the replicas (seconds; bounded by --wake-timeout)."""
        if not self.pool.discovered.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pool.discovered.wait(), self.config.wake_timeout)

    # -- completions -----------------------------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat", "/v1/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completions", "/v1/completions")

    @staticmethod
    def _error(error: ApiError) -> web.Response:
        headers = dict(JSON_HEADERS)
        if error.retry_after is not None:
            headers["Retry-After"] = error.retry_after
        if error.headers:
            headers.update(error.headers)
        return web.Response(status=error.status, body=error.body(), headers=headers)

    async def _serve(self, request: web.Request, kind: Kind, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        outcome = Outcome()
        try:
            response = await self._handle(request, kind, path, outcome, started)
        except asyncio.CancelledError:
            # the client left (aiohttp cancels the handler): every `finally` below has freed its slot and closed
            # the upstream connection, which stops the engine's work too
            outcome.code, outcome.reason = "499", "client_disconnected"
            self._record(outcome, started)
            raise
        except ApiError as error:
            outcome.code = str(error.status)
            response = self._error(error)
        except Exception as exc:  # a bug: answer 500 and log where, never the message (it may quote the request)
            log.error("request failed: %s", exception_summary(exc))
            outcome.code = "500"
            response = web.Response(
                status=500, body=error_body("internal error in the gateway", "server_error"), headers=JSON_HEADERS
            )
        self._record(outcome, started)
        return response

    def _record(self, outcome: Outcome, started: float) -> None:
        ended = time.perf_counter()
        series = self.metrics.series(self.config.model, outcome.addon)
        series.answered(outcome.code)
        ttft_ms = -1.0
        if outcome.code == "200":
            self.typical_duration += 0.1 * (ended - started - self.typical_duration)
        if outcome.stream and not outcome.usage_seen and outcome.streamed:
            # chunks came but no usage (an engine that ignores stream_options): one token per chunk of generated
            # text relayed, which is what trtllm-serve sends per iteration (a lower bound with speculative
            # decoding); prompt tokens unknown
            outcome.output_tokens = outcome.content_chunks
            outcome.usage_source = "counted"
        if outcome.code == "200" or outcome.streamed:
            series.duration.observe(ended - started)
            series.prompt_tokens += outcome.prompt_tokens
            series.output_tokens += outcome.output_tokens
            series.cached_tokens += outcome.cached_tokens
        if self.ledger is not None and outcome.replica_seconds > 0:
            # every request a replica worked on, answered or not, with the usage the access line says
            self.ledger.record(
                outcome.key,
                self.config.model,
                outcome.addon,
                outcome.prompt_tokens,
                outcome.cached_tokens,
                outcome.output_tokens,
                outcome.replica_seconds * self.config.gpus_per_replica,
            )
        # time to first token only where the gateway sees the first token: streamed answers (a non-streamed
        # answer's first token is inside the engine; trtllm_time_to_first_token_seconds has it)
        if outcome.first_token is not None:
            series.ttft.observe(outcome.first_token - started)
            ttft_ms = (outcome.first_token - started) * 1000
            if outcome.output_tokens > 1 and outcome.last_token is not None:
                series.itl.observe((outcome.last_token - outcome.first_token) / (outcome.output_tokens - 1))
        if outcome.waited_for_wake and (outcome.first_token is not None or outcome.code == "200"):
            # a streamed answer's first token (the client may leave after it), or a non-streamed answer whole (its
            # first token is inside it)
            self.metrics.wake_ttft.observe((outcome.first_token or ended) - started)
        reason = self._region_fields(outcome)
        reason += f" reason={outcome.reason}" if outcome.reason else ""
        if outcome.batch:
            reason += " class=batch"
        self.access_log.write(
            f"key={outcome.key} model={self.config.model} addon={outcome.addon} stream={outcome.stream:d} "
            f"status={outcome.code} prompt_tokens={outcome.prompt_tokens} output_tokens={outcome.output_tokens} "
            f"usage={outcome.usage_source} cached_tokens={outcome.cached_tokens} "
            f"ttft_ms={ttft_ms:.1f} latency_ms={(ended - started) * 1000:.1f}{reason}"
        )

    def _region_fields(self, outcome: Outcome) -> str:
        """The access line's region fields: the region that served the request (with --region, or when a peer
        did), why it spilled there, and the region that spilled it here."""
        fields = ""
        if outcome.region:
            fields = f" region={outcome.region} spill={outcome.spill_reason}"
        elif self.config.region is not None:
            fields = f" region={self.config.region}"
        if outcome.spilled_from is not None:
            fields += f" spilled_from={outcome.spilled_from}"
        return fields

    def _resolve_model(self, name: str) -> Addon | Unresolved | None:
        """The addon a model name selects (None: the base model).

        Raises 404 for a name no ready replica serves. With no replica ready, the replicas' own addons are not
        known yet (start-up, or scale from zero): the name stays unresolved and the request is held like any other.
        """
        if name == self.config.model:
            return None
        addon = self.declared.get(name)
        if addon is not None:
            return addon
        learned = self.pool.learned_addons()
        if name in learned:
            return Addon(name, lora_int_id(name), learned[name] or f"{ADAPTER_ROOT}/{name}")
        if not self.pool.ready:
            return UNRESOLVED
        raise _unknown_model()

    def _limited(self, reason: str, message: str, wait: float, outcome: Outcome) -> ApiError:
        self.metrics.rate_limited.labels(reason=reason).inc()
        outcome.reason = reason
        # OpenAI's type says which limit: `tokens` for tokens per minute, `requests` for the others
        kind = "tokens" if reason == "key_tpm" else "requests"
        return ApiError(429, message, kind=kind, code="rate_limit_exceeded", retry_after=retry_after(wait))

    def _key_limits(self, key: ApiKey) -> KeyLimits:
        limits = self._limits.get(key)
        if limits is None:
            budget = key.budget
            limits = self._limits[key] = KeyLimits(
                key.rpm if key.rpm is not None else self.config.rate_limit_rpm,
                key.tpm or 0,
                key.max_concurrency or 0,
                budget.tokens if budget is not None else 0,
                budget.period if budget is not None else "month",
            )
        return limits

    async def _admit(self, key: ApiKey, body: dict[str, Any]) -> Ticket | Refusal:
        limits = self._key_limits(key)
        estimate = prompt_estimate(body)
        reserve = estimate + completion_bound(body, self.config.max_context, estimate)
        if self.shared is not None:
            decision: Ticket | Refusal = await self.shared.admit(key.name, limits, estimate, reserve)
            return decision
        return self.limiter.admit(key.name, limits, estimate, reserve)

    def _settle(self, ticket: Ticket, outcome: Outcome) -> None:
        """Charge what the request used (prompt + completion): the engine's usage; without it, the prompt estimate
        and one token per chunk of generated text; nothing for a request that reached no engine."""
        if outcome.usage_source == "engine":
            used = outcome.prompt_tokens + outcome.output_tokens
        elif outcome.usage_source == "peer":
            used = 0  # a peer region served it and charged the key there: counted once, where served
        elif outcome.code == "200" or outcome.streamed:
            used = ticket.estimate + outcome.content_chunks
        else:
            used = 0
        if self.shared is not None:
            self.shared.settle(ticket, used)
        else:
            self.limiter.settle(ticket, used)

    def _refused(self, refusal: Refusal, key: ApiKey, outcome: Outcome) -> ApiError:
        limits = self._key_limits(key)
        if refusal.reason == "budget":
            assert refusal.period is not None
            self.metrics.rate_limited.labels(reason="budget").inc()
            outcome.reason = "budget"
            period = "day" if limits.budget_period == "day" else "month"
            # OpenAI's own quota error: 429, type and code `insufficient_quota` (openai-python raises RateLimitError).
            # Requests in flight hold their most (prompt and max_tokens) until they end: set max_tokens to spend a
            # budget to its last tokens
            return ApiError(
                429,
                f"budget: this key has used or holds for requests in progress its {limits.budget_tokens} tokens for "
                f"this {period} (UTC); it resets at {refusal.period.reset_iso}",
                kind="insufficient_quota",
                code="insufficient_quota",
                retry_after=retry_after(refusal.wait),
                headers={"X-Budget-Reset": refusal.period.reset_iso},
            )
        messages = {
            "key_rpm": f"rate limit: this key may send {limits.rpm} requests per minute",
            "key_tpm": f"rate limit: this key may use {limits.tpm} tokens (prompt + completion) per minute",
            "key_concurrency": f"rate limit: this key may have {limits.max_concurrency} requests in progress at once",
        }
        return self._limited(refusal.reason, messages.get(refusal.reason, "rate limit"), refusal.wait, outcome)

    async def _handle(
        self, request: web.Request, kind: Kind, path: str, outcome: Outcome, started: float
    ) -> web.StreamResponse:
        if self.draining:
            # SIGTERM: the load balancer takes this gateway out of rotation (/ready says 503) but may still send a
            # few; they go to another gateway replica, not into a process about to exit
            raise self._draining(outcome)
        key = self._batch_owner(request, outcome)
        if key is None:
            key = self.keys.authenticate(request.headers.get("Authorization"))
        if key is None:
            raise _unauthorized()
        outcome.key = key.name
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                413,
                f"request body: larger than the gateway's limit of {MAX_BODY_BYTES // (1024 * 1024)} MiB",
                param="body",
                code="request_too_large",
            ) from None
        parsed = validate(kind, parse_json(raw), self.config.max_context, self.config.max_stop_sequences)
        outcome.stream = parsed.stream
        addon = self._resolve_model(parsed.model)
        if not isinstance(addon, Unresolved):
            outcome.addon = addon.name if addon is not None else BASE
        if outcome.batch and self.pool.ready:
            self._batch_admit(outcome, count=False)  # a line that would yield costs its owner no rate-limit unit
        ticket = await self._admit(key, parsed.body)
        if isinstance(ticket, Refusal):
            raise self._refused(ticket, key, outcome)
        outcome.spilled_from = self.peers.spilled_from(request)
        outcome.spillable = self.peers.enabled and not outcome.batch and outcome.spilled_from is None
        try:
            try:
                return await self._serve_here(request, path, parsed, addon, outcome, raw)
            except SpillOver as spill:
                return await self._spill(request, path, parsed, addon, outcome, raw, spill)
        finally:
            self._settle(ticket, outcome)

    async def _serve_here(
        self,
        request: web.Request,
        path: str,
        parsed: ParsedRequest,
        addon: Addon | Unresolved | None,
        outcome: Outcome,
        raw: bytes,
    ) -> web.StreamResponse:
        """The request served by this region's replicas: held while none is ready, an admission slot, a replica.
        Raises SpillOver where a peer region should take it instead (runtime/serve/peers.py)."""
        await self._hold_until_ready(outcome)
        if isinstance(addon, Unresolved):
            addon = self._resolve_model(parsed.model)  # a replica is ready now: it has told us its addons
            if isinstance(addon, Unresolved):
                raise _unknown_model()
            outcome.addon = addon.name if addon is not None else BASE
        saturated = self.admission.queued > 0 or self.admission.active >= self.admission.max_concurrency
        if saturated and outcome.spillable and self.peers.pick(unsaturated=True) is not None:
            raise SpillOver("saturated")  # it would queue here while a peer region has a free slot
        if outcome.batch:
            self._batch_admit(outcome)  # never queued: admitted into idle capacity now, or told to yield
        elif self.batch_limit is not None and saturated:
            self.batch_limit.online_queued(time.perf_counter())  # an online request waits: batch halves now
        reason = await self.admission.acquire(self.config.queue_timeout)
        if reason == "closed":
            raise self._draining(outcome)
        if reason is not None:
            refused = reason
            if outcome.spillable and self.peers.pick() is not None:
                raise SpillOver(
                    "saturated", lambda: self._limited(refused, "the gateway is at capacity: retry shortly", 1, outcome)
                )
            raise self._limited(reason, "the gateway is at capacity: retry shortly", 1, outcome)
        self.in_flight += 1
        try:
            forward = self._forward_batch if outcome.batch else self._forward_online
            return await forward(request, path, parsed, addon, outcome, raw)
        finally:
            self.in_flight -= 1
            self.admission.release()

    async def _spill(
        self,
        request: web.Request,
        path: str,
        parsed: ParsedRequest,
        addon: Addon | Unresolved | None,
        outcome: Outcome,
        raw: bytes,
        spill: SpillOver,
    ) -> web.StreamResponse:
        """A request this region cannot serve now, sent to a peer region as the client sent it (runtime/serve/peers.py).
        If no peer takes it: the answer this region would have given (`spill.fallback`), or served here after all,
        held or queued as without peers."""
        tried: list[Peer] = []
        wake = spill.reason == "no_replica"
        self.spilling += 1
        if wake:
            self.pending += 1  # still demand for this region's replicas: the autoscaler's wake-up signal stays up
        try:
            while (peer := self.peers.pick(exclude=tried)) is not None:
                tried.append(peer)
                peer.outstanding += 1
                response: aiohttp.ClientResponse | None = None
                answer = PeerAnswer(region=peer.region)
                try:
                    response = await self.peers.send(peer, path, raw, request.headers.get("Authorization"))
                    if response is None:
                        continue  # declined or unreachable before its first byte: the next peer
                    self.peer_answers[response] = outcome
                    outcome.region, outcome.spill_reason, outcome.usage_source = peer.region, spill.reason, "peer"
                    self.peers.spilled.labels(self.config.region or "", peer.region, spill.reason).inc()
                    return await self.peers.relay(request, response, answer)
                finally:
                    peer.outstanding -= 1
                    if response is not None:
                        outcome.code = answer.code
                        outcome.reason = answer.reason or outcome.reason
                        self.peer_answers.pop(response, None)
                        if answer.code == "200":
                            response.release()
                        else:
                            response.close()  # an unfinished answer: drop the connection, which stops the work
        finally:
            self.spilling -= 1
            if wake:
                self.pending -= 1
        outcome.spillable = False  # no peer took it: this region's own answer
        if spill.fallback is not None:
            raise spill.fallback()
        return await self._serve_here(request, path, parsed, addon, outcome, raw)

    # -- batch admission class (issue 22) ---------------------------------------------------------------------
    def _batch_owner(self, request: web.Request, outcome: Outcome) -> ApiKey | None:
        """The key a batch line is served as: the batch's owner, when the request bears the worker's token
        (--batch-worker-token-file); None for any other request. Raises 403 for an owner this gateway does not know
        (a key deleted since the batch was created) and 400 for a worker request without the owner header."""
        if self.batch_digest is None:
            return None
        authorization = request.headers.get("Authorization")
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        if not hmac.compare_digest(hashlib.sha256(authorization[7:].strip().encode()).digest(), self.batch_digest):
            return None
        outcome.batch = True
        owner = request.headers.get(OWNER_HEADER, "").strip()
        if not owner:
            raise ApiError(400, f"{OWNER_HEADER}: the batch worker must name the batch's owner", param=OWNER_HEADER)
        if not self.keys.enabled:
            return ApiKey(owner, b"")  # --insecure-no-auth: no key has limits to apply
        key = self.keys.by_name(owner)
        if key is None:
            raise ApiError(
                403,
                f"{OWNER_HEADER}: the batch's owner is not a key of this gateway (deleted after the batch was made?)",
                kind="permission_error",
                param=OWNER_HEADER,
                code="batch_owner_unknown",
            )
        return key

    def batch_capacity(self) -> int:
        """Requests this gateway may have in flight before batch work stops being admitted: its --max-concurrency
        less --batch-headroom, or, if lower, this gateway's share of the engines' slots: --batch-slots-per-replica x
        the ready replicas, less --batch-headroom, divided by the gateway replicas counted in the limits store's
        heartbeats (runtime/serve/store.py; 1 without --store). Every gateway replica admits batch lines on its own,
        so without the division N gateways would let N times the engines' slots of batch work in, and the engines
        would queue online requests behind it (trtllm-serve queues what is beyond max_batch_size). A share rounds
        down, but never to 0 while the engines have a slot to give: batch work must not stall for good because the
        gateways outnumber the slots; 0 when no engine is ready."""
        capacity = self.config.max_concurrency - self.config.batch_headroom
        if self.config.batch_slots_per_replica:
            engines = self.config.batch_slots_per_replica * len(self.pool.ready) - self.config.batch_headroom
            gateways = self.store.replicas if self.store is not None else 1
            capacity = min(capacity, max(engines // gateways, 1) if engines > 0 else 0)
        # no engine ready (0 slots less the headroom): none to give, not fewer than none
        return max(capacity, 0)

    def _batch_allowed(self) -> int:
        """Batch lines that may be in flight now: `batch_capacity()`, or the TTFT-guarded limit below it
        (--batch-ttft-ratio; runtime/serve/batch/limit.py)."""
        ceiling = self.batch_capacity()
        return ceiling if self.batch_limit is None else self.batch_limit.allowed(ceiling)

    def _batch_baseline(self) -> float:
        baseline = None if self.batch_limit is None else self.batch_limit.baseline()
        return math.nan if baseline is None else baseline[1]

    def _batch_admit(self, outcome: Outcome, count: bool = True) -> None:
        """Admit a batch line only into capacity online traffic leaves idle: no request waiting for a slot, no
        streamed online request waiting for its first token, fewer requests in flight than `batch_capacity()`, and
        fewer batch lines in flight than the TTFT-guarded limit. Otherwise 429 `batch_yield` at once (never queued: a
        queued batch line would hold a place an online request could take); the worker backs off and sends it again.

        Why an online request's wait for its first token holds batch lines: trtllm-serve has no per-request priority
        (1.3.0rc19; docs/performance.md, "What the engine offers"), and its scheduler puts every new request's prompt
        into the next iterations beside the ones already there, FCFS up to max_num_tokens. A batch line let in now
        would have its prompt computed in the iteration the online first token waits for: prefill is compute-bound,
        on a GPU too, so it lengthens that iteration by about its prompt's share. Once the first token is out, the
        online request only decodes, which a memory-bound GPU shares almost for free."""
        online_idle = not self.config.batch_preempt or self.online_in_flight == 0
        allowed = self._batch_allowed()
        room = self.admission.active < self.batch_capacity() and self.batch_in_flight < allowed
        if online_idle and self.online_awaiting_first == 0 and self.admission.queued == 0 and room:
            if count:
                self.batch_decisions.labels(decision="admitted").inc()
                if self.batch_limit is not None:
                    self.batch_limit.batch_admitted(self.batch_in_flight + 1)
            return
        # the limit at 0: no line is let in before several online requests have answered; a worker told to come
        # back in a second would send its refused lines a dozen times a second, CPU the engines' host shares
        raise self._batch_yield(outcome, BATCH_PAUSED_RETRY_SECONDS if allowed == 0 else None, full=not room)

    def _batch_yield(self, outcome: Outcome, wait: float | None = None, full: bool = True) -> ApiError:
        """429 batch_yield; `full`: no room for more batch lines (else a moment's hold for an online request), said
        in the YIELD_HEADER so that the worker's send window shrinks only on the first."""
        self.batch_decisions.labels(decision="yielded").inc()
        if self.batch_limit is not None:
            self.batch_limit.batch_refused()
        outcome.reason = "batch_yield"
        return ApiError(
            429,
            "batch work yields to online traffic: retry after the time in Retry-After",
            kind="requests",
            code="batch_yield",
            retry_after=retry_after(wait if wait is not None else min(self._busy_estimate(), 5.0)),
            headers={YIELD_HEADER: "full" if full else "hold"},
        )

    async def _forward_batch(
        self,
        request: web.Request,
        path: str,
        parsed: ParsedRequest,
        addon: Addon | None,
        outcome: Outcome,
        raw: bytes,
    ) -> web.StreamResponse:
        """A batch line, forwarded in a task of its own so that an online arrival can pre-empt it
        (--batch-preempt): its upstream connection is closed, which stops the engine's work on it, and the worker
        is answered 429 `batch_yield` and sends the line again later."""
        task = asyncio.ensure_future(self._forward(request, path, parsed, addon, outcome, raw))
        self.batch_lines[task] = None
        if self.batch_limit is not None and self.batch_in_flight >= self.batch_limit.limit:
            self.borrowed[task] = None  # above the learned limit: let in while online traffic is away
        self.batch_in_flight += 1
        try:
            return await task
        except asyncio.CancelledError:
            if task in self.preempted and _current_not_cancelled():
                outcome.code = "429"
                raise self._batch_yield(outcome) from None
            raise
        finally:
            self.batch_in_flight -= 1
            self.batch_lines.pop(task, None)
            self.borrowed.pop(task, None)
            self.preempted.discard(task)

    async def _forward_online(
        self,
        request: web.Request,
        path: str,
        parsed: ParsedRequest,
        addon: Addon | None,
        outcome: Outcome,
        raw: bytes,
    ) -> web.StreamResponse:
        self.online_in_flight += 1
        if parsed.stream and self.batch_digest is not None:
            outcome.awaiting_first = True
            self.online_awaiting_first += 1
        if self.config.batch_preempt and self.batch_lines:
            self._preempt_batch()
        if self.batch_limit is not None:
            outcome.online_token = self.batch_limit.online_started(self.batch_in_flight)
            excess = min(len(self.borrowed), self.batch_in_flight - self._batch_allowed())
            if excess > 0 and self.batch_limit.mode in ("learned", "probe") and not self.config.batch_preempt:
                # slots lent to batch work while online traffic was away are taken back when it returns: the newest
                # borrowed lines end (429 batch_yield, sent again later). Lines above a limit just halved run to
                # their end: ending them would end every line longer than the gap between online requests
                self._preempt_batch(excess, among=self.borrowed)
        try:
            return await self._forward(request, path, parsed, addon, outcome, raw)
        finally:
            self.online_in_flight -= 1
            self._first_token_seen(outcome)  # an answer with no token (an error, a client gone) holds nothing either
            if self.batch_limit is not None:
                self.batch_limit.online_ended()

    def _first_token_seen(self, outcome: Outcome) -> None:
        if outcome.awaiting_first:
            outcome.awaiting_first = False
            self.online_awaiting_first -= 1

    def _preempt_batch(
        self, count: int | None = None, among: dict[asyncio.Task[web.StreamResponse], None] | None = None
    ) -> None:
        """An online request starts: every batch line in flight is ended now (--batch-preempt), or the newest
        `count` of `among` (the batch limit's reclaim of borrowed slots)."""
        lines = self.batch_lines if among is None else among
        running = [task for task in lines if not task.done() and task not in self.preempted]
        for task in running[::-1][:count]:
            self.preempted.add(task)
            task.cancel()
            self.batch_decisions.labels(decision="preempted").inc()

    async def _hold_until_ready(self, outcome: Outcome) -> None:
        """Scale from zero: with no replica ready, wait for one (bounded in time and in number). With peer regions,
        wait --spill-hold at most, then raise SpillOver (a request spilled here is not held at all)."""
        if self.pool.ready:
            self.region_down = False
            return
        held = self.pending + self.admission.active + self.admission.queued
        if held >= self.config.max_concurrency + self.config.max_queue:
            raise self._limited("queue_full", "the gateway is at capacity: retry shortly", 1, outcome)
        if self.draining:
            raise self._draining(outcome)
        held_since = time.perf_counter()
        timeout = self.config.wake_timeout
        ready: bool | None = False
        if outcome.spilled_from is not None:
            timeout = 0.0  # the region that spilled it tries its next peer, or serves it itself: no wait here
        elif outcome.spillable:
            # replicas known but none ready have failed their checks or a request (an outage: spill at once); none
            # known is a scale from zero (a starting pod is not in the headless Service's DNS before it is ready):
            # one may be up within --spill-hold
            if not (self.region_down or self.pool.upstreams) and self.config.spill_hold > 0:
                first = min(self.config.spill_hold, timeout)
                ready = await self._wait_ready(first)
                timeout -= first
            if ready is False and self.peers.pick() is not None:
                self.region_down = True
                raise SpillOver("no_replica")
        if ready is False:
            ready = await self._wait_ready(timeout)
        if ready is None:
            raise self._draining(outcome)
        if not ready:
            self.metrics.upstream_errors.labels(reason="no_upstream").inc()
            if outcome.spilled_from is None:  # held for a wake here (a spilled request is not held at all)
                self.metrics.wake_timeouts.inc()
            outcome.reason = "no_upstream"
            where = " here or in a peer region" if self.peers.enabled and outcome.spilled_from is None else ""
            raise ApiError(
                503,
                f"no model replica is ready{where} (the deployment may be scaling up from zero): retry shortly",
                kind="server_error",
                code="no_replica_ready",
                retry_after=NO_REPLICA_RETRY_AFTER,
            )
        self.metrics.wake.observe(time.perf_counter() - held_since)
        outcome.waited_for_wake = True

    async def _wait_ready(self, timeout: float) -> bool | None:
        """Held (`byoc_gateway_pending_requests`) until a replica is ready (True), `timeout` seconds (False) or the
        drain (None, which answers at once)."""
        self.pending += 1
        waiting = asyncio.ensure_future(self.pool.wait_ready(timeout))
        drain = asyncio.ensure_future(self.drain_started.wait())
        try:
            await asyncio.wait((waiting, drain), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.pending -= 1
            waiting.cancel()
            drain.cancel()
        if not waiting.done() or waiting.cancelled():
            return None
        return bool(waiting.result())

    @staticmethod
    def _draining(outcome: Outcome) -> ApiError:
        outcome.reason = "draining"
        return ApiError(
            503,
            "this gateway replica is shutting down: retry (another replica will take the request)",
            kind="server_error",
            code="gateway_draining",
            retry_after=DRAINING_RETRY_AFTER,
        )

    async def _forward(
        self,
        request: web.Request,
        path: str,
        parsed: ParsedRequest,
        addon: Addon | None,
        outcome: Outcome,
        raw: bytes,
    ) -> web.StreamResponse:
        body = parsed.body
        payloads: dict[str, bytes] = {}
        if addon is not None:
            body["lora_request"] = addon.lora_request()
        else:
            # the client's bytes go upstream when nothing in them changes but the usage request (the replica serves
            # the model under the name asked for, no field renamed or dropped): no second JSON encoding
            payload = parsed.upstream_bytes(raw)
            if payload is not None:
                payloads[parsed.model] = payload
        route = self.router.key(path.endswith("chat/completions"), body, addon.name if addon is not None else None)
        tried: list[Upstream] = []  # each replica at most once per request
        overloaded: Overloaded | None = None  # the answer for the client if every replica is busy
        for _ in range(max(2, len(self.pool.upstreams) + 1)):
            upstream = await self._next_replica(route, tried, overloaded is not None, outcome)
            if upstream is None:
                break
            tried.append(upstream)
            # each replica is addressed by the model id it reports (trtllm-serve: its model path)
            upstream_model = upstream.model_id or self.config.model
            payload = payloads.get(upstream_model)
            if payload is None:
                body["model"] = upstream_model
                payload = payloads[upstream_model] = json.dumps(body).encode()
            upstream.outstanding += 1
            busy_mark = self.busy.begin(upstream.url)
            response: UpstreamResponse | None = None
            try:
                try:
                    response = await self.session.post(upstream.url + path, data=payload, headers=JSON_HEADERS)
                except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                    reason = "timeout" if isinstance(exc, TimeoutError) else "connect"
                    self.metrics.upstream_errors.labels(reason=reason).inc()
                    self.pool.failed(upstream)
                    continue
                if response.status in RETRIED_STATUSES:
                    # the replica could not take the request (busy, or its proxy failed): before the first byte,
                    # so another replica can; a busy replica stays in rotation
                    self.metrics.upstream_errors.labels(reason=f"status_{response.status}").inc()
                    if response.status in (429, 503):
                        overloaded = self._overloaded(response, overloaded)
                    continue
                self.answers[response] = outcome
                if parsed.stream:
                    return await self._relay_stream(request, response, parsed, upstream_model, outcome, upstream)
                return await self._relay(response, parsed, upstream_model, outcome)
            finally:
                # also on cancellation (the client left): the slot on the replica is free at once
                if response is not None:
                    self.answers.pop(response, None)
                    if outcome.code == "200":
                        response.release()
                    else:
                        response.close()  # an unfinished answer: drop the connection, which stops the engine
                upstream.outstanding -= 1
                outcome.replica_seconds += self.busy.end(upstream.url, busy_mark)
                self.router.release(route)
        raise self._none_took_it(overloaded, outcome)

    def _none_took_it(self, overloaded: Overloaded | None, outcome: Outcome) -> Exception:
        """Every replica tried was busy (429/503) or failing, before the first byte: a peer region may take the
        request (SpillOver), else the client's answer."""
        if outcome.spillable and self.peers.pick() is not None:
            reason = "overloaded" if overloaded is not None else "no_replica"
            return SpillOver(reason, lambda: self._no_replica_left(overloaded, outcome))
        return self._no_replica_left(overloaded, outcome)

    def _no_replica_left(self, overloaded: Overloaded | None, outcome: Outcome) -> ApiError:
        """Every replica tried: busy (their 429 or 503, never the client's fault) or unreachable (502)."""
        if overloaded is not None:
            outcome.reason = f"upstream_{overloaded.status}"
            if overloaded.status == 429:
                self.metrics.rate_limited.labels(reason="engine").inc()
            return overloaded
        outcome.reason = "upstream_unavailable"
        return ApiError(
            502,
            "no model replica could be reached: retry shortly",
            kind="server_error",
            code="upstream_unavailable",
            retry_after="1",
        )

    async def _next_replica(self, route: Any, tried: list[Upstream], busy: bool, outcome: Outcome) -> Upstream | None:
        """A ready replica this request has not tried yet; None when every one has answered (busy or failing)."""
        upstream = self.router.pick(route, exclude=tried)
        if upstream is not None or busy or self.pool.ready:
            return upstream
        if tried:
            self.region_down = True  # every replica it was sent to failed: with peers, spill at once
        # the replicas tried have all failed and left the rotation: hold as at zero replicas, then try whichever is
        # ready (one that passed a health check again may be tried again)
        await self._hold_until_ready(outcome)
        return self.router.pick(route, exclude=tried) or self.router.pick(route)

    def _overloaded(self, response: UpstreamResponse, earlier: Overloaded | None) -> Overloaded:
        """A busy replica's 429 or 503 as the client gets it when no replica is left: typed as OpenAI types it
        (429 `requests`/`rate_limit_exceeded`, as the gateway's own limits; 503 `server_error`), with the
        soonest Retry-After an engine gave, else the gateway's estimate. Its body is not passed on (it may quote the
        request). A 429 outranks a 503: some replica is up and will take work again."""
        given = _retry_after_seconds(response.headers.get("Retry-After"))
        if earlier is not None and earlier.engine_wait is not None:
            given = earlier.engine_wait if given is None else min(given, earlier.engine_wait)
        wait = retry_after(given if given is not None else self._busy_estimate())
        if response.status == 429 or (earlier is not None and earlier.status == 429):
            error = Overloaded(
                429,
                "every model replica is at capacity: retry after the time in Retry-After",
                kind="requests",
                code="rate_limit_exceeded",
                retry_after=wait,
            )
        else:
            error = Overloaded(
                503,
                "every model replica is overloaded: retry after the time in Retry-After",
                kind="server_error",
                code="server_is_overloaded",
                retry_after=wait,
            )
        error.engine_wait = given
        return error

    def _busy_estimate(self) -> float:
        """Seconds until a busy replica likely has room: about one request's duration (a running request ends and
        frees its place), from the recent answers; 1 s before any."""
        return min(BUSY_RETRY_MAX_SECONDS, max(1.0, self.typical_duration))

    async def _upstream_failure(self, response: UpstreamResponse, parsed: ParsedRequest) -> ApiError:
        raw = await response.read()
        if 400 <= response.status < 500:
            # the engine refused the input: the client's mistake, not the replica's (no upstream error, no retry)
            return upstream_error(response.status, raw, parsed.body, parsed.renamed)
        self.metrics.upstream_errors.labels(reason="status_5xx").inc()
        return ApiError(502, f"the model replica failed (HTTP {response.status}): retry shortly", kind="server_error")

    async def _relay(
        self, response: UpstreamResponse, parsed: ParsedRequest, upstream_model: str, outcome: Outcome
    ) -> web.Response:
        if response.status != 200:
            raise await self._upstream_failure(response, parsed)
        try:
            raw = await response.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            if outcome.reason == "drain_deadline":
                raise self._draining(outcome) from None
            raise
        outcome.prompt_tokens, outcome.output_tokens, outcome.cached_tokens = answer_usage(raw)
        if outcome.prompt_tokens or outcome.output_tokens:
            outcome.usage_source = "engine"
        body = rename_model(raw, upstream_model, parsed.model)
        outcome.code = "200"
        return web.Response(body=body, headers=JSON_HEADERS)

    async def _relay_stream(
        self,
        request: web.Request,
        response: UpstreamResponse,
        parsed: ParsedRequest,
        upstream_model: str,
        outcome: Outcome,
        upstream: Upstream,
    ) -> web.StreamResponse:
        if response.status != 200:
            raise await self._upstream_failure(response, parsed)
        out = SseResponse(status=200, headers=SSE_HEADERS)  # headers with the first events, [DONE] with the end
        await out.prepare(request)
        editor = StreamEditor(parsed, upstream_model)
        broken = False
        blocks = EventBlocks()
        final = b""
        try:
            # events that arrive together leave together: edited as one block, one write (one send) per read
            async for data in response.content.iter_any():
                now = time.perf_counter()
                outcome.streamed = True
                block = blocks.feed(data)
                if not block:
                    continue
                edited = editor.edit(block)
                if editor.generated:
                    # the first and last chunk of generated text (a role chunk or a comment is not a token)
                    if outcome.first_token is None:
                        outcome.first_token = now
                        self._first_token_seen(outcome)
                        if outcome.online_token is not None and self.batch_limit is not None:
                            ttft = now - outcome.online_token[0]
                            self.batch_limit.online_sample(outcome.online_token, ttft, self.batch_in_flight)
                    outcome.last_token = now
                if editor.finished:
                    final = edited  # leaves with the end of the body, in one send
                    break
                if edited:
                    try:
                        await out.write(edited)
                    except ConnectionResetError:  # the client left: closing our side stops the engine too
                        outcome.code, outcome.reason = "499", "client_disconnected"
                        return out
                if editor.failed:
                    break
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            broken = True  # the upstream broke off: handled below, as a stream that never finished
        finally:
            # metered however the stream ends: complete, cut, or cancelled because the client left
            counts = editor.counts()
            if counts is not None:
                outcome.usage_seen, outcome.usage_source = True, "engine"
                outcome.prompt_tokens, outcome.output_tokens = counts
                outcome.cached_tokens = editor.cached_tokens()
            outcome.content_chunks = editor.content_chunks
        return await self._end_stream(out, outcome, upstream, editor.finished, editor.failed and not broken, final)

    async def _end_stream(
        self,
        out: web.StreamResponse,
        outcome: Outcome,
        upstream: Upstream,
        finished: bool,
        failed_answer: bool,
        final: bytes = b"",
    ) -> web.StreamResponse:
        """Close the client's stream: complete, an answer the replica failed, a replica that broke off, or one the
        drain's deadline ended."""
        if not finished and outcome.reason == "drain_deadline":
            outcome.code = "503"  # the gateway ended it, not the replica: no upstream error, no health check
            try:
                await out.write(STREAM_DRAINED)
                await out.write_eof()
            except ConnectionResetError:
                pass
            return out
        if failed_answer:
            # the replica failed this one answer and said so: the request's failure, not a sign the replica is down
            # (it stays in rotation); its message is not passed on (it may quote the request)
            self.metrics.upstream_errors.labels(reason="stream_error").inc()
            outcome.code, outcome.reason = "502", "stream_error"
            try:
                await out.write(STREAM_ERROR)
                await out.write_eof()
            except ConnectionResetError:
                pass
            return out
        if not finished:
            # broken off: trtllm-serve ends a failed answer that way too, so check the replica rather than drop it
            self.metrics.upstream_errors.labels(reason="stream_cut").inc()
            self.pool.check_now(upstream)
            outcome.code, outcome.reason = "502", "stream_cut"
            try:
                await out.write(STREAM_CUT)
                await out.write_eof()
            except ConnectionResetError:
                pass
            return out
        outcome.code = "200"
        try:
            await out.write_eof(final)
        except ConnectionResetError:
            outcome.code, outcome.reason = "499", "client_disconnected"
        return out


async def _open_ledger(config: GatewayConfig) -> UsageLedger:
    """The usage ledger on the store of --store, which must answer now: a wrong URL, password or CA is an input
    error at start-up (exit 2), not usage silently held in memory."""
    from byoc.errors import ByocError

    assert config.store is not None
    client = store_client(config.store, config.store_password_file, config.store_ca_file)
    try:
        await asyncio.wait_for(client.ping(), 10)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await client.aclose()
        raise ByocError(
            "--store",
            f"the store at {config.store} did not answer PING ({type(exc).__name__})",
            "check the URL, --store-password-file, --store-ca-file, and that the gateway can reach it",
        ) from None
    return UsageLedger(client)


def _current_not_cancelled() -> bool:
    """The handler itself is not being cancelled (its client did not leave): only the task it awaited was."""
    current = asyncio.current_task()
    return current is None or current.cancelling() == 0


def _retry_after_seconds(value: str | None) -> float | None:
    """An engine's Retry-After (RFC 9110: seconds, or an HTTP date) in seconds; None without a usable one."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class Overloaded(ApiError):
    """Every replica tried was busy (429/503): the answer, and the soonest Retry-After an engine gave (seconds)."""

    engine_wait: float | None = None


class Unresolved:
    """A model name not resolved yet: no replica has listed its models (start-up, or scale from zero)."""


UNRESOLVED = Unresolved()


def _routes(app: web.Application, routes: list[tuple[str, str, Any]]) -> None:
    """The routes, and answers in OpenAI's error shape for a wrong method (405) or an unknown path (404). A path
    may take several methods (GET and POST /v1/files): its 405 lists them all."""
    methods: dict[str, list[str]] = {}
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        methods.setdefault(path, []).append(method)
    for path, names in methods.items():
        allowed = ", ".join(f"{m}, HEAD" if m == "GET" else m for m in names)

        async def not_allowed(request: web.Request, allowed: str = allowed) -> web.Response:
            error = ApiError(405, f"{request.path} accepts {allowed} only", code="method_not_allowed")
            # aiohttp answers HEAD wherever it routes GET, so Allow names it as the message does (RFC 9110 10.2.1:
            # the methods the resource supports)
            return web.Response(status=405, body=error.body(), headers={**JSON_HEADERS, "Allow": allowed})

        app.router.add_route("*", path, not_allowed)

    async def not_found(request: web.Request) -> web.Response:
        error = ApiError(404, "no such route: the API is under /v1 (chat/completions, completions, models)")
        return web.Response(status=404, body=error.body(), headers=JSON_HEADERS)

    app.router.add_route("*", "/{tail:.*}", not_found)


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        "missing or invalid API key: send the header `Authorization: Bearer <key>`",
        kind="invalid_request_error",
        code="invalid_api_key",
    )


def _unknown_model() -> ApiError:
    return ApiError(
        404,
        "model: this gateway does not serve that model; GET /v1/models lists the base model and its addons",
        param="model",
        code="model_not_found",
    )


async def serve(config: GatewayConfig, keys: list[ApiKey] | None, drain_seconds: float = 30.0) -> None:
    """Run until SIGTERM or SIGINT, then stop taking requests and let those in progress finish."""
    gateway = Gateway(config, keys)
    try:
        await _serve_until_stopped(gateway, config, drain_seconds)
    finally:
        gateway.access_log.flush()  # the last batch of access lines: an audit line is never lost on shutdown


# A request held through a wake from zero sends nothing for minutes (the wake timeout is twice the cold start, at least
# 300 s), longer than the load balancers in front of the gateway keep an idle flow: an AWS Network Load Balancer's TCP
# listener drops it after 350 s by default ("Connection idle timeout", Elastic Load Balancing, Network Load
# Balancers: "clients or targets can use TCP keepalive packets to reset the idle timeout"), and a GCP internal
# passthrough load balancer's connection tracking forgets an idle TCP connection after 600 s ("Connection tracking",
# Cloud Load Balancing docs). TCP keepalive probes from the gateway (the target) every KEEPALIVE_IDLE_S keep the flow
# open without a byte of the HTTP answer; Linux's default would send the first probe after 2 hours.
KEEPALIVE_IDLE_S = 60  # the first probe after 60 s of silence, well under the 350 s of the strictest load balancer
KEEPALIVE_INTERVAL_S = 30
KEEPALIVE_PROBES = 4  # a client gone for good is noticed after 60 + 4 x 30 s


def keep_flows_alive(site: web.TCPSite) -> None:
    """Set the TCP keepalive timers on the site's listening sockets; on Linux each accepted connection inherits them
    (aiohttp turns SO_KEEPALIVE on per connection, with the kernel's timers)."""
    import socket

    server = getattr(site, "_server", None)  # aiohttp keeps the asyncio Server it listens with here
    for sock in getattr(server, "sockets", None) or ():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
            ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ):
            if hasattr(socket, option):  # Linux (and macOS from Python 3.10 for the first two)
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _serve_until_stopped(gateway: Gateway, config: GatewayConfig, drain_seconds: float) -> None:
    await gateway.start()
    # handler_cancellation: a client that leaves cancels its request at once (499), streamed or not
    # shutdown_timeout: the drain below has ended every answer by then (aiohttp's default would wait 60 s more)
    runners = [
        web.AppRunner(
            gateway.app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=CLOSE_SECONDS,
        )
    ]
    sites = [(runners[0], config.listen)]
    if config.metrics_listen is not None:
        runners.append(
            web.AppRunner(gateway.metrics_app(), access_log=None, handle_signals=False, shutdown_timeout=CLOSE_SECONDS)
        )
        sites.append((runners[1], config.metrics_listen))
    for runner in runners:
        await runner.setup()
    tls = config.ssl_context()
    for index, (runner, address) in enumerate(sites):
        # TLS on the API listener; the metrics listener carries no request data and stays plain for Prometheus
        context = tls if index == 0 else None
        site = web.TCPSite(runner, address.host, address.port, backlog=1024, ssl_context=context)
        await site.start()
        if index == 0:
            keep_flows_alive(site)
    auth = gateway.keys.describe() if gateway.keys.enabled else "NO AUTHENTICATION (--insecure-no-auth)"
    log.info(
        "gateway listening on %s://%s (metrics %s), model %s, %d declared addons, upstreams %s, %s, %s loop",
        "https" if tls else "http",
        config.listen,
        config.metrics_listen or config.listen,
        config.model,
        len(config.addons),
        ", ".join(str(u) for u in config.upstreams),
        auth,
        loop_name(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "stopping: draining %d requests in progress, answering %d waiting ones 503",
        gateway.admission.active,
        gateway.pending + gateway.admission.queued,
    )
    gateway.drain()
    # the whole drain within drain_seconds (Kubernetes' grace period is set above it): the answers still running
    # end CLOSE_SECONDS early, so that the listeners close in time too
    deadline = time.monotonic() + max(0.0, drain_seconds - CLOSE_SECONDS)
    while (
        gateway.admission.active or gateway.pending or gateway.admission.queued or gateway.spilling
    ) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if gateway.admission.active or gateway.spilling:
        log.warning("drain deadline (%.0f s): ending %d answers still running", drain_seconds, gateway.end_answers())
        ended = time.monotonic() + CLOSE_SECONDS / 2
        while (gateway.admission.active or gateway.spilling) and time.monotonic() < ended:
            await asyncio.sleep(0.05)
    for runner in reversed(runners):
        await runner.cleanup()
    await gateway.stop()
