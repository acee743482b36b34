"""What the cold-start caches bill at every replica count (the warm pool's nodes, GKE node_cache's Hyperdisk ML
volumes) is priced as rendered: per region and in total, in the floor at min_replicas, in plan.json, `byoc plan`'s
text and `byoc estimate` (text and JSON). The manifests are the ground truth: what they hold is what is paid."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from byoc.catalogs import load_catalog
from tests.conftest import run_byoc, spec_data

P5 = load_catalog().instances["aws"]["p5.4xlarge"].hourly_usd  # 6.88


def planned(tmp_path: Path, **overrides: Any) -> tuple[dict[str, Any], str, Path]:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**overrides)))
    out = tmp_path / "out"
    result = run_byoc("plan", "-f", str(spec), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads((out / "plan.json").read_text()), result.stdout, spec


def estimated(spec: Path) -> tuple[dict[str, Any], str]:
    text, data = run_byoc("estimate", "-f", str(spec)), run_byoc("estimate", "-f", str(spec), "--output", "json")
    assert text.returncode == 0 and data.returncode == 0, text.stderr + data.stderr
    return json.loads(data.stdout), text.stdout


def ci_summary(plan_json: Path) -> str:
    """The pull-request summary examples/github-actions/byoc-plan.yml writes, run on `plan_json` as CI runs it."""
    workflow = yaml.safe_load((Path(__file__).parents[2] / "examples/github-actions/byoc-plan.yml").read_text())
    [step] = [s for job in workflow["jobs"].values() for s in job["steps"] if s.get("name") == "Summarise the plan"]
    script = step["run"].split("<<'PY'", 1)[1].split("\n", 1)[1].rsplit("\nPY", 1)[0]
    (plan_json.parent / "byoc-plan.json").write_text(plan_json.read_text())
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=plan_json.parent,
        check=True,
    )
    return result.stdout


def line(stdout: str, head: str) -> str:
    return next(x for x in stdout.splitlines() if x.strip().startswith(head))


@pytest.fixture(scope="module")
def us_warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    return planned(
        tmp_path_factory.mktemp("us"),
        region="US",
        placement={"min_regions": 2},
        autoscaling={"max_replicas": 2},
        cold_start={"warm_pool": 1, "weights_cache": "node_cache"},
    )


def test_a_multi_region_warm_pool_is_priced_in_every_region_it_is_rendered(
    us_warm: tuple[dict[str, Any], str, Path],
) -> None:
    plan, stdout, _ = us_warm
    manifests = sorted((us_warm[2].parent / "out" / "manifests").rglob("deployment-*-warm-pool.yaml"))
    warm_nodes = sum(yaml.safe_load(m.read_text())["spec"]["replicas"] for m in manifests)
    assert len(manifests) == 2 and warm_nodes == 2  # one placeholder (one p5.4xlarge) in each region
    pool = plan["cold_start_caches"]["warm_pool"]
    assert pool["hourly_usd"] == pytest.approx(warm_nodes * P5)  # $13.76/h, not one region's $6.88
    assert pool["monthly_usd"] == pytest.approx(warm_nodes * P5 * 730, abs=0.01)
    assert f"1 x p5.4xlarge kept warm in each of 2 regions, ${warm_nodes * P5:.2f}/h" in stdout
    regions = plan["estimates"]["regions"]
    stores = sum(r["standing_hourly_usd"] - r["standing"]["hourly_usd"] for r in regions["per_region"].values())
    for figures in regions["per_region"].values():  # a warm pool is paid at zero replicas
        assert figures["standing"]["warm_pool_hourly_usd"] == P5
        assert figures["at_min_replicas_hourly_usd"] >= P5
    assert regions["total"]["at_min_replicas_hourly_usd"] == pytest.approx(warm_nodes * P5 + stores, abs=1e-3)
    total = line(stdout, "total")
    assert f"${warm_nodes * P5 + stores:,.2f}/h at min_replicas" in total
    total_paid = regions["total"]["at_min_replicas_hourly_usd"]
    assert f"${total_paid:,.2f}/h at min_replicas (all regions)" in ci_summary(us_warm[2].parent / "out" / "plan.json")
    # the primary's floor says its own pool is paid at zero replicas
    assert f"${P5:.2f}/h at min_replicas 0 (warm pool 1 node ${P5:.2f}/h)" in line(stdout, "floor")


def test_byoc_estimate_prices_a_multi_region_warm_pool_as_the_plan_does(
    us_warm: tuple[dict[str, Any], str, Path],
) -> None:
    plan, _, spec = us_warm
    row, text = estimated(spec)
    assert row["regions"] == plan["estimates"]["regions"]
    assert row["cost"]["standing"] == plan["estimates"]["cost"]["standing"]
    assert f"${P5:.2f}/h at min_replicas 0" in line(text, "cost")
    # --warm-pool beside -f overrides the spec's pool in every region's figures too
    bare = run_byoc("estimate", "-f", str(spec), "--warm-pool", "0", "--output", "json")
    assert bare.returncode == 0, bare.stderr
    total = json.loads(bare.stdout)["regions"]["total"]
    assert total["at_min_replicas_hourly_usd"] == pytest.approx(
        plan["estimates"]["regions"]["total"]["at_min_replicas_hourly_usd"] - 2 * P5, abs=1e-3
    )


GKE = {
    "cloud": "gcp",
    "region": "us-central1",
    "shape": "l4x1-fp8",
    "autoscaling": {"max_replicas": 2},
    "cold_start": {"weights_cache": "node_cache", "warm_pool": 2},
}


def test_gke_node_cache_volumes_are_in_the_cost_and_its_floor(tmp_path: Path) -> None:
    plan, stdout, spec = planned(tmp_path, **GKE)
    weights = plan["cold_start_caches"]["weights"]["disk"]
    [storage_class] = (tmp_path / "out" / "manifests").rglob("storageclass-*-weights-*.yaml")
    topology = yaml.safe_load(storage_class.read_text())["allowedTopologies"][0]["matchLabelExpressions"][0]
    zones = len(topology["values"])  # one volume in each zone the StorageClass lists
    assert zones == weights["zones"] == 3
    volumes_monthly = zones * weights["monthly_usd_per_zone"]  # ~$866/month at zero replicas
    cost = plan["estimates"]["cost"]
    assert cost["standing"]["weights_disk_monthly_usd"] == pytest.approx(volumes_monthly, abs=0.01)
    warm = plan["cold_start_caches"]["warm_pool"]["hourly_usd"]
    paid = volumes_monthly / 730 + warm  # at min_replicas 0: no serving node, but the volumes and the pool
    assert cost["paid_at_min_replicas_hourly_usd"] == pytest.approx(paid, abs=1e-3)
    assert line(stdout, "floor").startswith(f"floor       ${paid:,.2f}/h at min_replicas 0 (")
    assert f"${volumes_monthly:,.2f}/month in 3 zones" in line(stdout, "caches")
    store = plan["estimates"]["store"]["hourly_usd"]
    assert f"${paid + store:,.2f}/h at min_replicas\n" in ci_summary(tmp_path / "out" / "plan.json")
    row, text = estimated(spec)
    assert row["cost"]["standing"] == cost["standing"]
    assert row["cost"]["paid_at_min_replicas_hourly_usd"] == cost["paid_at_min_replicas_hourly_usd"]
    assert f"${paid:,.2f}/h at min_replicas 0" in line(text, "cost")
    assert f"${volumes_monthly:,.2f}/month in 3 zones" in line(text, "weights disk")


BUDGET = {"gpu_hours": 100, "cap_replicas": 0}


def test_the_plan_and_the_estimate_say_what_the_warm_pool_spends_of_the_gpu_hour_budget(tmp_path: Path) -> None:
    plan, stdout, spec = planned(
        tmp_path,
        region="us-east-1",
        autoscaling={"max_replicas": 2},
        cold_start={"warm_pool": 2},
        budget=BUDGET,
    )
    # the budget counts the GPUs the running placeholders request, as it counts a replica's
    [pool] = (tmp_path / "out" / "manifests").rglob("deployment-*-warm-pool.yaml")
    placeholders = yaml.safe_load(pool.read_text())["spec"]
    gpus = placeholders["replicas"] * int(
        placeholders["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
    )
    spends = plan["estimates"]["warm_pool_budget"]
    assert spends["gpus"] == gpus == 2
    assert spends["gpu_hours_per_day"] == gpus * 24 == 48
    assert spends["days_at_zero_replicas"] == pytest.approx(100 / 48, abs=0.01)
    assert spends["stops_the_pool"] is True
    budget_line = line(stdout, "budget")
    assert "48 GPU-hours a day" in budget_line and "last 2.1 days at zero replicas" in budget_line
    assert "cap_replicas empties the warm pool too" in budget_line
    row, text = estimated(spec)
    assert row["warm_pool_budget"] == spends  # plan.json says the sentence too
    assert line(text, "budget") == f"  budget             {row['warm_pool_budget']['words']}"


def test_an_alert_only_budget_says_the_pool_keeps_running_and_no_budget_says_nothing(tmp_path: Path) -> None:
    alerts_only = {"gpu_hours": 100, "period": "week"}
    plan, stdout, _ = planned(
        tmp_path, region="us-east-1", autoscaling={"max_replicas": 2}, cold_start={"warm_pool": 1}, budget=alerts_only
    )
    assert plan["estimates"]["warm_pool_budget"]["stops_the_pool"] is False
    assert "(100 a week)" in line(stdout, "budget") and "the pool keeps running" in line(stdout, "budget")
    (tmp_path / "none").mkdir()
    none, stdout, _ = planned(tmp_path / "none", region="us-east-1", autoscaling={"max_replicas": 2},
                              cold_start={"warm_pool": 1})  # fmt: skip
    assert none["estimates"]["warm_pool_budget"] is None
    assert not any(x.startswith("budget ") for x in stdout.splitlines())
