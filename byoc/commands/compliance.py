"""`byoc compliance report`: the compliance evidence pack (compliance/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from byoc.commands.common import Output, OutputOpt, print_json, reporting
from byoc.errors import ByocError

FRAMEWORKS = ("hipaa", "soc2", "iso27001")


def parse_frameworks(value: str) -> list[str]:
    chosen = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FRAMEWORKS]
    if unknown or not chosen:
        raise ByocError(
            "--framework", f"unknown framework {', '.join(unknown) or '(none)'}", f"use {','.join(FRAMEWORKS)}"
        )
    return chosen


def _live_graph(
    cloud: str,
    region: str | None,
    deployment: str | None,
    kubeconfig: Path | None,
    plan_document: dict[str, Any] | None,
    declared: Any,
) -> Any:
    """The deployment read from the live account (--live), after every flag is checked and the credentials reach
    an account. Raises ByocError (exit 2) naming the flag; ByocFailure without credentials."""
    from byoc.catalogs import CLOUDS
    from byoc.clouds import Feature, get_cloud
    from byoc.names import DNS_LABEL
    from byoc.spec import NAME_MAX

    if cloud not in CLOUDS:
        raise ByocError("--cloud", f"unknown cloud {cloud!r}", f"one of {', '.join(CLOUDS)}")
    live_cloud = get_cloud(cloud)
    live_cloud.check_features([Feature.LIVE_EVIDENCE], "--cloud", "use --plan for the evidence of the plan")
    if not region or not deployment:
        raise ByocError("--live", "needs --region and --deployment", "e.g. --region eu-west-2 --deployment demo")
    if region not in live_cloud.regions:
        raise ByocError("--region", f"{region!r} is not an {live_cloud.title} region", "e.g. --region eu-west-2")
    if not DNS_LABEL.match(deployment) or len(deployment) > NAME_MAX:
        raise ByocError("--deployment", f"{deployment!r} is not a byoc deployment name", "the spec's name, e.g. demo")
    # No credentials is one clear failure, not one ERROR per check and a drift line per control.
    live_cloud.account_identity(region, "--live")
    given = str((plan_document or {}).get("encryption", {}).get("kms_key") or "create")
    customer_keys = [] if given == "create" else [given]
    requested = declared.requested_region if declared else region
    return live_cloud.collect_evidence(deployment, region, requested, kubeconfig, customer_keys)


def report(
    plan: Annotated[
        Path | None, typer.Option("--plan", help="plan.json written by `byoc plan` (what is declared).")
    ] = None,
    live: Annotated[bool, typer.Option("--live", help="Read the live account (what exists).")] = False,
    cloud: Annotated[str, typer.Option("--cloud", help="Cloud of the live account (aws).")] = "aws",
    region: Annotated[str | None, typer.Option("--region", help="Region of the live deployment.")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment", help="Deployment name (live).")] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            help="Kubeconfig of the deployment's cluster (live): its Kubernetes objects are read through the API; "
            "without it their checks are NOT_ASSESSED (no cluster access).",
        ),
    ] = None,
    framework: Annotated[str, typer.Option("--framework", help="Comma-separated: hipaa,soc2,iso27001.")] = ",".join(
        FRAMEWORKS
    ),
    out: Annotated[Path, typer.Option("--out", help="Folder for the evidence pack.")] = Path("compliance-report"),
    output: OutputOpt = Output.text,
) -> None:
    """Check the deployment against HIPAA, SOC 2 and ISO 27001 controls and write the evidence pack.

    Exit 0 when no check fails, 1 when one fails (or could not be evaluated live, or the live deployment was not
    found), 2 for bad input. With --live and
    --plan together, differences between what the plan declares and what the account has are reported as drift.
    Every check says something, in the plan and live: PASS, FAIL, ERROR (with the API's error) or NOT_ASSESSED
    (with why); a property byoc declines by design is an EXCEPTION with its reason. A control with a NOT_ASSESSED
    check is NOT_ASSESSED, never PASS.
    """
    from compliance.evaluate import drift, evaluate, graph_from_plan, load_plan
    from compliance.reports import write_pack

    with reporting(output):
        selected = parse_frameworks(framework)
        if not live and plan is None:
            raise ByocError("--plan", "nothing to check", "pass --plan DIR/plan.json, or --live with --deployment")
        plan_document = load_plan(plan) if plan is not None else None
        declared = graph_from_plan(plan_document) if plan_document is not None else None
        if live:
            graph = _live_graph(cloud, region, deployment, kubeconfig, plan_document, declared)
        else:
            assert declared is not None
            graph = declared
        findings = evaluate(graph, selected)
        differences = drift(evaluate(declared, selected), findings) if live and declared is not None else []
        try:
            result = write_pack(graph, findings, selected, out, differences)
        except OSError as exc:
            raise ByocError("--out", f"cannot write {out}: {exc.strerror}", "choose a writable folder") from None
    # a deployment that was not found is not a passing one
    failing = result["findings"]["FAIL"] + result["findings"]["ERROR"] + bool(result["headline"])
    if output is Output.json:
        print_json({"out": str(out), **result})
    else:
        if result["headline"]:
            print(result["headline"])
        counts = ", ".join(f"{k} {v}" for k, v in result["findings"].items())
        print(
            f"{result['checks']} checks ({result['checks_evaluated']} with a PASS or FAIL) on {graph.source} "
            f"resources: {counts}"
        )
        for total in result["frameworks"]:
            print(
                f"  {total['title']}: {total['passing']} controls passing, {total['failing']} failing, "
                f"{total['errors']} errors, {total['not_assessed']} not assessed"
            )
        for difference in result["drift"]:
            print(f"  drift: {difference['check_id']} declared {difference['declared']}, live {difference['live']}")
        print(f"wrote {out}/ (report.html, report.md, findings.json, OSCAL, OCSF, manifest.sha256)")
    if failing:
        raise typer.Exit(1)


def checks(
    markdown: Annotated[bool, typer.Option("--markdown", help="Coverage tables as Markdown.")] = False,
    output: OutputOpt = Output.text,
) -> None:
    """List every check and every control with the checks that evidence it."""
    from compliance.coverage import MAPPINGS_LINE, counts_line, coverage_markdown, coverage_rows

    if markdown:
        print(coverage_markdown(), end="")
        return
    rows = coverage_rows()
    if output is Output.json:
        print_json(rows)
        return
    print(counts_line(rows["counts"]))
    print(MAPPINGS_LINE)
    for check in rows["checks"]:
        print(f"{check['id']:<58} {check['cloud']:<10} {' '.join(check['controls'])}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        rich_markup_mode=None,
        help="Compliance evidence: HIPAA, SOC 2 and ISO 27001 controls checked on the deployment.",
    )
    group.command("report")(report)
    group.command("checks")(checks)
    app.add_typer(group, name="compliance")
