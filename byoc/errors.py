"""The one error type users see.

A `ByocError` names the field at fault, says what is wrong and how to fix it. The CLI prints it as one message and
exits 2 (invalid input) or 1 (a failure while running); it never shows a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

# A message quotes what the user wrote; a megabyte-long value must not come back a megabyte long.
MAX_TEXT = 600


def _capped(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[: MAX_TEXT - 40]}... ({len(text):,} characters in all)"


# The spec fields the user gave as flags, with their flags (`byoc estimate --warm-pool 2`): a message names such a
# field as the user gave it. Empty: every field came from the spec.
_FLAGS: ContextVar[Mapping[str, str] | None] = ContextVar("byoc_flags", default=None)


@contextlib.contextmanager
def fields_as_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """Within it, errors and `named`/`setting`/`stated` name each spec field of `flags` (a dotted path, such as
    cold_start.warm_pool) by its flag (--warm-pool): the rules are written once, in the spec's words, and a command
    that takes the field as a flag says the flag."""
    token = _FLAGS.set({**(_FLAGS.get() or {}), **flags})
    try:
        yield
    finally:
        _FLAGS.reset(token)


def named(field: str) -> str:
    """A spec field as the user gave it: its flag where it came from one, else its dotted path."""
    return (_FLAGS.get() or {}).get(field, field)


def _yaml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flag(flag: str, value: object) -> str:
    if isinstance(value, bool):  # --image-cache/--no-image-cache
        return flag if value else f"--no-{flag.removeprefix('--')}"
    return f"{flag} {value}"


def stated(field: str, value: object) -> str:
    """`field` at `value` as the user wrote it: `cold_start.image_cache: false` or `--no-image-cache`."""
    flag = (_FLAGS.get() or {}).get(field)
    return f"{field}: {_yaml(value)}" if flag is None else _flag(flag, value)


def setting(field: str, value: object) -> str:
    """How to give `field` the value `value`, as the user gives it: `set cold_start.image_cache: true` in the spec,
    `pass --image-cache` on the command line."""
    flag = (_FLAGS.get() or {}).get(field)
    return f"set {field}: {_yaml(value)}" if flag is None else f"pass {_flag(flag, value)}"


def removal(field: str) -> str:
    """How to drop `field`: `remove cold_start.image_disk from the spec`, or `leave out --image-disk`."""
    flag = (_FLAGS.get() or {}).get(field)
    return f"remove {field} from the spec" if flag is None else f"leave out {flag}"


class ByocError(Exception):
    """Invalid input: exit 2. `field` is a spec field (named by its flag where the user gave it as one: see
    `fields_as_flags`), a flag, or another input."""

    exit_code = 2

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        self.field = _capped(named(field))
        self.message = _capped(message)
        self.hint = _capped(hint)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, str | int]:
        return {"field": self.field, "message": self.message, "hint": self.hint, "exit_code": self.exit_code}


class ByocFailure(ByocError):
    """Something failed while running (a server gone, access denied): exit 1."""

    exit_code = 1


class ByocInterrupted(ByocFailure):
    """A run stopped by a signal (Ctrl+C, a cancelled CI job) after it was handled: exit 128 + the signal's number,
    as a shell reports a command a signal ended (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signal_name: str, field: str, message: str, hint: str = "") -> None:
        import signal

        super().__init__(field, message, hint)
        self.exit_code = 128 + int(getattr(signal.Signals, signal_name, signal.SIGINT))


class ByocWarning:
    """A deliberate or risky choice that still works: printed on stderr by validate/plan/up and listed in
    plan.json's `warnings`, never an exit code of its own."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        self.field = field
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "hint": self.hint}
