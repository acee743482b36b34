"""Every rule both ways: a spec that breaks it is refused naming the field and a fix; one that keeps it resolves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from byoc.catalogs import load_catalog
from byoc.resolve import resolve
from byoc.spec import build_spec
from tests.conftest import deploy, refused, spec_data

_QWEN_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}

ADDON = {"id": "tone", "source": "s3://adapters/tone", "rank": 16}


# -- precision vs GPU -------------------------------------------------------------------------------------------
def test_fp8_needs_sm89() -> None:
    error = refused(shape="a100x1-fp8", region="US")
    assert error.field == "shape"
    assert "sm89" in error.message and "sm80" in error.message
    assert "a100x1-bf16" in error.hint


@pytest.mark.parametrize("shape", ["h100x1-fp8", "l4x1-fp8", "l40sx1-fp8", "h200x1-fp8", "b200x1-fp8"])
def test_fp8_on_ada_hopper_blackwell(shape: str) -> None:
    assert deploy(shape=shape, region="US", max_context=8192).shape.precision == "fp8"


@pytest.mark.parametrize("shape", ["h100x1-fp4", "l40sx1-fp4", "a100x1-fp4"])
def test_fp4_needs_blackwell(shape: str) -> None:
    error = refused(shape=shape, region="US")
    assert error.field == "shape"
    assert "Blackwell" in error.message
    assert "b200x1-fp4" in error.hint


def test_fp4_on_blackwell() -> None:
    deployment = deploy(shape="b200x1-fp4", region="US")
    assert deployment.shape.precision == "fp4"
    assert deployment.placement.instance_type == "p6-b200.48xlarge"


def test_unknown_gpu_and_precision() -> None:
    assert "h100" in refused(shape="v100x1-fp8").hint
    assert "bf16" in refused(shape="h100x1-int4").hint


# -- addons -----------------------------------------------------------------------------------------------------
def test_addons_refused_on_quantized_shape() -> None:
    error = refused(shape="h100x1-fp8", addons=[ADDON])
    assert error.field == "addons"
    assert "h100x1-fp8 cannot take LoRA addons" in error.message
    assert "h100x1-bf16" in error.hint


def test_addons_on_bf16() -> None:
    deployment = deploy(shape="h100x1-bf16", addons=[ADDON], max_context=8192)
    assert [a.id for a in deployment.addons] == ["tone"]


# -- GPU count --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "hint"), [("h100x3-fp8", "h100x4-fp8"), ("h100x16-fp8", "h100x8-fp8")])
def test_gpu_count_is_1_2_4_or_8(shape: str, hint: str) -> None:
    error = refused(shape=shape)
    assert error.field == "shape"
    assert hint in error.hint


@pytest.mark.parametrize("shape", ["h100x1-fp8", "h100x2-fp8", "h100x4-fp8", "h100x8-fp8"])
def test_counts_within_the_instance(shape: str) -> None:
    deployment = deploy(shape=shape)
    assert deployment.placement.instance_gpus >= deployment.shape.count


def test_count_above_the_clouds_largest_instance() -> None:
    # GCP's largest A3 High has 8 H100; the count rule checks against the cloud's instances, and a GPU the cloud
    # does not sell at all is refused with the GPUs it does.
    error = refused(cloud="gcp", shape="l40sx1-fp8", region="EUROPE")
    assert "L40S" in error.message
    assert "l4" in error.hint


# -- regions ----------------------------------------------------------------------------------------------------
def test_mega_region_picks_a_region_that_offers_the_gpu_and_says_which() -> None:
    deployment = deploy(region="EUROPE", shape="h100x1-fp8")
    placement = deployment.placement
    catalog = load_catalog()
    assert placement.mega_region == "EUROPE"
    assert placement.region in catalog.mega_regions["aws"]["EUROPE"]
    assert placement.instance_type in catalog.offerings["aws"][placement.region]
    assert placement.instance_type.startswith("p5")
    assert placement.region == "eu-west-2"  # eu-west-1 and eu-central-1 come first but offer no H100
    assert "eu-west-1" in placement.reason and "eu-central-1" in placement.reason


def test_b200_in_the_us_on_p6() -> None:
    deployment = deploy(region="US", shape="b200x8-fp4", model="llama-3.3-70b-instruct")
    assert deployment.placement.instance_type == "p6-b200.48xlarge"
    assert deployment.placement.region in {"us-east-1", "us-east-2", "us-west-2"}


def test_mega_region_without_the_gpu() -> None:
    error = refused(region="EUROPE", shape="b200x1-fp4")
    assert error.field == "region"
    assert "EUROPE" in error.message
    assert "us-east-1" in error.hint or "GLOBAL" in error.hint


def test_global_takes_any_region() -> None:
    assert deploy(region="GLOBAL", shape="b200x1-fp4").placement.region == "us-east-1"


def test_concrete_region_must_offer_the_gpu() -> None:
    error = refused(region="eu-west-1", shape="h100x1-fp8")
    assert error.field == "region"
    assert "eu-west-1 does not offer" in error.message
    assert "eu-west-2" in error.hint


def test_concrete_region_that_offers_it() -> None:
    deployment = deploy(region="eu-north-1", shape="h100x8-fp8")
    assert (deployment.region, deployment.placement.instance_type) == ("eu-north-1", "p5.48xlarge")


def test_region_of_the_other_cloud() -> None:
    error = refused(region="europe-west4")
    assert "gcp region" in error.message
    assert "--cloud gcp" in error.hint
    error = refused(cloud="gcp", region="eu-west-2", shape="h100x1-fp8")
    assert "aws region" in error.message


def test_misspelt_region() -> None:
    assert "eu-west-2" in refused(region="eu-wset-2").hint


def test_smaller_shape_shares_a_bigger_instance() -> None:
    deployment = deploy(region="US", shape="h200x2-fp8")
    assert deployment.placement.instance_gpus == 8
    assert deployment.placement.replicas_per_node == 4


# -- autoscaling ------------------------------------------------------------------------------------------------
def test_min_above_max() -> None:
    error = refused(autoscaling={"min_replicas": 3, "max_replicas": 2})
    assert error.field == "autoscaling.min_replicas"
    assert "max_replicas to at least 3" in error.hint


def test_min_equal_max() -> None:
    assert deploy(autoscaling={"min_replicas": 2, "max_replicas": 2}).autoscaling.max_replicas == 2


def test_scale_to_zero_needs_min_zero() -> None:
    error = refused(autoscaling={"min_replicas": 1, "max_replicas": 2, "scale_to_zero_window": "1h"})
    assert error.field == "autoscaling.scale_to_zero_window"
    assert "min_replicas: 0" in error.hint


def test_scale_to_zero_window_only_with_min_zero() -> None:
    assert deploy(autoscaling={"min_replicas": 0, "max_replicas": 2}).autoscaling.scale_to_zero_window_s == 3600
    assert deploy(autoscaling={"min_replicas": 1, "max_replicas": 2}).autoscaling.scale_to_zero_window_s is None


def test_default_load_target_comes_from_the_planner() -> None:
    target = deploy().autoscaling.load_target
    assert target.type == "concurrent_requests"
    assert 1 <= target.value <= 256


# -- kv cache fraction ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0, 1, 1.2, -0.1])
def test_kv_cache_fraction_strictly_between_0_and_1(fraction: float) -> None:
    assert refused(kv_cache_fraction=fraction).field == "kv_cache_fraction"


def test_kv_cache_fraction_changes_capacity() -> None:
    low = deploy(kv_cache_fraction=0.5).memory.kv_capacity_tokens
    high = deploy(kv_cache_fraction=0.95).memory.kv_capacity_tokens
    assert high > low * 1.8


# -- the model must fit -----------------------------------------------------------------------------------------
def test_70b_does_not_fit_one_h100_and_the_error_names_what_does() -> None:
    error = refused(model="llama-3.1-70b-instruct", shape="h100x1-fp8")
    assert error.field == "shape"
    assert "does not fit h100x1-fp8" in error.message
    assert "try l40sx4-fp8" in error.hint  # cheapest AWS node that holds 70B in FP8 at 128K context (g6e.12xlarge)
    assert "max_context <=" in error.hint


def test_70b_fits_two_h100() -> None:
    assert deploy(model="llama-3.1-70b-instruct", shape="h100x2-fp8").memory.fits


def test_shorter_context_fits_where_the_full_one_does_not() -> None:
    assert deploy(model="llama-3.1-70b-instruct", shape="h100x1-fp8", max_context=32768).memory.fits


def test_smallest_fitting_shape_respects_addons() -> None:
    error = refused(model="llama-3.1-70b-instruct", shape="h100x1-bf16", addons=[ADDON])
    suggestion = error.hint.split("try ")[1].split(",")[0]
    assert suggestion.endswith("-bf16")
    assert deploy(model="llama-3.1-70b-instruct", shape=suggestion, addons=[ADDON], region="GLOBAL").memory.fits


def test_max_context_above_the_model() -> None:
    error = refused(model="qwen2.5-7b-instruct", max_context=65536)
    assert error.field == "max_context"
    assert "32768" in error.hint


def test_unknown_model_suggests_a_catalog_id() -> None:
    error = refused(model="llama-3.1-8b-instruc")
    assert error.field == "model"
    assert "llama-3.1-8b-instruct" in error.hint


# -- keys, network, speculative ---------------------------------------------------------------------------------
def test_kms_key_must_be_in_the_placement_region() -> None:
    key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    error = refused(encryption={"kms_key": key})
    assert error.field == "encryption.kms_key"
    assert "eu-west-1" in error.message and "eu-west-2" in error.message


def test_kms_key_in_the_region() -> None:
    key = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert deploy(encryption={"kms_key": key}).encryption.kms_key == key


def test_kms_key_of_the_wrong_cloud() -> None:
    error = refused(encryption={"kms_key": "projects/my-project/locations/eu/keyRings/r/cryptoKeys/k"})
    assert "arn:aws:kms" in error.hint


def test_gcp_key_location_matches() -> None:
    key = "projects/my-project/locations/europe-west4/keyRings/byoc/cryptoKeys/cluster"
    deployment = deploy(cloud="gcp", shape="l4x1-fp8", model="qwen2.5-7b-instruct", encryption={"kms_key": key})
    assert deployment.region == "europe-west4"


def test_allowlist_needs_cidrs() -> None:
    assert refused(network={"endpoint": "allowlist"}).field == "network.allowed_cidrs"


def test_cidrs_need_allowlist() -> None:
    assert refused(network={"allowed_cidrs": ["203.0.113.0/24"]}).field == "network.allowed_cidrs"


def test_allowlist_with_cidrs() -> None:
    network = {"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24"]}
    assert deploy(network=network).network.endpoint == "allowlist"


def test_draft_model_must_share_the_vocabulary() -> None:
    error = refused(
        model="llama-3.1-70b-instruct", shape="h100x2-fp8", speculative={"draft_model": "qwen2.5-7b-instruct"}
    )
    assert error.field == "speculative.draft_model"


def test_draft_model_of_the_same_family() -> None:
    deployment = deploy(
        model="llama-3.1-70b-instruct", shape="h100x2-fp8", speculative={"draft_model": "llama-3.1-8b-instruct"}
    )
    assert deployment.plan_document()["engine"]["speculative"]["draft_model"] == "llama-3.1-8b-instruct"


# -- a model outside the catalog --------------------------------------------------------------------------------
def test_model_from_a_local_hugging_face_directory(tmp_path: Path) -> None:
    config = _QWEN_CONFIG
    (tmp_path / "config.json").write_text(json.dumps(config))
    source = "s3://acme-models/qwen2.5-1.5b/"
    model = {"id": "qwen2.5-1.5b", "source": source, "config": (tmp_path / "config.json").as_uri()}
    deployment = deploy(model=model, shape="l4x1-fp8", region="US")
    document = deployment.plan_document()
    assert document["model"]["source"] == source
    assert document["model"]["params"] / 1e9 == pytest.approx(1.54, rel=0.02)  # Qwen2.5-1.5B model card
    assert deployment.memory.kv_bytes_per_token == 2 * 28 * 2 * 128 * 1  # FP8 KV cache


def test_model_config_that_does_not_exist(tmp_path: Path) -> None:
    error = refused(model={"id": "mine", "source": "s3://b/mine", "config": (tmp_path / "config.json").as_uri()})
    assert error.field == "model.config"
    assert "config.json" in error.hint


def test_remote_model_outside_the_catalog() -> None:
    error = refused(model={"id": "mine", "source": "s3://bucket/mine"})
    assert error.field == "model.source"
    assert "model.config: file://" in error.hint


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": {"id": "llama-3.1-8b-instruct", "source": "file:///home/me/llama"}}, "model.source"),
        (
            {"shape": "h100x1-bf16", "addons": [{"id": "a", "source": "s3://b/a"}, {"id": "b", "source": "file:///x"}]},
            "addons[1].source",
        ),
        ({"speculative": {"draft_model": "file:///home/me/draft"}}, "speculative.draft_model"),
    ],
)
def test_a_local_source_in_a_cloud_deployment_is_refused(overrides: dict[str, Any], field: str) -> None:
    """The build Job runs in the cluster: a path on the operator's laptop can never be read there."""
    error = refused(**overrides)
    assert error.field == field
    assert "s3://" in error.hint and "upload" in error.hint


