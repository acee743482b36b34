"""The deployment registry: what byoc deployed, in which state, and what happened to it.

One SQLite file, `$BYOC_HOME/registry.db` (`~/.byoc` by default), shared by every byoc process on the machine:

- `deployments`: name, cloud, placement, shape, the spec as given, state and its reason, timestamps, the stack's
  outputs, the stack state exported after a failure and the operations Pulumi left pending.
- `events`: an append-only log per deployment (state changes, refused commands, recovered locks, engine summaries).
- `stacks`: one row per Pulumi stack of the deployment (schema version 2): each region's stack and, for a
  multi-region deployment, the global layer (`region` "global"): its state (StackState), last error, outputs and
  the spec it last deployed, so a partial failure shows per region and `up`/`destroy` resume where they stopped.
  A registry written by an older byoc gains the table on first open, with one row per existing deployment (its one
  stack, named as the deployment).
- `locks`: at most one running command per deployment, with the process id, host and process start time of its
  holder, so a lock left by a killed process is recognised (dead pid, or a pid reused by another process) and
  recovered; a lock held by a live process, or by another host, never is.

The states and their legal transitions are written once, in `TRANSITIONS`, and `Registry.transition` is the only
place that changes a state.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from byoc.errors import ByocError, ByocFailure


class State(StrEnum):
    CREATING = "CREATING"  # recorded, preflight passed; the first `up` is about to run
    DEPLOYING = "DEPLOYING"  # `pulumi up` is running (first creation, a re-run, or a retry after FAILED)
    DEPLOYED = "DEPLOYED"  # the last `up` finished
    SCALING = "SCALING"  # `byoc scale`: only the KEDA bounds and the NodePool's GPU limit change
    UPDATING = "UPDATING"  # `byoc update`: a new spec that keeps placement
    FAILED = "FAILED"  # a run failed, was interrupted or its process died; `up` retries, `destroy` removes
    DELETING = "DELETING"  # `byoc destroy` is running
    DELETED = "DELETED"  # destroyed; the name may be used again


# Every legal move, and only these. `None` is "no record yet".
TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.CREATING}),
    State.CREATING: frozenset({State.DEPLOYING, State.FAILED}),
    State.DEPLOYING: frozenset({State.DEPLOYED, State.FAILED}),
    State.DEPLOYED: frozenset({State.DEPLOYING, State.SCALING, State.UPDATING, State.DELETING}),
    State.SCALING: frozenset({State.DEPLOYED, State.FAILED}),
    State.UPDATING: frozenset({State.DEPLOYED, State.FAILED}),
    State.FAILED: frozenset({State.DEPLOYING, State.UPDATING, State.DELETING}),
    State.DELETING: frozenset({State.DELETED, State.FAILED}),
    State.DELETED: frozenset({State.CREATING}),
}


class StackState(StrEnum):
    """One stack's state inside a deployment (the deployment's own state machine is `State`; this one only says
    how far each region's stack got, so a run can resume)."""

    PENDING = "PENDING"  # recorded, never deployed
    DEPLOYING = "DEPLOYING"
    DEPLOYED = "DEPLOYED"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"


GLOBAL_REGION = "global"  # the `region` of a multi-region deployment's global layer stack

# States in which a command is running: if its lock's process is gone, the run ended without saying so.
RUNNING = frozenset({State.CREATING, State.DEPLOYING, State.SCALING, State.UPDATING, State.DELETING})


