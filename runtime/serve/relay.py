"""A streamed answer on its way from the engine to the client: metered, and edited to what the client asked for.

The gateway asks the engine for usage on every chunk (`stream_options: {"include_usage": true,
"continuous_usage_stats": true}`, openai_api.UPSTREAM_STREAM_OPTIONS), so the meter always holds the running count:
a stream that ends early (the client left, the replica broke off) is metered to its last chunk, prompt tokens
included. trtllm-serve puts that usage on every chunk from the first (the role chunk carries the prompt tokens:
`chat_stream_post_processor` / `completion_stream_post_processor` in tensorrt_llm/serve/postprocess_handlers.py at
TensorRT-LLM 1.3.0rc19, commit 01bf1923), then the total again on a last chunk with `choices: []`; vLLM and SGLang
do the same with these options. The client gets usage only as it asked (OpenAI's `stream_options`): none, one
usage-only chunk before `[DONE]` (`include_usage`), or the running usage on every chunk (`continuous_usage_stats`).

Events that arrive together are edited together (`StreamEditor.edit`): a block of whole events is searched and
rewritten with a few byte-level passes (C loops over the block, not Python per event), which is most of what a
streamed request costs the gateway beyond HTTP. The passes rely on what JSON guarantees: a quote inside a string is
escaped, so `"usage"` with its quotes only matches a key, and a newline inside a string is escaped, so an event never
spans a blank line. A block whose layout the passes do not recognise (an error event, an SSE comment, a chunk without
`choices`, a usage object nested deeper than the engines send) is edited one event at a time by decoding each.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runtime.serve.openai_api import ParsedRequest

DONE = b"data: [DONE]"
_DECODER = json.JSONDecoder()

# A usage object as engines send it: flat, or with one level of details (`prompt_tokens_details`).
_OBJECT = rb"\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}"
_USAGE_VALUE = re.compile(rb'"usage"\s*:\s*(' + _OBJECT + rb")")
# the usage field of a content chunk with the comma before it (pydantic dumps it last): compact as trtllm-serve,
# vLLM and SGLang write it (a literal prefix, which the regex engine finds at memchr speed), and any other spacing
_USAGE_TAIL = re.compile(rb',"usage":' + _OBJECT)
_USAGE_FIELD = re.compile(rb',\s*"usage"\s*:\s*' + _OBJECT + rb'|"usage"\s*:\s*' + _OBJECT + rb"\s*,?\s*")
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')  # a usage-only chunk (held back; see StreamEditor._ending)
# A chunk that carries generated text: chat `content` (or `reasoning_content`), a tool call's `arguments`, or a
# completion's `text`, not empty. Keys only: a quote inside a JSON string is escaped.
_GENERATED = re.compile(rb'"(?:content|reasoning_content|arguments|text)": ?"[^"]')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,12})')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,12})')
_CACHED_TOKENS = re.compile(rb'"cached_tokens"\s*:\s*(\d{1,12})')  # inside `prompt_tokens_details`
_ID = re.compile(rb'"id": ?"([^"\\]{1,200})"')
_OBJECT_NAME = re.compile(rb'"object": ?"([a-z_.]{1,64})"')
_CREATED = re.compile(rb'"created": ?(\d{1,20})')


class EventBlocks:
    """Whole SSE events out of the bytes as they arrive: each `feed` returns the events completed so far (a block
    ending in a blank line, possibly empty); the rest waits for the next read. CRLF line ends (SSE allows them) become
    LF over what is pending, so a CR at the end of one read and its LF at the start of the next still end one line.
    Lone CR line ends, which SSE also allows and no engine sends, are not read."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        pending = self.pending + data if self.pending else data
        if b"\r" in data or self.pending.endswith(b"\r"):
            pending = pending.replace(b"\r\n", b"\n")
        cut = pending.rfind(b"\n\n")
        if cut == -1:
            self.pending = pending
            return b""
        self.pending = pending[cut + 2 :]
        return pending[: cut + 2]


