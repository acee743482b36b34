"""OpenAI's Files and Batches API on the gateway (`--batch-store`), the files in the deployment's bucket.

Routes (shapes as openai-python 3.63 types them: src/openai/types/file_object.py, file_deleted.py, batch.py,
batch_request_counts.py, batch_error.py, batch_create_params.py, file_create_params.py, pagination.py CursorPage):

    POST   /v1/files                  multipart `file`, `purpose` ("batch"), `expires_after[anchor|seconds]`
    GET    /v1/files                  ?purpose&limit(1..10000, 10000)&after&order(asc|desc, desc)  (owner index)
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}        object.json and content, every version of each (Store.purge); refused (400)
                                      while a batch of the key that has not ended reads it as its input
    POST   /v1/batches                {input_file_id, endpoint, completion_window, metadata, output_expires_after}
    GET    /v1/batches                ?limit(1..100, 20)&after, newest first  (owner index)
    GET    /v1/batches/{batch_id}
    POST   /v1/batches/{batch_id}/cancel

Every object records its owner, the API key's name; a key sees only its own (another key's id is 404, as an unknown
one). A file past its `expires_at` is 404 before any sweep deletes it. Objects are laid out as
runtime/serve/batch/layout.py says, written whole (one PUT each: SSE-KMS with --batch-kms-key on S3, CMEK on GCS),
content before object.json, so no object.json names content that is not there, and object.json and batch.json
before their entry in the owner index (runtime/serve/batch/owner_index.py), which the lists read: a list costs one
page of the caller's index and a GET per object it returns, whatever other keys keep in the bucket. Store calls are
blocking (boto3, google-cloud-storage): they run in threads, the event loop keeps serving online traffic.

Zero data retention: no line, body, filename or custom_id reaches a log line, a metric or an error message; the
access line says route, key, status and bytes. A store that cannot be reached answers 503, one that refuses the
gateway (access denied, KMS) or whose bucket is gone answers 500; both say so, and nothing is left half-written.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from byoc.errors import ByocError
from runtime.model_build.stores import ObjectMissing, Store
from runtime.serve.batch import layout, owner_index
from runtime.serve.batch.input_file import check_input_file
from runtime.serve.keys import ApiKey, KeyRing
from runtime.serve.logs import AccessLog, exception_summary
from runtime.serve.openai_api import ApiError, error_body, parse_json

log = logging.getLogger("byoc.gateway.batch")

JSON_HEADERS = {"Content-Type": "application/json"}
FIELD = "--batch-store"
READ_CHUNK = 1024 * 1024
MAX_JSON_BODY = 1024 * 1024  # a batch create is a few fields; metadata at its largest is ~9 KB
FILES_LIST_DEFAULT = 10_000  # file_list_params.py: limit 1..10,000, default 10,000
BATCHES_LIST_DEFAULT = 20  # batch_list_params.py: limit 1..100, default 20
BATCHES_LIST_MAX = 100
STORE_RETRY_AFTER = "5"
STORE_THREADS = 8  # store calls at once (a list reads its objects in parallel); more wait their turn
# Bytes of whole files (uploads, batch creates reading their input, content downloads) this gateway holds in memory at
# once. The gateway pod's limit is 512 Mi (stacks/k8s/serving.py) and it serves online traffic too: a 195 MB upload
# peaked at 268 MB of RSS (the buffer grows by doubling) over an 85 MB process, so 256 MiB of files (one 200 MB file,
# or several small ones) stays under the limit; what does not fit is refused at once with 429 and Retry-After, never
# queued, and the client retries (the official client does on 429).
FILE_BYTES_IN_MEMORY = 256 * 1024 * 1024
FILE_BUSY_RETRY_AFTER = "10"
# ids as layout.new_file_id / new_batch_id make them: anything else is no object's (and no path under the root)
FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")
BATCH_ID = re.compile(r"^batch_[A-Za-z0-9]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StoreFault(ApiError):
    """The batch store failed a call: 503 when it may come back (unreachable), 500 when it refuses the gateway."""


def _store_fault(exc: ByocError) -> StoreFault:
    # the message is the store's own (bucket, key and error code; never data); the log gets it, the client a summary
    text = exc.message.lower()
    log.error("batch store: %s", exc.message)
    if "access denied" in text or "kms" in text or "permission denied" in text:
        return StoreFault(
            500,
            "the batch store refused the gateway (access denied, or the KMS key): an operator must fix its IAM role "
            "or key policy",
            kind="server_error",
            code="batch_store_denied",
        )
    if "does not exist" in text or "nosuchbucket" in text:
        return StoreFault(
            500,
            "the batch store's bucket does not exist: an operator must restore it or fix --batch-store",
            kind="server_error",
            code="batch_store_missing",
        )
    return StoreFault(
        503,
        "the batch store cannot be reached: retry shortly",
        kind="server_error",
        code="batch_store_unavailable",
        retry_after=STORE_RETRY_AFTER,
    )


def _not_found(what: str, param: str) -> ApiError:
    return ApiError(404, f"{param}: no such {what}", param=param, code="not_found")


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


async def _next_part(reader: Any) -> Any:
    """The multipart body's next part (None after the last). A part's headers past aiohttp's 8,190-byte line limit
    (a filename of 100,000 characters) or a malformed part is the client's fault: 400 naming `file` (it was a 500)."""
    try:
        return await reader.next()
    except (BadHttpMessage, ValueError) as exc:
        raise _bad(
            "file",
            f"the multipart body cannot be read ({type(exc).__name__}): send the file with a filename under 1,000 "
            "characters",
        ) from None


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise _bad(name, f"must be a whole number from {low} to {high}")
    return int(raw)


