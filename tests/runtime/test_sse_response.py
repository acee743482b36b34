"""The gateway's streamed response on a real aiohttp server on 127.0.0.1: the 200 and its headers reach the client
promptly even while the engine has produced nothing yet, and every event arrives, in order, to the end."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from runtime.serve.sse import SseResponse

EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]


def test_headers_arrive_before_a_slow_first_event_and_every_event_arrives() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        out = SseResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await asyncio.sleep(0.8)  # a long prefill
        for event in EVENTS:
            await out.write(event)
        await out.write_eof()
        return out

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    headers_after = time.perf_counter() - started
                    body = await response.read()
                    assert response.status == 200
                    assert response.headers["Content-Type"] == "text/event-stream"
                    assert headers_after < 0.5, f"the headers waited {headers_after:.2f}s for the first event"
                    assert body == b"".join(EVENTS)
        finally:
            await runner.cleanup()

    asyncio.run(main())
