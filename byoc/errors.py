"""The one error type users see.

A `ByocError` names the field at fault, says what is wrong and how to fix it. The CLI prints it as one message and
exits 2 (invalid input) or 1 (a failure while running); it never shows a traceback.
"""

from __future__ import annotations

# A message quotes what the user wrote; a megabyte-long value must not come back a megabyte long.
MAX_TEXT = 600


def _capped(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[: MAX_TEXT - 40]}... ({len(text):,} characters in all)"


class ByocError(Exception):
    """Invalid input: exit 2."""

    exit_code = 2

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        self.field = _capped(field)
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
