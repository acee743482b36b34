"""The lifecycle commands: `byoc up|preview|refresh|status|scale|update|destroy|unlock|preflight`.

Thin: each parses its flags and calls byoc.lifecycle, which owns the registry, the lock, preflight and the engine.
Long steps show rich's live progress on stderr; with `--output json` they stream one JSON event per line on stdout
and end with the result (`{"event": "result", ...}`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting
from byoc.commands.plan import CloudName, CloudOpt, ModelOpt, NameOpt, RegionOpt, ShapeOpt, SpecFileOpt, _spec
from byoc.errors import ByocError, ByocFailure

if TYPE_CHECKING:
    from byoc.lifecycle import Lifecycle, LiveOptions
    from byoc.spec import Spec

NameArg = Annotated[str, typer.Argument(help="Deployment name (see `byoc status`).", show_default=False)]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (for CI and scripts).")]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Pulumi state backend: file://PATH (default: under BYOC_HOME), s3://BUCKET[/PREFIX] or gs://BUCKET.",
    ),
]
UpgradeProvidersOpt = Annotated[
    bool,
    typer.Option(
        "--upgrade-providers",
        help="Run even though the stack was last deployed with other Pulumi SDK versions (`up` then records the "
        "installed ones: every machine sharing the stack must install them).",
    ),
]
SecretsOpt = Annotated[
    str | None,
    typer.Option(
        "--secrets-provider",
        help="passphrase (PULUMI_CONFIG_PASSPHRASE; the file backend's default), awskms://... or gcpkms://...",
    ),
]


def _options(
    backend: str | None, secrets_provider: str | None, yes: bool, upgrade_providers: bool = False
) -> LiveOptions:
    from byoc.lifecycle import LiveOptions

    return LiveOptions(backend=backend, secrets_provider=secrets_provider, yes=yes, upgrade_providers=upgrade_providers)


def _confirm(output: Output) -> Any:
    def ask(question: str) -> bool:
        if output is Output.text and sys.stdin.isatty():
            return bool(typer.confirm(question, default=False, err=True))
        raise ByocError(
            "--yes", "this changes billable resources in your account and needs a confirmation", "pass --yes"
        )

    return ask


@contextmanager
def _lifecycle(output: Output, live: bool = True) -> Iterator[Lifecycle]:
    from byoc.lifecycle import Lifecycle
    from byoc.progress import JsonLines, ProgressView, RichProgress, Silent

    view: ProgressView
    if output is Output.json:
        view = JsonLines() if live else Silent()
    else:
        view = RichProgress() if live and sys.stderr.isatty() else _PlainLines()
    lifecycle = Lifecycle(view=view, confirm=_confirm(output))
    with lifecycle.closing():
        try:
            yield lifecycle
        except ByocError:
            raise
        except Exception as exc:  # a bug or an answer nobody expected: the run is already FAILED with the reason
            if os.environ.get("BYOC_DEBUG"):
                raise
            raise ByocFailure(
                "byoc",
                f"unexpected error: {type(exc).__name__}: {exc}",
                "`byoc status` shows the deployment's state and reason; BYOC_DEBUG=1 shows the traceback",
            ) from None


class _PlainLines:
    """Progress without a terminal (CI logs): steps and warnings as lines on stderr."""

    def step(self, text: str, total: int | None = None) -> None:
        print(f"-- {text}" + (f" ({total} resources)" if total else ""), file=sys.stderr, flush=True)

    def engine_event(self, event: Any) -> None:
        from byoc.progress import describe

        described = describe(event)
        if described is None:
            return
        if described["event"] == "diagnostic":
            print(f"{described['severity']}: {described['message']}", file=sys.stderr, flush=True)
        elif described["event"] == "resource" and (
            described["status"] == "failed"
            or (described["status"] == "done" and described["op"] not in ("same", "read", "refresh"))
        ):
            what = f"{described['op']} {described['type']} {described['name']}"
            print(f"   {described['status']} {what}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def result(self, data: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _finish(lifecycle: Lifecycle, output: Output, result: dict[str, Any], text: list[str]) -> None:
    if output is Output.json:
        assert lifecycle.view is not None
        lifecycle.view.result(result)
    else:
        print("\n".join(text))


def _spec_for(
    file: Path | None,
    cloud: CloudName | None,
    region: str | None,
    model: str | None,
    shape: str | None,
    name: str | None,
) -> Spec:
    """The spec from -f and flags; with only --name, the spec the registry holds for it (so `up --name N` resumes)."""
    if file is None and name is not None:
        from byoc.registry import Registry
        from byoc.spec import build_spec

        registry = Registry()
        try:
            record = registry.get(name)
        finally:
            registry.close()
        if record is not None:
            overrides = {"cloud": cloud.value if cloud else None, "region": region, "model": model, "shape": shape}
            return build_spec(record.spec, overrides)
    return _spec(file, cloud, region, model, shape, name)


def _warn(spec: Spec) -> None:
    """Validate's warnings (deliberate choices, unpublished images) before anything runs, as validate says them."""
    from byoc.commands.common import print_warnings
    from byoc.resolve import resolve

    print_warnings(resolve(spec).warnings)


