"""The batch worker: runs the batches under the batch root, each line through the gateway's own path, only into
capacity online traffic leaves idle, and commits exactly one result per `custom_id` whatever kills it.

    python -m runtime.serve.batch.worker --gateway URL --batch-store URI [--batch-kms-key K]
        --worker-token-file PATH [--concurrency N] [--max-batches 4] [--retention-hours 24]

Up to `--max-batches` batches run at once, chosen fairly across owners (the owner with the fewest batches running
first, each owner's oldest batch first), so that one key's 50,000-line batch does not hold another key's 2-line batch
in `validating` for hours; they share the worker's lines in flight (one window, first come first served: it grows
while the gateways admit lines and falls to what they hold when they tell one to yield, up to `--concurrency`;
window.py), each under its own lease.

A batch (runtime/serve/batch/layout.py) goes validating -> in_progress -> finalizing -> completed; or failed (an input
file that cannot run: no `custom_id`, a duplicate one, not JSON, over OpenAI's limits), expired (the 24 h window
passed: each line left gets a `batch_expired` error), cancelling -> cancelled (the gateway's cancel marker: no new line
is sent from then on, the lines in flight finish, each line left gets a `batch_cancelled` error). The worker, and only
the worker, writes state.json, with `request_counts` current at each commit.

Lines go to `POST {gateway}{endpoint}` with the worker's token and the batch owner's key name (layout.OWNER_HEADER):
the gateway validates, routes, limits and meters each as the owner's, in its batch admission class; a 429
`batch_yield` (online traffic first), the owner's own rate limits, a gateway or replica that is down or waking (5xx,
no connection) are retried after a jittered back-off, for as long as the window lasts. Any other answer is the line's
result: OpenAI's output line (openai-openapi `BatchRequestOutput`: `{id, custom_id, response: {status_code,
request_id, body}, error}`), in the output file for a 2xx, in the error file otherwise; a line that cannot be sent
(a wrong method, URL or body) gets `error: {code, message}` and `response: null`.

Crash safety. Results are committed in parts (layout.batch_part), every `--commit-lines` results or
`--commit-seconds`, each part created only if its name is free (runtime/serve/batch/conditional.py), so no writer
overwrites another's. On start the worker reads the parts to know what is done; finalizing assembles the output and
error files from them, the first committed result of a `custom_id` winning, under ids derived from the batch id, so
finalizing again after a crash writes the same objects; state.json is written after them, the parts deleted last (a
sweep deletes what a crash left). A lease (layout.batch_lease, a conditional write with a holder and an expiry,
renewed at a third of `--lease-seconds`) keeps a second worker off a batch. What a crash costs: the lines sent but not
yet committed (at most `--commit-lines` results or `--commit-seconds` of them, plus those in flight) are sent again,
and the gateway meters them twice.

Zero data retention: the worker logs batch ids, statuses and counts; never a prompt, a completion or a custom_id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from byoc.errors import ByocError, ByocFailure
from runtime.model_build.stores import ObjectMissing, Store, open_store
from runtime.serve.batch import conditional, layout, owner_index
from runtime.serve.batch.window import SendWindow
from runtime.serve.logs import exception_summary

log = logging.getLogger("byoc.batch")
T = TypeVar("T")

# OpenAI's per-line error codes (openai-openapi BatchRequestOutput.error.code): a line the window or a cancel left
BATCH_EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")
BATCH_CANCELLED = ("batch_cancelled", "This request was not executed: the batch was cancelled before it.")
# answers that mean "not now" for a line, retried after a back-off: the gateway's batch_yield and the owner's rate
# limits (429 other than a spent budget), a gateway draining or holding past its wake timeout (503), a replica
# unreachable or failing (502, 504); a gateway's own 500 is retried a few times, then is the line's result
NOT_NOW_CODES = ("batch_yield", "rate_limit_exceeded", "gateway_draining", "no_replica_ready", "upstream_unavailable")
RETRIED_500 = 3
# results waiting to be committed, in --commit-lines, past which the sending pauses until a commit catches up
BEHIND_COMMITS = 4
# the "not now" answers that say the gateways have no room for more batch lines: the send window shrinks on them
YIELD_CODES = ("batch_yield", "rate_limit_exceeded")


def _not_now(status: int, code: str | None) -> bool:
    """An answer that says "not now" for the line (retried after a back-off, for as long as the window lasts)."""
    return (status == 429 and code in NOT_NOW_CODES) or status in (503, 504) or code == "upstream_unavailable"


BACKOFF_MAX_SECONDS = 15.0


@dataclass(frozen=True)
class WorkerSettings:
    gateway: str
    batch_store: str
    worker_token: str
    batch_kms_key: str | None = None
    concurrency: int = 4096  # the send window's ceiling (runtime/serve/batch/window.py)
    max_batches: int = 4
    retention_hours: float = 24.0
    poll_seconds: float = 2.0
    lease_seconds: float = 30.0
    commit_lines: int = 200
    commit_seconds: float = 2.0
    sweep_seconds: float = 300.0
    request_timeout: float = 600.0
    gateway_ca_file: Path | None = None  # the CA of the gateway's TLS certificate (https://); None: the system's


def _now() -> int:
    return int(time.time())


def _derived_id(prefix: str, *parts: str) -> str:
    """An id that finalizing again computes again: the same objects, overwritten, never a second copy."""
    return prefix + hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


def _pause(point: str) -> None:
    """`BYOC_BATCH_WORKER_PAUSE=point:seconds` holds the worker at `point` so that the crash test can kill it exactly
    there (a window of a few milliseconds otherwise); unset in any deployment."""
    wanted, _, seconds = os.environ.get("BYOC_BATCH_WORKER_PAUSE", "").partition(":")
    if wanted == point:
        time.sleep(float(seconds or 0))


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class InputLine:
    index: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any] | None  # None: the line cannot be sent (`problem` says why)
    problem: tuple[str, str] | None = None  # (code, message) reported per line in the error file


class InvalidInput(Exception):
    """The input file cannot run at all: the batch fails with OpenAI's `errors` (code, message, line, param)."""

    def __init__(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "line": line, "param": param}


