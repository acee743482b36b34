"""Run byoc's live compliance report and Prowler side by side on the seeded moto account, and write the comparison.

The account is the one the live tests read (tests/compliance/seeded_account.py): byoc's stack shape for deployment
`live` in eu-west-2, compliant properties and planted failures, plus a stand-in Kubernetes API for the cluster's
objects. Prowler lives in its own virtual environment (.venv-prowler, created on first use, as checkov's
.venv-checkov is) and reaches moto through AWS_ENDPOINT_URL. The test suite never runs this: Prowler takes minutes.

    python3 scripts/compare_prowler.py [--out build/compare-prowler] [--reuse]

Writes OUT/byoc/ (the evidence pack), OUT/prowler/ (Prowler's JSON-OCSF), OUT/comparison.json and
OUT/comparison.md (the side-by-side table docs/compliance.md carries): planted failures caught by each, false
positives of each, and agreement on the resource-property pairs both check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.compliance.seeded_account import (  # noqa: E402 - after the path is set
    ACCOUNT,
    NAME,
    PLANTED,
    REGION,
    KubernetesStandIn,
    cluster_objects,
    seed,
    start_moto,
)

PROWLER_VERSION = "5.46.0"
VENV = ROOT / ".venv-prowler"
# The Prowler services that hold byoc's resources.
SERVICES = ("kms", "s3", "cloudtrail", "cloudwatch", "ec2", "vpc", "eks", "iam", "sqs")

# byoc check -> the Prowler checks that test the same property (docs/compliance.md, "Compared with Prowler").
SAME_PROPERTY: dict[str, tuple[str, ...]] = {
    "kms_cmk_rotation_enabled": ("kms_cmk_rotation_enabled",),
    "kms_key_policy_no_public_access": ("kms_key_not_publicly_accessible",),
    "s3_bucket_default_encryption": ("s3_bucket_default_encryption",),
    "s3_bucket_kms_encryption": ("s3_bucket_kms_encryption",),
    "s3_bucket_versioning_enabled": ("s3_bucket_object_versioning",),
    "s3_bucket_level_public_access_block": ("s3_bucket_level_public_access_block",),
    "s3_bucket_acl_disabled": ("s3_bucket_acl_prohibited",),
    "s3_bucket_secure_transport_policy": ("s3_bucket_secure_transport_policy",),
    "s3_bucket_server_access_logging_enabled": ("s3_bucket_server_access_logging_enabled",),
    "cloudtrail_multi_region_enabled": ("cloudtrail_multi_region_enabled",),
    "cloudtrail_log_file_validation_enabled": ("cloudtrail_log_file_validation_enabled",),
    "cloudtrail_kms_encryption_enabled": ("cloudtrail_kms_encryption_enabled",),
    "cloudtrail_cloudwatch_logging_enabled": ("cloudtrail_cloudwatch_logging_enabled",),
    "cloudtrail_s3_dataevents_enabled": (
        "cloudtrail_s3_dataevents_read_enabled",
        "cloudtrail_s3_dataevents_write_enabled",
    ),
    "cloudtrail_multi_region_enabled_logging_management_events": (
        "cloudtrail_multi_region_enabled_logging_management_events",
    ),
    "cloudwatch_log_group_kms_encryption_enabled": ("cloudwatch_log_group_kms_encryption_enabled",),
    "cloudwatch_log_group_retention_policy_specific_days_enabled": (
        "cloudwatch_log_group_retention_policy_specific_days_enabled",
    ),
    "vpc_flow_logs_enabled": ("vpc_flow_logs_enabled",),
    "ec2_securitygroup_default_restrict_traffic": ("ec2_securitygroup_default_restrict_traffic",),
    "ec2_securitygroup_no_internet_ingress": (
        "ec2_securitygroup_allow_ingress_from_internet_to_any_port",
        "ec2_securitygroup_allow_ingress_from_internet_to_tcp_port_22",
    ),
    "vpc_subnet_no_public_ip_by_default": ("vpc_subnet_no_public_ip_by_default",),
    "ec2_launch_template_imdsv2_required": ("ec2_launch_template_imdsv2_required",),
    "ec2_ebs_default_encryption": ("ec2_ebs_default_encryption",),
    "eks_cluster_kms_cmk_encryption_in_secrets_enabled": ("eks_cluster_kms_cmk_encryption_in_secrets_enabled",),
    "eks_cluster_not_publicly_accessible": ("eks_cluster_not_publicly_accessible",),
    "eks_control_plane_logging_all_types_enabled": ("eks_control_plane_logging_all_types_enabled",),
    "iam_inline_policy_no_administrative_privileges": ("iam_inline_policy_no_administrative_privileges",),
    "iam_role_no_administrator_managed_policy": ("iam_aws_attached_policy_no_administrative_privileges",),
    "iam_role_trust_confused_deputy_protection": ("iam_role_cross_service_confused_deputy_prevention",),
    "sqs_queues_server_side_encryption_enabled": ("sqs_queues_server_side_encryption_enabled",),
    "sqs_queue_secure_transport_policy": ("sqs_queues_secure_transport_enabled",),
    "s3_bucket_object_lock": ("s3_bucket_object_lock",),
    "s3_bucket_cross_region_replication": ("s3_bucket_cross_region_replication",),
}


# Why Prowler's answer differs, where the cause is known (read from Prowler's check code).
WHY = {
    "cloudtrail_cloudwatch_logging_enabled": "Prowler also wants a delivery to CloudWatch Logs in the last 24 h; moto "
    "delivers no events, so on moto any trail fails (on a live account byoc's trail would pass)",
    "ec2_launch_template_imdsv2_required": "Prowler reads an unset HttpEndpoint as 'metadata service disabled' and "
    "passes; AWS's default is enabled, so IMDSv1 answers on these nodes",
    "cloudtrail_multi_region_enabled": "account-level in Prowler: one compliant multi-region trail passes the "
    "region, a second trail is not judged",
    "cloudtrail_s3_dataevents_read_enabled": "account-level in Prowler: one trail with S3 data events passes, a "
    "second trail is not judged",
    "cloudtrail_multi_region_enabled_logging_management_events": "account-level in Prowler: one trail logging "
    "management events passes the region, a second trail is not judged",
}


def ensure_prowler() -> Path:
    """Prowler's CLI in .venv-prowler, installed there on first use (it pins its own boto3 and pydantic)."""
    prowler = VENV / "bin" / "prowler"
    if not prowler.exists():
        print(f"installing prowler {PROWLER_VERSION} into {VENV} (several minutes, once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        (VENV / ".gitignore").write_text("*\n")
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"prowler=={PROWLER_VERSION}"], check=True)
    return prowler


