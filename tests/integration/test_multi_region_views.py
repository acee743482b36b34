"""`byoc plan` and `byoc estimate` of a multi-region spec (examples/byoc.yaml: region EUROPE -> eu-west-2 and
eu-north-1) show every region and the total, which is their sum; the manifests of each region's cluster land in a
folder of their own stack, none overwriting another's. Real `python -m byoc` subprocesses, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_byoc

EXAMPLE = str(ROOT / "examples" / "byoc.yaml")
REGIONS = ["eu-west-2", "eu-north-1"]
STACKS = ["demo-euw2", "demo-eun1"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("plan") / "byoc-out"
    result = run_byoc("plan", "-f", EXAMPLE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def dollars(text: str) -> list[float]:
    return [float(word.strip("$,;/h").replace(",", "")) for word in text.split() if word.startswith("$")]


def test_plan_shows_every_region_and_the_total(planned: tuple[Path, str]) -> None:
    out, stdout = planned
    plan: dict[str, Any] = json.loads((out / "plan.json").read_text())
    assert [r["region"] for r in plan["placement"]["regions"]] == REGIONS
    lines = stdout.splitlines()
    regions = next(line for line in lines if line.startswith("regions "))
    assert regions.startswith("regions     2 (residency EUROPE") and "stack demo-global" in regions
    per_region = plan["estimates"]["regions"]["per_region"]
    shown = {}
    for region, stack in zip(REGIONS, STACKS, strict=True):
        line = next(line for line in lines if line.split()[:1] == [region])
        assert f"stack {stack}" in line and per_region[region]["instance_type"] in line
        shown[region] = dollars(line.split(": ", 1)[1])
        assert shown[region] == [
            round(per_region[region][k], 2)
            for k in ("at_min_replicas_hourly_usd", "floor_hourly_usd", "at_max_replicas_hourly_usd")
        ]
    total = dollars(next(line for line in lines if line.split()[:1] == ["total"]))
    assert total == pytest.approx([sum(col) for col in zip(*shown.values(), strict=True)], abs=0.011)
    assert "no failing control" in next(line for line in lines if line.startswith("compliance"))


def test_manifests_of_each_region_land_in_their_stacks_folder(planned: tuple[Path, str]) -> None:
    out, _ = planned
    plan = json.loads((out / "plan.json").read_text())
    objects = [r for r in plan["resources"] if r["type"].startswith("kubernetes:") and "helm.sh" not in r["type"]]
    manifests = out / "manifests"
    folders = {p.name for p in manifests.iterdir()}
    assert set(STACKS) <= folders <= {*STACKS, "demo-global"}  # the global layer's, if it declares any
    files = sorted(manifests.rglob("*.yaml"))
    assert len(files) == len(objects)  # one file per object: nothing written over another
    for stack in STACKS:
        pools = list((manifests / stack / "cluster").glob("nodepool-*.yaml"))
        assert len(pools) == 1  # each region's cluster has its own GPU NodePool
        namespaces = {p.name for p in (manifests / stack).iterdir()}
        assert f"byoc-{stack}" in namespaces and not any(
            f"byoc-{other}" in namespaces for other in STACKS if other != stack
        )
    releases = list(yaml.safe_load_all((out / "helm-releases.yaml").read_text()))
    assert [r["stack"] for r in releases] == sorted((r["stack"] for r in releases), key=STACKS.index)
    assert {r["stack"] for r in releases} == set(STACKS)


def test_estimate_shows_every_region_and_the_total() -> None:
    result = run_byoc("estimate", "-f", EXAMPLE, "--output", "json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    per_region, total = row["regions"]["per_region"], row["regions"]["total"]
    assert list(per_region) == REGIONS
    for key, value in total.items():
        assert value == pytest.approx(sum(r[key] for r in per_region.values()), abs=1e-3)
    text = run_byoc("estimate", "-f", EXAMPLE, "--max-replicas", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(line.split()[:2] == ["regions", "2,"] for line in lines)
    for region in REGIONS:
        line = next(line for line in lines if line.split()[:1] == [region])
        assert "at max_replicas" in line
    assert any(line.split()[:1] == ["total"] for line in lines)


def test_the_evidence_pack_reports_per_region(planned: tuple[Path, str]) -> None:
    out, _ = planned
    summary = json.loads((out / "compliance" / "summary.json").read_text())
    per_region = summary["regions"]
    assert [r for r in per_region if r != "global"] == REGIONS
    for region, stack in zip(REGIONS, STACKS, strict=True):
        assert per_region[region]["stack"] == stack
        assert per_region[region]["findings"]["PASS"] > 50 and "FAIL" not in per_region[region]["findings"]
    report = (out / "compliance" / "report.md").read_text()
    assert "resources in eu-west-2, eu-north-1 (requested: EUROPE)" in report
    assert "## Regions (eu-west-2, eu-north-1; residency EUROPE)" in report
    rows = [
        line for line in report.splitlines() if line.startswith(("| eu-west-2 | demo-euw2", "| eu-north-1 | demo-eun1"))
    ]
    assert len(rows) == 2
    assert "- region: eu-north-1 (stack `demo-eun1`)" in report
    findings = json.loads((out / "compliance" / "findings.json").read_text())
    assert {(f["stack"], f["region"]) for f in findings if f.get("stack") in STACKS} == set(
        zip(STACKS, REGIONS, strict=True)
    )