def test_a_local_source_is_fine_for_a_local_build(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_QWEN_CONFIG))
    spec = build_spec(spec_data(model={"id": "q", "source": tmp_path.as_uri()}, shape="l4x1-fp8", region="US"))
    assert resolve(spec, build_location="local").model_source == tmp_path.as_uri()


# -- values the rendered objects would refuse or misread ----------------------------------------------------------
@pytest.mark.parametrize("field", ["scale_down_window", "scale_up_window"])
def test_hpa_stabilization_windows_at_most_an_hour(field: str) -> None:
    """Kubernetes validates behavior.scaleUp/scaleDown.stabilizationWindowSeconds as 0..3600."""
    error = refused(autoscaling={"max_replicas": 4, field: "2h", "scale_to_zero_window": "3h"})
    assert error.field == f"autoscaling.{field}"
    assert "3600" in error.message and "1h" in error.hint
    assert deploy(autoscaling={"max_replicas": 4, field: "1h"}).autoscaling.as_dict()[f"{field}_s"] == 3600


def test_scale_to_zero_shorter_than_scale_down_is_refused() -> None:
    """KEDA's cooldownPeriod would take four replicas straight to zero after 5 idle minutes (kedacore/keda#7770)."""
    error = refused(autoscaling={"max_replicas": 4, "scale_to_zero_window": "5m", "scale_down_window": "30m"})
    assert error.field == "autoscaling.scale_to_zero_window"
    assert "straight to zero" in error.message and "30m" in error.hint
    # one replica at most: there is no gradual scale-down to bypass
    assert deploy(autoscaling={"max_replicas": 1, "scale_to_zero_window": "5m", "scale_down_window": "30m"})


