"""Live progress of long steps (`up`, `destroy`, `refresh`), fed by the Automation API's engine events.

Two views of the same stream:
- `RichProgress`: for people: the current step, resources done of total, the resource in flight, elapsed time
  (rich's progress bar); warnings and errors are printed above the bar as they arrive.
- `JsonLines`: for tools (`--output json`): one JSON object per line, `{"event": "step"|"resource"|"diagnostic"|
  "summary"|"result", ...}`, ending with the result.

`describe(event)` turns one Pulumi `EngineEvent` (pulumi.automation.events; the objects the CLI's event log is
parsed into) into byoc's event dict, so both views, and the tests with recorded events, share one reading.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent

# Ops that change nothing in the cloud: counted as done, never shown as in flight.
_QUIET_OPS = frozenset({"same", "read", "refresh"})


def describe(event: EngineEvent) -> dict[str, Any] | None:
    """byoc's view of one engine event, or None for events nobody needs (stdout echo, prelude, policy)."""
    if event.resource_pre_event is not None and event.resource_pre_event.metadata is not None:
        meta = event.resource_pre_event.metadata
        return {"event": "resource", "status": "started", **_resource(meta)}
    if event.res_outputs_event is not None and event.res_outputs_event.metadata is not None:
        meta = event.res_outputs_event.metadata
        return {"event": "resource", "status": "done", **_resource(meta)}
    if event.res_op_failed_event is not None and event.res_op_failed_event.metadata is not None:
        meta = event.res_op_failed_event.metadata
        return {"event": "resource", "status": "failed", **_resource(meta)}
    if event.diagnostic_event is not None:
        diagnostic = event.diagnostic_event
        if diagnostic.severity not in ("warning", "error") or diagnostic.ephemeral:
            return None
        return {
            "event": "diagnostic",
            "severity": diagnostic.severity,
            "message": diagnostic.message.strip(),
            "urn": diagnostic.urn or None,
        }
    if event.summary_event is not None:
        summary = event.summary_event
        return {
            "event": "summary",
            "changes": {str(k): int(v) for k, v in (summary.resource_changes or {}).items()},
            "duration_s": summary.duration_seconds,
        }
    if event.cancel_event is not None:
        return {"event": "cancelled"}
    return None


def _resource(meta: Any) -> dict[str, Any]:
    op = meta.op.value if hasattr(meta.op, "value") else str(meta.op)
    return {"op": op, "type": meta.type, "name": str(meta.urn).rsplit("::", 1)[-1], "urn": meta.urn}


class ProgressView(Protocol):
    def step(self, text: str, total: int | None = None) -> None:
        """A new step; `total` is the number of resources it will count to, when known."""
        ...

    def engine_event(self, event: EngineEvent) -> None: ...

    def message(self, text: str) -> None: ...

    def result(self, data: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class Counter:
    """Resources done of total, from resource events (a resource counts once, when its outputs or failure
    arrive). `total` is the expected count (the offline plan's resources, or the state's for destroy) and grows if
    the engine reports more."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.in_flight: dict[str, str] = {}
        self.started = time.monotonic()

    def feed(self, described: dict[str, Any]) -> None:
        if described.get("event") != "resource":
            return
        urn = described["urn"]
        if described["status"] == "started":
            if described["op"] not in _QUIET_OPS:
                self.in_flight[urn] = f"{described['op']} {described['type']} {described['name']}"
            return
        self.in_flight.pop(urn, None)
        (self.failed if described["status"] == "failed" else self.done).add(urn)
        if self.total is not None and len(self.done) > self.total:
            self.total = len(self.done)

    @property
    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 1)

    @property
    def current(self) -> str:
        return next(reversed(self.in_flight.values()), "")


class JsonLines:
    """One JSON object per line on `stream`; every resource event carries done/total/elapsed_s."""

    def __init__(self, total: int | None = None, stream: IO[str] | None = None) -> None:
        # a counter per step; elapsed time runs from the first step
        self.counter = Counter(total)
        self.stream = stream or sys.stdout

    def _emit(self, data: dict[str, Any]) -> None:
        self.stream.write(json.dumps(data, default=str) + "\n")
        self.stream.flush()

    def step(self, text: str, total: int | None = None) -> None:
        self.counter = Counter(total) if total is not None else self.counter
        self._emit({"event": "step", "step": text, "total": self.counter.total, "elapsed_s": self.counter.elapsed_s})

    def engine_event(self, event: EngineEvent) -> None:
        described = describe(event)
        if described is None:
            return
        self.counter.feed(described)
        if described["event"] == "resource":
            described |= {"done": len(self.counter.done), "total": self.counter.total}
        described["elapsed_s"] = self.counter.elapsed_s
        self._emit(described)

    def message(self, text: str) -> None:
        self._emit({"event": "message", "message": text, "elapsed_s": self.counter.elapsed_s})

    def result(self, data: dict[str, Any]) -> None:
        self._emit({"event": "result", **data})

    def close(self) -> None:
        pass


class RichProgress:
    """rich's live progress: '<step>  ━━━━━━  12/131 resources  create aws:eks/cluster:Cluster demo  0:04:12'."""

    def __init__(self, total: int | None = None, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.counter = Counter(total)
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("resources"),
            TextColumn("{task.fields[current]}", style="dim"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=total, current="")
        self.progress.start()

    def step(self, text: str, total: int | None = None) -> None:
        if total is not None:
            self.counter = Counter(total)
            self.progress.update(self.task, completed=0, total=total)
        self.progress.update(self.task, description=text)

    def engine_event(self, event: EngineEvent) -> None:
        described = describe(event)
        if described is None:
            return
        self.counter.feed(described)
        if described["event"] == "diagnostic":
            style = "red" if described["severity"] == "error" else "yellow"
            self.progress.console.print(f"[{style}]{described['severity']}[/]: {described['message']}")
        elif described["event"] == "resource" and described["status"] == "failed":
            self.progress.console.print(f"[red]failed[/]: {described['op']} {described['type']} {described['name']}")
        self.progress.update(
            self.task,
            completed=len(self.counter.done),
            total=self.counter.total,
            current=self.counter.current,
        )

    def message(self, text: str) -> None:
        self.progress.console.print(text)

    def result(self, data: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        self.progress.update(self.task, current="")
        self.progress.stop()


class Silent:
    """No live view (tests, `byoc status`)."""

    def step(self, text: str, total: int | None = None) -> None:
        pass

    def engine_event(self, event: EngineEvent) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def result(self, data: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
