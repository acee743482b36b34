"""Logging that keeps zero data retention: no prompt, completion or API key reaches a log line.

The gateway and the engine log only what they write themselves (an access line, start-up and upstream state).
Library loggers that could print request data (aiohttp's error handler prints exception text and tracebacks) are
replaced by a one-line summary that names the exception type and where it happened, never its message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from types import TracebackType

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _NoExceptionText(logging.Formatter):
    """Replaces a traceback by its exception type and innermost frame: exception messages can quote user data."""

    def formatException(
        self, ei: tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
    ) -> str:
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


class AccessLog:
    """One line per request, written in batches.

    The logging module costs tens of microseconds per record (a LogRecord, a formatter, a lock, a write and flush),
    which is a real share of a proxied request. Lines here are formatted like the other log lines, collected and
    written together at most `flush_seconds` later, or at once when no event loop runs.
    """

    def __init__(self, name: str = "byoc.gateway.access", flush_seconds: float = 0.05) -> None:
        self.prefix = f" INFO {name} "
        self.flush_seconds = flush_seconds
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def write(self, message: str) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        self._lines.append(f"{self._stamp},{int((now - second) * 1000):03d}{self.prefix}{message}\n")
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            sys.stderr.write(text)
            sys.stderr.flush()
