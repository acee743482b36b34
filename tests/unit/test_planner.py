"""Planner numbers against hand computations and against NVIDIA's published TensorRT-LLM throughput."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from byoc import planner
from byoc.catalogs import load_catalog
from byoc.rules import parse_shape

CATALOG = load_catalog()
LLAMA_8B = CATALOG.models["llama-3.1-8b-instruct"]
LLAMA_70B = CATALOG.models["llama-3.1-70b-instruct"]
KIB = 1024


@pytest.mark.parametrize(
    ("model_id", "kib"),
    [
        ("llama-3.1-8b-instruct", 128),
        ("llama-3.1-70b-instruct", 320),
        ("llama-3.3-70b-instruct", 320),
        ("qwen2.5-7b-instruct", 56),
    ],
)
def test_kv_bytes_per_token_in_bf16(model_id: str, kib: int) -> None:
    # 2 x layers x kv_heads x head_dim x 2 bytes (FACTS.md)
    assert CATALOG.models[model_id].kv_bytes_per_token(2) == kib * KIB


def test_fp8_shapes_halve_the_kv_cache() -> None:
    memory = planner.plan_memory(LLAMA_8B, parse_shape("h100x1-fp8"), 0.9, 8192)
    assert memory.kv_cache_dtype == "fp8"
    assert memory.kv_bytes_per_token == 64 * KIB


def test_weights_by_hand() -> None:
    params, embeddings = LLAMA_8B.params, 2 * 128256 * 4096
    assert planner.weight_bytes(LLAMA_8B, "bf16") == 2 * params
    assert planner.weight_bytes(LLAMA_8B, "fp8") == (params - embeddings) + 2 * embeddings
    assert planner.weight_bytes(LLAMA_8B, "fp4") == int((params - embeddings) * 0.5625 + 2 * embeddings)


def test_memory_plan_by_hand() -> None:
    shape = parse_shape("h100x1-fp8")
    memory = planner.plan_memory(LLAMA_8B, shape, 0.9, 131072)
    free = 80 * 1024**3 - planner.weight_bytes(LLAMA_8B, "fp8") - planner.RUNTIME_RESERVE_BYTES_PER_GPU
    assert memory.kv_cache_bytes == int(free * 0.9)
    assert memory.kv_capacity_tokens == int(free * 0.9) // (64 * KIB)
    assert memory.concurrent_sequences == memory.kv_capacity_tokens // 131072
    assert memory.fits


def test_tensor_parallel_pools_memory() -> None:
    one = planner.plan_memory(LLAMA_70B, parse_shape("h100x1-fp8"), 0.9, 131072)
    two = planner.plan_memory(LLAMA_70B, parse_shape("h100x2-fp8"), 0.9, 131072)
    assert not one.fits and two.fits
    assert one.shortfall_bytes > 0 and two.shortfall_bytes == 0


def _published() -> list[tuple[str, str, int, int, float, float]]:
    path = Path(planner.__file__).parent / "catalogs" / "benchmarks.yaml"
    data = yaml.safe_load(path.read_text())
    rows = []
    for entry in data["points"]:
        for lengths, value in entry["output_tokens_per_s"].items():
            isl, osl = (int(x) for x in lengths.split("/"))
            rows.append((entry["model"], entry["shape"], isl, osl, float(value), data["kv_cache_fraction"]))
    return rows


def _ratio(model_id: str, shape_text: str, isl: int, osl: int, published: float, fraction: float) -> float:
    model, shape = CATALOG.models[model_id], parse_shape(shape_text)
    memory = planner.plan_memory(model, shape, fraction, isl + osl)
    return planner.estimate_throughput(model, shape, memory, isl, osl).output_tokens_per_s / published


def test_throughput_tracks_published_tensorrt_llm_numbers() -> None:
    ratios = [_ratio(*row) for row in _published()]
    assert len(ratios) == 50
    mean_abs_log_error = sum(abs(math.log(r)) for r in ratios) / len(ratios)
    assert mean_abs_log_error < 0.12  # about 10% typical error
    assert all(0.65 < r < 1.35 for r in ratios), sorted(ratios)


def test_throughput_behaves() -> None:
    def tps(model_id: str, shape: str, isl: int = 1000, osl: int = 1000) -> float:
        return _ratio(model_id, shape, isl, osl, 1.0, 0.9)

    assert tps("llama-3.1-70b-instruct", "h100x4-fp8") > tps("llama-3.1-70b-instruct", "h100x2-fp8")
    assert tps("llama-3.1-70b-instruct", "h100x4-fp8") > tps("llama-3.1-70b-instruct", "h100x4-bf16")
    assert tps("llama-3.1-8b-instruct", "h200x1-fp8") > tps("llama-3.1-8b-instruct", "h100x1-fp8")
    assert tps("llama-3.1-8b-instruct", "h100x1-fp8", isl=4000) < tps("llama-3.1-8b-instruct", "h100x1-fp8")
    # a MoE model reads its active experts, so it decodes faster than a dense model of the same total size
    assert tps("mixtral-8x7b-instruct", "h100x1-fp8") > tps("llama-3.1-70b-instruct", "h100x1-fp8", 1000, 1000)


def test_cost_per_million_tokens_by_hand() -> None:
    shape = parse_shape("h100x2-fp8")
    memory = planner.plan_memory(LLAMA_70B, shape, 0.9, 8192)
    throughput = planner.estimate_throughput(LLAMA_70B, shape, memory)
    p5 = CATALOG.instances["aws"]["p5.48xlarge"]
    cost = planner.estimate_cost(
        shape, throughput, p5, min_replicas=1, max_replicas=1, price_source="test", price_per_gpu_hour=6.88
    )
    assert cost.replica_hourly_usd == pytest.approx(13.76)
    assert cost.cost_per_million_output_tokens == pytest.approx(13.76 / (throughput.output_tokens_per_s * 3600) * 1e6)


def test_one_b200_replica_is_billed_a_whole_node() -> None:
    """b200x1 on p6-b200.48xlarge: 8 replicas per node; one replica costs the node, not 1/8 of it."""
    model, shape = CATALOG.models["llama-3.3-70b-instruct"], parse_shape("b200x1-fp4")
    memory = planner.plan_memory(model, shape, 0.9, 131072)
    throughput = planner.estimate_throughput(model, shape, memory)
    node = CATALOG.instances["aws"]["p6-b200.48xlarge"]
    cost = planner.estimate_cost(shape, throughput, node, min_replicas=1, max_replicas=2, price_source="list")
    assert cost.node.replicas_per_node == 8
    assert cost.replica_hourly_usd == pytest.approx(113.93 / 8)
    assert cost.floor_hourly_usd == pytest.approx(113.93)
    assert (cost.at_min_replicas.nodes, cost.at_max_replicas.nodes) == (1, 1)
    # $ per 1M at the floor: the whole node for one saturated replica, 8x the full-node figure
    assert cost.cost_per_million_output_tokens_at_floor == pytest.approx(8 * cost.cost_per_million_output_tokens)
    (warning,) = planner.cost_warnings(shape, cost, model.id)
    assert warning.field == "shape" and "$113.93/h" in warning.message and "$14.24/h" in warning.message
