"""Node allocatable by the clouds' published formulas, and a shape whose pods fit no machine refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from byoc.catalogs import load_catalog
from byoc.clouds import get_cloud
from byoc.resolve import resolve
from byoc.spec import build_spec
from tests.conftest import run_byoc, spec_data


@pytest.mark.parametrize(
    ("instance_type", "cpu_m", "memory_mib"),
    [
        # Karpenter's instance-type reference (karpenter.sh/docs/reference/instance-types), the allocatable it
        # schedules against on AL2023 with its defaults: kube-reserved + 100Mi eviction on EC2's memory less 7.5%.
        # g6.xlarge: 4 vCPU -> 60+10+5+5 = 80m reserved -> 3920m; 16384 MiB - ceil(1228.8) = 15155, max pods
        # 4 ENIs x (15-1) + 2 = 58 -> 11x58+255 = 893 MiB reserved, 15155 - 893 - 100 = 14162 MiB.
        ("g6.xlarge", 3920, 14162),
        ("g6e.xlarge", 3920, 29317),  # 32768 - 2458 = 30310; - 893 - 100
        # p5.4xlarge: 16 vCPU -> 60+10+10+12x2.5 = 110m; 262144 - 19661 = 242483; 4x29+2 = 118 pods -> 1553 MiB
        ("p5.4xlarge", 15890, 240830),
        # p5.48xlarge: 192 vCPU -> 80 + 188x2.5 = 550m; 2097152 - 157287 = 1939865; 2x49+2 = 100 pods -> 1355 MiB
        ("p5.48xlarge", 191450, 1938410),
    ],
)
def test_eks_allocatable_matches_karpenters_reference(instance_type: str, cpu_m: int, memory_mib: int) -> None:
    cloud = get_cloud("aws")
    allocatable = cloud.node_allocatable(cloud.instance_types[instance_type]).allocatable
    assert (allocatable.cpu_m, allocatable.memory_mib) == (cpu_m, memory_mib)


@pytest.mark.parametrize(
    ("machine_type", "cpu_m", "memory_mib"),
    [
        # g2-standard-8, 8 vCPU / 32 GiB (32768 MiB). CPU ("Plan GKE node sizes"): 60+10+10+4x2.5 = 90m -> 7910m.
        # Memory: the COS kernel keeps 32768/64 + 16 + 64 + 0.175% x 32768 (57.344) = 649.344 -> 650 MiB (cluster
        # autoscaler gce/reserved.go); GKE reserves 25% of 4096 + 20% of 4096 + 10% of 8192 + 6% of 16384
        # = 1024+819.2+819.2+983.04 = 3645.44 -> 3646 MiB; eviction 100 MiB: 32768 - 650 - 3646 - 100 = 28372 MiB.
        ("g2-standard-8", 7910, 28372),
        # a2-ultragpu-1g, 12 vCPU / 170 GiB (174080 MiB): CPU 80 + 8x2.5 = 100m. Kernel 2720 + 16 + 64 + 248 (the
        # cap) = 3048 MiB; GKE 1024+819.2+819.2 + 6% of 114688 (6881.28) + 2% of 43008 (860.16) = 10403.84 -> 10404;
        # 174080 - 3048 - 10404 - 100 = 160528 MiB.
        ("a2-ultragpu-1g", 11900, 160528),
    ],
)
def test_gke_allocatable_follows_the_published_formula(machine_type: str, cpu_m: int, memory_mib: int) -> None:
    cloud = get_cloud("gcp")
    allocatable = cloud.node_allocatable(cloud.instance_types[machine_type]).allocatable
    assert (allocatable.cpu_m, allocatable.memory_mib) == (cpu_m, memory_mib)


def big_model(tmp_path: Path) -> dict[str, str]:
    """A ~255B dense Llama: its FP4 weights fit one B200, but the BF16 source the build quantizes does not, and
    the ~320 GiB that spills over to host memory is more than one of eight replicas' share of a p6-b200.48xlarge."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 80,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return {"id": "big-255b", "source": "s3://models/big-255b/", "config": (tmp_path / "config.json").as_uri()}


def test_a_shape_whose_pods_fit_no_machine_is_refused(tmp_path: Path) -> None:
    spec = spec_data(region="US", shape="b200x1-fp4", model=big_model(tmp_path), max_context=8192)
    path = tmp_path / "byoc.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_byoc("validate", "-f", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "b200x1-fp4's pods fit no AWS machine its GPU pool may launch" in result.stderr
    assert "p6-b200.48xlarge" in result.stderr and "try " in result.stderr
    # the shape it names as fitting does fit
    suggested = result.stderr.split("try ", 1)[1].split(",", 1)[0]
    fitting = resolve(build_spec({**spec, "shape": suggested}))
    assert fitting.pods.needs.build.fits_in(fitting.pods.slot)


