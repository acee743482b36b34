"""The cold-start estimate as users meet it: `byoc estimate` (table and JSON, from flags or a spec), `byoc shapes
--model`'s column, plan.json `estimates.cold_start`, and the gateway's --wake-timeout derived from it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from byoc.cli import app
from byoc.coldstart import PHASES, cold_start_catalog
from tests.conftest import EXAMPLES, deploy
from tests.stacks.plans import graph
from tests.stacks.test_serving_stack import containers, workload

runner = CliRunner()
GIB, MIB = 1024**3, 1024**2


def estimate_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["estimate", *args, "--output", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def seconds(estimate: dict[str, Any]) -> dict[str, float]:
    return {p["phase"]: p["seconds"] for p in estimate["phases"]}


def test_every_phase_has_seconds_and_a_source_and_they_add_up() -> None:
    cold = estimate_json("--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8")["cold_start"]
    assert [p["phase"] for p in cold["phases"]] == list(PHASES)
    for phase in cold["phases"]:
        assert phase["seconds"] >= 0
        assert phase["source"], phase
        assert phase["basis"], phase
    assert math.isclose(cold["total_seconds"], sum(seconds(cold).values()), abs_tol=0.5)
    assert cold["options"] == {"image_cache": True, "weights_cache": "local_ssd", "warm_pool": 0}
    assert cold["catalog"] == "byoc/catalogs/coldstart.yaml"


def test_every_catalog_figure_names_a_source() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            numbers = [k for k, v in node.items() if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers and path not in ("wake_timeout",):
                assert any(k.endswith("source") for k in node), f"{path} has {numbers} without a source"
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else key)

    walk(cold_start_catalog(), "")


def test_the_image_cache_takes_the_pull_from_minutes_to_seconds() -> None:
    args = ["--model", "llama-3.1-8b-instruct", "--shape", "l4x1-fp8", "--cloud", "gcp"]
    pulled = seconds(estimate_json(*args, "--no-image-cache")["cold_start"])["image_pull"]
    disk = "projects/my-project/global/images/serving-cache"
    cached = seconds(estimate_json(*args, "--image-disk", disk)["cold_start"])["image_pull"]
    image = cold_start_catalog()["image_pull"]
    assert pulled == round(image["image_gib"] * GIB / (image["rate_mib_s"] * MIB), 1)  # size / rate
    assert pulled > 180  # "several minutes" for a ~20 GB image
    assert cached == image["cached"]["gcp"]["seconds"]
    # image_cache on without a disk image: GKE streams only from Artifact Registry, and the default serving image
    # is not there, so the plan pulls it, and the estimate says so, with the plan's reason, in the spec's words
    default = estimate_json(*args)["cold_start"]
    assert seconds(default)["image_pull"] == pulled
    assert default["options"]["image_cache"] is True
    assert default["options"]["plan_renders"]["image_cache"] is False
    assert "image_cache: each new GPU node pulls the serving image" in default["options"]["why"][0]


def test_gke_node_cache_reads_every_wake_from_hyperdisk_ml_at_the_published_rate() -> None:
    """GKE's node_cache: the GKE Volume Populator fills the Hyperdisk ML volume at deploy, so every wake reads it
    from the volume at one VM's Hyperdisk ML read rate (coldstart.yaml weights_fetch.read.node_cache.gcp)."""
    args = ["--model", "llama-3.3-70b-instruct", "--shape", "h100x4-fp8", "--cloud", "gcp"]
    shared = estimate_json(*args, "--weights-cache", "node_cache")["cold_start"]
    local = estimate_json(*args)["cold_start"]
    read = cold_start_catalog()["weights_fetch"]["read"]["node_cache"]["gcp"]
    fetch = shared["phases"][2]
    gib = float(fetch["basis"].split(" GiB")[0])
    assert math.isclose(fetch["seconds"], gib * GIB / (read["rate_mib_s"] * MIB), abs_tol=0.1)
    assert "Hyperdisk ML volume" in fetch["basis"] and fetch["source"] == read["source"]
    assert seconds(shared)["weights_fetch"] < seconds(local)["weights_fetch"]  # the bucket's rate is slower
    assert shared["weights_fetch_cached"] == fetch  # no node has to hold it first


def test_the_estimate_prices_gkes_shared_weights_disk_and_not_awss() -> None:
    args = ["--model", "llama-3.3-70b-instruct", "--shape", "h100x4-fp8", "--weights-cache", "node_cache"]
    disk = estimate_json(*args, "--cloud", "gcp")["weights_disk"]
    assert disk["disk_type"] == "hyperdisk-ml" and disk["monthly_usd_per_zone"] > 0 and disk["size_gib"] > 70
    assert "weights_disk" not in estimate_json(*args, "--cloud", "aws")
    text = runner.invoke(app, ["estimate", *args, "--cloud", "gcp"]).stdout
    assert f"${disk['monthly_usd_per_zone']:,.2f}/month per zone" in text and "weights cached" not in text


