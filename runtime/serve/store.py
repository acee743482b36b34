"""The shared store (Redis or Valkey: ElastiCache, Memorystore, or `redis-server`): per-key limits and budgets that
hold across every gateway replica, the replicas' heartbeats, and API keys added or revoked without a restart.

Admission is one atomic Lua script per request (one round trip): the key's budget, requests per minute, tokens per
minute and concurrency are all checked, and only if all pass are all charged. The end of a request is one more script
(its concurrency slot back, its token estimate settled with the real usage), sent without holding the answer back.

- Requests and tokens per minute are GCRA (the generic cell rate algorithm, as redis-cell's CL.THROTTLE and
  throttled's Lua port keep it): one number per key, the theoretical arrival time, advanced by 60 000 / limit ms per
  request (or per token); a request passes while that time is at most one minute ahead of now. It is the same token
  bucket as the in-memory limiter (a burst of `rpm`, refilled continuously), not a fixed window: Envoy's ratelimit
  service and LiteLLM's parallel_request_limiter_v3 count fixed one-minute windows (INCRBY + EXPIRE), which lets
  twice the limit through across a window's edge. Time is the store's own (`TIME`, allowed in scripts since Redis 5
  replicates scripts by their effects), so gateway clocks that disagree do not matter.
- Concurrency is a sorted set of slots per key, each with a lease (`--store-lease-seconds`) that its gateway renews
  while the request runs: a gateway killed with -9 leaves slots that expire within one lease.
- Budgets are one counter per key and UTC calendar period (`...:budget:2026-12`), expiring a day after its period.
- Every key of one API key shares a hash tag (`byoc:{key:NAME}:...`), so the scripts run on a clustered store too.

When the store cannot be reached, no request fails because of it: each replica enforces its share of every limit
(the limit divided by the replica count last seen in the heartbeats, or `--replicas-hint` before any) in memory, logs
the outage once and the recovery once, sets `byoc_gateway_limits_store_up` to 0, counts each request so decided in
`byoc_gateway_limits_store_fallbacks_total`, and goes back to the store by itself once a heartbeat gets through.
LiteLLM falls back to per-replica memory the same way; Envoy's ratelimit fails open; AIBrix fails closed (500).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from byoc.errors import ByocError
from runtime.serve.keys import HEX64, ApiKey, Budget, budget_problem, key_name_problem, limit_problem
from runtime.serve.limits import BudgetPeriod, KeyLimits, LocalLimiter, Refusal, Ticket

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("byoc.gateway")

DEFAULT_PREFIX = "byoc:"
# A lost store costs a request this long at most, once: the gateway then decides in memory until a heartbeat gets
# through. ElastiCache and Memorystore answer in well under a millisecond inside their VPC.
COMMAND_TIMEOUT_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 3.0
HEARTBEAT_SECONDS = 1.0  # also how often keys changed in the store are looked for (at most this delay, plus a read)
HEARTBEAT_TTL_MS = 5000  # a replica that has not beaten for this long is no longer counted
STORE_ERRORS = (redis.RedisError, OSError, TimeoutError)

# -- scripts ---------------------------------------------------------------------------------------------------------
# KEYS: rpm TAT, tpm TAT, concurrency slots (ZSET), budget counter.
# ARGV: rpm, tpm, prompt estimate, max_concurrency, slot id, lease ms, budget tokens, budget period end (epoch s),
# the tokens the budget holds for the request while it runs (its estimate and the most it may generate).
# Returns {decision, wait ms, budget used}: decision `ok` or the refusing limit (nothing charged then).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local maxc, lease, budget = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
local used = 0
if budget > 0 then
  used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= budget then return {'budget', 0, used} end
end
local rpm_tat = 0
if rpm > 0 then
  rpm_tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + 60000 / rpm
  local wait = rpm_tat - now - 60000
  if wait > 0 then return {'key_rpm', math.ceil(wait), used} end
end
local tpm_tat = 0
if tpm > 0 then
  local interval = 60000 / tpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local wait = tat + math.max(1, math.min(cost, tpm)) * interval - now - 60000
  if wait > 0 then return {'key_tpm', math.ceil(wait), used} end
  tpm_tat = tat + cost * interval
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {'key_concurrency', 1000, used} end
end
if rpm > 0 then redis.call('SET', KEYS[1], tostring(rpm_tat), 'PX', math.ceil(rpm_tat - now) + 1000) end
if tpm_tat > now then redis.call('SET', KEYS[2], tostring(tpm_tat), 'PX', math.ceil(tpm_tat - now) + 1000) end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], lease + 1000)
end
local reserve = math.max(tonumber(ARGV[9]), cost)
if budget > 0 and reserve > 0 then
  used = redis.call('INCRBY', KEYS[4], reserve)
  if used == reserve then redis.call('EXPIREAT', KEYS[4], tonumber(ARGV[8]) + 86400) end
end
return {'ok', 0, used}
"""

