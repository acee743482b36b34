"""The evidence pack: every report format, written into one folder with a SHA-256 manifest of its files.

The same graph and findings give the same pack, byte for byte, except for the pack's time (listed in
compliance.reports.timestamps; fixed by SOURCE_DATE_EPOCH) and the manifest lines of the files that carry it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from byoc import __version__
from compliance.evaluate import Drift, control_summaries
from compliance.model import Finding, Graph, Status
from compliance.reports import evidence, formats, human, oscal
from compliance.reports.timestamps import pack_time

MANIFEST = "manifest.sha256"


def notices(graph: Graph) -> list[str]:
    """Things a reviewer should know that are not a check's PASS or FAIL."""
    found = []
    images = {
        str(c.get("image"))
        for r in graph.resources
        if r.type in ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:Job")
        for c in (r.get("spec.template.spec.containers") or []) + (r.get("spec.template.spec.initContainers") or [])
    }
    unpinned = sorted(i for i in images if "byoc-runtime" in i and "@sha256:" not in i)
    if unpinned:
        found.append(
            f"byoc's runtime image is referenced by tag ({', '.join(unpinned)}): build runtime/Dockerfile into your "
            "registry and set images.runtime to its @sha256 digest."
        )
    return found + evidence.notices(graph)


def headline(graph: Graph) -> str | None:
    """The one line a reviewer must read first, when there is one: a live deployment that was not found."""
    if graph.not_found:
        return f"Deployment {graph.deployment} was not found: {graph.not_found}."
    return None


def summary(findings: list[Finding], selected: list[str], drift: list[Drift]) -> dict[str, Any]:
    controls = control_summaries(findings, selected)
    return {
        "checks": len({f.check.id for f in findings}),
        "checks_evaluated": len({f.check.id for f in findings if f.status in (Status.PASS, Status.FAIL)}),
        "findings": {s.value: sum(f.status == s for f in findings) for s in Status},
        "frameworks": human.framework_totals(controls, selected),
        "controls": {c.ref: c.status for c in controls},
        "failing_controls": sorted(c.ref for c in controls if c.status == "FAIL"),
        "not_assessed_controls": sorted(c.ref for c in controls if c.status == "NOT_ASSESSED"),
        "drift": [d.as_dict() for d in drift],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_pack(
    graph: Graph,
    findings: list[Finding],
    selected: list[str],
    out: Path,
    drift: list[Drift] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write every file of the pack into `out` (replacing a previous pack whole) and return the summary.

    `now` is the one time every file carries (default: compliance.reports.timestamps.pack_time()).
    """
    drift = drift or []
    now = now or pack_time()
    graph = graph.in_order()  # the evidence files list resources in one order, whatever order they came in
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        result = summary(findings, selected, drift)
        result |= {
            "headline": headline(graph),
            "deployment": graph.deployment,
            "source": graph.source,
            "region": graph.region,
            # a multi-region plan: each region's stack is judged on its own resources; its findings by status
            **({"regions": _per_region(findings, graph.regions)} if len(graph.regions) > 1 else {}),
            "generated_at": now.isoformat(),
            "byoc_version": __version__,
        }
        found = notices(graph)
        first = result["headline"]
        (staging / "report.md").write_text(human.markdown(graph, findings, selected, drift, found, first))
        (staging / "report.html").write_text(human.html_report(graph, findings, selected, drift, found, first))
        formats.write_json(findings, selected, staging / "findings.json")
        formats.write_csv(findings, selected, staging / "findings.csv")
        formats.write_ocsf(findings, graph, selected, staging / "findings.ocsf.jsonl", now)
        oscal.write_oscal(graph, findings, selected, __version__, staging / "oscal", now)
        (staging / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
        (staging / "encryption-inventory.json").write_text(json.dumps(evidence.encryption_inventory(graph), indent=2))
        (staging / "audit-logging.json").write_text(json.dumps(evidence.audit_logging(graph), indent=2))
        (staging / "iam-policies.json").write_text(json.dumps(evidence.iam_policies(graph), indent=2))
        (staging / "data-flows.json").write_text(json.dumps(evidence.data_flows(graph), indent=2))
        (staging / "shared-responsibility.md").write_text(evidence.shared_responsibility(graph))
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        (staging / MANIFEST).write_text("".join(f"{_sha256(p)}  {p.relative_to(staging).as_posix()}\n" for p in files))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _per_region(findings: list[Finding], order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{region (or "global"): {"stack", "findings": {status: count}}}, the deployment's regions in `order`, then
    the global layer."""
    regions: dict[str, dict[str, Any]] = {r: {"stack": None, "findings": {}} for r in order}
    for finding in findings:
        where = regions.setdefault(finding.resource.region or "global", {"stack": None, "findings": {}})
        where["stack"] = where["stack"] or finding.resource.stack
        where["findings"][finding.status.value] = where["findings"].get(finding.status.value, 0) + 1
    return regions