def parse_input(content: bytes, endpoint: str) -> list[InputLine]:
    """The input file's request lines (`{custom_id, method: "POST", url, body}`, OpenAI's batch input shape).

    Raises InvalidInput for a file that cannot run: over 200 MB or 50,000 requests, a line that is not a JSON
    object, a line without a string `custom_id`, or a `custom_id` given twice (each needs exactly one result).
    A line with a usable custom_id but a wrong method, url or body (or asking to stream) becomes that line's error.
    """
    if len(content) > layout.MAX_FILE_BYTES:
        raise InvalidInput("file_too_large", f"the input file is over {layout.MAX_FILE_BYTES // 2**20} MB")
    lines: list[InputLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidInput("invalid_json_line", f"line {number} is not JSON", number) from None
        if not isinstance(item, dict):
            raise InvalidInput("invalid_request", f"line {number} is not a JSON object", number)
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise InvalidInput(
                "missing_required_parameter", f"line {number} has no custom_id string", number, "custom_id"
            )
        if custom_id in seen:
            raise InvalidInput(
                "duplicate_custom_id", f"line {number} repeats the custom_id of an earlier line", number, "custom_id"
            )
        seen.add(custom_id)
        lines.append(_request_line(number, custom_id, item, endpoint))
        if len(lines) > layout.MAX_REQUESTS_PER_BATCH:
            raise InvalidInput(
                "too_many_requests", f"the input file has more than {layout.MAX_REQUESTS_PER_BATCH:,} requests"
            )
    if not lines:
        raise InvalidInput("empty_file", "the input file holds no request")
    return lines


def _request_line(number: int, custom_id: str, item: dict[str, Any], endpoint: str) -> InputLine:
    body = item.get("body")
    problem: tuple[str, str] | None = None
    if item.get("method") != "POST":
        problem = ("invalid_request", f"line {number}: method must be POST")
    elif item.get("url") != endpoint:
        problem = ("invalid_url", f"line {number}: url must be the batch's endpoint, {endpoint}")
    elif not isinstance(body, dict):
        problem = ("invalid_request", f"line {number}: body must be a JSON object")
    elif body.get("stream"):
        problem = ("invalid_request", f"line {number}: body.stream: a batch answers whole, without streaming")
    return InputLine(number, custom_id, body if problem is None else None, problem)


@dataclass
class Progress:
    """What is committed for one batch, and what waits to be."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom_id -> first committed result
    buffer: list[dict[str, Any]] = field(default_factory=list)  # results not committed yet
    next_seq: int = 0
    completed: int = 0
    failed: int = 0
    last_commit: float = field(default_factory=time.monotonic)

    def add_committed(self, result: dict[str, Any]) -> None:
        if result["custom_id"] in self.results:
            return  # a line sent twice (a crash, or a lost lease): the first committed result wins
        self.results[result["custom_id"]] = result
        if _succeeded(result):
            self.completed += 1
        else:
            self.failed += 1


def _succeeded(result: dict[str, Any]) -> bool:
    response = result.get("response")
    return result.get("error") is None and isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300


def batch_usage(results: Any) -> dict[str, Any]:
    """OpenAI's BatchUsage (openai-python src/openai/types/batch_usage.py) summed over the answers' `usage`: what the
    gateway metered for the lines' results (a line sent twice after a crash was metered twice; counted once here)."""
    prompt = completion = cached = 0
    for result in results:
        response = result.get("response")
        body = response.get("body") if isinstance(response, dict) else None
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            continue
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        cached += int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class LeaseLost(Exception):
    """Another worker holds the batch now (ours expired, or was taken): stop without writing its state."""


class Lease:
    """layout.batch_lease: `{holder, expires_at}`, created if absent or taken once expired, by conditional write."""

    def __init__(self, store: Store, batch_id: str, holder: str, seconds: float) -> None:
        self.store, self.key, self.holder, self.seconds = store, layout.batch_lease(batch_id), holder, seconds
        self.version: str | None = None
        self.expires = 0.0

    def _body(self) -> bytes:
        self.expires = time.time() + self.seconds
        return _dumps({"holder": self.holder, "expires_at": self.expires})

    def acquire(self) -> bool:
        try:
            # a lease that keeps changing while it is read (gs://: conditional.py `_gcs_read`) is someone else's
            found = conditional.read_versioned(self.store, self.key)
            if found is None:
                self.version = conditional.create(self.store, self.key, self._body())
                return True
            data, version = found
            try:
                current = json.loads(data)
                free = current.get("holder") == self.holder or float(current.get("expires_at", 0)) < time.time()
            except (ValueError, AttributeError, TypeError):
                free = True  # unreadable: whoever wrote it is not renewing it either
            if not free:
                return False
            self.version = conditional.replace(self.store, self.key, self._body(), version)
            return True
        except conditional.Conflict:
            return False

    def renew(self) -> None:
        """Raises LeaseLost when another worker took it (our version moved on)."""
        if self.version is None:
            raise LeaseLost(self.key)
        try:
            self.version = conditional.replace(self.store, self.key, self._body(), self.version)
        except conditional.Conflict:
            self.version = None
            raise LeaseLost(self.key) from None

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.store.purge([self.key])


class BatchWorker:
    def __init__(self, settings: WorkerSettings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(
            settings.batch_store, "--batch-store", settings.batch_kms_key, timeout_s=layout.STORE_TIMEOUT_S
        )
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.stopping = asyncio.Event()
        self._session: Any = None
        self._last_sweep = 0.0
        self._warned_token = False
        self._running: dict[str, asyncio.Future[None]] = {}  # batch id -> its run, at most --max-batches
        self._owners: dict[str, str] = {}  # batch id -> owner, for the batches running
        # batches seen in a terminal state: a terminal state never changes (only the sweep deletes the batch), so
        # each poll reads the state of the batches that may still run, not of every batch the retention keeps
        self._ended: set[str] = set()
        # lines at the gateways at once, shared by the batches running: adapted to what the gateways admit, at most
        # --concurrency (runtime/serve/batch/window.py)
        self.window: SendWindow | None = None

    async def _io(self, function: Callable[..., T], *args: Any) -> T:
        """A store call (blocking boto3 / file I/O) off the event loop."""
        return await asyncio.to_thread(function, *args)

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.settings.request_timeout)
        connector = None
        if self.settings.gateway_ca_file is not None:
            import ssl

            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(self.settings.gateway_ca_file)))
        self.window = SendWindow(self.settings.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            log.info(
                "batch worker %s: gateway %s, batch root %s, concurrency %d, batches at once %d",
                self.holder,
                self.settings.gateway,
                self.store.uri(),
                self.settings.concurrency,
                self.settings.max_batches,
            )
            while not self.stopping.is_set():
                try:
                    await self.poll_once()
                except ByocError as exc:  # the store unreachable or refusing: said once a poll, tried again
                    log.warning("batch root: %s", exc)
                except Exception as exc:  # a bug: where, never the message (it may quote a line); tried again
                    log.error("batch worker: %s", exception_summary(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.settings.poll_seconds)
            # the batches running stop sending at the stop and commit what they have
            await asyncio.gather(*self._running.values(), return_exceptions=True)
        log.info("batch worker stopped")

    async def poll_once(self) -> None:
        """One round: the sweep when due, then batches not in a terminal state started, while fewer than
        --max-batches run, in `fair_order`; returns without waiting for them. Past --max-batches, an owner with no
        batch running still gets one started (up to twice --max-batches in all): one key's five big batches must not
        hold another key's 2-line batch in `validating` until one of them ends."""
        if time.monotonic() - self._last_sweep >= self.settings.sweep_seconds:
            await self._io(self.sweep)
            self._last_sweep = time.monotonic()
        for batch_id in [b for b, run in self._running.items() if run.done()]:
            del self._running[batch_id]
            self._owners.pop(batch_id, None)
        most = self.settings.max_batches
        if len(self._running) >= 2 * most:
            return
        objects = await self._io(self.store.list_objects, "batches")
        listed = {o.key.split("/")[1] for o in objects if o.key.endswith("/batch.json")}
        self._ended &= listed  # swept batches are gone from the listing: forget them
        ids = listed - set(self._running) - self._ended
        waiting: list[tuple[float, str, str]] = []
        for batch_id in ids:
            state = await self._io(self._read_json, layout.batch_state(batch_id))
            if state is not None and state.get("status") in layout.TERMINAL:
                self._ended.add(batch_id)
                continue
            record = await self._io(self._read_json, layout.batch_record(batch_id)) or {}
            created = record.get("created_at")
            created_at = float(created) if isinstance(created, int | float) else 0.0
            waiting.append((created_at, batch_id, str(record.get("owner", ""))))
        chosen = fair_order(waiting, list(self._owners.values()))
        for batch_id, owner in chosen:
            if self.stopping.is_set() or len(self._running) >= 2 * most:
                return
            if len(self._running) >= most and owner in self._owners.values():
                continue  # past --max-batches: only owners with nothing running
            self._owners[batch_id] = owner
            self._running[batch_id] = asyncio.ensure_future(self._run_guarded(batch_id))

    async def _run_guarded(self, batch_id: str) -> None:
        """One batch's run; a failure is logged (and the batch taken up again at a later poll), never raised."""
        try:
            await self.run_batch(batch_id)
        except ByocError as exc:  # the store unreachable or refusing
            log.warning("batch %s: %s", batch_id, exc)
        except Exception as exc:  # a bug: where, never the message (it may quote a line)
            log.error("batch %s: %s", batch_id, exception_summary(exc))

    def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.store.read_bytes(key))
        except ObjectMissing:
            return None
        except ValueError:
            raise ByocFailure("--batch-store", f"{self.store.uri(key)} is not JSON", "check what wrote it") from None
        return value if isinstance(value, dict) else None

    # -- one batch ---------------------------------------------------------------------------------------------
    async def run_batch(self, batch_id: str) -> None:
        lease = Lease(self.store, batch_id, self.holder, self.settings.lease_seconds)
        if not await self._io(lease.acquire):
            return  # another worker runs it
        renewing = asyncio.ensure_future(self._renew(lease))
        try:
            await BatchRun(self, batch_id, renewing).run()
        except LeaseLost:
            log.warning("batch %s: lease lost to another worker; leaving the batch to it", batch_id)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost, ByocError):
                await renewing
        if not renewing.cancelled() and renewing.exception() is not None:
            return
        await self._io(lease.release)

    async def _renew(self, lease: Lease) -> None:
        """Renews the lease at a third of its length; returns (ending the batch's run) once it is lost."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self._io(lease.renew)
            except ByocError as exc:
                if time.time() >= lease.expires:
                    raise LeaseLost(lease.key) from None
                log.warning("lease renewal failed, retrying: %s", exc)

    # -- the sweep ---------------------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Deletes expired files (content and object.json), the data of batches ended more than --retention-hours
        ago, and the parts and lease a crash left behind a batch that ended: every version of each (Store.purge), so
        nothing of it stays readable by version id in the versioned bucket. The bucket's lifecycle rule is only a
        backstop for this.

        It keeps the owner index (owner_index.py) whole: an entry is deleted before its record, entries whose name
        says expired or whose record is gone are deleted, a record without its entry (written before the index
        existed, or by a gateway that crashed between the two) gets it, and then `index/_complete` says so. The index
        is listed first: an entry in that listing was written after its record (the gateway's order), so a record
        missing from the listings after it is gone, not yet to come."""
        now = time.time()
        index = owner_index.list_index(self.store, now)  # first: see above
        stale = set(index.expired)  # entries to delete: expired by their name, or naming a record that is gone
        missing: list[str] = []  # entries to write: records without theirs
        ended, in_use = self._sweep_batches(now, index, stale, missing)
        deleted = self._sweep_files(now, index, in_use, stale, missing)
        owner_index.settle(self.store, index, stale, missing)
        if missing or not index.complete:
            log.info("sweep: wrote %d owner-index entries that were missing", len(missing))
        if deleted or ended:
            log.info("sweep: deleted %d expired files and the data of %d ended batches", deleted, ended)

    def _sweep_batches(
        self, now: float, index: owner_index.IndexListing, stale: set[str], missing: list[str]
    ) -> tuple[int, set[str]]:
        """The batches' part of the sweep: how many it deleted, and the input files of those still running."""
        retention = self.settings.retention_hours * 3600
        by_batch: dict[str, list[str]] = {}
        for item in self.store.list_objects("batches"):
            by_batch.setdefault(item.key.split("/")[1], []).append(item.key)
        ended = 0
        in_use: set[str] = set()  # the input files of batches still running: kept whatever their expiry says
        for batch_id, keys in by_batch.items():
            state = self._read_json(layout.batch_state(batch_id)) if layout.batch_state(batch_id) in keys else None
            record: dict[str, Any] | None = None
            if state is None or state.get("status") not in layout.TERMINAL:
                record = self._read_json(layout.batch_record(batch_id)) or {}
                in_use.add(str(record.get("input_file_id")))
            elif now >= float(state.get(f"{state['status']}_at") or 0) + retention:
                owner_index.remove(self.store, index.batches.pop(batch_id, []))  # the entry before the record
                self.store.purge(keys)
                ended += 1
                continue
            else:
                leftovers = [k for k in keys if "/parts/" in k or k == layout.batch_lease(batch_id)]
                if leftovers:
                    self.store.purge(leftovers)
            if batch_id not in index.batches and layout.batch_record(batch_id) in keys:
                record = record if record is not None else self._read_json(layout.batch_record(batch_id)) or {}
                if (entry_key := owner_index.batch_entry_key(record)) is not None:
                    missing.append(entry_key)
        for batch_id, entries in index.batches.items():
            if layout.batch_record(batch_id) not in by_batch.get(batch_id, []):
                stale.update(entries)
        return ended, in_use

    def _sweep_files(
        self, now: float, index: owner_index.IndexListing, in_use: set[str], stale: set[str], missing: list[str]
    ) -> int:
        """The files' part of the sweep: how many expired files it deleted."""
        deleted = 0
        records: set[str] = set()
        for item in self.store.list_objects("files"):
            file_id = item.key.split("/")[1]
            if not item.key.endswith("/object.json"):
                continue
            records.add(file_id)
            if file_id in in_use and file_id in index.files:
                continue
            found = self._read_json(item.key) or {}
            expires = found.get("expires_at")
            expired = isinstance(expires, int | float) and expires <= now
            if expired and file_id not in in_use:
                removed = index.files.pop(file_id, [])
                owner_index.remove(self.store, removed)  # the entry before the record
                stale.difference_update(removed)
                self.store.purge([layout.file_content(file_id), layout.file_object(file_id)])
                records.discard(file_id)
                deleted += 1
            elif not expired and file_id not in index.files and (entry_key := owner_index.file_entry_key(found)):
                missing.append(entry_key)
        for file_id, entries in index.files.items():
            if file_id not in records:
                stale.update(entries)
        return deleted


