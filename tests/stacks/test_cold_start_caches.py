"""Cold-start caches in the plan (spec cold_start, issue 24), on both clouds, each option on and off: the image
cache, the weights on local NVMe, the warm pool, and the manifests they render checked by kubernetes-validate,
checkov and the CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from byoc.errors import ByocError
from byoc.plan import Plan, RecordedResource
from byoc.sizing import local_nvme_plan
from tests.conftest import deploy, refused, run_byoc, spec_data
from tests.stacks.plans import graph
from tests.stacks.test_crd_schemas import custom_resources, validate
from tests.stacks.test_manifests import KUBERNETES_VERSION, checkov, documents

GCP = {"cloud": "gcp", "region": "europe-west4", "model": "llama-3.1-8b-instruct", "shape": "l4x1-fp8"}
AR_IMAGE = "europe-west4-docker.pkg.dev/acme/serving/tensorrt-llm@sha256:" + "cd" * 32
DISK_IMAGE = "projects/acme-images/global/images/byoc-serving-cache"


def node_class(plan: Plan) -> dict[str, Any]:
    found = [r for r in plan.resources if r.inputs.get("kind") == "EC2NodeClass"]
    assert len(found) == 1
    spec: dict[str, Any] = found[0].inputs["spec"]
    return spec


def node_pool(plan: Plan) -> dict[str, Any]:
    found = [r for r in plan.resources if r.inputs.get("kind") == "NodePool"]
    assert len(found) == 1
    spec: dict[str, Any] = found[0].inputs["spec"]
    return spec


def gpu_pool(plan: Plan) -> dict[str, Any]:
    pools = [p for p in plan.by_type("gcp:container/nodePool:NodePool") if p.inputs["name"] == "byoc-gpu"]
    assert len(pools) == 1
    return pools[0].inputs


def named(plan: Plan, kind: str, suffix: str) -> list[RecordedResource]:
    return [r for r in plan.resources if r.type == kind and r.name.endswith(suffix)]


# -- AWS --------------------------------------------------------------------------------------------------------
def test_aws_defaults_put_ephemeral_storage_on_the_instance_store_and_pull_with_soci() -> None:
    plan = graph()
    spec = node_class(plan)
    assert spec["instanceStorePolicy"] == "RAID0"
    assert "FastImagePull: true" in spec["userData"] and "application/node.eks.aws" in spec["userData"]
    # the root volume holds only the OS now; the weights and images live on the NVMe
    assert spec["blockDeviceMappings"][0]["ebs"]["volumeSize"] == "100Gi"
    caches = deploy().plan_document()["cold_start_caches"]
    assert caches["weights"]["on"] == "local_nvme"
    assert caches["weights"]["local_nvme_gib"] == pytest.approx(3800e9 / 1024**3, abs=0.1)  # p5.4xlarge
    assert caches["image"]["mode"] == "fast_image_pull" and caches["image"]["pulled"] is True


def test_aws_without_caches_pulls_plainly_onto_a_root_disk_sized_for_the_weights() -> None:
    plan = graph(cold_start={"weights_cache": "none", "image_cache": False})
    spec = node_class(plan)
    assert "instanceStorePolicy" not in spec and "userData" not in spec
    assert int(spec["blockDeviceMappings"][0]["ebs"]["volumeSize"].removesuffix("Gi")) >= 150
    caches = deploy(cold_start={"weights_cache": "none", "image_cache": False}).plan_document()["cold_start_caches"]
    assert caches["weights"]["on"] == "root_disk" and caches["image"]["mode"] == "pulled"


def test_aws_weights_on_the_root_disk_keep_fast_image_pull_off() -> None:
    """FastImagePull is slower than a plain pull below 600 MiB/s of volume throughput (the gp3 root runs at 500)."""
    spec = node_class(graph(cold_start={"weights_cache": "none"}))
    assert "userData" not in spec
    image = deploy(cold_start={"weights_cache": "none"}).plan_document()["cold_start_caches"]["image"]
    assert image["mode"] == "pulled" and "600 MiB/s" in image["detail"]


def test_aws_refuses_a_gke_disk_image() -> None:
    with pytest.raises(ByocError) as caught:
        deploy(cold_start={"image_disk": DISK_IMAGE})
    assert caught.value.field == "cold_start.image_disk"


def test_aws_warm_pool_holds_nodes_with_low_priority_placeholders() -> None:
    plan = graph(cold_start={"warm_pool": 2}, autoscaling={"min_replicas": 0, "max_replicas": 6})
    (priority,) = plan.by_type("kubernetes:scheduling.k8s.io/v1:PriorityClass")
    assert priority.inputs["value"] < 0 and priority.inputs["preemptionPolicy"] == "Never"
    assert priority.inputs["globalDefault"] is False
    (placeholders,) = named(plan, "kubernetes:apps/v1:Deployment", "-warm-pool")
    pod = placeholders.inputs["spec"]["template"]["spec"]
    assert placeholders.inputs["spec"]["replicas"] == 2  # h100x1 on p5.4xlarge: one replica slot a node
    assert pod["priorityClassName"] == priority.inputs["metadata"]["name"]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"] == deploy().images["serving"]  # the serving image, pulled on the node
    # the NodePool may launch the placeholders' nodes beside every replica and the build Job: 6 + 1 + 2 pods, which
    # the pool's largest type (p5.48xlarge, 8 GPUs) holds on two nodes, not one
    without = node_pool(graph(autoscaling={"min_replicas": 0, "max_replicas": 6}))["limits"]["nvidia.com/gpu"]
    assert (int(without), int(node_pool(plan)["limits"]["nvidia.com/gpu"])) == (8, 16)
    warm = deploy(cold_start={"warm_pool": 2}, autoscaling={"max_replicas": 2}).plan_document()["cold_start_caches"][
        "warm_pool"
    ]
    assert warm["nodes"] == 2 and warm["hourly_usd"] == pytest.approx(2 * 6.88)  # p5.4xlarge list price
    assert warm["monthly_usd"] == pytest.approx(2 * 6.88 * 730)


def test_no_warm_pool_renders_no_placeholder() -> None:
    plan = graph()
    assert plan.by_type("kubernetes:scheduling.k8s.io/v1:PriorityClass") == []
    assert named(plan, "kubernetes:apps/v1:Deployment", "-warm-pool") == []
    assert deploy().plan_document()["cold_start_caches"]["warm_pool"]["hourly_usd"] == 0


# -- GCP --------------------------------------------------------------------------------------------------------
def test_gcp_defaults_use_local_ssd_and_say_the_image_is_pulled() -> None:
    config = gpu_pool(graph(**GCP))["nodeConfig"]
    assert config["ephemeralStorageLocalSsdConfig"] == {"localSsdCount": 1}  # g2-standard-8: one 375 GiB disk
    assert "gcfsConfig" not in config and "secondaryBootDisks" not in config  # nvcr.io cannot stream
    image = deploy(**GCP).plan_document()["cold_start_caches"]["image"]
    assert image["mode"] == "pulled" and "gke-disk-image-builder" in image["how"]


def test_gcp_streams_an_artifact_registry_image() -> None:
    config = gpu_pool(graph(**GCP, images={"serving": AR_IMAGE}))["nodeConfig"]
    assert config["gcfsConfig"] == {"enabled": True}
    assert "secondaryBootDisks" not in config
    assert deploy(**GCP, images={"serving": AR_IMAGE}).plan_document()["cold_start_caches"]["image"]["mode"] == (
        "image_streaming"
    )


def test_gcp_secondary_boot_disk_caches_the_image() -> None:
    config = gpu_pool(graph(**GCP, cold_start={"image_disk": DISK_IMAGE}))["nodeConfig"]
    assert config["secondaryBootDisks"] == [{"diskImage": DISK_IMAGE, "mode": "CONTAINER_IMAGE_CACHE"}]
    assert config["gcfsConfig"] == {"enabled": True}  # GKE requires image streaming for the cache disk
    image = deploy(**GCP, cold_start={"image_disk": DISK_IMAGE}).plan_document()["cold_start_caches"]["image"]
    assert image["pulled"] is False and image["disk_image"] == DISK_IMAGE


def test_gcp_everything_off() -> None:
    off = {"image_cache": False, "weights_cache": "none"}  # (with an image_disk too: refused, test below)
    config = gpu_pool(graph(**GCP, cold_start=off))["nodeConfig"]
    for field in ("ephemeralStorageLocalSsdConfig", "gcfsConfig", "secondaryBootDisks"):
        assert field not in config


def test_gcp_warm_pool_raises_the_pool_maximum() -> None:
    scaling = {"min_replicas": 0, "max_replicas": 3}
    base = gpu_pool(graph(**GCP, autoscaling=scaling))["autoscaling"]["totalMaxNodeCount"]
    warm = gpu_pool(graph(**GCP, autoscaling=scaling, cold_start={"warm_pool": 2}))["autoscaling"]
    assert warm["totalMaxNodeCount"] == base + 2 and warm["totalMinNodeCount"] == 0
    assert deploy(**GCP, autoscaling={"max_replicas": 2}, cold_start={"warm_pool": 2}).plan_document()[
        "cold_start_caches"
    ]["warm_pool"]["hourly_usd"] == pytest.approx(1.70)  # 2 x g2-standard-8


def test_a_disk_image_that_is_not_one_is_refused_with_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**GCP, cold_start={"image_disk": "my-image:latest"})))
    result = run_byoc("validate", "-f", str(spec))
    assert result.returncode == 2
    assert "cold_start.image_disk" in result.stderr and "Traceback" not in result.stderr


def test_a_disk_image_with_the_image_cache_off_is_refused_not_ignored(tmp_path: Path) -> None:
    """A user who names a disk image expects no pull; with image_cache false no node would attach it."""
    error = refused(**GCP, cold_start={"image_disk": "projects/my-proj-1/global/images/x", "image_cache": False})
    assert error.field == "cold_start.image_disk" and "image_cache" in error.hint
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        yaml.safe_dump(
            spec_data(**GCP, cold_start={"image_disk": "projects/my-proj-1/global/images/x", "image_cache": False})
        )
    )
    result = run_byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "cold_start.image_disk" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# -- sizing -----------------------------------------------------------------------------------------------------
def test_weights_too_large_for_the_local_nvme_stay_on_the_root_disk() -> None:
    deployment = deploy(model="llama-3.1-70b-instruct", shape="h100x8-bf16")
    assert local_nvme_plan(deployment.model, "bf16", 1, "eks", 250.0) is None  # a g6e.xlarge's 250 GB
    assert deployment.disk.ephemeral_on == "local_nvme"  # p5.48xlarge: 28 TiB of NVMe hold it


# -- rendered manifests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def warm_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warm")
    spec = folder / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data(name="warm", cold_start={"warm_pool": 1})))
    result = run_byoc("plan", "-f", str(spec), "--out", str(folder / "out"))
    assert result.returncode == 0, result.stderr
    return folder / "out"


def test_warm_pool_manifests_are_valid_kubernetes(warm_plan: Path) -> None:
    kinds = set()
    for path, document in documents(warm_plan / "manifests"):
        if "warm-pool" in path.name:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            kinds.add(document["kind"])
    assert kinds == {"Deployment", "PriorityClass"}


def test_warm_pool_manifests_pass_checkov(warm_plan: Path) -> None:
    failed = checkov(warm_plan / "manifests")["results"]["failed_checks"]
    assert failed == [], [(f["check_id"], f["resource"]) for f in failed]


def test_node_class_with_caches_on_and_off_matches_the_karpenter_schema(warm_plan: Path, tmp_path: Path) -> None:
    off = tmp_path / "byoc.yaml"
    off.write_text(yaml.safe_dump(spec_data(name="cold", cold_start={"weights_cache": "none", "image_cache": False})))
    assert run_byoc("plan", "-f", str(off), "--out", str(tmp_path / "out")).returncode == 0
    classes = [
        document
        for out in (warm_plan, tmp_path / "out")
        for _, document in custom_resources(out)
        if document["kind"] in ("EC2NodeClass", "NodePool")
    ]
    assert len(classes) == 4
    assert [r["result"] for r in validate(classes)] == ["ok"] * 4
    assert sum("instanceStorePolicy" in c["spec"] for c in classes) == 1


def test_plan_says_what_the_caches_do(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(yaml.safe_dump(spec_data(**GCP, cold_start={"image_disk": DISK_IMAGE, "warm_pool": 1})))
    result = run_byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (
        f"caches      image on a secondary boot disk ({DISK_IMAGE}); weights on local NVMe (375 GiB); "
        "1 x g2-standard-8 kept warm, $0.85/h"
    ) in result.stdout


def test_the_warm_pool_counts_against_the_network_range_and_the_preflight_quota() -> None:
    from byoc.lifecycle import capacity_need
    from tests.conftest import refused
    from tests.unit.test_address_room import GCP_H100X1, SMALL

    # the small range holds GCP_H100X1 replicas: with two placeholders, two fewer replicas fit
    scaling = {"max_replicas": GCP_H100X1 - 1}
    error = refused(cloud="gcp", network=SMALL, autoscaling=scaling, cold_start={"warm_pool": 2})
    assert error.field == "autoscaling.max_replicas"
    assert f"{GCP_H100X1 + 1} replicas (max_replicas + 2 warm-pool placeholders) do not fit" in error.message
    assert f"set autoscaling.max_replicas to {GCP_H100X1 - 2} or fewer" in error.hint
    need = capacity_need(deploy(cold_start={"warm_pool": 2}, autoscaling={"min_replicas": 0, "max_replicas": 4}))
    assert need.instances == 4 + 1 + 2  # p5.4xlarge: one replica an instance
    assert "2 warm-pool placeholder(s)" in need.why


def test_a_disk_image_that_is_not_one_names_the_field_and_the_form() -> None:
    """The field report: `image_disk: my-disk` was answered with the raw regular expression."""
    from byoc.errors import ByocError

    with pytest.raises(ByocError) as caught:
        deploy(**GCP, cold_start={"image_disk": "my-disk"})
    assert caught.value.field == "cold_start.image_disk"
    assert "projects/PROJECT/global/images/NAME" in caught.value.message and "^(" not in caught.value.message


BUDGET = {"gpu_hours": 100, "period": "week", "cap_replicas": 0}


def test_a_spent_budget_stops_the_warm_pool(tmp_path: Path) -> None:
    """The placeholders hold GPUs: once the GPU-hour budget that caps replicas is spent, KEDA scales them to zero.
    The scaler's query is evaluated by the real promtool: the pool's size while unspent (or not yet counted), 0 once
    spent."""
    import shutil
    import subprocess

    from stacks.k8s.warm_pool import budget_query

    scaling = {"min_replicas": 0, "max_replicas": 4}
    plan = graph(cold_start={"warm_pool": 2}, budget=BUDGET, autoscaling=scaling)
    (scaler,) = [
        r for r in plan.by_type("kubernetes:keda.sh/v1alpha1:ScaledObject") if r.name.endswith("warm-pool-scaler")
    ]
    spec = scaler.inputs["spec"]
    (placeholders,) = named(plan, "kubernetes:apps/v1:Deployment", "-warm-pool")
    assert spec["scaleTargetRef"]["name"] == placeholders.inputs["metadata"]["name"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 2)
    (trigger,) = spec["triggers"]
    namespace = deploy().namespace
    assert trigger["metadata"]["query"] == budget_query(namespace, 2)
    # no budget cap, no scaler: an alert-only budget never stops the pool
    alerts_only = graph(cold_start={"warm_pool": 2}, budget={"gpu_hours": 100, "period": "week"}, autoscaling=scaling)
    assert not [r for r in alerts_only.by_type("kubernetes:keda.sh/v1alpha1:ScaledObject") if "warm" in r.name]

    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/test.sh"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "warm", "rules": [{"record": "warm_wanted", "expr": budget_query(namespace, 2)}]}]}
        )
    )
    fraction = "byoc:budget_gpu_hours:fraction"
    cases = {"0.5": 2, "0.99": 2, "1": 0, "1.7": 0}
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": f'{fraction}{{namespace="{namespace}"}}', "values": f"{value}x5"}],
            "promql_expr_test": [
                {"expr": "warm_wanted", "eval_time": "2m", "exp_samples": [{"labels": "warm_wanted", "value": wanted}]}
            ],
        }
        for value, wanted in cases.items()
    ]
    # before the budget rules have counted anything: the whole pool
    tests.append(
        {
            "interval": "1m",
            "input_series": [{"series": 'up{job="x"}', "values": "1x5"}],
            "promql_expr_test": [
                {"expr": "warm_wanted", "eval_time": "2m", "exp_samples": [{"labels": "warm_wanted", "value": 2}]}
            ],
        }
    )
    unit = tmp_path / "test.yaml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("shape", ["l4x1-fp8", "l40sx1-fp8", "l40sx1-bf16"])
def test_each_type_of_the_aws_pool_holds_its_own_pods_on_its_own_nvme(shape: str) -> None:
    """The tester's report: on AWS's cheapest shapes local_ssd fell back to the root disk ("the fullest node's pods
    need 233 GiB ..., more than the 233 GiB of local NVMe offers"), comparing the pool's smallest NVMe (a 1-slot
    xlarge) with the 8-slot 48xlarge's pods, and so turned FastImagePull off too. With instanceStorePolicy RAID0
    each node's own instance store is its ephemeral storage, so each type holds its own slots' pods."""
    from byoc.clouds import get_cloud
    from byoc.sizing import ephemeral_allocatable_gib, required_gib

    deployment = deploy(region="us-east-1", shape=shape, max_context=8192)
    pool = deployment.placement.instance_types
    assert len(pool) > 1 and deployment.disk.slots == 8  # the 48xlarge is in the pool
    aws = get_cloud("aws")
    for name in pool:  # every type's own slots fit its own NVMe
        instance = aws.instance_types[name]
        own = required_gib(
            deployment.disk.serving_gib, deployment.disk.build_gib, instance.gpus
        )  # x1 shapes: a slot per GPU
        assert own <= ephemeral_allocatable_gib("eks", aws.local_nvme_gib(instance) or 0), name
    caches = deployment.plan_document()["cold_start_caches"]
    assert deployment.disk.ephemeral_on == "local_nvme" and caches["weights"]["on"] == "local_nvme"
    assert caches["image"]["mode"] == "fast_image_pull"
    options = deployment.cold_start.options
    assert options == {"image_cache": True, "weights_cache": "local_ssd", "warm_pool": 0}  # as the spec says
    assert "local NVMe" in deployment.cold_start.phase("weights_fetch").basis


def test_a_type_whose_nvme_cannot_hold_its_own_pods_is_named_with_true_numbers() -> None:
    """Where a type really cannot hold its pods, the root disk holds them and the plan names the type, what its pods
    need and what its NVMe allocates (the need larger than the room), and the estimate says the spec's options and
    what the plan renders instead, with that reason and the root disk's rates (weights and, for node_cache, the
    Mountpoint cache)."""
    from byoc.clouds import get_cloud
    from byoc.coldstart import cold_start_catalog
    from byoc.resolve import plan_cold_start, resolve_model
    from byoc.rules import parse_shape
    from byoc.spec import build_spec

    aws, shape = get_cloud("aws"), parse_shape("l4x1-fp8", "shape")
    big = resolve_model("llama-3.1-70b-instruct")[0]  # a BF16 source of ~140 GiB: the build alone needs ~230 GiB
    pool = ("g6.xlarge", "g6.48xlarge")
    for asked in ("local_ssd", "node_cache"):
        spec = build_spec(spec_data(region="us-east-1", shape="l4x1-fp8", cold_start={"weights_cache": asked}))
        disk, caches, cold = plan_cold_start(spec, aws, shape, big, pool, 1, 0.8)
        assert disk.ephemeral_on == "root_disk" and caches.weights.on == "root_disk"
        reason = disk.why_root_disk
        assert reason.startswith("a g6.xlarge node's 1 pod(s) need "), reason
        need = int(reason.split(" need ")[1].split(" GiB")[0])
        room = int(reason.split("more than the ")[1].split(" GiB")[0])
        assert need > room and need == disk.build_gib + disk.node_copy_gib + 50  # one slot: the build Job's
        assert reason in caches.weights.detail
        assert cold.options["weights_cache"] == asked and cold.options["image_cache"] is True
        assert cold.options["plan_renders"]["weights_on"] == "root_disk"
        assert any(reason in why for why in cold.options["why"])
        root_rate = cold_start_catalog()["weights_fetch"]["write"]["root_disk"]["aws"]["rate_mib_s"]
        fetch = cold.phase("weights_fetch").basis
        assert "root disk" in fetch and f"at {root_rate:,} MiB/s" in fetch, fetch
        assert "NVMe" not in cold.phase("weights_fetch").basis
        if asked == "node_cache":  # the tester's third report: the cache follows the plan onto the root disk
            cached = cold.weights_fetch_cached
            assert cached is not None and "Mountpoint cache on its root disk" in cached.basis
            assert f"at {root_rate:,} MiB/s" in cached.basis
            assert "whose cache lies on the root disk" in caches.weights.detail
