"""The lifecycle of a deployment: `byoc up / preview / refresh / status / scale / update / destroy / unlock`.

The CLI calls this module and nothing else for them. It owns the deployment registry (byoc.registry): it takes the
deployment's lock, runs preflight through the cloud's interface (byoc.clouds), runs the live engine
(byoc.engines.live, Pulumi's Automation API), feeds a progress view with the engine's events, and records every
state change and event. Engines and clouds never touch the registry.

What a failure leaves: the deployment FAILED with the reason, the stack's state exported into the registry and the
operations Pulumi left pending listed; `up`/`update`/`scale`/`destroy` refuse to run over pending operations until
`byoc refresh NAME` has reconciled them. A first SIGINT/SIGTERM lets Pulumi stop gracefully and records the run as
interrupted; a second one forces it (operations may be left pending).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from byoc.clouds import Feature, get_cloud
from byoc.clouds.checks import CapacityNeed, PreflightReport, SweepTarget
from byoc.engines.offline import check_renders
from byoc.errors import ByocError, ByocFailure, ByocInterrupted
from byoc.interrupts import InterruptGuard
from byoc.names import resource_name
from byoc.registry import RUNNING, Record, Registry, State, check_transition, process_alive
from byoc.resolve import Deployment, resolve
from byoc.spec import Spec, build_spec
from byoc.teardown import ClusterFactory, Teardown, Waits, state_resources

if TYPE_CHECKING:
    from byoc.cluster_api import ClusterApi
    from byoc.engines.live import Backend, LiveStack
    from byoc.progress import ProgressView

PLACEMENT_MESSAGE = "placement cannot change after creation; destroy and recreate it, or use a new name"


def capacity_need(deployment: Deployment) -> CapacityNeed:
    """Instances at the deployment's peak: every replica at max_replicas plus the model build Job (which runs on
    the same shape), `replicas_per_node` to an instance; the same count stacks/aws/capacity.gpu_limit sizes the
    NodePool for."""
    placement = deployment.placement
    # the warm pool's placeholders hold nodes of their own (cold_start.warm_pool, stacks/k8s/warm_pool.py)
    warm = deployment.caches.warm_pool.placeholders if deployment.caches is not None else 0
    pods = deployment.autoscaling.max_replicas + 1 + warm
    instances = math.ceil(pods / placement.replicas_per_node)
    return CapacityNeed(
        region=placement.region,
        instance_type=placement.instance_type,
        instances=instances,
        purchase_option="spot" if deployment.capacity == "spot" else "on-demand",
        why=f"max_replicas {deployment.autoscaling.max_replicas} + the model build Job"
        + (f" + {warm} warm-pool placeholder(s)" if warm else "")
        + f", {placement.replicas_per_node} replica(s) per instance",
        deployment=deployment.name,
    )


def preflight(deployment: Deployment) -> PreflightReport:
    """The cloud's preflight for the deployment's peak capacity (`byoc preflight`, and the first step of `up`)."""
    return get_cloud(deployment.cloud).preflight(capacity_need(deployment))


def planned_resources(deployment: Deployment) -> int | None:
    """The resource count of the offline plan of the same program (+1, the stack itself): what `up` counts to."""
    from byoc.engines import program_for
    from byoc.engines.offline import run_offline

    program = program_for(deployment)
    try:
        return len(run_offline(deployment, program).resources) + 1 if program else None
    except Exception:  # a total is a nicety; never fail a deployment over it
        return None


def stored_spec(spec: Spec) -> dict[str, Any]:
    """The spec as the registry keeps it: only what the user set (defaults stay defaults of the byoc reading it)."""
    return spec.model_dump(mode="json", exclude_unset=True)


def check_placement(record: Record | None, deployment: Deployment) -> None:
    """Placement is immutable: raises ByocError (exit 2) when a live deployment of the name sits elsewhere."""
    if record is None or record.state is State.DELETED:
        return
    if record.cloud != deployment.cloud:
        raise ByocError(
            "cloud", f"{record.name} runs on {record.cloud}, not {deployment.cloud}: {PLACEMENT_MESSAGE}", ""
        )
    if record.region != deployment.region:
        raise ByocError(
            "region", f"{record.name} runs in {record.region}, not {deployment.region}: {PLACEMENT_MESSAGE}", ""
        )


# -- options -----------------------------------------------------------------------------------------------------
@dataclass
class LiveOptions:
    backend: str | None = None
    secrets_provider: str | None = None
    yes: bool = False
    upgrade_providers: bool = False  # `up` may move the stack to the installed Pulumi SDKs (byoc.pulumi_sdks)


Confirm = Callable[[str], bool]


def kubectl_cluster(record: Record) -> ClusterApi:
    """The deployment's cluster through kubectl and the kubeconfig `byoc up` saved; ClusterUnreachable if none."""
    from byoc.cluster_api import Kubectl

    return Kubectl.for_kubeconfig(record.outputs.get("kubeconfig"))


