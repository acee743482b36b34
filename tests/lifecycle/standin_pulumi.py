"""A STAND-IN for the `pulumi` CLI, for tests only: it checks the arguments and the flow byoc's Automation API layer
produces, and nothing else. It creates no resources and runs no program (no Pulumi CLI can be installed here).

Every call is appended to $STANDIN_DIR/calls.jsonl (argv, cwd, whether a passphrase was in the environment). The
state of each stack lives in $STANDIN_DIR/stacks/<name>.json in the shape of `pulumi stack export`. Behaviour of
`up` comes from $STANDIN_DIR/mode: "ok" (three resources created), "fail" (a resource fails), or "hang" (one
resource starts, then waits for SIGINT as the real CLI does and stops with that create left pending); the stacks
listed in $STANDIN_DIR/fail_stacks (one a line) fail their `up` and `destroy` whatever the mode (one region of a
multi-region deployment failing).
Engine events are written to --event-log in the JSON-lines shape the real CLI writes (sdk/go/common/apitype).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

HOME = Path(os.environ["STANDIN_DIR"])
URN = "urn:pulumi:{stack}::byoc-aws::{type}::{name}"
RESOURCES = [
    ("pulumi:pulumi:Stack", "byoc-aws-{stack}"),
    ("aws:kms/key:Key", "{stack}-platform"),
    ("aws:eks/cluster:Cluster", "{stack}-cluster"),
]


def option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


class EventLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.sequence = 0

    def write(self, **event: object) -> None:
        if not self.path:
            return
        self.sequence += 1
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"sequence": self.sequence, "timestamp": int(time.time()), **event}) + "\n")
            handle.flush()

    def resource(self, kind: str, op: str, stack: str, type_: str, name: str) -> None:
        urn = URN.format(stack=stack, type=type_, name=name.format(stack=stack))
        self.write(**{kind: {"metadata": {"op": op, "urn": urn, "type": type_, "provider": ""}}})


def state_path(stack: str) -> Path:
    return HOME / "stacks" / f"{stack}.json"


def load(stack: str) -> dict:
    return json.loads(state_path(stack).read_text())


def save(stack: str, state: dict) -> None:
    state_path(stack).write_text(json.dumps(state))


def log_call(args: list[str]) -> None:
    record = {
        "argv": args,
        "cwd": os.getcwd(),
        "passphrase": "PULUMI_CONFIG_PASSPHRASE" in os.environ,
        "at": time.time(),
    }
    with open(HOME / "calls.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


def stack_command(args: list[str], command: list[str], stack: str) -> int:
    if command == ["stack", "select"]:
        if state_path(stack).exists():
            return 0
        print(f"error: no stack named '{stack}' found", file=sys.stderr)
        return 255
    if command == ["stack", "init"]:
        (HOME / "stacks").mkdir(exist_ok=True)
        save(args[args.index("init") + 1], {"version": 3, "deployment": {"resources": [], "pending_operations": []}})
    elif command == ["stack", "output"]:
        outputs = load(stack).get("outputs", {})
        if outputs and (HOME / "mode").exists() and (HOME / "mode").read_text().strip() == "garbage":
            # a CLI answer nobody expected, once an `up` has made outputs (before it, byoc reads the SDK versions
            # recorded in them: a new stack has none)
            print("{this is not JSON")
            return 0
        if "--show-secrets" not in args:
            outputs = {k: ("[secret]" if k == "kubeconfig" else v) for k, v in outputs.items()}
        print(json.dumps(outputs))
    elif command == ["stack", "history"]:
        entry = {
            "version": 1,
            "kind": "update",
            "startTime": "2026-11-29T00:00:00.000Z",
            "endTime": "2026-11-29T00:00:01.000Z",
            "message": "",
            "environment": {},
            "config": {},
            "result": "succeeded",
            "resourceChanges": {},
        }
        print(json.dumps([entry]))
    elif command == ["stack", "export"]:
        print(json.dumps(load(stack)))
    return 0


def hang(events: EventLog, stack: str, state: dict) -> int:
    """Like the real CLI on Ctrl+C: the create in flight stays pending in the state, and the update is canceled."""
    type_, name = RESOURCES[2]
    events.resource("resourcePreEvent", "create", stack, type_, name)
    urn = URN.format(stack=stack, type=type_, name=name.format(stack=stack))
    state["deployment"]["pending_operations"] = [{"resource": {"urn": urn, "type": type_}, "type": "creating"}]
    save(stack, state)
    stopped: list[int] = []
    signal.signal(signal.SIGINT, lambda *_: stopped.append(1))
    (HOME / "running").write_text(str(os.getpid()))
    # "hang" stops on the first SIGINT; "stubborn" (an operation that cannot stop yet) only on the second
    wanted = 2 if (HOME / "mode").read_text().strip() == "stubborn" else 1
    deadline = time.time() + 60
    while len(stopped) < wanted and time.time() < deadline:
        time.sleep(0.05)
        if stopped:
            (HOME / "signals").write_text(str(len(stopped)))
    events.write(diagnosticEvent={"message": "update canceled", "severity": "error", "color": "never"})
    print("error: update canceled", file=sys.stderr)
    return 255


def failing(stack: str) -> bool:
    listed = HOME / "fail_stacks"
    return listed.exists() and stack in listed.read_text().split()


def up(events: EventLog, stack: str, mode: str) -> int:
    events.write(preludeEvent={"config": {}})
    state = load(stack)
    if mode in ("hang", "stubborn"):
        return hang(events, stack, state)
    for type_, name in RESOURCES:
        events.resource("resourcePreEvent", "create", stack, type_, name)
        if (mode == "fail" or failing(stack)) and type_ == "aws:eks/cluster:Cluster":
            urn = URN.format(stack=stack, type=type_, name=name.format(stack=stack))
            meta = {"op": "create", "urn": urn, "type": type_, "provider": ""}
            events.write(resOpFailedEvent={"metadata": meta, "status": 1, "steps": 1})
            print("error: creating EKS Cluster: AccessDeniedException", file=sys.stderr)
            return 255
        events.resource("resOutputsEvent", "create", stack, type_, name)
    events.write(summaryEvent={"resourceChanges": {"create": len(RESOURCES)}, "durationSeconds": 1})
    state["deployment"]["resources"] = [
        {"urn": URN.format(stack=stack, type=t, name=n.format(stack=stack)), "type": t} for t, n in RESOURCES
    ]
    state["outputs"] = {
        "cluster_name": f"byoc-{stack}",
        "kubeconfig": "apiVersion: v1\nkind: Config\n",
        "gpu_node_pool": "byoc-gpu",
        "artifact": "s3://bucket/artifacts/x",
        # what a global layer exports (stacks/aws/global_layer.py): the one private name
        **({"entry_name": f"{stack.removesuffix('-global')}.byoc.internal"} if stack.endswith("-global") else {}),
    }
    save(stack, state)
    return 0


def other(args: list[str], events: EventLog, command: str, stack: str, mode: str) -> int:
    """refresh, destroy, preview (mode "replace": the preview replaces the EKS cluster)."""
    state = load(stack)
    op = {"refresh": "refresh", "destroy": "delete", "preview": "update"}[command]
    if command == "destroy" and failing(stack):
        print("error: deleting EKS Cluster: ResourceInUseException", file=sys.stderr)
        return 255
    for type_, name in RESOURCES:
        this = "replace" if command == "preview" and mode == "replace" and type_.startswith("aws:eks") else op
        events.resource("resourcePreEvent", this, stack, type_, name)
        if command != "preview":
            events.resource("resOutputsEvent", this, stack, type_, name)
    events.write(summaryEvent={"resourceChanges": {op: len(RESOURCES)}, "durationSeconds": 1})
    if command == "refresh" and "--clear-pending-creates" in args:
        state["deployment"]["pending_operations"] = []
    if command == "destroy":
        state["deployment"]["resources"] = []
        state["outputs"] = {}
    save(stack, state)
    return 0


def main(args: list[str]) -> int:
    log_call(args)
    stack = option(args, "--stack") or ""
    events = EventLog(option(args, "--event-log"))
    mode = (HOME / "mode").read_text().strip() if (HOME / "mode").exists() else "ok"
    command = [a for a in args if not a.startswith("-")][:2]
    if command[:1] == ["version"]:
        # 3.200: the Automation API then reads engine events from an --event-log file (newer CLIs stream them over
        # gRPC; the events are the same)
        print("v3.200.0")
        return 0
    if command[:1] == ["stack"]:
        return stack_command(args, command, stack)
    if command[:1] == ["up"]:
        return up(events, stack, mode)
    if command[:1] and command[0] in ("refresh", "destroy", "preview"):
        return other(args, events, command[0], stack, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
