"""Run the checks over a graph, and compare a declared graph with a live one (drift)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from byoc.catalogs import MEGA_REGIONS, load_catalog
from compliance.checks import checks_for
from compliance.checks import gcp as gcp_checks
from compliance.model import Check, Finding, Graph, Resource, Status, Verdict, frameworks


def allowed_regions(cloud: str, requested: str, region: str) -> tuple[str, ...]:
    """The regions the spec allows: every region of a mega-region, or the one region asked for."""
    catalog = load_catalog()
    mega = requested.upper()
    if mega == "GLOBAL":
        return catalog.regions(cloud)
    if mega in MEGA_REGIONS:
        return catalog.mega_regions[cloud][mega]
    return (region,)


def unseen_in_plan(plan: dict[str, Any]) -> dict[str, str]:
    """Resource types whose evidence a plan cannot hold, and why: their checks are NOT_ASSESSED, never PASS."""
    from compliance.checks import aws, gcp

    readers = {"aws": aws.unseen_in_plan, "gcp": gcp.unseen_in_plan}
    reader = readers.get(str(plan.get("cloud")))
    return reader(plan) if reader else {}


def graph_from_plan(plan: dict[str, Any]) -> Graph:
    """The plan's resources as a Graph; each resource carries its stack, and its region where the stack is a
    region's (plan.json placement.regions[].stack); the global layer's carry no region."""
    placement = plan["placement"]
    placed = [p for p in placement.get("regions") or [] if isinstance(p, dict)]
    region_of = {str(p.get("stack")): str(p.get("region")) for p in placed}
    resources = [
        Resource(
            type=r["type"],
            name=r["name"],
            id=r.get("id", r["name"]),
            inputs=r.get("inputs", {}),
            source="plan",
            region=region_of.get(str(r.get("stack"))) if len(placed) > 1 else None,
            stack=(r.get("stack") or None) if len(placed) > 1 else None,
        )
        for r in plan.get("resources", [])
    ]
    return Graph(
        resources=resources,
        deployment=plan["name"],
        region=placement["region"],
        requested_region=placement["requested_region"],
        allowed_regions=allowed_regions(plan["cloud"], placement["requested_region"], placement["region"]),
        source="plan",
        unassessed=unseen_in_plan(plan),
        cloud=plan["cloud"],
        customer_keys=customer_keys(plan),
        regions=tuple(str(p.get("region")) for p in placed),
        global_stack=placement.get("global_stack"),
    )


def customer_keys(plan: dict[str, Any]) -> tuple[str, ...]:
    """The key a plan names but does not create (encryption.kms_key), if any."""
    given = str((plan.get("encryption") or {}).get("kms_key") or "create")
    return () if given == "create" else (given,)


def load_plan(path: Path) -> dict[str, Any]:
    from byoc.errors import ByocError

    if not path.exists():
        raise ByocError("--plan", f"{path} does not exist", "run `byoc plan --out DIR` and pass DIR/plan.json")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ByocError("--plan", f"{path} is not UTF-8 text", "pass the plan.json `byoc plan` wrote") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ByocError("--plan", f"cannot read {path}: {exc}", "pass the plan.json `byoc plan` wrote") from None
    if not isinstance(data, dict) or "placement" not in data:
        raise ByocError("--plan", f"{path} is not a byoc plan", "pass the plan.json `byoc plan` wrote")
    if not data.get("resources"):
        raise ByocError(
            "--plan", f"{path} records no resources ({data.get('cloud')} has no stack yet)", "plan an AWS deployment"
        )
    return data


NOT_READ = "(not read)"


def _silent(check: Check, graph: Graph) -> Finding:
    """The NOT_ASSESSED finding of a check that applies to the deployment but found nothing to judge."""
    for type_token in check.resource_types:
        if type_token in graph.unassessed:
            unread = Resource(
                type=type_token,
                name=NOT_READ,
                id="",
                inputs={},
                source=graph.source,
                region=graph.region if graph.stack else None,
                stack=graph.stack,
            )
            return Finding(check, Status.NOT_ASSESSED, unread, (), graph.unassessed[type_token])
    kinds = ", ".join(t.rsplit(":", 1)[-1] for t in check.resource_types)
    absent = Resource(type=check.resource_types[0], name="(none)", id="", inputs={}, source=graph.source)
    absent = replace(absent, region=graph.region if graph.stack else None, stack=graph.stack)
    if graph.source == "plan":
        reason = f"the plan of deployment {graph.deployment} declares no {kinds}" + (
            f" in {graph.region} (stack {graph.stack})" if graph.stack else ""
        )
    elif graph.not_found:
        reason = graph.not_found
    elif all(t.startswith("kubernetes:") for t in check.resource_types):
        reason = f"the cluster has no {kinds} labelled app.kubernetes.io/managed-by=byoc"
    else:
        reason = f"the account has no {kinds} of deployment {graph.deployment} in {graph.region}"
    return Finding(check, Status.NOT_ASSESSED, absent, (), reason)


def evaluate(graph: Graph, frameworks: Iterable[str] | None = None) -> list[Finding]:
    """Every applicable check on every resource it applies to; a check that raises becomes an ERROR finding.

    No check of the graph's cloud (or Kubernetes) stays silent, in the plan or live: one that found nothing to
    judge yields a NOT_ASSESSED finding saying why (a customer key the plan does not hold, an account setting byoc
    does not manage, no cluster access, none of the resource type in the account).

    The findings come in one order: the checks' own, then per check its resources by type token, name and id.
    """
    graph = graph.in_order()  # a plan's or a collector's order means nothing; the reports must not depend on it
    wanted = set(frameworks) if frameworks is not None else None
    findings: list[Finding] = []
    scopes = _scopes(graph)
    for check in checks_for(graph.cloud):
        if wanted is not None and not any(c.split(":")[0] in wanted for c in check.controls):
            continue
        for scope, judged, speaks in scopes:
            found: list[Finding] = []
            for resource in judged:
                if not check.applies_to(resource):
                    continue
                try:
                    result = check.evaluate(resource, scope)
                except Exception as exc:  # a malformed resource must not stop the report
                    result = Verdict(Status.ERROR, (), f"{type(exc).__name__}: {exc}")
                found.append(Finding(check, result.status, resource, result.evidence, result.reason))
            for type_token, reason in scope.errors.items():
                if type_token in check.resource_types:
                    unreadable = Resource(type=type_token, name="(unreadable)", id="", inputs={}, source=graph.source)
                    found.append(Finding(check, Status.ERROR, unreadable, (), reason))
            if not found and graph.cloud is not None and speaks and not _declared_once_elsewhere(check, graph):
                found.append(_silent(check, scope))
            findings += found
    return findings


# Objects a cloud account or project holds once, whatever the region: a multi-region plan declares them in one
# stack (the primary's), and the other regions' stacks lack them by design, not by omission. A GCP project has one
# Data Access audit configuration per service (Cloud Audit Logs, "Configure Data Access audit logs": IAM policy
# auditConfigs), so a second region's stack creating it would fight the first over it.
PROJECT_WIDE_TYPES = frozenset({gcp_checks.AUDIT_CONFIG})


def _declared_once_elsewhere(check: Check, graph: Graph) -> bool:
    """A check of project-wide objects only, one of which another stack of the plan declares: judged there, and no
    region is NOT_ASSESSED for not declaring the project's one again."""
    types = set(check.resource_types)
    return bool(types) and types <= PROJECT_WIDE_TYPES and any(r.type in types for r in graph.resources)


