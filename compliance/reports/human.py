"""report.md and report.html: for people. A summary per framework and control, failing checks first, each with
its evidence and remediation."""

from __future__ import annotations

import html
from typing import Any

from compliance.evaluate import ControlSummary, Drift, control_summaries
from compliance.model import Finding, Graph, Status, frameworks


def framework_totals(summaries: list[ControlSummary], selected: list[str]) -> list[dict[str, Any]]:
    totals = []
    for framework_id in selected:
        rows = [s for s in summaries if s.framework == framework_id]
        totals.append(
            {
                "framework": framework_id,
                "title": frameworks()[framework_id].title,
                "controls": len(rows),
                "passing": sum(s.status == "PASS" for s in rows),
                "failing": sum(s.status == "FAIL" for s in rows),
                "errors": sum(s.status == "ERROR" for s in rows),
                "not_assessed": sum(s.status == "NOT_ASSESSED" for s in rows),
            }
        )
    return totals


def _where(graph: Graph) -> str:
    return ", ".join(graph.regions) if len(graph.regions) > 1 else graph.region


def region_lines(graph: Graph, findings: list[Finding]) -> list[str]:
    """A multi-region plan's findings per region (each region's stack is judged on its own resources): a table of
    the statuses per region and stack; nothing for one region."""
    if len(graph.regions) < 2:
        return []
    order = {region: index for index, region in enumerate(graph.regions)}
    stacks = sorted(
        dict.fromkeys((f.resource.region or "global", f.resource.stack or "") for f in findings),
        key=lambda where: order.get(where[0], len(order)),
    )
    lines = [
        f"## Regions ({', '.join(graph.regions)}; residency {graph.requested_region})",
        "",
        "| region | stack | " + " | ".join(s.value.lower().replace("_", " ") for s in Status) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in Status) + " |",
    ]
    for region, stack in stacks:
        mine = [f for f in findings if (f.resource.region or "global", f.resource.stack or "") == (region, stack)]
        lines.append(
            f"| {region} | {stack} | " + " | ".join(str(sum(f.status == s for f in mine)) for s in Status) + " |"
        )
    return [*lines, ""]


def _ordered(findings: list[Finding]) -> list[Finding]:
    rank = {
        Status.FAIL: 0,
        Status.ERROR: 1,
        Status.NOT_ASSESSED: 2,
        Status.EXCEPTION: 3,
        Status.PASS: 4,
        Status.NOT_APPLICABLE: 5,
    }
    severity = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    return sorted(findings, key=lambda f: (rank[f.status], severity[f.check.severity], f.check.id, f.resource.name))


def _evidence(finding: Finding) -> str:
    parts = [f"{e.path} = {e.value!r}" for e in finding.evidence]
    if finding.reason:
        parts.append(finding.reason)
    return "; ".join(parts)