@dataclass
class Lifecycle:
    registry: Registry = field(default_factory=Registry)
    view: ProgressView | None = None
    confirm: Confirm = lambda _question: False
    cluster_for: ClusterFactory = kubectl_cluster
    waits: Waits = field(default_factory=Waits)
    sweep_options: dict[str, Any] = field(default_factory=dict)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.view is None:
            from byoc.progress import Silent

            self.view = Silent()

    @property
    def _view(self) -> ProgressView:
        assert self.view is not None
        return self.view

    def _teardown(self) -> Teardown:
        return Teardown(self.cluster_for, self._view.message, self.waits, self.sleep)

    # -- shared steps --------------------------------------------------------------------------------------------
    def _program(self, deployment: Deployment) -> Any:
        from byoc.engines import program_for

        get_cloud(deployment.cloud).check_features([Feature.STACK], "cloud")
        program = program_for(deployment)
        assert program is not None, f"{deployment.cloud} declares a stack but names no program"
        return program

    def _stack(self, deployment: Deployment, backend: Backend) -> LiveStack:
        from byoc.engines.live import LiveStack

        work = self.registry.home / "work" / deployment.name
        return LiveStack(deployment, self._program(deployment), backend, work)

    def _backend(self, command: str, record: Record | None, options: LiveOptions) -> Backend:
        from byoc.engines.live import Backend, require_cli

        require_cli(command)
        if record is not None and record.state is State.DELETED:
            record = None  # a name used again may keep its state anywhere
        if record is not None and options.backend and options.backend != record.backend:
            raise ByocError(
                "--backend",
                f"{record.name}'s Pulumi state is in {record.backend}, not {options.backend}",
                "drop --backend (byoc remembers it), or move the state with `pulumi stack export/import`",
            )
        url = options.backend or (record.backend if record else None)
        return Backend.choose(self.registry.home, url, options.secrets_provider)

    def _refuse_pending(self, record: Record | None) -> None:
        if record is None or not record.pending_operations:
            return
        listed = ", ".join(f"{op['type']} {op['urn'].rsplit('::', 1)[-1]}" for op in record.pending_operations[:5])
        raise ByocError(
            "NAME",
            f"{record.name} has {len(record.pending_operations)} operation(s) Pulumi left pending ({listed}); "
            "running over them could create resources twice or lose track of them",
            f"run `byoc refresh {record.name}` first",
        )

    def _check_sdks(self, name: str, stack: LiveStack, options: LiveOptions | None = None) -> None:
        """Refuse (ByocError) to run Pulumi on a stack last deployed with other SDK versions than the installed ones
        (read from the stack's outputs in its backend, which every machine sharing it reads)."""
        from byoc.pulumi_sdks import check_recorded

        if options is not None and options.upgrade_providers:
            return
        check_recorded(name, stack.recorded_sdks(), stack.sdk_versions)

    def _require_preflight(self, deployment: Deployment) -> PreflightReport:
        self._view.step("preflight")
        report = preflight(deployment)
        for check in report.checks:
            self._view.message(f"preflight {check.name}: {check.status}: {check.detail}")
        if not report.ok:
            failure = report.failures[0]
            raise ByocFailure(f"preflight.{failure.name}", failure.detail, failure.hint)
        return report

    def _engine(
        self,
        name: str,
        stack: LiveStack,
        operation: str,
        call: Callable[[Callable[[Any], None]], Any],
    ) -> Any:
        """Run one engine call under the interrupt guard; on any failure end the run FAILED with the reason, the
        exported state and the pending operations."""
        guard = InterruptGuard(self._view.message, name)
        with guard:
            try:
                result = call(self._view.engine_event)
            except ByocError as exc:
                reason = f"interrupted ({', '.join(guard.signals)})" if guard.interrupted else exc.message
                self._fail(name, stack, reason, guard.interrupted)
                if guard.interrupted:
                    raise ByocInterrupted(
                        guard.signals[0], operation, f"{name}: {reason}; Pulumi stopped", self._after_failure(name)
                    ) from None
                raise
            except BaseException as exc:
                self._fail(name, stack, f"byoc {operation} crashed: {type(exc).__name__}: {exc}", guard.interrupted)
                raise
        if guard.interrupted:
            reason = f"interrupted ({', '.join(guard.signals)}) while Pulumi ran {operation}"
            self._fail(name, stack, reason, True)
            raise ByocInterrupted(guard.signals[0], operation, f"{name}: {reason}", self._after_failure(name))
        return result

    def _after_failure(self, name: str) -> str:
        record = self.registry.get(name)
        if record and record.pending_operations:
            return f"{len(record.pending_operations)} operation(s) left pending: run `byoc refresh {name}`, then retry"
        return f"retry with `byoc up`, or `byoc destroy {name}`"

    def _fail(self, name: str, stack: LiveStack, reason: str, interrupted: bool) -> None:
        from byoc.engines.live import pending_operations

        state: dict[str, Any] | None = None
        pending: list[dict[str, str]] = []
        try:
            state = stack.export_state()
            pending = pending_operations(state)
        except Exception as exc:  # the failure that brought us here may have taken the backend too
            self.registry.record_event(name, "state-export", f"the stack state could not be exported: {exc}")
        self.registry.update(name, stack_state=state, pending_operations=pending, interrupted=interrupted)
        self.registry.transition(name, State.FAILED, reason, pending_operations=len(pending))

    def _save_outputs(self, name: str, stack: LiveStack, outputs: dict[str, Any]) -> dict[str, Any]:
        """Store the stack outputs; the kubeconfig (a secret output) goes to a 0600 file and the outputs keep its
        path."""
        kubeconfig = stack.secret_outputs.get("kubeconfig")
        if isinstance(kubeconfig, str) and kubeconfig:
            path = self.registry.home / "work" / name / "kubeconfig"
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(kubeconfig)
            outputs = {**outputs, "kubeconfig": str(path)}
        self.registry.update(name, outputs=outputs)
        return outputs

    # -- the operation skeleton: every stack-changing operation opens and ends the same way ------------------------
    @contextmanager
    def _operation(
        self, name: str, operation: str, state: State, stack: LiveStack, options: LiveOptions | None = None
    ) -> Iterator[Record | None]:
        """Under the deployment's lock: no operations Pulumi left pending, a move to `state` the registry allows,
        the stack's SDK versions the installed ones. Yields the record as it is under the lock; only `up` may find
        none (a new name) or a DELETED one (the name used again); the others raise ByocError for either."""
        creates = state is State.DEPLOYING
        with self.registry.locked(name, operation):
            record = self.registry.get(name) if creates else self.registry.require(name)
            self._refuse_pending(record)
            if record is not None and not (creates and record.state is State.DELETED):
                check_transition(name, record.state, state)
            self._check_sdks(name, stack, options)
            yield record

    def _apply(
        self,
        name: str,
        spec: Spec,
        stack: LiveStack,
        operation: str,
        state: State,
        reason: str = "",
        total: int | None = None,
    ) -> dict[str, Any]:
        """`state` (DEPLOYING, SCALING, UPDATING) with `reason`, Pulumi's up under the interrupt guard (FAILED with
        the exported state on any failure), the outputs and the spec saved, DEPLOYED. Returns the outputs."""
        self.registry.transition(name, state, reason)
        self._view.step("pulumi up" if operation == "up" else f"pulumi up ({operation})", total=total)
        outputs = self._engine(name, stack, operation, stack.up)
        outputs = self._save_outputs(name, stack, outputs)
        self.registry.update(name, spec=stored_spec(spec), pending_operations=[], stack_state=None, interrupted=False)
        self.registry.transition(name, State.DEPLOYED)
        return outputs

    # -- up ------------------------------------------------------------------------------------------------------
    def up(self, spec: Spec, options: LiveOptions) -> dict[str, Any]:
        """Create the deployment, or re-run / resume it (idempotent): preflight, then `pulumi up`.

        Raises ByocError (exit 2): no Pulumi CLI, another placement, pending operations, a running command;
        ByocFailure (exit 1): preflight found a blocker, or Pulumi failed (the deployment is then FAILED).
        """
        deployment = resolve(spec)
        check_renders(deployment)  # the rules on rendered objects, before anything runs
        name = deployment.name
        record = self.registry.get(name)
        check_placement(record, deployment)
        backend = self._backend("up", record, options)
        stack = self._stack(deployment, backend)
        with self._operation(name, "up", State.DEPLOYING, stack, options) as record:
            check_placement(record, deployment)
            preflight = self._require_preflight(deployment)
            fresh = record is None or record.state is State.DELETED
            verb = "create" if fresh else "update"
            where = f"{deployment.placement.instance_type} in {deployment.region}"
            question = f"{verb} {name}: {deployment.shape.name} on {where}?"
            if not options.yes and not self.confirm(question):
                raise ByocError("--yes", f"not confirmed: nothing was {verb}d", "answer y, or pass --yes")
            if fresh:
                self.registry.create(
                    name=name,
                    cloud=deployment.cloud,
                    region=deployment.region,
                    requested_region=deployment.placement.requested_region,
                    shape=deployment.shape.name,
                    instance_type=deployment.placement.instance_type,
                    spec=stored_spec(spec),
                    backend=backend.url,
                )
            else:
                self.registry.update(name, spec=stored_spec(spec))
            checked = [c for c in preflight.checks if c.status != "unknown"]
            summary = (
                "preflight passed"
                if checked and len(checked) == len(preflight.checks)
                else "preflight passed what it could check; not checked: "
                + "; ".join(c.detail for c in preflight.checks if c.status == "unknown")
            )
            self.registry.record_event(name, "preflight", summary, report=preflight.as_dict())
            outputs = self._apply(name, spec, stack, "up", State.DEPLOYING, total=planned_resources(deployment))
        return {"operation": "up", "name": name, "state": State.DEPLOYED.value, "outputs": outputs}

    # -- preview -------------------------------------------------------------------------------------------------
    def preview(self, spec: Spec, options: LiveOptions, diff: bool = False) -> dict[str, Any]:
        """What `up` would change (Pulumi preview); changes nothing and takes no lock."""
        deployment = resolve(spec)
        check_renders(deployment)  # the rules on rendered objects, before anything runs
        record = self.registry.get(deployment.name)
        check_placement(record, deployment)
        backend = self._backend("preview", record, options)
        stack = self._stack(deployment, backend)
        self._check_sdks(deployment.name, stack, options)
        self._view.step("pulumi preview")
        result = stack.preview(self._view.engine_event, diff=diff)
        if record is not None:
            self.registry.record_event(deployment.name, "preview", "previewed", changes=result["changes"])
        return {"operation": "preview", "name": deployment.name, **result}

    # -- refresh -------------------------------------------------------------------------------------------------
    def refresh(self, name: str, options: LiveOptions) -> dict[str, Any]:
        """Reconcile the stack's state with the cloud (`pulumi refresh`), clearing pending operations."""
        from byoc.engines.live import pending_operations

        record = self.registry.require(name)
        deployment = resolve(build_spec(record.spec))
        backend = self._backend("refresh", record, options)
        stack = self._stack(deployment, backend)
        with self.registry.locked(name, "refresh"):
            record = self.registry.require(name)
            cleared = record.pending_operations
            self._view.step("pulumi refresh")
            changes = stack.refresh(self._view.engine_event, clear_pending_creates=bool(cleared))
            state = stack.export_state()
            left = pending_operations(state)
            self.registry.update(name, pending_operations=left, stack_state=None if not left else state)
            message = f"refreshed: {changes}"
            if cleared:
                message += (
                    f"; {len(cleared)} pending operation(s) cleared (a resource Pulumi had started creating may "
                    f"exist untracked: it carries byoc:deployment={name}, and `byoc destroy {name}` sweeps it)"
                )
            self.registry.record_event(name, "refresh", message, cleared=cleared)
        after = self.registry.require(name)
        return {
            "operation": "refresh",
            "name": name,
            "state": after.state.value,
            "changes": changes,
            "cleared_pending_operations": cleared,
            "pending_operations": left,
        }

    # -- scale ---------------------------------------------------------------------------------------------------
    def scale(self, name: str, min_replicas: int, max_replicas: int, options: LiveOptions) -> dict[str, Any]:
        """New KEDA bounds and NodePool GPU limit; nothing else may change (checked on the offline graphs first).

        Raises ByocError for bounds the rules refuse (naming autoscaling.*), or a change beyond the two objects."""
        record = self.registry.require(name)
        check_transition(name, record.state, State.SCALING)  # before the offline comparison, which takes seconds
        data = dict(record.spec)
        scaling = dict(data.get("autoscaling") or {})
        scaling |= {"min_replicas": min_replicas, "max_replicas": max_replicas}
        if min_replicas > 0:
            scaling.pop("scale_to_zero_window", None)
        data["autoscaling"] = scaling
        spec = build_spec(data)
        deployment = resolve(spec)
        old = resolve(build_spec(record.spec))
        changed = offline_changes(old, deployment)
        beyond = scale_violations(changed, get_cloud(deployment.cloud).scale_changes)
        if beyond:
            raise ByocError(
                "--max",
                f"scaling {name} would also change {', '.join(beyond)}",
                f"use `byoc update {name} -f SPEC` for changes beyond the replica bounds",
            )
        backend = self._backend("scale", record, options)
        stack = self._stack(deployment, backend)
        with self._operation(name, "scale", State.SCALING, stack):
            self._require_preflight(deployment)
            self._apply(name, spec, stack, "scale", State.SCALING, f"replicas {min_replicas}..{max_replicas}")
        return {
            "operation": "scale",
            "name": name,
            "min_replicas": min_replicas,
            "max_replicas": max_replicas,
            "changed": [{"type": t, "name": n, "paths": p} for (t, n), p in changed.items()],
        }

    # -- update --------------------------------------------------------------------------------------------------
    def update(self, name: str, spec: Spec, options: LiveOptions, allow_replace: bool = False) -> dict[str, Any]:
        """Apply a new spec that keeps placement. A preview first: replacing the cluster or a node pool is shown
        and refused without `allow_replace`."""
        if spec.name != name:
            raise ByocError("name", f"the spec is for {spec.name!r}, not {name!r}", f"set name: {name} in the spec")
        record = self.registry.require(name)
        check_transition(name, record.state, State.UPDATING)
        deployment = resolve(spec)
        check_renders(deployment)  # the rules on rendered objects, before anything runs
        check_placement(record, deployment)
        backend = self._backend("update", record, options)
        stack = self._stack(deployment, backend)
        with self._operation(name, "update", State.UPDATING, stack):
            self._view.step("pulumi preview")
            previewed = stack.preview(self._view.engine_event)
            guarded = get_cloud(deployment.cloud).node_provisioner.replace_guarded
            replaced = [
                s for s in previewed["steps"] if s["op"] in ("replace", "create-replacement") and s["type"] in guarded
            ]
            if replaced and not allow_replace:
                listed = ", ".join(f"{s['type']} {s['name']}" for s in replaced)
                raise ByocError(
                    "--allow-replace",
                    f"this update replaces {listed} (the cluster or its GPU nodes are recreated; serving stops)",
                    "pass --allow-replace to accept it, or keep the fields that force it",
                )
            self._require_preflight(deployment)
            self._apply(name, spec, stack, "update", State.UPDATING)
        return {"operation": "update", "name": name, "changes": previewed["changes"], "replaced": replaced}

    # -- destroy -------------------------------------------------------------------------------------------------
    def destroy(self, name: str, options: LiveOptions) -> dict[str, Any]:
        """Without `yes`: report what would go (cluster objects, the stack, tagged leftovers) and change nothing.
        With `yes`: gateway Service (its NLB) -> PVCs (their volumes) -> NodePools until zero NodeClaims -> the
        stack (refreshed first) -> the sweep of tagged leftovers; DELETED when nothing remains, else FAILED."""
        record = self.registry.require(name)
        target = SweepTarget(deployment=name, cluster=resource_name(name), region=record.region)
        cloud = get_cloud(record.cloud)
        if not options.yes:
            cluster = self._teardown().cluster_objects(record)
            report = cloud.sweep(target, delete=False, **self.sweep_options)
            return {
                "operation": "destroy",
                "name": name,
                "dry_run": True,
                "state": record.state.value,
                "cluster": cluster,
                "stack": {"backend": record.backend, "resources": len(state_resources(record))},
                "leftovers": report.as_dict(),
                "hint": f"nothing was deleted; `byoc destroy {name} --yes` deletes all of it",
            }
        deployment = resolve(build_spec(record.spec))
        backend = self._backend("destroy", record, options)
        stack = self._stack(deployment, backend)
        with self.registry.locked(name, "destroy"):
            record = self.registry.require(name)
            self._refuse_pending(record)
            stack_gone = record.state is State.DELETED
            if not stack_gone:
                check_transition(name, record.state, State.DELETING)
                self._check_sdks(name, stack)
                self.registry.transition(name, State.DELETING)
                self._view.step("controller resources")
                controllers = self._teardown().predestroy(record)
                self.registry.record_event(name, "pre-destroy", "controller resources", **controllers)
                self._view.step("pulumi refresh")
                self._engine(name, stack, "destroy", stack.refresh)
                self._view.step("pulumi destroy", total=_resource_count(stack))
                self._engine(name, stack, "destroy", stack.destroy)
            else:
                controllers = {"skipped": "the stack was destroyed before; sweeping again"}
            self._view.step("sweep")
            report = cloud.sweep(target, delete=True, on_progress=self._view.message, **self.sweep_options)
            self.registry.record_event(name, "sweep", f"{len(report.resources)} tagged leftover(s)", **report.as_dict())
            remaining = report.remaining
            if not stack_gone:
                if remaining or report.errors:
                    left = ", ".join(f"{r.kind} {r.id}" for r in remaining) or "; ".join(report.errors)
                    self.registry.transition(name, State.FAILED, f"the stack is gone but leftovers remain: {left}")
                else:
                    self.registry.update(name, outputs={}, stack_state=None, pending_operations=[])
                    self.registry.transition(name, State.DELETED)
        after = self.registry.require(name)
        return {
            "operation": "destroy",
            "name": name,
            "state": after.state.value,
            "cluster": controllers,
            "leftovers": report.as_dict(),
        }

    # -- unlock --------------------------------------------------------------------------------------------------
    def unlock(self, name: str) -> dict[str, Any]:
        """Clear locks held by dead processes on this machine: byoc's own, and Pulumi's in a file:// backend.
        A lock of a live process, or of another host, is never cleared (ByocError)."""
        from byoc.engines.live import Backend, PulumiLock

        record = self.registry.require(name)
        cleared: list[str] = []
        held = self.registry.lock_of(name)
        if held is not None:
            if held.alive:
                raise ByocError(
                    "NAME",
                    f"{held.describe()} holds {name}'s lock and "
                    + ("is still running" if held.local else "runs on another host, which byoc cannot see"),
                    "wait for it to finish" if held.local else f"stop it on {held.host}",
                )
            self.registry.recover_stale(name)
            cleared.append(f"byoc lock of {held.describe()}")
        orphans = self._orphans(name)
        if orphans:
            # before Pulumi's own lock: an orphaned pulumi holds it, and a live holder is never cleared
            self._end_processes([o.pid for o in orphans])
            cleared += [f"orphaned Pulumi process {o.pid} ({o.command[:80]})" for o in orphans]
        backend = Backend(record.backend, "passphrase")
        if backend.local_path is None:
            hint = f"byoc cannot read locks in {record.backend}"
        else:
            from byoc.engines.live import LiveStack

            probe = LiveStack(resolve(build_spec(record.spec)), lambda _: {}, backend, self.registry.home / "work")
            for path in probe.lock_files():
                lock = PulumiLock.read(path)
                who = f"pid {lock.pid} on {lock.host or 'unknown host'} (since {lock.timestamp})"
                if not lock.local:
                    raise ByocError(
                        "NAME",
                        f"Pulumi's lock on {name} is held by {who}, another machine: byoc cannot tell if it still runs",
                        f"stop that run there; if it is gone, delete {path}",
                    )
                if process_alive(lock.pid, None):
                    raise ByocError(
                        "NAME", f"Pulumi's lock on {name} is held by {who}, which is running", "wait for it"
                    )
                path.unlink()
                cleared.append(f"Pulumi lock of {who}")
            hint = ""
        for item in cleared:
            done = "ended it: its byoc was gone" if item.startswith("orphaned") else "process dead"
            self.registry.record_event(name, "unlock", f"cleared the {item} ({done})")
        return {"operation": "unlock", "name": name, "cleared": cleared, **({"note": hint} if hint else {})}

    def _orphans(self, name: str) -> list[Any]:
        """Processes byoc started for the stack (the `pulumi` CLI, its plugins) that still run while no byoc runs
        for the deployment: their byoc was killed (SIGKILL skips every cleanup)."""
        from byoc.engines.live import pulumi_processes

        held = self.registry.lock_of(name)
        if held is not None and held.alive:
            return []  # a running byoc's own children
        return pulumi_processes(self.registry.home / "work" / name)

    def _end_processes(self, pids: list[int]) -> None:
        """SIGINT (Pulumi cancels and saves what it did), SIGKILL after `waits.orphans_s`, until all are gone."""
        for signum, limit in ((signal.SIGINT, self.waits.orphans_s), (signal.SIGKILL, 10.0)):
            for pid in pids:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + limit
            while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not any(_running(pid) for pid in pids):
                return

    # -- status --------------------------------------------------------------------------------------------------
    def status(self, name: str | None = None, probe: bool = True) -> list[dict[str, Any]]:
        """Every deployment (or one), reconciled with what can be observed; see byoc.status for the health rules."""
        from byoc.status import observe

        self.registry.recover_stale(name)
        records = [self.registry.require(name)] if name else self.registry.deployments()
        rows = []
        for record in records:
            lock = self.registry.lock_of(record.name)
            observed = observe(record, lock, self.cluster_for, probe=probe)
            orphans = self._orphans(record.name)
            if orphans:
                pids = ", ".join(str(o.pid) for o in orphans)
                observed["health"] = (
                    f"{observed['health']}; Pulumi still runs without its byoc (pid {pids}): it may still change "
                    f"resources; `byoc unlock {record.name}` ends it"
                )
            rows.append(
                {
                    **record.as_dict(),
                    **observed,
                    "running": lock.describe() if lock else None,
                    "orphaned_pulumi": [o.as_dict() for o in orphans],
                    "events": self.registry.events(record.name, last=5),
                }
            )
        return rows

    @contextmanager
    def closing(self) -> Iterator[Lifecycle]:
        try:
            yield self
        finally:
            self._view.close()
            self.registry.close()