class StreamEditor:
    """One stream's meter and editor. Feed it blocks of whole events (each ending in a blank line) in order.

    After each block: `finished` (the engine's `[DONE]` came: nothing after it is read), `failed` (the engine sent an
    error event: the events before it were passed on). Any time: `usage` (the engine's last cumulative usage, a dict
    as the engine sent it, or None) and `content_chunks` (chunks of generated text relayed while no usage came: the
    meter of an engine that sends none).
    """

    def __init__(self, parsed: ParsedRequest, upstream_model: str) -> None:
        self.include_usage = parsed.include_usage
        self.continuous = parsed.continuous_usage
        self.public_model = parsed.model
        # answers name the upstream's model id (trtllm-serve: its model path); clients expect the id they sent
        self.renames: list[tuple[bytes, bytes]] = []
        if upstream_model != parsed.model:
            old, new = json.dumps(upstream_model).encode(), json.dumps(parsed.model).encode()
            self.renames = [(b'"model"' + sep + old, b'"model"' + sep + new) for sep in (b": ", b":")]
        self._usage_raw: bytes | None = None  # the engine's last usage object, as it sent it
        self._usage: dict[str, Any] | None = None
        self.content_chunks = 0
        self.finished = False
        self.failed = False
        self.generated = False
        self._seen_text = False
        # the stream's id, object and created, from its first chunk: the usage chunk a client asked for carries
        # them (some trtllm-serve versions build a completion stream's usage chunk as a chat chunk with an id of its
        # own: `completion_stream_post_processor`, fixed by TensorRT-LLM PRs #12758 and #14708)
        self.identity: dict[str, Any] | None = None

    def edit(self, block: bytes) -> bytes:
        """The bytes for the client from one block of whole events (possibly none). After it: `finished`, `failed`,
        and `generated` (the block carried generated text, or followed a block that did: the time of a token)."""
        if self.include_usage and self.identity is None:
            self.identity = _identity(block)
        done = _done_at(block)
        events = block if done == -1 else block[:done]
        if not self._seen_text:
            self._seen_text = _GENERATED.search(events) is not None
        self.generated = self._seen_text and bool(events)
        if b'"error"' in events:
            return self._one_by_one(block)
        edited = self._take_usage(events)
        if edited is None:
            return self._one_by_one(block)
        events = edited
        for old, new in self.renames:
            events = events.replace(old, new)
        if done != -1:
            self.finished = True
            return events + self._ending()
        return events

    def _take_usage(self, events: bytes) -> bytes | None:
        """Meter the block's last usage and drop what the client did not ask for; None: not a layout the byte-level
        passes recognise. The usage is kept as the engine's bytes and decoded once, when it is read (`usage`)."""
        end = len(events)
        while True:  # the last usage that is an object (trtllm-serve's completion chunks carry `"usage":null`)
            at = events.rfind(b'"usage"', 0, end)
            if at == -1:
                if self._usage_raw is None:
                    self._count_text(events)
                return events
            found = _USAGE_VALUE.match(events, at)
            if found is not None:
                break
            if not events[at + 7 : at + 32].lstrip(b" \t:").startswith(b"null"):
                return None  # a usage object these passes do not read (nested deeper, odd spacing)
            end = at
        start = events.rfind(b"\n\n", 0, at)
        start = 0 if start == -1 else start + 2
        if events.find(b'"choices"', start, events.find(b"\n\n", at)) == -1:
            return None  # a usage chunk without `choices`: decoded, and held back
        if self.include_usage and self.identity is None:  # no identity on the first chunk: the usage chunk's
            self.identity = _identity(events[start:])
        self._usage_raw, self._usage = found.group(1), None
        # usage-only chunks (`choices: []` with usage) are held back; a `choices: []` chunk without usage (a
        # content-filter note) is the client's
        position = 0
        while (empty := _EMPTY_CHOICES.search(events, position)) is not None:
            start = events.rfind(b"\n\n", 0, empty.start())
            start = 0 if start == -1 else start + 2
            stop = events.find(b"\n\n", empty.end())
            if stop == -1:
                return None
            if _USAGE_OBJECT.search(events, start, stop) is None:
                position = stop
                continue
            events = events[:start] + events[stop + 2 :]
            position = start
        if not self.continuous:
            if events.count(b"\ndata:") >= events.count(b"\n\n"):
                return None  # an event of several lines (`data:` twice, or `event:` first): decoded instead
            events = _USAGE_TAIL.sub(b"", events)
            if _USAGE_OBJECT.search(events) is not None:  # another spacing, or usage not last
                events = _USAGE_FIELD.sub(b"", events)
                if _USAGE_OBJECT.search(events) is not None:
                    return None
        return events

    def counts(self) -> tuple[int, int] | None:
        """(prompt, completion) tokens of the engine's last usage, read without decoding it; None: no usage came."""
        raw = self._usage_raw
        if raw is None:
            return None
        if not raw:  # decoded already (an event edited one at a time)
            usage = self._usage or {}
            return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        prompt, completion = _PROMPT_TOKENS.search(raw), _COMPLETION_TOKENS.search(raw)
        return (
            int(prompt.group(1)) if prompt is not None else 0,
            int(completion.group(1)) if completion is not None else 0,
        )

    def cached_tokens(self) -> int:
        """The prompt tokens the engine served from its KV cache, by its last usage (`prompt_tokens_details.
        cached_tokens`, TensorRT-LLM's and OpenAI's field); 0 when it sent none."""
        raw = self._usage_raw
        if raw is None:
            return 0
        if not raw:
            return _cached_of(self._usage or {})
        found = _CACHED_TOKENS.search(raw)
        return int(found.group(1)) if found is not None else 0

    @property
    def usage(self) -> dict[str, Any] | None:
        """The engine's last cumulative usage, as it sent it (None: none came, or it was not a JSON object)."""
        if self._usage is None and self._usage_raw:
            try:
                usage = json.loads(self._usage_raw.decode())
            except ValueError:
                usage = None
            self._usage = usage if isinstance(usage, dict) else None
        return self._usage

    def _count_text(self, events: bytes) -> None:
        """One output token per chunk of generated text: the meter of an engine that sends no usage."""
        for event in events.split(b"\n\n"):
            if _GENERATED.search(event) is not None:
                self.content_chunks += 1

    def _ending(self) -> bytes:
        """What closes the client's stream: the one usage chunk it asked for, then [DONE]."""
        if not (self.include_usage and self.usage is not None):
            return DONE + b"\n\n"
        chunk = {**(self.identity or {}), "model": self.public_model, "choices": [], "usage": self.usage}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n" + DONE + b"\n\n"

    def _one_by_one(self, block: bytes) -> bytes:
        """The same edits, an event at a time, each decoded: for blocks the byte-level passes do not recognise."""
        out: list[bytes] = []
        for event in block.split(b"\n\n"):
            if not event:
                continue
            if _done_at(event + b"\n\n") != -1:
                self.finished = True
                out.append(self._ending())
                break
            if b'"error"' in event and _is_error(event):  # OpenAI's {"error": ...}, trtllm-serve's {"object": "error"}
                self.failed = True
                break
            kept = self._event(event)
            if kept is not None:
                for old, new in self.renames:
                    kept = kept.replace(old, new, 1)
                out.append(kept + b"\n\n")
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        """One event as the client gets it; None: held back (a usage-only chunk)."""
        chunk = _decode(event) if b'"usage"' in event else None
        usage = chunk.get("usage") if isinstance(chunk, dict) else None
        if self._usage_raw is None and _GENERATED.search(event) is not None:
            self.content_chunks += 1
        if not isinstance(chunk, dict) or not isinstance(usage, dict):
            return event
        self._usage_raw, self._usage = b"", usage  # decoded already
        if self.include_usage and self.identity is None:
            self.identity = {"id": chunk.get("id"), "object": chunk.get("object"), "created": chunk.get("created")}
        if not chunk.get("choices"):
            return None
        if self.continuous:
            return event
        chunk.pop("usage")
        return b"data: " + json.dumps(chunk).encode()