# KEYS: tpm TAT, concurrency slots, budget counter. ARGV: tpm, tokens used - estimate, slot id ('' for none),
# '1' when the key has a budget, budget period end (epoch s), tokens used - what the budget held.
SETTLE = """
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
local delta, tpm = tonumber(ARGV[2]), tonumber(ARGV[1])
if delta ~= 0 and tpm > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + delta * 60000 / tpm
  if tat > now then
    redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
end
local held = tonumber(ARGV[6])
if held ~= 0 and ARGV[4] == '1' then
  if redis.call('INCRBY', KEYS[3], held) < 0 then redis.call('SET', KEYS[3], 0) end
  redis.call('EXPIREAT', KEYS[3], tonumber(ARGV[5]) + 86400)
end
return 1
"""

# KEYS: the replicas (ZSET of heartbeats), the keys' version counter. ARGV: this replica's id, TTL ms.
# Returns {replicas counted, keys version, the store's time in ms}.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return {redis.call('ZCARD', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0'), now}
"""


SCRIPTS = {"admit": ADMIT, "settle": SETTLE, "heartbeat": HEARTBEAT}


# -- settings --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreSettings:
    """How to reach the store: `redis://HOST:PORT[/DB]` or `rediss://` (TLS), the AUTH token in a file (never in a
    URL: flags end up in process lists and shell history), the server's CA for TLS (Memorystore's own CA), and the
    prefix of every key byoc writes."""

    url: str
    password_file: Path | None = None
    ca_file: Path | None = None
    prefix: str = DEFAULT_PREFIX
    url_flag: str = "--store"

    def check(self) -> StoreSettings:
        """Raise ByocError naming the flag at fault: scheme, host, port, a password in the URL, unreadable files."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ByocError(
                self.url_flag,
                f"{_redacted(self.url)!r} is not a Redis URL",
                "use redis://HOST:PORT, or rediss://HOST:PORT for TLS (ElastiCache, Memorystore)",
            )
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ByocError(
                self.url_flag, f"{_redacted(self.url)!r} has a bad port", "e.g. redis://HOST:6379"
            ) from None
        if parts.password:
            raise ByocError(
                self.url_flag,
                "the URL holds a password, and flags end up in process lists and logs",
                "put the AUTH token in a file and pass --store-password-file FILE",
            )
        if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
            raise ByocError(self.url_flag, f"{parts.path!r} is not a database number", "e.g. redis://HOST:6379/0")
        if self.ca_file is not None and parts.scheme != "rediss":
            raise ByocError("--store-ca-file", "a CA is for TLS, and the URL is redis://", "use rediss://HOST:PORT")
        for flag, path in (("--store-password-file", self.password_file), ("--store-ca-file", self.ca_file)):
            if path is not None:
                _read(path, flag)
        if self.password_file is not None and not self.password():
            raise ByocError("--store-password-file", f"{self.password_file} is empty", "write the AUTH token in it")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ByocError("--store-prefix", f"{self.prefix!r} is not a key prefix", "e.g. byoc: (the default)")
        return self

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return _read(self.password_file, "--store-password-file").strip()

    def options(self, timeout: float = COMMAND_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Keyword arguments of `redis.Redis.from_url` and `redis.asyncio.Redis.from_url` (the password included:
        never log them)."""
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
            "client_name": "byoc-gateway",
        }
        password = self.password()
        if password:
            options["password"] = password
        if self.ca_file is not None:
            options["ssl_ca_certs"] = str(self.ca_file)
        return options

    def describe(self) -> str:
        """The URL without credentials, for logs."""
        return _redacted(self.url)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{parts.username or ''}:***@{host}{port}").geturl()
    return url


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ByocError(flag, f"cannot read {path}: {reason}", "give a readable file") from None


def _store_error(exc: BaseException, settings: StoreSettings) -> ByocError:
    """A failed start-up probe as the flag a user should fix."""
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError) or (
        isinstance(exc, redis.ResponseError) and ("NOAUTH" in text or "WRONGPASS" in text)
    ):
        flag = "--store-password-file"
        hint = (
            "give the store's AUTH token in --store-password-file"
            if settings.password_file is None
            else ("check the AUTH token in the file")
        )
        return ByocError(flag, f"the store at {settings.describe()} refused the login", hint)
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
        return ByocError(
            "--store-ca-file",
            f"TLS with {settings.describe()} failed",
            "pass the server's CA with --store-ca-file (Memorystore: the instance's server CA)",
        )
    return ByocError(
        settings.url_flag,
        f"the store at {settings.describe()} does not answer ({type(exc).__name__})",
        "check the address and that the store is reachable from here",
    )


def connect(settings: StoreSettings) -> redis.Redis:
    """A synchronous client that has answered PING (`byoc keys`, and the gateway's start-up check).

    Raises ByocError naming the flag at fault: the URL (no answer), the password file (login refused), the CA file."""
    client = redis.Redis.from_url(settings.url, **settings.options(PROBE_TIMEOUT_SECONDS))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        raise _store_error(exc, settings) from None
    return client


# -- keys kept in the store ------------------------------------------------------------------------------------------
def keys_hash(settings: StoreSettings) -> str:
    return settings.key("{gateways}", "keys")


def keys_version(settings: StoreSettings) -> str:
    return settings.key("{gateways}", "keys-version")


def file_key_names(settings: StoreSettings) -> str:
    """The names of the keys in the gateways' keys files (names only), so `byoc keys revoke` can refuse those too."""
    return settings.key("{gateways}", "file-keys")


def replicas_set(settings: StoreSettings) -> str:
    return settings.key("{gateways}", "replicas")


def entry_key(entry: dict[str, Any]) -> ApiKey | None:
    """A store entry as an ApiKey, None for a revocation (`{"name": N, "revoked": true}`).

    Raises ValueError for an entry that is not valid (written by hand, or by another version)."""
    name = entry.get("name")
    if not isinstance(name, str) or key_name_problem(name):
        raise ValueError("a name that is not a key name")
    if entry.get("revoked"):
        return None
    digest = str(entry.get("sha256", ""))
    if not HEX64.match(digest):
        raise ValueError(f"key {name}: no valid sha256")
    limits: dict[str, int | None] = {}
    for field in ("rpm", "tpm", "max_concurrency"):
        value = entry.get(field)
        if value is not None and limit_problem(field, value):
            raise ValueError(f"key {name}: {limit_problem(field, value)}")
        limits[field] = value
    budget = entry.get("budget")
    if budget is not None and budget_problem(budget):
        raise ValueError(f"key {name}: {budget_problem(budget)}")
    return ApiKey(
        name,
        bytes.fromhex(digest),
        limits["rpm"],
        limits["max_concurrency"],
        kind="store",
        tpm=limits["tpm"],
        budget=Budget(int(budget["tokens"]), str(budget["period"])) if budget is not None else None,
    )


def merge_keys(from_file: list[ApiKey], entries: dict[str, str]) -> list[ApiKey]:
    """The keys a gateway serves: its keys file's, with the store's entries over them by name (a revocation in the
    store removes a file key of that name). An invalid store entry is skipped with a log line."""
    by_name = {k.name: k for k in from_file}
    for name, raw in entries.items():
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("name") != name:
                raise ValueError("an entry under another name")
            key = entry_key(data)
        except ValueError as exc:
            log.warning("store: skipping the invalid key entry %r: %s", name[:63], exc)
            continue
        if key is None:
            by_name.pop(name, None)
        else:
            by_name[name] = key
    return list(by_name.values())


# -- the gateway's side ----------------------------------------------------------------------------------------------
def _revoked(text: str) -> bool:
    with contextlib.suppress(ValueError):
        entry = json.loads(text)
        return isinstance(entry, dict) and bool(entry.get("revoked"))
    return False


class Store:
    """The gateway's connection to the store: `client` (a connected `redis.asyncio.Redis` with decode_responses,
    or None before `start()`), whether it answers (`up`), how many gateway replicas beat in it (`replicas`), and the
    keys it holds (`on_keys` is called with its entries, name -> JSON, whenever their version changes)."""

    def __init__(
        self,
        settings: StoreSettings,
        lease_seconds: float,
        replicas_hint: int,
        registry: CollectorRegistry,
        on_keys: Callable[[dict[str, str]], None] | None = None,
        file_key_names: list[str] | None = None,
    ) -> None:
        from prometheus_client import Counter, Gauge

        self.settings = settings
        self.lease_ms = int(lease_seconds * 1000)
        self.replicas = max(1, replicas_hint)
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client: redis.asyncio.Redis | None = None
        self.up = False
        self.keys_version: int | None = None
        self.entries: dict[str, str] = {}  # the store's key entries as last read (name -> JSON), revocations included
        self.on_keys = on_keys
        self.file_key_names = file_key_names or []
        self.slots: dict[str, str] = {}  # slot id -> its ZSET, renewed while the request runs
        self._task: asyncio.Task[None] | None = None
        self._sha = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}
        self._batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []  # calls of this loop turn
        self._sending: set[asyncio.Task[None]] = set()
        self._direct = 0  # admissions sent on their own, not yet answered
        self.up_gauge = Gauge(
            "byoc_gateway_limits_store_up",
            "1 while the shared limits store answers; 0 while each replica enforces its share in memory.",
            registry=registry,
        )
        self.fallbacks = Counter(
            "byoc_gateway_limits_store_fallbacks",
            "Requests whose limits were decided in this replica's memory because the store did not answer.",
            registry=registry,
        )
        self.replicas_gauge = Gauge(
            "byoc_gateway_limits_store_replicas",
            "Gateway replicas counted by their heartbeats in the store (the divisor of each limit while it is down).",
            registry=registry,
        )
        self.replicas_gauge.set_function(lambda: self.replicas)
        self.keys_restored = Counter(
            "byoc_gateway_keys_restored",
            "Times this replica found the store's keys older than the ones it held (a store restarted empty or "
            "restored from a snapshot) and wrote its own back: revocations and byoc keys entries are not lost.",
            registry=registry,
        )

    async def start(self) -> None:
        # no retries inside the client: a store that does not answer costs one timeout, then memory decides
        self.client = redis.asyncio.Redis.from_url(
            self.settings.url, retry=Retry(NoBackoff(), 0), **self.settings.options()
        )
        await self.beat()
        if not self.up:  # it answered the start-up check a moment ago, and not now: said once, as any outage
            log.warning(
                "limits store %s unreachable: each replica enforces 1/%d of every limit in memory",
                self.settings.describe(),
                self.replicas,
            )
        self._task = asyncio.create_task(self._beating())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            with contextlib.suppress(*STORE_ERRORS):
                # this replica no longer counts, and the slots of requests it still held are free at once
                await self.client.zrem(replicas_set(self.settings), self.replica_id)
                for slot, zset in list(self.slots.items()):
                    await self.client.zrem(zset, slot)
            await self.client.aclose()

    def mark_down(self, exc: BaseException) -> None:
        if self.up:
            log.warning(
                "limits store %s unreachable (%s): each replica now enforces 1/%d of every limit in memory",
                self.settings.describe(),
                type(exc).__name__,
                self.replicas,
            )
        self.up = False
        self.up_gauge.set(0)

    def _mark_up(self) -> None:
        if not self.up:
            log.info(
                "limits store %s reachable: limits hold across %d replicas", self.settings.describe(), self.replicas
            )
        self.up = True
        self.up_gauge.set(1)

    async def beat(self) -> None:
        """One heartbeat: counted as a replica, the replica count and the keys' version read, slots renewed."""
        assert self.client is not None
        try:
            count, version, now_ms = await self.run(
                "heartbeat",
                [replicas_set(self.settings), keys_version(self.settings)],
                [self.replica_id, HEARTBEAT_TTL_MS],
            )
            self.replicas = max(1, int(count))
            if self.slots:
                # renewed every beat (at least 3 a lease), on the store's clock as the scripts compare them: a request
                # that runs longer than a lease keeps its slot
                async with self.client.pipeline(transaction=False) as pipe:
                    for slot, zset in list(self.slots.items()):
                        pipe.zadd(zset, {slot: int(now_ms) + self.lease_ms}, xx=True)
                        pipe.pexpire(zset, self.lease_ms + 1000)
                    await pipe.execute()
            if self.keys_version is not None and self.entries and int(version) < self.keys_version:
                version = await self._restore_keys(int(version))
            if int(version) != self.keys_version:
                entries = await self.client.hgetall(keys_hash(self.settings))
                self.keys_version = int(version)
                self.entries = {str(k): str(v) for k, v in entries.items()}  # str already (decode_responses)
                if self.on_keys is not None:
                    self.on_keys(dict(self.entries))
            if not self.up and self.file_key_names:
                # at start and after an outage (a store restarted empty): `byoc keys list|revoke` know these names
                await self.client.sadd(file_key_names(self.settings), *self.file_key_names)
        except STORE_ERRORS as exc:
            self.mark_down(exc)
            return
        self._mark_up()

    async def _restore_keys(self, found: int) -> int:
        """The store's keys went back in time (their version is below the one this replica read: the store restarted
        empty, or was restored from an older snapshot). Revoked keys would come back and keys made since would
        vanish, so this replica writes back what it held: every revocation, and every entry the store lacks (an
        entry written since the loss stays). Said at ERROR; the version moves past both, so every replica reloads.
        Returns the new version."""
        assert self.client is not None
        log.error(
            "API keys: the store's keys are older than this replica's (version %d, held %d: the store lost data); "
            "writing back %d entries, revocations included",
            found,
            self.keys_version,
            len(self.entries),
        )
        self.keys_restored.inc()
        present = await self.client.hgetall(keys_hash(self.settings))
        restore = [(name, text) for name, text in self.entries.items() if name not in present or _revoked(text)]
        async with self.client.pipeline(transaction=True) as pipe:
            for name, text in restore:
                pipe.hset(keys_hash(self.settings), name, text)
            pipe.set(keys_version(self.settings), max(found, self.keys_version or 0) + 1)
            await pipe.execute()
        return max(found, self.keys_version or 0) + 1

    async def _beating(self) -> None:
        interval = min(HEARTBEAT_SECONDS, self.lease_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            await self.beat()

    async def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One of the scripts, by its SHA-1 (EVALSHA: the script's text is sent only when the store does not have it
        yet, after a restart or a failover)."""
        assert self.client is not None
        try:
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self.client.script_load(SCRIPTS[name])
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)

    async def admit(self, keys: list[str], args: list[Any]) -> Any:
        """The admission script's answer: sent at once while nothing else is on its way to the store (one request
        at a time: no batching delay), else with the calls of this turn of the event loop (under load)."""
        if self._batch or self._sending or self._direct:
            return await self.call("admit", keys, args)
        self._direct += 1
        try:
            return await self.run("admit", keys, args)
        finally:
            self._direct -= 1

    def call(self, name: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """The script's answer, to come: every call made in one turn of the event loop leaves in one pipeline (one
        write, one round trip), so under load admissions and settlements share round trips."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((name, keys, args, future))
        if len(self._batch) == 1:
            future.get_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        assert self.client is not None
        try:
            if len(batch) == 1:
                name, keys, args, future = batch[0]
                result = await self.run(name, keys, args)
                if not future.done():
                    future.set_result(result)
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for name, keys, args, _ in batch:
                    pipe.evalsha(self._sha[name], len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            for (name, keys, args, future), answer in zip(batch, results, strict=True):
                # a restarted store has no scripts: run() loads it
                result = (
                    await self.run(name, keys, args) if isinstance(answer, redis.exceptions.NoScriptError) else answer
                )
                if future.done():
                    continue  # its request was cancelled (the client left)
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except STORE_ERRORS as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)