def _scopes(graph: Graph) -> list[tuple[Graph, list[Resource], bool]]:
    """Where each check runs: (the graph it reads, the resources it judges, whether it says so when it finds none).

    A graph of one stack is one scope. A multi-region plan is judged region by region: each region's stack reads
    only its own resources, so a check that expects one trail, one key or one artifact bucket per deployment holds
    in every region and never pairs one region's trail with another's bucket, and a check that finds nothing in a
    region says so for that region. The global layer's resources (one private name over every region) read the
    whole graph, and the global layer adds no NOT_ASSESSED finding for what it does not declare."""
    stacks = list(dict.fromkeys(r.stack for r in graph.resources if r.stack))
    if len(stacks) <= 1:
        return [(graph, graph.resources, True)]
    scopes = []
    for stack in stacks:
        mine = [r for r in graph.resources if r.stack == stack]
        if stack == graph.global_stack:
            scopes.append((graph, mine, False))
            continue
        region = next((r.region for r in mine if r.region), graph.region)
        scopes.append((replace(graph, resources=mine, region=region, stack=stack), mine, True))
    return scopes


@dataclass(frozen=True)
class Drift:
    check_id: str
    declared: str
    live: str
    resources: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"check_id": self.check_id, "declared": self.declared, "live": self.live, "resources": self.resources}


