"""Upstream replicas: discovery (fixed URLs or every A record of a name), health checks, least-outstanding routing.

A replica is ready when `/health` answers 200 and `/v1/models` names its model. A replica that refuses a connection
is taken out at once (passive check) and comes back on the next health check that passes.

Each time a replica comes back into the ready set it is a new incarnation (`Upstream.incarnation`): whatever the
router knew of its KV cache belongs to the old one. An engine restarted in place (same address, empty cache) is
caught this way when a health check saw it down: trtllm-serve takes minutes to load a model, answering 503 or refusing
connections meanwhile. trtllm-serve 1.3.0rc19 exposes no per-process identity on the endpoints read here
(tensorrt_llm/serve/openai_server.py: `/v1/models` stamps each card's `created` at the request, ModelCard in
openai_protocol.py; `/version` is the build; `/health` has no body), so a restart too quick for the health interval
is caught by the router where it follows the engine's KV events (their ids start over in a new process): `renewed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from runtime.serve.config import UpstreamSpec
from runtime.serve.metrics import GatewayMetrics

log = logging.getLogger("byoc.gateway.upstreams")
CHECK_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=2)
# With nothing ready, look again at least this often: a waking replica should be used the moment it is up.
WAKE_POLL_SECONDS = 1.0


@dataclass(eq=False)
class Upstream:
    url: str  # http://address:port, no trailing slash
    origin: UpstreamSpec
    ready: bool = False
    outstanding: int = 0
    model_id: str | None = None
    addons: dict[str, str | None] = field(default_factory=dict)  # learned: addon id -> its adapter path if listed
    # which life of the replica this is: bumped when it comes back into the ready set or shows a new engine process
    incarnation: int = 0


def excluded_set(exclude: Upstream | Collection[Upstream] | None) -> Collection[Upstream]:
    """The replicas a pick must skip: the ones a request has tried already."""
    if exclude is None:
        return ()
    return (exclude,) if isinstance(exclude, Upstream) else exclude


class UpstreamPool:
    def __init__(self, specs: tuple[UpstreamSpec, ...], interval: float, metrics: GatewayMetrics) -> None:
        self.specs = specs
        self.interval = interval
        self.metrics = metrics
        self.upstreams: dict[str, Upstream] = {}
        self.ready: list[Upstream] = []
        self.became_ready = asyncio.Event()
        self.discovered = asyncio.Event()  # the first discovery round has finished
        self._wake = asyncio.Event()
        self._turn = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._checking: set[Upstream] = set()  # replicas with a check_now under way
        self._checks: set[asyncio.Task[None]] = set()  # their tasks, kept referenced until done

    # -- routing ---------------------------------------------------------------------------------------------
    def pick(self, exclude: Upstream | Collection[Upstream] | None = None) -> Upstream | None:
        """The ready replica with the fewest requests outstanding, not one of `exclude`; ties go round-robin."""
        excluded = excluded_set(exclude)
        candidates = self.ready
        count = len(candidates)
        if count == 0:
            return None
        self._turn += 1
        best: Upstream | None = None
        for i in range(count):
            upstream = candidates[(self._turn + i) % count]
            if upstream in excluded:
                continue
            if best is None or upstream.outstanding < best.outstanding:
                best = upstream
        return best

    async def wait_ready(self, timeout: float) -> bool:
        if self.ready:
            return True
        try:
            async with asyncio.timeout(timeout):
                while not self.ready:
                    self.became_ready.clear()
                    await self.became_ready.wait()
        except TimeoutError:
            return bool(self.ready)
        return True

    def failed(self, upstream: Upstream) -> None:
        """A connection to it failed: stop routing to it until a health check passes again."""
        if upstream.ready:
            log.warning("upstream %s failed a request: out of rotation until it passes a health check", upstream.url)
            upstream.ready = False
        if upstream in self.ready:
            # also when a health check under way has just marked it down and not yet refreshed the ready set: a
            # request must not find the replica it failed on still listed as ready
            self._refresh()
        self._wake.set()

    def check_now(self, upstream: Upstream) -> None:
        """A stream from it broke off: check it at once (its /health and /v1/models), without taking it out first.

        trtllm-serve breaks a stream off both when one answer fails (the exception closes the connection) and when
        the process dies, so the break alone says nothing about the replica; the check does: a dead one is out
        within a round trip, a healthy one keeps serving.
        """
        if self._session is None or upstream in self._checking:
            return
        self._checking.add(upstream)
        task = asyncio.create_task(self._check_now(upstream), name="upstream-check-now")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_now(self, upstream: Upstream) -> None:
        try:
            await self._check(upstream)
            self._refresh()
        finally:
            self._checking.discard(upstream)

    def renewed(self, upstream: Upstream, why: str) -> None:
        """The replica turned out to be a new engine process (an empty cache) without leaving the ready set."""
        log.info("upstream %s is a new engine process (%s)", upstream.url, why)
        upstream.incarnation += 1

    def learned_addons(self) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for upstream in self.ready:
            found.update(upstream.addons)
        return found

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=1)
        self._session = aiohttp.ClientSession(connector=connector, timeout=CHECK_TIMEOUT)
        self._task = asyncio.create_task(self._run(), name="upstream-health")

    async def stop(self) -> None:
        for check in list(self._checks):
            check.cancel()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception as exc:  # a bug here must not stop health checking for good
                log.error("health check round failed: %s", type(exc).__name__)
            self.discovered.set()
            delay = self.interval if self.ready else min(self.interval, WAKE_POLL_SECONDS)
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _resolve(self, spec: UpstreamSpec) -> list[str]:
        if not spec.discovered:
            return [f"http://{spec.host}:{spec.port}"]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                spec.host, spec.port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError:
            return []  # a headless Service with no ready pod has no address at all: that is zero replicas
        addresses = sorted({str(info[4][0]) for info in infos})
        return [f"http://{address}:{spec.port}" for address in addresses]

    async def check_once(self) -> None:
        urls: dict[str, UpstreamSpec] = {}
        for spec, found in zip(self.specs, await asyncio.gather(*(self._resolve(s) for s in self.specs)), strict=True):
            for url in found:
                urls.setdefault(url, spec)
        for url in list(self.upstreams):
            if url not in urls:
                log.info("upstream %s no longer resolves: removed", url)
                del self.upstreams[url]
        for url, spec in urls.items():
            if url not in self.upstreams:
                self.upstreams[url] = Upstream(url, spec)
        await asyncio.gather(*(self._check(u) for u in list(self.upstreams.values())))
        self._refresh()

    async def _check(self, upstream: Upstream) -> None:
        assert self._session is not None
        ready = False
        try:
            async with self._session.get(upstream.url + "/health") as response:
                healthy = response.status == 200
            if healthy:
                async with self._session.get(upstream.url + "/v1/models") as response:
                    if response.status == 200:
                        ready = self._learn(upstream, await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ready = False
        if ready != upstream.ready:
            log.info("upstream %s is %s", upstream.url, "ready" if ready else "not ready")
            if ready:
                upstream.incarnation += 1  # back in the ready set: perhaps restarted, its cache is not known
        upstream.ready = ready

    @staticmethod
    def _learn(upstream: Upstream, listing: Any) -> bool:
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            return False
        base: str | None = None
        addons: dict[str, str | None] = {}
        for card in data:
            if not isinstance(card, dict) or not isinstance(card.get("id"), str):
                continue
            if card.get("parent"):
                root = card.get("root")
                addons[card["id"]] = root if isinstance(root, str) and root != card["id"] else None
            elif base is None:
                base = card["id"]
        upstream.model_id, upstream.addons = base, addons
        return base is not None

    def _refresh(self) -> None:
        self.ready = [u for u in self.upstreams.values() if u.ready]
        self.metrics.upstreams_ready.set(len(self.ready))
        if self.ready:
            self.became_ready.set()
