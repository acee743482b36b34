"""Which checks evidence which control: data files (compliance/catalogs/mappings/), checked when they load.

A reviewer reads a check's controls in the catalogue (`byoc compliance checks`) and in every finding; a maintainer
who mistypes a check or control id in a mapping file gets an error naming the file, the control and the check,
never a report that silently lost evidence.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from byoc.spec import FRAMEWORKS
from compliance.checks import all_checks
from compliance.model import FRAMEWORK_ORDER, MAPPINGS, MappingError, check, load_mappings
from tests.conftest import ROOT

# What a reviewer reads for the checks they look for first (the order is the frameworks', then each catalog's).
PINNED = {
    "kms_cmk_rotation_enabled": ["hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24"],
    "cloudtrail_multi_region_enabled": [
        "hipaa:164.308(a)(1)(ii)(D)",
        "hipaa:164.312(b)",
        "soc2:CC7.2",
        "iso27001:A.8.15",
    ],
    "cloudtrail_log_file_validation_enabled": [
        "hipaa:164.312(b)",
        "hipaa:164.312(c)(1)",
        "soc2:CC7.1",
        "iso27001:A.8.15",
    ],
    "s3_bucket_secure_transport_policy": [
        "hipaa:164.312(e)(1)",
        "hipaa:164.312(e)(2)(ii)",
        "soc2:CC6.7",
        "iso27001:A.8.24",
    ],
    "eks_cluster_not_publicly_accessible": ["hipaa:164.312(e)(1)", "soc2:CC6.6", "iso27001:A.8.20", "iso27001:A.8.22"],
    "eks_cluster_access_entries_only": [
        "hipaa:164.312(a)(1)",
        "hipaa:164.312(d)",
        "soc2:CC6.2",
        "iso27001:A.5.15",
        "iso27001:A.8.5",
    ],
    "iam_workload_roles_scoped_to_prefixes": [
        "hipaa:164.308(a)(4)(ii)(B)",
        "soc2:CC6.3",
        "soc2:C1.1",
        "iso27001:A.5.15",
    ],
    "data_residency_region": ["soc2:C1.1", "iso27001:A.5.34", "iso27001:A.8.12"],
    "gateway_tls_enabled": ["hipaa:164.312(e)(1)", "hipaa:164.312(e)(2)(ii)", "soc2:CC6.7", "iso27001:A.8.24"],
    "gateway_requires_api_keys": ["hipaa:164.312(d)", "soc2:CC6.1", "soc2:CC6.2", "iso27001:A.8.5"],
    "k8s_disruption_budgets": ["soc2:A1.2"],
    "gcp_kms_key_rotation_enabled": ["hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24"],
    "gcp_logging_sink_exports_audit_logs": [
        "hipaa:164.308(a)(1)(ii)(D)",
        "hipaa:164.312(b)",
        "soc2:CC7.1",
        "soc2:CC7.2",
        "iso27001:A.8.15",
    ],
}


def byoc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    result = byoc("compliance", "checks", "--output", "json")
    assert result.returncode == 0, result.stderr
    listed: dict[str, Any] = json.loads(result.stdout)
    return listed


def test_the_catalogue_shows_the_controls_reviewers_look_for(catalogue: dict[str, Any]) -> None:
    controls = {c["id"]: c["controls"] for c in catalogue["checks"]}
    for check_id, expected in PINNED.items():
        assert controls[check_id] == expected, check_id
    # the other direction, as the coverage table reads it: the rotation check evidences HIPAA encryption at rest
    rows = {row["control"]: row for row in catalogue["controls"]}
    assert "kms_cmk_rotation_enabled" in rows["hipaa:164.312(a)(2)(iv)"]["aws"]
    assert "gcp_kms_key_rotation_enabled" in rows["hipaa:164.312(a)(2)(iv)"]["gcp"]
    assert "k8s_disruption_budgets" in rows["soc2:A1.2"]["aws"] and "k8s_disruption_budgets" in rows["soc2:A1.2"]["gcp"]


def test_the_catalogue_says_where_the_mappings_live(catalogue: dict[str, Any]) -> None:
    expected = [
        f"compliance/catalogs/mappings/{framework}_{provider}.yaml"
        for framework in sorted(FRAMEWORKS)
        for provider in ("aws", "gcp", "kubernetes")
    ]
    assert catalogue["mappings"] == expected
    assert all((ROOT / path).is_file() for path in expected)
    text = byoc("compliance", "checks").stdout.splitlines()
    assert "compliance/catalogs/mappings/<framework>_<provider>.yaml" in text[1]
    assert (
        "compliance/catalogs/mappings/<framework>_<provider>.yaml" in byoc("compliance", "checks", "--markdown").stdout
    )


def test_every_check_has_exactly_the_controls_its_mapping_files_list() -> None:
    """Each file line `- <check>` under a control is one control of that check, and nothing else gives it one."""
    listed: dict[str, set[str]] = {}
    for path in MAPPINGS.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        for requirement in data["requirements"]:
            for check_id in requirement["checks"]:
                listed.setdefault(check_id, set()).add(f"{data['framework']}:{requirement['id']}")
    assert {c.id: set(c.controls) for c in all_checks()} == listed


def test_checks_declare_no_controls_in_code() -> None:
    with pytest.raises(TypeError, match="controls"):
        check(  # type: ignore[call-arg]
            id="x",
            title="x",
            severity="low",
            resource_types=[],
            controls=("soc2:CC6.1",),
            remediation="",
            risk="",
            cloud="aws",
        )
    for module in (ROOT / "compliance" / "checks").glob("*.py"):
        assert "controls=" not in module.read_text(), module.name


def test_controls_come_in_the_frameworks_order_the_cli_uses() -> None:
    assert FRAMEWORK_ORDER == FRAMEWORKS


# -- a mistake in a mapping file fails at load, naming the file, the control and the check ------------------------
@pytest.fixture
def mappings(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    return folder


def edit(folder: Path, name: str, old: str, new: str) -> None:
    path = folder / name
    text = path.read_text()
    assert old in text, (name, old)
    path.write_text(text.replace(old, new))


def test_the_copied_mappings_load_as_they_are(mappings: Path) -> None:
    assert load_mappings(all_checks(), mappings) == {c.id: c.controls for c in all_checks()}


def test_a_mistyped_check_id_fails_naming_file_control_and_check(mappings: Path) -> None:
    edit(mappings, "hipaa_aws.yaml", "      - kms_cmk_rotation_enabled\n", "      - kms_cmk_rotaton_enabled\n")
    with pytest.raises(MappingError) as error:
        load_mappings(all_checks(), mappings)
    message = str(error.value)
    assert "hipaa_aws.yaml" in message and "control 164.312(a)(2)(iv)" in message
    assert "check kms_cmk_rotaton_enabled, which does not exist" in message
    assert "did you mean kms_cmk_rotation_enabled?" in message


def test_a_check_of_another_provider_fails_and_says_which_file_it_belongs_in(mappings: Path) -> None:
    edit(mappings, "soc2_aws.yaml", "      - kms_cmk_rotation_enabled\n", "      - gcp_kms_key_rotation_enabled\n")
    with pytest.raises(
        MappingError,
        match=r"soc2_aws.yaml: control CC6.1 lists check gcp_kms_key_rotation_enabled, "
        r"a gcp check: map it in soc2_gcp.yaml",
    ):
        load_mappings(all_checks(), mappings)


def test_a_control_not_in_the_catalog_fails_naming_file_control_and_its_checks(mappings: Path) -> None:
    edit(mappings, "hipaa_kubernetes.yaml", "  - id: 164.312(d)", "  - id: 164.312(d)(1)")
    with pytest.raises(MappingError) as error:
        load_mappings(all_checks(), mappings)
    message = str(error.value)
    assert "hipaa_kubernetes.yaml: control 164.312(d)(1) (listing gateway_requires_api_keys)" in message
    assert "is not in compliance/catalogs/hipaa.yaml (its controls: 164.308(a)(1)(ii)(D), " in message
    assert "164.312(d), " in message


def test_a_check_mapped_to_no_control_fails_naming_the_check_and_where_to_map_it(mappings: Path) -> None:
    # k8s_disruption_budgets evidences one control (SOC 2 A1.2): drop that line and nothing maps it
    edit(mappings, "soc2_kubernetes.yaml", "      - k8s_disruption_budgets\n", "")
    with pytest.raises(MappingError) as error:
        load_mappings(all_checks(), mappings)
    message = str(error.value)
    assert "check k8s_disruption_budgets (kubernetes) is mapped to no control" in message
    assert "hipaa_kubernetes.yaml" in message and "soc2_kubernetes.yaml" in message


def test_a_check_listed_twice_under_one_control_fails(mappings: Path) -> None:
    edit(
        mappings,
        "iso27001_gcp.yaml",
        "      - gcp_kms_key_rotation_enabled\n",
        "      - gcp_kms_key_rotation_enabled\n      - gcp_kms_key_rotation_enabled\n",
    )
    with pytest.raises(MappingError, match=r"iso27001_gcp.yaml: control A.8.24 lists check gcp_kms_key_rotation_"):
        load_mappings(all_checks(), mappings)


def test_a_file_whose_name_and_keys_disagree_fails(mappings: Path) -> None:
    edit(mappings, "soc2_gcp.yaml", "provider: gcp", "provider: aws")
    with pytest.raises(MappingError, match=r"soc2_gcp.yaml: says framework 'soc2', provider 'aws'"):
        load_mappings(all_checks(), mappings)


def test_a_typo_in_the_shipped_files_stops_every_command_that_loads_the_checks(tmp_path: Path) -> None:
    """At import, as `byoc compliance report` and `byoc plan` load the checks: a traceback ending in the error."""
    shutil.copytree(ROOT / "compliance", tmp_path / "compliance", ignore=shutil.ignore_patterns("__pycache__"))
    edit(tmp_path / "compliance" / "catalogs" / "mappings", "soc2_aws.yaml", "  - id: CC7.2", "  - id: CC7.9")
    result = subprocess.run(
        [sys.executable, "-c", "import compliance.checks"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("compliance.model.MappingError: ") and "soc2_aws.yaml: control CC7.9 (listing " in last


def test_a_mapping_file_named_yml_fails_rather_than_being_skipped(mappings: Path) -> None:
    (mappings / "soc2_kubernetes.yaml").rename(mappings / "soc2_kubernetes.yml")
    with pytest.raises(MappingError, match=r"soc2_kubernetes.yml would not be read: name mapping files \*.yaml"):
        load_mappings(all_checks(), mappings)


# -- scripts/map_check.py: converting a check is one command, one line per control -------------------------------
def map_check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "map_check.py"
    return subprocess.run(
        [sys.executable, str(script), *args, "--folder", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def unmap(folder: Path, check_id: str) -> None:
    for path in folder.glob("*.yaml"):
        path.write_text(path.read_text().replace(f"      - {check_id}\n", ""))


@pytest.mark.parametrize(
    ("check_id", "provider", "citations"),
    [
        ("kms_cmk_rotation_enabled", "aws", ["hipaa:164.312(a)(2)(iv)", "soc2:CC6.1", "iso27001:A.8.24"]),
        # the names of the tuples the check modules held before, as an unconverted check still cites them
        ("cloudtrail_multi_region_enabled", "aws", ["AUDIT"]),
        ("gcp_logging_sink_exports_audit_logs", "gcp", ["AUDIT", "soc2:CC7.1"]),
        ("k8s_namespace_default_deny_network_policy", "kubernetes", ["BOUNDARY"]),
    ],
)
def test_map_check_writes_the_lines_a_maintainer_would(
    mappings: Path, check_id: str, provider: str, citations: list[str]
) -> None:
    unmap(mappings, check_id)
    result = map_check(mappings, check_id, provider, *citations)
    assert "mapped to no control" not in result.stderr and result.returncode == 0, result.stderr
    for path in MAPPINGS.glob("*.yaml"):
        assert (mappings / path.name).read_text() == path.read_text(), path.name
    assert map_check(mappings, check_id, provider, *citations).returncode == 0  # a second run changes nothing
    assert all((mappings / p.name).read_text() == p.read_text() for p in MAPPINGS.glob("*.yaml"))


def test_map_check_fills_a_control_no_check_evidenced_yet(mappings: Path) -> None:
    result = map_check(mappings, "k8s_disruption_budgets", "kubernetes", "hipaa:164.312(c)(1)")
    assert result.returncode == 0, result.stderr
    assert "      - k8s_disruption_budgets" in (mappings / "hipaa_kubernetes.yaml").read_text()
    controls = load_mappings(all_checks(), mappings)["k8s_disruption_budgets"]
    assert controls == ("hipaa:164.312(c)(1)", "soc2:A1.2")


def test_map_check_reports_a_citation_the_catalog_does_not_hold(mappings: Path) -> None:
    result = map_check(mappings, "kms_cmk_rotation_enabled", "aws", "soc2:CC6.9")
    assert result.returncode == 1
    assert "soc2_aws.yaml: control CC6.9 (listing kms_cmk_rotation_enabled) is not in" in result.stderr
