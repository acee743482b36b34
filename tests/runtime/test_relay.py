"""The streamed answer as the client gets it from what the engine sends (runtime/serve/relay.py): usage only as the
client asked, the meter's running count however the stream ends, and the same result whether events arrive one at
a time or together. The engine streams here are shaped as trtllm-serve 1.3.0rc19 dumps them (pydantic: compact
JSON, usage last) with `stream_options: {"include_usage": true, "continuous_usage_stats": true}`."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from runtime.serve.openai_api import validate
from runtime.serve.relay import EventBlocks, StreamEditor

MODEL = "tiny"
ENGINE_MODEL = "/models/tiny"  # trtllm-serve names its model path
WORDS = ["Hello", " there", ",", ' "usage": {}', " data: [DONE]", "!"]  # text that looks like keys and markers
PROMPT = 17


def _usage(generated: int) -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT,
        "total_tokens": PROMPT + generated,
        "completion_tokens": generated,
        "prompt_tokens_details": {"cached_tokens": 16},
    }


def _engine_stream(model: str = ENGINE_MODEL) -> list[bytes]:
    """The events of a chat stream with continuous usage, as trtllm-serve writes them."""
    meta = {"id": "chatcmpl-7f3", "object": "chat.completion.chunk", "created": 1765000000, "model": model}

    def event(choices: list[dict[str, Any]], generated: int) -> bytes:
        data = {**meta, "choices": choices, "usage": _usage(generated)}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], 0)]
    for i, word in enumerate(WORDS, 1):
        reason = "stop" if i == len(WORDS) else None
        events.append(event([{"index": 0, "delta": {"content": word}, "finish_reason": reason}], i))
    events.append(event([], len(WORDS)))
    events.append(b"data: [DONE]\n\n")
    return events


def _editor(options: dict[str, bool] | None, upstream_model: str = ENGINE_MODEL) -> StreamEditor:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if options is not None:
        body["stream_options"] = options
    return StreamEditor(validate("chat", body, 4096), upstream_model)


def _relay(editor: StreamEditor, blocks: list[bytes]) -> list[Any]:
    out = b"".join(editor.edit(block) for block in blocks)
    events = [e for e in out.split(b"\n\n") if e]
    return [json.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in events]


def _content(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]" and e["choices"])


@pytest.mark.parametrize(
    ("options", "usage_on_content", "usage_chunk"),
    [
        (None, False, False),
        ({"include_usage": False}, False, False),
        ({"include_usage": True}, False, True),
        ({"include_usage": True, "continuous_usage_stats": True}, True, True),
    ],
)
def test_the_client_gets_usage_only_as_it_asked(
    options: dict[str, bool] | None, usage_on_content: bool, usage_chunk: bool
) -> None:
    editor = _editor(options)
    events = _relay(editor, [b"".join(_engine_stream())])
    assert events[-1] == "[DONE]" and editor.finished
    chunks = events[:-1]
    assert _content(chunks) == "".join(WORDS)
    content = [c for c in chunks if c["choices"]]
    assert all(("usage" in c) is usage_on_content for c in content)
    assert all(c["model"] == MODEL for c in chunks)  # the name the client sent, not the engine's path
    usage_only = [c for c in chunks if not c["choices"]]
    if usage_chunk:
        # one, last, with the stream's own id, object and created, and the engine's total
        assert usage_only == [chunks[-1]]
        assert chunks[-1]["usage"] == _usage(len(WORDS))
        assert (chunks[-1]["id"], chunks[-1]["object"], chunks[-1]["created"]) == (
            "chatcmpl-7f3",
            "chat.completion.chunk",
            1765000000,
        )
    else:
        assert usage_only == []
    assert editor.usage == _usage(len(WORDS))


@pytest.mark.parametrize(
    "options", [None, {"include_usage": True}, {"include_usage": True, "continuous_usage_stats": True}]
)
def test_events_arriving_one_by_one_or_together_reach_the_client_the_same(options: dict[str, bool] | None) -> None:
    stream = _engine_stream()
    together = _relay(_editor(options), [b"".join(stream)])
    one_by_one = _relay(_editor(options), stream)
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, len(stream) - 1)))
        blocks = [b"".join(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert _relay(_editor(options), blocks) == together
    assert one_by_one == together


def test_a_stream_that_ends_early_is_metered_to_its_last_chunk() -> None:
    """The client left (or the replica broke off) after three chunks: prompt tokens and what was generated."""
    editor = _editor(None)
    _relay(editor, _engine_stream()[:3])
    assert not editor.finished
    assert editor.usage is not None
    assert (editor.usage["prompt_tokens"], editor.usage["completion_tokens"]) == (PROMPT, 2)


def test_an_engine_without_usage_is_metered_by_its_chunks_of_text() -> None:
    """An engine that ignores stream_options: one output token per chunk of generated text, none for the role
    chunk, the finish chunk or text that only looks like a key."""
    stream = [e for e in _engine_stream() if b'"choices":[]' not in e]
    stripped = [
        e.replace(b',"usage":' + json.dumps(_usage(i), separators=(",", ":")).encode(), b"")
        for i, e in enumerate(stream)
    ]
    stripped.insert(
        -1,
        b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"/models/tiny",'
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    )
    for blocks in ([b"".join(stripped)], stripped):
        editor = _editor({"include_usage": True})
        events = _relay(editor, blocks)
        assert editor.usage is None and editor.content_chunks == len(WORDS)
        assert all("usage" not in e for e in events if e != "[DONE]")  # nothing invented


def test_an_error_event_stops_the_stream_after_what_came_before() -> None:
    stream = _engine_stream()
    error = b'data: {"object":"error","message":"CUDA out of memory","type":"InternalServerError","code":500}\n\n'
    editor = _editor(None)
    events = _relay(editor, [b"".join([*stream[:3], error, *stream[3:]])])
    assert editor.failed and not editor.finished
    assert _content(events) == "".join(WORDS[:2])
    assert all("error" not in e for e in events)  # its message is not passed on (it may quote the request)


def test_comments_and_unusual_layouts_pass_through() -> None:
    """An SSE comment (keep-alive) and a usage nested deeper than engines send still come out right."""
    stream = _engine_stream()
    deep = stream[2].replace(
        b'"prompt_tokens_details":{"cached_tokens":16}',
        b'"x":{"y":{"z":1}},"prompt_tokens_details":{"cached_tokens":16}',
    )
    blocks = [b"".join([b": keep-alive\n\n", stream[0], stream[1], deep, *stream[3:]])]
    editor = _editor(None)
    out = b"".join(editor.edit(block) for block in blocks)
    assert out.startswith(b": keep-alive\n\n")
    events = [json.loads(e[6:]) for e in out.split(b"\n\n")[1:] if e and e != b"data: [DONE]"]
    assert all("usage" not in e for e in events)
    assert _content(events) == "".join(WORDS)


def test_the_meter_reads_the_counts_the_engine_sent() -> None:
    for blocks in ([b"".join(_engine_stream())], _engine_stream()):
        editor = _editor(None)
        _relay(editor, blocks)
        assert editor.counts() == (PROMPT, len(WORDS))
        assert editor.cached_tokens() == 16  # usage.prompt_tokens_details, metered beside the counts
    assert _editor(None).counts() is None  # nothing came: the access line says so (usage=counted or none)
    assert _editor(None).cached_tokens() == 0


# -- what engines may legally send: SSE framing variants and usage layouts (each split every way) -----------------
def _through(options: dict[str, bool] | None, reads: list[bytes]) -> tuple[StreamEditor, list[Any]]:
    """As the gateway relays: bytes as read -> whole events (EventBlocks) -> the editor; the client's events,
    parsed as an SSE client does (data lines joined)."""
    editor, blocks, out = _editor(options), EventBlocks(), b""
    for data in reads:
        block = blocks.feed(data)
        if block and not (editor.finished or editor.failed):
            out += editor.edit(block)
    events = []
    for raw in out.split(b"\n\n"):
        data = b"\n".join(line[5:].removeprefix(b" ") for line in raw.split(b"\n") if line.startswith(b"data:"))
        if data:
            events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return editor, events


def _every_split(stream: bytes, step: int = 7) -> list[list[bytes]]:
    return [[stream]] + [[stream[:at], stream[at:]] for at in range(1, len(stream), step)]


def _variant(transform: Any) -> bytes:
    return b"".join(transform(e) for e in _engine_stream())


@pytest.mark.parametrize(
    "name",
    ["crlf", "no_space", "done_with_event_line", "space_before_colon", "usage_nested_twice", "multiline_data"],
)
@pytest.mark.parametrize("options", [None, {"include_usage": True}])
def test_framing_and_usage_layouts_engines_may_send_reach_the_client_whole(
    name: str, options: dict[str, bool] | None
) -> None:
    def transform(event: bytes) -> bytes:
        if name == "crlf":
            return event.replace(b"\n", b"\r\n")
        if name == "no_space":
            return re.sub(rb"(?m)^data: ", b"data:", event)  # line starts only: the text holds "data: [DONE]"
        if name == "done_with_event_line":
            return b"event: end\n" + event if event.startswith(b"data: [DONE]") else event
        if name == "space_before_colon":
            return event.replace(b'"usage":', b'"usage" :  ')
        if name == "usage_nested_twice":
            return event.replace(b'"cached_tokens":16}', b'"cached_tokens":16,"tiers":{"gpu":16}}')
        return event.replace(b',"usage":', b',\ndata: "usage":')  # multiline_data

    expected = _relay(_editor(options), [b"".join(_engine_stream())])
    for reads in _every_split(_variant(transform)):
        editor, events = _through(options, reads)
        assert editor.finished and not editor.failed, reads
        assert editor.counts() == (PROMPT, len(WORDS)), reads
        assert editor.cached_tokens() == 16, reads  # read from the bytes, or from the decoded event
        if name != "usage_nested_twice":
            assert events == expected, reads
        else:  # the usage the client asked for is the engine's, details and all
            assert _content(events[:-1]) == "".join(WORDS) and all("usage" not in e for e in events[:-2])


def test_a_usage_chunk_without_choices_is_held_back_and_a_choices_note_without_usage_is_not() -> None:
    stream = _engine_stream()
    no_choices = stream[-2].replace(b'"choices":[],', b"")
    note = b'data: {"id":"chatcmpl-7f3","object":"chat.completion.chunk","created":1,"model":"/models/tiny",'
    note += b'"choices":[],"prompt_filter_results":[]}\n\n'
    varied = b"".join([note, *stream[:-2], no_choices, stream[-1]])
    for reads in _every_split(varied, step=11):
        editor, events = _through(None, reads)
        assert editor.counts() == (PROMPT, len(WORDS))
        empty = [e for e in events if e != "[DONE]" and not e.get("choices")]
        # the note only (under the model name the client sent), never a usage chunk the client did not ask for
        assert empty == [{**json.loads(note[6:]), "model": MODEL}], reads


def test_an_error_event_is_found_wherever_its_key_is() -> None:
    late = b'data: {"id":"chatcmpl-7f3","object":"chat.completion.chunk","error":{"message":"boom"}}\n\n'
    for reads in _every_split(b"".join([*_engine_stream()[:2], late, *_engine_stream()[2:]]), step=13):
        editor, events = _through(None, reads)
        assert editor.failed and not editor.finished
        assert all("error" not in e for e in events)


def test_the_time_of_a_token_is_when_text_arrives_not_a_role_chunk_or_a_comment() -> None:
    editor, blocks = _editor(None), EventBlocks()
    stream = _engine_stream()
    editor.edit(blocks.feed(b": ping\n\n"))
    assert not editor.generated
    editor.edit(blocks.feed(stream[0]))  # the role chunk: no text yet
    assert not editor.generated
    editor.edit(blocks.feed(stream[1]))
    assert editor.generated
