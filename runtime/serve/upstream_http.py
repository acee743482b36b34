"""The gateway's HTTP/1.1 client for the upstream hop: one POST per request, kept-alive connections, nothing else.

aiohttp's client was a quarter of the gateway's CPU per proxied request in py-spy profiles (request and URL objects,
header merging, a task to write the body, cookie and trace hooks, a timer per read), most of it for features this
hop never uses: it only ever POSTs a JSON body to a replica it addresses as `http://host:port`. This client writes
the request in one send, parses the answer's head and body framing (Content-Length, chunked, or until close) as
bytes arrive, and keeps each connection for the next request once its answer has been read to the end.

It keeps the slice of aiohttp's interface the gateway uses, so the gateway's handling is unchanged: `status`,
`headers` (case-insensitive), `read()`, `content.iter_any()` (whatever has arrived, in one piece), `release()` (the
answer was read: keep the connection) and `close()` (drop it, which stops the engine's work), and it raises aiohttp's
exception types: `ClientConnectionError` when a replica cannot be reached or hangs up before answering,
`ServerTimeoutError` (a TimeoutError) when it connects or answers too slowly, `ClientPayloadError` when a body is
cut short.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD_BYTES = 64 * 1024  # as aiohttp's default line and field limits allow, roughly: an engine's head is ~200 B
# After an answer ends with `data: [DONE]` the chunked terminator can still be on its way: wait this long for it
# before giving up on reusing the connection.
TAIL_WAIT_SECONDS = 1.0

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(5)


class _Connection(asyncio.Protocol):
    """One TCP connection to a replica; parses one answer at a time."""

    def __init__(self, client: UpstreamClient, key: tuple[str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = True
        self.received = False  # any byte of an answer arrived since this connection was last taken from the pool
        self.state = _DONE
        self.buffer = b""
        self.body = bytearray()  # decoded body bytes not yet handed to the reader
        self.remaining = 0  # bytes left of the body (_LENGTH) or of the current chunk (_CHUNKED)
        self.head: tuple[int, CIMultiDict[str]] | None = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wait_deadline = 0.0
        self.read_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.tail_timer: asyncio.TimerHandle | None = None  # released before its body ended: reuse once it does

    # -- asyncio.Protocol --------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buffer = self.buffer + data if self.buffer else data
        try:
            self._parse()
        except ValueError:
            self.error = aiohttp.ClientPayloadError("the replica's answer is not valid HTTP/1.1")
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        self.client._open.discard(self)
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE  # a body without a length ends with the connection
        elif self.state == _HEAD:
            self.error = aiohttp.ServerDisconnectedError("the replica closed the connection before answering")
        elif self.state != _DONE:
            self.error = aiohttp.ClientPayloadError("the replica closed the connection in the middle of the answer")
        for timer in (self.tail_timer, self.read_timer):
            if timer is not None:
                timer.cancel()
        self.tail_timer = self.read_timer = None
        self._wake()

    # -- parsing -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Expect a new answer (the request has just been written)."""
        self.state = _HEAD
        self.head = None
        self.error = None
        self.body.clear()

    def _parse(self) -> None:
        while self.buffer:
            if self.state == _HEAD:
                end = self.buffer.find(b"\r\n\r\n")
                if end == -1:
                    if len(self.buffer) > MAX_HEAD_BYTES:
                        raise ValueError("head too large")
                    return
                head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
                if not self._start_body(head):
                    continue  # an interim 1xx answer: the real one follows
            elif self.state == _LENGTH:
                take = self.buffer[: self.remaining]
                self.buffer = self.buffer[len(take) :]
                self.body += take
                self.remaining -= len(take)
                if self.remaining == 0:
                    self._message_done()
            elif self.state == _CHUNKED:
                if not self._parse_chunk():
                    return
            elif self.state == _UNTIL_CLOSE:
                self.body += self.buffer
                self.buffer = b""
            else:  # bytes after the end of an answer: nothing was asked for them
                self.reusable = False
                self.buffer = b""

    def _start_body(self, head: bytes) -> bool:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError("not HTTP/1.x")
        status = int(rest[:3])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            headers.add(name.strip(), value.strip())
        if 100 <= status < 200:
            return False
        self.head = (status, headers)
        if version == "HTTP/1.0" or "close" in headers.get("Connection", "").lower():
            self.reusable = False
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self.state, self.remaining = _CHUNKED, -1
        elif "Content-Length" in headers:
            self.remaining = int(headers["Content-Length"])
            if self.remaining < 0:
                raise ValueError("negative Content-Length")
            self.state = _LENGTH
            if self.remaining == 0:
                self._message_done()
        elif status in (204, 304):
            self._message_done()
        else:
            self.state = _UNTIL_CLOSE
            self.reusable = False
        return True

    def _parse_chunk(self) -> bool:
        """Consume what it can of a chunked body; False when it needs more bytes.

        `remaining`: -1 at a chunk-size line, -2 at the CRLF after a chunk's data, else the chunk's bytes left.
        """
        if self.remaining == -1:
            end = self.buffer.find(b"\r\n")
            if end == -1:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise ValueError("chunk size line too long")
                return False
            size = int(self.buffer[:end].split(b";", 1)[0], 16)
            if size == 0:
                # the last chunk: optional trailers, then an empty line
                if self.buffer.startswith(b"\r\n", end + 2):
                    self.buffer = self.buffer[end + 4 :]
                else:
                    trailer_end = self.buffer.find(b"\r\n\r\n", end + 2)
                    if trailer_end == -1:
                        return False
                    self.buffer = self.buffer[trailer_end + 4 :]
                self._message_done()
                return True
            if size < 0:
                raise ValueError("negative chunk size")
            self.buffer = self.buffer[end + 2 :]
            self.remaining = size
        if self.remaining > 0:
            take = self.buffer[: self.remaining]
            self.buffer = self.buffer[len(take) :]
            self.body += take
            self.remaining -= len(take)
            if self.remaining:
                return False
            self.remaining = -2
        if len(self.buffer) < 2:
            return False
        if not self.buffer.startswith(b"\r\n"):
            raise ValueError("chunk not followed by CRLF")
        self.buffer = self.buffer[2:]
        self.remaining = -1
        return True

    def _message_done(self) -> None:
        self.state = _DONE
        if self.tail_timer is not None:  # released early: the rest has arrived, so the connection can be reused
            self.tail_timer.cancel()
            self.tail_timer = None
            self.body.clear()
            self.client._put_back(self)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until more bytes, the end of the answer, or an error; at most `timeout` seconds."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        if timeout is not None:
            # one timer per connection, moved on only when it fires, instead of one armed and cancelled per wait
            self.wait_deadline = loop.time() + timeout
            if self.read_timer is None:
                self.read_timer = loop.call_at(self.wait_deadline, self._check_read_timeout, loop)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _check_read_timeout(self, loop: asyncio.AbstractEventLoop) -> None:
        self.read_timer = None
        if self.waiter is None or self.waiter.done():
            return  # not waiting now: the next wait arms it again
        if loop.time() >= self.wait_deadline:
            self.waiter.set_exception(aiohttp.ServerTimeoutError("the replica sent nothing within the read timeout"))
        else:
            self.read_timer = loop.call_at(self.wait_deadline, self._check_read_timeout, loop)

    def close(self) -> None:
        self.reusable = False
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None
        if self.tail_timer is not None:
            self.tail_timer.cancel()
            self.tail_timer = None
        if self.transport is not None:
            self.transport.close()