def test_scale_to_zero_window_under_a_minute_is_refused() -> None:
    error = refused(autoscaling={"max_replicas": 1, "scale_to_zero_window": "30s"})
    assert error.field == "autoscaling.scale_to_zero_window"
    assert "1m" in error.hint


@pytest.mark.parametrize(
    "key",
    [
        "arn:aws:kms:eu-west-2:111122223333:alias/aws/eks",
        "arn:aws:kms:eu-west-2:111122223333:alias/aws/s3",
        "alias/aws/ebs",
    ],
)
def test_an_aws_managed_key_is_refused(key: str) -> None:
    error = refused(encryption={"kms_key": key})
    assert error.field == "encryption.kms_key"
    assert "AWS-managed" in error.message and "create" in error.hint


def test_a_customer_managed_alias_is_accepted() -> None:
    key = "arn:aws:kms:eu-west-2:111122223333:alias/acme/byoc"
    assert deploy(encryption={"kms_key": key}).encryption.kms_key == key


def test_allowlist_refuses_private_ranges_on_eks() -> None:
    error = refused(network={"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24", "10.1.0.0/16"]})
    assert error.field == "network.allowed_cidrs[1]"
    assert "RFC 1918" in error.message and "10.0.0.0/8" in error.message


def test_allowlist_at_most_40_cidrs_on_eks() -> None:
    cidrs = [f"198.51.{i}.0/24" for i in range(41)]
    error = refused(network={"endpoint": "allowlist", "allowed_cidrs": cidrs})
    assert error.field == "network.allowed_cidrs"
    assert "40" in error.message
    assert deploy(network={"endpoint": "allowlist", "allowed_cidrs": cidrs[:40]})


