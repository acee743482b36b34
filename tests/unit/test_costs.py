"""Cost as the user is billed: whole nodes at min_replicas, while serving and at max_replicas; warnings when one
replica leaves most of a node unused or the node pool may launch a dearer instance type."""

from __future__ import annotations

import math
from typing import Any

import pytest

from byoc import planner
from byoc.catalogs import load_catalog
from byoc.resolve import Deployment, resolve
from byoc.rules import parse_shape
from byoc.spec import load_spec
from tests.conftest import ROOT, deploy

CATALOG = load_catalog()
B200_NODE = 113.93  # p6-b200.48xlarge, byoc/catalogs/instances.yaml
P5_NODE = 55.04  # p5.48xlarge


def _b200(**autoscaling: int) -> Deployment:
    return deploy(region="US", model="llama-3.3-70b-instruct", shape="b200x1-fp4", autoscaling=autoscaling)


def _cost_warnings(deployment: Deployment) -> list[Any]:
    return [w for w in deployment.warnings if w.field == "shape"]


def test_the_b200_example_floor_is_a_whole_node() -> None:
    deployment = resolve(load_spec(ROOT / "examples" / "b200-fp4.yaml"))
    cost = deployment.plan_document()["estimates"]["cost"]
    # the keys plan.json had before stay, with the same meaning (a replica's share of a full node)
    assert cost["replica_hourly_usd"] == pytest.approx(B200_NODE / 8, abs=1e-3)
    assert cost["gpu_hourly_usd"] == pytest.approx(B200_NODE / 8, abs=1e-3)
    assert "cost_per_million_output_tokens" in cost and "p6-b200.48xlarge" in cost["price_source"]
    assert cost["node"] == {
        "instance_type": "p6-b200.48xlarge",
        "gpus": 8,
        "hourly_usd": B200_NODE,
        "replicas_per_node": 8,
    }
    assert cost["floor_hourly_usd"] == pytest.approx(B200_NODE)
    assert cost["at_min_replicas"] == {"replicas": 1, "nodes": 1, "hourly_usd": B200_NODE}
    assert cost["at_max_replicas"] == {"replicas": 2, "nodes": 1, "hourly_usd": B200_NODE}
    assert "saturation" in cost["basis"]
    (warning,) = _cost_warnings(deployment)
    assert "1 of the 8 GPUs of a p6-b200.48xlarge" in warning.message
    assert "$113.93/h" in warning.message and "min_replicas 1" in warning.message
    assert warning.as_dict() in deployment.plan_document()["warnings"]


def test_a_shape_that_fills_its_node_has_no_cost_warning() -> None:
    deployment = deploy(
        region="US", model="llama-3.3-70b-instruct", shape="h100x8-fp8", autoscaling={"min_replicas": 1}
    )
    cost = deployment.cost
    assert not _cost_warnings(deployment)
    assert cost.node.instance_type == "p5.48xlarge" and cost.node.replicas_per_node == 1
    assert cost.floor_hourly_usd == pytest.approx(P5_NODE)  # one node
    assert cost.replica_hourly_usd == pytest.approx(P5_NODE)
    assert cost.cost_per_million_output_tokens_at_floor == pytest.approx(cost.cost_per_million_output_tokens)


@pytest.mark.parametrize(("low", "high", "warned"), [(8, 8, False), (16, 16, False), (8, 9, True), (3, 3, True)])
def test_replicas_that_always_fill_their_nodes_are_not_warned_about(low: int, high: int, warned: bool) -> None:
    """Eight b200x1 replicas fill a p6-b200.48xlarge exactly: each costs its share, so no 'the floor is a whole
    node' warning; a count that can leave GPUs idle keeps it."""
    deployment = _b200(min_replicas=low, max_replicas=high)
    assert bool([w for w in _cost_warnings(deployment) if "GPUs of a" in w.message]) is warned


@pytest.mark.parametrize(("replicas", "nodes"), [(1, 1), (3, 1), (8, 1), (9, 2), (16, 2), (17, 3)])
def test_replicas_fill_whole_nodes(replicas: int, nodes: int) -> None:
    cost = _b200(min_replicas=replicas, max_replicas=max(replicas, 9)).cost
    assert cost.at_min_replicas.nodes == nodes
    assert cost.floor_hourly_usd == pytest.approx(nodes * B200_NODE)
    assert cost.at_max_replicas.nodes == math.ceil(max(replicas, 9) / 8)