def byoc_home() -> Path:
    """$BYOC_HOME, else ~/.byoc."""
    configured = os.environ.get("BYOC_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".byoc"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), or None where it cannot be read.

    With the pid it identifies one process: a pid reused by a later process has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, started: str | None) -> bool:
    """True while the process that took a lock still runs (same pid and, where known, same start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if started is None:
        return True
    return process_start_time(pid) in (started, None)


@dataclass
class Record:
    """One deployment as the registry holds it."""

    name: str
    cloud: str
    region: str
    requested_region: str
    shape: str
    instance_type: str
    spec: dict[str, Any]
    state: State
    reason: str
    backend: str
    created_at: str
    updated_at: str
    outputs: dict[str, Any] = field(default_factory=dict)
    pending_operations: list[dict[str, Any]] = field(default_factory=list)
    stack_state: dict[str, Any] | None = None
    interrupted: bool = False
    stacks: list[StackRecord] = field(default_factory=list)  # the deployment's stacks, in its order

    @property
    def regions(self) -> list[str]:
        """Every region the deployment is placed in, the primary first (its one region for a registry row written
        before stacks were recorded)."""
        return [s.region for s in self.stacks if s.region != GLOBAL_REGION] or [self.region]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "placement": {
                "cloud": self.cloud,
                "region": self.region,
                "requested_region": self.requested_region,
                "regions": self.regions,
            },
            "shape": self.shape,
            "instance_type": self.instance_type,
            "backend": self.backend,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "interrupted": self.interrupted,
            "outputs": self.outputs,
            "pending_operations": self.pending_operations,
            "stacks": [s.as_dict() for s in self.stacks],
        }


@dataclass
class StackRecord:
    """One Pulumi stack of a deployment: a region's (or the global layer's, region "global")."""

    name: str  # the deployment's
    region: str
    stack: str
    position: int  # the deployment's order: the primary region 0, the global layer last
    state: StackState
    reason: str
    outputs: dict[str, Any]
    spec: dict[str, Any] | None  # the spec this stack last deployed (None: never)
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "stack": self.stack,
            "state": self.state.value,
            "reason": self.reason,
            "outputs": self.outputs,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Lock:
    name: str
    pid: int
    host: str
    started: str | None
    command: str
    acquired_at: str

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def alive(self) -> bool:
        """A lock of another host is always treated as alive: byoc cannot see its processes."""
        return not self.local or process_alive(self.pid, self.started)

    def describe(self) -> str:
        return f"`byoc {self.command}` (pid {self.pid} on {self.host}, since {self.acquired_at})"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    cloud TEXT NOT NULL,
    region TEXT NOT NULL,
    requested_region TEXT NOT NULL,
    shape TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    backend TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '{}',
    pending_operations TEXT NOT NULL DEFAULT '[]',
    stack_state TEXT,
    interrupted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, id);
CREATE TABLE IF NOT EXISTS stacks (
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    stack TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    spec TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, stack)
);
CREATE TABLE IF NOT EXISTS locks (
    name TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started TEXT,
    command TEXT NOT NULL,
    acquired_at TEXT NOT NULL
);
"""


SCHEMA_VERSION = 2
# what a deployment's state says of its one stack, for the rows the migration to version 2 writes
_STACK_STATE_OF = {
    State.DEPLOYED: StackState.DEPLOYED,
    State.FAILED: StackState.FAILED,
    State.DELETED: StackState.DELETED,
    State.SCALING: StackState.DEPLOYED,
    State.UPDATING: StackState.DEPLOYED,
    State.DEPLOYING: StackState.FAILED,
    State.DELETING: StackState.FAILED,
}


