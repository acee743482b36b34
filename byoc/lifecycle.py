"""The lifecycle of a deployment: `byoc up / preview / refresh / status / scale / update / destroy / unlock`.

The CLI calls this module and nothing else for them. It owns the deployment registry (byoc.registry): it takes the
deployment's lock, runs preflight through the cloud's interface (byoc.clouds), runs the live engine
(byoc.engines.live, Pulumi's Automation API), feeds a progress view with the engine's events, and records every
state change and event. Engines and clouds never touch the registry.

A multi-region deployment (a mega-region or GLOBAL) is one deployment of several Pulumi stacks: one per region
(`Deployment.in_region(r)`, stack `Deployment.stack_name(r)`), then the global layer (`stack_name()`: one private
name, failover) where the cloud has a program for it. `up`, `update` and `scale` run the regions in order, then the
global layer; `destroy` takes the global layer first, then the regions. The registry keeps one record for the
deployment (its state machine) and one row per stack (byoc.registry.StackRecord). A region that fails leaves the
deployment FAILED naming it while the other regions keep what they reached (each stack is its own blast radius);
`up` again resumes: it skips the regions the failed run left DEPLOYED with the same spec (Pulumi would change
nothing there), re-runs the others and the global layer. Placement (the set of regions, the residency) is immutable.

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
from byoc.registry import (
    GLOBAL_REGION,
    RUNNING,
    Record,
    Registry,
    StackState,
    State,
    check_transition,
    process_alive,
)
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
    """The cloud's preflight for the deployment's peak capacity in its (primary) region."""
    return get_cloud(deployment.cloud).preflight(capacity_need(deployment))


def regional(deployment: Deployment) -> list[Deployment]:
    """The deployment as each of its regions' stacks sees it, the primary first (itself for one region)."""
    return list(deployment.per_region) or [deployment]


def up_order(runs: list[StackRun]) -> list[StackRun]:
    """The order `up`, `scale` and `update` run a deployment's stacks in: the regions other than the primary, then
    the primary, then the global layer. The primary replicates the model into the other regions' artifact buckets,
    and S3 replication and Storage Transfer refuse a destination bucket that does not exist yet
    (docs/multi-region.md); the global layer reads every region's outputs."""
    regions = [run for run in runs if not run.is_global]
    return [*regions[1:], *regions[:1], *(run for run in runs if run.is_global)]


def preflights(deployment: Deployment) -> list[tuple[Deployment, PreflightReport]]:
    """The cloud's preflight in every region of the deployment, each for that region's peak capacity (every region
    scales to max_replicas on its own when the others are gone): `byoc preflight`, and the first step of `up`."""
    cloud = get_cloud(deployment.cloud)
    return [(r, cloud.preflight(capacity_need(r))) for r in regional(deployment)]


def planned_resources(deployment: Deployment, program: Any, stack: str | None = None) -> int | None:
    """The resource count of the offline plan of the same program on one stack (+1, the stack itself): what `up`
    counts to."""
    from byoc.engines.offline import run_offline

    try:
        return len(run_offline(deployment, program, stack).resources) + 1
    except Exception:  # a total is a nicety; never fail a deployment over it
        return None


def stored_spec(spec: Spec) -> dict[str, Any]:
    """The spec as the registry keeps it: only what the user set (defaults stay defaults of the byoc reading it)."""
    return spec.model_dump(mode="json", exclude_unset=True)


def check_placement(record: Record | None, deployment: Deployment) -> None:
    """Placement is immutable: raises ByocError (exit 2, before anything runs) when a live deployment of the name
    sits elsewhere: another cloud, another primary region, another set of regions (naming placement.regions when
    the spec lists them, else region) or another residency set (a mega-region's, or none for a region id)."""
    if record is None or record.state is State.DELETED:
        return
    if record.cloud != deployment.cloud:
        raise ByocError(
            "cloud", f"{record.name} runs on {record.cloud}, not {deployment.cloud}: {PLACEMENT_MESSAGE}", ""
        )
    regions = deployment.region_names
    if record.regions != regions:
        field_name = "placement.regions" if deployment.spec.placement.regions is not None else "region"
        raise ByocError(
            field_name,
            f"{record.name} runs in {', '.join(record.regions)}, not {', '.join(regions)}: {PLACEMENT_MESSAGE}",
            f"keep placement.regions: [{', '.join(record.regions)}]"
            if len(record.regions) > 1
            else f"to keep it where it is, set placement: {{regions: [{record.region}], min_regions: 1}}"
            if deployment.residency
            else "",
        )
    was = _residency(record.requested_region)
    if was != deployment.residency:
        # the same regions, another promise: where failover and spill-over may go (a residency set) is placement too
        before = f"residency {was}" if was else f"region {record.region} alone"
        after = f"residency {deployment.residency}" if deployment.residency else f"region {deployment.region} alone"
        raise ByocError("region", f"{record.name} was placed with {before}, not {after}: {PLACEMENT_MESSAGE}", "")