# -- commands ---------------------------------------------------------------------------------------------------
def up(
    file: SpecFileOpt = None,
    cloud: CloudOpt = None,
    region: RegionOpt = None,
    model: ModelOpt = None,
    shape: ShapeOpt = None,
    name: NameOpt = None,
    yes: YesOpt = False,
    backend: BackendOpt = None,
    secrets_provider: SecretsOpt = None,
    upgrade_providers: UpgradeProvidersOpt = False,
    output: OutputOpt = Output.text,
) -> None:
    """Create the deployment in your account, or re-run / resume it (needs the Pulumi CLI and credentials).

    Preflight (credentials, the instance type's zones, the GPU quota) runs first: nothing is created when it fails.
    A stack last deployed with other Pulumi SDK versions is refused (see --upgrade-providers).
    """
    with reporting(output):
        spec = _spec_for(file, cloud, region, model, shape, name)
        _warn(spec)
        with _lifecycle(output) as lifecycle:
            result = lifecycle.up(spec, _options(backend, secrets_provider, yes, upgrade_providers))
            outputs = result["outputs"]
            lines = [f"{result['name']}: {result['state']}"] + [f"  {k}: {v}" for k, v in outputs.items()]
            _finish(lifecycle, output, result, lines)


def preview(
    file: SpecFileOpt = None,
    cloud: CloudOpt = None,
    region: RegionOpt = None,
    model: ModelOpt = None,
    shape: ShapeOpt = None,
    name: NameOpt = None,
    diff: Annotated[bool, typer.Option("--diff", help="Show each resource's property changes.")] = False,
    backend: BackendOpt = None,
    secrets_provider: SecretsOpt = None,
    upgrade_providers: UpgradeProvidersOpt = False,
    output: OutputOpt = Output.text,
) -> None:
    """Show what `byoc up` would change in the account (a Pulumi preview; needs the Pulumi CLI and credentials)."""
    with reporting(output):
        spec = _spec_for(file, cloud, region, model, shape, name)
        _warn(spec)
        with _lifecycle(output) as lifecycle:
            options = _options(backend, secrets_provider, True, upgrade_providers)
            result = lifecycle.preview(spec, options, diff=diff)
            lines = [f"{result['name']}: " + (", ".join(f"{v} to {k}" for k, v in result["changes"].items()) or "-")]
            if diff:
                lines += [
                    f"  {s['op']:>8} {s['type']} {s['name']}" + (f" ({', '.join(s['diffs'])})" if s["diffs"] else "")
                    for s in result["steps"]
                    if s["op"] != "same"
                ]
            _finish(lifecycle, output, result, lines)