class Registry:
    """The SQLite registry under `home` (default: `byoc_home()`). Safe to use from several processes at once."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or byoc_home()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ByocError(
                "BYOC_HOME", f"cannot create {self.home}: {exc.strerror}", "set BYOC_HOME to a writable folder"
            ) from None
        self.path = self.home / "registry.db"
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:  # a corrupt or foreign file, or one this user cannot open
            raise ByocFailure(
                "BYOC_HOME",
                f"{self.path} cannot be used as byoc's registry ({exc})",
                "check its permissions; if it is damaged, move it aside: byoc starts a new one, and "
                "`byoc refresh NAME` re-reads each deployment's stack",
            ) from None

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Bring a registry an older byoc wrote to SCHEMA_VERSION (SQLite's user_version): version 1 had no
        `stacks`; each of its deployments had one stack, named as the deployment, in its one region."""
        with self._write() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version >= SCHEMA_VERSION:
                return
            if version < 2:
                for row in db.execute("SELECT * FROM deployments").fetchall():
                    state = _STACK_STATE_OF.get(State(row["state"]), StackState.PENDING)
                    db.execute(
                        "INSERT OR IGNORE INTO stacks (name, region, stack, position, state, reason, outputs, spec, "
                        "updated_at) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?)",
                        (
                            row["name"],
                            row["region"],
                            row["name"],
                            state.value,
                            row["reason"] if state is StackState.FAILED else "",
                            row["outputs"],
                            row["spec"] if state is StackState.DEPLOYED else None,
                            row["updated_at"],
                        ),
                    )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes SQLite's write lock at once (no two writers interleave)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- deployments -------------------------------------------------------------------------------------------
    def get(self, name: str) -> Record | None:
        row = self._db.execute("SELECT * FROM deployments WHERE name = ?", (name,)).fetchone()
        return _record(row, self.stacks(name)) if row else None

    def require(self, name: str) -> Record:
        record = self.get(name)
        if record is None:
            known = [r.name for r in self.deployments()]
            hint = f"known deployments: {', '.join(known)}" if known else "create it with `byoc up -f byoc.yaml`"
            raise ByocError("NAME", f"no deployment named {name!r} in {self.path}", hint)
        return record

    def deployments(self) -> list[Record]:
        rows = self._db.execute("SELECT * FROM deployments ORDER BY name").fetchall()
        return [_record(row, self.stacks(row["name"])) for row in rows]

    # -- stacks ------------------------------------------------------------------------------------------------
    def stacks(self, name: str) -> list[StackRecord]:
        """The deployment's stacks, in its order (regions from the primary, then the global layer)."""
        rows = self._db.execute("SELECT * FROM stacks WHERE name = ? ORDER BY position, stack", (name,)).fetchall()
        return [_stack(row) for row in rows]

    def plan_stacks(self, name: str, stacks: list[tuple[str, str]]) -> None:
        """Record the deployment's stacks as (region, stack name), in its order: a stack not yet known starts
        PENDING; a known one keeps its state; one no longer listed is dropped (a DELETED name used again)."""
        stamp = now()
        with self._write() as db:
            known = {r["stack"] for r in db.execute("SELECT stack FROM stacks WHERE name = ?", (name,))}
            wanted = {stack for _, stack in stacks}
            for stale in known - wanted:
                db.execute("DELETE FROM stacks WHERE name = ? AND stack = ?", (name, stale))
            for position, (region, stack) in enumerate(stacks):
                db.execute(
                    "INSERT INTO stacks (name, region, stack, position, state, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (name, stack) DO UPDATE SET position = excluded.position, state = CASE state WHEN ? "
                    "THEN ? ELSE state END",
                    (
                        name,
                        region,
                        stack,
                        position,
                        StackState.PENDING.value,
                        stamp,
                        StackState.DELETED.value,
                        StackState.PENDING.value,
                    ),
                )

    def set_stack(
        self,
        name: str,
        stack: str,
        state: StackState,
        reason: str = "",
        *,
        outputs: dict[str, Any] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        """Move one stack to `state` (with the error that stopped it, or ""), and set its outputs and deployed spec
        where given; an event names the stack (for a deployment of several)."""
        columns = ["state = ?", "reason = ?", "updated_at = ?"]
        values: list[Any] = [state.value, reason, now()]
        if outputs is not None:
            columns.append("outputs = ?")
            values.append(json.dumps(outputs))
        if spec is not None:
            columns.append("spec = ?")
            values.append(json.dumps(spec))
        with self._write() as db:
            row = db.execute("SELECT region, state FROM stacks WHERE name = ? AND stack = ?", (name, stack)).fetchone()
            if row is None:
                raise ValueError(f"{name} has no stack {stack}")
            db.execute(f"UPDATE stacks SET {', '.join(columns)} WHERE name = ? AND stack = ?", (*values, name, stack))
            count = db.execute("SELECT COUNT(*) FROM stacks WHERE name = ?", (name,)).fetchone()[0]
            if row["state"] != state.value and count > 1:  # one stack: the deployment's own events say it all
                message = f"{row['region']} ({stack}): {row['state']} -> {state.value}" + (
                    f": {reason}" if reason else ""
                )
                _event(db, name, "stack", None, message, {"region": row["region"], "stack": stack})

    def create(
        self,
        *,
        name: str,
        cloud: str,
        region: str,
        requested_region: str,
        shape: str,
        instance_type: str,
        spec: dict[str, Any],
        backend: str,
    ) -> Record:
        """Record a new deployment in CREATING (or bring a DELETED name back to CREATING)."""
        with self._write() as db:
            row = db.execute("SELECT state FROM deployments WHERE name = ?", (name,)).fetchone()
            current = State(row["state"]) if row else None
            check_transition(name, current, State.CREATING)
            stamp = now()
            db.execute(
                "INSERT OR REPLACE INTO deployments (name, cloud, region, requested_region, shape, instance_type, "
                "spec, state, reason, backend, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?)",
                (
                    name,
                    cloud,
                    region,
                    requested_region,
                    shape,
                    instance_type,
                    json.dumps(spec),
                    State.CREATING.value,
                    backend,
                    stamp,
                    stamp,
                ),
            )
            _event(db, name, "state", State.CREATING, f"created: {cloud} {region}, {shape} on {instance_type}")
        return self.require(name)

    def transition(self, name: str, target: State, reason: str = "", **data: Any) -> Record:
        """Move a deployment to `target`; raises ByocError for a move TRANSITIONS does not allow."""
        with self._write() as db:
            row = db.execute("SELECT state FROM deployments WHERE name = ?", (name,)).fetchone()
            current = State(row["state"]) if row else None
            check_transition(name, current, target)
            db.execute(
                "UPDATE deployments SET state = ?, reason = ?, updated_at = ? WHERE name = ?",
                (target.value, reason, now(), name),
            )
            message = f"{current.value if current else '-'} -> {target.value}" + (f": {reason}" if reason else "")
            _event(db, name, "state", target, message, data)
        return self.require(name)

    def update(self, name: str, **fields: Any) -> None:
        """Set stored fields other than the state: spec, outputs, pending_operations, stack_state, interrupted."""
        allowed = {"spec", "outputs", "pending_operations", "stack_state", "interrupted", "backend"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        columns = []
        values: list[Any] = []
        for key, value in fields.items():
            columns.append(f"{key} = ?")
            values.append(int(value) if key == "interrupted" else (value if value is None else json.dumps(value)))
        with self._write() as db:
            db.execute(
                f"UPDATE deployments SET {', '.join(columns)}, updated_at = ? WHERE name = ?",
                (*values, now(), name),
            )

    # -- events ------------------------------------------------------------------------------------------------
    def record_event(self, name: str, kind: str, message: str, **data: Any) -> None:
        with self._write() as db:
            _event(db, name, kind, None, message, data)

    def events(self, name: str, last: int | None = None) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM events WHERE name = ? ORDER BY id", (name,)).fetchall()
        if last is not None:
            rows = rows[-last:]
        return [
            {
                "at": r["at"],
                "kind": r["kind"],
                "state": r["state"],
                "message": r["message"],
                **({"data": json.loads(r["data"])} if r["data"] != "{}" else {}),
            }
            for r in rows
        ]

    # -- locks -------------------------------------------------------------------------------------------------
    def lock_of(self, name: str) -> Lock | None:
        row = self._db.execute("SELECT * FROM locks WHERE name = ?", (name,)).fetchone()
        return _lock(row) if row else None

    def acquire(self, name: str, command: str) -> Lock:
        """Take the deployment's lock for this process, recovering one left by a dead local process.

        Raises ByocError when a live process (or a process on another host) holds it.
        """
        pid = os.getpid()
        mine = Lock(name, pid, socket.gethostname(), process_start_time(pid), command, now())
        with self._write() as db:
            row = db.execute("SELECT * FROM locks WHERE name = ?", (name,)).fetchone()
            if row is not None:
                held = _lock(row)
                if held.alive:
                    raise ByocError(
                        "NAME",
                        f"{held.describe()} is running on {name}; two commands on one deployment at once are refused",
                        "wait for it to finish"
                        + ("" if held.local else f", or stop it on {held.host}")
                        + "; `byoc status` shows its progress",
                    )
                _recover(db, held)
            db.execute(
                "INSERT INTO locks (name, pid, host, started, command, acquired_at) VALUES (?, ?, ?, ?, ?, ?)",
                (mine.name, mine.pid, mine.host, mine.started, mine.command, mine.acquired_at),
            )
        return mine

    def release(self, lock: Lock) -> None:
        with self._write() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND pid = ? AND host = ?", (lock.name, lock.pid, lock.host))

    @contextmanager
    def locked(self, name: str, command: str) -> Iterator[Lock]:
        lock = self.acquire(name, command)
        try:
            yield lock
        finally:
            self.release(lock)

    def recover_stale(self, name: str | None = None) -> list[str]:
        """Clear locks of dead local processes (ending their runs FAILED); returns the deployments recovered."""
        recovered = []
        with self._write() as db:
            query = "SELECT * FROM locks" + (" WHERE name = ?" if name else "")
            for row in db.execute(query, (name,) if name else ()).fetchall():
                held = _lock(row)
                if not held.alive:
                    _recover(db, held)
                    recovered.append(held.name)
        return recovered


def check_transition(name: str, current: State | None, target: State) -> None:
    """Raises ByocError (naming the allowed moves and a way forward) unless TRANSITIONS allows current -> target."""
    if target in TRANSITIONS[current]:
        return
    now_state = current.value if current else "not created"
    legal = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none"
    hints = {
        State.DEPLOYING: f"refresh or destroy it first (`byoc refresh {name}`, `byoc destroy {name}`)",
        State.SCALING: f"scale a DEPLOYED deployment; `byoc up` {name} first",
        State.UPDATING: f"update a DEPLOYED or FAILED deployment; `byoc up` {name} first",
        State.DELETING: "it is already gone" if current is State.DELETED else "wait for the running command",
        State.CREATING: f"the name is taken; use `byoc update {name}` or another name",
    }
    raise ByocError(
        "NAME",
        f"{name} is {now_state}; it cannot go to {target.value} from there (allowed: {legal})",
        hints.get(target, "see `byoc status " + name + "`"),
    )


def _event(
    db: sqlite3.Connection,
    name: str,
    kind: str,
    state: State | None,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    db.execute(
        "INSERT INTO events (name, at, kind, state, message, data) VALUES (?, ?, ?, ?, ?, ?)",
        (name, now(), kind, state.value if state else None, message, json.dumps(data or {}, default=str)),
    )


def _recover(db: sqlite3.Connection, held: Lock) -> None:
    """A dead process's lock: remove it and end its run FAILED (never leave a deployment stuck in a running state)."""
    db.execute("DELETE FROM locks WHERE name = ?", (held.name,))
    row = db.execute("SELECT state FROM deployments WHERE name = ?", (held.name,)).fetchone()
    reason = f"the process running {held.describe()} ended without finishing (killed or crashed)"
    _event(db, held.name, "lock", None, f"recovered the lock of a dead process: {reason}")
    if row is not None and State(row["state"]) in RUNNING:
        db.execute(
            "UPDATE deployments SET state = ?, reason = ?, updated_at = ? WHERE name = ?",
            (State.FAILED.value, reason, now(), held.name),
        )
        _event(db, held.name, "state", State.FAILED, f"{row['state']} -> FAILED: {reason}")


def _stack(row: sqlite3.Row) -> StackRecord:
    return StackRecord(
        name=row["name"],
        region=row["region"],
        stack=row["stack"],
        position=row["position"],
        state=StackState(row["state"]),
        reason=row["reason"],
        outputs=json.loads(row["outputs"]),
        spec=json.loads(row["spec"]) if row["spec"] else None,
        updated_at=row["updated_at"],
    )


def _record(row: sqlite3.Row, stacks: list[StackRecord] | None = None) -> Record:
    return Record(
        name=row["name"],
        cloud=row["cloud"],
        region=row["region"],
        requested_region=row["requested_region"],
        shape=row["shape"],
        instance_type=row["instance_type"],
        spec=json.loads(row["spec"]),
        state=State(row["state"]),
        reason=row["reason"],
        backend=row["backend"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        outputs=json.loads(row["outputs"]),
        pending_operations=json.loads(row["pending_operations"]),
        stack_state=json.loads(row["stack_state"]) if row["stack_state"] else None,
        interrupted=bool(row["interrupted"]),
        stacks=stacks or [],
    )


def _lock(row: sqlite3.Row) -> Lock:
    return Lock(row["name"], row["pid"], row["host"], row["started"], row["command"], row["acquired_at"])
