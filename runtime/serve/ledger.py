"""The usage ledger: what each API key used, per model and addon, kept in the store the gateway replicas share.

Per finished request that reached a model replica, the gateway records one `UsageRecord`: the key's name, the model,
the addon (`base` for the base model), the request itself, its prompt tokens, the prompt tokens the engine served
from its KV cache (`usage.prompt_tokens_details.cached_tokens`), its completion tokens and its GPU-seconds. Never a
word of the prompt or the answer: names and counts only.

Records are summed in memory per hour bucket, key, model and addon, and written off the request path: a background
task sends every bucket touched since the last write in one round trip, every `flush_seconds` (1 s) or as soon as
`flush_records` records are waiting. In Redis each bucket is one hash, `byoc:usage:<yyyymmddhh>:<key>:<model>:<addon>`
(the hour in UTC; each name percent-encoded so that a `:` inside one cannot run into the next), holding the names
(`key`, `model`, `addon`, `hour`) and the integer counters `requests`, `prompt_tokens`, `cached_tokens`,
`completion_tokens` and `gpu_microseconds`; every replica adds to the same hashes, so the sums hold across replicas and
restarts. A bucket expires `retention_seconds` (400 days) after its last write.

A write that fails (the store restarting, a network blip, a failover) is kept and sent again, in order, until it
succeeds: no usage is lost while the store is away, up to `max_pending_buckets` buckets held (beyond that, a new
bucket's records are dropped and counted: `byoc_gateway_usage_dropped_records_total`). Each write is applied at most
once: it carries a batch id that a Lua script sets with `SET NX` before it adds anything, so a write whose reply was
lost (applied, but the gateway could not know) and is sent again adds nothing the second time. The script touches
several keys, so a Redis Cluster (cluster mode enabled) would refuse it: the store is one primary (ElastiCache with
cluster mode disabled, Memorystore for Redis or Valkey without cluster mode).

GPU-seconds are measured at the gateway (`ReplicaBusyTime`): per model replica, the time during which it has at
least one of this gateway's requests in flight is split evenly among those requests (n in flight: each is charged
1/n of that time), then multiplied by the replica's GPUs (`--gpus-per-replica`). See docs/gateway.md, "Usage ledger",
for what that approximation does and does not see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from byoc.errors import ByocError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from redis.asyncio import Redis

log = logging.getLogger("byoc.ledger")

PREFIX = "byoc:usage:"
BATCH_PREFIX = "byoc:usage-batch:"  # the ids of applied writes, kept BATCH_ID_SECONDS: not usage buckets
COUNTERS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "gpu_microseconds")
NAMES = ("key", "model", "addon", "hour")
HOUR_FORMAT = "%Y%m%d%H"
RETENTION_SECONDS = 400 * 24 * 3600  # a year of bills and a month to dispute one
BATCH_ID_SECONDS = 3600  # how long a write's id guards against a second application of the same write
FLUSH_SECONDS = 1.0
FLUSH_RECORDS = 256
MAX_PENDING_BUCKETS = 100_000  # ~200 B each: at most ~20 MB held while the store is away
CLOSE_SECONDS = 5.0  # on shutdown, how long the last writes may take

# One write, applied at most once. KEYS[1]: the write's id; KEYS[2..n+1]: its buckets. ARGV[1]: the id's lifetime,
# ARGV[2]: the buckets' lifetime (seconds), ARGV[3]: JSON [[key, model, addon, hour, requests, prompt_tokens,
# cached_tokens, completion_tokens, gpu_microseconds], ...] in the order of KEYS[2..], counters as decimal strings
# (Lua numbers are doubles). Returns the number of buckets written, 0 when this id was applied already.
_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local rows = cjson.decode(ARGV[3])
for i, row in ipairs(rows) do
  local bucket = KEYS[i + 1]
  redis.call('HSET', bucket, 'key', row[1], 'model', row[2], 'addon', row[3], 'hour', row[4])
  local names = {'requests', 'prompt_tokens', 'cached_tokens', 'completion_tokens', 'gpu_microseconds'}
  for j, name in ipairs(names) do
    if row[4 + j] ~= '0' then redis.call('HINCRBY', bucket, name, row[4 + j]) end
  end
  redis.call('EXPIRE', bucket, ARGV[2])
end
return #rows
"""


def hour_of(epoch_seconds: float) -> str:
    """The UTC hour bucket of a time: `yyyymmddhh`."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime(HOUR_FORMAT)


def bucket_key(hour: str, key: str, model: str, addon: str) -> str:
    """The Redis key of one bucket: `byoc:usage:<yyyymmddhh>:<key>:<model>:<addon>`, names percent-encoded."""
    return PREFIX + ":".join([hour, *(quote(part, safe="") for part in (key, model, addon))])


@dataclass
class Bucket:
    """One hour's usage of one key on one model and addon, summed in memory until written."""

    names: tuple[str, str, str, str]  # key, model, addon, hour
    counts: list[int] = field(default_factory=lambda: [0] * len(COUNTERS))