def test_weights_on_the_root_disk_are_slower_than_on_local_ssd() -> None:
    args = ["--model", "llama-3.3-70b-instruct", "--shape", "h100x4-fp8"]
    local = estimate_json(*args)["cold_start"]
    root = estimate_json(*args, "--weights-cache", "none")["cold_start"]
    assert seconds(root)["weights_fetch"] > seconds(local)["weights_fetch"]
    assert "root disk" in root["phases"][2]["basis"]
    # the artifact: FP8 weights of a 70B model (~68 GiB) plus the engine files beside them
    assert 70 < float(root["phases"][2]["basis"].split(" GiB")[0]) < 85


def test_a_warm_pool_skips_the_node_launch_and_the_pull_and_says_what_it_costs() -> None:
    args = ["--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8"]
    cold = estimate_json(*args)
    warm = estimate_json(*args, "--warm-pool", "2", "--max-replicas", "2")
    cold_s, warm_s = seconds(cold["cold_start"]), seconds(warm["cold_start"])
    assert warm_s["node_launch"] == 0 and warm_s["image_pull"] == 0
    assert cold_s["node_launch"] == cold_start_catalog()["node_launch"]["aws"]["seconds"]
    assert warm["cold_start"]["total_seconds"] < cold["cold_start"]["total_seconds"]
    # a wake beyond the warm pool still launches a node: that is what the gateway's timeout covers
    assert warm["cold_start"]["new_node_seconds"] == cold["cold_start"]["total_seconds"]
    assert warm["cold_start"]["warm_pool_hourly_usd"] == round(2 * warm["cost"]["node"]["hourly_usd"], 4)


