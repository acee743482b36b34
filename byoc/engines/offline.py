"""Run a Pulumi program offline under `pulumi.runtime.set_mocks` and record every resource it registers.

This is Pulumi's own unit-test path: the program runs unchanged, every resource registration reaches a mock monitor
(a wrong keyword argument fails at once with TypeError), and nothing is created. What we record per resource
(the Pulumi type token, the logical name, the inputs with the names the provider receives, the parent and the
provider) is the `resources` list of plan.json.

Pulumi registers resources from many threads at once, so the order in which they reach the monitor varies from run
to run, and the protobuf maps the inputs arrive in iterate in a per-process order. Neither means anything, and CI
reviews plans with `git diff`: the record is put in one order (the resource tree depth first, each parent before its
children, siblings by type token then logical name) and every mapping in the inputs is sorted by key.

Values only a live account knows are what the cloud would answer, made up in its formats: each cloud says them
(byoc/clouds/aws_offline.py, gcp_offline.py: the account, zones, ARNs, project, ids and service agents).
"""

from __future__ import annotations

import threading
from typing import Any

from byoc import interrupts
from byoc.clouds import get_cloud
from byoc.engines import Program
from byoc.errors import ByocFailure
from byoc.plan import SECRET_SHOWN, Plan, RecordedResource
from byoc.resolve import Deployment


def _plain(value: Any) -> Any:
    """Inputs as JSON: containers kept (mappings sorted by key: their order in the protobuf map that carried them
    changes from process to process), anything exotic (resource references, unknowns) as a string, and a Pulumi
    secret (an AUTH token, the kubeconfig) as SECRET_SHOWN: plan.json and the manifests never hold one in clear."""
    from pulumi.runtime import rpc

    if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig:
        return _redacted(value.get("value"))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _redacted(value: Any) -> Any:
    """A secret's shape (a Secret's stringData keeps its keys, so the manifest stays valid) without its values."""
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return SECRET_SHOWN


def _name_of(urn: str) -> str:
    """The logical name at the end of a URN (urn:pulumi:stack::project::type$type::name)."""
    return urn.rsplit("::", 1)[-1]


def _in_tree_order(resources: list[RecordedResource], parents: dict[str, str]) -> list[RecordedResource]:
    """The resources depth first down the resource tree: a parent before its children, siblings by type token and
    logical name. The order does not depend on when each registration reached the monitor."""
    by_urn = {r.urn: r for r in resources}
    paths: dict[str, tuple[tuple[str, str], ...]] = {}

    def path(urn: str) -> tuple[tuple[str, str], ...]:
        if urn not in paths:
            resource = by_urn[urn]
            parent = parents.get(urn, "")
            # the stack itself (and any parent not recorded) is the root
            above = path(parent) if parent in by_urn and parent != urn else ()
            paths[urn] = (*above, (resource.type, resource.name))
        return paths[urn]

    return sorted(resources, key=lambda r: (path(r.urn), r.urn))


