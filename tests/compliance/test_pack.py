"""The evidence pack `byoc plan` and `byoc compliance report` write, as a security reviewer and their tools read it."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=300
    )


def plan(folder: Path, **changes: Any) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "byoc.yaml").read_text())
    for key, value in changes.items():
        spec[key] = value
    path = folder / "byoc.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run("plan", "-f", str(path), "--out", str(folder / "out"))
    assert result.returncode == 0, result.stderr
    return folder / "out"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plan(tmp_path_factory.mktemp("secure"))


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plan(tmp_path_factory.mktemp("public"), network={"endpoint": "public"})


def findings(out: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads((out / "compliance" / "findings.json").read_text())
    return found


# What the default spec's plan cannot show, and the controls those checks evidence: the region's EBS default is an
# account setting the default spec leaves alone (encryption.ebs_default: false), and the default runtime image is
# not published, so there is no digest whose pinning could be judged.
UNSEEN_IN_DEFAULT_PLAN = ["ec2_ebs_default_encryption", "k8s_third_party_images_pinned"]
UNSEEN_CONTROLS = ["hipaa:164.312(a)(2)(iv)", "iso27001:A.8.24", "iso27001:A.8.9", "soc2:CC6.1", "soc2:CC8.1"]
PUBLISHED_RUNTIME = "registry.example/byoc-runtime@sha256:" + "a" * 64


def test_secure_default_plan_has_at_least_40_evaluating_checks_and_no_failure(secure: Path) -> None:
    found = findings(secure)
    evaluated = {f["check_id"] for f in found if f["status"] in ("PASS", "FAIL")}
    assert len(evaluated) >= 40
    assert [f for f in found if f["status"] in ("FAIL", "ERROR")] == []
    summary = json.loads((secure / "compliance" / "summary.json").read_text())
    for framework in summary["frameworks"]:
        assert framework["failing"] == 0, framework
    # what the plan cannot show is not assessed, and so are the controls it evidences: never PASS
    unseen = {f["check_id"]: f["reason"] for f in found if f["status"] == "NOT_ASSESSED"}
    assert sorted(unseen) == UNSEEN_IN_DEFAULT_PLAN
    assert "account setting byoc does not manage" in unseen["ec2_ebs_default_encryption"]
    assert "not published with a digest" in unseen["k8s_third_party_images_pinned"]
    assert summary["not_assessed_controls"] == UNSEEN_CONTROLS


def test_a_plan_that_opts_into_every_setting_passes_every_control(tmp_path: Path) -> None:
    out = plan(tmp_path, encryption={"ebs_default": True}, images={"runtime": PUBLISHED_RUNTIME})
    assert [f for f in findings(out) if f["status"] in ("FAIL", "ERROR", "NOT_ASSESSED")] == []
    summary = json.loads((out / "compliance" / "summary.json").read_text())
    assert set(summary["controls"].values()) == {"PASS"}
    for framework in summary["frameworks"]:
        assert framework["passing"] == framework["controls"], framework


def test_findings_carry_controls_evidence_and_remediation(secure: Path) -> None:
    rotation = next(f for f in findings(secure) if f["check_id"] == "kms_cmk_rotation_enabled")
    assert set(rotation) >= {"check_id", "status", "resource", "controls", "evidence", "remediation"}
    assert rotation["controls"] == ["hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24"]
    assert rotation["evidence"] == [
        {"path": "enableKeyRotation/rotationPeriodInDays", "value": {"enabled": True, "period_days": 365}}
    ]


def test_ebs_default_encryption_is_evidenced_when_the_spec_opts_in(tmp_path: Path) -> None:
    out = plan(tmp_path, encryption={"ebs_default": True})
    ebs = [f for f in findings(out) if f["check_id"] == "ec2_ebs_default_encryption"]
    assert [f["status"] for f in ebs] == ["PASS", "PASS"]  # the example runs in two EU regions: one each
    assert {"hipaa:164.312(a)(2)(iv)", "iso27001:A.8.24"} <= set(ebs[0]["controls"])


def test_a_weaker_spec_fails_exactly_the_controls_it_weakens(secure: Path, public: Path) -> None:
    failing = [f for f in findings(public) if f["status"] == "FAIL"]
    assert {f["check_id"] for f in failing} == {"eks_cluster_not_publicly_accessible"}
    summary = json.loads((public / "compliance" / "summary.json").read_text())
    assert summary["failing_controls"] == sorted(
        ["hipaa:164.312(e)(1)", "soc2:CC6.6", "iso27001:A.8.20", "iso27001:A.8.22"]
    )
    flows = json.loads((public / "compliance" / "data-flows.json").read_text())
    assert any("Kubernetes API endpoint" in m for m in flows["metadata_outside_byoc"])


def test_both_reports_name_a_failing_controls_checks_and_list_exceptions_and_not_assessed(public: Path) -> None:
    """report.md and report.html carry the same sections: a FAIL control's row names the check that failed, and the
    exceptions (declined by design) and the checks not assessed each have their own table, with the reason."""
    md = (public / "compliance" / "report.md").read_text()
    page = (public / "compliance" / "report.html").read_text()
    md_rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if " | FAIL | " in line}
    assert sorted(md_rows) == ["hipaa:164.312(e)(1)", "iso27001:A.8.20", "iso27001:A.8.22", "soc2:CC6.6"]
    for row in md_rows.values():
        assert row.endswith("(failing: eks_cluster_not_publicly_accessible) |"), row
    controls = page.split('<table id="controls">', 1)[1].split("</table>", 1)[0]
    html_rows = [row for row in controls.split("<tr>") if "class='FAIL'" in row]
    assert len(html_rows) == 4
    for row in html_rows:
        assert "(failing: eks_cluster_not_publicly_accessible)</td>" in row, row
    # a passing control names no failing check
    assert "(failing:" not in "".join(row for row in controls.split("<tr>") if "class='PASS'" in row)

    found = findings(public)
    excepted = {(f["check_id"], f["resource"]["name"]) for f in found if f["status"] == "EXCEPTION"}
    unassessed = {f["check_id"] for f in found if f["status"] == "NOT_ASSESSED"}
    assert ("s3_bucket_object_lock", "demo-euw2-artifacts") in excepted and unassessed  # the primary region's
    md_exceptions = md.split("## Exceptions (declined by design)", 1)[1].split("\n## ", 1)[0]
    html_exceptions = page.split("<h2>Exceptions (declined by design)</h2><table id='exceptions'>", 1)[1]
    html_exceptions = html_exceptions.split("</table>", 1)[0]
    for check, resource in excepted:
        assert f"| {check} | {resource} |" in md_exceptions
        assert f"<tr><td><code>{check}</code></td><td><code>{resource}</code></td>" in html_exceptions
    assert "data residency" in md_exceptions and "data residency" in html_exceptions
    md_unassessed = md.split("## Not assessed", 1)[1].split("\n## ", 1)[0]
    html_unassessed = page.split("<h2>Not assessed</h2><table id='not-assessed'>", 1)[1].split("</table>", 1)[0]
    for check in unassessed:
        assert f"| {check} |" in md_unassessed
        assert f"<code>{check}</code>" in html_unassessed
    assert "account setting byoc does not manage" in md_unassessed
    assert "account setting byoc does not manage" in html_unassessed


def test_oscal_documents_are_valid_for_trestle(secure: Path) -> None:
    from trestle.oscal.assessment_results import AssessmentResults
    from trestle.oscal.component import ComponentDefinition

    folder = secure / "compliance" / "oscal"
    results = AssessmentResults.oscal_read(folder / "assessment-results.json")
    definition = ComponentDefinition.oscal_read(folder / "component-definition.json")
    assert results is not None and definition is not None
    implementations = definition.components[0].control_implementations
    assert len(implementations) == 3
    controls = {r.control_id for i in implementations for r in i.implemented_requirements}
    assert {"hipaa_164.312_a_2_iv", "soc2_CC6.1", "iso27001_A.8.24"} <= controls
    states = {f.target.target_id: f.target.status.state.value for f in results.results[0].findings}
    unsatisfied = sorted(t for t, state in states.items() if state != "satisfied")
    # only the controls with a NOT_ASSESSED check (what the default plan cannot show) are not satisfied
    assert unsatisfied == ["hipaa_164.312_a_2_iv", "iso27001_A.8.24", "iso27001_A.8.9", "soc2_CC6.1", "soc2_CC8.1"]

    broken = json.loads((folder / "assessment-results.json").read_text())
    broken["assessment-results"]["uuid"] = "not-a-uuid"
    with pytest.raises(pydantic.ValidationError):
        AssessmentResults.model_validate(broken["assessment-results"])


def test_ocsf_csv_and_supporting_files(secure: Path) -> None:
    pack = secure / "compliance"
    lines = (pack / "findings.ocsf.jsonl").read_text().splitlines()
    assert len(lines) == len(findings(secure))
    record = json.loads(lines[0])
    assert (record["class_uid"], record["category_uid"], record["type_uid"]) == (2003, 2, 200301)
    assert record["compliance"]["status"] in ("Pass", "Fail", "Error", "Not applicable")
    rows = list(csv.DictReader((pack / "findings.csv").open()))
    assert len(rows) == len(lines) and rows[0]["check_id"]
    # a SIEM filtering on the region sees each region's findings under that region (the example runs in two)
    records = [record for record in map(json.loads, lines) if "cloud" in record]
    assert records and all(r["cloud"]["region"] == r["resources"][0]["region"] for r in records)
    assert {r["cloud"]["region"] for r in records} == {"eu-west-2", "eu-north-1"}
    assert {row["region"] for row in rows} >= {"eu-west-2", "eu-north-1"} and all("stack" in row for row in rows)
    inventory = json.loads((pack / "encryption-inventory.json").read_text())
    stores = {entry["store"] for entry in inventory}
    assert {"S3 bucket", "CloudWatch log group", "EKS secrets (etcd)", "EBS root volume (GPU nodes)"} <= stores
    assert all(e["customer_managed"] for e in inventory if "note" not in e)
    roles = {r["role"] for r in json.loads((pack / "iam-policies.json").read_text())}
    # every region's roles, named by its region (IAM names are account-wide): the example runs in two EU regions
    assert {f"byoc-demo-{code}-{role}" for code in ("euw2", "eun1") for role in ("serving", "karpenter")} <= roles
    assert "byoc-demo-euw2-builder" in roles  # the primary builds the model
    assert json.loads((pack / "data-flows.json").read_text())["leaves_the_account"] == []
    audit = json.loads((pack / "audit-logging.json").read_text())
    assert audit["cloudtrail"][0]["multi_region"] is True
    assert "Shared responsibility" in (pack / "shared-responsibility.md").read_text()


def test_manifest_hashes_every_file_and_catches_tampering(secure: Path, tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(secure / "compliance", pack)
    entries = dict(reversed(line.split("  ", 1)) for line in (pack / "manifest.sha256").read_text().splitlines())
    files = {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()} - {"manifest.sha256"}
    assert set(entries) == files

    def verify() -> list[str]:
        return [n for n, digest in entries.items() if hashlib.sha256((pack / n).read_bytes()).hexdigest() != digest]

    assert verify() == []
    (pack / "findings.json").write_text("[]")
    assert verify() == ["findings.json"]


def test_report_command_exit_codes(secure: Path, public: Path, tmp_path: Path) -> None:
    ok = run("compliance", "report", "--plan", str(secure / "plan.json"), "--out", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr
    failing = run(
        "compliance", "report", "--plan", str(public / "plan.json"), "--out", str(tmp_path / "b"), "--output", "json"
    )
    assert failing.returncode == 1
    assert json.loads(failing.stdout)["findings"]["FAIL"] == 2  # the public endpoint of each region's cluster
    hipaa_only = run(
        "compliance",
        "report",
        "--plan",
        str(public / "plan.json"),
        "--framework",
        "hipaa",
        "--out",
        str(tmp_path / "c"),
    )
    assert hipaa_only.returncode == 1
    only = json.loads((tmp_path / "c" / "findings.json").read_text())
    assert all(c.startswith("hipaa:") for f in only for c in f["controls"])
    for bad in (["--framework", "pci"], ["--plan", str(tmp_path / "missing.json")], []):
        result = run("compliance", "report", *bad, "--out", str(tmp_path / "d"))
        assert result.returncode == 2, bad
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_html_report_in_headless_chromium(secure: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: run scripts/test.sh (it installs Debian's chromium)")
    report = secure / "compliance" / "report.html"
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert '<table id="summary">' in dom
    summary = dom.split('<table id="summary">', 1)[1].split("</table>", 1)[0]
    for title in ("HIPAA Security Rule", "SOC 2", "ISO/IEC 27001:2022"):
        assert title in summary
    assert 'class="FAIL"' not in dom.split('<table id="findings">', 1)[1]