class _Body:
    """The answer's body as it arrives (aiohttp's `response.content`, the part the gateway uses)."""

    def __init__(self, connection: _Connection, read_timeout: float | None) -> None:
        self._connection = connection
        self._read_timeout = read_timeout

    async def readany(self) -> bytes:
        """Whatever body bytes have arrived (waiting for some), b"" at the end."""
        connection = self._connection
        while not connection.body:
            if connection.error is not None:
                raise connection.error
            if connection.state == _DONE:
                return b""
            await connection.wait(self._read_timeout)
        data = bytes(connection.body)
        connection.body.clear()
        return data

    def iter_any(self) -> _Chunks:
        return _Chunks(self)


class _Chunks:
    """`async for data in body.iter_any()`: an iterator object rather than an async generator, because a generator
    left at `data: [DONE]` (the gateway stops reading there) is closed by the event loop in a task of its own."""

    def __init__(self, body: _Body) -> None:
        self._body = body

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        data = await self._body.readany()
        if not data:
            raise StopAsyncIteration
        return data


class UpstreamResponse:
    def __init__(
        self, connection: _Connection, status: int, headers: CIMultiDict[str], read_timeout: float | None
    ) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self.content = _Body(connection, read_timeout)
        self._connection: _Connection | None = connection

    async def read(self) -> bytes:
        chunks = []
        while data := await self.content.readany():
            chunks.append(data)
        return b"".join(chunks)

    def release(self) -> None:
        """The answer has been used: keep the connection for the next request if the answer has ended (or ends
        soon: a stream's chunked terminator can trail its last event)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.state == _DONE:
            connection.client._put_back(connection)
        elif connection.reusable and not connection.lost and connection.state != _UNTIL_CLOSE:
            loop = asyncio.get_running_loop()
            connection.tail_timer = loop.call_later(TAIL_WAIT_SECONDS, connection.close)
        else:
            connection.close()

    def close(self) -> None:
        """Drop the connection: the engine sees the client leave and stops generating."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class UpstreamClient:
    """POSTs to replicas over kept-alive connections (per host and port, most recently used first)."""

    def __init__(self, connect_timeout: float, read_timeout: float | None, keepalive_seconds: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_seconds = keepalive_seconds
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes]] = {}
        self._open: set[_Connection] = set()
        self._closed = False

    def _target(self, url: str) -> tuple[tuple[str, int], bytes]:
        """(host, port) and the request line plus Host header for `url`, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise aiohttp.InvalidURL(url)
            port = parts.port or 80
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            start = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode("latin-1")
            found = self._targets[url] = ((parts.hostname, port), start)
        return found

    async def _connection(self, key: tuple[str, int]) -> tuple[_Connection, bool]:
        """A kept-alive connection to `key` (True) or a new one (False)."""
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.lost or not connection.reusable:
                    continue
                if now - connection.idle_since > self.keepalive_seconds:
                    connection.close()
                    continue
                connection.received = False
                return connection, True
        loop = asyncio.get_running_loop()
        connection = _Connection(self, key)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: connection, key[0], key[1])
        except TimeoutError:
            connection.close()
            raise aiohttp.ServerTimeoutError(f"connecting to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise aiohttp.ClientConnectionError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror}") from None
        self._open.add(connection)
        return connection, False

    def _put_back(self, connection: _Connection) -> None:
        if self._closed or connection.lost or not connection.reusable or connection.buffer:
            connection.close()
            self._open.discard(connection)
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, deque()).append(connection)

    async def post(self, url: str, data: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send the request and wait for the answer's head; the body is read through the response."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream client is closed")
        key, start = self._target(url)
        head = [start]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Content-Length: %d\r\n\r\n" % len(data))
        head.append(data)
        request = b"".join(head)
        while True:
            connection, reused = await self._connection(key)
            try:
                assert connection.transport is not None
                connection.start()
                connection.transport.write(request)
                while connection.head is None:
                    if connection.error is not None:
                        raise connection.error
                    await connection.wait(self.read_timeout)
            except aiohttp.ClientConnectionError:
                connection.close()
                if reused and not connection.received:
                    # a kept-alive connection the replica closed as we sent (its idle timeout): nothing of the
                    # request was answered, so it goes again on a new connection, as urllib3 does; not a replica fault
                    continue
                raise
            except BaseException:
                # cancelled (the client left), timed out or cut: this connection's answer is not coming back in order
                connection.close()
                raise
            status, response_headers = connection.head
            return UpstreamResponse(connection, status, response_headers, self.read_timeout)

    async def close(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
