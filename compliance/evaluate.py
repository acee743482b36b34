"""Run the checks over a graph, and compare a declared graph with a live one (drift)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byoc.catalogs import MEGA_REGIONS, load_catalog
from compliance.checks import all_checks
from compliance.model import Finding, Graph, Resource, Status, Verdict


def allowed_regions(cloud: str, requested: str, region: str) -> tuple[str, ...]:
    """The regions the spec allows: every region of a mega-region, or the one region asked for."""
    catalog = load_catalog()
    mega = requested.upper()
    if mega == "GLOBAL":
        return catalog.regions(cloud)
    if mega in MEGA_REGIONS:
        return catalog.mega_regions[cloud][mega]
    return (region,)


def graph_from_plan(plan: dict[str, Any]) -> Graph:
    placement = plan["placement"]
    resources = [
        Resource(type=r["type"], name=r["name"], id=r.get("id", r["name"]), inputs=r.get("inputs", {}), source="plan")
        for r in plan.get("resources", [])
    ]
    return Graph(
        resources=resources,
        deployment=plan["name"],
        region=placement["region"],
        requested_region=placement["requested_region"],
        allowed_regions=allowed_regions(plan["cloud"], placement["requested_region"], placement["region"]),
        source="plan",
    )


def load_plan(path: Path) -> dict[str, Any]:
    from byoc.errors import ByocError

    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ByocError(
            "--plan", f"{path} does not exist", "run `byoc plan --out DIR` and pass DIR/plan.json"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ByocError("--plan", f"cannot read {path}: {exc}", "pass the plan.json `byoc plan` wrote") from None
    if not isinstance(data, dict) or "placement" not in data:
        raise ByocError("--plan", f"{path} is not a byoc plan", "pass the plan.json `byoc plan` wrote")
    if not data.get("resources"):
        raise ByocError(
            "--plan", f"{path} records no resources ({data.get('cloud')} has no stack yet)", "plan an AWS deployment"
        )
    return data


def evaluate(graph: Graph, frameworks: Iterable[str] | None = None) -> list[Finding]:
    """Every applicable check on every resource it applies to; a check that raises becomes an ERROR finding."""
    wanted = set(frameworks) if frameworks is not None else None
    findings: list[Finding] = []
    for check in all_checks():
        if wanted is not None and not any(c.split(":")[0] in wanted for c in check.controls):
            continue
        for resource in graph.resources:
            if not check.applies_to(resource):
                continue
            try:
                result = check.evaluate(resource, graph)
            except Exception as exc:  # a malformed resource must not stop the report
                result = Verdict(Status.ERROR, (), f"{type(exc).__name__}: {exc}")
            findings.append(Finding(check, result.status, resource, result.evidence, result.reason))
        for type_token, reason in graph.errors.items():
            if type_token in check.resource_types:
                unreadable = Resource(type=type_token, name="(unreadable)", id="", inputs={}, source=graph.source)
                findings.append(Finding(check, Status.ERROR, unreadable, (), reason))
    return findings


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
    for status in (Status.FAIL, Status.ERROR, Status.PASS, Status.NOT_APPLICABLE):
        if status in statuses:
            return status.value
    return "MISSING"


def drift(declared: list[Finding], live: list[Finding]) -> list[Drift]:
    """Checks whose outcome differs between what the plan declares and what the account has."""
    differences = []
    for check_id in sorted({f.check.id for f in declared}):
        planned = [f for f in declared if f.check.id == check_id]
        actual = [f for f in live if f.check.id == check_id]
        want, have = _worst(planned), _worst(actual)
        if want != have:
            names = sorted({f.resource.name for f in actual if f.status.value == have}) or ["(no live resource)"]
            differences.append(Drift(check_id, want, have, names))
    return differences
