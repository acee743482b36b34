"""Spill-over between regions: the gateways of a deployment's other regions (`--peer-region REGION=URL`), their
health, and the forwarding of a request this region cannot serve now.

A request spills (reason in `byoc_gateway_spillover_total`):
- `no_replica`: no replica is ready here: the known ones are failing (an outage: spilled at once), or none is known
  (scale from zero: the request waits `--spill-hold` seconds for one first); once a request has spilled, the next
  spill at once until a replica is ready again;
- `saturated`: every admission slot (`--max-concurrency`) is taken, so the request would queue, and a peer that is
  not saturated itself is healthy; or the queue is full or its wait ran out;
- `overloaded`: every replica answered 429 or 503 (an engine that refuses work when full).
Always before the first byte went to the client: a stream that started here ends here. Batch lines never spill
(their work yields to online traffic in its own region).

Peers are probed at their `/ready` every `--health-interval` (every second while none is healthy): a peer is healthy
when it answers 200 with `ready: true`, at least one ready replica, not draining, and its own `region` as configured
here (a URL that reaches another region is never used). A connection error ejects it until a probe passes. The peer
with the fewest spilled requests outstanding is picked, unsaturated ones first.

Loop prevention: a forwarded request carries `X-Byoc-Spilled-From: <region>`. A gateway never spills such a request
again, and does not hold it while it has no replica ready: it answers 503 at once, and the first gateway tries its
next peer, then serves it itself (holding, queueing) as it would have without peers.

Auth: the client's `Authorization` header is forwarded as it came. The keys are the same in every region of a
deployment, so the serving region checks the key itself and applies its limits and budget; no peer-to-peer token
that could stand for any key exists. Usage: the serving region meters the request (its access line's tokens, the
usage ledger, the key's token limits); the forwarding region writes its access line with `usage=peer` and 0 tokens
and gives back its token reservation.

Residency: the peers were checked against the residency set at start-up (runtime/serve/config.py,
`GatewayConfig.residency_regions`), and `PeerPool.pick` checks each pick against it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.serve.config import GatewayConfig, PeerRegion
from runtime.serve.openai_api import ApiError

log = logging.getLogger("byoc.gateway.peers")
SPILLED_FROM_HEADER = "X-Byoc-Spilled-From"
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=2)
PEER_CONNECT_SECONDS = 5.0
# With no peer healthy, probe at least this often: a peer that comes back should take spill-over at once.
PEER_WAKE_POLL_SECONDS = 1.0
# A region id as the catalog spells them (eu-west-2, europe-west4): anything else in the header is not a region.
_REGION_ID = re.compile(r"[a-z][a-z0-9-]{1,39}")
# What a peer answers before its first byte that says "not now" (its replicas down, busy, draining) or "not this
# key here" (a key set that differs between regions, a limit in its own store): the next peer, then this region.
# Anything else (200, a 400 for the request itself, a 404 model) is the answer.
PEER_DECLINED = frozenset({401, 403, 429, 500, 502, 503, 504})
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PEER_STREAM_CUT = (
    b'data: {"error": {"message": "the peer region stopped in the middle of the answer; retry the request", '
    b'"type": "server_error", "param": null, "code": "upstream_stream_interrupted"}}\n\n'
)


class SpillOver(Exception):
    """This region cannot serve the request now: send it to a peer region. `fallback` is the answer for the client
    if no peer takes it (None: serve it here after all, holding or queueing as without peers)."""

    def __init__(self, reason: str, fallback: Callable[[], ApiError] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback


@dataclass(eq=False)
class Peer:
    spec: PeerRegion
    healthy: bool = False
    saturated: bool = False  # its own admission slots are all taken (its /ready says so)
    outstanding: int = 0  # requests this gateway has spilled to it, not finished
    problem: str = ""  # why its last probe did not find it usable (logged once per new problem)

    @property
    def region(self) -> str:
        return self.spec.region


@dataclass
class PeerAnswer:
    """What a peer made of a spilled request, as the forwarding gateway's access line and metrics say it."""

    code: str = "500"
    reason: str = ""
    region: str = ""


