"""Multi-region placement (issue 23): a mega-region or GLOBAL places in placement.min_regions regions of its set
(default 2), chosen by node price then the catalog's order, never outside the set; a region id pins to one."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from byoc.catalogs import load_catalog
from byoc.clouds import get_cloud
from byoc.names import region_code
from tests.conftest import deploy, refused, run_byoc

MULTI: dict[str, Any] = {"placement": {}}  # the spec's own default: two regions


@pytest.mark.parametrize(
    ("cloud", "mega", "shape"),
    [
        ("aws", "EUROPE", "h100x1-fp8"),
        ("aws", "US", "h100x1-fp8"),
        ("gcp", "EUROPE", "h100x1-fp8"),
        ("gcp", "US", "l4x1-fp8"),
        ("aws", "APAC", "h100x1-fp8"),
    ],
)
def test_a_mega_region_places_in_two_regions_of_its_set(cloud: str, mega: str, shape: str) -> None:
    deployment = deploy(cloud=cloud, region=mega, shape=shape, **MULTI)
    members = load_catalog().mega_regions[cloud][mega]
    regions = deployment.region_names
    assert len(regions) == 2 and len(set(regions)) == 2
    assert set(regions) <= set(members), f"{regions} leaves {mega}"
    assert deployment.residency == mega
    assert deployment.placement.region == regions[0]  # the primary builds the model
    for regional in deployment.per_region:
        assert regional.placement.instance_type in load_catalog().offerings[cloud][regional.region]
        assert regional.name == f"test-{region_code(regional.region)}"
        assert regional.deployment_name == "test"
        assert [peer for peer, _, _ in regional.peers()] == [r for r in regions if r != regional.region]
    ranges = [ipaddress.ip_network(r.network.cidr) for r in deployment.per_region]
    assert not ranges[0].overlaps(ranges[1])


def test_regions_are_chosen_by_node_price_then_catalog_order() -> None:
    deployment = deploy(region="EUROPE", **MULTI)
    prices = [get_cloud("aws").instance_types[p.instance_type].hourly_usd for p in deployment.regions]
    assert deployment.region_names == ["eu-west-2", "eu-north-1"]  # only these two EU regions offer H100 nodes
    assert prices == sorted(prices)  # eu-west-2 offers the one-GPU p5.4xlarge, eu-north-1 only p5.48xlarge
    assert "eu-west-1" in deployment.placement.reason  # the regions of the set that lack the GPU are named


def test_global_may_use_any_region_and_says_so() -> None:
    deployment = deploy(region="GLOBAL", **MULTI)
    assert deployment.residency == "GLOBAL" and len(deployment.regions) == 2


def test_listed_regions_keep_their_order() -> None:
    deployment = deploy(region="EUROPE", placement={"regions": ["eu-north-1", "eu-west-2"]})
    assert deployment.region_names == ["eu-north-1", "eu-west-2"]
    assert deployment.per_region[0].network.cidr == "10.42.0.0/16"  # the primary keeps network.cidr
    assert deployment.per_region[1].network.cidr == "10.43.0.0/16"


def test_plan_document_lists_every_region_and_costs_per_region_and_total() -> None:
    doc = deploy(region="EUROPE", **MULTI).plan_document()
    placement = doc["placement"]
    assert placement["residency"] == "EUROPE"
    assert [r["region"] for r in placement["regions"]] == ["eu-west-2", "eu-north-1"]
    assert placement["global_stack"] == "test-global"
    assert [r["stack"] for r in placement["regions"]] == ["test-euw2", "test-eun1"]
    costs = doc["estimates"]["regions"]
    for key in ("floor_hourly_usd", "at_min_replicas_hourly_usd", "at_max_replicas_hourly_usd"):
        assert costs["total"][key] == pytest.approx(sum(r[key] for r in costs["per_region"].values()), abs=1e-3)
    assert costs["per_region"]["eu-north-1"]["instance_type"] == "p5.48xlarge"


def test_a_region_id_pins_to_that_region() -> None:
    deployment = deploy(region="eu-west-2", placement={})
    assert deployment.region_names == ["eu-west-2"] and not deployment.multi_region
    assert deployment.stack_name() == "test" and deployment.plan_document()["placement"]["global_stack"] is None


# -- bad input: exit 2, one message naming the field and a fix ------------------------------------------------


def test_too_few_regions_of_the_set_offer_the_shape() -> None:
    error = refused(region="EUROPE", placement={"min_regions": 3})
    assert error.field == "region"
    assert "h100x1-fp8" in error.message and "eu-west-2" in error.message and "eu-north-1" in error.message
    assert "min_regions: 2" in error.hint


def test_a_listed_region_outside_the_mega_region_is_refused() -> None:
    error = refused(region="EUROPE", placement={"regions": ["eu-west-2", "us-east-1"]})
    assert error.field == "placement.regions"
    assert "us-east-1 is not in EUROPE" in error.message


def test_a_listed_region_that_lacks_the_gpu_is_refused() -> None:
    error = refused(region="EUROPE", placement={"regions": ["eu-west-2", "eu-west-1"]})
    assert error.field == "placement.regions" and "eu-west-1" in error.message
    assert "eu-north-1" in error.hint  # the ones that do


def test_fewer_listed_regions_than_min_regions() -> None:
    error = refused(region="EUROPE", placement={"regions": ["eu-west-2"], "min_regions": 2})
    assert error.field == "placement.regions" and "eu-north-1" in error.hint


def test_a_region_id_with_other_regions_or_min_regions_is_refused() -> None:
    assert refused(region="eu-west-2", placement={"regions": ["eu-north-1"]}).field == "placement.regions"
    assert refused(region="eu-west-2", placement={"min_regions": 2}).field == "placement.min_regions"


def test_a_multi_region_name_leaves_room_for_the_region_code() -> None:
    error = refused(region="EUROPE", name="a" * 30, **MULTI)
    assert error.field == "name" and "26" in error.message


def test_one_kms_key_cannot_serve_two_regions() -> None:
    key = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    error = refused(region="EUROPE", encryption={"kms_key": key}, **MULTI)
    assert error.field == "encryption.kms_key"


def test_the_second_range_must_stay_private() -> None:
    error = refused(region="EUROPE", network={"cidr": "10.255.0.0/16"}, **MULTI)
    assert error.field == "network.cidr"


def test_plan_refuses_bad_placement_and_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "mr",
                "cloud": "aws",
                "region": "EUROPE",
                "model": "llama-3.1-8b-instruct",
                "shape": "h100x1-fp8",
                "placement": {"regions": ["eu-west-2", "us-east-1"]},
            }
        )
    )
    out = tmp_path / "out"
    result = run_byoc("plan", "-f", str(spec), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "placement.regions" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_duplicate_regions_are_refused_at_load(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "mr",
                "cloud": "aws",
                "region": "EUROPE",
                "model": "llama-3.1-8b-instruct",
                "shape": "h100x1-fp8",
                "placement": {"regions": ["eu-west-2", "eu-west-2"]},
            }
        )
    )
    result = run_byoc("validate", "-f", str(spec))
    assert result.returncode == 2 and "placement.regions" in result.stderr and "twice" in result.stderr


def test_a_one_region_deployment_has_no_peers() -> None:
    assert deploy(region="eu-west-2").peers() == [] and deploy().peers() == []


def test_one_listed_region_meets_the_default_of_two() -> None:
    error = refused(region="EUROPE", placement={"regions": ["eu-north-1"]})
    assert error.field == "placement.regions" and "(its default)" in error.message
    assert "add one of eu-west-2" in error.hint and "min_regions: 1" in error.hint
    assert deploy(region="EUROPE", placement={"regions": ["eu-north-1"], "min_regions": 1}).region_names == [
        "eu-north-1"
    ]


def test_a_key_of_a_region_of_the_set_is_refused_once_for_what_matters() -> None:
    """Not "use a key in <region>" first and then "one key cannot serve two regions": the second is the reason."""
    key = "arn:aws:kms:eu-north-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    error = refused(region="EUROPE", encryption={"kms_key": key}, **MULTI)
    assert error.field == "encryption.kms_key" and "a key lives in one region" in error.message


def test_every_regions_warnings_are_said() -> None:
    # eu-north-1 offers H100 only as the 8-GPU p5.48xlarge: one replica there pays a whole node
    deployment = deploy(region="EUROPE", **MULTI)
    assert any(
        w.message.startswith("eu-north-1: h100x1-fp8 takes 1 of the 8 GPUs of a p5.48xlarge")
        for w in deployment.warnings
    )
    assert len({w.message for w in deployment.warnings}) == len(deployment.warnings)


def test_each_regional_stack_sees_every_region_of_the_deployment() -> None:
    """A region's own plan (what its evidence is judged on) lists every region, as the deployment's does: the
    primary's model replication to the second region is inside the deployment, not outside its one region."""
    deployment = deploy(region="EUROPE", **MULTI)
    whole = deployment.plan_document()["placement"]
    for regional in deployment.per_region:
        seen = regional.plan_document()["placement"]
        assert seen["regions"] == whole["regions"] and seen["global_stack"] == whole["global_stack"] == "test-global"
