"""Logging that keeps zero data retention: no prompt, completion or API key reaches a log line.

The gateway and the engine log only what they write themselves (an access line, start-up and upstream state).
Library loggers that could print request data (aiohttp's error handler prints exception text and tracebacks) are
replaced by a one-line summary that names the exception type and where it happened, never its message.
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _NoExceptionText(logging.Formatter):
    """Replaces a traceback by its exception type and innermost frame: exception messages can quote user data."""

    def formatException(
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:  # noqa: N802
        kind, _, tb = ei
        if kind is None:
            return ""
        where = ""
        if tb is not None:
            frames = traceback.extract_tb(tb)
            if frames:
                last = frames[-1]
                where = f" at {last.filename}:{last.lineno}"
        return f"  exception {kind.__name__}{where} (message withheld: zero data retention)"


class _DropArgs(logging.Filter):
    """aiohttp's server logs `Error handling request` with the exception text in args; keep only the format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp"):
            record.msg = str(record.msg).split("%", 1)[0].strip() or "aiohttp event"
            record.args = None
        return True


def exception_summary(exc: BaseException) -> str:
    """`TypeError at engine.py:120`: enough to find a bug, nothing a user sent."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_NoExceptionText(FORMAT))
    handler.addFilter(_DropArgs())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access logger would log every path and client address a second time; we write our own access line.
    logging.getLogger("aiohttp.access").disabled = True