class PeerPool:
    """The peer regions' gateways: probed, picked, and sent spilled requests."""

    def __init__(self, config: GatewayConfig, allowed: frozenset[str], registry: CollectorRegistry) -> None:
        self.region = config.region or ""
        self.allowed = allowed
        self.peers = [Peer(spec) for spec in config.peer_regions if spec.region in allowed]
        self.interval = config.health_interval
        self.read_timeout = config.upstream_timeout
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._turn = 0
        self.known_regions = frozenset(p.region for p in self.peers)
        self.spilled = Counter(
            "byoc_gateway_spillover",
            "Requests this gateway sent to a peer region that answered them, by this region (from), the serving "
            "region (to) and why: no_replica, saturated, overloaded.",
            ["from", "to", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            "byoc_gateway_spillover_errors",
            "Spill-over attempts a peer region did not take (connect, timeout, or its status before the first byte), "
            "by peer region and reason.",
            ["to", "reason"],
            registry=registry,
        )
        self.received = Counter(
            "byoc_gateway_spilled_in",
            "Requests another region's gateway spilled to this one, by that region (from; `unknown` for a header "
            "naming no peer of this gateway).",
            ["from"],
            registry=registry,
        )
        Gauge(
            "byoc_gateway_peers_healthy", "Peer region gateways passing their probe.", registry=registry
        ).set_function(lambda: sum(1 for p in self.peers if p.healthy))
        info = Gauge(
            "byoc_gateway_region_info",
            "The region this gateway serves in and its residency set (value 1).",
            ["region", "residency"],
            registry=registry,
        )
        if config.region is not None:
            info.labels(region=config.region, residency=config.residency or "").set(1)

    @property
    def enabled(self) -> bool:
        return bool(self.peers)

    # -- picking -----------------------------------------------------------------------------------------------
    def pick(self, exclude: list[Peer] | None = None, unsaturated: bool = False) -> Peer | None:
        """A healthy peer inside the residency set, not one of `exclude`: unsaturated first, then the fewest
        requests outstanding (ties round-robin)."""
        count = len(self.peers)
        if count == 0:
            return None
        self._turn += 1
        best: Peer | None = None
        for i in range(count):
            peer = self.peers[(self._turn + i) % count]
            if not peer.healthy or peer.region not in self.allowed or (exclude and peer in exclude):
                continue
            if unsaturated and peer.saturated:
                continue
            if best is None or (peer.saturated, peer.outstanding) < (best.saturated, best.outstanding):
                best = peer
        return best

    def failed(self, peer: Peer) -> None:
        """A connection to it failed: no spill-over to it until a probe passes again."""
        if peer.healthy:
            log.warning("peer region %s failed a spilled request: out of rotation until its probe passes", peer.region)
            peer.healthy = False
        self._wake.set()

    def spilled_from(self, request: web.Request) -> str | None:
        """The region a request was spilled from (its header), as a label: a peer's region, or `unknown`."""
        value = request.headers.get(SPILLED_FROM_HEADER)
        if value is None:
            return None
        value = value.strip()
        label = value if value in self.known_regions and _REGION_ID.fullmatch(value) else "unknown"
        self.received.labels(label).inc()
        return label

    # -- lifecycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.peers:
            return
        connector = aiohttp.TCPConnector(limit=0, ssl=self._config.peer_ssl_context())
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        await self.probe_once()
        self._task = asyncio.create_task(self._run(), name="peer-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            delay = self.interval
            if not any(p.healthy for p in self.peers):
                delay = min(delay, PEER_WAKE_POLL_SECONDS)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            try:
                await self.probe_once()
            except Exception as exc:  # a bug here must not stop probing for good
                log.error("peer probe round failed: %s", type(exc).__name__)

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(p) for p in self.peers))

    async def _probe(self, peer: Peer) -> None:
        assert self._session is not None
        healthy, saturated = False, False
        problem = ""
        try:
            async with self._session.get(
                peer.spec.url + "/ready", timeout=PROBE_TIMEOUT, allow_redirects=False
            ) as response:
                body: Any = await response.json(content_type=None) if response.status == 200 else None
                if response.status != 200:
                    problem = f"/ready answered {response.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            body = None
            # a certificate the CA does not sign, a refused connection, a name that does not resolve: said once
            problem = f"{type(exc).__name__}: {exc}"[:300]
        if isinstance(body, dict):
            region = body.get("region")
            if region != peer.region:
                # a URL that reaches another region's gateway (it may be outside the residency set), or a gateway
                # that names no region (a one-region deployment's): never trusted to be the region configured
                problem = f"it answers as region {region!r}, not {peer.region!r}: never used"
            else:
                ready = body.get("upstreams_ready")
                healthy = (
                    body.get("ready") is True and isinstance(ready, int) and ready > 0 and not body.get("draining")
                )
                saturated = body.get("saturated") is True
        if healthy != peer.healthy:
            log.info("peer region %s is %s", peer.region, "healthy" if healthy else "not healthy")
        if problem and problem != peer.problem:
            log.warning("peer %s: %s", peer.spec, problem)  # once per new problem, not on every probe
        peer.healthy, peer.saturated, peer.problem = healthy, saturated, problem

    # -- forwarding --------------------------------------------------------------------------------------------
    async def send(self, peer: Peer, path: str, raw: bytes, authorization: str | None) -> aiohttp.ClientResponse | None:
        """POST the client's body to a peer, marked as spilled. The response when the peer takes the request (its
        answer, streamed or not, or its refusal of the request itself); None when it declines or cannot be reached
        (counted; a connection error ejects it)."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", SPILLED_FROM_HEADER: self.region}
        if authorization is not None:
            headers["Authorization"] = authorization
        timeout = aiohttp.ClientTimeout(total=None, connect=PEER_CONNECT_SECONDS, sock_read=self.read_timeout)
        try:
            # never follow a redirect: it would carry the prompt to a host neither the https rule nor the residency
            # check has seen; a 3xx is the peer declining the request
            response = await self._session.post(
                peer.spec.url + path, data=raw, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors.labels(peer.region, "timeout" if isinstance(exc, TimeoutError) else "connect").inc()
            self.failed(peer)
            return None
        if response.status in PEER_DECLINED or 300 <= response.status < 400:
            self.errors.labels(peer.region, f"status_{response.status}").inc()
            if response.status in (401, 403):
                log.warning(
                    "peer region %s refused a key this region accepts (HTTP %d): the keys must be the same in every "
                    "region of a deployment",
                    peer.region,
                    response.status,
                )
            response.release()
            return None
        return response

    async def relay(
        self, request: web.Request, response: aiohttp.ClientResponse, answer: PeerAnswer
    ) -> web.StreamResponse:
        """The peer's answer to the client as it came: a JSON body, or an event stream relayed chunk by chunk (cut
        off: the gateway's error event, as for a replica's stream)."""
        answer.code = str(response.status)
        content_type = response.headers.get("Content-Type", "application/json")
        if response.status != 200 or not content_type.startswith("text/event-stream"):
            try:
                body = await response.read()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
                answer.code, answer.reason = "502", "peer_cut"
                raise ApiError(
                    502, "the peer region stopped in the middle of the answer: retry", kind="server_error"
                ) from None
            headers = {"Content-Type": content_type}
            if "Retry-After" in response.headers:
                headers["Retry-After"] = response.headers["Retry-After"]
            return web.Response(status=response.status, body=body, headers=headers)
        out = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await out.prepare(request)
        cut = False
        try:
            async for data in response.content.iter_any():
                try:
                    await out.write(data)
                except ConnectionResetError:  # the client left: closing the peer's answer stops its engine too
                    answer.code, answer.reason = "499", "client_disconnected"
                    return out
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            cut = True
        try:
            if cut:
                answer.code, answer.reason = "502", "peer_stream_cut"
                await out.write(PEER_STREAM_CUT)
            await out.write_eof()
        except ConnectionResetError:
            answer.code, answer.reason = "499", "client_disconnected"
        return out
