"""Machine formats: findings.json, findings.csv, findings.ocsf.jsonl (OCSF Compliance Finding, class 2003).

Each lists the findings in the order `compliance.evaluate` gives them; the only time is each OCSF record's `time`,
the pack's time (compliance.reports.timestamps).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

from byoc import __version__
from compliance.model import Finding, Graph, Status

OCSF_VERSION = "1.1.0"
SEVERITY_IDS = {"low": 2, "medium": 3, "high": 4, "critical": 5}
# OCSF compliance.status_id: 1 Pass, 2 Warning, 3 Fail, 99 Other (Unknown 0)
COMPLIANCE_STATUS = {
    Status.PASS: (1, "Pass"),
    Status.FAIL: (3, "Fail"),
    Status.ERROR: (99, "Error"),
    Status.NOT_APPLICABLE: (99, "Not applicable"),
    Status.NOT_ASSESSED: (0, "Unknown"),
    Status.EXCEPTION: (99, "Exception"),
}
STANDARDS = {"hipaa": "HIPAA Security Rule", "soc2": "SOC 2 (2017 TSC)", "iso27001": "ISO/IEC 27001:2022"}
PROVIDERS = {"aws": "AWS", "gcp": "GCP", "kubernetes": "Kubernetes"}


def write_json(findings: list[Finding], selected: list[str], path: Path) -> None:
    path.write_text(json.dumps([f.as_dict(selected) for f in findings], indent=2) + "\n")


def write_csv(findings: list[Finding], selected: list[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "check_id",
                "status",
                "severity",
                "resource_type",
                "resource",
                "region",
                "stack",
                "controls",
                "evidence",
                "reason",
                "remediation",
            ]
        )
        for f in findings:
            writer.writerow(
                [
                    f.check.id,
                    f.status.value,
                    f.check.severity,
                    f.resource.type,
                    f.resource.name,
                    f.resource.region or "",
                    f.resource.stack or "",
                    " ".join(f.controls(selected)),
                    json.dumps([e.as_dict() for e in f.evidence]),
                    f.reason,
                    f.check.remediation,
                ]
            )


def ocsf(finding: Finding, graph: Graph, selected: list[str], now_ms: int) -> dict[str, object]:
    status_id, status = COMPLIANCE_STATUS[finding.status]
    controls = finding.controls(selected)
    cloud = finding.check.cloud if finding.check.cloud in ("aws", "gcp") else None
    record: dict[str, object] = {
        "activity_id": 1,
        "activity_name": "Create",
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2003,
        "class_name": "Compliance Finding",
        "type_uid": 200301,
        "type_name": "Compliance Finding: Create",
        "severity_id": SEVERITY_IDS[finding.check.severity],
        "severity": finding.check.severity.capitalize(),
        "status_id": 1,
        "status": "New",
        "time": now_ms,
        "message": f"{finding.check.title}: {finding.status.value}",
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "byoc", "vendor_name": "byoc", "version": __version__},
            "labels": [f"source:{finding.resource.source}", f"deployment:{graph.deployment}"],
        },
        "finding_info": {
            "uid": f"{graph.deployment}:{finding.check.id}:{finding.resource.type}:{finding.resource.name}",
            "title": finding.check.title,
            "desc": finding.check.risk,
            "types": ["Compliance"],
        },
        "compliance": {
            "control": finding.check.id,
            "requirements": controls,
            "standards": sorted({STANDARDS[c.split(":")[0]] for c in controls}),
            "status": status,
            "status_id": status_id,
            "status_detail": finding.reason or None,
        },
        "resources": [
            {
                "uid": finding.resource.id or finding.resource.name,
                "name": finding.resource.name,
                "type": finding.resource.type,
                "region": finding.resource.region or graph.region,
            }
        ],
        "remediation": {"desc": finding.check.remediation},
        "unmapped": {"evidence": [e.as_dict() for e in finding.evidence]},
    }
    if cloud:
        # the region of the finding's own resource (a multi-region plan's second region is not the primary's)
        record["cloud"] = {"provider": PROVIDERS[cloud], "region": finding.resource.region or graph.region}
    return record


def write_ocsf(findings: list[Finding], graph: Graph, selected: list[str], path: Path, now: datetime) -> None:
    now_ms = int(now.timestamp() * 1000)
    with path.open("w") as handle:
        for finding in findings:
            handle.write(json.dumps(ocsf(finding, graph, selected, now_ms), default=str) + "\n")
