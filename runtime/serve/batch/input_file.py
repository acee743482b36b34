"""The checks a batch's input file passes at `POST /v1/batches`, before any batch exists.

OpenAI validates an input file after create (status `validating`, then `failed` with `errors`); here the gateway
refuses at create, synchronously, so that a batch that exists can run. Each refusal is a 400 `invalid_request_error`
naming the line (1-based) and the field, in `param`, and never the value (zero data retention). The rules are the
Batch guide's (https://platform.openai.com/docs/guides/batch): one JSON object per line with a `custom_id` unique in
the file, `method` "POST", `url` the batch's endpoint, `body` the endpoint's request; "each input file can only
include requests to a single model"; at most 50,000 requests; no streaming.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.serve.batch.layout import MAX_REQUESTS_PER_BATCH
from runtime.serve.openai_api import ApiError


@dataclass(frozen=True)
class InputSummary:
    """What the gateway keeps of a checked input file: its model and its number of requests."""

    model: str
    requests: int


def _refuse(line: int, param: str, message: str) -> ApiError:
    return ApiError(400, f"input file line {line}: {param}: {message}", param=param, code="invalid_batch_input")


def _request_model(number: int, raw: bytes, endpoint: str, seen: set[str]) -> str:
    """One line's checks, up to its model (returned); `seen` gathers the custom_ids."""
    try:
        line: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _refuse(number, "line", "not valid JSON (each line is one JSON object)") from None
    if not isinstance(line, dict):
        raise _refuse(number, "line", "must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _refuse(number, "custom_id", "must be a non-empty string")
    if custom_id in seen:
        raise _refuse(number, "custom_id", "used by an earlier line: each custom_id must be unique in the file")
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise _refuse(number, "method", 'must be "POST"')
    if line.get("url") != endpoint:
        raise _refuse(number, "url", f"must be the batch's endpoint, {endpoint}")
    body = line.get("body")
    if not isinstance(body, dict):
        raise _refuse(number, "body", "must be a JSON object: the request for the endpoint")
    stream = body.get("stream")
    if stream is True:
        raise _refuse(number, "body.stream", "a batch request cannot stream: leave stream out or false")
    if stream is not None and stream is not False:
        # OpenAI's `stream` is a boolean: 1, "true" or {} would be refused by the endpoint line by line later
        raise _refuse(number, "body.stream", "must be a boolean (false, or left out: a batch answers whole)")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise _refuse(number, "body.model", "must be a non-empty string")
    return name


def check_input_file(data: bytes, endpoint: str, serves: Callable[[str], bool]) -> InputSummary:
    """Checks every line of `data` (the input file's bytes, JSONL) for a batch on `endpoint`.

    `serves(model)` says whether the gateway serves a model or addon name (True also while no replica has listed
    its addons yet: the worker then reports such lines in the error file). Blank lines are skipped, as JSONL readers
    do. Returns the file's model and request count; raises ApiError (400) at the first line at fault.
    """
    seen: set[str] = set()
    model: str | None = None
    model_line = 0
    requests = 0
    start = 0
    number = 0
    size = len(data)
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        raw = data[start:end]
        start = end + 1
        number += 1
        if not raw.strip():
            continue
        requests += 1
        if requests > MAX_REQUESTS_PER_BATCH:
            raise ApiError(
                400,
                f"input file: more than {MAX_REQUESTS_PER_BATCH:,} requests (OpenAI's limit per batch); split it "
                "into several batches",
                param="input_file_id",
                code="too_many_requests",
            )
        name = _request_model(number, raw, endpoint, seen)
        if model is None:
            if not serves(name):
                raise _refuse(number, "body.model", "this gateway does not serve that model; GET /v1/models lists them")
            model, model_line = name, number
        elif name != model:
            raise _refuse(
                number, "body.model", f"differs from line {model_line}'s: a batch uses one model, as OpenAI's do"
            )
    if model is None:
        raise ApiError(400, "input file: holds no request", param="input_file_id", code="empty_file")
    return InputSummary(model, requests)
