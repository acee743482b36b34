"""The gateway's streamed answer: a StreamResponse that sends fewer, fuller packets.

A plain aiohttp StreamResponse sends its headers alone at `prepare()`, each event batch in its own send, and the
end of the chunked body (`0\\r\\n\\r\\n`) in one more: a stream relayed in N reads costs N + 2 sends. Each send is a
syscall and a packet for the client to wake up for, and on short answers they were a fifth of the gateway's CPU per
streamed request. Here:

- the headers leave with the first events when these are already here (the relay writes them before it yields to
  the event loop), else alone on the loop's next turn, as before: a client or load balancer still sees the 200
  at once while a long prompt is prefilled;
- the last batch (the one the relay knows ends the stream, `[DONE]` included) leaves with the end of the body, in
  the same send: the relay passes it to `write_eof`.

So a stream relayed in N reads costs N sends, N + 1 when its first events are not there yet at `prepare()`. What
is sent, and when each event leaves, is otherwise unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter


class SseResponse(web.StreamResponse):
    # aiohttp >= 3.11 buffers the headers and sends them with the first body bytes when this is False (web.Response
    # does the same); older versions ignore it and send them at once, as before
    _send_headers_immediately = False

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(status=status, headers=headers)
        self._header_send: asyncio.Handle | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        # call_soon, not a timer: a handle on the ready queue costs a fraction of a timer armed and cancelled
        self._header_send = asyncio.get_running_loop().call_soon(self._send_headers)
        return writer

    def _send_headers(self) -> None:
        self._header_send = None
        send = getattr(self._payload_writer, "send_headers", None)
        if send is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):  # the client may have left meanwhile
                send()

    def _cancel_header_send(self) -> None:
        if self._header_send is not None:
            self._header_send.cancel()
            self._header_send = None

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._cancel_header_send()
        await super().write(data)

    async def write_eof(self, data: bytes = b"") -> None:
        self._cancel_header_send()
        await super().write_eof(data)