def test_estimate_prints_the_phases_with_the_estimate_and_the_wake_timeout() -> None:
    result = runner.invoke(app, ["estimate", "--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "cold start         ~" in text
    for words in ("node launch", "image pull", "weights fetch", "engine load", "wake timeout"):
        assert words in text


def test_estimate_from_each_example_spec_uses_its_cold_start_options(tmp_path: Path) -> None:
    for example in EXAMPLES:
        data = estimate_json("-f", str(example))
        spec = yaml.safe_load(example.read_text())
        assert data["cloud"] == spec["cloud"]
        assert data["cold_start"]["total_seconds"] > 0
    # examples/byoc.yaml: scales from zero, so a warm node can take its first replica (b200-fp4's min_replicas 1
    # holds a p6-b200.48xlarge with room for its max_replicas 2: a warm node there is refused)
    example = next(e for e in EXAMPLES if e.name == "byoc.yaml")
    spec = yaml.safe_load(example.read_text()) | {"cold_start": {"warm_pool": 1, "weights_cache": "none"}}
    path = tmp_path / "byoc.yaml"
    path.write_text(yaml.safe_dump(spec))
    options = estimate_json("-f", str(path))["cold_start"]["options"]
    # the spec's words, then what the plan renders: on EKS the SOCI pull needs containerd on the instance store,
    # which weights_cache none leaves on the root disk, so the image is pulled the plain way, and it says why
    assert {k: options[k] for k in ("image_cache", "weights_cache", "warm_pool")} == {
        "image_cache": True,
        "weights_cache": "none",
        "warm_pool": 1,
    }
    assert options["plan_renders"] == {"image_cache": False, "weights_cache": "none", "weights_on": "root_disk"}
    assert "FastImagePull is slower than a plain pull below 600 MiB/s" in options["why"][0]
    # a flag given beside the spec wins over it; what is not given is the spec's
    data = estimate_json("-f", str(example), "--max-replicas", "5")
    assert data["cost"]["at_max_replicas"]["replicas"] == 5
    assert data["cost"]["at_min_replicas"]["replicas"] == spec["autoscaling"]["min_replicas"]
    options = estimate_json("-f", str(path), "--no-image-cache", "--warm-pool", "0")["cold_start"]["options"]
    assert options == {"image_cache": False, "weights_cache": "none", "warm_pool": 0}


def test_estimate_from_a_spec_and_the_plan_give_one_figure() -> None:
    """`byoc estimate -f` takes the caches the plan renders, as plan.json does: gcp-l4 sets no GKE disk image, so
    its image is pulled in both (the spec's image_cache: true alone would have said ~10 s)."""
    from byoc.resolve import resolve
    from byoc.spec import build_spec

    for example in EXAMPLES:
        data = estimate_json("-f", str(example))["cold_start"]
        planned = resolve(build_spec(yaml.safe_load(example.read_text()))).cold_start.as_dict()
        assert data["total_seconds"] == planned["total_seconds"], example.name
        assert data["options"] == planned["options"], example.name
    gcp = estimate_json("-f", str(next(e for e in EXAMPLES if e.name == "gcp-l4.yaml")))["cold_start"]
    assert seconds(gcp)["image_pull"] > 60


def test_estimate_without_a_model_or_a_spec_is_refused() -> None:
    result = runner.invoke(app, ["estimate", "--shape", "h100x1-fp8"])
    assert result.exit_code == 2
    assert "--model" in result.output and "-f byoc.yaml" in result.output


def test_the_shapes_column_is_the_plans_cold_start_for_every_shape_on_both_clouds(tmp_path: Path) -> None:
    """The tester's report: `byoc shapes --model llama-3.1-8b-instruct --max-context 8192` said 325.7 s for gcp
    l4x1-fp8 and 383.3 s for aws l4x1-fp8 where `byoc plan` with the same defaults said 572 s and 492 s. Both
    reach byoc/resolve.py plan_cold_start now; the column says the plan's figure for region GLOBAL (the region
    the column prices in)."""
    from byoc.resolve import resolve
    from byoc.spec import build_spec

    model = "llama-3.1-8b-instruct"
    result = runner.invoke(app, ["shapes", "--model", model, "--max-context", "8192", "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["shapes"]
    assert {r["cloud"] for r in rows} == {"aws", "gcp"} and len(rows) > 20
    for row in rows:
        spec = {"name": "t", "cloud": row["cloud"], "region": "GLOBAL", "model": model, "shape": row["shape"]}
        planned = resolve(build_spec(spec | {"max_context": 8192})).cold_start
        assert row["cold_start_seconds"] == round(planned.total_seconds, 1), (row["cloud"], row["shape"])
    by = {(r["cloud"], r["shape"]): r["cold_start_seconds"] for r in rows}
    # GKE pulls the default image (not in Artifact Registry, no disk image); EKS pulls with SOCI onto the NVMe
    assert by["gcp", "l4x1-fp8"] > by["aws", "l4x1-fp8"] > 300


def test_shapes_with_a_model_has_a_cold_start_column() -> None:
    result = runner.invoke(app, ["shapes", "--model", "llama-3.1-8b-instruct", "--cloud", "gcp", "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["shapes"]
    assert rows and all(r["cold_start_seconds"] > 0 for r in rows)
    text = runner.invoke(app, ["shapes", "--model", "llama-3.1-8b-instruct", "--cloud", "gcp"]).stdout
    assert "cold start s" in text


def test_plan_json_holds_the_estimate_and_the_gateway_waits_for_it() -> None:
    deployment = deploy(cold_start={"image_cache": False})
    cold = deployment.plan_document()["estimates"]["cold_start"]
    assert cold["options"]["image_cache"] is False
    assert [p["phase"] for p in cold["phases"]] == list(PHASES)
    margin = cold_start_catalog()["wake_timeout"]["margin"]
    expected = max(300, math.ceil(cold["new_node_seconds"] * margin / 60) * 60)
    assert cold["wake_timeout_seconds"] == expected
    assert "x 2" in cold["wake_timeout_basis"]
    gateway = containers(workload(graph(cold_start={"image_cache": False}), "gateway")["template"]["spec"])["gateway"]
    args = gateway["args"] if "args" in gateway else gateway["command"]
    assert args[args.index("--wake-timeout") + 1] == str(expected)
    # a slower wake (no image cache) holds requests longer than the default
    default = containers(workload(graph(), "gateway")["template"]["spec"])["gateway"]
    default_args = default["args"] if "args" in default else default["command"]
    assert int(default_args[default_args.index("--wake-timeout") + 1]) < expected


def test_a_warm_pool_no_replica_can_use_is_refused_and_its_cost_is_shown(tmp_path: Path) -> None:
    """The field report: warm_pool 64 with max_replicas 4 planned without a word ($412/h of nodes no replica can
    take), `--warm-pool 100000` printed $688,000/h, and the cost line said $0/h at min_replicas 0 beside a warm pool."""
    spec = yaml.safe_load(EXAMPLES[0].read_text())
    spec["cold_start"] = {"warm_pool": spec["autoscaling"]["max_replicas"] + 1}
    path = tmp_path / "byoc.yaml"
    path.write_text(yaml.safe_dump(spec))
    for args in (["validate", "-f", str(path)], ["estimate", "-f", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "cold_start.warm_pool" in result.output and "at most" in result.output
        assert "Traceback" not in result.output
    flags = ["estimate", "--model", "llama-3.1-8b-instruct", "--shape", "h100x1-fp8", "--max-replicas", "2"]
    for extra in (["--warm-pool", "3"], ["--warm-pool", "100000"]):
        result = runner.invoke(app, [*flags, *extra])
        assert result.exit_code == 2, result.output
        assert "--warm-pool" in result.output
    # one region, p5.4xlarge (one replica each), max_replicas 4: two warm nodes are usable, and priced
    shown = runner.invoke(app, [*flags[:5], "--max-replicas", "4", "--warm-pool", "2", "--cloud", "aws"])
    assert shown.exit_code == 0, shown.output
    warm_line = next(
        line for line in shown.output.splitlines() if line.strip().startswith("warm pool") and "/h" in line
    )
    assert "$13.76/h" in warm_line  # two p5.4xlarge at the catalog's $6.88/h
