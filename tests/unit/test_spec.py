"""Loading the spec: strict keys, clear field names in errors, flags over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from byoc.errors import ByocError
from byoc.spec import build_spec, load_spec
from tests.conftest import EXAMPLES, spec_data


def invalid(data: dict[str, object]) -> ByocError:
    with pytest.raises(ByocError) as caught:
        build_spec(data)
    return caught.value


def test_examples_load() -> None:
    assert len(EXAMPLES) >= 4
    for path in EXAMPLES:
        assert load_spec(path).name


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    error = invalid(spec_data(autoscalng={"min_replicas": 0}))
    assert error.field == "autoscalng"
    assert "autoscaling" in error.hint


def test_unknown_nested_key_names_its_path() -> None:
    error = invalid(spec_data(autoscaling={"min_replica": 0}))
    assert error.field == "autoscaling.min_replica"
    assert "min_replicas" in error.hint


def test_missing_required_field_says_how_to_give_it() -> None:
    data = spec_data()
    del data["cloud"]
    error = invalid(data)
    assert error.field == "cloud"
    assert "--cloud" in error.hint


def test_cloud_must_be_aws_or_gcp() -> None:
    error = invalid(spec_data(cloud="azure"))
    assert error.field == "cloud"
    assert "'aws'" in error.hint and "'gcp'" in error.hint


@pytest.mark.parametrize("name", ["Prod", "-prod", "prod_1", "a" * 33, "9lives"])
def test_name_must_be_a_short_dns_label(name: str) -> None:
    assert invalid(spec_data(name=name)).field == "name"


def test_durations_accept_units() -> None:
    spec = build_spec(
        spec_data(autoscaling={"scale_up_window": "45s", "scale_down_window": "15m", "scale_to_zero_window": "2h"})
    )
    assert spec.autoscaling.scale_up_window == 45
    assert spec.autoscaling.scale_down_window == 900
    assert spec.autoscaling.scale_to_zero_window == 7200


def test_defaults_follow_fireworks_windows() -> None:
    scaling = build_spec(spec_data()).autoscaling
    assert (scaling.scale_up_window, scaling.scale_down_window, scaling.scale_to_zero_window) == (30, 600, 3600)


def test_bad_duration_names_the_field() -> None:
    error = invalid(spec_data(autoscaling={"scale_down_window": "ten minutes"}))
    assert error.field == "autoscaling.scale_down_window"
    assert "10m" in error.message


def test_negative_replicas_refused() -> None:
    error = invalid(spec_data(autoscaling={"min_replicas": -1}))
    assert error.field == "autoscaling.min_replicas"


@pytest.mark.parametrize("shape", ["h100-fp8", "h100x-fp8", "H100x1-FP8", "x1-fp8"])
def test_shape_format(shape: str) -> None:
    error = invalid(spec_data(shape=shape))
    assert error.field == "shape"
    assert "h100x1-fp8" in error.message


@pytest.mark.parametrize("cidr", ["8.8.0.0/16", "10.0.0.0/8", "10.42.0.1/16", "not-a-cidr"])
def test_network_cidr_is_a_private_16_to_20(cidr: str) -> None:
    assert invalid(spec_data(network={"cidr": cidr})).field == "network.cidr"


def test_allowed_cidrs_refuse_the_whole_internet() -> None:
    error = invalid(spec_data(network={"endpoint": "allowlist", "allowed_cidrs": ["0.0.0.0/0"]}))
    assert error.field == "network.allowed_cidrs"
    assert "endpoint: public" in error.message


def test_model_source_scheme() -> None:
    error = invalid(spec_data(model={"id": "x", "source": "ftp://host/model"}))
    assert error.field == "model.source"


def test_duplicate_addon_ids_refused() -> None:
    addon = {"id": "tone", "source": "s3://b/tone"}
    assert invalid(spec_data(addons=[addon, addon])).field == "addons"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text("name: fromfile\ncloud: aws\nregion: US\nmodel: llama-3.1-8b-instruct\nshape: h100x1-fp8\n")
    spec = load_spec(path, {"region": "EUROPE", "shape": "h100x2-fp8", "name": None})
    assert (spec.name, spec.region, spec.shape) == ("fromfile", "EUROPE", "h100x2-fp8")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text("name: x\ncloud: [aws\n")
    with pytest.raises(ByocError) as caught:
        load_spec(path)
    assert caught.value.field == "-f"
    assert "line" in caught.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ByocError) as caught:
        load_spec(tmp_path / "nope.yaml")
    assert "does not exist" in caught.value.message


def test_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "byoc.yaml"
    path.write_text("- cloud: aws\n")
    with pytest.raises(ByocError) as caught:
        load_spec(path)
    assert "mapping" in caught.value.message


@pytest.mark.parametrize("model_id", ["my model", "../escape", "a/b/c", "/abs", "x" * 129, "org/"])
def test_model_ids_that_cannot_name_an_artifact_are_refused(model_id: str) -> None:
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(model={"id": model_id, "source": "s3://b/m"}))
    assert caught.value.field == "model.id"


def test_an_org_name_model_id_is_accepted() -> None:
    assert build_spec(spec_data(model={"id": "acme/llama-ft.v2", "source": "s3://b/m"})).model_id == "acme/llama-ft.v2"


def test_ttft_objective_within_the_gateways_histogram() -> None:
    """Above the histogram's last finite bucket, histogram_quantile never exceeds the objective: a silent alert."""
    from byoc.spec import TTFT_SLO_MAX_S
    from runtime.serve.metrics import TTFT_BUCKETS

    assert max(TTFT_BUCKETS) == TTFT_SLO_MAX_S
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(monitoring={"ttft_p95_slo_seconds": 120}))
    assert caught.value.field == "monitoring.ttft_p95_slo_seconds"
    assert build_spec(spec_data(monitoring={"ttft_p95_slo_seconds": 60})).monitoring.ttft_p95_slo_seconds == 60