def test_gpu_node_image_is_a_pinned_alias_by_default() -> None:
    deployment = deploy()
    assert deployment.node_image is not None
    assert deployment.node_image.startswith("al2023@v") and "latest" not in deployment.node_image
    assert not [w for w in deployment.warnings if w.field == "node_image"]


def test_latest_node_image_is_allowed_with_a_warning() -> None:
    deployment = deploy(node_image="al2023@latest")
    assert deployment.node_image == "al2023@latest"
    (warning,) = [w for w in deployment.warnings if w.field == "node_image"]
    assert "drift-replaces every GPU node" in warning.message


@pytest.mark.parametrize("image", ["al2@v20250101", "ubuntu", "al2023@20260512", "ami-0123456789abcdef0"])
def test_unusable_node_image_is_refused(image: str) -> None:
    error = refused(node_image=image)
    assert error.field == "node_image"
    assert "al2023@v" in error.hint


def test_an_unpublished_runtime_image_is_warned_and_a_tag_too() -> None:
    warned = {w.field: w for w in deploy().warnings}
    if not load_catalog().images["runtime"].get("digest"):
        assert "images.runtime" in warned and "cannot pull" in warned["images.runtime"].message
    pinned = "registry.example/byoc-runtime@sha256:" + "ab" * 32
    assert "images.runtime" not in {w.field for w in deploy(images={"runtime": pinned}).warnings}
    tagged = {w.field: w for w in deploy(images={"serving": "nvcr.io/nvidia/tensorrt-llm/release:1.3.0"}).warnings}
    assert "pinned by tag" in tagged["images.serving"].message


