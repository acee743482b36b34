"""The OpenAI request and error shapes the gateway checks and forwards.

Every 400 names the parameter at fault (`param`, as OpenAI does) and never quotes the value that was sent: values
are user data, and no user data goes into an error body or a log line (zero data retention).
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from runtime.serve.structured import SchemaError, Structure, requested_structure

Kind = Literal["chat", "completions"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
# OpenAI platform features with no meaning for a private deployment: accepted and not forwarded.
DROPPED = frozenset({"store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"})


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code
        self.retry_after = retry_after
        self.headers = headers  # more response headers (a budget's reset time)

    def body(self) -> bytes:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


class HandlerCheck(ApiError):
    """A refusal that trtllm-serve makes, if at all, in its request handler once its pydantic request models have
    accepted the body (a length beyond the context window), or that is byoc's own (a schema the grammar could not
    enforce: trtllm-serve's xgrammar drops the keywords): the CPU engine answers it in the handler's `ErrorResponse`
    shape, not as a request-validation failure."""


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


@dataclass
class ParsedRequest:
    model: str
    stream: bool
    include_usage: bool  # the client asked for the final usage chunk (stream_options.include_usage)
    body: dict[str, Any]  # what goes upstream, once the model is rewritten
    unchanged: bool = True  # `body` equals what the client sent (its bytes can go upstream as they are)
    asks_usage: bool = False  # `body` is what the client sent plus UPSTREAM_STREAM_OPTIONS (appended to its bytes)
    renamed: dict[str, str] | None = None  # upstream parameter name -> the name the client used
    continuous_usage: bool = False  # the client asked for usage on every chunk (stream_options.continuous_usage_stats)

    def upstream_bytes(self, raw: bytes) -> bytes | None:
        """The body to send upstream built from the client's bytes without a second JSON encoding, when it can be."""
        if self.unchanged:
            return raw
        if self.asks_usage:
            end = raw.rstrip()
            if end.endswith(b"}"):
                return end[:-1] + b', "stream_options": ' + UPSTREAM_STREAM_OPTIONS + b"}"
        return None


