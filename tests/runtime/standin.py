"""A stand-in engine on 127.0.0.1: a small aiohttp server that speaks trtllm-serve's routes the way other engines
answer them (vLLM and SGLang refuse with 429/503 when full; older TensorRT-LLM sends usage on every chunk), for the
gateway tests that the CPU engine, which follows TensorRT-LLM 1.3.0rc19, cannot show.

Chunks are written as pydantic dumps them in trtllm-serve (compact JSON), with the words ANSWER in order. A request
whose `user` is `hold:SECONDS` is answered that much later (a request that holds a slot, for the limits tests).

Sharing, for the batch limit's tests: a request whose `user` is `batch` (a batch line) takes `batch_seconds`, and
every other streamed request's first chunk waits `contention` seconds for each batch line in flight, as a
compute-bound engine's first token waits for decode steps shared with batch sequences. Both may be changed while it
runs (the engine gets slower or faster under a test). `chunk_gap`: seconds between the chunks of a streamed answer
after its first one (an answer that keeps decoding after its first token).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Literal

from aiohttp import web

ANSWER = [" one", " two", " three", " four", " five"]
PROMPT_TOKENS = 11
# "honour": usage as stream_options ask (trtllm-serve 1.3.0rc19); "every": cumulative usage on every chunk plus a
# final usage chunk whatever was asked (TensorRT-LLM before PR #10644 with include_usage); "none": never any usage;
# "last_content": the total on the last content chunk, no usage-only chunk (some vLLM/SGLang-style engines);
# "twice": two usage-only chunks at the end, the running total then the total
UsageMode = Literal["honour", "every", "none", "last_content", "twice"]
# "stream": the usage chunk of a completion stream carries the stream's id and object (TensorRT-LLM 1.3.0rc19's
# newest source); "chat_fresh_id": a chat chunk with an id of its own, as `completion_stream_post_processor` built it
# before TensorRT-LLM PRs #12758 and #14708
UsageChunk = Literal["stream", "chat_fresh_id"]


def _dump(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class StandInEngine:
    """One replica. `status` other than 200 refuses every completion (with `Retry-After` if given)."""

    def __init__(
        self,
        model: str = "standin-model",
        status: int = 200,
        retry_after: str | None = None,
        usage: UsageMode = "honour",
        delay: float = 0.0,
        refusal: dict[str, Any] | None = None,
        usage_chunk: UsageChunk = "stream",
        batch_seconds: float = 0.0,
        contention: float = 0.0,
        chunk_gap: float = 0.0,
    ) -> None:
        self.batch_seconds, self.contention, self.chunk_gap = batch_seconds, contention, chunk_gap
        self.batch_in_flight = 0
        self.model, self.status, self.retry_after, self.usage, self.delay = model, status, retry_after, usage, delay
        self.refusal = refusal  # the body of a refusal (status other than 200), instead of vLLM's
        self.usage_chunk = usage_chunk
        self.requests: list[dict[str, Any]] = []  # the bodies received, in order
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standin", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.port: int = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    def _refusal(self) -> web.Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        kind = "RateLimitError" if self.status == 429 else "ServiceUnavailableError"
        # vLLM's shape; the message quotes nothing here, but the gateway must not pass it on anyway
        body = {"error": {"message": "the engine is full", "type": kind, "param": None, "code": self.status}}
        return web.json_response(self.refusal or body, status=self.status, headers=headers)

    async def _share(self, batch: bool, stream: bool) -> None:
        """A batch line's time, or an online first token's wait for the batch lines in flight."""
        if batch:
            self.batch_in_flight += 1
            try:
                await asyncio.sleep(self.batch_seconds)
            finally:
                self.batch_in_flight -= 1
        elif stream and self.contention:
            await asyncio.sleep(self.contention * self.batch_in_flight)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.status != 200:
            return self._refusal()
        if self.delay:
            await asyncio.sleep(self.delay)
        user = body.get("user")
        if isinstance(user, str) and user.startswith("hold:"):
            await asyncio.sleep(float(user.removeprefix("hold:")))
        await self._share(user == "batch", bool(body.get("stream")))
        total = len(ANSWER)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": total, "total_tokens": PROMPT_TOKENS + total}
        meta = {"id": "chatcmpl-standin" if chat else "cmpl-standin", "created": int(time.time()), "model": self.model}
        if not body.get("stream"):
            if chat:
                message = {"role": "assistant", "content": "".join(ANSWER)}
                choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "length"}
            else:
                choice = {"index": 0, "text": "".join(ANSWER), "finish_reason": "length"}
            kind = "chat.completion" if chat else "text_completion"
            return web.json_response({**meta, "object": kind, "choices": [choice], "usage": usage})
        options = body.get("stream_options") or {}
        asked = bool(options.get("include_usage"))
        include = self.usage == "every" or (self.usage in ("honour", "twice") and asked)
        continuous = self.usage == "every" or (include and bool(options.get("continuous_usage_stats")))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        meta["object"] = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any], generated: int) -> bytes:
            data = {**meta, "choices": [choice]}
            if continuous or (self.usage == "last_content" and asked and generated == total):
                data["usage"] = {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": generated,
                    "total_tokens": PROMPT_TOKENS + generated,
                }
            return _dump(data)

        if chat:
            await response.write(chunk({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}, 0))
        for i, word in enumerate(ANSWER, 1):
            if i > 1 and self.chunk_gap:
                await asyncio.sleep(self.chunk_gap)
            reason = "length" if i == total else None
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            await response.write(chunk({**choice, "finish_reason": reason}, i))
        if include and self.usage == "twice":
            running = {**usage, "completion_tokens": total - 1, "total_tokens": PROMPT_TOKENS + total - 1}
            await response.write(_dump({**meta, "choices": [], "usage": running}))
        if include:
            last = {**meta, "choices": [], "usage": usage}
            if not chat and self.usage_chunk == "chat_fresh_id":
                last.update(id="chatcmpl-fresh", object="chat.completion.chunk")
            await response.write(_dump(last))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
