"""`byoc estimate`, `validate` and `plan` agree on a spec's cold_start, region by region: the same rules refuse the
same specs (in the words the user gave: a flag or a spec field), and a multi-region warm pool is priced, counted
and described in every region at its own machine (the tester's report: eu-north-1 runs p5.48xlarge, eight
placeholders a node, at $55.04/h, while plan.json and estimate said the primary's p5.4xlarge at $6.88/h)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from byoc.cli import app
from tests.conftest import spec_data

runner = CliRunner()
P5, P5_48 = 6.88, 55.04  # p5.4xlarge, p5.48xlarge: the catalog's on-demand $/h
EUROPE = {"region": "EUROPE", "placement": {"min_regions": 2}}  # eu-west-2 (p5.4xlarge), eu-north-1 (p5.48xlarge)
FLAGS = ["--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8"]


def written(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "byoc.yaml"
    path.write_text(yaml.safe_dump(spec_data(**overrides)))
    return path


def document(out: str) -> dict[str, Any]:
    """The JSON document in a command's output (warnings on stderr come with it)."""
    found: dict[str, Any] = json.JSONDecoder().raw_decode(out[out.index("{") :])[0]
    return found


def byoc(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_a_multi_region_warm_pool_is_each_regions_own_and_its_totals_add_up(tmp_path: Path) -> None:
    spec = written(tmp_path, **EUROPE, autoscaling={"max_replicas": 8}, cold_start={"warm_pool": 1})
    code, out = byoc("validate", "-f", str(spec), "--output", "json")
    assert code == 0, out
    plan = document(out)
    pool = plan["cold_start_caches"]["warm_pool"]
    assert pool["per_region"]["eu-west-2"] | {"monthly_usd": 0} == {
        "instance_type": "p5.4xlarge", "nodes": 1, "placeholder_pods": 1, "hourly_usd": P5, "monthly_usd": 0,
    }  # fmt: skip
    assert pool["per_region"]["eu-north-1"]["instance_type"] == "p5.48xlarge"
    assert pool["per_region"]["eu-north-1"]["placeholder_pods"] == 8  # eight replica slots on one warm node
    assert pool["hourly_usd"] == pytest.approx(P5 + P5_48)  # $61.92/h, not 2 x $6.88
    assert pool["nodes"] == 2 and pool["placeholder_pods"] == 9 and pool["instance_type"] is None
    # each region's image and weights, and which region the top-level figures are
    caches = plan["cold_start_caches"]
    assert caches["region"] == "eu-west-2" and set(caches["per_region"]) == {"eu-west-2", "eu-north-1"}
    assert plan["estimates"]["region"] == plan["estimates"]["cost"]["region"] == "eu-west-2"
    standing = plan["estimates"]["regions"]["per_region"]
    assert standing["eu-north-1"]["standing"]["warm_pool_hourly_usd"] == P5_48
    # the text says the true total and each region's
    code, text = byoc("estimate", "-f", str(spec))
    assert code == 0, text
    line = next(x for x in text.splitlines() if x.strip().startswith("warm pool") and "in all" in x)
    assert "$61.92/h in all" in line and "eu-north-1 1 x p5.48xlarge $55.04/h" in line
    assert "$6.88/h (1 idle node" not in text


def test_a_budget_line_per_region_where_their_placeholders_differ(tmp_path: Path) -> None:
    spec = written(
        tmp_path, **EUROPE, autoscaling={"max_replicas": 8}, cold_start={"warm_pool": 1}, budget={"gpu_hours": 1000}
    )
    for command in ("validate", "estimate"):
        code, text = byoc(command, "-f", str(spec))
        assert code == 0, text
        budgets = [x.strip() for x in text.splitlines() if x.strip().startswith("budget")]
        assert any("eu-west-2: the warm pool's placeholders hold 1 GPU:" in b for b in budgets), budgets
        assert any("eu-north-1: the warm pool's placeholders hold 8 GPUs:" in b for b in budgets), budgets


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"region": "us-east-1", "cold_start": {"image_disk": "projects/my-project/global/images/x"}},
         "cold_start.image_disk"),
        ({"cloud": "gcp", "region": "US", "shape": "l4x1-fp8", "model": "qwen2.5-7b-instruct",
          "placement": {"min_regions": 2}, "cold_start": {"weights_cache": "node_cache"}}, "cold_start.weights_cache"),
        ({**EUROPE, "autoscaling": {"max_replicas": 4}, "cold_start": {"warm_pool": 2}}, "cold_start.warm_pool"),
    ],
)  # fmt: skip
def test_estimate_refuses_what_validate_refuses_with_the_same_message(
    tmp_path: Path, overrides: dict[str, Any], field: str
) -> None:
    spec = written(tmp_path, **overrides)
    refused = [byoc(command, "-f", str(spec)) for command in ("validate", "estimate")]
    assert [code for code, _ in refused] == [2, 2], refused
    errors = [next(x for x in out.splitlines() if x.startswith("error:")) for _, out in refused]
    assert errors[0] == errors[1] and errors[0].startswith(f"error: {field}:")


