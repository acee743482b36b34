"""Catalog consistency, and the catalogs against the AWS API data moto ships (a snapshot of real EC2 answers)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import moto
import pytest

from byoc.catalogs import MEGA_REGIONS, load_catalog, model_from_hf_config
from byoc.clouds import get_cloud
from byoc.errors import ByocError
from byoc.resolve import catalog_shapes

CATALOG = load_catalog()
REQUIRED_MODELS = {
    "llama-3.1-8b-instruct",
    "llama-3.1-70b-instruct",
    "llama-3.3-70b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-72b-instruct",
    "mistral-7b-instruct",
    "mixtral-8x7b-instruct",
}
MOTO_EC2 = Path(moto.__file__).parent / "ec2" / "resources"


def test_required_models_present() -> None:
    assert set(CATALOG.models) >= REQUIRED_MODELS


@pytest.mark.parametrize("model_id", sorted(REQUIRED_MODELS))
def test_parameter_count_matches_the_model_card(model_id: str) -> None:
    model = CATALOG.models[model_id]
    assert model.published_params_b is not None
    assert model.params / 1e9 == pytest.approx(model.published_params_b, rel=0.015)


def test_mixtral_active_parameters() -> None:
    # Mistral AI: 46.7B parameters in total, 12.9B used per token.
    assert CATALOG.models["mixtral-8x7b-instruct"].active_params / 1e9 == pytest.approx(12.9, rel=0.02)


def test_every_instance_type_names_a_known_gpu() -> None:
    for cloud, types in CATALOG.instances.items():
        for instance in types.values():
            assert instance.gpu in CATALOG.gpus, (cloud, instance.name)
            assert instance.gpus in (1, 2, 4, 8)
            assert instance.hourly_usd > 0


def test_every_offered_instance_type_is_in_the_instance_catalog() -> None:
    for cloud, regions in CATALOG.offerings.items():
        for region, offered in regions.items():
            assert offered <= set(CATALOG.instances[cloud]), (cloud, region)


def test_every_instance_type_is_offered_somewhere() -> None:
    for cloud, types in CATALOG.instances.items():
        offered = set().union(*CATALOG.offerings[cloud].values())
        assert set(types) <= offered, cloud


def test_mega_regions_map_to_real_regions_once() -> None:
    for cloud, groups in CATALOG.mega_regions.items():
        assert set(groups) == set(MEGA_REGIONS) - {"GLOBAL"}
        members = [r for group in groups.values() for r in group]
        assert len(members) == len(set(members)), f"{cloud}: a region in two mega-regions"
        assert set(members) <= set(CATALOG.offerings[cloud]), cloud
        assert set(CATALOG.regions(cloud)) == set(CATALOG.offerings[cloud])


def test_each_mega_region_offers_gpus() -> None:
    for cloud, groups in CATALOG.mega_regions.items():
        for mega, members in groups.items():
            assert any(CATALOG.offerings[cloud][r] for r in members), (cloud, mega)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_every_catalog_shape_can_be_placed(cloud: str) -> None:
    shapes = catalog_shapes(cloud)
    assert len(shapes) > 10
    for shape in shapes:
        assert get_cloud(cloud).regions_offering(shape), shape.name


def test_aws_instance_types_match_ec2_gpu_info() -> None:
    instance_types = json.loads(gzip.decompress((MOTO_EC2 / "instance_types.json.gz").read_bytes()))
    names = {
        "h100": "H100",
        "h200": "H200",
        "b200": "B200",
        "a100": "A100",
        "a100-40gb": "A100",
        "l40s": "L40S",
        "l4": "L4",
    }
    for name, instance in CATALOG.instances["aws"].items():
        gpu_info = instance_types[name]["GpuInfo"]["Gpus"][0]
        assert gpu_info["Count"] == instance.gpus, name
        assert gpu_info["Name"] == names[instance.gpu], name
        assert gpu_info["MemoryInfo"]["SizeInMiB"] == CATALOG.gpus[instance.gpu].memory_mib, name


def test_aws_offerings_match_ec2_offerings() -> None:
    folder = MOTO_EC2 / "instance_type_offerings" / "region"
    for region, offered in CATALOG.offerings["aws"].items():
        recorded = {o["InstanceType"] for o in json.loads(gzip.decompress((folder / f"{region}.json.gz").read_bytes()))}
        assert offered == recorded & set(CATALOG.instances["aws"]), region


def test_precision_support_follows_the_architecture() -> None:
    for gpu in CATALOG.gpus.values():
        assert "bf16" in gpu.tflops
        assert ("fp8" in gpu.tflops) == (gpu.sm >= 89), gpu.id
        assert ("fp4" in gpu.tflops) == (gpu.sm >= 100), gpu.id


def _write_config(folder: Path, **overrides: object) -> Path:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
    }
    config.update(overrides)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_model_read_from_a_local_config(tmp_path: Path) -> None:
    model = model_from_hf_config("llama-3.2-1b", "file://x", _write_config(tmp_path))
    assert (model.num_layers, model.num_kv_heads, model.head_dim) == (16, 8, 64)
    assert model.params / 1e9 == pytest.approx(1.24, rel=0.02)  # Llama 3.2 1B's model card: 1.23B


def test_unknown_architecture_refused(tmp_path: Path) -> None:
    with pytest.raises(ByocError) as caught:
        model_from_hf_config("x", "file://x", _write_config(tmp_path, architectures=["BertModel"]))
    assert caught.value.field == "model.source"
    assert "LlamaForCausalLM" in caught.value.hint


def test_config_missing_a_key(tmp_path: Path) -> None:
    path = _write_config(tmp_path)
    config = json.loads(path.read_text())
    del config["num_hidden_layers"]
    path.write_text(json.dumps(config))
    with pytest.raises(ByocError) as caught:
        model_from_hf_config("x", "file://x", path)
    assert "num_hidden_layers" in caught.value.message