def fair_order(waiting: list[tuple[float, str, str]], running_owners: list[str]) -> list[tuple[str, str]]:
    """The order in which to start the `waiting` batches (`(created_at, batch_id, owner)`), as `(batch_id, owner)`:
    round-robin by owner, the owner with the fewest batches running (`running_owners`, one entry per batch) first
    (ties: the owner whose oldest waiting batch is oldest), each owner's batches oldest first."""
    queues: dict[str, list[tuple[float, str]]] = {}
    for created_at, batch_id, owner in sorted(waiting):
        queues.setdefault(owner, []).append((created_at, batch_id))
    running: dict[str, int] = {}
    for owner in running_owners:
        running[owner] = running.get(owner, 0) + 1
    order: list[tuple[str, str]] = []
    while queues:
        owner = min(queues, key=lambda o: (running.get(o, 0), queues[o][0]))
        _, batch_id = queues[owner].pop(0)
        if not queues[owner]:
            del queues[owner]
        order.append((batch_id, owner))
        running[owner] = running.get(owner, 0) + 1
    return order


class BatchRun:
    """One batch, from where its state.json says it is to a terminal state (or to the worker's stop)."""

    def __init__(self, worker: BatchWorker, batch_id: str, renewing: asyncio.Future[None]) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.store = worker.store
        self.batch_id = batch_id
        self.renewing = renewing
        self.record: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.lines: list[InputLine] = []
        self.progress = Progress()
        self.stop_sending = asyncio.Event()
        self.sending_done = asyncio.Event()
        self.committing = asyncio.Lock()  # one commit at a time, never cut off half-way by a cancellation
        self.in_flight = 0
        # set while results can be committed: a store that refuses commits pauses the sending (a line run now
        # would be metered, then lost with the buffer if the worker stopped, and run again)
        self.store_up = asyncio.Event()
        self.store_up.set()
        self.commit_due = asyncio.Event()  # --commit-lines results wait, or the sending is done: the watcher commits
        self.store_down_logged = -math.inf  # when the pause was last logged (once a minute, not once a tick)

    async def _io(self, function: Callable[..., T], *args: Any) -> T:
        if self.renewing.done():
            self.renewing.result()  # raises LeaseLost: no write after the lease is gone
        return await asyncio.to_thread(function, *args)

    async def run(self) -> None:
        record = await self._io(self.worker._read_json, layout.batch_record(self.batch_id))
        if record is None:
            return
        self.record = record
        state = await self._io(self.worker._read_json, layout.batch_state(self.batch_id))
        self.state = state or {"status": layout.VALIDATING, "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        status = self.state.get("status")
        if status in layout.TERMINAL:
            return
        content = await self._io(self._input)
        if content is None:
            await self._io(self._load_parts)
            await self._io(self._end_without_input)
            return
        try:
            self.lines = parse_input(content, str(self.record.get("endpoint")))
        except InvalidInput as invalid:
            await self._fail(invalid.error)
            return
        await self._io(self._load_parts)
        if status == layout.VALIDATING:
            self.state.update(status=layout.IN_PROGRESS, in_progress_at=_now())
            self.state["request_counts"] = self._counts()
            await self._io(self._write_state)
            log.info("batch %s: in_progress, %d requests", self.batch_id, len(self.lines))
        running = self.state["status"] in (layout.IN_PROGRESS, layout.FINALIZING)
        if running and self.state.get("ending") in (None, layout.COMPLETED) and self._missing():
            if self.state["status"] != layout.IN_PROGRESS:  # cannot happen; if it does, results come first
                self.state.update(status=layout.IN_PROGRESS, ending=None)
                await self._io(self._write_state)
            await self._send_all()
            if self.worker.stopping.is_set():
                return
        await self._finalize()

    def _missing(self) -> bool:
        return any(line.custom_id not in self.progress.results for line in self.lines)

    def _input(self) -> bytes | None:
        try:
            return self.store.read_bytes(layout.file_content(str(self.record.get("input_file_id"))))
        except ObjectMissing:
            return None

    def _load_parts(self) -> None:
        parts = sorted(o.key for o in self.store.list_objects(layout.batch_parts(self.batch_id)))
        for key in parts:
            if not key.endswith(".jsonl"):
                continue
            seq = int(key.rsplit("/", 1)[1].split(".")[0])
            self.progress.next_seq = max(self.progress.next_seq, seq + 1)
            try:
                data = self.store.read_bytes(key)
            except ObjectMissing:
                continue  # deleted by a finalize that ran meanwhile: the lease says that cannot happen
            for raw in data.splitlines():
                if raw.strip():
                    self.progress.add_committed(json.loads(raw))

    def _counts(self) -> dict[str, int]:
        return {"total": len(self.lines), "completed": self.progress.completed, "failed": self.progress.failed}

    def _write_state(self) -> None:
        self.store.write_bytes(layout.batch_state(self.batch_id), _dumps(self.state))

    async def _fail(self, error: dict[str, Any]) -> None:
        self.state.update(
            status=layout.FAILED,
            failed_at=_now(),
            errors={"object": "list", "data": [error]},
        )
        await self._io(self._write_state)
        log.info("batch %s: failed validation (%s)", self.batch_id, error.get("code"))

    def _end_without_input(self) -> None:
        """The input file is gone (deleted by hand or by a sweep) before the batch ended: `failed`, naming the cause,
        with the results already committed (and metered) delivered in its output and error files rather than
        dropped; the lines never run have no result (their custom_ids are in the lost file)."""
        done = list(self.progress.results.values())
        output = [_dumps(r) + b"\n" for r in done if _succeeded(r)]
        errors = [_dumps(r) + b"\n" for r in done if not _succeeded(r)]
        stamp = int(self.state.get("failed_at") or _now())
        total = self.record.get("request_total")
        if not isinstance(total, int) or isinstance(total, bool):
            counts = self.state.get("request_counts")
            total = int(counts.get("total") or 0) if isinstance(counts, dict) else 0
        error = {
            "code": "input_file_deleted",
            "message": f"the input file {self.record.get('input_file_id')} was deleted before the batch ended: "
            f"{len(done)} of {max(total, len(done))} requests had run, their results are in the output and error "
            "files; upload the file again and create a new batch for the rest",
            "line": None,
            "param": "input_file_id",
        }
        self.state.update(
            status=layout.FAILED,
            failed_at=stamp,
            errors={"object": "list", "data": [error]},
            request_counts={"total": max(total, len(done)), "completed": len(output), "failed": len(errors)},
            output_file_id=self._write_file("output", output, stamp),
            error_file_id=self._write_file("error", errors, stamp),
            usage=batch_usage(done),
        )
        self._write_state()  # after the files, as _assemble does
        parts = self.store.list_objects(layout.batch_parts(self.batch_id))
        self.store.purge([p.key for p in parts])
        log.info("batch %s: failed, input file gone (%d results delivered)", self.batch_id, len(done))

    # -- sending ---------------------------------------------------------------------------------------------
    def _deadline(self) -> float:
        expires = self.record.get("expires_at")
        if isinstance(expires, int | float):
            return float(expires)
        window = layout.COMPLETION_WINDOW_SECONDS.get(str(self.record.get("completion_window")), 24 * 3600)
        return float(self.record.get("created_at") or time.time()) + window

    async def _send_all(self) -> None:
        todo: asyncio.Queue[InputLine] = asyncio.Queue()
        for line in self.lines:
            if line.custom_id in self.progress.results:
                continue
            if line.problem is not None:
                self._result(line, None, {"code": line.problem[0], "message": line.problem[1]})
            else:
                todo.put_nowait(line)
        if time.time() >= self._deadline() or await self._io(self.store.exists, layout.batch_cancel(self.batch_id)):
            self.stop_sending.set()  # cancelled, or out of time, before a line was sent: none is
        watcher = asyncio.ensure_future(self._watch())
        # the watcher commits results and sees a cancel: if it ends for any reason (a cancel, a lost lease, an error
        # it did not expect), no line is sent without it, or a batch would run on uncommitted and uncancellable
        watcher.add_done_callback(lambda _: self.stop_sending.set())
        senders = [asyncio.ensure_future(self._sender(todo)) for _ in range(self.settings.concurrency)]
        try:
            await asyncio.gather(*senders)
        finally:
            for task in senders:
                task.cancel()
            self.sending_done.set()  # the watcher ends after its commit in progress, if any: never cut off
            self.commit_due.set()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self._commit_all()

    async def _commit_all(self) -> None:
        """Commits every buffered result before the batch goes on to finalize. A store that refuses is tried again
        (after 1 s, doubling to 30 s) for as long as the lease holds and the worker runs: a run that ended here
        dropped its buffer, and the restarted run sent those lines (metered) again."""
        delay = 1.0
        while True:
            await self._commit(force=True)
            if not self.progress.buffer or self.worker.stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.worker.stopping.wait(), delay)
            delay = min(delay * 2, 30.0)

    async def _watch(self) -> None:
        """Commits on time, and stops the sending on a cancel, the window's end, the worker's stop or a lost lease."""
        while not self.sending_done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.commit_due.wait(), min(0.5, self.settings.commit_seconds))
            self.commit_due.clear()
            if self.renewing.done() or self.worker.stopping.is_set() or time.time() >= self._deadline():
                self.stop_sending.set()  # a lost lease, the worker's stop, the window's end: no new line
                return
            try:
                await self._commit()
                cancelled = await self._io(self.store.exists, layout.batch_cancel(self.batch_id))
            except LeaseLost:
                self.stop_sending.set()
                raise
            except ByocError as exc:  # the store hiccuped: the results stay buffered, tried at the next tick
                log.warning("batch %s: %s", self.batch_id, exc)
                continue
            if cancelled:
                self.stop_sending.set()
                return

    async def _sender(self, todo: asyncio.Queue[InputLine]) -> None:
        while not self.stop_sending.is_set():
            if not self.store_up.is_set():  # commits fail: no new line until one succeeds (or sending stops)
                waits = [asyncio.ensure_future(self.store_up.wait()), asyncio.ensure_future(self.stop_sending.wait())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
                continue
            try:
                line = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            self.in_flight += 1
            try:
                await self._send(line)
            finally:
                self.in_flight -= 1

    async def _send(self, line: InputLine) -> None:
        """Sends one line until it has a result, or until sending stops (then it stays to be sent)."""

        headers = {
            "Authorization": f"Bearer {self.settings.worker_token}",
            layout.OWNER_HEADER: str(self.record.get("owner", "")),
            layout.BATCH_ID_HEADER: self.batch_id,
            "Content-Type": "application/json",
        }
        url = self.settings.gateway.rstrip("/") + str(self.record.get("endpoint"))
        payload = _dumps(line.body)
        attempt = 0
        server_errors = 0
        while not self.stop_sending.is_set():
            attempt += 1
            wait: float
            answer = await self._attempt(url, payload, headers)
            if answer is None:
                if self.stop_sending.is_set():  # stopped while waiting for room: the line stays to be sent
                    return
                # the gateway is down or restarting: wait for it, with a growing, jittered back-off
                await self._backoff(min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(attempt, 5)))
                continue
            status, body, code, request_id, retry_header = answer
            if status == 401:
                if not self.worker._warned_token:
                    log.error("the gateway refused the worker's token (401): check --worker-token-file")
                    self.worker._warned_token = True
                await self._backoff(BACKOFF_MAX_SECONDS)
                continue
            if _not_now(status, code) or (status in (500, 502) and server_errors < RETRIED_500):
                server_errors += status in (500, 502) and not _not_now(status, code)
                wait = float(retry_header) if retry_header and retry_header.isdigit() else 1.0
                await self._backoff(wait)
                continue
            self._result(line, {"status_code": status, "request_id": request_id, "body": body}, None)
            return

    async def _attempt(
        self, url: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, str | None, str, str | None] | None:
        """One POST of a line, inside the worker's send window: (status, body, error code, request id,
        Retry-After), or None when sending stopped while it waited for room or the gateway could not be reached.
        What the gateway answered tells the window whether it had room (runtime/serve/batch/window.py)."""
        import aiohttp

        window = self.worker.window
        ticket = await window.acquire(str(self.record.get("owner", ""))) if window is not None else 0
        admitted: bool | None = None
        try:
            if self.stop_sending.is_set():
                return None
            async with self.worker._session.post(url, data=payload, headers=headers) as response:
                raw = await response.read()
                status = response.status
                request_id = response.headers.get("x-request-id") or f"req_{secrets.token_hex(12)}"
                retry_header = response.headers.get("Retry-After")
                why = response.headers.get(layout.YIELD_HEADER)
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            code = body.get("error", {}).get("code") if isinstance(body, dict) and body.get("error") else None
            if status == 429 and code in YIELD_CODES:
                # a hold for an online request's first token says nothing about room: no smaller window for it
                admitted = None if why == "hold" else False
            elif not (status == 401 or _not_now(status, code) or status in (500, 502)):
                admitted = True
            return status, body, code, request_id, retry_header
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        finally:
            if window is not None:
                window.release(ticket, admitted)

    async def _backoff(self, seconds: float) -> None:
        """Sleeps about `seconds` (x 0.5 to 1.5: the worker's senders spread out rather than return at once), or
        less if sending stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_sending.wait(), seconds * random.uniform(0.5, 1.5))

    def _result(self, line: InputLine, response: dict[str, Any] | None, error: dict[str, str] | None) -> None:
        result = {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": line.custom_id,
            "response": response,
            "error": error,
        }
        self.progress.buffer.append(result)
        if len(self.progress.buffer) >= self.settings.commit_lines:
            self.commit_due.set()
        if len(self.progress.buffer) >= BEHIND_COMMITS * self.settings.commit_lines:
            # the watcher's commits are behind (a slow store, a stuck call): no new line until they catch up, so
            # that what a crash or a cancel costs stays a few parts, not the batch
            self.store_up.clear()

    async def _commit(self, force: bool = False) -> None:
        """Writes the buffered results as the next part when --commit-lines are waiting or --commit-seconds passed."""
        async with self.committing:
            await self._commit_now(force)

    async def _commit_now(self, force: bool) -> None:
        progress = self.progress
        if not progress.buffer:
            progress.last_commit = time.monotonic()
            return
        due = time.monotonic() - progress.last_commit >= self.settings.commit_seconds
        if not (force or due or len(progress.buffer) >= self.settings.commit_lines):
            return
        results, progress.buffer = progress.buffer, []
        data = b"".join(_dumps(r) + b"\n" for r in results)
        try:
            while True:
                try:
                    key = layout.batch_part(self.batch_id, progress.next_seq)
                    await self._io(conditional.create, self.store, key, data)
                    break
                except conditional.Conflict:
                    progress.next_seq += 1  # a part of that number exists (another writer's): never overwritten
            progress.next_seq += 1
        except ByocError as exc:
            progress.buffer = results + progress.buffer  # kept for the next commit
            self.store_up.clear()
            if time.monotonic() - self.store_down_logged >= 60:
                self.store_down_logged = time.monotonic()
                log.warning("batch %s: commit failed, sending paused, will retry: %s", self.batch_id, exc)
            return
        for result in results:
            progress.add_committed(result)
        progress.last_commit = time.monotonic()
        if not self.store_up.is_set():
            self.store_up.set()
            if self.store_down_logged > -math.inf:
                self.store_down_logged = -math.inf
                log.info("batch %s: results committed again, sending resumed", self.batch_id)
        self.state["request_counts"] = self._counts()
        try:
            await self._io(self._write_state)
        except ByocError as exc:  # the part is safe; the counts are written again at the next commit
            log.warning("batch %s: state not written, will retry: %s", self.batch_id, exc)

    # -- the end ---------------------------------------------------------------------------------------------
    async def _finalize(self) -> None:
        """Assembles the output and error files and writes the terminal state: completed, or cancelled / expired
        with an error line for each request not run. Idempotent: a crash anywhere here finalizes again."""
        ending = self.state.get("ending")
        if ending is None:
            # the gateway's cancel request, with the time its answer gave the client (kept, not stamped anew)
            cancel = await self._io(self.worker._read_json, layout.batch_cancel(self.batch_id))
            stamp: dict[str, Any] = {}
            if cancel is not None:
                ending = layout.CANCELLED
                asked = cancel.get("cancelling_at")
                if isinstance(asked, int) and not isinstance(asked, bool):
                    stamp = {"cancelling_at": asked}
            elif self._missing() and time.time() >= self._deadline():
                ending = layout.EXPIRED
            elif self._missing():
                return  # sending stopped early (the lease lost, a commit failed): the next poll takes it up again
            else:
                ending = layout.COMPLETED
            status = layout.CANCELLING if ending == layout.CANCELLED else layout.FINALIZING
            self.state.update(status=status, ending=ending, **({f"{status}_at": _now()} | stamp))
            await self._io(self._write_state)
        await self._io(self._assemble, str(ending))
        log.info(
            "batch %s: %s (%d completed, %d failed of %d)",
            self.batch_id,
            ending,
            self.state["request_counts"]["completed"],
            self.state["request_counts"]["failed"],
            len(self.lines),
        )

    def _assemble(self, ending: str) -> None:
        missing = BATCH_CANCELLED if ending == layout.CANCELLED else BATCH_EXPIRED
        output: list[bytes] = []
        errors: list[bytes] = []
        for line in self.lines:
            result = self.progress.results.get(line.custom_id)
            if result is None:
                if ending == layout.COMPLETED:
                    raise ByocFailure("--batch-store", f"batch {self.batch_id}: a line has no result", "report a bug")
                result = {
                    "id": _derived_id("batch_req_", self.batch_id, line.custom_id),
                    "custom_id": line.custom_id,
                    "response": None,
                    "error": {"code": missing[0], "message": missing[1]},
                }
            (output if _succeeded(result) else errors).append(_dumps(result) + b"\n")
        stamp = int(self.state.get("finalizing_at") or self.state.get("cancelling_at") or _now())
        output_id = self._write_file("output", output, stamp)
        error_id = self._write_file("error", errors, stamp)
        _pause("finalize_files_written")
        counts = {"total": len(self.lines), "completed": len(output), "failed": len(errors)}
        self.state.update(status=ending, request_counts=counts, output_file_id=output_id, error_file_id=error_id)
        self.state["usage"] = batch_usage(self.progress.results.values())
        self.state[f"{ending}_at"] = _now()
        self._write_state()  # after the files: a batch that says completed has its files
        parts = self.store.list_objects(layout.batch_parts(self.batch_id))
        self.store.purge([p.key for p in parts])

    def _write_file(self, kind: str, lines: list[bytes], created_at: int) -> str | None:
        """An output or error file (purpose `batch_output`, the batch owner's, expiring per the batch's
        output_expires_after or --retention-hours); None when it would be empty (OpenAI leaves the id null)."""
        if not lines:
            return None
        file_id = _derived_id("file-", self.batch_id, kind)
        content = b"".join(lines)
        # the gateway stores the batch's output_expires_after as `output_expires_seconds` (layout.py), never above
        # the retention; OpenAI's own shape is read too
        seconds = self.settings.retention_hours * 3600
        given = self.record.get("output_expires_seconds")
        expires_after = self.record.get("output_expires_after")
        if isinstance(given, int) and not isinstance(given, bool):
            seconds = given
        elif isinstance(expires_after, dict) and isinstance(expires_after.get("seconds"), int):
            seconds = expires_after["seconds"]
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": created_at,
            "filename": f"{self.batch_id}_{kind}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "expires_at": int(created_at + seconds),
            "owner": self.record.get("owner"),
        }
        self.store.write_bytes(layout.file_content(file_id), content)
        self.store.write_bytes(layout.file_object(file_id), _dumps(record))
        # then its owner-index entry (owner_index.py): written again, the same name, if finalizing runs again
        entry = owner_index.file_entry_key(record)
        if entry is not None:
            owner_index.add(self.store, entry)
        return file_id


# -- the command ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.serve.batch.worker",
        description="Run the batches under the batch root through the gateway, in capacity online traffic leaves idle.",
    )
    parser.add_argument("--gateway", required=True, help="The gateway's URL, e.g. http://gateway:8080.")
    parser.add_argument("--batch-store", required=True, help="The batch root: s3://..., gs://... or file:///...")
    parser.add_argument("--batch-kms-key", help="KMS key (ARN) or Cloud KMS key for what the worker writes.")
    parser.add_argument("--worker-token-file", required=True, type=Path, help="File holding the worker's token.")
    parser.add_argument(
        "--gateway-ca-file", type=Path, help="PEM CA of the gateway's TLS certificate (https://) [the system's]."
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4096,
        help="Lines in flight at most, all batches: the ceiling of a window following what the gateways admit [4096].",
    )
    parser.add_argument("--max-batches", type=int, default=4, help="Batches run at once, fairly across owners [4].")
    parser.add_argument("--retention-hours", type=float, default=24.0, help="Output files and ended batches [24].")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="Between looks at the batch root [2].")
    parser.add_argument("--lease-seconds", type=float, default=30.0, help="A batch's lease [30].")
    parser.add_argument("--commit-lines", type=int, default=200, help="Results per committed part at most [200].")
    parser.add_argument("--commit-seconds", type=float, default=2.0, help="Longest wait before a commit [2].")
    parser.add_argument("--sweep-seconds", type=float, default=300.0, help="Between sweeps of expired data [300].")
    return parser


def settings_from_args(argv: list[str]) -> WorkerSettings:
    """The worker's settings. Raises ByocError naming the flag at fault."""
    args = _parser().parse_args(argv)
    checks = [
        ("--gateway", args.gateway.startswith(("http://", "https://")), "http://HOST:PORT or https://..."),
        ("--concurrency", 1 <= args.concurrency <= 4096, "from 1 to 4096"),
        ("--max-batches", 1 <= args.max_batches <= 256, "from 1 to 256"),
        ("--retention-hours", 1 <= args.retention_hours <= 720, "from 1 to 720 (OpenAI's 1 h to 30 days)"),
        ("--poll-seconds", 0.05 <= args.poll_seconds <= 300, "from 0.05 to 300"),
        ("--lease-seconds", 1 <= args.lease_seconds <= 3600, "from 1 to 3600"),
        ("--commit-lines", 1 <= args.commit_lines <= 100_000, "from 1 to 100000"),
        ("--commit-seconds", 0.05 <= args.commit_seconds <= 300, "from 0.05 to 300"),
        ("--sweep-seconds", 0.05 <= args.sweep_seconds <= 86_400, "from 0.05 to 86400"),
    ]
    for flag, ok, hint in checks:
        if not ok:
            raise ByocError(flag, "out of range", hint)
    if args.gateway_ca_file is not None:
        import ssl

        try:
            ssl.create_default_context(cafile=str(args.gateway_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ByocError(
                "--gateway-ca-file", f"cannot load {args.gateway_ca_file}: {type(exc).__name__}", "give a PEM CA file"
            ) from None
    try:
        token = args.worker_token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ByocError(
            "--worker-token-file", f"cannot read {args.worker_token_file}: {type(exc).__name__}", "mount the Secret"
        ) from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ByocError(
            "--worker-token-file",
            "does not hold one token of at least 16 characters",
            "the same file as the gateway's --batch-worker-token-file",
        )
    return WorkerSettings(
        gateway=args.gateway,
        batch_store=args.batch_store,
        worker_token=token,
        batch_kms_key=args.batch_kms_key,
        concurrency=args.concurrency,
        max_batches=args.max_batches,
        retention_hours=args.retention_hours,
        poll_seconds=args.poll_seconds,
        lease_seconds=args.lease_seconds,
        commit_lines=args.commit_lines,
        commit_seconds=args.commit_seconds,
        sweep_seconds=args.sweep_seconds,
        gateway_ca_file=args.gateway_ca_file,
    )


async def _serve(worker: BatchWorker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stopping.set)  # the lines in flight finish and are committed
    await worker.run()


def main(argv: list[str] | None = None) -> int:
    from runtime.serve import logs

    try:
        settings = settings_from_args(sys.argv[1:] if argv is None else argv)
        worker = BatchWorker(settings)
        worker.store.list_objects("batches")  # a store that cannot be read is said now, not on every poll
    except ByocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    logs.configure()
    asyncio.run(_serve(worker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