def offline_changes(old: Deployment, new: Deployment) -> dict[tuple[str, str], list[str]]:
    """{(type, name): [input paths that differ]} between two deployments' offline graphs (the same program `up`
    runs); a resource only one of them has differs at its root ("")."""
    from byoc.engines import program_for
    from byoc.engines.offline import run_offline

    program = program_for(old)
    if program is None:
        return {}
    before = {(r.type, r.name): r.inputs for r in run_offline(old, program).resources}
    after = {(r.type, r.name): r.inputs for r in run_offline(new, program).resources}
    changed = {}
    for key in sorted(before.keys() | after.keys()):
        paths = _diff_paths(before.get(key), after.get(key), "")
        if paths:
            changed[key] = paths
    return changed


def _diff_paths(a: Any, b: Any, path: str) -> list[str]:
    if a is None or b is None:
        return [path] if a != b else []
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for key in sorted(a.keys() | b.keys()):
            found += _diff_paths(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [path] if a != b else []


def scale_violations(
    changed: dict[tuple[str, str], list[str]], scale_changes: Mapping[str, frozenset[str] | None]
) -> list[str]:
    """The changes a scale may not make (`scale_changes`: the cloud's, `Cloud.scale_changes`), as 'type name
    (paths)'."""
    refused = []
    for (type_token, name), paths in changed.items():
        allowed = scale_changes.get(type_token, frozenset())
        if allowed is None:
            continue
        extra = [p for p in paths if p not in allowed]
        if extra:
            refused.append(f"{type_token} {name} ({', '.join(extra[:3])})")
    return refused


def _running(pid: int) -> bool:
    """Whether the process still runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _resource_count(stack: LiveStack) -> int | None:
    """How many resources the stack holds (what a destroy counts to), or None if the state cannot be read."""
    try:
        return len(stack.export_state()["deployment"]["resources"])
    except Exception:  # a total is a nicety; the destroy reports its own failure
        return None


__all__ = [
    "RUNNING",
    "ClusterFactory",
    "Lifecycle",
    "LiveOptions",
    "Waits",
    "capacity_need",
    "check_placement",
    "offline_changes",
    "scale_violations",
]