def _residency(requested_region: str) -> str | None:
    from byoc.catalogs import MEGA_REGIONS

    requested = requested_region.upper()
    return requested if requested in MEGA_REGIONS else None


# a stack's state as the deployment states status and teardown read for one region
_DEPLOYMENT_STATE_OF = {
    StackState.PENDING: State.CREATING,
    StackState.DEPLOYING: State.DEPLOYING,
    StackState.DEPLOYED: State.DEPLOYED,
    StackState.FAILED: State.FAILED,
    StackState.DELETING: State.DELETING,
    StackState.DELETED: State.DELETED,
}


# -- options -----------------------------------------------------------------------------------------------------
@dataclass
class LiveOptions:
    backend: str | None = None
    secrets_provider: str | None = None
    yes: bool = False
    upgrade_providers: bool = False  # `up` may move the stack to the installed Pulumi SDKs (byoc.pulumi_sdks)


Confirm = Callable[[str], bool]


@dataclass
class StackRun:
    """One Pulumi stack the lifecycle drives: a region's (its regional deployment), or a multi-region deployment's
    global layer (region GLOBAL_REGION, the deployment itself)."""

    region: str
    deployment: Deployment
    live: LiveStack

    @property
    def name(self) -> str:
        return self.live.name

    @property
    def is_global(self) -> bool:
        return self.region == GLOBAL_REGION

    def where(self) -> str:
        return f"the global layer ({self.name})" if self.is_global else f"region {self.region} ({self.name})"


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

    def _stacks(self, deployment: Deployment, backend: Backend) -> list[StackRun]:
        """Every stack of the deployment: each region's (the primary first, as the registry lists them), then the
        global layer (where the cloud has a program for it). `_apply` runs them in `up_order`. Each stack has its
        own work folder, home/work/<stack name>."""
        from byoc.engines import global_program_for
        from byoc.engines.live import LiveStack

        program = self._program(deployment)
        work = self.registry.home / "work"
        runs = [StackRun(r.region, r, LiveStack(r, program, backend, work / r.name)) for r in regional(deployment)]
        if deployment.multi_region:
            global_program = global_program_for(deployment)
            if global_program is not None:
                name = deployment.stack_name()
                live = LiveStack(deployment, global_program, backend, work / name, stack_name=name)
                runs.append(StackRun(GLOBAL_REGION, deployment, live))
        return runs

    def _stack_names(self, record: Record) -> list[str]:
        """The names of the deployment's stacks as recorded (its own name for a record without stack rows)."""
        return [s.stack for s in record.stacks] or [record.name]

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

    def _require_preflight(self, deployment: Deployment) -> list[tuple[Deployment, PreflightReport]]:
        """Preflight in every region (one report each); ByocFailure naming the first region with a blocker."""
        self._view.step("preflight")
        reports = preflights(deployment)
        multi = len(reports) > 1
        for where, report in reports:
            for check in report.checks:
                region = f"{where.region} " if multi else ""
                self._view.message(f"preflight {region}{check.name}: {check.status}: {check.detail}")
        for where, report in reports:
            if not report.ok:
                failure = report.failures[0]
                detail = f"{where.region}: {failure.detail}" if multi else failure.detail
                raise ByocFailure(f"preflight.{failure.name}", detail, failure.hint)
        return reports

    def _engine(
        self,
        name: str,
        run: StackRun,
        operation: str,
        call: Callable[[Callable[[Any], None]], Any],
        multi: bool = False,
    ) -> Any:
        """Run one engine call on one stack under the interrupt guard. On a failure the stack is FAILED with the
        reason, the exported state and the pending operations. An interrupt or a crash also ends the deployment
        FAILED and raises at once; a Pulumi failure (ByocFailure) is re-raised for the caller, which decides
        whether the other regions go on (`multi`: the reason then names the stack)."""
        guard = InterruptGuard(self._view.message, name)
        where = f"{run.where()}: " if multi else ""
        with guard:
            try:
                result = call(self._view.engine_event)
            except ByocError as exc:
                reason = f"interrupted ({', '.join(guard.signals)})" if guard.interrupted else exc.message
                self._fail_stack(name, run, reason, guard.interrupted)
                if guard.interrupted:
                    self._fail(name, where + reason, True)
                    raise ByocInterrupted(
                        guard.signals[0],
                        operation,
                        f"{name}: {where}{reason}; Pulumi stopped",
                        self._after_failure(name),
                    ) from None
                raise
            except BaseException as exc:
                reason = f"byoc {operation} crashed: {type(exc).__name__}: {exc}"
                self._fail_stack(name, run, reason, guard.interrupted)
                self._fail(name, where + reason, guard.interrupted)
                raise
        if guard.interrupted:
            reason = f"interrupted ({', '.join(guard.signals)}) while Pulumi ran {operation}"
            self._fail_stack(name, run, reason, True)
            self._fail(name, where + reason, True)
            raise ByocInterrupted(guard.signals[0], operation, f"{name}: {where}{reason}", self._after_failure(name))
        return result

    def _after_failure(self, name: str) -> str:
        record = self.registry.get(name)
        if record and record.pending_operations:
            return f"{len(record.pending_operations)} operation(s) left pending: run `byoc refresh {name}`, then retry"
        return f"retry with `byoc up`, or `byoc destroy {name}`"

    def _fail_stack(self, name: str, run: StackRun, reason: str, interrupted: bool) -> None:
        """The stack FAILED with `reason`; its exported state and the operations it left pending are kept on the
        deployment (pending operations of every stack add up: `byoc refresh` clears them)."""
        from byoc.engines.live import pending_operations

        state: dict[str, Any] | None = None
        pending: list[dict[str, str]] = []
        try:
            state = run.live.export_state()
            pending = pending_operations(state)
        except Exception as exc:  # the failure that brought us here may have taken the backend too
            self.registry.record_event(name, "state-export", f"the stack state could not be exported: {exc}")
        record = self.registry.require(name)
        others = [op for op in record.pending_operations if f":{run.name}::" not in op.get("urn", "")]
        self.registry.update(name, stack_state=state, pending_operations=others + pending, interrupted=interrupted)
        if any(s.stack == run.name for s in record.stacks):
            self.registry.set_stack(name, run.name, StackState.FAILED, reason)

    def _fail(self, name: str, reason: str, interrupted: bool = False) -> None:
        """The deployment FAILED with `reason` (the stacks' own states are already recorded)."""
        record = self.registry.require(name)
        if interrupted and not record.interrupted:
            self.registry.update(name, interrupted=True)
        self.registry.transition(name, State.FAILED, reason, pending_operations=len(record.pending_operations))

    def _save_outputs(self, name: str, run: StackRun, outputs: dict[str, Any]) -> dict[str, Any]:
        """One stack's outputs as the registry keeps them: the kubeconfig (a secret output) goes to a 0600 file in
        the stack's work folder and the outputs keep its path."""
        kubeconfig = run.live.secret_outputs.get("kubeconfig")
        if isinstance(kubeconfig, str) and kubeconfig:
            path = self.registry.home / "work" / run.name / "kubeconfig"
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(kubeconfig)
            outputs = {**outputs, "kubeconfig": str(path)}
        return outputs

    # -- the operation skeleton: every stack-changing operation opens and ends the same way ------------------------
    @contextmanager
    def _operation(
        self,
        name: str,
        operation: str,
        state: State,
        runs: list[StackRun],
        options: LiveOptions | None = None,
    ) -> Iterator[Record | None]:
        """Under the deployment's lock: no operations Pulumi left pending, a move to `state` the registry allows,
        every stack's SDK versions the installed ones. Yields the record as it is under the lock; only `up` may find
        none (a new name) or a DELETED one (the name used again); the others raise ByocError for either."""
        creates = state is State.DEPLOYING
        with self.registry.locked(name, operation):
            record = self.registry.get(name) if creates else self.registry.require(name)
            self._refuse_pending(record)
            if record is not None and not (creates and record.state is State.DELETED):
                check_transition(name, record.state, state)
            for run in runs:
                self._check_sdks(name, run.live, options)
            yield record

    def _apply(
        self,
        name: str,
        spec: Spec,
        runs: list[StackRun],
        operation: str,
        state: State,
        reason: str = "",
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """`state` (DEPLOYING, SCALING, UPDATING) with `reason`, then Pulumi's up on every stack in order (the
        regions, then the global layer), each under the interrupt guard, its outputs and spec recorded on its row;
        DEPLOYED when every stack is. Stacks named in `skip` are left as they are (said in the events).

        A region whose up fails is FAILED and the other regions go on (their stacks are independent); the global
        layer waits for every region. Then the deployment is FAILED naming the failed regions (ByocFailure).
        An interrupt or a crash stops at once. Returns the deployment's outputs: the primary region's, and the
        global layer's under "global"."""
        self.registry.transition(name, state, reason)
        self.registry.plan_stacks(name, [(run.region, run.name) for run in runs])  # a record without rows gains them
        multi = len(runs) > 1
        outputs: dict[str, dict[str, Any]] = {}
        failed: list[tuple[StackRun, ByocError]] = []
        for run in up_order(runs):
            if run.is_global and failed:
                self._view.message(f"{run.where()}: not run: it points at every region, and a region failed")
                break
            if run.name in skip:
                message = (
                    f"{run.where()}: skipped: the last run deployed it with this spec, so Pulumi would change nothing"
                )
                self._view.message(message)
                self.registry.record_event(name, "skip", message, stack=run.name)
                continue
            label = "pulumi up" if operation == "up" else f"pulumi up ({operation})"
            total = planned_resources(run.deployment, run.live.program, run.name) if operation == "up" else None
            self._view.step(f"{label} {run.where()}" if multi else label, total=total)
            if multi:
                self.registry.set_stack(name, run.name, StackState.DEPLOYING)
            try:
                done = self._engine(name, run, operation, run.live.up, multi)
            except ByocInterrupted:
                raise
            except ByocFailure as exc:
                if not multi:
                    self._fail(name, exc.message)
                    raise
                failed.append((run, exc))
                continue
            outputs[run.name] = self._save_outputs(name, run, done)
            self.registry.set_stack(
                name, run.name, StackState.DEPLOYED, outputs=outputs[run.name], spec=stored_spec(spec)
            )
        if failed:
            reason = "; ".join(f"{run.where()}: {exc.message}" for run, exc in failed)
            self._fail(name, reason)
            deployed = [r.region for r in runs if not r.is_global and r.name not in {f.name for f, _ in failed}]
            raise ByocFailure(
                "region",
                f"{name} is FAILED: {reason}",
                (
                    f"{', '.join(deployed)} {'keeps what it' if len(deployed) == 1 else 'keep what they'} reached; "
                    if deployed
                    else ""
                )
                + f"`byoc up --name {name}` resumes (it re-runs what did not finish), or `byoc destroy {name}`",
            )
        record = self.registry.require(name)
        by_stack = {s.stack: s.outputs for s in record.stacks}
        primary = outputs.get(runs[0].name, by_stack.get(runs[0].name, {}))
        layer = [r for r in runs if r.is_global]
        deployment_outputs = dict(primary)
        if layer:
            deployment_outputs["global"] = outputs.get(layer[0].name, by_stack.get(layer[0].name, {}))
        self.registry.update(
            name,
            spec=stored_spec(spec),
            outputs=deployment_outputs,
            pending_operations=[],
            stack_state=None,
            interrupted=False,
        )
        self.registry.transition(name, State.DEPLOYED)
        return deployment_outputs

    def _resumable(self, record: Record | None, spec: Spec) -> frozenset[str]:
        """The regional stacks a retry of a FAILED deployment may skip: DEPLOYED by the failed run with this very
        spec (their Pulumi up would be a no-op). The global layer always runs again: it reads every region."""
        if record is None or record.state is not State.FAILED or len(record.stacks) < 2:
            return frozenset()
        wanted = stored_spec(spec)
        return frozenset(
            s.stack
            for s in record.stacks
            if s.region != GLOBAL_REGION and s.state is StackState.DEPLOYED and s.spec == wanted
        )

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
        runs = self._stacks(deployment, backend)
        with self._operation(name, "up", State.DEPLOYING, runs, options) as record:
            check_placement(record, deployment)
            reports = self._require_preflight(deployment)
            fresh = record is None or record.state is State.DELETED
            verb = "create" if fresh else "update"
            where = " and ".join(f"{p.instance_type} in {p.region}" for p in deployment.regions)
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
            skip = self._resumable(record, spec)
            if not fresh:
                self.registry.update(name, spec=stored_spec(spec))
            self.registry.plan_stacks(name, [(run.region, run.name) for run in runs])
            for where_, report in reports:
                checked = [c for c in report.checks if c.status != "unknown"]
                summary = (
                    "preflight passed"
                    if checked and len(checked) == len(report.checks)
                    else "preflight passed what it could check; not checked: "
                    + "; ".join(c.detail for c in report.checks if c.status == "unknown")
                )
                if len(reports) > 1:
                    summary += f" in {where_.region}"
                self.registry.record_event(name, "preflight", summary, report=report.as_dict())
            outputs = self._apply(name, spec, runs, "up", State.DEPLOYING, skip=skip)
        return {
            "operation": "up",
            "name": name,
            "state": State.DEPLOYED.value,
            "regions": deployment.region_names,
            "skipped": sorted(skip),
            "outputs": outputs,
        }

    # -- preview -------------------------------------------------------------------------------------------------
    def preview(self, spec: Spec, options: LiveOptions, diff: bool = False) -> dict[str, Any]:
        """What `up` would change (Pulumi preview); changes nothing and takes no lock."""
        deployment = resolve(spec)
        check_renders(deployment)  # the rules on rendered objects, before anything runs
        record = self.registry.get(deployment.name)
        check_placement(record, deployment)
        backend = self._backend("preview", record, options)
        runs = self._stacks(deployment, backend)
        for run in runs:
            self._check_sdks(deployment.name, run.live, options)
        result = self._preview(runs, diff)
        if record is not None:
            self.registry.record_event(deployment.name, "preview", "previewed", changes=result["changes"])
        return {"operation": "preview", "name": deployment.name, **result}

    def _preview(self, runs: list[StackRun], diff: bool = False) -> dict[str, Any]:
        """Pulumi's preview of every stack: {"changes": {op: count over all stacks}, "steps": [...each with its
        "stack" and "region"], "stacks": [{"region", "stack", "changes"}]}."""
        multi = len(runs) > 1
        changes: dict[str, int] = {}
        steps: list[dict[str, Any]] = []
        per_stack = []
        for run in runs:
            self._view.step(f"pulumi preview {run.where()}" if multi else "pulumi preview")
            result = run.live.preview(self._view.engine_event, diff=diff)
            for op, count in result["changes"].items():
                changes[op] = changes.get(op, 0) + count
            steps += [{**step, "stack": run.name, "region": run.region} for step in result["steps"]]
            per_stack.append({"region": run.region, "stack": run.name, "changes": result["changes"]})
        return {"changes": changes, "steps": steps, "stacks": per_stack}

    # -- refresh -------------------------------------------------------------------------------------------------
    def refresh(self, name: str, options: LiveOptions) -> dict[str, Any]:
        """Reconcile the stack's state with the cloud (`pulumi refresh`), clearing pending operations."""
        from byoc.engines.live import pending_operations

        record = self.registry.require(name)
        deployment = resolve(build_spec(record.spec))
        backend = self._backend("refresh", record, options)
        runs = self._recorded_runs(record, deployment, backend)
        with self.registry.locked(name, "refresh"):
            record = self.registry.require(name)
            cleared = record.pending_operations
            changes: dict[str, int] = {}
            left: list[dict[str, str]] = []
            state: dict[str, Any] | None = None
            for run in runs:
                self._view.step(f"pulumi refresh {run.where()}" if len(runs) > 1 else "pulumi refresh")
                mine = [op for op in cleared if f":{run.name}::" in op.get("urn", "")] or (
                    cleared if len(runs) == 1 else []
                )
                done = run.live.refresh(self._view.engine_event, clear_pending_creates=bool(mine))
                for op, count in done.items():
                    changes[op] = changes.get(op, 0) + count
                exported = run.live.export_state()
                pending = pending_operations(exported)
                if pending:
                    left += pending
                    state = exported
            self.registry.update(name, pending_operations=left, stack_state=state)
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

    def _recorded_runs(self, record: Record, deployment: Deployment, backend: Backend) -> list[StackRun]:
        """The stacks the registry recorded for the deployment, in its order (what `refresh` and `destroy` work
        on: the placement it was created with, whatever the spec resolves to today), without those never deployed
        (PENDING). A record without stack rows has one stack, named as the deployment."""
        from byoc.engines import global_program_for
        from byoc.engines.live import LiveStack

        program = self._program(deployment)
        work = self.registry.home / "work"
        rows = [(s.region, s.stack) for s in record.stacks if s.state is not StackState.PENDING]
        if not record.stacks:
            rows = [(record.region, record.name)]
        runs = []
        for region, stack in rows:
            if region == GLOBAL_REGION:
                layer = global_program_for(deployment)
                live = LiveStack(deployment, layer or program, backend, work / stack, stack_name=stack)
                runs.append(StackRun(region, deployment, live))
                continue
            try:
                seen_by = deployment.in_region(region) if stack != record.name else deployment
            except KeyError:  # a region the spec no longer resolves to (a catalog changed): the stack is still there
                seen_by = deployment
            runs.append(StackRun(region, seen_by, LiveStack(seen_by, program, backend, work / stack, stack_name=stack)))
        return runs

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
        check_placement(record, deployment)  # the regions recorded, whatever the spec resolves to today
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
        runs = self._stacks(deployment, backend)
        with self._operation(name, "scale", State.SCALING, runs):
            self._require_preflight(deployment)
            self._apply(name, spec, runs, "scale", State.SCALING, f"replicas {min_replicas}..{max_replicas}")
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
        runs = self._stacks(deployment, backend)
        with self._operation(name, "update", State.UPDATING, runs):
            previewed = self._preview(runs)
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
            self._apply(name, spec, runs, "update", State.UPDATING)
        return {"operation": "update", "name": name, "changes": previewed["changes"], "replaced": replaced}

    # -- destroy -------------------------------------------------------------------------------------------------
    def destroy(self, name: str, options: LiveOptions) -> dict[str, Any]:
        """Without `yes`: report what would go (cluster objects, the stacks, tagged leftovers, per region) and
        change nothing. With `yes`: the global layer's stack first (the private name stops pointing at the
        regions), then each region: gateway Service (its NLB) -> PVCs (their volumes) -> NodePools until zero
        NodeClaims -> the stack (refreshed first) -> the sweep of the region's tagged leftovers. DELETED when
        nothing remains anywhere, else FAILED naming the regions left; a stack already DELETED is not destroyed
        again, so `destroy` resumes where a failed one stopped."""
        record = self.registry.require(name)
        cloud = get_cloud(record.cloud)
        if not options.yes:
            return self._destroy_report(record, cloud)
        deployment = resolve(build_spec(record.spec))
        backend = self._backend("destroy", record, options)
        runs = self._recorded_runs(record, deployment, backend)
        # the global layer first: it points at every region's gateway
        runs = [r for r in runs if r.is_global] + [r for r in runs if not r.is_global]
        with self.registry.locked(name, "destroy"):
            record = self.registry.require(name)
            self._refuse_pending(record)
            stack_gone = record.state is State.DELETED
            states = {s.stack: s.state for s in record.stacks}
            if not stack_gone:
                check_transition(name, record.state, State.DELETING)
                for run in runs:
                    if states.get(run.name) not in (StackState.DELETED, StackState.PENDING):
                        self._check_sdks(name, run.live)
                self.registry.transition(name, State.DELETING)
            results, failed, broken = self._destroy_runs(name, runs, record, cloud, stack_gone)
            if not stack_gone:
                if broken:
                    self._fail(name, "; ".join(failed))
                    raise ByocFailure(
                        "region",
                        f"{name} is FAILED: {'; '.join(failed)}",
                        f"`byoc destroy {name} --yes` again resumes: the stacks destroyed are not destroyed twice",
                    )
                if failed:
                    self._fail(name, "; ".join(failed))
                else:
                    self.registry.update(name, outputs={}, stack_state=None, pending_operations=[])
                    self.registry.transition(name, State.DELETED)
        return self._destroyed(name, results, failed)

    def _destroy_runs(
        self, name: str, runs: list[StackRun], record: Record, cloud: Any, stack_gone: bool
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """Each stack in `runs`' order (the global layer first): destroyed unless it was before, its region swept.
        Returns the results, what failed (stacks and leftovers, one line each) and the regions whose stack could not
        be destroyed. A failure of the global layer stops there: the regions stay while the name points at them."""
        multi = len(runs) > 1
        states = {s.stack: s.state for s in record.stacks}
        by_region = {r.name: r for r in self._regional_records(record)}
        results: list[dict[str, Any]] = []
        failed: list[str] = []
        broken: list[str] = []  # the regions whose stack could not be destroyed
        for run in runs:
            done = states.get(run.name) in (StackState.DELETED, StackState.PENDING) or stack_gone
            if run.is_global and done:
                continue
            try:
                result, left = self._destroy_run(name, run, by_region.get(run.name), cloud, multi, done)
            except ByocInterrupted:
                raise
            except ByocFailure as exc:
                if not multi:
                    self._fail(name, exc.message)
                    raise
                failed.append(f"{run.where()}: {exc.message}")
                broken.append(run.region)
                if run.is_global:
                    break  # the regions stay while the private name may still point at them
                continue
            if left:
                where = f"{run.where()}: " if multi else ""
                failed.append(f"{where}the stack is gone but leftovers remain: {left}")
            if (multi or not stack_gone) and run.name in states:
                self.registry.set_stack(name, run.name, StackState.DELETED, outputs={})
            results.append(result)
        return results, failed, broken

    def _destroyed(self, name: str, results: list[dict[str, Any]], failed: list[str]) -> dict[str, Any]:
        """`destroy`'s answer: the state, each stack's result under "regions" (the global layer's first), and the
        primary region's at the top level (what a one-region deployment always showed)."""
        after = self.registry.require(name)
        first = next((r for r in results if r["region"] != GLOBAL_REGION), results[0] if results else {})
        return {
            "operation": "destroy",
            "name": name,
            "state": after.state.value,
            "cluster": first.get("cluster", {}),
            "leftovers": first.get("leftovers", {}),
            "regions": results,
            **({"failed": failed} if failed else {}),
        }

    def _destroy_report(self, record: Record, cloud: Any) -> dict[str, Any]:
        """What `destroy --yes` would delete, per region, changing nothing."""
        name = record.name
        regions = []
        for where in self._regional_records(record):
            target = SweepTarget(deployment=where.name, cluster=resource_name(where.name), region=where.region)
            report = cloud.sweep(target, delete=False, **self.sweep_options)
            regions.append(
                {
                    "region": where.region,
                    "stack": where.name,
                    "cluster": self._teardown().cluster_objects(where),
                    "leftovers": report.as_dict(),
                }
            )
        first = regions[0]
        return {
            "operation": "destroy",
            "name": name,
            "dry_run": True,
            "state": record.state.value,
            "cluster": first["cluster"],
            "stack": {"backend": record.backend, "resources": len(state_resources(record))},
            "leftovers": first["leftovers"],
            "regions": regions,
            "hint": f"nothing was deleted; `byoc destroy {name} --yes` deletes all of it",
        }

    def _destroy_run(
        self, name: str, run: StackRun, where: Record | None, cloud: Any, multi: bool, done: bool
    ) -> tuple[dict[str, Any], str]:
        """One stack's part of `destroy`: its cluster's controller resources and the stack (unless `done`, destroyed
        before), then the sweep of its region's leftovers. Returns the result and what remains ("": nothing)."""
        result: dict[str, Any] = {"region": run.region, "stack": run.name}
        if not done:
            if multi and run.name in {s.stack for s in self.registry.stacks(name)}:
                self.registry.set_stack(name, run.name, StackState.DELETING)
            result["cluster"] = self._destroy_stack(name, run, where, multi)
        else:
            message = f"{run.where()}: the stack was destroyed before; sweeping again"
            result["cluster"] = {"skipped": "the stack was destroyed before; sweeping again"}
            if multi:
                self._view.message(message)
        left = ""
        if where is not None:
            result["leftovers"], left = self._sweep(name, cloud, where, multi)
        return result, left

    def _destroy_stack(self, name: str, run: StackRun, where: Record | None, multi: bool) -> dict[str, Any]:
        """One stack: what controllers made in its cluster (a region's), `pulumi refresh`, `pulumi destroy`."""
        controllers: dict[str, Any] = {}
        prefix = f" {run.where()}" if multi else ""
        if where is not None:
            self._view.step("controller resources" + prefix)
            controllers = self._teardown().predestroy(where)
            self.registry.record_event(name, "pre-destroy", "controller resources" + prefix, **controllers)
        self._view.step("pulumi refresh" + prefix)
        self._engine(name, run, "destroy", run.live.refresh, multi)
        self._view.step("pulumi destroy" + prefix, total=_resource_count(run.live))
        self._engine(name, run, "destroy", run.live.destroy, multi)
        return controllers

    def _sweep(self, name: str, cloud: Any, where: Record, multi: bool) -> tuple[dict[str, Any], str]:
        """The sweep of one region's tagged leftovers (tagged with its regional name and cluster): the report, and
        what remains ("" when nothing does)."""
        target = SweepTarget(deployment=where.name, cluster=resource_name(where.name), region=where.region)
        self._view.step("sweep" + (f" region {where.region}" if multi else ""))
        report = cloud.sweep(target, delete=True, on_progress=self._view.message, **self.sweep_options)
        message = f"{len(report.resources)} tagged leftover(s)" + (f" in {where.region}" if multi else "")
        self.registry.record_event(name, "sweep", message, **report.as_dict())
        left = ", ".join(f"{r.kind} {r.id}" for r in report.remaining) or "; ".join(report.errors)
        return report.as_dict(), left

    def _regional_records(self, record: Record) -> list[Record]:
        """The record as each region's stack sees it: the regional name (its cluster, namespace and tags), region,
        state and outputs of its stack row. A one-region deployment is its own."""
        from dataclasses import replace

        rows = [s for s in record.stacks if s.region != GLOBAL_REGION]
        if len(rows) <= 1:
            return [record]
        return [
            replace(
                record,
                name=s.stack,
                region=s.region,
                state=_DEPLOYMENT_STATE_OF.get(s.state, record.state),
                reason=s.reason,
                outputs=s.outputs,
            )
            for s in rows
        ]

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

            deployment = resolve(build_spec(record.spec))
            work = self.registry.home / "work"
            paths = [
                path
                for stack in self._stack_names(record)
                for path in LiveStack(deployment, lambda _: {}, backend, work, stack_name=stack).lock_files()
            ]
            for path in paths:
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
        record = self.registry.get(name)
        stacks = self._stack_names(record) if record is not None else [name]
        return [p for stack in stacks for p in pulumi_processes(self.registry.home / "work" / stack)]

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
        """Every deployment (or one), reconciled with what can be observed; see byoc.status for the health rules.
        Each row has "regions" (per region: its stack, state, replicas, endpoint, health) and the totals over them
        ("replicas" summed, "health" the worst region's first); a multi-region deployment's global layer under
        "global"."""
        from byoc.status import observe, observe_regions

        self.registry.recover_stale(name)
        records = [self.registry.require(name)] if name else self.registry.deployments()
        rows = []
        for record in records:
            lock = self.registry.lock_of(record.name)
            regions = self._regional_records(record)
            if len(regions) > 1:
                observed = observe_regions(record, regions, lock, self.cluster_for, probe=probe)
            else:
                observed = observe(record, lock, self.cluster_for, probe=probe)
                observed["regions"] = [
                    {"region": record.region, "stack": self._stack_names(record)[0], "state": record.state.value}
                    | {k: observed.get(k) for k in ("replicas", "endpoint", "health")}
                ]
            layer = next((s for s in record.stacks if s.region == GLOBAL_REGION), None)
            if layer is not None:
                observed["global"] = layer.as_dict()
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