def test_estimate_prices_the_node_the_pods_fit(tmp_path: Path) -> None:
    cloud = get_cloud("gcp")
    for shape, machine in (("l4x1-fp8", "g2-standard-8"), ("l4x2-fp8", "g2-standard-24")):
        result = run_byoc(
            "estimate", "--cloud", "gcp", "--model", "qwen2.5-7b-instruct", "--shape", shape, "--output", "json"
        )
        assert result.returncode == 0, result.stderr
        row = json.loads(result.stdout)
        row = row[0] if isinstance(row, list) else row
        assert row["instance_type"] == machine
        assert row["cost"]["node"]["hourly_usd"] == cloud.instance_types[machine].hourly_usd


def test_estimate_shapes_and_plan_name_the_same_machine_for_every_shape() -> None:
    """What `estimate` and `shapes` quote is the machine `byoc plan` launches with region GLOBAL (an H200 shape was
    quoted on p5e.48xlarge, sold mainly as Capacity Blocks, while the plan's NodePool held only p5en.48xlarge)."""
    from byoc import sizing
    from byoc.resolve import catalog_shapes, resolve_model
    from byoc.tables import estimate_row, shape_rows

    model = resolve_model("llama-3.1-8b-instruct")[0]
    rows = shape_rows(["aws", "gcp"], model.id, None, 1000, 200)
    assert len(rows) > 40
    for row in rows:
        cloud = get_cloud(row["cloud"])
        shape = next(s for s in catalog_shapes(row["cloud"]) if s.name == row["shape"])
        planned = cloud.place("GLOBAL", shape, sizing.pod_needs(shape, model)).instance_type
        assert row["instance_type"] == planned, row
        estimated = estimate_row(row["cloud"], model.id, row["shape"], 1000, 200, 0.9, None, None)
        assert estimated["instance_type"] == planned, row
    h200 = [r for r in rows if r["cloud"] == "aws" and r["shape"].startswith("h200")]
    assert h200 and {r["instance_type"] for r in h200} == {"p5en.48xlarge"}


def test_shapes_refuses_a_context_longer_than_the_models_like_estimate() -> None:
    result = run_byoc("shapes", "--model", "llama-3.1-8b-instruct", "--max-context", "10000000", "-o", "json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "131072" in json.loads(result.stdout)["error"]["message"]


def test_ephemeral_storage_allocatable_by_hand() -> None:
    """The root disk's ephemeral-storage allocatable, each cloud's formula worked by hand."""
    from byoc.sizing import eks_ephemeral_allocatable_gib, gke_ephemeral_allocatable_gib

    # EKS (Karpenter types.go): 300 GiB - kube-reserved 1 GiB - eviction ceil(10%) 30 GiB
    assert eks_ephemeral_allocatable_gib(300) == 269.0
    # GKE, 200 GiB boot disk on COS: OS partitions (autoscaler reserved.go) 1.5635% x 200 = 3.127 GiB + 4.148 GiB
    # + min(100 MiB, 0.2 GiB) = 7.3727 GiB -> capacity 192.6273 GiB; system min(96.31, 6 + 67.42, 100) = 73.42 GiB;
    # eviction 10% = 19.26 GiB -> 99.95 GiB
    assert abs(gke_ephemeral_allocatable_gib(200) - 99.946) < 0.01
    # above about 270 GiB the system reservation stops at 100 GiB
    assert abs(gke_ephemeral_allocatable_gib(1000) - (1000 - 1000 * 0.015635 - 4.148 - 100 / 1024) * 0.9 + 100) < 0.01


def test_a_replica_may_write_its_artifact_without_eviction() -> None:
    """The 20 GiB every GPU pod asked before could not hold a 70B artifact: the kubelet evicts a pod whose emptyDirs
    pass its limit. Now the request is what the pod writes, and the disk holds the fullest node's pods."""
    from byoc.sizing import NODE_FILES_GIB, build_ephemeral_gib, disk_plan, serving_ephemeral_gib

    model = load_catalog().models["llama-3.3-70b-instruct"]
    assert serving_ephemeral_gib(model, "fp8") > 66  # about 66 GiB of FP8 weights, plus scratch
    assert build_ephemeral_gib(model, "fp8") > 131 + 66  # the BF16 checkpoint and the FP8 artifact side by side
    plan = disk_plan(model, "fp8", slots=8, formula="eks")
    assert plan.allocatable_gib >= 7 * plan.serving_gib + plan.build_gib + NODE_FILES_GIB
    assert plan.node_disk_gib % 50 == 0
