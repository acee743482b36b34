"""autoscaling.max_replicas against what the network range can hold: refused at validate (exit 2) when the nodes
of max_replicas (plus the model build Job, and the system nodes) would run out of addresses, or past GKE's node
limit, naming the limit and the fix.

The expected counts are worked out here by hand from the published figures, not from byoc's own helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from byoc.clouds import get_cloud
from tests.conftest import deploy, refused, run_byoc

SMALL = {"cidr": "10.42.0.0/20"}

# AWS, 10.42.0.0/20: three private /22 subnets (1,024 addresses each), each giving up 5 (AWS) + 6 (EKS) + 6 (API
# endpoints) + 1 (the gateway's load balancer). A node's pods take addresses from its own zone's subnet, so each
# subnet is counted alone: the 4 system m7i.xlarge nodes (4 interfaces x 15 addresses) spread 2 + 1 + 1 over the zones.
AWS_FREE = 1024 - 18
AWS_SYSTEM = 4 * 15
# h100x1-fp8 may land on p5.4xlarge (4 interfaces x 30 addresses, 1 GPU) or p5.48xlarge (2 x 50, 8 GPUs): the
# smaller node holds fewer replicas per address. One GPU slot is the model build Job's.
AWS_H100X1 = sum((AWS_FREE - n * AWS_SYSTEM) // (4 * 30) for n in (2, 1, 1)) * 1 - 1
# GCP, 10.42.0.0/20: the pods range is its second half, a /21 (2,048 addresses); 3 zones x 2 system nodes take a /25
# (64 pods) each, and every GPU node a /26 (32 pods).
GCP_H100X1 = (2048 - 6 * 128) // 64 - 1


def test_the_counts_worked_by_hand() -> None:
    # 7 + 7 + 7 p5.4xlarge nodes (886 // 120, 946 // 120 twice), not 23 from the three subnets' sum
    assert (AWS_FREE, AWS_H100X1, GCP_H100X1) == (1006, 20, 19)


def test_aws_small_range_holds_up_to_its_limit_and_refuses_one_more() -> None:
    assert deploy(network=SMALL, autoscaling={"max_replicas": AWS_H100X1}).autoscaling.max_replicas == AWS_H100X1
    error = refused(network=SMALL, autoscaling={"max_replicas": AWS_H100X1 + 1})
    assert error.field == "autoscaling.max_replicas"
    assert "network.cidr 10.42.0.0/20" in error.message
    assert "10.42.0.0/22, 10.42.4.0/22, 10.42.8.0/22" in error.message
    assert "p5.4xlarge node 120 from its zone's subnet" in error.message  # the VPC CNI: pods take VPC addresses
    assert "7 + 7 + 7 GPU nodes" in error.message and "GPUs in one zone only: 6 replicas" in error.message
    assert f"at most {AWS_H100X1} replica(s) fit" in error.message
    assert error.hint.startswith(f"set autoscaling.max_replicas to {AWS_H100X1} or fewer")
    assert "a /19 such as 10.42.0.0/19" in error.hint  # the smallest larger range that fits


def test_aws_eight_gpu_nodes_count_their_own_interfaces() -> None:
    # h100x8 on p5.48xlarge: 2 interfaces x 50 addresses a node, one replica a node
    fits = sum((AWS_FREE - n * AWS_SYSTEM) // (2 * 50) for n in (2, 1, 1)) - 1  # 8 + 9 + 9 nodes
    assert deploy(shape="h100x8-fp8", network=SMALL, autoscaling={"max_replicas": fits}).autoscaling.max_replicas == 25
    error = refused(shape="h100x8-fp8", network=SMALL, autoscaling={"max_replicas": fits + 1})
    assert error.field == "autoscaling.max_replicas" and "p5.48xlarge node 100" in error.message


def test_aws_default_range_holds_hundreds() -> None:
    assert deploy(autoscaling={"max_replicas": 400}).autoscaling.max_replicas == 400


def test_gcp_small_range_runs_out_of_pod_blocks() -> None:
    assert (
        deploy(cloud="gcp", network=SMALL, autoscaling={"max_replicas": GCP_H100X1}).autoscaling.max_replicas
        == GCP_H100X1
    )
    error = refused(cloud="gcp", network=SMALL, autoscaling={"max_replicas": GCP_H100X1 + 1})
    assert error.field == "autoscaling.max_replicas"
    assert "the pods range 10.42.8.0/21 (2,048 addresses)" in error.message
    assert "each GPU node 64 (32 pods a node" in error.message
    assert f"at most {GCP_H100X1} replica(s) fit" in error.message
    assert f"set autoscaling.max_replicas to {GCP_H100X1} or fewer" in error.hint
    assert "a /19 such as 10.42.0.0/19" in error.hint


def test_gcp_cluster_node_limit() -> None:
    """GKE Standard's 15,000 nodes a cluster bind before any range byoc allows would: shown on a wide range."""
    gke = deploy(cloud="gcp")
    room = get_cloud("gcp").address_room("10.0.0.0/8", gke.shape, gke.placement, (gke.placement.instance_type,))
    assert room is not None
    assert room.replicas == 15_000 - 6 - 1
    assert "at most 15,000 nodes" in room.limit


def test_even_a_slash_16_too_small_says_so() -> None:
    error = refused(cloud="gcp", autoscaling={"max_replicas": 10_000})
    assert error.field == "autoscaling.max_replicas"
    assert "even a /16" in error.hint


@pytest.mark.parametrize(("cloud", "fits"), [("aws", AWS_H100X1), ("gcp", GCP_H100X1)])
def test_validate_exits_2_naming_the_field(tmp_path: Path, cloud: str, fits: int) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        f"name: demo\ncloud: {cloud}\nregion: EUROPE\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n"
        f"autoscaling: {{min_replicas: 0, max_replicas: {fits + 1}}}\nnetwork: {{cidr: 10.42.0.0/20}}\n"
    )
    result = run_byoc("validate", "-f", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: autoscaling.max_replicas: {fits + 1} replicas do not fit")
    assert "Traceback" not in result.stderr
    assert f"set autoscaling.max_replicas to {fits} or fewer" in result.stderr