def refresh(name: NameArg, output: OutputOpt = Output.text) -> None:
    """Reconcile the stack with the cloud (pulumi refresh), clearing what a stopped run left pending."""
    with reporting(output), _lifecycle(output) as lifecycle:
        result = lifecycle.refresh(name, _options(None, None, True))
        lines = [f"{name}: refreshed ({result['changes']}); state {result['state']}"]
        lines += [f"  cleared pending {op['type']} {op['urn']}" for op in result["cleared_pending_operations"]]
        _finish(lifecycle, output, result, lines)


def scale(
    name: NameArg,
    min_replicas: Annotated[int, typer.Option("--min", min=0, help="Fewest replicas (0: scale to zero).")],
    max_replicas: Annotated[int, typer.Option("--max", min=1, help="Most replicas.")],
    output: OutputOpt = Output.text,
) -> None:
    """Change the replica bounds: the KEDA ScaledObject and the GPU node pool's bound (Karpenter's NodePool limit on
    AWS, the GKE node pool's maximum), nothing else."""
    with reporting(output), _lifecycle(output) as lifecycle:
        result = lifecycle.scale(name, min_replicas, max_replicas, _options(None, None, True))
        _finish(lifecycle, output, result, [f"{name}: replicas {min_replicas}..{max_replicas}"])


def update(
    name: NameArg,
    file: Annotated[Path, typer.Option("--file", "-f", help="The new spec (byoc.yaml).")],
    allow_replace: Annotated[
        bool, typer.Option("--allow-replace", help="Accept replacing the cluster or a node pool.")
    ] = False,
    yes: YesOpt = False,
    output: OutputOpt = Output.text,
) -> None:
    """Apply a changed spec that keeps placement; a model or shape change rebuilds and rolls the replicas."""
    with reporting(output):
        spec = _spec(file, None, None, None, None, None)
        _warn(spec)
        with _lifecycle(output) as lifecycle:
            result = lifecycle.update(name, spec, _options(None, None, yes), allow_replace=allow_replace)
            _finish(lifecycle, output, result, [f"{name}: updated ({result['changes']})"])


def destroy(name: NameArg, yes: YesOpt = False, output: OutputOpt = Output.text) -> None:
    """Delete everything of the deployment: controller-made objects, the stack, then tagged leftovers.

    Without --yes, only reports what would be deleted (including leftovers found by tag) and changes nothing.
    """
    with reporting(output), _lifecycle(output, live=yes) as lifecycle:
        result = lifecycle.destroy(name, _options(None, None, yes))
        lines = [f"{name}: {'would delete (dry run)' if result.get('dry_run') else result['state']}"]
        regions = result.get("regions") or []
        for region in regions if len(regions) > 1 else [result]:
            if len(regions) > 1:
                lines.append(f"  region {region['region']} ({region['stack']})")
            leftovers = (region.get("leftovers") or {}).get("resources") or []
            lines += [f"  {r['action']:>7} {r['kind']} {r['id']} ({r['tag']}) {r['error']}".rstrip() for r in leftovers]
        if result.get("hint"):
            lines.append(result["hint"])
        if output is Output.json and not yes:
            print_json(result)
        else:
            _finish(lifecycle, output, result, lines)


def unlock(name: NameArg, output: OutputOpt = Output.text) -> None:
    """Clear a lock left by a process that died on this machine (byoc's and Pulumi's); never a live or remote one."""
    with reporting(output), _lifecycle(output, live=False) as lifecycle:
        result = lifecycle.unlock(name)
    if output is Output.json:
        print_json(result)
    else:
        print("\n".join([f"{name}: cleared {c}" for c in result["cleared"]] or [f"{name}: no lock to clear"]))


