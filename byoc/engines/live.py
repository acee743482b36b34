"""Run a cloud's Pulumi program for real through Pulumi's Automation API: the same program function `byoc plan`
records offline, one stack per deployment.

Needs the `pulumi` CLI (pulumi.com/docs/install). State lives in a backend chosen per deployment: `file://` under
BYOC_HOME by default (no account needed; secrets encrypted with a passphrase from PULUMI_CONFIG_PASSPHRASE or
PULUMI_CONFIG_PASSPHRASE_FILE), or `s3://` / `gs://` for teams (Pulumi locks the stack there; secrets with
`awskms://` or `gcpkms://`). Engines never touch the deployment registry: byoc.lifecycle does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from byoc.clouds import get_cloud
from byoc.engines import Program
from byoc.errors import ByocError, ByocFailure
from byoc.pulumi_sdks import STACK_OUTPUT, installed, sdks_for
from byoc.resolve import Deployment

if TYPE_CHECKING:
    from pulumi.automation import EngineEvent, Stack

Operation = Literal["preview", "up", "refresh", "destroy"]
EventSink = Callable[["EngineEvent"], None]

BACKEND_SCHEMES = ("file://", "s3://", "gs://")
SECRETS_SCHEMES = ("passphrase", "awskms://", "gcpkms://")
PASSPHRASE_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")
# In the environment of every process the Automation API starts for a stack: the stack's work folder.
RUN_MARKER = "BYOC_STACK_WORK_DIR"
INSTALL_HINT = (
    "install the Pulumi CLI (curl -fsSL https://get.pulumi.com | sh, or see pulumi.com/docs/install) and put "
    "`pulumi` on PATH; `byoc plan` shows the same resources offline, with no CLI and no credentials"
)


def require_cli(command: str) -> str:
    """The path of the `pulumi` CLI; ByocError (exit 2) with how to install it when there is none."""
    found = shutil.which("pulumi")
    if found is None:
        raise ByocError(command, "the Pulumi CLI is not installed, and `byoc " + command + "` drives it", INSTALL_HINT)
    return found


@dataclass(frozen=True)
class Backend:
    """Where a deployment's Pulumi state lives and how its secrets are encrypted."""

    url: str
    secrets_provider: str

    @property
    def local_path(self) -> Path | None:
        return Path(self.url.removeprefix("file://")) if self.url.startswith("file://") else None

    @classmethod
    def choose(cls, home: Path, url: str | None, secrets_provider: str | None) -> Backend:
        """Validate --backend / --secrets-provider (ByocError naming the flag); the file backend under `home`
        with a passphrase by default."""
        url = url or f"file://{home / 'state'}"
        if not url.startswith(BACKEND_SCHEMES):
            raise ByocError(
                "--backend",
                f"{url!r} is not a backend byoc supports",
                "use file://PATH (the default, under BYOC_HOME), s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]",
            )
        local = url.startswith("file://")
        provider = secrets_provider or ("passphrase" if local else None)
        if provider is None:
            raise ByocError(
                "--secrets-provider",
                f"a cloud backend ({url}) needs a secrets provider that does not depend on this machine",
                "pass --secrets-provider awskms://alias/NAME?region=REGION or gcpkms://projects/P/locations/L/"
                "keyRings/R/cryptoKeys/K",
            )
        if not provider.startswith(SECRETS_SCHEMES):
            raise ByocError(
                "--secrets-provider",
                f"{provider!r} is not a secrets provider byoc supports",
                "use passphrase, awskms://... or gcpkms://...",
            )
        if provider == "passphrase" and not any(os.environ.get(v) for v in PASSPHRASE_VARIABLES):
            raise ByocError(
                "PULUMI_CONFIG_PASSPHRASE",
                "the stack's secrets are encrypted with a passphrase, and none is set",
                "export PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE), the same on every run; or use "
                "--secrets-provider awskms://...",
            )
        return cls(url=url, secrets_provider=provider)


@dataclass(frozen=True)
class PreviewStep:
    """One step of a preview: Pulumi's op (same, create, update, delete, replace, create-replacement, ...)."""

    op: str
    type: str
    urn: str
    diffs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "type": self.type, "name": self.name, "urn": self.urn, "diffs": list(self.diffs)}


REPLACING_OPS = frozenset({"replace", "create-replacement", "delete-replaced"})


def stack_program(deployment: Deployment, program: Program, sdk_versions: dict[str, str | None]) -> Callable[[], None]:
    """The inline program the Automation API runs: the cloud's program, its outputs exported, and the Pulumi SDK
    versions it ran on as one more output (STACK_OUTPUT), which the next command on the stack compares with its
    own (byoc.pulumi_sdks)."""

    def inline() -> None:
        import pulumi

        for name, value in program(deployment).items():
            pulumi.export(name, value)
        pulumi.export(STACK_OUTPUT, dict(sdk_versions))

    return inline