def test_a_key_given_twice_anywhere_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        "name: a\ncloud: aws\nregion: US\nmodel: llama-3.1-8b-instruct\nshape: h100x1-bf16\n"
        "addons:\n  - {id: a, source: s3://b/a}\n  - id: b\n    source: s3://b/b\n    source: s3://b/c\n"
    )
    with pytest.raises(ByocError) as caught:
        load_spec(spec)
    assert caught.value.field == "addons[1].source"
    assert "lines 9 and 10" in caught.value.message


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_published_schema(path: Path) -> None:
    """Editors (yaml-language-server) check byoc.yaml against `byoc schema`: a valid spec must pass it."""
    import jsonschema
    import yaml

    from byoc.schema import spec_json_schema

    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    jsonschema.validate({**spec_data(), "autoscaling": {"scale_up_window": "30s", "scale_down_window": 600}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**spec_data(), "name": "Not-A-Label"}, schema)


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"max_replicas": True}, "autoscaling.max_replicas"),
        ({"max_replicas": "4"}, "autoscaling.max_replicas"),
        ({"max_replicas": 2**63}, "autoscaling.max_replicas"),
        ({"scale_up_window": True}, "autoscaling.scale_up_window"),
        ({"scale_to_zero_window": "99999999h"}, "autoscaling.scale_to_zero_window"),
        ({"max_replicas": 2, "load_target": {"type": "concurrent_requests", "value": float("inf")}}, "autoscaling"),
    ],
)
def test_values_kubernetes_cannot_store_are_refused(autoscaling: dict[str, object], field: str) -> None:
    """KEDA's and the HPA's replica counts and cooldown are int32; thresholds finite; a boolean is no count."""
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(autoscaling=autoscaling))
    assert caught.value.field.startswith(field)


