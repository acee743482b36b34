"""The evidence pack of a multi-region plan (region EUROPE: eu-west-2 and eu-north-1, one foundation stack each) is
judged region by region: every control holds in each region on that region's own resources (one trail for one
artifact bucket per region), each finding names its stack and region, and residency covers the placement (every
region inside the residency set) and every regional resource (in one of the deployment's regions)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from byoc.engines.offline import render
from compliance.evaluate import evaluate, graph_from_plan
from compliance.model import Finding, Status
from tests.conftest import deploy

REGIONS = ["eu-west-2", "eu-north-1"]
STACKS = {"eu-west-2": "test-euw2", "eu-north-1": "test-eun1"}


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    deployment = deploy(region="EUROPE", placement={"min_regions": 2})
    assert deployment.region_names == REGIONS
    graph = render(deployment)
    assert graph is not None
    return deployment.plan_document() | {"resources": [r.as_dict() for r in graph.resources]}


def judged(plan: dict[str, Any]) -> list[Finding]:
    return evaluate(graph_from_plan(plan))


def test_every_control_holds_in_every_region_on_its_own_resources(plan: dict[str, Any]) -> None:
    findings = judged(plan)
    failing = [(f.check.id, f.resource.name, f.reason) for f in findings if f.status is Status.FAIL]
    assert failing == []
    # the trail of each region records object access to that region's artifact bucket, not another region's
    trails = [f for f in findings if f.check.id == "cloudtrail_s3_dataevents_enabled"]
    assert sorted((f.resource.region, f.status) for f in trails) == [
        ("eu-north-1", Status.PASS),
        ("eu-west-2", Status.PASS),
    ]
    for finding in trails:
        objects = finding.evidence[0].value["artifact_objects"]
        assert objects.startswith(f"arn:aws:s3:::byoc-{STACKS[str(finding.resource.region)]}-artifacts-")
    # every finding says which stack and region it is about (the global layer's, where the cloud has one, only its
    # stack: it spans the regions), and each region answers each check
    regional = [f for f in findings if f.resource.stack != plan["placement"]["global_stack"]]
    assert {(f.as_dict()["stack"], f.as_dict()["region"]) for f in regional} == {
        (stack, region) for region, stack in STACKS.items()
    }
    assert {f.as_dict()["stack"] for f in findings} <= {*STACKS.values(), plan["placement"]["global_stack"]}
    per_region = Counter((f.check.id, f.resource.region) for f in regional)
    for check_id in {f.check.id for f in regional}:
        assert per_region[check_id, "eu-west-2"] and per_region[check_id, "eu-north-1"], check_id


def test_residency_covers_the_placement_and_every_regional_resource(plan: dict[str, Any]) -> None:
    residency = [f for f in judged(plan) if f.check.id == "data_residency_region"]
    providers = [
        f
        for f in residency
        if f.resource.type == "pulumi:providers:aws" and f.resource.stack != plan["placement"]["global_stack"]
    ]
    assert sorted(str(f.resource.region) for f in providers) == sorted(REGIONS)
    for finding in residency:
        assert finding.status is Status.PASS
        assert finding.evidence[0].value["deployment_regions"] == REGIONS

    # a resource of region 2 placed in a third EU region: inside EUROPE, but not one of the deployment's regions
    moved = copy.deepcopy(plan)
    bucket = next(
        r
        for r in moved["resources"]
        if r["type"] == "aws:s3/bucket:Bucket" and r["stack"] == "test-eun1" and "artifacts" in r["name"]
    )
    bucket["inputs"]["region"] = "eu-central-1"
    failed = [f for f in judged(moved) if f.check.id == "data_residency_region" and f.status is Status.FAIL]
    assert [(f.resource.name, f.resource.stack) for f in failed] == [(bucket["name"], "test-eun1")]
    assert failed[0].reason == "eu-central-1 is not one of the deployment's regions (eu-west-2, eu-north-1)"

    # a plan whose second region lies outside the residency set fails on every stack's provider
    outside = copy.deepcopy(plan)
    outside["placement"]["regions"][1]["region"] = "us-east-1"
    failed = [f for f in judged(outside) if f.check.id == "data_residency_region" and f.status is Status.FAIL]
    assert {f.resource.type for f in failed} >= {"pulumi:providers:aws"}
    assert any("the plan places the deployment in us-east-1, outside EUROPE" in f.reason for f in failed)


def test_a_one_region_plan_is_judged_as_before(plan: dict[str, Any]) -> None:
    deployment = deploy(region="eu-west-2")
    graph = render(deployment)
    assert graph is not None
    one = deployment.plan_document() | {"resources": [r.as_dict() for r in graph.resources]}
    findings = judged(one)
    assert [f for f in findings if f.status is Status.FAIL] == []
    assert {f.resource.stack for f in findings} == {None} and "stack" not in findings[0].as_dict()


def test_the_model_replication_is_evidenced_and_judged_by_its_destination(plan: dict[str, Any]) -> None:
    """The primary copies the model into the other region's bucket: the evidence pack says so (not "declined by
    design"), and a copy whose replica key lies outside the deployment's regions fails."""
    replication = [f for f in judged(plan) if f.check.id == "s3_bucket_cross_region_replication"]
    primary = [f for f in replication if f.resource.name == "test-euw2-artifacts"]
    assert [f.status for f in primary] == [Status.PASS] and "replicates to eu-north-1" in primary[0].reason
    assert {f.status for f in replication if f not in primary} == {Status.EXCEPTION}  # logs and trails stay put
    moved = copy.deepcopy(plan)
    for resource in moved["resources"]:
        if resource["type"] == "aws:s3/bucketReplicationConfig:BucketReplicationConfig":
            for rule in resource["inputs"]["rules"]:
                key = rule["destination"]["encryptionConfiguration"]
                key["replicaKmsKeyId"] = key["replicaKmsKeyId"].replace(":eu-north-1:", ":us-east-1:")
    failed = [
        f for f in judged(moved) if f.check.id == "s3_bucket_cross_region_replication" and f.status is Status.FAIL
    ]
    assert [f.resource.name for f in failed] == ["test-euw2-artifacts"] and "us-east-1" in failed[0].reason
