"""The CPU reference engine: trtllm-serve's HTTP API over a real Hugging Face model, for development and tests.

Endpoints as trtllm-serve has them: /v1/models, /v1/completions, /v1/chat/completions (streaming too), /health,
/version, /metrics (JSON iteration stats, including kvCacheStats) and /prometheus/metrics (`trtllm_` metrics).
LoRA addons are chosen per request by trtllm's `lora_request` or by naming the addon as `model`.
Errors use trtllm-serve's shapes: {"error": "<FastAPI's validation text>"} for a body its request models would refuse,
{"object": "error", "message", "type", "param", "code"} for the rest; a streamed answer that fails breaks off, as
trtllm-serve's does (docs/gateway.md, "The engine contract").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from byoc.errors import ByocError
from runtime.serve.addons import routes as addon_routes
from runtime.serve.config import Address, lora_int_id
from runtime.serve.generation import BASE_ADAPTER, Delta, Failed, Finished, Generator, Sampling, Sequence
from runtime.serve.openai_api import ApiError, HandlerCheck, bad, check_request, parse_json
from runtime.serve.structured import SchemaError, Structure, tool_call

log = logging.getLogger("byoc.engine")
VERSION = "byoc-cpu-engine 0.1"
# Message fields the chat template sees besides role and content (tool calls and their results).
TEMPLATE_FIELDS = ("name", "tool_calls", "tool_call_id")
# Parameters this engine cannot honour: refused (400), never silently ignored. See docs/gateway.md.
UNSUPPORTED = {
    "logprobs": "no log probabilities are computed on the CPU engine",
    "top_logprobs": "no log probabilities are computed on the CPU engine",
    "suffix": "no fill-in-the-middle",
}


def _error(error: ApiError) -> web.Response:
    """An error in trtllm-serve's shape: `ErrorResponse` in tensorrt_llm/serve/openai_protocol.py (TensorRT-LLM
    1.3.0rc19) is {object: "error", message, type, param, code: int}, and openai_server.py's create_error_response
    sets type "BadRequestError" or "NotFoundError" and code to the HTTP status."""
    kind = "NotFoundError" if error.status == 404 else "BadRequestError"
    body = {"object": "error", "message": error.message, "type": kind, "param": error.param, "code": error.status}
    return web.json_response(body, status=error.status)


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _validation_error(error: ApiError, body: dict[str, Any] | None) -> web.Response:
    """A body that fails request validation, answered as trtllm-serve answers it: 400 with `{"error": str(exc)}`.

    trtllm-serve's request models are pydantic (`extra="forbid"`), and its handler for FastAPI's
    `RequestValidationError` (`validation_exception_handler` in tensorrt_llm/serve/openai_server.py, commit 00057725)
    returns `JSONResponse(status_code=400, content={"error": str(exc)})`: FastAPI's text, "N validation error(s):"
    then each pydantic error as a Python dict (type, loc, msg, input), so it quotes the offending input. What the
    shared validator refuses is what pydantic refuses there (an unknown field, a wrong type, a missing field); the
    message here has the same form, input included, so the gateway is tested against the real thing.
    """
    loc: list[str | int] = ["body"]
    for name, index in _PATH_PART.findall(error.param or ""):
        loc.append(int(index) if index else name)
    value: Any = body
    for part in loc[1:]:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = body
            break
    said = error.message.removeprefix(f"{error.param}: ")
    if body is None:
        detail = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {}}
    elif said.startswith("unrecognized"):
        detail = {"type": "extra_forbidden", "loc": tuple(loc), "msg": "Extra inputs are not permitted", "input": value}
    elif said.startswith("is required"):
        detail = {"type": "missing", "loc": tuple(loc), "msg": "Field required", "input": body}
    else:
        detail = {"type": "value_error", "loc": tuple(loc), "msg": f"Value error, {said}", "input": value}
    return web.json_response({"error": f"1 validation error:\n  {detail}"}, status=400)


def _value(body: dict[str, Any], name: str, default: Any) -> Any:
    """A parameter check_request has typed and ranged already, or its default when absent or null."""
    value = body.get(name)
    return default if value is None else value


class Engine:
    def __init__(self, generator: Generator, model_name: str, max_context: int) -> None:
        self.generator = generator
        self.model_name = model_name
        self.max_context = max_context

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", self.version)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.iteration_stats)
        app.router.add_get("/prometheus/metrics", self.prometheus)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/kv_cache_events", self.kv_cache_events)
        for path, handler in addon_routes(self.generator.lora, self.generator.wake):
            app.router.add_post(path, handler)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def models(self, request: web.Request) -> web.Response:
        # as trtllm-serve's ModelCard (openai_protocol.py, 1.3.0rc19): `created` is stamped per request, so it says
        # nothing of when the engine started; the engine's per-process identity is its KV event stream (ids from 0,
        # `created` first: prefix_cache.py)
        created = int(time.time())
        data: list[dict[str, Any]] = [
            {"id": self.model_name, "object": "model", "created": created, "owned_by": "tensorrt_llm"}
        ]
        for name, folder in self.generator.addons.items():
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "tensorrt_llm",
                    "parent": self.model_name,
                    "root": str(folder),
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def iteration_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.generator.drain_stats())

    async def kv_cache_events(self, request: web.Request) -> web.Response:
        """trtllm-serve's KV cache events since the last call (stored/removed block hashes); [] with reuse off."""
        cache = self.generator.prefix_cache
        return web.json_response(cache.drain_events() if cache is not None else [])

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
                raise bad("lora_request", "must be an object with lora_name, lora_int_id, lora_path")
            name, path = lora.get("lora_name"), lora.get("lora_path")
            if name in self.generator.addons:
                return str(name)
            for addon, folder in self.generator.addons.items():
                if isinstance(path, str) and path and (Path(path) == folder or Path(path).name == addon):
                    return addon
            if isinstance(name, str) and isinstance(path, str) and path and Path(path).is_dir():
                # as trtllm-serve: an adapter not seen before is loaded from its lora_path (checked first)
                try:
                    self.generator.lora.register(name, Path(path))
                except ByocError as error:
                    raise bad("lora_request", error.message) from None
                return name
            raise bad("lora_request", "names an adapter this engine has not loaded")
        model = body.get("model")
        if model in self.generator.addons:
            return str(model)
        if model is not None and model != self.model_name:
            raise ApiError(404, "model: not served here; GET /v1/models lists the models", param="model")
        return BASE_ADAPTER

    @staticmethod
    def _lora_task_id(body: dict[str, Any], adapter: str) -> int | None:
        """The request's LoRA task id, which TensorRT-LLM mixes into its KV block keys: `lora_request.lora_int_id`
        as sent (trtllm's LoRARequest), byoc's id for an addon asked for by `model`, none for the base model."""
        if adapter == BASE_ADAPTER:
            return None
        lora = body.get("lora_request")
        task_id = lora.get("lora_int_id") if isinstance(lora, dict) else None
        if isinstance(task_id, int) and not isinstance(task_id, bool):
            return task_id
        return lora_int_id(adapter)

    def _prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        tokenizer = self.generator.tokenizer
        if chat:
            flat = []
            for i, message in enumerate(body["messages"]):  # their shape checked by check_request
                content = message.get("content")
                if isinstance(content, list):
                    for j, part in enumerate(content):
                        if not isinstance(part, dict) or part.get("type") != "text":
                            # an image or audio part dropped on the floor would answer a different question
                            raise bad(
                                f"messages[{i}].content[{j}].type",
                                "this model reads text only: content parts must have type text",
                            )
                    content = "".join(str(p.get("text", "")) for p in content)
                entry = {k: message[k] for k in TEMPLATE_FIELDS if message.get(k) is not None}
                entry["role"], entry["content"] = str(message.get("role", "user")), content or ""
                flat.append(entry)
            options = {}
            if body.get("tools"):
                options["tools"] = [t["function"] for t in body["tools"] if isinstance(t, dict) and "function" in t]
            if body.get("reasoning_effort") is not None:
                options["reasoning_effort"] = body["reasoning_effort"]  # read by the templates that know it
            text = tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=False, **options)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = list(tokenizer(prompt)["input_ids"])
            if not ids and tokenizer.bos_token_id is not None:
                ids = [int(tokenizer.bos_token_id)]  # an empty prompt starts a document, as OpenAI's does
            if not ids:
                raise bad("prompt", "is empty")
            return ids
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = self.generator.vocab_size
            if not all(0 <= t < vocab for t in prompt):
                raise bad("prompt", f"has token ids outside the vocabulary (0 to {vocab - 1})")
            return [int(t) for t in prompt]
        raise bad("prompt", "must be a string or a list of token ids")

    def _logit_bias(self, body: dict[str, Any]) -> dict[int, float]:
        value = body.get("logit_bias") or {}  # its shape (digit keys, -100..100) checked by check_request
        vocab = self.generator.vocab_size
        if not all(0 <= int(token) < vocab for token in value):
            raise bad("logit_bias", f"keys must be token ids of this model (0 to {vocab - 1})")
        return {int(token): float(amount) for token, amount in value.items()}

    def _sampling(self, body: dict[str, Any], prompt_tokens: int) -> Sampling:
        """What check_request cannot know: the prompt's length against the window, and what this engine lacks."""
        room = self.max_context - prompt_tokens
        if room < 1:
            raise bad(
                "messages" if "messages" in body else "prompt",
                f"the prompt has {prompt_tokens} tokens: no room left in the context window of {self.max_context}",
            )
        # errors name the parameter the client sent
        limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = int(_value(body, limit, room))
        if prompt_tokens + max_tokens > self.max_context:
            raise bad(
                limit,
                f"prompt ({prompt_tokens} tokens) + {limit} ({max_tokens}) exceeds the context window of "
                f"{self.max_context} tokens",
            )
        for name, why in UNSUPPORTED.items():
            if body.get(name):
                raise bad(name, f"not supported by this engine ({why})")
        stop = _value(body, "stop", [])
        return Sampling(
            max_tokens=max_tokens,
            temperature=float(_value(body, "temperature", 1.0)),
            top_p=float(_value(body, "top_p", 1.0)),
            top_k=max(0, int(_value(body, "top_k", 0))),
            frequency_penalty=float(_value(body, "frequency_penalty", 0.0)),
            presence_penalty=float(_value(body, "presence_penalty", 0.0)),
            repetition_penalty=float(_value(body, "repetition_penalty", 1.0)),
            seed=body.get("seed"),
            stop=[stop] if isinstance(stop, str) else list(stop),
            ignore_eos=bool(body.get("ignore_eos", False)),
            min_tokens=int(_value(body, "min_tokens", 0)),
            min_p=float(_value(body, "min_p", 0.0)),
            logit_bias=self._logit_bias(body),
        )

    def _grammar(self, structure: Structure | None) -> Any:
        """Compile the request's grammar (in a worker thread: a new schema takes milliseconds)."""
        if structure is None:
            return None
        return self.generator.grammars.compile(structure)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = parse_json(await request.read())
        except ApiError as error:
            return _validation_error(error, None)
        try:
            # one parser and validator with the gateway (runtime/serve/openai_api.py); the stop list is unbounded
            # here, as in trtllm-serve: the gateway bounds it
            structure = check_request("chat" if chat else "completions", body, self.max_context, None, engine=True)
        except HandlerCheck as error:  # not one of trtllm-serve's request models' refusals
            return _error(error)
        except ApiError as error:
            return _validation_error(error, body)
        try:
            adapter = self._adapter(body)
            prompt = await asyncio.to_thread(self._prompt_ids, body, chat)
            sampling = self._sampling(body, len(prompt))
            usage = _stream_options(body)
            sampling.grammar = await asyncio.to_thread(self._grammar, structure)
        except ApiError as error:
            return _error(error)
        except SchemaError as error:  # a schema xgrammar could not compile
            return _error(bad(error.param, str(error)))
        except Exception as exc:
            # trtllm-serve's handlers answer any exception while a request is prepared (the chat template, the
            # tokenizer) with create_error_response(str(e)): 400 BadRequestError, not 500 (openai_server.py,
            # openai_chat / openai_completion). The gateway withholds the message if it quotes the request.
            log.warning("request refused while it was prepared: %s", type(exc).__name__)
            return _error(ApiError(400, f"{type(exc).__name__}: {exc}"[:500]))
        loop = asyncio.get_running_loop()
        sequence = Sequence(prompt, sampling, adapter, loop, asyncio.Queue())
        sequence.lora_task_id = self._lora_task_id(body, adapter)
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
                return await self._stream(request, sequence, meta, chat, usage, echo, structure)
            return await self._whole(sequence, meta, chat, echo, structure)
        finally:
            sequence.cancelled = True  # a no-op once finished; stops generation if the client went away

    async def _stream_tool_call(
        self,
        request: web.Request,
        response: web.StreamResponse,
        sequence: Sequence,
        chunk_meta: dict[str, Any],
        usage: StreamUsage,
        structure: Structure,
    ) -> web.StreamResponse:
        try:
            if not await _tool_call_events(response, sequence, chunk_meta, usage, structure):
                _break_off(request)
                return response
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left; the finally in _generate stops the generation
        return response

    async def _whole(
        self, sequence: Sequence, meta: dict[str, Any], chat: bool, echo: str, structure: Structure | None
    ) -> web.Response:
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
        call = _tool_call(structure, text, event.reason)
        if call is not None:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice["finish_reason"] = "tool_calls" if event.reason == "stop" else event.reason
        elif chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        usage = _usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
        return web.json_response({**meta, "choices": [choice], "usage": usage})

    async def _stream(
        self,
        request: web.Request,
        sequence: Sequence,
        meta: dict[str, Any],
        chat: bool,
        usage: StreamUsage,
        echo: str,
        structure: Structure | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk_meta = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(text: str | None, reason: str | None, generated: int, first: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else {}
                if not first and text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
            data: dict[str, Any] = {**chunk_meta, "choices": [choice]}
            if usage.continuous:
                data["usage"] = _usage(len(sequence.prompt), generated, sequence.cached_tokens)
            elif not chat:
                data["usage"] = None  # trtllm-serve dumps completion chunks with unset fields (exclude_unset=False)
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        if structure is not None and structure.mode != "json" and chat:
            return await self._stream_tool_call(request, response, sequence, chunk_meta, usage, structure)
        first = True
        try:
            while True:
                event = await sequence.events.get()
                if isinstance(event, Failed):
                    _break_off(request)
                    return response
                if first:
                    # the role chunk goes out with the first token, so it marks the time to first token
                    if chat:
                        await response.write(chunk(echo, None, 0, first=True))
                    elif echo:
                        await response.write(chunk(echo, None, 0))
                    first = False
                if isinstance(event, Delta):
                    await response.write(chunk(event.text, None, event.completion_tokens))
                    continue
                await response.write(chunk(event.text if event.text else None, event.reason, event.completion_tokens))
                if usage.include:
                    await response.write(_usage_chunk(chunk_meta, event))
                await response.write(b"data: [DONE]\n\n")
                break
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left; the finally in _generate stops the generation
        return response


@dataclass(frozen=True)
class StreamUsage:
    """What a streamed answer carries of usage, as trtllm-serve 1.3.0rc19 decides it
    (tensorrt_llm/serve/postprocess_handlers.py, `chat_stream_post_processor`, `completion_stream_post_processor`)."""

    include: bool = False  # a last chunk with `choices: []` and the request's usage
    continuous: bool = False  # the running usage on every chunk too


# TensorRT-LLM's `StreamOptions` (tensorrt_llm/serve/openai_protocol.py at 1.3.0rc19): extra fields forbidden,
# `include_usage` defaults true and `continuous_usage_stats` false (true before PR #10644, early 2026).
STREAM_OPTION_DEFAULTS = {"include_usage": True, "continuous_usage_stats": False}


def _stream_options(body: dict[str, Any]) -> StreamUsage:
    """The request's `stream_options` as trtllm-serve reads them: none sent, no usage in the stream at all. Their
    shape (known names, booleans, only with stream: true) is checked by check_request."""
    options = body.get("stream_options")
    if options is None:
        return StreamUsage()
    include = _value(options, "include_usage", STREAM_OPTION_DEFAULTS["include_usage"])
    continuous = _value(options, "continuous_usage_stats", STREAM_OPTION_DEFAULTS["continuous_usage_stats"])
    return StreamUsage(bool(include), bool(include and continuous))


def _usage_chunk(chunk_meta: dict[str, Any], event: Finished) -> bytes:
    """The last chunk of a stream that asked for usage: no choices, the whole request's usage."""
    usage = _usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
    return b"data: " + json.dumps({**chunk_meta, "choices": [], "usage": usage}).encode() + b"\n\n"


async def _tool_call_events(
    response: web.StreamResponse,
    sequence: Sequence,
    chunk_meta: dict[str, Any],
    usage: StreamUsage,
    structure: Structure,
) -> bool:
    """A forced tool call goes out whole, in one chunk, once its arguments are complete. False: the answer failed."""
    held: list[str] = []
    while True:
        event = await sequence.events.get()
        if isinstance(event, Failed):
            return False
        held.append(event.text)
        if isinstance(event, Finished):
            break
    text = "".join(held)
    call = tool_call(structure, text, f"call_{uuid.uuid4().hex[:24]}")
    delta: dict[str, Any] = {"role": "assistant", "content": text if call is None else None}
    if call is not None:
        delta["tool_calls"] = [{"index": 0, **call}]
    reason = "tool_calls" if call is not None and event.reason == "stop" else event.reason
    choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
    data: dict[str, Any] = {**chunk_meta, "choices": [choice]}
    if usage.continuous:
        data["usage"] = _usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
    if usage.include:
        await response.write(_usage_chunk(chunk_meta, event))
    await response.write(b"data: [DONE]\n\n")
    return True


def _break_off(request: web.Request) -> None:
    """End a stream whose answer failed as trtllm-serve's does: no error event, no `[DONE]`, and no end of the body.

    trtllm-serve's stream generators (`chat_stream_generator`, `completion_generator` in
    tensorrt_llm/serve/openai_server.py, commit 00057725) log the exception and re-raise it; Starlette passes it on once
    the response has started, and uvicorn (`RequestResponseCycle.run_asgi`) then closes the connection: the chunked
    body never gets its terminating chunk, so a client reads an incomplete body, not a clean end. Closing the
    transport here does the same (aiohttp's own end of the response then finds it closed and lets it be).
    """
    if request.transport is not None:
        request.transport.close()


def _tool_call(structure: Structure | None, text: str, reason: str) -> dict[str, Any] | None:
    if structure is None or structure.mode == "json":
        return None
    return tool_call(structure, text, f"call_{uuid.uuid4().hex[:24]}")


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """trtllm-serve's `UsageInfo`, with `prompt_tokens_details.cached_tokens` (the request's prompt tokens served
    from the KV cache: TensorRT-LLM PR #7637)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


async def serve(generator: Generator, model_name: str, listen: Address) -> None:
    engine = Engine(generator, model_name, generator.max_context)
    # handler_cancellation: a client that leaves cancels its handler, whose `finally` stops the generation
    runner = web.AppRunner(engine.app(), access_log=None, handle_signals=False, handler_cancellation=True)
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