def test_yaml_booleans_in_a_text_field_say_to_quote_them() -> None:
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(region=False))  # `region: NO` in YAML 1.1
    assert caught.value.field == "region" and "quote it" in caught.value.hint


def test_a_misspelt_required_key_gets_a_did_you_mean() -> None:
    data = spec_data()
    data["regoin"] = data.pop("region")
    with pytest.raises(ByocError) as caught:
        build_spec(data)
    assert caught.value.message == "unknown field 'regoin'" and "'region'" in caught.value.hint


def test_a_huge_value_is_not_echoed_back_whole() -> None:
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(name="a" * 1_000_000))
    assert len(str(caught.value)) < 300 and "has 1,000,000 characters; at most 32" in caught.value.message
    from tests.conftest import deploy

    with pytest.raises(ByocError) as caught:
        deploy(encryption={"kms_key": "x" * 1_000_000})
    assert caught.value.field == "encryption.kms_key" and len(str(caught.value)) < 1500


@pytest.mark.parametrize(
    "cidrs", [["127.0.0.1/32"], ["100.64.0.0/10"], ["169.254.0.0/16"], ["203.0.113.0/24", "203.0.113.0/24"]]
)
def test_allowlist_entries_no_client_comes_from_are_refused(cidrs: list[str]) -> None:
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(network={"endpoint": "allowlist", "allowed_cidrs": cidrs}))
    assert caught.value.field == "network.allowed_cidrs"


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("compliance", {"frameworks": []}),
        ("compliance", {"frameworks": ["soc2", "soc2"]}),
        ("monitoring", {"prometheus_url": 'http://prom "x" :9090'}),
        ("monitoring", {"prometheus_url": "http://"}),
        ("monitoring", {"ttft_p95_slo_seconds": 0.001}),
    ],
)
def test_values_the_rendered_objects_could_not_use(section: str, value: dict[str, object]) -> None:
    with pytest.raises(ByocError) as caught:
        build_spec(spec_data(**{section: value}))
    assert caught.value.field.startswith(section)


def test_ttft_objective_floor_is_the_histograms_first_bucket() -> None:
    from byoc.spec import TTFT_SLO_MIN_S
    from runtime.serve.metrics import TTFT_BUCKETS

    assert min(TTFT_BUCKETS) == TTFT_SLO_MIN_S


def test_a_missing_nested_field_names_no_flag_that_does_not_exist() -> None:
    """`budget: {period: day}` lacks gpu_hours: the hint says to add it, not to pass a --gpu_hours nobody has."""
    from byoc.errors import ByocError
    from byoc.spec import build_spec

    data = spec_data(budget={"period": "day"})
    with pytest.raises(ByocError) as caught:
        build_spec(data)
    assert caught.value.field == "budget.gpu_hours" and caught.value.hint == "add `gpu_hours:` to the spec"
    data = spec_data()
    data.pop("shape")
    with pytest.raises(ByocError) as caught:
        build_spec(data)
    assert caught.value.hint == "add `shape:` to the spec or pass --shape"


@pytest.mark.parametrize(
    ("section", "key"),
    [("cold_start", "image_cache"), ("batch", "enabled"), ("encryption", "ebs_default")],
)
@pytest.mark.parametrize("value", ["yes", "false", "true", 0, 1, None])
def test_switches_take_only_true_or_false(section: str, key: str, value: object) -> None:
    # YAML's own true/false only: a quoted "false" or a 0 is not quietly turned into a switch
    error = invalid(spec_data(**{section: {key: value}}))
    assert error.field == f"{section}.{key}"
    assert "true or false" in error.message and "unquoted" in error.hint


@pytest.mark.parametrize("value", [True, False])
def test_switches_take_yaml_booleans(value: bool) -> None:
    spec = build_spec(spec_data(cold_start={"image_cache": value}, batch={"enabled": value}))
    assert spec.cold_start.image_cache is value and spec.batch.enabled is value