def test_an_option_the_cloud_has_not_is_refused_naming_the_flag() -> None:
    code, out = byoc("estimate", *FLAGS, "--image-disk", "projects/my-project/global/images/x")
    assert code == 2 and "error: --image-disk: does not apply on AWS" in out and "leave out --image-disk" in out


def test_a_warm_pool_refusal_names_the_region_and_machine_and_the_input_as_given(tmp_path: Path) -> None:
    spec = written(tmp_path, **EUROPE, autoscaling={"max_replicas": 4}, cold_start={"warm_pool": 2})
    code, out = byoc("estimate", "-f", str(spec))
    assert code == 2
    assert "eu-north-1" in out and "p5.48xlarge" in out and "8 replica(s) per node" in out
    assert "raise autoscaling.max_replicas" in out and "--max-replicas" not in out  # a spec, not flags
    code, out = byoc("estimate", "-f", str(spec), "--warm-pool", "2")
    assert code == 2 and "error: --warm-pool:" in out and "set --warm-pool to at most 1" in out


def test_an_image_disk_refusal_names_the_flags_given() -> None:
    disk = "projects/my-project/global/images/x"
    args = ["--cloud", "gcp", "--model", "qwen2.5-7b-instruct", "--shape", "l4x1-fp8", "--no-image-cache"]
    code, out = byoc("estimate", *args, "--image-disk", disk)
    assert code == 2 and "error: --image-disk:" in out
    assert "--no-image-cache" in out and "pass --image-cache" in out and "cold_start.image_cache" not in out


@pytest.mark.parametrize(("low", "high", "pool"), [(4, 4, 1), (3, 4, 2)])
def test_a_warm_pool_only_replicas_past_min_replicas_can_take_is_refused(
    tmp_path: Path, low: int, high: int, pool: int
) -> None:
    spec = written(tmp_path, region="us-east-1", placement={}, autoscaling={"min_replicas": low, "max_replicas": high},
                   cold_start={"warm_pool": pool})  # fmt: skip
    for command in ("validate", "estimate"):
        code, out = byoc(command, "-f", str(spec))
        assert code == 2 and "error: cold_start.warm_pool:" in out and "us-east-1" in out, out
        assert f"at most {high - low}" in out
    bounds = ["--min-replicas", str(low), "--max-replicas", str(high), "--warm-pool", str(pool)]
    code, out = byoc("estimate", *FLAGS, *bounds)
    assert code == 2 and "error: --warm-pool:" in out and "--min-replicas" in out


def test_the_cold_start_is_from_zero_only_at_min_replicas_0(tmp_path: Path) -> None:
    spec = written(tmp_path, region="us-east-1", placement={}, autoscaling={"min_replicas": 2, "max_replicas": 4},
                   cold_start={"warm_pool": 1})  # fmt: skip
    code, out = byoc("validate", "-f", str(spec), "--output", "json")
    assert code == 0, out
    cold = document(out)["estimates"]["cold_start"]
    assert cold["from_zero"] is False and cold["min_replicas"] == 2
    for command in ("validate", "estimate"):
        code, text = byoc(command, "-f", str(spec))
        line = next(x for x in text.splitlines() if x.strip().startswith("cold start"))
        assert "from zero" not in line and "for a new replica past min_replicas 2" in line
    code, text = byoc("estimate", *FLAGS)
    assert code == 0 and "from zero" in next(x for x in text.splitlines() if x.strip().startswith("cold start"))


