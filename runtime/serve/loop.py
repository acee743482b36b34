"""Run a server coroutine on the fastest event loop installed.

uvloop (libuv) roughly halves the event loop's own cost per request, which is most of a proxy's work. It is used
when installed and is not required: the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any


def loop_name() -> str:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
