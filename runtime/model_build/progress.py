"""Progress of long steps: one line per step on a terminal (stderr), JSON lines on stdout for tools.

With --output json every event is one JSON object per line on stdout, and the command's result is the last line, so
`tail -n1` (or the Kubernetes Job's log) gives the result while a watcher can follow the events.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class Events:
    """Step and progress events. `json_lines` for tools; else human lines on stderr (redrawn on a terminal)."""

    def __init__(self, json_lines: bool, interval: float = 0.5) -> None:
        self.json_lines = json_lines
        self.interval = interval
        self._last: dict[str, float] = {}
        self._open_line = False
        self.started = time.monotonic()
        # held now: the quantizer's chatter is redirected away from stdout while it runs, our events are not
        self.stdout = sys.stdout

    def _print_json(self, data: dict[str, Any]) -> None:
        print(json.dumps(data, default=str), file=self.stdout, flush=True)

    def _end_line(self) -> None:
        if self._open_line:
            sys.stderr.write("\n")
            self._open_line = False

    def step(self, step: str, message: str, **fields: Any) -> None:
        """The start (or the outcome) of a step."""
        if self.json_lines:
            self._print_json({"event": "step", "step": step, "message": message, **fields})
            return
        self._end_line()
        print(f"[{step}] {message}", file=sys.stderr, flush=True)

    def warn(self, message: str, **fields: Any) -> None:
        if self.json_lines:
            self._print_json({"event": "warning", "message": message, **fields})
            return
        self._end_line()
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def progress(self, step: str, done: float, total: float, unit: str, final: bool = False) -> None:
        """Throttled: at most one event per interval per step, plus the last one."""
        now = time.monotonic()
        if not final and now - self._last.get(step, 0.0) < self.interval:
            return
        self._last[step] = now
        if self.json_lines:
            self._print_json({"event": "progress", "step": step, "done": done, "total": total, "unit": unit})
            return
        shown = f"{_size(done)} / {_size(total)}" if unit == "bytes" else f"{done:g} / {total:g} {unit}"
        percent = f" ({100 * done / total:.0f}%)" if total else ""
        if sys.stderr.isatty():
            sys.stderr.write(f"\r[{step}] {shown}{percent}   ")
            self._open_line = not final
            if final:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif final:
            print(f"[{step}] {shown}{percent}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started