def test_a_spec_in_one_region_is_priced_on_that_regions_machine(tmp_path: Path) -> None:
    """eu-north-1 offers no p5.4xlarge: the plan launches p5.48xlarge there, and estimate prices the same machine
    (it priced GLOBAL's p5.4xlarge, an eighth of the bill)."""
    spec = written(tmp_path, region="eu-north-1", autoscaling={"min_replicas": 1, "max_replicas": 8})
    code, out = byoc("estimate", "-f", str(spec), "--output", "json")
    assert code == 0, out
    row = document(out)
    assert row["instance_type"] == "p5.48xlarge"
    assert row["cost"]["at_min_replicas"]["hourly_usd"] == pytest.approx(P5_48)
    code, out = byoc("validate", "-f", str(spec), "--output", "json")
    assert document(out)["estimates"]["cost"]["at_min_replicas"]["hourly_usd"] == pytest.approx(P5_48)


def test_the_users_price_per_gpu_hour_prices_every_node(tmp_path: Path) -> None:
    """--price-per-gpu-hour 2: the serving nodes, each region's and the warm pool's all at $2 a GPU-hour (a
    p5.4xlarge $2/h, a p5.48xlarge $16/h), so the lines add up to one another."""
    spec = written(tmp_path, **EUROPE, autoscaling={"max_replicas": 4}, cold_start={"warm_pool": 1})
    code, out = byoc("estimate", "-f", str(spec), "--price-per-gpu-hour", "2", "--output", "json")
    assert code == 0, out
    row = document(out)
    assert row["warm_pool"]["hourly_usd"] == pytest.approx(2 + 16)
    assert row["warm_pool"]["per_region"]["eu-north-1"]["hourly_usd"] == pytest.approx(16)
    per_region = row["regions"]["per_region"]
    assert per_region["eu-north-1"]["standing"]["warm_pool_hourly_usd"] == pytest.approx(16)
    assert row["cost"]["standing"]["hourly_usd"] == pytest.approx(2)  # eu-west-2's, as cost.region says
    # the machines stay the plan's: the price changes what they cost, not which they are
    assert per_region["eu-north-1"]["instance_type"] == "p5.48xlarge"


@pytest.mark.parametrize("price", ["inf", "nan", "-inf"])
def test_a_price_that_is_not_a_number_is_refused(price: str) -> None:
    code, out = byoc("estimate", *FLAGS, "--price-per-gpu-hour", price)
    assert code == 2 and "--price-per-gpu-hour" in out and "Traceback" not in out


def test_a_warm_node_the_minimums_node_has_room_for_is_refused(tmp_path: Path) -> None:
    """min 1, max 8 in eu-north-1: the 7 replicas past the minimum fit the free slots of the minimum's p5.48xlarge,
    so a warm node would never be taken."""
    spec = written(
        tmp_path, region="eu-north-1", autoscaling={"min_replicas": 1, "max_replicas": 8}, cold_start={"warm_pool": 1}
    )
    for command in ("validate", "estimate"):
        code, out = byoc(command, "-f", str(spec))
        assert code == 2, out
        assert "fit on the 1 p5.48xlarge node(s) the minimum already holds there" in out
    # one more than a node's worth past it needs a node of its own: a warm node can take it
    spec = written(
        tmp_path, region="eu-north-1", autoscaling={"min_replicas": 1, "max_replicas": 9}, cold_start={"warm_pool": 1}
    )
    assert byoc("validate", "-f", str(spec))[0] == 0


def test_messages_name_what_the_user_wrote(tmp_path: Path) -> None:
    """Flags by their flags; YAML's null and false as YAML writes them, not as Python prints them."""
    code, out = byoc("estimate", *FLAGS, "--min-replicas", "3", "--max-replicas", "2")
    assert code == 2 and "set --max-replicas to at least 3" in out
    code, out = byoc("estimate", *FLAGS, "--max-context", "100000000")
    assert code == 2 and "use --max-context <= 131072" in out
    code, out = byoc("validate", "-f", str(written(tmp_path, batch={"enabled": None})))
    assert code == 2 and "batch.enabled: null is not true or false" in out
    # estimate's JSON says which region its top-level figures are (as plan.json's estimates.region)
    code, out = byoc("estimate", "-f", str(written(tmp_path, **EUROPE)), "--output", "json")
    assert code == 0 and document(out)["region"] == "eu-west-2"
