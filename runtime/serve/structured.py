"""Structured output in the CPU engine: `response_format` and forced tool calls, enforced with xgrammar.

xgrammar is the grammar engine trtllm-serve uses (`guided_decoding_backend: xgrammar`). Per request, the JSON
schema is compiled once into a grammar over the model's vocabulary (cached by schema); at each step a matcher masks
every token that could not continue a valid answer, so the text that comes out parses against the schema (unless
max_tokens cuts it short: finish_reason "length").

What is constrained, and how:
- `response_format: {"type": "json_schema", "json_schema": {"schema": S}}`: JSON valid against S.
- `response_format: {"type": "json_object"}`: a JSON object.
- `tool_choice: {"type": "function", "function": {"name": N}}`: the arguments of N, valid against its `parameters`.
- `tool_choice: "required"`: `{"name": one of the tools, "parameters": its arguments}`, turned into a tool call.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["json", "tool", "any_tool"]
CACHED_GRAMMARS = 64


class SchemaError(ValueError):
    """A schema xgrammar cannot compile; `param` names where the client put it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Structure:
    """What one request's output must be: `schema` None means any JSON object."""

    mode: Mode
    schema: dict[str, Any] | None
    param: str  # where the schema came from, for a 400 when it does not compile
    tool: str | None = None  # the forced tool's name (mode "tool")


def _any_tool_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One call of any of the tools: {"name": N, "parameters": {...}} (the shape vLLM also uses for "required")."""
    options = []
    for tool in tools:
        function = tool["function"]
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [function["name"]]},
                    "parameters": function.get("parameters") or {"type": "object"},
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def requested_structure(body: dict[str, Any], chat: bool) -> Structure | None:
    """The constraint a request asks for, or None for free text.

    Raises SchemaError (naming the parameter) when a forced tool is not among `tools`.
    """
    if chat:
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if tools and isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            for index, tool in enumerate(tools):
                if tool["function"]["name"] == name:
                    parameters = tool["function"].get("parameters") or {"type": "object"}
                    return Structure("tool", parameters, f"tools[{index}].function.parameters", name)
            raise SchemaError("tool_choice", "names a function that is not in tools")
        if choice == "required":
            if not tools:
                raise SchemaError("tool_choice", '"required" needs at least one tool in tools')
            return Structure("any_tool", _any_tool_schema(tools), "tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_object":
            return Structure("json", None, "response_format")
        if kind == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is not None and not isinstance(schema, dict):
                raise SchemaError("response_format.json_schema.schema", "must be a JSON schema object")
            return Structure("json", schema, "response_format.json_schema.schema")
    return None


class Grammars:
    """Compiles and caches grammars for one tokenizer. Thread-safe: compiled from the event loop's worker threads."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar

        self._xgr: Any = xgrammar
        self.vocab_size = vocab_size
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgrammar.GrammarCompiler(info)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, structure: Structure) -> Any:
        """An xgrammar CompiledGrammar for the structure. Raises SchemaError when the schema does not compile."""
        schema = structure.schema if structure.schema is not None else {"type": "object"}
        text = json.dumps(schema, sort_keys=True)
        with self._lock:
            found = self._cache.get(text)
            if found is not None:
                self._cache.move_to_end(text)
                return found
        try:
            # no free whitespace between tokens: a model must not be able to pad an answer until max_tokens
            compiled = self._compiler.compile_json_schema(text, any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError with its own words about the schema
            kind = type(exc).__name__
            raise SchemaError(structure.param, f"is not a JSON schema the engine can enforce ({kind})") from None
        with self._lock:
            self._cache[text] = compiled
            while len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return compiled

    def matcher(self, compiled: Any) -> tuple[Any, Any]:
        """A fresh (GrammarMatcher, token bitmask) pair for one sequence."""
        return self._xgr.GrammarMatcher(compiled), self._xgr.allocate_token_bitmask(1, self.vocab_size)

    def mask(self, matcher: Any, bitmask: Any, logits: Any) -> None:
        """Set the logit of every token the grammar forbids next to -inf, in place."""
        matcher.fill_next_token_bitmask(bitmask)
        self._xgr.apply_token_bitmask_inplace(logits, bitmask)


def tool_call(structure: Structure, text: str, call_id: str) -> dict[str, Any] | None:
    """The OpenAI tool call a constrained answer stands for, or None when the text is cut short (no valid JSON)."""
    if structure.mode == "tool":
        assert structure.tool is not None
        return {"id": call_id, "type": "function", "function": {"name": structure.tool, "arguments": text}}
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = json.dumps(data.get("parameters", {}))
    return {"id": call_id, "type": "function", "function": {"name": data["name"], "arguments": arguments}}