# What every streamed request asks of the engine: usage on every chunk, cumulative, and the total on a last chunk,
# so the meter holds the running count even for a stream that ends early (a client that leaves: its prompt tokens
# arrive with the first chunk). Both fields are explicit because TensorRT-LLM's defaults moved
# (tensorrt_llm/serve/openai_protocol.py, `StreamOptions`: `continuous_usage_stats` defaulted to true until PR #10644,
# false from early 2026 and at the pinned 1.3.0rc19); trtllm-serve sends no usage at all when `stream_options` is
# absent (serve/postprocess_handlers.py). The gateway passes on only what the client asked for (runtime/serve/relay.py).
UPSTREAM_STREAM_OPTIONS = b'{"include_usage": true, "continuous_usage_stats": true}'


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body: not valid JSON", param="body", code="invalid_json") from None
    except RecursionError:  # arrays or objects nested thousands deep: json's decoder recurses per level
        raise ApiError(400, "request body: nested too deeply", param="body", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body: must be a JSON object", param="body")
    if _SURROGATE_ESCAPE.search(raw) is not None:
        where = _lone_surrogate(data, "")
        if where is not None:
            # JSON lets `\ud800` stand alone; it is no character, so no tokenizer can take it (the engine fails)
            raise ApiError(
                400,
                f"{where}: holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair): not text; "
                "send the text as UTF-8 or escape whole characters",
                param=where,
                code="invalid_json",
            )
    return data


# A surrogate escape in the raw body: only then are the parsed strings walked (an emoji's pair is one character).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string holding a lone surrogate (json.loads keeps one as it is), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, path) or _lone_surrogate(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (not _is_number(value) or not low <= value <= high):
        raise bad(name, f"must be a number from {low:g} to {high:g}")


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_int(value):
        raise bad(name, "must be an integer")
    if value < low or (high is not None and value > high):
        raise bad(name, f"must be at least {low}" + (f" and at most {high}" if high is not None else ""))


def _boolean(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(name, "must be true or false")


def _stop(value: Any, max_sequences: int | None) -> None:
    if value is None:
        return
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise bad("stop", "must be a non-empty string or a list of non-empty strings")
    if max_sequences is not None and len(items) > max_sequences:
        raise bad("stop", f"at most {max_sequences} sequences (the gateway's max_stop_sequences)")


def _logit_bias(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise bad("logit_bias", "must be an object of token id to bias")
    for token, bias in value.items():
        if not token.isdigit():
            raise bad("logit_bias", "keys must be token ids (strings of digits)")
        if not _is_number(bias) or not -100 <= bias <= 100:
            raise bad("logit_bias", "values must be numbers from -100 to 100")


def _messages(value: Any, engine: bool = False) -> None:
    if not isinstance(value, list) or not value:
        raise bad("messages", "must be a non-empty list of messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", "must be one of " + ", ".join(sorted(ROLES)))
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise bad(f"{where}.content", "is required")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise bad(f"{where}.content[{j}]", "must be an object with a type")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise bad(f"{where}.content[{j}].text", "must be a string")
        elif not isinstance(content, str):
            raise bad(f"{where}.content", "must be a string or a list of content parts")
        if "name" in message and not isinstance(message["name"], str):
            raise bad(f"{where}.name", "must be a string")
        if "tool_calls" in message and not isinstance(message["tool_calls"], list):
            raise bad(f"{where}.tool_calls", "must be a list")
        # OpenAI requires `tool_call_id` on a tool message (ChatCompletionToolMessageParam); trtllm-serve takes one
        # without it (its CustomChatCompletionMessageParam allows any role, tool_call_id optional), so the engine
        # does too and only the gateway refuses
        if role == "tool" and not engine and not isinstance(message.get("tool_call_id"), str):
            raise bad(f"{where}.tool_call_id", "is required on a tool message (the id of the tool call it answers)")


def _prompt(value: Any) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and value:
        if all(_is_int(t) for t in value):
            return
        if len(value) == 1 and (
            isinstance(value[0], str) or (isinstance(value[0], list) and all(_is_int(t) for t in value[0]))
        ):
            return
        if len(value) > 1 and all(isinstance(p, str | list) for p in value):
            raise bad("prompt", "one prompt per request (send several requests instead)")
    raise bad("prompt", "must be a string or a list of token ids")


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad("tools", "must be a list of tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise bad(f"tools[{i}]", 'must be {"type": "function", "function": {...}}')
            if not isinstance(function.get("name"), str):
                raise bad(f"tools[{i}].function.name", "must be a string")
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("none", "auto", "required"):
        function = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(
                "tool_choice", 'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
            )
    if choice is not None and choice not in ("none", "auto") and not tools:
        # OpenAI refuses it too: a forced tool call without tools would be silently ignored.
        raise bad("tool_choice", "is only allowed when tools are given")


def _response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise bad("response_format", "must be an object whose type is text, json_object or json_schema")
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise bad("response_format.json_schema", "must be an object")


COMMON = frozenset(
    {
        "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
        "frequency_penalty", "presence_penalty", "repetition_penalty", "stop", "seed", "n", "user", "logit_bias",
        "logprobs", "top_logprobs", "ignore_eos", "min_tokens", "min_p",
    }
)  # fmt: skip
CHAT_ONLY = frozenset(
    {"messages", "response_format", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort"}
)
COMPLETIONS_ONLY = frozenset({"prompt", "echo", "suffix", "best_of", "response_format"})
# trtllm-serve's own request fields that the gateway sends (openai_protocol.py: `lora_request`), engine-side only.
ENGINE_ONLY = frozenset({"lora_request"})
NO_PRIORITY = (
    "not accepted: the engine (trtllm-serve 1.3.0rc19) takes no per-request priority; the gateway already serves "
    "online requests before batch work (the Batch API, POST /v1/batches, is the low-priority class)"
)


NUMBERS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "min_p": (0, 1),
    "frequency_penalty": (-2, 2),
    "presence_penalty": (-2, 2),
    "repetition_penalty": (0.01, 10),
}
INTEGERS: dict[str, tuple[int, int | None]] = {
    "top_k": (-1, None),  # -1 and 0 both mean "off", as in trtllm and vLLM
    "seed": (-(2**63), 2**64 - 1),
    "n": (1, 1),
    "best_of": (1, 1),
    "top_logprobs": (0, 20),
}
BOOLEANS = frozenset({"stream", "ignore_eos", "echo", "parallel_tool_calls"})


def _check_value(kind: Kind, name: str, body: dict[str, Any], max_context: int, max_stop: int | None) -> None:
    if name in NUMBERS:
        _number(body, name, *NUMBERS[name])
    elif name in INTEGERS:
        _integer(body, name, *INTEGERS[name])
    elif name in BOOLEANS:
        _boolean(body, name)
    elif name in ("max_tokens", "max_completion_tokens"):
        _integer(body, name, 1)
        if body[name] is not None and body[name] > max_context - 1:
            # every prompt has at least one token, so max_tokens must leave room for it in the window
            raise HandlerCheck(400, f"{name}: must be at most {max_context - 1}", param=name)
    elif name == "min_tokens":
        _integer(body, name, 0, max_context)
    elif name == "logprobs":
        if kind == "chat":
            _boolean(body, name)
        else:
            _integer(body, name, 0, 20)
    elif name == "stop":
        _stop(body[name], max_stop)
    elif name == "logit_bias":
        _logit_bias(body[name])
    elif name == "user":
        if body[name] is not None and not isinstance(body[name], str):
            raise bad(name, "must be a string")
    elif name == "response_format":
        _response_format(body[name])
    elif name == "reasoning_effort" and body[name] is not None and body[name] not in REASONING_EFFORTS:
        raise bad(name, "must be one of " + ", ".join(sorted(REASONING_EFFORTS)))


# OpenAI's `include_usage`, and vLLM's `continuous_usage_stats` (also TensorRT-LLM's): usage on every chunk,
# cumulative, which vLLM and trtllm-serve apply only together with include_usage. OpenAI's `include_obfuscation`
# (openai-python's ChatCompletionStreamOptionsParam: random padding on streamed deltas against side channels) may be
# turned off, which is what byoc's streams are; asked on, it is refused, since no `obfuscation` field will come.
STREAM_OPTIONS = ("include_usage", "continuous_usage_stats", "include_obfuscation")


def _stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """(final usage chunk, usage on every chunk) as the client asked; both off unless asked (OpenAI's default)."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise bad("stream_options", 'must be {"include_usage": true|false, "continuous_usage_stats": true|false}')
    for name, value in options.items():
        if name not in STREAM_OPTIONS:
            raise bad(f"stream_options.{str(name)[:64]}", "unrecognized stream option")
        if value is not None and not isinstance(value, bool):
            raise bad(f"stream_options.{name}", "must be true or false")
    if options.get("include_obfuscation"):
        raise bad("stream_options.include_obfuscation", "byoc does not pad streams; send false or leave it out")
    if not stream:
        raise bad("stream_options", "only allowed with stream: true")
    include = bool(options.get("include_usage"))
    return include, include and bool(options.get("continuous_usage_stats"))


def check_request(
    kind: Kind, body: dict[str, Any], max_context: int, max_stop: int | None = 16, engine: bool = False
) -> Structure | None:
    """Check a request the way OpenAI does; the gateway and the CPU engine both call this (one parser, one error type).

    Raises ApiError 400 naming the parameter (as the client spelled it) for a value out of range or of the wrong
    type, an unknown parameter, a missing `model`/`messages`/`prompt`, or a JSON schema keyword the grammar would
    drop. `max_stop` bounds the `stop` list (None: no bound). `engine`: the engine's own request fields (trtllm-serve's
    `lora_request`, which the gateway sends) are accepted too. Returns the structured output asked for, if any.
    """
    allowed = COMMON | (CHAT_ONLY if kind == "chat" else COMPLETIONS_ONLY) | (ENGINE_ONLY if engine else frozenset())
    for name in body:
        if name not in allowed and name not in DROPPED:
            if name == "lora_request":
                raise bad(name, "not accepted here: select an addon with `model` (GET /v1/models lists them)")
            if name == "priority" and not engine:
                # vLLM's and SGLang's field; trtllm-serve 1.3.0rc19 refuses it (its request models forbid extra
                # fields; PR #15329 added one after that release, ordering only the engine's waiting queue)
                raise bad(name, NO_PRIORITY)
            raise bad(str(name)[:64], "unrecognized request argument")
        _check_value(kind, name, body, max_context, max_stop)
    model = body.get("model")
    # trtllm-serve serves one model and takes a request without `model`; the gateway must know which one is asked
    if (model is not None or not engine) and (not isinstance(model, str) or not model):
        raise bad("model", "is required (GET /v1/models lists the models)")
    if kind == "chat":
        _messages(body.get("messages"), engine)
        _tools(body)
    elif "prompt" not in body:
        raise bad("prompt", "is required")
    else:
        _prompt(body["prompt"])
    try:
        # what the engine's grammar would drop is refused here, whatever engine is behind (trtllm-serve drops too)
        structure = requested_structure(body, kind == "chat")
    except SchemaError as error:
        raise HandlerCheck(400, f"{error.param}: {error}", param=error.param) from None
    # trtllm-serve refuses stream_options without stream only when they say something: `{}` passes there
    if not (engine and body.get("stream_options") == {}):
        _stream_options(body, bool(body.get("stream")))
    return structure


def validate(kind: Kind, body: dict[str, Any], max_context: int, max_stop: int = 16) -> ParsedRequest:
    """Check a request (`check_request`) and build the body that goes upstream."""
    check_request(kind, body, max_context, max_stop)
    model = body["model"]
    stream = bool(body.get("stream"))
    include_usage, continuous = _stream_options(body, stream)
    unchanged = True
    forwarded = body
    if any(k in DROPPED for k in body):
        forwarded = {k: v for k, v in body.items() if k not in DROPPED}
        unchanged = False
    renamed = None
    if "max_completion_tokens" in forwarded:
        forwarded["max_tokens"] = forwarded.pop("max_completion_tokens")
        renamed = {"max_tokens": "max_completion_tokens"}  # an engine's error about max_tokens is about this
        unchanged = False
    asks_usage = False
    if stream:
        # always say what the meter needs, explicitly (the engine's defaults have changed between versions): the
        # running usage on every chunk; the gateway passes on only what the client asked for
        wanted = {"include_usage": True, "continuous_usage_stats": True}
        if body.get("stream_options") != wanted:
            asks_usage = unchanged and "stream_options" not in body
            forwarded["stream_options"] = wanted
            unchanged = False
    return ParsedRequest(model, stream, include_usage, forwarded, unchanged, asks_usage, renamed, continuous)


# Inside a JSON schema the client wrote, the values of these keywords are structure (type names, references,
# property names), not content: an engine's message may name them.
SCHEMA_STRUCTURE = frozenset({"type", "format", "$ref", "$schema", "$id", "required"})


def _strings(value: Any, found: list[str], structure: frozenset[str] = frozenset()) -> None:
    """Every string value under `value` (not the keys), skipping the values of the keys in `structure`."""
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in structure:
                _strings(item, found, structure)
    elif isinstance(value, list):
        for item in value:
            _strings(item, found, structure)


def request_texts(body: dict[str, Any]) -> list[str]:
    """What the client wrote as content, for scrubbing upstream error messages.

    Content is what a person or program said: message texts (and the names, tool calls and results in them), the
    prompt, stop strings, `suffix`, `user`, tool descriptions and the values written in a JSON schema (descriptions,
    patterns, enums, defaults, titles). The request's structure is not content: parameter names, property names,
    type names and enum-like parameter values (`response_format.type: json_schema`, `tool_choice: required`, a
    role), which an engine's own message legitimately names.
    """
    found: list[str] = []
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            _strings({k: v for k, v in message.items() if k != "role"}, found, frozenset({"type", "role"}))
        else:
            _strings(message, found)
    for name in ("prompt", "stop", "suffix", "user"):
        _strings(body.get(name), found)
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            _strings(function.get("description"), found)
            _strings(function.get("parameters"), found, SCHEMA_STRUCTURE)
    response_format = body.get("response_format")
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if isinstance(spec, dict):
        _strings(spec.get("description"), found)
        _strings(spec.get("schema"), found, SCHEMA_STRUCTURE)
    return found


# A request value this long found anywhere in an engine's message is taken as quoted; a shorter one only in quotes.
QUOTE_MIN_CHARS = 8
QUOTES = ("'", '"', "`")


def scrub(message: str, body: dict[str, Any]) -> str | None:
    """The upstream's message if it quotes nothing the client sent, else None.

    trtllm-serve answers most bad requests with its own words, but a validation error can quote the offending
    input; such a message is replaced, not forwarded.
    """
    for text in request_texts(body):
        value = text.strip()
        if len(value) >= QUOTE_MIN_CHARS:
            if value[:16] in message:
                return None
        elif value and any(f"{q}{value}{q}" in message for q in QUOTES):
            # a short value counts as quoted only between quotes (as Python's repr and pydantic show it): a word of
            # the client's that is also one of the engine's ("the", "schema") is no quote
            return None
    return message[:500]


# What the gateway adds to a request: an engine's complaint about it is about the parameter the client sent.
ADDED = {"lora_request": "model"}


# trtllm-serve's answer to a body its pydantic request models refuse: `{"error": str(RequestValidationError)}`
# (openai_server.py's `validation_exception_handler`), FastAPI's text of one Python dict per error. Only `loc` (where)
# and `msg` (pydantic's words) are read from it; `input`, the client's own value, never leaves.
_LOC = re.compile(r"'loc': \(([^()]*)\)")
_MSG = re.compile(r"""'msg': ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def _validation_failure(status: int, text: str, body: dict[str, Any], renamed: dict[str, str] | None) -> ApiError:
    """An engine's request-validation failure in OpenAI's shape: the parameter it names and pydantic's words."""
    param: str | None = None
    said = ""
    where, what = _LOC.search(text), _MSG.search(text)
    loc: Any = ()
    inside = where.group(1).strip().rstrip(",") if where is not None else ""
    with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
        loc = ast.literal_eval(f"({inside},)") if inside else ()
    with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
        said = str(ast.literal_eval(what.group(1))) if what is not None else ""
    parts = [p for p in loc if not (isinstance(p, str) and p == "body")] if isinstance(loc, tuple) else []
    if parts and isinstance(parts[0], str):
        param = parts[0]
        for part in parts[1:]:
            param += f"[{part}]" if isinstance(part, int) else f".{part}"
    names = {**ADDED, **(renamed or {})}
    if param is not None and param.split(".")[0].split("[")[0] in names:
        head = param.split(".")[0].split("[")[0]
        param = names[head] + param[len(head) :]
    safe = scrub(said, body) if said else None
    if safe is None:
        safe = "invalid value"
    message = f"{param}: {safe}" if param else f"the engine refused the request as invalid: {safe}"
    return ApiError(status, message[:500], param=param, kind="invalid_request_error")


def upstream_error(status: int, raw: bytes, body: dict[str, Any], renamed: dict[str, str] | None = None) -> ApiError:
    """An upstream 4xx, in OpenAI's shape, with the upstream's own words only when they are safe to pass on.

    `renamed` maps the upstream's parameter names back to the client's (max_tokens -> max_completion_tokens), in
    `param` and in the message. Both of trtllm-serve's shapes: its `ErrorResponse` ({object: "error", message, type,
    param, code}) and, for a body its request models refuse, `{"error": "<FastAPI's validation text>"}`.
    """
    message, param, code = "", None, None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return _validation_failure(status, data["error"], body, renamed)
    if isinstance(data, dict):
        error = data.get("error")
        detail: dict[str, Any] = error if isinstance(error, dict) else data  # OpenAI's shape or trtllm-serve's
        message = str(detail.get("message") or "")
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
        code = detail.get("code") if isinstance(detail.get("code"), str) else None
    safe = scrub(message, body) if message else None
    if safe is None:
        safe = (
            f"the engine rejected the request (HTTP {status}); its message was withheld because it quoted the request"
        )
    names = {**ADDED, **(renamed or {})}
    if param in names:
        param = names[param]
    for upstream_name, client_name in (renamed or {}).items():
        safe = re.sub(rf"\b{upstream_name}\b", client_name, safe)
    kind = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, safe, param=param, kind=kind, code=code)
