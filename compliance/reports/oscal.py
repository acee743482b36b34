"""OSCAL 1.2 documents built with compliance-trestle's models (which validate them as they are built).

component-definition: how the deployment implements each control (the checks that evidence it).
assessment-results: what was observed (one observation per finding) and, per control, satisfied or not.

Both are reproducible: every UUID is a version 5 UUID (OSCAL takes RFC 4122 v4 or v5) of byoc's namespace and the
things it names (deployment, source, control, check, resource), never a random one, and the only time is the
pack's (`last-modified`, the result's `start`/`end`, each observation's `collected`; compliance.reports.timestamps).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from pathlib import Path

from compliance.evaluate import control_summaries
from compliance.model import Finding, Framework, Graph, Status, frameworks

OSCAL_VERSION = "1.2.1"
NAMESPACE = "https://byoc.dev/ns/oscal"


def control_token(framework: str, control_id: str) -> str:
    """OSCAL control ids are tokens: 164.312(a)(2)(iv) -> hipaa_164.312_a_2_iv; CC6.1 -> soc2_CC6.1."""
    cleaned = re.sub(r"[()]+", "_", control_id).strip("_").replace("__", "_")
    return f"{framework}_{cleaned}"


def _uuid(*parts: str) -> str:
    """Stable UUIDs (v5, over the URL namespace and byoc's OSCAL namespace URL) so that the same evidence gives the
    same document."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, NAMESPACE + "/" + "/".join(parts)))


def _metadata(title: str, version: str, now: datetime) -> object:
    from trestle.oscal.common import Metadata

    return Metadata(
        title=title,
        last_modified=now,
        version=version,
        oscal_version=OSCAL_VERSION,
    )


def component_definition(
    graph: Graph, findings: list[Finding], selected: list[str], version: str, now: datetime
) -> object:
    from trestle.oscal.common import Property
    from trestle.oscal.component import (
        ComponentDefinition,
        ControlImplementation,
        DefinedComponent,
        ImplementedRequirement,
    )

    implementations = []
    for framework_id in selected:
        framework: Framework = frameworks()[framework_id]
        requirements = []
        for control in framework.controls:
            related = [f for f in findings if control.ref in f.check.controls]
            checks = sorted({f.check.id for f in related if f.status != Status.EXCEPTION})
            declined = sorted({f.check.id for f in related if f.status == Status.EXCEPTION} - set(checks))
            if not checks and not declined:
                continue
            description = f"{control.title}: evidenced by byoc checks {', '.join(checks) or '(none)'}."
            if declined:
                description += f" Declined by design (reasons in the assessment results): {', '.join(declined)}."
            requirements.append(
                ImplementedRequirement(
                    uuid=_uuid(graph.deployment, "requirement", control.ref),
                    control_id=control_token(framework_id, control.id),
                    description=description,
                    props=[Property(name="citation", value=control.id, ns=NAMESPACE)]
                    + [Property(name="check", value=c, ns=NAMESPACE) for c in checks],
                )
            )
        implementations.append(
            ControlImplementation(
                uuid=_uuid(graph.deployment, "implementation", framework_id),
                source=framework.source,
                description=f"How the byoc deployment {graph.deployment} implements {framework.title}.",
                implemented_requirements=requirements,
            )
        )
    component = DefinedComponent(
        uuid=_uuid(graph.deployment, "component"),
        type="service",
        title=f"byoc deployment {graph.deployment}",
        description=(
            f"Private LLM inference deployed by byoc in {graph.region}: network, customer-managed keys, GPU cluster, "
            "serving runtime, audit trail."
        ),
        control_implementations=implementations,
    )
    return ComponentDefinition(
        uuid=_uuid(graph.deployment, "component-definition"),
        metadata=_metadata(f"byoc deployment {graph.deployment}: control implementation", version, now),
        components=[component],
    )


def _observation_ids(graph: Graph, findings: list[Finding]) -> list[str]:
    """One UUID per finding, from what it is about (check, resource type, name and id), not from its place in the
    list; a second finding about the same thing (none is expected) gets its occurrence number too."""
    seen: dict[tuple[str, ...], int] = {}
    ids = []
    for finding in findings:
        about = (finding.check.id, finding.resource.type, finding.resource.name, finding.resource.id)
        seen[about] = seen.get(about, 0) + 1
        occurrence = (str(seen[about]),) if seen[about] > 1 else ()
        ids.append(_uuid(graph.deployment, graph.source, "observation", *about, *occurrence))
    return ids


def assessment_results(
    graph: Graph, findings: list[Finding], selected: list[str], version: str, now: datetime
) -> object:
    from trestle.oscal.assessment_results import AssessmentResults, ImportAp, Result
    from trestle.oscal.common import (
        ControlSelection,
        FindingTarget,
        IncludeAll,
        ObjectiveStatus,
        Observation,
        Property,
        RelatedObservation,
        ReviewedControls,
    )
    from trestle.oscal.common import Finding as OscalFinding

    observations = []
    by_control: dict[str, list[str]] = {}
    for finding, observation_id in zip(findings, _observation_ids(graph, findings), strict=True):
        if finding.status == Status.NOT_APPLICABLE:
            continue
        evidence = "; ".join(
            [f"{e.path}={e.value!r}" for e in finding.evidence] + [finding.reason] * bool(finding.reason)
        )
        evidence = evidence or "-"
        observations.append(
            Observation(
                uuid=observation_id,
                title=f"{finding.check.id} on {finding.resource.name}",
                description=f"{finding.status.value}: {finding.check.title}. Evidence: {evidence}"[:4000],
                methods=["TEST"],
                props=[
                    Property(name="check", value=finding.check.id, ns=NAMESPACE),
                    Property(name="status", value=finding.status.value, ns=NAMESPACE),
                    Property(name="resource-type", value=finding.resource.type, ns=NAMESPACE),
                    Property(name="source", value=finding.resource.source, ns=NAMESPACE),
                ],
                collected=now,
            )
        )
        for ref in finding.controls(selected):
            by_control.setdefault(ref, []).append(observation_id)
    oscal_findings = []
    for summary in control_summaries(findings, selected):
        related = by_control.get(summary.ref)
        if not related:
            continue
        token = control_token(summary.framework, summary.control)
        # the control's status is decided once (compliance.evaluate.control_summaries): only PASS satisfies it; a
        # documented exception neither satisfies nor breaks it, and what was not assessed does not satisfy it
        satisfied = summary.status == "PASS"
        explained = {
            "PASS": "all passed.",
            "FAIL": "some failed.",
            "ERROR": "some could not be read (ERROR).",
            "NOT_ASSESSED": "some were not assessed (NOT_ASSESSED): the evidence is incomplete.",
            "EXCEPTION": "declined by design (EXCEPTION) only.",
        }[summary.status]
        oscal_findings.append(
            OscalFinding(
                uuid=_uuid(graph.deployment, graph.source, "finding", summary.ref),
                title=f"{summary.ref} {summary.title}",
                description=f"{len(related)} observations; control {summary.status}: {explained}",
                target=FindingTarget(
                    type="objective-id",
                    target_id=token,
                    status=ObjectiveStatus(
                        state="satisfied" if satisfied else "not-satisfied",
                        reason="pass" if satisfied else ("fail" if summary.status == "FAIL" else "other"),
                        remarks=f"byoc control status: {summary.status}",
                    ),
                ),
                props=[Property(name="control-status", value=summary.status, ns=NAMESPACE)],
                related_observations=[RelatedObservation(observation_uuid=o) for o in related],
            )
        )
    result = Result(
        uuid=_uuid(graph.deployment, graph.source, "result"),
        title=f"byoc compliance checks ({graph.source})",
        description=f"Automated checks over the {graph.source} resources of byoc deployment {graph.deployment}.",
        start=now,
        end=now,
        # every control of the selected frameworks was in scope; the findings say which had evidence
        reviewed_controls=ReviewedControls(control_selections=[ControlSelection(include_all=IncludeAll())]),
        observations=observations or None,
        findings=oscal_findings or None,
    )
    return AssessmentResults(
        uuid=_uuid(graph.deployment, graph.source, "assessment-results"),
        metadata=_metadata(f"byoc deployment {graph.deployment}: assessment results", version, now),
        import_ap=ImportAp(href=f"urn:byoc:assessment-plan:{graph.deployment}"),
        results=[result],
    )


def write_oscal(
    graph: Graph, findings: list[Finding], selected: list[str], version: str, folder: Path, now: datetime
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in (
        ("component-definition.json", component_definition(graph, findings, selected, version, now)),
        ("assessment-results.json", assessment_results(graph, findings, selected, version, now)),
    ):
        path = folder / name
        document.oscal_write(path)  # type: ignore[attr-defined]
        written.append(path)
    return written