def test_a_shape_too_small_names_a_shape_and_a_context_that_fit() -> None:
    error = refused(model="llama-3.1-70b-instruct", shape="h100x1-fp8", region="US")
    assert error.field == "shape"
    assert error.hint == (
        "try l40sx4-fp8, the cheapest shape that holds it with its node billed whole, or set max_context <= 57344"
    )


@pytest.mark.parametrize("draft", ["not a model", "../../x", "llama-3.1-8b-instrct"])
def test_a_draft_model_that_names_nothing_is_refused(draft: str) -> None:
    error = refused(model="llama-3.1-70b-instruct", shape="h100x2-fp8", speculative={"draft_model": draft})
    assert error.field == "speculative.draft_model"


def test_an_unknown_model_points_at_a_source_a_cloud_plan_can_use() -> None:
    error = refused(model="nope")
    assert error.field == "model" and "file://" not in error.hint.split("config:")[0]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"node_image": "al2023@v20260512"}, "node_image"),
        ({"encryption": {"ebs_default": True}}, "encryption.ebs_default"),
        ({"network": {"nat_gateways": "single"}}, "network.nat_gateways"),
    ],
)
def test_aws_only_fields_are_refused_on_gcp(overrides: dict[str, Any], field: str) -> None:
    error = refused(cloud="gcp", shape="h100x8-fp8", **overrides)
    assert error.field == field and "Google Cloud" in error.message


def test_gcp_defaults_plan_without_those_fields() -> None:
    assert deploy(cloud="gcp", shape="h100x8-fp8").cloud == "gcp"


def test_allowlist_private_ranges_on_gcp_say_why_and_the_way() -> None:
    error = refused(cloud="gcp", shape="h100x8-fp8", network={"endpoint": "allowlist", "allowed_cidrs": ["10.0.0.0/8"]})
    assert error.field == "network.allowed_cidrs[0]"
    assert "Cloud VPN or Interconnect" in error.message and "EKS" not in error.message


def test_allowlist_ipv6_is_refused() -> None:
    error = refused(network={"endpoint": "allowlist", "allowed_cidrs": ["2001:db8::/32"]})
    assert error.field == "network.allowed_cidrs" and "IPv4-only" in error.message