def preflight(
    file: SpecFileOpt = None,
    cloud: CloudOpt = None,
    region: RegionOpt = None,
    model: ModelOpt = None,
    shape: ShapeOpt = None,
    name: NameOpt = None,
    output: OutputOpt = Output.text,
) -> None:
    """Check the account before anything is created: credentials, the instance type's zones, the GPU quota.
    Exit 1 when a check fails; a check that cannot be read says so and does not fail."""
    from byoc.lifecycle import capacity_need, preflights
    from byoc.resolve import resolve

    with reporting(output):
        deployment = resolve(_spec_for(file, cloud, region, model, shape, name))
        reports = [(capacity_need(where), report) for where, report in preflights(deployment)]
    # one report per region (each region must hold the whole peak on its own); the primary's also at the top
    regions = [{"region": need.region, "need": need.__dict__, **report.as_dict()} for need, report in reports]
    document = {"name": deployment.name, **regions[0], "regions": regions}
    if output is Output.json:
        print_json(document)
    else:
        for need, report in reports:
            print(
                f"{deployment.name}: {need.instances} x {need.instance_type} ({need.purchase_option}) in {need.region}"
            )
            for check in report.checks:
                print(f"  {check.status:>7}  {check.name}: {check.detail}")
                if check.hint and check.status != "ok":
                    print(f"           fix: {check.hint}")
    if not all(report.ok for _, report in reports):
        raise typer.Exit(1)


def status(
    name: Annotated[str | None, typer.Argument(help="One deployment (default: all).", show_default=False)] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow until the deployment settles.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=1.0, help="Seconds between looks with --watch.")] = 10.0,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Give up watching after this long.")] = 3600.0,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="Send one real completion through the endpoint.")
    ] = True,
    output: OutputOpt = Output.text,
) -> None:
    """State, placement, shape, replicas, endpoint, artifact, last events and health of your deployments."""
    from byoc.lifecycle import Lifecycle
    from byoc.registry import Registry

    deadline = time.monotonic() + timeout
    with reporting(output):
        while True:
            lifecycle = Lifecycle(registry=Registry())
            try:
                rows = lifecycle.status(name, probe=probe)
            finally:
                lifecycle.registry.close()
            if output is Output.json:
                print(json.dumps(rows) if watch else json.dumps(rows, indent=2), flush=True)
            else:
                _print_status(rows)
            if not watch or _settled(rows) or time.monotonic() >= deadline:
                break
            time.sleep(interval)


def _settled(rows: list[dict[str, Any]]) -> bool:
    moving = ("in progress", "starting", "waking", "waiting for GPUs")
    return all(not str(r["health"]).startswith(moving) for r in rows)


def _print_status(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no deployments (create one with `byoc up -f byoc.yaml`)")
        return
    for row in rows:
        placement = row["placement"]
        replicas = row.get("replicas")
        print(f"{row['name']}  {row['state']}  {row['health']}")
        print(f"  placement  {placement['cloud']} {placement['region']} ({row['instance_type']}), shape {row['shape']}")
        regions = row.get("regions") or []
        if len(regions) > 1:
            for region in regions:
                seen = region.get("replicas")
                ready = f"{seen['ready']}/{seen['desired']} ready" if seen else "replicas unknown"
                print(f"  region     {region['region']} ({region['stack']})  {region['state']}  {ready}")
                print(f"             {region['health']}")
                if region.get("endpoint"):
                    print(f"             endpoint {region['endpoint']}")
            layer = row.get("global")
            if layer:
                print(
                    f"  global     {layer['stack']}  {layer['state']}"
                    + (f": {layer['reason']}" if layer["reason"] else "")
                )
        if replicas:
            total = f" in {replicas['regions']} regions" if len(regions) > 1 else ""
            print(f"  replicas   {replicas['ready']}/{replicas['desired']} ready{total}")
        if row.get("endpoint"):
            print(f"  endpoint   {row['endpoint']}")
        if row.get("artifact"):
            print(f"  artifact   {row['artifact']}")
        for orphan in row.get("orphaned_pulumi") or []:
            print(f"  orphaned   pid {orphan['pid']}: {orphan['command']} (`byoc unlock {row['name']}` ends it)")
        for event in row["events"]:
            print(f"  {event['at']}  {event['message']}")


LIFECYCLE_COMMANDS = (up, preview, refresh, status, scale, update, destroy, unlock, preflight)


def register(app: typer.Typer) -> None:
    for command in LIFECYCLE_COMMANDS:
        app.command()(command)