def _data(event: bytes) -> bytes:
    """An event's data: its `data:` lines joined by newlines (SSE), without the field names."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines)


def _decode(event: bytes) -> Any:
    try:
        return json.loads(_data(event))
    except ValueError:
        return None


def _is_error(event: bytes) -> bool:
    """An error event: OpenAI's `{"error": ...}` or trtllm-serve's `{"object": "error", ...}`."""
    chunk = _decode(event)
    return isinstance(chunk, dict) and ("error" in chunk or chunk.get("object") == "error")


_DONE_LINES = (b"\ndata: [DONE]", b"\ndata:[DONE]")


def _done_at(block: bytes) -> int:
    """Where the event that ends the stream (a `data: [DONE]` line, with or without the space, and with any
    `event:` or `id:` lines before it) starts in a block of whole events; -1 when there is none."""
    if block.startswith((b"data: [DONE]", b"data:[DONE]")):
        return 0
    found = [at for at in (block.find(line) for line in _DONE_LINES) if at != -1]
    if not found:
        return -1
    line = min(found) + 1
    start = block.rfind(b"\n\n", 0, line)
    return 0 if start == -1 else start + 2


def _identity(block: bytes) -> dict[str, Any] | None:
    """The first event's id, object and created, read without decoding it."""
    first = block[: block.find(b"\n\n")]
    found_id, found_object = _ID.search(first), _OBJECT_NAME.search(first)
    if found_id is None or found_object is None:
        return None
    created = _CREATED.search(first)
    return {
        "id": found_id.group(1).decode(),
        "object": found_object.group(1).decode(),
        "created": int(created.group(1)) if created is not None else None,
    }


def _cached_of(usage: dict[str, Any]) -> int:
    """`usage.prompt_tokens_details.cached_tokens`, 0 when absent (an engine that does not report it)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and not isinstance(cached, bool) and cached >= 0 else 0


def answer_usage(raw: bytes) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens from a whole (non-streamed) answer's `usage`, without decoding the
    answer."""
    at = raw.rfind(b'"usage"')
    start = raw.find(b"{", at) if at != -1 else -1
    if start == -1:
        return 0, 0, 0
    try:
        usage, _ = _DECODER.raw_decode(raw[start:].decode())
    except ValueError:
        return 0, 0, 0
    if not isinstance(usage, dict):
        return 0, 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), _cached_of(usage)


def rename_model(raw: bytes, upstream: str, public: str) -> bytes:
    """A whole answer names the upstream's model id (trtllm-serve: its model path); clients expect the id they sent."""
    if upstream == public:
        return raw
    for sep in (b": ", b":"):
        old = b'"model"' + sep + json.dumps(upstream).encode()
        if old in raw:
            return raw.replace(old, b'"model"' + sep + json.dumps(public).encode(), 1)
    return raw