class BatchApi:
    """The handlers, over one store. `serves(model)` says whether the gateway serves a model or addon name (True
    while it cannot know yet); `retention_hours` bounds every file's life."""

    def __init__(
        self,
        store: Store,
        keys: KeyRing,
        access_log: AccessLog,
        serves: Callable[[str], bool],
        retention_hours: int,
    ) -> None:
        self.store = store
        self.keys = keys
        self.access_log = access_log
        self.serves = serves
        self.retention_seconds = retention_hours * 3600
        # threads of their own: a store that hangs holds these, never the event loop's default executor (which
        # resolves the upstreams' DNS names for online traffic)
        self.threads = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="batch-store")
        self.file_bytes = FILE_BYTES_IN_MEMORY  # what whole-file operations may still take (FILE_BYTES_IN_MEMORY)
        # whether every record has its owner-index entry (owner_index.py, "Migration"): once it has, it stays so
        self.indexed = False

    @contextlib.contextmanager
    def _file_memory(self, size: int) -> Iterator[None]:
        """Hold `size` bytes of the gateway's file budget while a whole file is in memory; 429 `files_busy` at once
        when the budget cannot take it (other uploads or downloads in flight)."""
        size = min(max(size, 0), FILE_BYTES_IN_MEMORY)
        if size > self.file_bytes:
            raise ApiError(
                429,
                "file operations: this gateway is holding as many file bytes as it may; retry after the time in "
                "Retry-After",
                kind="requests",
                code="files_busy",
                retry_after=FILE_BUSY_RETRY_AFTER,
            )
        self.file_bytes -= size
        try:
            yield
        finally:
            self.file_bytes += size

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/files", self._logged("POST /v1/files", self.create_file)),
            ("GET", "/v1/files", self._logged("GET /v1/files", self.list_files)),
            ("GET", "/v1/files/{file_id}", self._logged("GET /v1/files/{id}", self.retrieve_file)),
            ("DELETE", "/v1/files/{file_id}", self._logged("DELETE /v1/files/{id}", self.delete_file)),
            ("GET", "/v1/files/{file_id}/content", self._logged("GET /v1/files/{id}/content", self.file_content)),
            ("POST", "/v1/batches", self._logged("POST /v1/batches", self.create_batch)),
            ("GET", "/v1/batches", self._logged("GET /v1/batches", self.list_batches)),
            ("GET", "/v1/batches/{batch_id}", self._logged("GET /v1/batches/{id}", self.retrieve_batch)),
            ("POST", "/v1/batches/{batch_id}/cancel", self._logged("POST /v1/batches/{id}/cancel", self.cancel_batch)),
        ]

    # -- plumbing --------------------------------------------------------------------------------------------------
    def _logged(self, route: str, handler: Callable[[web.Request, ApiKey], Awaitable[web.Response]]) -> Handler:
        async def serve(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            key = self.keys.authenticate(request.headers.get("Authorization"))
            name = key.name if key is not None else "-"
            request_bytes = request.content_length or 0

            def access(status: int, sent: int) -> None:
                self.access_log.write(
                    f"key={name} route={route.replace(' ', ':')} status={status} "
                    f"request_bytes={request_bytes} response_bytes={sent} "
                    f"latency_ms={(time.perf_counter() - started) * 1000:.1f}"
                )

            try:
                if key is None:
                    raise ApiError(
                        401,
                        "missing or invalid API key: send the header `Authorization: Bearer <key>`",
                        code="invalid_api_key",
                    )
                response = await handler(request, key)
            except asyncio.CancelledError:  # the client left: a store call under way finishes in its thread
                access(499, 0)
                raise
            except ApiError as error:
                headers = dict(JSON_HEADERS)
                if error.retry_after is not None:
                    headers["Retry-After"] = error.retry_after
                response = web.Response(status=error.status, body=error.body(), headers=headers)
            except Exception as exc:  # a bug: where, never the message (it may quote a line)
                log.error("batch request failed: %s", exception_summary(exc))
                body = error_body("internal error in the gateway", "server_error")
                response = web.Response(status=500, body=body, headers=JSON_HEADERS)
            access(response.status, response.content_length or 0)
            return response

        return serve

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.threads, functools.partial(function, *args))

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """One blocking store call, in a thread; its failures as the client's answer."""
        try:
            return await self._in_thread(function, *args)
        except ObjectMissing:
            raise
        except ByocError as exc:  # ByocFailure too: every store error is one
            raise _store_fault(exc) from None

    async def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            data = await self._call(self.store.read_bytes, key)
        except ObjectMissing:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def _write_json(self, key: str, value: dict[str, Any]) -> None:
        await self._call(self.store.write_bytes, key, json.dumps(value, separators=(",", ":")).encode())

    async def _own_file(self, file_id: str, key: ApiKey, param: str = "file_id") -> dict[str, Any]:
        """The key's own file, unexpired; 404 (as for an unknown id) otherwise."""
        if not FILE_ID.match(file_id):
            raise _not_found("file", param)
        record = await self._read_json(layout.file_object(file_id))
        if record is None or record.get("owner") != key.name or _expired(record):
            raise _not_found("file", param)
        return record

    async def _own_batch(self, batch_id: str, key: ApiKey) -> dict[str, Any]:
        if not BATCH_ID.match(batch_id):
            raise _not_found("batch", "batch_id")
        record = await self._read_json(layout.batch_record(batch_id))
        if record is None or record.get("owner") != key.name:
            raise _not_found("batch", "batch_id")
        return record

    # -- files -----------------------------------------------------------------------------------------------------
    async def create_file(self, request: web.Request, key: ApiKey) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise _bad("file", "send the file as multipart/form-data (fields `file` and `purpose`)")
        # the body's length when the client sends one (the official client does), else the most a file may be
        with self._file_memory(request.content_length or layout.MAX_FILE_BYTES):
            return await self._create_file(request, key)

    async def _create_file(self, request: web.Request, key: ApiKey) -> web.Response:
        reader = await request.multipart()
        content: bytearray | None = None
        filename = "upload.jsonl"
        fields: dict[str, str] = {}
        # each part read as it arrives; the file's bytes land once, in one buffer, and an upload over the limit is
        # refused as soon as it crosses it
        while True:
            part: Any = await _next_part(reader)
            if part is None:
                break
            if part.name == "file":
                filename = part.filename or filename
                content = bytearray()
                while True:
                    chunk = await part.read_chunk(READ_CHUNK)
                    if not chunk:
                        break
                    content.extend(chunk)
                    if len(content) > layout.MAX_FILE_BYTES:
                        raise ApiError(
                            413,
                            f"file: larger than {layout.MAX_FILE_BYTES // (1024 * 1024)} MB, OpenAI's limit for a "
                            "batch input file; split it into several files",
                            param="file",
                            code="file_too_large",
                        )
            elif part.name:
                value = await part.read(decode=True)
                if len(value) > 1024:
                    raise _bad("form", "a form field other than `file` is longer than 1 KiB")
                fields[part.name] = value.decode("utf-8", errors="replace")
        if content is None:
            raise _bad("file", "missing: send the file in the multipart field `file`")
        purpose = fields.get("purpose")
        if purpose is None:
            raise _bad("purpose", 'missing: this gateway takes files with purpose "batch"')
        if purpose != layout.FILE_PURPOSE:
            raise _bad("purpose", 'this gateway takes only purpose "batch" (the Batch API)')
        created_ns = time.time_ns()
        now = created_ns // 1_000_000_000
        seconds = self._expires_seconds(
            fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"), "expires_after"
        )
        file_id = layout.new_file_id()
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": now,
            "created_ns": created_ns,
            "expires_at": now + seconds,
            "filename": filename[:255],
            "purpose": layout.FILE_PURPOSE,
            "status": "processed",
            "owner": key.name,
        }
        # content first: an object.json is written only once its content is there (a failure in between leaves
        # content no listing shows, which the expiry sweep and the bucket's lifecycle rule delete)
        payload: bytes | bytearray = content if _takes_bytearray(self.store) else bytes(content)
        await self._call(self.store.write_bytes, layout.file_content(file_id), payload)
        try:
            await self._write_json(layout.file_object(file_id), record)
        except StoreFault:
            await self._delete_quietly([layout.file_content(file_id)])
            raise
        entry = owner_index.file_entry_key(record)
        try:
            if entry is not None:
                await self._call(owner_index.add, self.store, entry)
        except StoreFault:  # no file the caller was not told of: the record and content go again
            await self._delete_quietly([layout.file_object(file_id), layout.file_content(file_id)])
            raise
        return web.json_response(_file_view(record))

    def _expires_seconds(self, anchor: Any, seconds: Any, param: str) -> int:
        """`expires_after` (anchor `created_at`, seconds 3600..retention) in seconds; the retention if not given."""
        if anchor is None and seconds is None:
            return self.retention_seconds
        if anchor != "created_at":
            raise _bad(f"{param}.anchor", 'must be "created_at"')
        if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit():
            seconds = int(seconds)
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise _bad(f"{param}.seconds", "must be a whole number of seconds")
        if not layout.EXPIRES_MIN_SECONDS <= seconds <= self.retention_seconds:
            raise _bad(
                f"{param}.seconds",
                f"must be from {layout.EXPIRES_MIN_SECONDS} to {self.retention_seconds} (this deployment keeps batch "
                f"files at most {self.retention_seconds // 3600} hours)",
            )
        return seconds

    async def _records(self, folder: str, name: str) -> list[dict[str, Any]]:
        """Every `name` object under `folder` (files/ or batches/), read in parallel: the lists' way before the
        owner index is complete (owner_index.py, "Migration")."""
        listing = await self._call(self.store.list_objects, folder)
        keys = [o.key for o in listing if o.key.endswith(f"/{name}")]
        records = await asyncio.gather(*(self._read_json(k) for k in keys))
        return [r for r in records if r is not None]

    async def _indexed(self) -> bool:
        """Whether every record has its owner-index entry (one HEAD a list until it has; then none)."""
        if not self.indexed:
            self.indexed = bool(await self._call(owner_index.is_complete, self.store))
        return self.indexed

    async def _index_page(
        self,
        entries: Callable[[str | None, int], Awaitable[list[str]]],
        start_after: str | None,
        limit: int,
        keep: Callable[[str], str | None],
        read: Callable[[str], Awaitable[dict[str, Any] | None]],
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` records from the owner index, in its order, and whether more follow. `entries(after, n)`
        lists up to n entry keys after the key `after`; `keep(key)` is the id of an entry the list shows (None: skip
        it by its name: another purpose, expired); `read(id)` its record, or None when it is gone or expired (a
        record deleted or expired since its entry was listed: skipped, and the next entries fill the page, so that
        no page the client's auto-paging follows is empty while more remain)."""
        records: list[dict[str, Any]] = []
        after = start_after
        pending: list[str] = []  # ids listed and kept, not yet read
        exhausted = False
        listed_once = False
        while True:
            while len(pending) < limit - len(records) + 1 and not exhausted:
                # what the page still needs, and one more (has_more); once entries were skipped, whole chunks: the
                # same one request each, and fewer of them when many are skipped
                want = limit - len(records) + 1 - len(pending) if not listed_once else owner_index.LIST_CHUNK
                listed_once = True
                keys = await entries(after, want)
                exhausted = len(keys) < min(want, owner_index.LIST_CHUNK)
                if keys:
                    after = keys[-1]
                pending += [i for i in (keep(k) for k in keys) if i is not None]
            if len(records) >= limit:
                return records, bool(pending)
            batch, pending = pending[: limit - len(records)], pending[limit - len(records) :]
            if not batch:
                return records, False
            found = await asyncio.gather(*(read(i) for i in batch))
            records += [r for r in found if r is not None]

    async def _own_listed_file(self, file_id: str, key: ApiKey, purpose: str | None) -> dict[str, Any] | None:
        record = await self._read_json(layout.file_object(file_id))
        if record is None or record.get("owner") != key.name or _expired(record):
            return None
        return record if purpose is None or record.get("purpose") == purpose else None

    async def list_files(self, request: web.Request, key: ApiKey) -> web.Response:
        query = request.query
        limit = _int_param(query, "limit", FILES_LIST_DEFAULT, 1, FILES_LIST_DEFAULT)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _bad("order", 'must be "asc" or "desc"')
        purpose = query.get("purpose")
        if await self._indexed():
            return web.json_response(await self._list_files_indexed(key, query.get("after"), limit, order, purpose))
        records = [
            r
            for r in await self._records("files", "object.json")
            if r.get("owner") == key.name and not _expired(r) and (purpose is None or r.get("purpose") == purpose)
        ]
        records.sort(key=_creation_order, reverse=order == "desc")
        page, more = _page(records, query.get("after"), limit)
        return web.json_response(_list([_file_view(r) for r in page], more))

    async def _list_files_indexed(
        self, key: ApiKey, after: str | None, limit: int, order: str, purpose: str | None
    ) -> dict[str, Any]:
        """The files list from the key's index: `desc` reads from the `after` file's entry on, one list request per
        page (more only when entries are skipped); `asc` lists the key's whole index (keys only, 1,000 a request:
        S3 and Cloud Storage list in one direction) and reads the page's records. Either way, other keys' files cost
        nothing."""
        folder = layout.owner_files_index(key.name)
        start: str | None = None
        if after is not None:
            # the cursor's place only: a file that expired since the last page still says where the next starts
            cursor = await self._read_json(layout.file_object(after)) if FILE_ID.match(after) else None
            start = owner_index.file_entry_key(cursor) if cursor and cursor.get("owner") == key.name else None
            if start is None:
                raise _bad("after", "not an id in this list (a deleted or expired object, or another list's)")
        now = time.time()

        def keep(entry_key: str) -> str | None:
            entry = owner_index.parse_file_entry(entry_key)
            if entry is None or entry.expires_at <= now or (purpose is not None and entry.purpose != purpose):
                return None
            return entry.file_id

        if order == "desc":

            async def entries(start_after: str | None, count: int) -> list[str]:
                listed: list[str] = await self._call(owner_index.list_after, self.store, folder, start_after, count)
                return listed

        else:
            listed: list[str] = await self._call(owner_index.list_all, self.store, folder)
            # oldest first, from the cursor's place (its entry's name, whether or not the entry is still there)
            everything = listed[: bisect.bisect_left(listed, start) if start is not None else len(listed)][::-1]

            async def entries(start_after: str | None, count: int) -> list[str]:
                offset = everything.index(start_after) + 1 if start_after is not None else 0
                return everything[offset : offset + count]

            start = None  # `everything` starts after the cursor already
        records, more = await self._index_page(
            entries, start, limit, keep, lambda file_id: self._own_listed_file(file_id, key, purpose)
        )
        return _list([_file_view(r) for r in records], more)

    async def retrieve_file(self, request: web.Request, key: ApiKey) -> web.Response:
        return web.json_response(_file_view(await self._own_file(request.match_info["file_id"], key)))

    async def file_content(self, request: web.Request, key: ApiKey) -> web.Response:
        file_id = request.match_info["file_id"]
        record = await self._own_file(file_id, key)
        with self._file_memory(int(record.get("bytes") or 0)):
            try:
                data = await self._call(self.store.read_bytes, layout.file_content(file_id))
            except ObjectMissing:
                raise _not_found("file", "file_id") from None
            return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def delete_file(self, request: web.Request, key: ApiKey) -> web.Response:
        file_id = request.match_info["file_id"]
        record = await self._own_file(file_id, key)
        # the worker reads the input file again whenever it takes a batch up (a restart, a lost lease): deleting it
        # under a batch that has not ended would cost the rest of that batch. OpenAI's API reference documents no
        # such case (openai-python 3.63 src/openai/resources/files.py `delete`: "Delete a file"); refusing is ours.
        for view in await asyncio.gather(*(self._batch_view_of(r) for r in await self._batches_reading(file_id, key))):
            if view["status"] not in layout.TERMINAL:
                raise ApiError(
                    400,
                    f"file_id: the input file of batch {view['id']}, which is {view['status']}; cancel the batch "
                    "first (POST /v1/batches/{batch_id}/cancel) and delete the file once it is cancelled",
                    param="file_id",
                    code="file_in_use",
                )
        # the index entry first: a crash after it leaves a record no list shows, which this DELETE again (or the
        # expiry) removes (owner_index.py). Purge, not delete: the bucket is versioned, and a noncurrent version of
        # the content would stay readable (GetObject with its VersionId) until the lifecycle rule's day had passed
        entry = owner_index.file_entry_key(record)
        if entry is not None:
            await self._call(owner_index.remove, self.store, [entry])
        await self._call(self.store.purge, [layout.file_object(file_id), layout.file_content(file_id)])
        return web.json_response({"id": file_id, "object": "file", "deleted": True})

    async def _batches_reading(self, file_id: str, key: ApiKey) -> list[dict[str, Any]]:
        """The key's batches whose input is `file_id`: their entries say so (the key's batch index, keys only),
        only theirs are read; every batch record before the index is complete."""
        if not await self._indexed():
            return [
                r
                for r in await self._records("batches", "batch.json")
                if r.get("owner") == key.name and r.get("input_file_id") == file_id
            ]
        listed = await self._call(owner_index.list_all, self.store, layout.owner_batches_index(key.name))
        entries = [e for e in map(owner_index.parse_batch_entry, listed) if e is not None]
        found = await asyncio.gather(
            *(self._read_json(layout.batch_record(e.batch_id)) for e in entries if e.input_file_id == file_id)
        )
        return [r for r in found if r is not None and r.get("owner") == key.name]

    async def _delete_quietly(self, keys: list[str]) -> None:
        try:
            await self._in_thread(self.store.purge, keys)
        except ByocError as exc:
            log.error("batch store: could not delete an unfinished upload: %s", exc.message)

    # -- batches ---------------------------------------------------------------------------------------------------
    async def create_batch(self, request: web.Request, key: ApiKey) -> web.Response:
        if (request.content_length or 0) > MAX_JSON_BODY:
            raise ApiError(413, "request body: too large for a batch create", param="body", code="request_too_large")
        body = parse_json(await request.read())
        input_file_id = body.get("input_file_id")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise _bad("input_file_id", "must be the id of a file uploaded with purpose batch")
        endpoint = body.get("endpoint")
        if endpoint not in layout.ENDPOINTS:
            raise _bad("endpoint", f"must be one of {', '.join(layout.ENDPOINTS)} (the endpoints this gateway serves)")
        window = body.get("completion_window")
        if window not in layout.COMPLETION_WINDOWS:
            raise _bad("completion_window", 'must be "24h" (the only window OpenAI offers)')
        metadata = _metadata(body.get("metadata"))
        output_expires = body.get("output_expires_after")
        if output_expires is not None and not isinstance(output_expires, dict):
            raise _bad("output_expires_after", "must be an object {anchor: created_at, seconds: N}")
        output_seconds = self._expires_seconds(
            (output_expires or {}).get("anchor"), (output_expires or {}).get("seconds"), "output_expires_after"
        )
        source = await self._own_file(input_file_id, key, param="input_file_id")
        if source.get("purpose") != layout.FILE_PURPOSE:
            raise _bad("input_file_id", 'the file was not uploaded with purpose "batch"')
        with self._file_memory(int(source.get("bytes") or 0)):
            try:
                data = await self._call(self.store.read_bytes, layout.file_content(input_file_id))
            except ObjectMissing:
                raise _not_found("file", "input_file_id") from None
            # a 200 MB file takes seconds to parse: in a thread, so that online requests keep flowing
            summary = await self._in_thread(check_input_file, data, str(endpoint), self.serves)
            del data
        created_ns = time.time_ns()
        now = created_ns // 1_000_000_000
        batch_id = layout.new_batch_id()
        record = {
            "id": batch_id,
            "owner": key.name,
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": window,
            "metadata": metadata,
            "created_at": now,
            "created_ns": created_ns,
            "expires_at": now + layout.COMPLETION_WINDOW_SECONDS[str(window)],
            "model": summary.model,
            "request_total": summary.requests,
            "output_expires_seconds": output_seconds,
        }
        await self._write_json(layout.batch_record(batch_id), record)  # one PUT: the batch exists whole, or not
        entry = owner_index.batch_entry_key(record)
        try:
            if entry is not None:
                await self._call(owner_index.add, self.store, entry)
        except StoreFault:  # no batch the caller was not told of (a retry would run the file twice)
            await self._delete_quietly([layout.batch_record(batch_id)])
            raise
        return web.json_response(_batch_view(record, None, None))

    async def _batch_view_of(self, record: dict[str, Any]) -> dict[str, Any]:
        batch_id = str(record["id"])
        state, cancel = await asyncio.gather(
            self._read_json(layout.batch_state(batch_id)), self._read_json(layout.batch_cancel(batch_id))
        )
        return _batch_view(record, state, cancel)

    async def retrieve_batch(self, request: web.Request, key: ApiKey) -> web.Response:
        record = await self._own_batch(request.match_info["batch_id"], key)
        return web.json_response(await self._batch_view_of(record))

    async def list_batches(self, request: web.Request, key: ApiKey) -> web.Response:
        query = request.query
        limit = _int_param(query, "limit", BATCHES_LIST_DEFAULT, 1, BATCHES_LIST_MAX)
        after = query.get("after")
        if await self._indexed():
            page, more = await self._list_batches_indexed(key, after, limit)
        else:
            records = [r for r in await self._records("batches", "batch.json") if r.get("owner") == key.name]
            records.sort(key=_creation_order, reverse=True)
            page, more = _page(records, after, limit)
        views = await asyncio.gather(*(self._batch_view_of(r) for r in page))
        return web.json_response(_list(list(views), more))

    async def _list_batches_indexed(
        self, key: ApiKey, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """The batches list from the key's index, newest first, from the `after` batch's entry on."""
        start: str | None = None
        if after is not None:
            cursor = await self._read_json(layout.batch_record(after)) if BATCH_ID.match(after) else None
            start = owner_index.batch_entry_key(cursor) if cursor and cursor.get("owner") == key.name else None
            if start is None:
                raise _bad("after", "not an id in this list (a deleted object, or another list's)")
        folder = layout.owner_batches_index(key.name)

        async def entries(start_after: str | None, count: int) -> list[str]:
            listed: list[str] = await self._call(owner_index.list_after, self.store, folder, start_after, count)
            return listed

        def keep(entry_key: str) -> str | None:
            entry = owner_index.parse_batch_entry(entry_key)
            return entry.batch_id if entry is not None else None

        async def read(batch_id: str) -> dict[str, Any] | None:
            record = await self._read_json(layout.batch_record(batch_id))
            return record if record is not None and record.get("owner") == key.name else None

        return await self._index_page(entries, start, limit, keep, read)

    async def cancel_batch(self, request: web.Request, key: ApiKey) -> web.Response:
        record = await self._own_batch(request.match_info["batch_id"], key)
        view = await self._batch_view_of(record)
        if view["status"] in layout.TERMINAL:
            raise ApiError(
                400,
                f"batch_id: the batch is {view['status']} and cannot be cancelled",
                param="batch_id",
                code="batch_not_cancellable",
            )
        if view["status"] == layout.CANCELLING:
            return web.json_response(view)  # asked before: the first request's time stands
        now = int(time.time())
        await self._write_json(layout.batch_cancel(str(record["id"])), {"cancelling_at": now})
        state = await self._read_json(layout.batch_state(str(record["id"])))
        return web.json_response(_batch_view(record, state, {"cancelling_at": now}))


# -- shapes ----------------------------------------------------------------------------------------------------------
FILE_FIELDS = ("id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status")


def _creation_order(record: dict[str, Any]) -> tuple[int, int, str]:
    """Oldest first: created_at is whole seconds (OpenAI's), so `created_ns` (the gateway's, kept in the record)
    orders objects created in the same second; the id breaks what ties remain (objects the worker wrote)."""
    return int(record.get("created_at") or 0), int(record.get("created_ns") or 0), str(record.get("id"))


def _expired(record: dict[str, Any]) -> bool:
    expires = record.get("expires_at")
    return isinstance(expires, int) and expires <= time.time()


def _file_view(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's FileObject (openai-python src/openai/types/file_object.py): the record without its owner."""
    return {name: record.get(name) for name in FILE_FIELDS}


def _batch_view(record: dict[str, Any], state: dict[str, Any] | None, cancel: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI's Batch (openai-python src/openai/types/batch.py) from batch.json, the worker's state.json and the
    cancel marker: `validating` until the worker writes a state; `cancelling` while a cancel waits on a batch that
    has not ended; `expired` (expired_at = expires_at) once the completion window has passed on a batch the worker
    has not ended (none runs, or it has not looked yet: when it does, it writes the real end state, which then
    shows)."""
    state = state or {}
    status = str(state.get("status") or layout.VALIDATING)
    times = {name: state.get(name) for name in layout.STATE_TIMES}
    expires_at = record.get("expires_at")
    if status not in layout.TERMINAL and isinstance(expires_at, int) and expires_at < time.time():
        status = layout.EXPIRED
        times["expired_at"] = expires_at
    if cancel is not None and status not in layout.TERMINAL:
        if status != layout.CANCELLING:
            status = layout.CANCELLING
        times["cancelling_at"] = times["cancelling_at"] or cancel.get("cancelling_at")
    counts = state.get("request_counts")
    if not isinstance(counts, dict):
        counts = {"total": int(record.get("request_total") or 0), "completed": 0, "failed": 0}
    errors = state.get("errors")
    usage = state.get("usage")  # BatchUsage (openai-python types/batch_usage.py), if the worker counted it
    return {
        "id": record["id"],
        "object": "batch",
        "endpoint": record.get("endpoint"),
        "model": record.get("model"),
        "errors": errors if isinstance(errors, dict) else None,
        "input_file_id": record.get("input_file_id"),
        "completion_window": record.get("completion_window"),
        "status": status,
        "output_file_id": state.get("output_file_id"),
        "error_file_id": state.get("error_file_id"),
        "created_at": record.get("created_at"),
        "expires_at": record.get("expires_at"),
        **times,
        "request_counts": {
            "total": int(counts.get("total") or 0),
            "completed": int(counts.get("completed") or 0),
            "failed": int(counts.get("failed") or 0),
        },
        "metadata": record.get("metadata"),
        "usage": usage if isinstance(usage, dict) else None,
    }


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's metadata: at most 16 pairs, string keys of at most 64 characters, string values of at most 512."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("metadata", "must be an object of strings")
    if len(value) > layout.METADATA_MAX_PAIRS:
        raise _bad("metadata", f"at most {layout.METADATA_MAX_PAIRS} pairs")
    for name, item in value.items():
        if len(name) > layout.METADATA_MAX_KEY:
            raise _bad("metadata", f"keys are at most {layout.METADATA_MAX_KEY} characters")
        if not isinstance(item, str) or len(item) > layout.METADATA_MAX_VALUE:
            raise _bad("metadata", f"values are strings of at most {layout.METADATA_MAX_VALUE} characters")
    return dict(value)


def _start(records: list[dict[str, Any]], after: str | None) -> int:
    """Where the page after the id `after` starts (0 without one); 400 for an id not in the list."""
    if after is None:
        return 0
    for index, record in enumerate(records):
        if record.get("id") == after:
            return index + 1
    raise _bad("after", "not an id in this list (a deleted or expired object, or another list's)")


def _page(records: list[dict[str, Any]], after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The page of `limit` records after the id `after`, and whether more follow it."""
    start = _start(records, after)
    return records[start : start + limit], start + limit < len(records)


def _list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list envelope (the client's CursorPage pages with `has_more` and the last item's id)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _takes_bytearray(store: Store) -> bool:
    """boto3 and a local file take the upload's buffer as it is; google-cloud-storage's upload_from_string wants
    bytes (a second copy of the file while it is written)."""
    from runtime.model_build.stores import FileStore, S3Store

    return isinstance(store, FileStore | S3Store)


def open_batch_store(uri: str, kms_key: str | None) -> Store:
    """The batch root (--batch-store) opened with its key (--batch-kms-key). Raises ByocError naming the flag."""
    from runtime.model_build.stores import open_store

    return open_store(uri, FIELD, kms_key, timeout_s=layout.STORE_TIMEOUT_S)
