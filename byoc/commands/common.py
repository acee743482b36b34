"""What every command shares: the output switch, the error reporting, JSON printing."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer

from byoc.errors import ByocError


class Output(StrEnum):
    text = "text"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text for people, json for tools.")]


@contextmanager
def reporting(output: Output) -> Iterator[None]:
    """Turn a ByocError into one message (and a JSON object with --output json) and its exit code."""
    try:
        yield
    except ByocError as exc:
        if output is Output.json:
            print(json.dumps({"error": exc.as_dict()}))
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def fields_as_flags(names: dict[str, str]) -> Iterator[None]:
    """A ByocError about a spec field the user gave as a flag names that flag: with `--source` typed, `model.source`
    appears nowhere in what the user wrote. `names` maps a regular expression of spec fields to the flag."""
    try:
        yield
    except ByocError as error:
        flag = next((f for pattern, f in names.items() if re.fullmatch(pattern, error.field)), None)
        if flag is None:
            raise
        message, hint = error.message.replace(error.field, flag), error.hint.replace(error.field, flag)
        raise type(error)(flag, message, hint) from None


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def print_warnings(warnings: Any) -> None:
    """Each ByocWarning as one `warning: field: message (hint)` line on stderr (stdout stays data)."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