class LiveStack:
    """One stack of a deployment in its backend: the deployment's own (one region), one region's, or a multi-region
    deployment's global layer (`stack_name`, default the deployment's name). Every method raises ByocFailure
    (exit 1) when Pulumi fails."""

    def __init__(
        self,
        deployment: Deployment,
        program: Program,
        backend: Backend,
        work_dir: Path,
        stack_name: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.name = stack_name or deployment.name
        self.program = program
        self.backend = backend
        self.work_dir = work_dir
        self.project = f"byoc-{deployment.cloud}"
        self._stack: Stack | None = None
        self.secret_outputs: dict[str, Any] = {}  # the secret values of the last `up`'s outputs (the kubeconfig)
        # the Pulumi SDKs the program runs on, as installed; `up` records them in the stack (byoc.pulumi_sdks)
        self.sdk_versions = installed(sdks_for(get_cloud(deployment.cloud).provider_sdk))

    # -- the stack ---------------------------------------------------------------------------------------------
    def stack(self) -> Stack:
        if self._stack is not None:
            return self._stack
        from pulumi import automation as auto

        deployment = self.deployment
        inline = stack_program(deployment, self.program, self.sdk_versions)
        if self.backend.local_path is not None:
            self.backend.local_path.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        provider = self.backend.secrets_provider
        options = auto.LocalWorkspaceOptions(
            work_dir=str(self.work_dir),
            # marks the `pulumi` CLI and the plugins it starts: a byoc killed with SIGKILL leaves them running, and
            # `byoc status` / `byoc unlock` find them by this (pulumi_processes)
            env_vars={RUN_MARKER: str(self.work_dir.resolve())},
            project_settings=auto.ProjectSettings(
                name=self.project, runtime="python", backend=auto.ProjectBackend(url=self.backend.url)
            ),
            secrets_provider=None if provider == "passphrase" else provider,
        )
        try:
            self._stack = auto.create_or_select_stack(
                stack_name=self.name, project_name=self.project, program=inline, opts=options
            )
        except FileNotFoundError:
            require_cli("up")
            raise
        except auto.errors.CommandError as exc:
            raise ByocFailure(
                "--backend", f"pulumi could not open stack {self.name} in {self.backend.url}: {_short(exc)}", ""
            ) from None
        return self._stack

    # -- operations --------------------------------------------------------------------------------------------
    def preview(self, on_event: EventSink, diff: bool = False) -> dict[str, Any]:
        """{"changes": {op: count}, "steps": [PreviewStep.as_dict()...]} for what `up` would do."""
        steps: list[PreviewStep] = []

        def collect(event: EngineEvent) -> None:
            pre = event.resource_pre_event
            if pre is not None and pre.metadata is not None:
                meta = pre.metadata
                steps.append(PreviewStep(str(meta.op.value), meta.type, meta.urn, tuple(meta.diffs or ())))
            on_event(event)

        result = self._run("preview", lambda s: s.preview(on_event=collect, diff=diff or None))
        changes = {str(k): int(v) for k, v in (result.change_summary or {}).items()}
        return {"changes": changes, "steps": [s.as_dict() for s in steps]}

    def up(self, on_event: EventSink) -> dict[str, Any]:
        """Create or update; returns the stack outputs (secrets shown as "[secret]")."""
        result = self._run("up", lambda s: s.up(on_event=on_event))
        self.secret_outputs = {k: v.value for k, v in result.outputs.items() if v.secret}
        return {k: ("[secret]" if v.secret else v.value) for k, v in result.outputs.items()}

    def refresh(self, on_event: EventSink, clear_pending_creates: bool = False) -> dict[str, int]:
        """Adopt the cloud's view into the state (a resource deleted by hand drops out); returns the changes."""
        result = self._run(
            "refresh",
            lambda s: s.refresh(on_event=on_event, clear_pending_creates=clear_pending_creates or None),
        )
        return {str(k): int(v) for k, v in (result.summary.resource_changes or {}).items()}

    def destroy(self, on_event: EventSink) -> dict[str, int]:
        result = self._run("destroy", lambda s: s.destroy(on_event=on_event))
        return {str(k): int(v) for k, v in (result.summary.resource_changes or {}).items()}

    def outputs(self) -> dict[str, Any]:
        values = self._run("refresh", lambda s: s.outputs())
        return {k: ("[secret]" if v.secret else v.value) for k, v in values.items()}

    def recorded_sdks(self) -> Any:
        """The SDK versions the last `up` recorded in the stack's outputs (None: none recorded, a new stack)."""
        values = self._run("refresh", lambda s: s.outputs())
        recorded = values.get(STACK_OUTPUT)
        return recorded.value if recorded is not None else None

    def export_state(self) -> dict[str, Any]:
        """What the stack's checkpoint (`pulumi stack export`) knows, without its secrets or inputs:
        {"version": 3, "deployment": {"resources": [{"urn", "type", "id"}], "pending_operations": [...]}}."""
        exported = self._run("refresh", lambda s: s.export_stack())
        deployment = dict(exported.deployment or {})
        resources = [
            {"urn": r.get("urn", ""), "type": r.get("type", ""), "id": r.get("id", "")}
            for r in deployment.get("resources") or []
        ]
        pending = [
            {
                "type": op.get("type", ""),
                "resource": {k: (op.get("resource") or {}).get(k, "") for k in ("urn", "type")},
            }
            for op in deployment.get("pending_operations") or []
        ]
        return {"version": exported.version, "deployment": {"resources": resources, "pending_operations": pending}}

    def _run(self, operation: Operation, call: Callable[[Stack], Any]) -> Any:
        from pulumi import automation as auto

        stack = self.stack()
        try:
            return call(stack)
        except auto.errors.ConcurrentUpdateError as exc:
            raise ByocFailure(
                operation,
                f"the stack {self.name} is locked by another Pulumi run: {_short(exc)}",
                "wait for that run; if its process was killed on this machine, "
                f"`byoc unlock {self.deployment.deployment_name}`",
            ) from None
        except auto.errors.CommandError as exc:
            raise ByocFailure(operation, f"pulumi {operation} failed: {_short(exc)}", "see the events above") from None

    # -- Pulumi's own stack lock (file backend) ----------------------------------------------------------------
    def lock_files(self) -> list[Path]:
        """Lock files of this stack in a file:// backend: .pulumi/locks/<org>/<project>/<stack>/<id>.json."""
        root = self.backend.local_path
        if root is None:
            return []
        locks = root / ".pulumi" / "locks"
        return sorted(p for p in locks.glob(f"*/{self.project}/{self.name}/*.json"))


@dataclass(frozen=True)
class PulumiProcess:
    """A process byoc started for a stack (the `pulumi` CLI, its plugins), found by its RUN_MARKER."""

    pid: int
    parent: int
    command: str

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "parent": self.parent, "command": self.command}