def run_offline(deployment: Deployment, program: Program, stack: str | None = None) -> Plan:
    """Run the program under Pulumi's mocks and return every resource it registered, each marked with `stack`
    (default: the deployment's name, which is its stack's)."""
    import pulumi
    from pulumi.runtime import mocks, rpc, settings

    region = deployment.region
    stack_name = stack or deployment.name
    cloud = get_cloud(deployment.cloud)
    plan = Plan()
    lock = threading.Lock()
    parents: dict[str, str] = {}  # URN -> parent URN, to put the record in tree order

    class RecordingMocks(pulumi.runtime.Mocks):
        """Each resource's outputs are its inputs and what the cloud would compute (byoc/clouds/*_offline.py)."""

        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            outputs = dict(args.inputs)
            name = str(outputs.get("name") or args.name)
            resource_id, computed = cloud.offline_outputs(args.typ, args.name, name, outputs, region)
            outputs.update(computed)
            return resource_id or f"{args.name}-id", outputs

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
            return cloud.offline_call(args.token, dict(args.args), region) or {}, []

    class RecordingMonitor(mocks.MockMonitor):
        def RegisterResource(self, request: Any) -> Any:
            response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
            if request.type != "pulumi:pulumi:Stack":
                inputs = rpc.deserialize_properties(request.object)
                # URN: urn:pulumi:<stack>::<project>::<parent types$type>::<name>; the root is pulumi:pulumi:Stack
                parent_type = request.parent.split("::")[2].split("$")[-1] if request.parent else ""
                parent = None if parent_type in ("", "pulumi:pulumi:Stack") else _name_of(request.parent)
                # a provider reference is "<provider URN>::<provider id>"
                provider = _name_of(request.provider.rsplit("::", 1)[0]) if request.provider else None
                with lock:
                    parents[response.urn] = request.parent
                    plan.resources.append(
                        RecordedResource(
                            type=request.type,
                            name=request.name,
                            id=response.id,
                            inputs=_plain(inputs),
                            parent=parent,
                            provider=provider,
                            custom=bool(request.custom),
                            urn=response.urn,
                            stack=stack_name,
                        )
                    )
            return response

    settings.ROOT.set(None)  # a fresh root stack for every run in this process
    _ensure_event_loop()
    recording = RecordingMocks()
    pulumi.runtime.set_mocks(
        recording,
        project=f"byoc-{deployment.cloud}",
        stack=stack_name,
        preview=False,
        monitor=RecordingMonitor(recording),
    )
    try:
        # A signal in here stops the process rather than raising into Pulumi's event loop and its threads, where a
        # KeyboardInterrupt can be swallowed and leave the loop waiting forever (byoc.interrupts)
        with interrupts.abrupt():
            pulumi.runtime.test(lambda: program(deployment))()  # type: ignore[no-untyped-call]
    except TypeError:
        raise  # a wrong property name in a stack: a bug, shown with its traceback
    except Exception as exc:
        raise ByocFailure(
            "plan", f"the {deployment.cloud} program failed offline: {exc}", "report this as a bug"
        ) from exc
    plan.resources[:] = _in_tree_order(plan.resources, parents)
    return plan


def _ensure_event_loop() -> None:
    """Pulumi's mocks run on the thread's current event loop (`asyncio.get_event_loop()`). A process that ran
    `asyncio.run()` before (a tool embedding byoc, a test session) has none left, and the plan would fail with "There
    is no current event loop": give it one, once (a loop per plan would leak its file descriptors)."""
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())


def render(deployment: Deployment) -> Plan | None:
    """The deployment's resource graph offline, with the rules that need the rendered objects applied (the
    Kubernetes object size, byoc.manifests.check_object_sizes); None for a cloud without a stack.

    Raises:
        ByocError: a rendered object Kubernetes would not store (exit 2).
        ByocFailure: the program failed offline.
    """
    from byoc.engines import global_program_for, program_for
    from byoc.manifests import check_object_sizes

    program = program_for(deployment)
    if program is None:
        return None
    if not deployment.multi_region:
        plan = run_offline(deployment, program)
    else:
        # one stack per region, then the global layer (one private name, failover) over their outputs
        plan = Plan()
        for regional in deployment.per_region:
            plan.resources += run_offline(regional, program, deployment.stack_name(regional.region)).resources
        global_program = global_program_for(deployment)
        if global_program is not None:
            plan.resources += run_offline(deployment, global_program, deployment.stack_name()).resources
    check_object_sizes(plan, len(deployment.addons))
    return plan


def check_renders(deployment: Deployment) -> None:
    """`validate` and the lifecycle, before anything runs: the rules on rendered objects (`render`), where they can
    bite. Only a deployment with addons renders: each addon adds to the gateway Deployment's arguments and the
    engine ConfigMap, so their number is what can grow an object past Kubernetes' 1 MiB from a spec file that is
    itself at most 1 MiB (byoc.yamlio.MAX_FILE_BYTES); every other input appears once. (Rendering costs seconds,
    which `validate` of a spec without addons does not pay.)"""
    if deployment.addons:
        render(deployment)