def markdown(
    graph: Graph,
    findings: list[Finding],
    selected: list[str],
    drift: list[Drift],
    notices: list[str],
    headline: str | None = None,
) -> str:
    summaries = control_summaries(findings, selected)
    lines = [
        f"# Compliance report: byoc deployment `{graph.deployment}`",
        "",
        *([f"**{headline}**", ""] if headline else []),
        f"Source: **{graph.source}** resources in {_where(graph)} (requested: {graph.requested_region}). "
        f"{len({f.check.id for f in findings})} checks, {len(findings)} findings.",
        "",
        "## Summary",
        "",
        "| framework | controls | passing | failing | errors | not assessed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for total in framework_totals(summaries, selected):
        lines.append(
            f"| {total['title']} | {total['controls']} | {total['passing']} | {total['failing']} | {total['errors']} "
            f"| {total['not_assessed']} |"
        )
    statuses = {s: sum(f.status == s for f in findings) for s in Status}
    lines += ["", "Findings: " + ", ".join(f"{s.value} {n}" for s, n in statuses.items()), ""]
    lines += region_lines(graph, findings)
    for notice in notices:
        lines.append(f"> **Notice:** {notice}")
    if drift:
        lines += [
            "",
            "## Drift (declared vs live)",
            "",
            "| check | declared | live | resources |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {d.check_id} | {d.declared} | {d.live} | {', '.join(d.resources)} |" for d in drift]
    lines += ["", "## Controls", "", "| control | title | status | checks |", "| --- | --- | --- | --- |"]
    for s in sorted(
        summaries, key=lambda s: ({"FAIL": 0, "ERROR": 1, "NOT_ASSESSED": 2, "PASS": 3}.get(s.status, 4), s.framework)
    ):
        lines.append(f"| {s.framework}:{s.control} | {s.title} | {s.status} | {s.checks_cell()} |")
    lines += ["", "## Findings (failing first)", ""]
    for finding in _ordered(findings):
        if finding.status == Status.NOT_APPLICABLE:
            continue
        lines += [
            f"### {finding.status.value} {finding.check.id} on `{finding.resource.name}`",
            "",
            f"{finding.check.title} ({finding.check.severity}; {', '.join(finding.controls(selected))})",
            "",
            f"- resource: `{finding.resource.type}` `{finding.resource.name}`",
            *(
                [f"- region: {finding.resource.region or 'global'} (stack `{finding.resource.stack}`)"]
                if finding.resource.stack
                else []
            ),
            f"- evidence: {_evidence(finding) or '-'}",
            f"- remediation: {finding.check.remediation}",
            "",
        ]
    exceptions = [f for f in findings if f.status == Status.EXCEPTION]
    if exceptions:
        lines += [
            "## Exceptions (declined by design)",
            "",
            "| check | resource | controls | why |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {f.check.id} | {f.resource.name} | {', '.join(f.controls(selected))} | {f.reason} |" for f in exceptions
        ]
        lines.append("")
    unassessed = [f for f in findings if f.status == Status.NOT_ASSESSED]
    if unassessed:
        lines += ["## Not assessed", "", "| check | resource type | why |", "| --- | --- | --- |"]
        lines += [f"| {f.check.id} | {f.resource.type} | {f.reason} |" for f in unassessed]
        lines.append("")
    not_applicable = [f for f in findings if f.status == Status.NOT_APPLICABLE]
    if not_applicable:
        lines += ["## Not applicable", "", "| check | resource | why |", "| --- | --- | --- |"]
        lines += [f"| {f.check.id} | {f.resource.name} | {f.reason} |" for f in not_applicable]
    return "\n".join(lines) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f23; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #d0d7de; padding: .35rem .6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.PASS { color: #1a7f37; font-weight: 600; } .FAIL { color: #cf222e; font-weight: 600; }
.ERROR { color: #9a6700; font-weight: 600; } .NOT_ASSESSED, .NOT_APPLICABLE { color: #57606a; }
.EXCEPTION { color: #8250df; font-weight: 600; }
code { font-size: .9em; }
"""


def _cell(value: object) -> str:
    return html.escape(str(value))


def _findings_table(table_id: str, title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A titled HTML table of findings (cells already escaped); nothing when there are none."""
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h2>{title}</h2><table id='{table_id}'><tr>{head}</tr>{body}</table>"


def html_report(
    graph: Graph,
    findings: list[Finding],
    selected: list[str],
    drift: list[Drift],
    notices: list[str],
    headline: str | None = None,
) -> str:
    summaries = control_summaries(findings, selected)
    rows = "".join(
        f"<tr><td>{_cell(t['title'])}</td><td>{t['controls']}</td><td>{t['passing']}</td><td>{t['failing']}</td>"
        f"<td>{t['errors']}</td><td>{t['not_assessed']}</td></tr>"
        for t in framework_totals(summaries, selected)
    )
    controls = "".join(
        f"<tr><td>{_cell(s.framework)}:{_cell(s.control)}</td><td>{_cell(s.title)}</td>"
        f"<td class='{s.status}'>{s.status}</td><td>{_cell(s.checks_cell())}</td></tr>"
        for s in sorted(
            summaries,
            key=lambda s: ({"FAIL": 0, "ERROR": 1, "NOT_ASSESSED": 2, "PASS": 3}.get(s.status, 4), s.framework),
        )
    )
    finding_rows = "".join(
        f"<tr><td class='{f.status.value}'>{f.status.value}</td><td><code>{_cell(f.check.id)}</code><br>"
        f"{_cell(f.check.title)}</td><td><code>{_cell(f.resource.name)}</code><br>{_cell(f.resource.type)}</td>"
        f"<td>{_cell(', '.join(f.controls(selected)))}</td><td>{_cell(_evidence(f))}</td>"
        f"<td>{_cell(f.check.remediation)}</td></tr>"
        for f in _ordered(findings)
    )
    drift_html = ""
    if drift:
        drift_rows = "".join(
            f"<tr><td>{_cell(d.check_id)}</td><td>{d.declared}</td><td class='{d.live}'>{d.live}</td>"
            f"<td>{_cell(', '.join(d.resources))}</td></tr>"
            for d in drift
        )
        drift_html = (
            "<h2>Drift (declared vs live)</h2><table id='drift'><tr><th>check</th><th>declared</th><th>live</th>"
            f"<th>resources</th></tr>{drift_rows}</table>"
        )
    notice_html = "".join(f"<p><strong>Notice:</strong> {_cell(n)}</p>" for n in notices)
    exceptions_html = _findings_table(
        "exceptions",
        "Exceptions (declined by design)",
        ("check", "resource", "controls", "why"),
        [
            (
                f"<code>{_cell(f.check.id)}</code>",
                f"<code>{_cell(f.resource.name)}</code>",
                _cell(", ".join(f.controls(selected))),
                _cell(f.reason),
            )
            for f in findings
            if f.status == Status.EXCEPTION
        ],
    )
    unassessed_html = _findings_table(
        "not-assessed",
        "Not assessed",
        ("check", "resource type", "why"),
        [
            (f"<code>{_cell(f.check.id)}</code>", _cell(f.resource.type), _cell(f.reason))
            for f in findings
            if f.status == Status.NOT_ASSESSED
        ],
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>byoc compliance: {_cell(graph.deployment)}</title>
<style>{STYLE}</style></head><body>
<h1>Compliance report: byoc deployment <code>{_cell(graph.deployment)}</code></h1>
{f"<p id='headline'><strong>{_cell(headline)}</strong></p>" if headline else ""}
<p>Source: <strong>{_cell(graph.source)}</strong> resources in {_cell(graph.region)}
(requested: {_cell(graph.requested_region)}); {len({f.check.id for f in findings})} checks,
{len(findings)} findings.</p>
<h2>Summary</h2>
<table id="summary"><tr><th>framework</th><th>controls</th><th>passing</th><th>failing</th><th>errors</th>
<th>not assessed</th></tr>{rows}</table>
{notice_html}
{drift_html}
<h2>Controls</h2>
<table id="controls"><tr><th>control</th><th>title</th><th>status</th><th>checks</th></tr>{controls}</table>
<h2>Findings (failing first)</h2>
<table id="findings"><tr><th>status</th><th>check</th><th>resource</th><th>controls</th><th>evidence</th>
<th>remediation</th></tr>{finding_rows}</table>
{exceptions_html}
{unassessed_html}
</body></html>
"""