def _worst(findings: list[Finding]) -> str:
    statuses = {f.status for f in findings}
    for status in (
        Status.FAIL,
        Status.ERROR,
        Status.PASS,
        Status.EXCEPTION,
        Status.NOT_APPLICABLE,
        Status.NOT_ASSESSED,
    ):
        if status in statuses:
            return status.value
    return "MISSING"


def drift(declared: list[Finding], live: list[Finding]) -> list[Drift]:
    """Checks whose outcome differs between what the plan declares and what the account has."""
    differences = []
    for check_id in sorted({f.check.id for f in declared}):
        planned = [f for f in declared if f.check.id == check_id]
        actual = [f for f in live if f.check.id == check_id]
        if actual and all(f.resource.name == NOT_READ for f in actual):
            continue  # not looked at (e.g. no cluster access): nothing to compare
        if all(f.status == Status.NOT_ASSESSED for f in planned):
            continue  # the plan cannot show it (a customer key, an account setting): nothing declared to compare
        want, have = _worst(planned), _worst(actual)
        if want != have:
            names = sorted({f.resource.name for f in actual if f.status.value == have}) or ["(no live resource)"]
            differences.append(Drift(check_id, want, have, names))
    return differences


@dataclass(frozen=True)
class ControlSummary:
    framework: str
    control: str
    title: str
    status: str  # PASS | FAIL | ERROR | NOT_ASSESSED | EXCEPTION
    checks: list[str]
    passed: int
    failed: int
    errors: int
    not_assessed: int = 0
    exceptions: int = 0
    unassessed_checks: tuple[str, ...] = ()  # the checks that make it NOT_ASSESSED
    failed_checks: tuple[str, ...] = ()  # the checks that make it FAIL
    errored_checks: tuple[str, ...] = ()  # the checks whose evidence could not be read (ERROR)

    @property
    def ref(self) -> str:
        return f"{self.framework}:{self.control}"

    def checks_cell(self) -> str:
        """The control's checks as a report lists them, naming those that failed, errored or were not assessed."""
        listed = ", ".join(self.checks) or "-"
        if self.failed_checks:
            listed += f" (failing: {', '.join(self.failed_checks)})"
        if self.errored_checks:
            listed += f" (error: {', '.join(self.errored_checks)})"
        if self.unassessed_checks:
            listed += f" (not assessed: {', '.join(self.unassessed_checks)})"
        return listed


def control_summaries(findings: list[Finding], selected: Iterable[str]) -> list[ControlSummary]:
    """One row per control of the selected frameworks: the one place a control's status is decided, for every
    output (report.md, report.html, summary.json, OSCAL).

    Status: FAIL if any check failed, else ERROR if evidence could not be read, else NOT_ASSESSED if any of its
    checks was not assessed (or it has no evidence at all), else PASS; EXCEPTION when the only evidence is a
    documented exception (a property byoc declines by design). What was not seen is never a pass.
    """
    summaries = []
    for framework_id in selected:
        for control in frameworks()[framework_id].controls:
            related = [f for f in findings if control.ref in f.check.controls and f.status != Status.NOT_APPLICABLE]
            count = {s: sum(f.status == s for f in related) for s in Status}
            if count[Status.FAIL]:
                status = "FAIL"
            elif count[Status.ERROR]:
                status = "ERROR"
            elif count[Status.NOT_ASSESSED] or not (count[Status.PASS] or count[Status.EXCEPTION]):
                status = "NOT_ASSESSED"
            else:
                status = "PASS" if count[Status.PASS] else "EXCEPTION"
            summaries.append(
                ControlSummary(
                    framework_id,
                    control.id,
                    control.title,
                    status,
                    sorted({f.check.id for f in related}),
                    count[Status.PASS],
                    count[Status.FAIL],
                    count[Status.ERROR],
                    count[Status.NOT_ASSESSED],
                    count[Status.EXCEPTION],
                    tuple(sorted({f.check.id for f in related if f.status == Status.NOT_ASSESSED})),
                    tuple(sorted({f.check.id for f in related if f.status == Status.FAIL})),
                    tuple(sorted({f.check.id for f in related if f.status == Status.ERROR})),
                )
            )
    return summaries
