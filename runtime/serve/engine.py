"""The CPU reference engine: trtllm-serve's HTTP API over a real Hugging Face model, for development and tests.

Endpoints as trtllm-serve has them: /v1/models, /v1/completions, /v1/chat/completions (streaming too), /health,
/version, /metrics (JSON iteration stats, including kvCacheStats) and /prometheus/metrics (`trtllm_` metrics).
LoRA addons are chosen per request by trtllm's `lora_request` or by naming the addon as `model`.
Errors use trtllm-serve's shape: {"object": "error", "message", "type", "param", "code"}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime.serve.config import Address
from runtime.serve.generation import BASE_ADAPTER, Delta, Failed, Finished, Generator, Sampling, Sequence

log = logging.getLogger("byoc.engine")
VERSION = "byoc-cpu-engine 0.1"


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def _error(error: BadRequest) -> web.Response:
    kind = "NotFoundError" if error.status == 404 else "BadRequestError"
    body = {"object": "error", "message": error.message, "type": kind, "param": error.param, "code": error.status}
    return web.json_response(body, status=error.status)


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer", name)
    return value


class Engine:
    def __init__(self, generator: Generator, model_name: str, max_context: int) -> None:
        self.generator = generator
        self.model_name = model_name
        self.max_context = max_context
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.iteration_stats)
        app.router.add_get("/prometheus/metrics", self.prometheus)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def models(self, request: web.Request) -> web.Response:
        data: list[dict[str, Any]] = [
            {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "tensorrt_llm"}
        ]
        for name, folder in self.generator.addons.items():
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "tensorrt_llm",
                    "parent": self.model_name,
                    "root": str(folder),
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def iteration_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.generator.drain_stats())

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.generator.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # -- requests --------------------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    def _adapter(self, body: dict[str, Any]) -> str:
        lora = body.get("lora_request")
        if lora is not None:
            if not isinstance(lora, dict):
                raise BadRequest(
                    "lora_request must be an object with lora_name, lora_int_id, lora_path", "lora_request"
                )
            name, path = lora.get("lora_name"), lora.get("lora_path")
            if name in self.generator.addons:
                return str(name)
            for addon, folder in self.generator.addons.items():
                if isinstance(path, str) and path and (Path(path) == folder or Path(path).name == addon):
                    return addon
            raise BadRequest("lora_request names an adapter this engine has not loaded", "lora_request")
        model = body.get("model")
        if model in self.generator.addons:
            return str(model)
        if model is not None and model != self.model_name:
            raise BadRequest("model is not served here; GET /v1/models lists the models", "model", status=404)
        return BASE_ADAPTER

    def _prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        tokenizer = self.generator.tokenizer
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list", "messages")
            flat = []
            for message in messages:
                if not isinstance(message, dict):
                    raise BadRequest("every message must be an object", "messages")
                content = message.get("content")
                if isinstance(content, list):
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                flat.append({"role": str(message.get("role", "user")), "content": content or ""})
            text = tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return list(tokenizer(prompt)["input_ids"])
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [int(t) for t in prompt]
        raise BadRequest("prompt must be a string or a list of token ids", "prompt")

    def _sampling(self, body: dict[str, Any], prompt_tokens: int) -> Sampling:
        room = self.max_context - prompt_tokens
        if room < 1:
            raise BadRequest(
                f"the prompt has {prompt_tokens} tokens: no room left in the context window of {self.max_context}",
                "messages" if "messages" in body else "prompt",
            )
        max_tokens = _integer(body, "max_completion_tokens", None) or _integer(body, "max_tokens", None)
        if max_tokens is None:
            max_tokens = room
        if max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", "max_tokens")
        if prompt_tokens + max_tokens > self.max_context:
            raise BadRequest(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the context window of "
                f"{self.max_context} tokens",
                "max_tokens",
            )
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        if (_integer(body, "n", 1) or 1) != 1:
            raise BadRequest("n must be 1", "n")
        return Sampling(
            max_tokens=max_tokens,
            temperature=_number(body, "temperature", 1.0),
            top_p=_number(body, "top_p", 1.0),
            top_k=max(0, _integer(body, "top_k", 0) or 0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0),
            presence_penalty=_number(body, "presence_penalty", 0.0),
            repetition_penalty=_number(body, "repetition_penalty", 1.0),
            seed=_integer(body, "seed", None),
            stop=stop,
            ignore_eos=bool(body.get("ignore_eos", False)),
            min_tokens=_integer(body, "min_tokens", 0) or 0,
        )

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            adapter = self._adapter(body)
            prompt = await asyncio.to_thread(self._prompt_ids, body, chat)
            sampling = self._sampling(body, len(prompt))
        except BadRequest as error:
            return _error(error)
        except ValueError:
            return _error(BadRequest("the body is not valid JSON"))
        loop = asyncio.get_running_loop()
        sequence = Sequence(prompt, sampling, adapter, loop, asyncio.Queue())
        self.generator.submit(sequence)
        prefix = "chatcmpl" if chat else "cmpl"
        meta = {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model_name),
        }
        echo = (
            self.generator.tokenizer.decode(prompt, skip_special_tokens=True) if not chat and body.get("echo") else ""
        )
        try:
            if body.get("stream"):
                options = body.get("stream_options") or {}
                usage = isinstance(options, dict) and bool(options.get("include_usage"))
                return await self._stream(request, sequence, meta, chat, usage, echo)
            return await self._whole(sequence, meta, chat, echo)
        finally:
            sequence.cancelled = True  # a no-op once finished; stops generation if the client went away

    async def _whole(self, sequence: Sequence, meta: dict[str, Any], chat: bool, echo: str) -> web.Response:
        parts = [echo]
        while True:
            event = await sequence.events.get()
            if isinstance(event, Failed):
                body = {"object": "error", "message": event.message, "type": "InternalServerError", "code": 500}
                return web.json_response(body, status=500)
            parts.append(event.text)
            if isinstance(event, Finished):
                break
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": event.reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = _usage(event)
        return web.json_response({**meta, "choices": [choice], "usage": usage})

    async def _stream(
        self,
        request: web.Request,
        sequence: Sequence,
        meta: dict[str, Any],
        chat: bool,
        include_usage: bool,
        echo: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_meta = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(text: str | None, reason: str | None, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
                if not first and text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            return b"data: " + json.dumps({**chunk_meta, "choices": [choice]}).encode() + b"\n\n"

        first = True
        try:
            while True:
                event = await sequence.events.get()
                if isinstance(event, Failed):
                    error = {"error": {"message": event.message, "type": "InternalServerError", "code": 500}}
                    await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                    break
                if first:
                    # the role chunk goes out with the first token, so it marks the time to first token
                    if chat:
                        await response.write(chunk(echo, None, first=True))
                    elif echo:
                        await response.write(chunk(echo, None))
                    first = False
                if isinstance(event, Delta):
                    await response.write(chunk(event.text, None))
                    continue
                await response.write(chunk(event.text if event.text else None, event.reason))
                if include_usage:
                    usage = {**chunk_meta, "choices": [], "usage": _usage(event)}
                    await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
                break
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left; the finally in _generate stops the generation
        return response


def _usage(event: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.prompt_tokens + event.completion_tokens,
    }


async def serve(generator: Generator, model_name: str, listen: Address) -> None:
    engine = Engine(generator, model_name, generator.max_context)
    runner = web.AppRunner(engine.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, listen.host, listen.port).start()
    log.info(
        "engine listening on %s: model %s, addons %s, context %d tokens",
        listen,
        model_name,
        ", ".join(generator.addons) or "none",
        generator.max_context,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    generator.stop()