class SharedLimiter:
    """Per-key limits through the store, with each replica's share in memory while it is down (module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.local = LocalLimiter()
        self.budget_used: dict[str, int] = {}  # the last budget count the store gave per key (for the share)
        self.outage = False  # the requests are decided in `local` since the store stopped answering
        self._next = 0

    def _key(self, name: str, what: str) -> str:
        return self.store.settings.key("{key:" + name + "}", what)

    async def admit(self, key: str, limits: KeyLimits, estimate: int, reserve: int = 0) -> Ticket | Refusal:
        if not (limits.rpm or limits.tpm or limits.max_concurrency or limits.budget_tokens):
            return Ticket(key, limits, estimate, local=True)  # nothing to count
        reserve = max(reserve, estimate)
        if self.store.up:
            self.outage = False
            try:
                return await self._admit_shared(key, limits, estimate, reserve)
            except STORE_ERRORS as exc:
                self.store.mark_down(exc)
        if not self.outage:
            self.outage = True
            self.local = LocalLimiter()  # each outage's shares count from its start
        self.store.fallbacks.inc()
        share = limits.share(self.store.replicas, self.budget_used.get(key, 0))
        return self.local.admit(key, share, estimate, reserve)

    async def _admit_shared(self, key: str, limits: KeyLimits, estimate: int, reserve: int) -> Ticket | Refusal:
        period = BudgetPeriod.current(limits.budget_period) if limits.budget_tokens else None
        slot = ""
        if limits.max_concurrency:
            self._next += 1
            slot = f"{self.store.replica_id}:{self._next}"
        budget_key = self._key(key, "budget:" + period.id) if period is not None else self._key(key, "budget")
        decision, wait_ms, used = await self.store.admit(
            [self._key(key, "rpm"), self._key(key, "tpm"), self._key(key, "slots"), budget_key],
            [
                limits.rpm,
                limits.tpm,
                estimate,
                limits.max_concurrency,
                slot,
                self.store.lease_ms,
                limits.budget_tokens,
                period.ends if period is not None else 0,
                reserve,
            ],
        )
        if limits.budget_tokens:
            self.budget_used[key] = int(used)
        if decision != "ok":
            if decision == "budget":
                assert period is not None
                return Refusal("budget", max(1.0, period.ends - time.time()), limits, period)
            return Refusal(str(decision), int(wait_ms) / 1000, limits)
        if slot:
            self.store.slots[slot] = self._key(key, "slots")
        return Ticket(key, limits, estimate, slot=slot or None, local=False, period=period, reserved=reserve)

    def settle(self, ticket: Ticket, tokens: int) -> None:
        """The request ended having used `tokens`: its slot back and the estimate corrected, in the background (the
        answer is not held back for it). A store that has gone away lets the slot's lease run out."""
        if ticket.local:
            self.local.settle(ticket, tokens)
            return
        if ticket.settled:
            return
        ticket.settled = True
        if ticket.slot is not None:
            self.store.slots.pop(ticket.slot, None)
        delta = tokens - ticket.estimate
        held = tokens - (ticket.reserved or ticket.estimate)
        if ticket.slot is None and not (delta and ticket.limits.tpm) and not (held and ticket.period is not None):
            return
        period = ticket.period
        budget_key = "budget:" + period.id if period is not None else "budget"
        future = self.store.call(
            "settle",
            [self._key(ticket.key, "tpm"), self._key(ticket.key, "slots"), self._key(ticket.key, budget_key)],
            [
                ticket.limits.tpm,
                delta,
                ticket.slot or "",
                "1" if period is not None else "0",
                period.ends if period is not None else 0,
                held,
            ],
        )
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.store.mark_down(future.exception())  # type: ignore[arg-type]


