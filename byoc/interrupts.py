"""Ctrl+C (SIGINT) and SIGTERM for every command: the first one stops byoc, with exit 130 (143 for SIGTERM), no
traceback, and nothing half-written.

Two ways to stop, chosen by where the signal lands:

- Most code unwinds: the handler raises `Interrupted` (a KeyboardInterrupt), `finally` blocks run (the registry
  releases its lock, a staging folder is removed), and `byoc.cli.main` ends the process with `os._exit` once the
  stack is unwound, so interpreter shutdown never joins a worker thread that waits on something that will not come.
- Code that cannot be unwound safely runs inside `abrupt()`: Pulumi's mocks (`byoc plan`, the offline graphs of `up`
  and `scale`) run the program on an asyncio loop fed by a pool of threads, and a KeyboardInterrupt raised in there
  can be swallowed by a task or a callback, leaving the loop waiting forever on a future no thread will complete (the
  field report: `byoc plan` hung on Ctrl+C in 7 of ~65 tries), or can half-import a provider module that another
  thread then reports as a bug. Inside `abrupt()` the handler runs the cleanups registered with `on_stop()` (newest
  first) and ends the process at once.

`deferred()` holds a signal back while a few renames publish finished outputs (all or none of them move), and
acts on it when they are done. Lifecycle commands replace the handler while Pulumi runs (`InterruptGuard`, below,
lets Pulumi stop gracefully) and put this one back afterwards.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

Cleanup = Callable[[], None]

_state: dict[str, int | None] = {"owner": None, "received": None, "deferred_signal": None, "finishing": None}
_abrupt = [0]
_deferred = [0]
_cleanups: list[Cleanup] = []


class Interrupted(KeyboardInterrupt):
    """Raised by the handler outside `abrupt()`. A KeyboardInterrupt, so asyncio and click pass it on as they pass
    Ctrl+C on."""


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def received() -> int | None:
    """The signal that stopped this process, if one did."""
    return _state["received"]


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (the main thread of `byoc`)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state["owner"] = os.getpid()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state["owner"]:  # a forked child that kept the handler: not its parent's cleanups to run
        os._exit(exit_code(signum))
    if _state["received"] is None:
        _state["received"] = signum
    if _state["finishing"]:  # the command is done: nothing left to unwind, only output to flush
        finish(signum)
    if _deferred[0]:
        _state["deferred_signal"] = signum
        return
    _act(signum)


def _act(signum: int) -> None:
    if _abrupt[0]:
        stop_now(signum)
    raise Interrupted


def _say(text: str) -> None:
    # os.write, not print: the signal may have landed inside a write to sys.stderr (a reentrant call would fail)
    with suppress(OSError):
        os.write(2, text.encode())


def stop_now(signum: int) -> NoReturn:
    """Run the registered cleanups (newest first), say so on stderr and end the process: no unwinding."""
    while _cleanups:
        cleanup = _cleanups.pop()
        with suppress(BaseException):  # a cleanup that fails must not keep the others from running
            cleanup()
    with suppress(BaseException):  # the signal may have landed inside a write to stdout
        sys.stdout.flush()
    _say(f"\nbyoc: stopped ({signal.Signals(signum).name})\n")
    os._exit(exit_code(signum))


def finish(signum: int) -> NoReturn:
    """End the process after an unwound interrupt: flush what was printed, then exit without joining threads."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(BaseException):
            stream.flush()
    _say(f"\nbyoc: stopped ({signal.Signals(signum).name})\n")
    os._exit(exit_code(signum))


def finishing() -> None:
    """The command has returned: a signal from here on flushes and exits (no exception left to raise into the
    interpreter's own shutdown)."""
    _state["finishing"] = 1


@contextmanager
def abrupt() -> Iterator[None]:
    """A signal inside stops the process at once (after the `on_stop` cleanups) instead of raising."""
    _abrupt[0] += 1
    try:
        yield
    finally:
        _abrupt[0] -= 1


@contextmanager
def on_stop(cleanup: Cleanup) -> Iterator[None]:
    """Run `cleanup` if an abrupt stop happens inside this block."""
    _cleanups.append(cleanup)
    try:
        yield
    finally:
        if cleanup in _cleanups:
            _cleanups.remove(cleanup)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal back until the block is done (a few renames that publish outputs, a document printed), then
    act on it.

    The signals are also blocked in this thread meanwhile: a signal that lands in a write() to a pipe makes
    CPython drop what that write had left to send (a 176 KB plan printed with `-o json` came out cut at 128 KiB)."""
    outermost = not _deferred[0]
    mask = {signal.SIGINT, signal.SIGTERM}
    blocked = outermost and threading.current_thread() is threading.main_thread()
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    _deferred[0] += 1
    try:
        yield
    finally:
        _deferred[0] -= 1
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, mask)  # a signal held by the kernel runs _handle from here on
        pending = _state["deferred_signal"]
        if not _deferred[0] and pending is not None:
            _state["deferred_signal"] = None
            _act(pending)


# -- while Pulumi runs (byoc.lifecycle) ---------------------------------------------------------------------
def _children() -> list[int]:
    """This process's direct children (the `pulumi` CLI the Automation API started), from /proc."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.append(int(entry.parent.name))
    return found


def _terminal_sent_it() -> bool:
    """A Ctrl+C at a terminal reaches the whole foreground process group, the pulumi CLI included."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


class InterruptGuard:
    """First SIGINT/SIGTERM: let Pulumi stop gracefully (it gets one SIGINT) and remember the run as interrupted.
    Second: warn that operations may be left pending and pass it on (Pulumi then stops at once). Third: raise."""

    def __init__(self, say: Callable[[str], None], name: str) -> None:
        self.say = say
        self.name = name
        self.signals: list[str] = []
        self._previous: dict[int, Any] = {}

    @property
    def interrupted(self) -> bool:
        return bool(self.signals)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signal.Signals(signum).name)
        count = len(self.signals)
        if count >= 3:
            raise KeyboardInterrupt
        if count == 1:
            self.say(
                f"{self.signals[0]}: Pulumi finishes the operations in flight and stops; press Ctrl+C again to force "
                "it (operations in flight are then left pending)"
            )
        else:
            self.say(
                f"warning: forcing Pulumi to stop: operations in flight will be left pending; run "
                f"`byoc refresh {self.name}` before the next `byoc up`"
            )
        if signum == signal.SIGTERM or not _terminal_sent_it():
            for child in _children():
                with suppress(OSError):
                    os.kill(child, signal.SIGINT)

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
