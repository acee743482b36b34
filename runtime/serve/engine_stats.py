"""The engine stats sidecar: trtllm-serve's JSON iteration stats (`GET /metrics`) as Prometheus gauges.

trtllm-serve's /metrics returns the iteration stats gathered since the previous call (it drains a queue), as a JSON
list of objects such as {"iter": 41, "numActiveRequests": 3, "numQueuedRequests": 0, "kvCacheStats":
{"maxNumBlocks": 2048, "usedNumBlocks": 96, ...}, "inflightBatchingStats": {...}}. The newest entry wins. An empty
list means no iteration ran since the last poll: the engine is idle, so nothing is active, queued or holding KV
blocks. When the engine cannot be reached the gauges become NaN (no alert fires on a stale value) and
`byoc_engine_up` drops to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from runtime.serve.config import Address

log = logging.getLogger("byoc.engine_stats")
POLL_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


@dataclass(frozen=True)
class EngineStats:
    kv_cache_utilization: float
    active_requests: float
    queued_requests: float
    kv_used_blocks: float
    kv_max_blocks: float


IDLE = EngineStats(0.0, 0.0, 0.0, 0.0, math.nan)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_iteration_stats(payload: Any, previous: EngineStats = IDLE) -> EngineStats:
    """The newest iteration's numbers; missing fields keep their previous value (older trtllm versions)."""
    entries = payload if isinstance(payload, list) else [payload]
    entries = [e for e in entries if isinstance(e, dict)]
    if not entries:
        return EngineStats(0.0, 0.0, 0.0, 0.0, previous.kv_max_blocks)
    newest = max(entries, key=lambda e: _number(e.get("iter")) or -1.0)
    kv = newest.get("kvCacheStats") if isinstance(newest.get("kvCacheStats"), dict) else {}
    used = _number(kv.get("usedNumBlocks"))
    most = _number(kv.get("maxNumBlocks"))
    if used is None and most is not None:
        free = _number(kv.get("freeNumBlocks"))
        used = most - free if free is not None else None
    utilization = previous.kv_cache_utilization
    if used is not None and most:
        utilization = min(1.0, max(0.0, used / most))
    batching = newest.get("inflightBatchingStats") if isinstance(newest.get("inflightBatchingStats"), dict) else {}
    active = _number(newest.get("numActiveRequests"))
    if active is None:
        active = _number(batching.get("numScheduledRequests"))
    queued = _number(newest.get("numQueuedRequests"))
    return EngineStats(
        utilization,
        active if active is not None else previous.active_requests,
        queued if queued is not None else previous.queued_requests,
        used if used is not None else previous.kv_used_blocks,
        most if most is not None else previous.kv_max_blocks,
    )


class StatsExporter:
    def __init__(self, engine_url: str, interval: float) -> None:
        self.engine_url = engine_url.rstrip("/")
        self.interval = interval
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.kv = Gauge("byoc_engine_kv_cache_utilization", "KV cache blocks in use / all blocks (0..1).", registry=r)
        self.active = Gauge("byoc_engine_active_requests", "Requests the engine is generating for.", registry=r)
        self.queued = Gauge("byoc_engine_queued_requests", "Requests waiting inside the engine.", registry=r)
        self.used_blocks = Gauge("byoc_engine_kv_cache_used_blocks", "KV cache blocks in use.", registry=r)
        self.max_blocks = Gauge("byoc_engine_kv_cache_max_blocks", "KV cache blocks in all.", registry=r)
        self.up = Gauge("byoc_engine_up", "1 if the last poll of the engine's stats succeeded.", registry=r)
        self.polls = Gauge("byoc_engine_stats_last_poll_timestamp_seconds", "When the stats last arrived.", registry=r)
        self.stats = IDLE
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._was_up: bool | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=POLL_TIMEOUT)
        self._task = asyncio.create_task(self._run(), name="engine-stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def poll_once(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.engine_url + "/metrics") as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._set_down(type(exc).__name__)
            return False
        self.stats = parse_iteration_stats(payload, self.stats)
        for gauge, value in (
            (self.kv, self.stats.kv_cache_utilization),
            (self.active, self.stats.active_requests),
            (self.queued, self.stats.queued_requests),
            (self.used_blocks, self.stats.kv_used_blocks),
            (self.max_blocks, self.stats.kv_max_blocks),
        ):
            gauge.set(value)
        self.up.set(1)
        self.polls.set_to_current_time()
        if self._was_up is not True:
            log.info("engine stats from %s: polling", self.engine_url)
        self._was_up = True
        return True

    def _set_down(self, why: str) -> None:
        for gauge in (self.kv, self.active, self.queued, self.used_blocks):
            gauge.set(math.nan)
        self.up.set(0)
        if self._was_up is not False:
            log.warning("engine stats from %s unavailable (%s)", self.engine_url, why)
        self._was_up = False

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: web.Request) -> web.Response:
        # the sidecar itself is alive; whether the engine answers is `byoc_engine_up`, not a reason to restart us
        return web.json_response({"status": "ok", "engine_up": bool(self._was_up)})


async def serve(engine_url: str, listen: Address, interval: float) -> None:
    exporter = StatsExporter(engine_url, interval)
    await exporter.start()
    runner = web.AppRunner(exporter.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, listen.host, listen.port).start()
    log.info("engine stats listening on %s, polling %s/metrics every %gs", listen, engine_url, interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await exporter.stop()