# -- `byoc keys`: the store's keys, written with the synchronous client ----------------------------------------------
def read_entries(client: redis.Redis, settings: StoreSettings) -> dict[str, dict[str, Any]]:
    """The store's key entries by name (revocations included, as `{"name": N, "revoked": true}`)."""
    raw: dict[str, str] = client.hgetall(keys_hash(settings))  # type: ignore[assignment]
    entries: dict[str, dict[str, Any]] = {}
    for name, text in raw.items():
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            if isinstance(data, dict):
                entries[name] = data
    return entries


def read_file_key_names(client: redis.Redis, settings: StoreSettings) -> set[str]:
    """The key names the gateways' keys files hold, as the gateways announced them at start-up."""
    return set(client.smembers(file_key_names(settings)))  # type: ignore[arg-type]


def write_entry(client: redis.Redis, settings: StoreSettings, name: str, entry: dict[str, Any]) -> int:
    """Store one entry and bump the keys' version in one transaction (every gateway reloads on the next beat).
    The version after the write."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys_hash(settings), name, json.dumps(entry, sort_keys=True))
        pipe.incr(keys_version(settings))
        _, version = pipe.execute()
    return int(version)


def budget_used(client: redis.Redis, settings: StoreSettings, name: str, period: str) -> int:
    """Tokens a key has used in the current UTC `period` (day or month)."""
    key = settings.key("{key:" + name + "}", "budget:" + BudgetPeriod.of(period).id)
    return int(client.get(key) or 0)