def pulumi_processes(work_dir: Path, proc: Path = Path("/proc")) -> list[PulumiProcess]:
    """The live processes of this user that carry the stack's RUN_MARKER (Linux /proc; elsewhere none are found)."""
    wanted = f"{RUN_MARKER}={work_dir.resolve()}".encode()
    found = []
    for entry in proc.glob("[0-9]*"):
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or another user's
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z":  # a zombie runs nothing
            continue
        command = " ".join(a.decode(errors="replace") for a in argv if a)[:200]
        found.append(PulumiProcess(int(entry.name), int(parent), command))
    return sorted(found, key=lambda p: p.pid)


def pending_operations(state: dict[str, Any]) -> list[dict[str, str]]:
    """The operations a stopped run left in flight: [{"type": "creating", "urn": ..., "resource_type": ...}]."""
    pending = (state.get("deployment") or {}).get("pending_operations") or []
    return [
        {
            "type": str(op.get("type", "")),
            "urn": str((op.get("resource") or {}).get("urn", "")),
            "resource_type": str((op.get("resource") or {}).get("type", "")),
        }
        for op in pending
    ]


@dataclass(frozen=True)
class PulumiLock:
    """The content Pulumi writes in a file backend's lock (pkg/backend/diy/lock.go: pid, username, hostname,
    timestamp)."""

    path: Path
    pid: int
    host: str
    username: str
    timestamp: str

    @classmethod
    def read(cls, path: Path) -> PulumiLock:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return cls(
            path=path,
            pid=int(data.get("pid", 0) or 0),
            host=str(data.get("hostname", "")),
            username=str(data.get("username", "")),
            timestamp=str(data.get("timestamp", "")),
        )

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()


def _short(exc: Exception) -> str:
    """The useful line of a CommandError (it holds Pulumi's whole stdout and stderr): the first `error:` line, else
    the last line of stderr."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "error: " in line:
            return line.split("error: ", 1)[1].strip()[:500]
    stderr = text.split("stderr:", 1)[1] if "stderr:" in text else text
    tail = [line.strip() for line in stderr.splitlines() if line.strip()]
    return tail[-1][:500] if tail else type(exc).__name__