def test_min_replicas_three_and_nine_on_eight_per_node() -> None:
    three = _b200(min_replicas=3, max_replicas=9).cost
    nine = _b200(min_replicas=9, max_replicas=9).cost
    assert (three.at_min_replicas.nodes, three.floor_hourly_usd) == (1, pytest.approx(B200_NODE))
    assert (nine.at_min_replicas.nodes, nine.floor_hourly_usd) == (2, pytest.approx(2 * B200_NODE))
    assert three.at_max_replicas.hourly_usd == pytest.approx(2 * B200_NODE)


def test_scale_to_zero_floor_is_one_serving_replica() -> None:
    deployment = _b200(min_replicas=0, max_replicas=2)
    cost = deployment.cost
    assert (cost.at_min_replicas.nodes, cost.at_min_replicas.hourly_usd) == (0, 0)
    assert (cost.serving_floor.replicas, cost.serving_floor.nodes) == (1, 1)
    assert cost.floor_hourly_usd == pytest.approx(B200_NODE)
    (warning,) = _cost_warnings(deployment)
    assert "$0/h at min_replicas 0, $113.93/h while serving" in warning.message


def test_a_larger_fallback_instance_type_is_warned_with_its_price() -> None:
    deployment = deploy()  # h100x1-fp8 in EUROPE: p5.4xlarge, and the NodePool also allows p5.48xlarge
    assert deployment.placement.instance_types == ("p5.4xlarge", "p5.48xlarge")
    assert [n.instance_type for n in deployment.cost.fallback_nodes] == ["p5.48xlarge"]
    (warning,) = _cost_warnings(deployment)
    assert "may also launch p5.48xlarge (8 GPUs, $55.04/h) when p5.4xlarge ($6.88/h) has no capacity" in (
        warning.message
    )
    assert deployment.cost.floor_hourly_usd == pytest.approx(6.88)


def test_a_gke_pool_has_one_machine_type_so_no_fallback() -> None:
    deployment = deploy(cloud="gcp", region="EUROPE", shape="l4x1-fp8")
    assert len(deployment.placement.instance_types) > 1  # the region offers larger L4 machines too...
    assert deployment.cost.fallback_nodes == ()  # ...but the node pool launches only g2-standard-8
    placement = deployment.plan_document()["placement"]
    assert placement["node_pool_types"] == ["g2-standard-8"]
    assert placement["instance_types"][0] == "g2-standard-8" and len(placement["instance_types"]) > 1
    assert not _cost_warnings(deployment)


def test_an_own_price_applies_per_gpu_to_the_whole_node() -> None:
    shape = parse_shape("h200x2-fp8")
    model = CATALOG.models["llama-3.1-70b-instruct"]
    throughput = planner.estimate_throughput(model, shape, planner.plan_memory(model, shape, 0.9, 8192))
    node = CATALOG.instances["aws"]["p5en.48xlarge"]
    cost = planner.estimate_cost(
        shape, throughput, node, min_replicas=5, max_replicas=5, price_source="own", price_per_gpu_hour=2.0
    )
    assert cost.node.hourly_usd == pytest.approx(16.0) and cost.node.replicas_per_node == 4
    assert cost.replica_hourly_usd == pytest.approx(4.0)
    assert cost.floor_hourly_usd == pytest.approx(32.0)  # 5 replicas: 2 nodes
    assert cost.cost_per_million_output_tokens_at_floor == pytest.approx(
        32.0 / (5 * throughput.output_tokens_per_s * 3600) * 1e6
    )


def test_spot_capacity_says_its_costs_are_on_demand_upper_bounds() -> None:
    spot = deploy(region="US", shape="h100x1-fp8", capacity="spot")
    assert spot.cost.price_source.endswith(": an upper bound, capacity is spot")
    warned = [w for w in spot.warnings if w.field == "capacity"]
    assert len(warned) == 1 and "on-demand list prices, an upper bound" in warned[0].message
    on_demand = deploy(region="US", shape="h100x1-fp8")
    assert not [w for w in on_demand.warnings if w.field == "capacity"]
    assert on_demand.cost.floor_hourly_usd == spot.cost.floor_hourly_usd