def aws_env(endpoint: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return environment | {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def run_byoc(endpoint: str, kubeconfig: Path, out: Path) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        "-m",
        "byoc",
        "compliance",
        "report",
        "--live",
        "--cloud",
        "aws",
        "--region",
        REGION,
        "--deployment",
        NAME,
        "--kubeconfig",
        str(kubeconfig),
        "--out",
        str(out),
        "--output",
        "json",
    ]
    done = subprocess.run(command, cwd=ROOT, env=aws_env(endpoint), capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"byoc compliance report failed ({done.returncode}):\n{done.stderr}")
    found: list[dict[str, Any]] = json.loads((out / "findings.json").read_text())
    return found


def run_prowler(prowler: Path, endpoint: str, out: Path) -> list[dict[str, Any]]:
    command = [
        str(prowler),
        "aws",
        "--region",
        REGION,
        "--service",
        *SERVICES,
        "--scan-unused-services",  # report on resources even where nothing uses them (moto has no workloads)
        "--output-formats",
        "json-ocsf",
        "--output-directory",
        str(out),
        "--output-filename",
        "prowler",
        "--no-banner",
        "--ignore-exit-code-3",
    ]
    shutil.rmtree(out, ignore_errors=True)  # Prowler appends to an existing output file
    out.mkdir(parents=True)
    done = subprocess.run(command, env=aws_env(endpoint), capture_output=True, text=True, check=False)
    (out / "prowler.log").write_text(done.stdout + done.stderr)
    results = out / "prowler.ocsf.json"
    if not results.exists():
        raise SystemExit(f"prowler wrote no findings ({done.returncode}); see {out / 'prowler.log'}")
    findings: list[dict[str, Any]] = json.loads(results.read_text() or "[]")
    return findings


@dataclass(frozen=True)
class ProwlerFinding:
    check: str
    status: str  # PASS | FAIL | MANUAL
    uid: str
    name: str
    detail: str


def prowler_findings(raw: Iterable[dict[str, Any]]) -> list[ProwlerFinding]:
    found = []
    for record in raw:
        resource = (record.get("resources") or [{}])[0]
        found.append(
            ProwlerFinding(
                check=str(record.get("metadata", {}).get("event_code", "")),
                status=str(record.get("status_code", "")),
                uid=str(resource.get("uid", "")),
                name=str(resource.get("name", "")),
                detail=str(record.get("status_detail", "")),
            )
        )
    return found


def identifiers(finding: dict[str, Any], aliases: dict[str, list[str]]) -> set[str]:
    """The names and ids by which a byoc finding's resource may appear in Prowler's output."""
    resource = finding["resource"]
    names = {resource["name"], resource["id"]} | set(aliases.get(resource["name"], []))
    return {n for n in names if n and n not in ("(none)", "(not read)", "(unreadable)")}


def same_resource(ids: set[str], prowler: ProwlerFinding) -> bool:
    for value in ids:
        if value in (prowler.uid, prowler.name):
            return True
        if prowler.uid.endswith((f"/{value}", f":{value}")):
            return True
    return False


def compare(
    byoc: list[dict[str, Any]], prowler: list[ProwlerFinding], aliases: dict[str, list[str]], broken: list[str]
) -> dict[str, Any]:
    planted = {(p.resource, p.check): p for p in PLANTED}
    byoc_fail = {(f["resource"]["name"], f["check_id"]) for f in byoc if f["status"] == "FAIL"}
    by_key = {(f["resource"]["name"], f["check_id"]): f for f in byoc}

    rows = []
    for plant in PLANTED:
        finding = by_key.get((plant.resource, plant.check))
        caught_by_byoc = (plant.resource, plant.check) in byoc_fail
        prowler_status = "no equivalent check"
        if plant.prowler:
            ids = identifiers(finding, aliases) if finding else {plant.resource}
            ids |= set(aliases.get(plant.resource, []))
            same = [p for p in prowler if p.check == plant.prowler and same_resource(ids, p)]
            ran = [p for p in prowler if p.check == plant.prowler]
            if any(p.status == "FAIL" for p in same):
                prowler_status = "caught"
            elif plant.prowler in WHY:
                prowler_status = f"missed: {WHY[plant.prowler]}"
            elif same:
                prowler_status = f"missed ({same[0].status}: {same[0].detail[:90]})"
            elif ran:
                prowler_status = f"missed (no finding on the resource; {ran[0].status} on {ran[0].name or ran[0].uid})"
            else:
                prowler_status = "missed (the check reported nothing)"
        rows.append(
            {
                "resource": plant.resource,
                "planted": plant.what,
                "byoc_check": plant.check,
                "byoc": "caught" if caught_by_byoc else f"missed ({finding['status'] if finding else 'no finding'})",
                "prowler_check": plant.prowler,
                "prowler": prowler_status,
            }
        )

    byoc_false = sorted(f"{c} on {r}" for r, c in byoc_fail - set(planted))

    # resource-property pairs both check: a byoc PASS/FAIL and a Prowler PASS/FAIL of the same property on the same
    # resource
    pairs, disagreements, prowler_false = 0, [], []
    for finding in byoc:
        if finding["status"] not in ("PASS", "FAIL", "EXCEPTION") or finding["check_id"] not in SAME_PROPERTY:
            continue
        ids = identifiers(finding, aliases)
        for check in SAME_PROPERTY[finding["check_id"]]:
            theirs = [p for p in prowler if p.check == check and p.status in ("PASS", "FAIL") and same_resource(ids, p)]
            if not theirs:
                continue
            key = (finding["resource"]["name"], finding["check_id"])
            ours = "FAIL" if finding["status"] == "FAIL" else finding["status"]
            their = "FAIL" if any(p.status == "FAIL" for p in theirs) else "PASS"
            if finding["status"] == "EXCEPTION":
                continue  # declined by design: listed apart
            pairs += 1
            if ours != their:
                disagreements.append(
                    {
                        "resource": finding["resource"]["name"],
                        "byoc_check": finding["check_id"],
                        "byoc": ours,
                        "prowler_check": check,
                        "prowler": their,
                        "prowler_detail": next((p.detail for p in theirs if p.status == their), "")[:160],
                        "why": WHY.get(check, ""),
                    }
                )
                if their == "FAIL" and key not in planted:
                    prowler_false.append(f"{check} on {finding['resource']['name']}")
    declined = sorted(
        {
            f"{p.check} on {p.name or p.uid}"
            for p in prowler
            if p.check in ("s3_bucket_object_lock", "s3_bucket_cross_region_replication")
            and p.status == "FAIL"
            and f"byoc-{NAME}-" in (p.name + p.uid)
        }
    )
    unjudged = sorted(
        {f"{f['check_id']} ({f['status']}: {f['reason']})" for f in byoc if f["status"] in ("ERROR", "NOT_ASSESSED")}
    )
    return {
        "planted": rows,
        "byoc_caught": sum(r["byoc"] == "caught" for r in rows),
        "prowler_caught": sum(r["prowler"] == "caught" for r in rows),
        "prowler_checkable": sum(r["prowler_check"] is not None for r in rows),
        "byoc_false_positives": byoc_false,
        "prowler_false_positives": sorted(set(prowler_false)),
        "pairs_both_check": pairs,
        "pairs_agree": pairs - len(disagreements),
        "disagreements": disagreements,
        "prowler_fails_byoc_declines": declined,
        "byoc_not_judged": unjudged,
        "prowler_checks_that_failed_to_run": broken,
        "prowler_version": PROWLER_VERSION,
    }


def markdown(result: dict[str, Any]) -> str:
    total = len(result["planted"])
    lines = [
        f"Seeded account: byoc's stack shape for deployment `{NAME}` ({REGION}) on moto, {total} planted failures; "
        f"Prowler {result['prowler_version']} and `byoc compliance report --live --kubeconfig` on the same account.",
        "",
        "| | byoc | Prowler |",
        "| --- | ---: | ---: |",
        f"| planted failures caught | {result['byoc_caught']} of {total} | {result['prowler_caught']} of {total} "
        f"({result['prowler_checkable']} have a Prowler check) |",
        f"| false positives (FAIL on a compliant property) | {len(result['byoc_false_positives'])} "
        f"| {len(result['prowler_false_positives'])} |",
        "",
        f"On the {result['pairs_both_check']} resource-property pairs both judge (same property, same resource), "
        f"they agree on {result['pairs_agree']}.",
        "",
        "| planted failure | resource | byoc check | byoc | Prowler check | Prowler |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["planted"]:
        lines.append(
            f"| {row['planted']} | `{row['resource']}` | `{row['byoc_check']}` | {row['byoc']} "
            f"| {('`' + row['prowler_check'] + '`') if row['prowler_check'] else '-'} | {row['prowler']} |"
        )
    if result["disagreements"]:
        lines += [
            "",
            "Where both check the same property and disagree:",
            "",
            "| resource | byoc check | byoc | Prowler check | Prowler | why |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for d in result["disagreements"]:
            why = (d["why"] or d["prowler_detail"]).replace("|", "/")
            lines.append(
                f"| `{d['resource']}` | `{d['byoc_check']}` | {d['byoc']} | `{d['prowler_check']}` | {d['prowler']} "
                f"| {why} |"
            )
    if result["prowler_fails_byoc_declines"]:
        lines += [
            "",
            f"Prowler FAILs that byoc reports as documented exceptions (declined by design): "
            f"{len(result['prowler_fails_byoc_declines'])} ({', '.join(result['prowler_fails_byoc_declines'])}).",
        ]
    if result["prowler_checks_that_failed_to_run"]:
        lines += [
            "",
            "Prowler checks that could not run against moto (Prowler logged an error): "
            + ", ".join(f"`{c}`" for c in result["prowler_checks_that_failed_to_run"])
            + ".",
        ]
    if result["byoc_not_judged"]:
        lines += ["", "byoc findings that are not a PASS or FAIL, each with why:", ""]
        lines += [f"- {entry}" for entry in result["byoc_not_judged"]]
    return "\n".join(lines) + "\n"


def broken_checks(log: str) -> list[str]:
    """Checks Prowler reports it could not run ("Something went wrong in <check>")."""
    marker = "Something went wrong in "
    return sorted({line.split(marker, 1)[1].split(",")[0].strip() for line in log.splitlines() if marker in line})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "compare-prowler")
    parser.add_argument(
        "--reuse", action="store_true", help="Compare the outputs already in OUT again, without running either tool."
    )
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Prowler names the account-level EBS setting by the account
    aliases = {"ebs-encryption-by-default": [ACCOUNT]}
    if args.reuse:
        byoc = json.loads((out / "byoc" / "findings.json").read_text())
        prowler = prowler_findings(json.loads((out / "prowler" / "prowler.ocsf.json").read_text()))
    else:
        byoc, prowler = run_both(out)
    result = compare(byoc, prowler, aliases, broken_checks((out / "prowler" / "prowler.log").read_text()))
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "comparison.md").write_text(markdown(result))
    print(markdown(result))


def run_both(out: Path) -> tuple[list[dict[str, Any]], list[ProwlerFinding]]:
    """Seed a fresh moto account, run byoc (with the stand-in cluster) and then Prowler on it."""
    prowler_cli = ensure_prowler()
    server, endpoint = start_moto()
    try:
        seed(endpoint)
        cluster = KubernetesStandIn(cluster_objects()).start()
        try:
            with tempfile.TemporaryDirectory() as scratch:
                kubeconfig = cluster.kubeconfig(Path(scratch) / "kubeconfig")
                byoc = run_byoc(endpoint, kubeconfig, out / "byoc")
        finally:
            cluster.stop()
        print(f"byoc: {len(byoc)} findings; running prowler (a few minutes)", file=sys.stderr)
        prowler = prowler_findings(run_prowler(prowler_cli, endpoint, out / "prowler"))
    finally:
        server.stop()
    return byoc, prowler


if __name__ == "__main__":
    main()