@dataclass
class Batch:
    """One write: its id (applied at most once) and its buckets by Redis key."""

    id: str
    buckets: dict[tuple[str, str, str, str], Bucket]
    records: int


class UsageLedger:
    """Usage records summed per hour, key, model and addon, and written to Redis off the request path.

    `record` is synchronous and does no I/O (a dict update): call it where a request's usage is final. `start` runs the
    writer; `close` writes what is left (bounded by CLOSE_SECONDS). `redis` is any `redis.asyncio.Redis`: how it is
    made (TLS, password) and closed is the caller's business (it may be shared with other users of the store).
    """

    def __init__(
        self,
        redis: Redis,
        flush_seconds: float = FLUSH_SECONDS,
        flush_records: int = FLUSH_RECORDS,
        max_pending_buckets: int = MAX_PENDING_BUCKETS,
        retention_seconds: int = RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self.max_pending_buckets = max_pending_buckets
        self.retention_seconds = retention_seconds
        self.clock = clock
        # records since the last write was cut, by (hour, key, model, addon): the Redis key is made when written
        self._open: dict[tuple[str, str, str, str], Bucket] = {}
        self._hour = ""
        self._hour_ends = 0.0  # the clock's time at which `_hour` is over
        # cut, not yet acknowledged: sent again, as it is, until it is (new records wait in `_open` meanwhile)
        self._unsent: Batch | None = None
        self._records_waiting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._script = redis.register_script(_APPLY)
        self._store_down = False
        # what the gateway's /metrics shows (register_metrics)
        self.dropped_records = 0
        self.failed_writes = 0
        self.written_records = 0

    # -- the request path ------------------------------------------------------------------------------------
    def record(
        self,
        key: str,
        model: str,
        addon: str,
        prompt_tokens: int,
        cached_tokens: int,
        completion_tokens: int,
        gpu_seconds: float,
    ) -> None:
        """Add one finished request to its hour's bucket. No I/O; a few microseconds."""
        now = self.clock()
        if now >= self._hour_ends or now < self._hour_ends - 3600:
            self._hour = hour_of(now)
            self._hour_ends = (now // 3600 + 1) * 3600
        hour = self._hour
        name = (hour, key, model, addon)
        bucket = self._open.get(name)
        if bucket is None:
            if self.pending_buckets >= self.max_pending_buckets:
                self.dropped_records += 1  # the store has been away long enough to fill the bound
                return
            bucket = self._open[name] = Bucket((key, model, addon, hour))
        counts = bucket.counts
        counts[0] += 1
        counts[1] += max(0, prompt_tokens)
        counts[2] += max(0, cached_tokens)
        counts[3] += max(0, completion_tokens)
        counts[4] += max(0, round(gpu_seconds * 1_000_000))
        self._records_waiting += 1
        if self._records_waiting >= self.flush_records:
            self._wake.set()

    # -- the writer ------------------------------------------------------------------------------------------
    @property
    def pending_buckets(self) -> int:
        """Buckets held in memory, not yet acknowledged by the store."""
        return len(self._open) + (len(self._unsent.buckets) if self._unsent is not None else 0)

    @property
    def pending_records(self) -> int:
        """Records held in memory, not yet acknowledged by the store."""
        return self._records_waiting + (self._unsent.records if self._unsent is not None else 0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop the writer and write what is left; what the store does not take within CLOSE_SECONDS is logged
        as lost (counted in `dropped_records`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), CLOSE_SECONDS)
        except (TimeoutError, Exception) as exc:  # the process is ending: say what is lost, never raise
            log.warning("usage ledger: could not write on shutdown (%s)", type(exc).__name__)
        lost = self.pending_records
        if lost:
            self.dropped_records += lost
            log.error("usage ledger: %d usage records not written before exit (the store did not answer)", lost)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: kept, and sent again next time
                self.failed_writes += 1
                if not self._store_down:
                    self._store_down = True
                    log.warning(
                        "usage ledger: the store did not take a write (%s); holding %d buckets in memory and retrying",
                        type(exc).__name__,
                        self.pending_buckets,
                    )

    async def flush(self) -> None:
        """Write every held record: the batch a failed write left first (the same batch, so that its id guards it),
        then the records since. Raises the store's error; what was not written stays held."""
        while True:
            if self._unsent is None:
                if not self._open:
                    return
                # the open buckets become one batch, its id fixed now for every retry of it
                self._unsent = Batch(uuid.uuid4().hex, self._open, self._records_waiting)
                self._open, self._records_waiting = {}, 0
            batch = self._unsent
            rows = [[*bucket.names, *(str(count) for count in bucket.counts)] for bucket in batch.buckets.values()]
            await self._script(
                keys=[BATCH_PREFIX + batch.id, *(bucket_key(*name) for name in batch.buckets)],
                args=[BATCH_ID_SECONDS, self.retention_seconds, json.dumps(rows)],
            )
            self._unsent = None
            self.written_records += batch.records
            if self._store_down:
                self._store_down = False
                log.warning("usage ledger: the store is back; the usage held meanwhile is written")

    # -- metrics ---------------------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The ledger's health on the gateway's /metrics: records written, dropped, failed writes, buckets held."""
        registry.register(_LedgerCollector(self))


class _LedgerCollector:
    def __init__(self, ledger: UsageLedger) -> None:
        self.ledger = ledger

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ledger = self.ledger
        yield CounterMetricFamily(
            "byoc_gateway_usage_written_records", "Usage records written to the store.", ledger.written_records
        )
        yield CounterMetricFamily(
            "byoc_gateway_usage_dropped_records",
            "Usage records lost: held past the bound while the store was away, or unwritten at exit.",
            ledger.dropped_records,
        )
        yield CounterMetricFamily(
            "byoc_gateway_usage_failed_writes",
            "Writes of the usage ledger the store did not take (held and sent again).",
            ledger.failed_writes,
        )
        yield GaugeMetricFamily(
            "byoc_gateway_usage_pending_buckets",
            "Usage buckets held in memory, not yet written to the store.",
            ledger.pending_buckets,
        )


class ReplicaBusyTime:
    """Each request's share of its replica's busy time, as this gateway sees it.

    Per replica, a share clock advances by dt / n while n of this gateway's requests are in flight there (not at all
    while none is): a request is charged the clock's advance between its `begin` and `end`, so the requests in
    flight together split the time evenly, and the charges of one replica add up to the time it had any in flight.
    O(1) per call. `clock` is monotonic seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._replicas: dict[str, list[float]] = {}  # replica -> [in flight, share clock, last change]

    def _advance(self, replica: str) -> list[float]:
        state = self._replicas.get(replica)
        now = self.clock()
        if state is None:
            state = self._replicas[replica] = [0.0, 0.0, now]
        elif state[0] > 0:
            state[1] += (now - state[2]) / state[0]
        state[2] = now
        return state

    def begin(self, replica: str) -> float:
        """A request sent to `replica`: the mark to give `end`."""
        state = self._advance(replica)
        state[0] += 1
        return state[1]

    def end(self, replica: str, mark: float) -> float:
        """The request is over (answered, failed or cancelled): its share of the replica's busy time, in seconds."""
        state = self._advance(replica)
        state[0] = max(0.0, state[0] - 1)
        charged = max(0.0, state[1] - mark)
        if state[0] == 0:
            del self._replicas[replica]  # idle: nothing to carry (replicas come and go with the autoscaler)
        return charged


# -- the store's client, until runtime/serve/store.py (shared with the rate limits) replaces it -----------------------
STORE_SCHEMES = ("redis", "rediss")


def check_store(url: str, password_file: Path | None, ca_file: Path | None, flag: str = "--store") -> None:
    """Raise ByocError naming the flag for a store URL or file the client could not use."""
    parts = urlsplit(url)
    if parts.scheme not in STORE_SCHEMES or not parts.hostname:
        raise ByocError(flag, f"{url!r} is not a Redis URL", "use redis://HOST:6379 or rediss://HOST:6379 (TLS)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ByocError(flag, f"{url!r} has a bad port", "e.g. rediss://HOST:6379") from None
    if parts.password:
        raise ByocError(
            flag,
            "the URL carries a password (it would show in the process list and in shell history)",
            f"put it in a file and pass {flag}-password-file FILE",
        )
    for name, path in ((f"{flag}-password-file", password_file), (f"{flag}-ca-file", ca_file)):
        if path is not None and not path.is_file():
            raise ByocError(name, f"{path} is not a readable file", "give the path of an existing file")
    if ca_file is not None and parts.scheme != "rediss":
        raise ByocError(f"{flag}-ca-file", "a CA file is for TLS", "use a rediss:// URL with it")


def store_client(url: str, password_file: Path | None = None, ca_file: Path | None = None) -> Redis:
    """A `redis.asyncio.Redis` for the store: short timeouts (a write that hangs is retried, not waited on), the
    password read from a file, TLS verified against `ca_file` (or the system's CAs) for rediss://."""
    import redis.asyncio

    check_store(url, password_file, ca_file)
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "decode_responses": True}
    if password_file is not None:
        options["password"] = password_file.read_text().strip()
    if ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    return redis.asyncio.Redis.from_url(url, **options)
