"""The gateway replicas' shared store (issue 21) and the deployment's GPU-hour budget, as a reviewer reads the plan.

Both clouds' programs run whole under Pulumi's mocks (the offline engine); the budget's Prometheus rules run under
the real `promtool test rules`; the capped ScaledObject validates against KEDA's CRD schema (the npm
@kubernetes-models/keda package pinned in tests/crd_schemas).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from byoc.clouds.gcp import address_plan
from byoc.manifests import kubernetes_objects
from byoc.plan import PLACEHOLDER_SECRET, SECRET_SHOWN, Plan, RecordedResource
from byoc.spec import Budget
from stacks.k8s import budget as gpu_budget
from tests.conftest import refused, run_byoc
from tests.stacks.plans import graph, one
from tests.stacks.test_crd_schemas import validate
from tests.stacks.test_serving_stack import containers, scaled_object, trigger, workload

REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
REDIS = "gcp:redis/instance:Instance"
PLATFORM_KEY = "arn:aws:kms:eu-west-2:123456789012:key/test-platform-key-id"
GIVEN_KEY = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
STORE_FLAGS = ("--store", "--store-password-file", "--store-ca-file")


def gateway(plan: Plan) -> dict[str, Any]:
    pod: dict[str, Any] = workload(plan, "gateway")["template"]["spec"]
    return pod


def flags(pod: dict[str, Any]) -> dict[str, str]:
    command = containers(pod)["gateway"]["command"]
    return {arg: command[i + 1] for i, arg in enumerate(command) if arg in STORE_FLAGS}


def gateway_egress(plan: Plan) -> list[dict[str, Any]]:
    policies = plan.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    found = next(p for p in policies if p.inputs["metadata"]["name"].endswith("-gateway"))
    rules: list[dict[str, Any]] = found.inputs["spec"]["egress"]
    return rules


def named(plan: Plan, type_token: str, name: str) -> RecordedResource:
    (found,) = [r for r in plan.by_type(type_token) if r.name == name]
    return found


# -- AWS: ElastiCache for Valkey ------------------------------------------------------------------------------------
def test_aws_store_is_valkey_encrypted_with_the_platform_key_tls_only_and_authenticated() -> None:
    plan = graph()
    store = one(plan, REPLICATION_GROUP).inputs
    assert store["engine"] == "valkey"
    assert store["atRestEncryptionEnabled"] is True
    assert store["kmsKeyId"] == PLATFORM_KEY  # the key byoc made (stacks/aws/keys.py), not an AWS-managed one
    assert store["transitEncryptionEnabled"] is True and store["transitEncryptionMode"] == "required"
    assert store["authToken"] == SECRET_SHOWN  # there, but never in clear in the plan
    token = named(plan, "random:index/randomPassword:RandomPassword", "test-store-auth").inputs
    assert token["length"] >= 32 and token["special"] is False


def test_aws_store_is_highly_available_backed_up_and_patched() -> None:
    store = one(graph(), REPLICATION_GROUP).inputs
    assert store["numCacheClusters"] >= 2
    assert store["automaticFailoverEnabled"] is True and store["multiAzEnabled"] is True
    assert store["snapshotRetentionLimit"] >= 1 and store["snapshotWindow"]
    assert store["autoMinorVersionUpgrade"] is True


def test_aws_store_sits_in_the_private_subnets_behind_a_group_open_to_the_cluster_nodes_only() -> None:
    plan = graph()
    store = one(plan, REPLICATION_GROUP).inputs
    subnets = one(plan, "aws:elasticache/subnetGroup:SubnetGroup").inputs
    assert store["subnetGroupName"] == subnets["name"]
    private = {s.id for s in plan.by_type("aws:ec2/subnet:Subnet") if "-private-" in s.name}
    assert set(subnets["subnetIds"]) == private and len(private) == 3
    group = named(plan, "aws:ec2/securityGroup:SecurityGroup", "test-store")
    assert store["securityGroupIds"] == [group.id]
    (rule,) = group.inputs["ingress"]
    # the EKS cluster security group (carried by the nodes that run the gateway), on the store's port, no CIDR
    assert rule["securityGroups"] == ["sg-test-eks"]
    assert (rule["fromPort"], rule["toPort"], rule["protocol"]) == (6379, 6379, "tcp")
    assert not rule.get("cidrBlocks") and not rule.get("ipv6CidrBlocks")
    assert group.inputs["egress"] == []


def test_aws_store_takes_the_users_key_when_one_is_given() -> None:
    store = one(graph(encryption={"kms_key": GIVEN_KEY}), REPLICATION_GROUP).inputs
    assert store["kmsKeyId"] == GIVEN_KEY


def test_aws_gateway_gets_the_store_flags_and_reads_password_and_ca_from_a_secret_volume() -> None:
    plan = graph()
    pod = gateway(plan)
    assert flags(pod) == {
        "--store": "rediss://master.byoc-test-store.abc123.eu-west-2.cache.amazonaws.com:6379",
        "--store-password-file": "/etc/byoc/store/password",
        "--store-ca-file": "/etc/byoc/store/ca.crt",
    }
    mounts = {m["name"]: m for m in containers(pod)["gateway"]["volumeMounts"]}
    assert mounts["store"] == {"name": "store", "mountPath": "/etc/byoc/store", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["store"]["secret"]["secretName"] == "byoc-test-store"
    assert "env" not in containers(pod)["gateway"]  # never environment variables
    secret = named(plan, "kubernetes:core/v1:Secret", "test-store-secret").inputs
    assert secret["metadata"]["name"] == "byoc-test-store"
    assert secret["stringData"] == {"ca.crt": SECRET_SHOWN, "password": SECRET_SHOWN}


def test_aws_gateway_egress_reaches_the_store_port_in_the_vpc() -> None:
    store_rules = [r for r in gateway_egress(graph()) if r["ports"] == [{"protocol": "TCP", "port": 6379}]]
    assert store_rules == [
        {"to": [{"ipBlock": {"cidr": "10.42.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 6379}]}
    ]


def test_the_ca_bundle_is_amazons_roots() -> None:
    from stacks.aws.store import AMAZON_ROOT_CAS

    text = AMAZON_ROOT_CAS.read_text()
    assert text.count("-----BEGIN CERTIFICATE-----") == 4
    assert "Amazon Root CA 1" in text


def test_the_plan_and_manifests_never_hold_the_auth_token(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "demo",
                "cloud": "aws",
                "region": "EUROPE",
                "model": "llama-3.1-8b-instruct",
                "shape": "h100x1-fp8",
            }
        )
    )
    result = run_byoc("plan", "-f", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert PLACEHOLDER_SECRET not in path.read_text(errors="replace"), path
    document = json.loads((tmp_path / "out" / "plan.json").read_text())
    # EUROPE places in two regions: each has its own store, neither token is written
    stores = [r for r in document["resources"] if r["type"] == REPLICATION_GROUP]
    assert len(stores) == len(document["placement"]["regions"]) == 2
    for store in stores:
        assert store["inputs"]["authToken"] == SECRET_SHOWN
    assert document["estimates"]["store"]["hourly_usd"] > 0


# -- GCP: Memorystore for Redis -------------------------------------------------------------------------------------
def test_gcp_store_is_cmek_tls_authenticated_highly_available_and_private() -> None:
    plan = graph(cloud="gcp")
    store = one(plan, REDIS).inputs
    keys = {k.inputs["name"]: k.id for k in plan.by_type("gcp:kms/cryptoKey:CryptoKey")}
    assert store["customerManagedKey"] == keys["store"]
    grants = {
        g.inputs["cryptoKeyId"]: g.inputs["member"]
        for g in plan.by_type("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember")
        if g.inputs["cryptoKeyId"] == keys["store"]
    }
    assert grants == {keys["store"]: "serviceAccount:service-123456789012@cloud-redis.iam.gserviceaccount.com"}
    assert store["transitEncryptionMode"] == "SERVER_AUTHENTICATION"
    assert store["authEnabled"] is True
    assert store["tier"] == "STANDARD_HA"
    assert store["persistenceConfig"]["persistenceMode"] == "RDB"
    vpc = one(plan, "gcp:compute/network:Network").id
    assert store["connectMode"] == "PRIVATE_SERVICE_ACCESS" and store["authorizedNetwork"] == vpc
    allocated = one(plan, "gcp:compute/globalAddress:GlobalAddress").inputs
    assert (allocated["purpose"], allocated["addressType"], allocated["network"]) == ("VPC_PEERING", "INTERNAL", vpc)
    assert store["reservedIpRange"] == allocated["name"]
    peering = one(plan, "gcp:servicenetworking/connection:Connection").inputs
    assert peering["network"] == vpc and peering["reservedPeeringRanges"] == [allocated["name"]]


@pytest.mark.parametrize("cidr", ["10.42.0.0/16", "10.8.0.0/20", "172.16.0.0/18"])
def test_gcp_store_range_overlaps_no_other_range_of_the_network(cidr: str) -> None:
    plan = address_plan(cidr)
    store = ipaddress.ip_network(plan.store)
    assert store.prefixlen == 24 and store.subnet_of(ipaddress.ip_network(cidr))  # type: ignore[arg-type]
    for other in (plan.nodes, plan.pods, plan.services, plan.control_plane):
        assert not store.overlaps(ipaddress.ip_network(other)), other


def test_gcp_gateway_gets_the_store_flags_ca_and_egress_to_the_store_range() -> None:
    plan = graph(cloud="gcp")
    assert flags(gateway(plan)) == {
        "--store": "rediss://10.42.96.3:6378",
        "--store-password-file": "/etc/byoc/store/password",
        "--store-ca-file": "/etc/byoc/store/ca.crt",
    }
    store_rules = [r for r in gateway_egress(plan) if r["ports"] == [{"protocol": "TCP", "port": 6378}]]
    assert store_rules == [
        {"to": [{"ipBlock": {"cidr": "10.42.96.0/24"}}], "ports": [{"protocol": "TCP", "port": 6378}]}
    ]


# -- gateway.store: none --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_store_none_renders_no_store_and_no_flags(cloud: str) -> None:
    plan = graph(cloud=cloud, gateway={"store": "none"})
    assert plan.by_type(REPLICATION_GROUP) == [] and plan.by_type(REDIS) == []
    assert flags(gateway(plan)) == {}
    assert "store" not in {v["name"] for v in gateway(plan)["volumes"]}
    assert all(r.name != "test-store-secret" for r in plan.by_type("kubernetes:core/v1:Secret"))
    assert {k.inputs.get("name") for k in plan.by_type("gcp:kms/cryptoKey:CryptoKey")} <= {
        "secrets",
        "disks",
        "artifacts",
        "logs",
    }


# -- the GPU-hour budget --------------------------------------------------------------------------------------------
BUDGET = {"gpu_hours": 100, "period": "day", "alert_at": [0.5, 1.0], "cap_replicas": 1}
CAPPED = {"autoscaling": {"max_replicas": 4}, "budget": BUDGET}


def test_a_budget_caps_the_replicas_through_keda_scaling_modifiers() -> None:
    plan = graph(**CAPPED)
    spec = scaled_object(plan)
    budget = trigger(spec, "budget")
    assert budget["metadata"]["query"] == 'max(byoc:budget_gpu_hours:fraction{namespace="byoc-test"})'
    modifiers = spec["advanced"]["scalingModifiers"]
    load = f"{float(trigger(spec, 'load')['metadata']['threshold']):g}"
    asked = f"max(load / {load}, wake, activity)"
    assert modifiers["formula"] == f"budget >= 1 ? min(1, {asked}) : {asked}"
    assert (modifiers["target"], modifiers["metricType"]) == ("1", "AverageValue")


def test_without_a_cap_the_scaled_object_is_unchanged() -> None:
    spec = scaled_object(graph(budget={"gpu_hours": 100}))
    assert "scalingModifiers" not in spec["advanced"]
    assert {t["name"] for t in spec["triggers"]} == {"load", "wake", "activity"}


def test_capped_scaled_object_and_budget_rules_match_their_crd_schemas() -> None:
    objects = [o for o in kubernetes_objects(graph(**CAPPED)) if o["kind"] in ("ScaledObject", "PrometheusRule")]
    assert {o["kind"] for o in objects} == {"ScaledObject", "PrometheusRule"}
    assert any(o["metadata"]["name"] == "byoc-test-budget" for o in objects)
    results = validate(objects)
    assert [r["result"] for r in results] == ["ok"] * len(objects), results


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/test.sh (Debian's `prometheus` package)")
    return path


def _series(pod: str, gpus: int, phase: str, minutes: int) -> list[dict[str, str]]:
    labels = f'namespace="byoc-test",pod="{pod}"'
    return [
        {
            "series": "kube_pod_container_resource_requests"
            f'{{{labels},container="trtllm",resource="nvidia_com_gpu",unit="integer"}}',
            "values": f"{gpus}x{minutes}",
        },
        {"series": f'kube_pod_status_phase{{{labels},phase="{phase}"}}', "values": f"1x{minutes}"},
    ]


def _used(minute: int, value: float) -> dict[str, Any]:
    return {
        "expr": gpu_budget.USED,
        "eval_time": f"{minute}m",
        "exp_samples": [{"labels": f'{gpu_budget.USED}{{namespace="byoc-test"}}', "value": value}],
    }


def _rule_test(tmp_path: Path, budget: Budget, case: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": gpu_budget.rule_groups("byoc-test", budget)}, sort_keys=False)
    )
    (tmp_path / "test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [case]}, sort_keys=False)
    )
    return subprocess.run(
        [shutil.which("promtool") or "promtool", "test", "rules", "test.yaml"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )


# 60 GPUs held add exactly 1 GPU-hour a minute (exact floats); a Pending pod's request holds none.
BUDGET_CASE: dict[str, Any] = {
    "interval": "1m",
    "input_series": [*_series("serving-a", 60, "Running", 1500), *_series("serving-b", 8, "Pending", 1500)],
    "promql_expr_test": [
        _used(0, 1),
        _used(59, 60),
        _used(1439, 1440),
        _used(1440, 1),  # a new UTC day: the count starts again
        _used(1499, 60),
        {
            "expr": gpu_budget.FRACTION,
            "eval_time": "59m",
            "exp_samples": [{"labels": f'{gpu_budget.FRACTION}{{namespace="byoc-test"}}', "value": 0.6}],
        },
    ],
    "alert_rule_test": [
        {"eval_time": "48m", "alertname": "ByocGpuBudgetSpent", "exp_alerts": []},
        {
            "eval_time": "49m",
            "alertname": "ByocGpuBudgetSpent",
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "warning", "threshold": "50%", "namespace": "byoc-test"},
                    "exp_annotations": {
                        "summary": "50% of the GPU-hour budget of byoc-test is spent",
                        "description": "byoc-test has used 50% of its 100 GPU-hours this day (UTC).",
                        "runbook_url": "https://github.com/byoc-dev/byoc/blob/main/docs/operations.md#gpu-hour-budget",
                    },
                }
            ],
        },
    ],
}


def test_budget_rules_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": gpu_budget.rule_groups("byoc-test", Budget(**BUDGET))}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_budget_rules_count_gpu_hours_reset_each_period_and_alert(promtool: str, tmp_path: Path) -> None:
    result = _rule_test(tmp_path, Budget(**BUDGET), BUDGET_CASE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_budget_rule_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """A wrong expectation (the count not starting again at the day's end) fails: the test above is real."""
    case = json.loads(json.dumps(BUDGET_CASE))
    case["promql_expr_test"][3]["exp_samples"][0]["value"] = 1441
    result = _rule_test(tmp_path, Budget(**BUDGET), case)
    assert result.returncode == 1, result.stdout + result.stderr


def test_month_period_index_is_the_calendar_month(promtool: str, tmp_path: Path) -> None:
    case = {
        "interval": "1m",
        "input_series": _series("serving-a", 60, "Running", 3),
        "promql_expr_test": [
            {
                "expr": gpu_budget.INDEX,
                "eval_time": "2m",
                "exp_samples": [{"labels": f'{gpu_budget.INDEX}{{namespace="byoc-test"}}', "value": 1970 * 12 + 1}],
            }
        ],
    }
    result = _rule_test(tmp_path, Budget(gpu_hours=10, period="month"), case)
    assert result.returncode == 0, result.stdout + result.stderr


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gateway": {"store": "cluster"}}, "gateway.store"),
        ({"budget": {"gpu_hours": -1}}, "budget.gpu_hours"),
        ({"budget": {"gpu_hours": 10, "period": "quarter"}}, "budget.period"),
        ({"budget": {"gpu_hours": 10, "alert_at": [0.5, 1.5]}}, "budget.alert_at"),
        ({"budget": {"gpu_hours": 10, "alert_at": [0.5, 0.5]}}, "budget.alert_at"),
        ({"budget": {"gpu_hours": 10, "alert_at": []}}, "budget.alert_at"),
        ({"budget": {"gpu_hours": 10, "cap_replicas": 5}}, "budget.cap_replicas"),
        ({"budget": {"gpu_hours": 10, "cap_replicas": 0}, "autoscaling": {"min_replicas": 1}}, "budget.cap_replicas"),
        ({"budget": {"gpu_hours": 10, "cap": 1}}, "budget.cap"),
    ],
)
def test_bad_store_or_budget_input_names_the_field(overrides: dict[str, Any], field: str) -> None:
    assert refused(**overrides).field.startswith(field)


def test_bad_budget_exits_2_with_the_field_and_no_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "byoc.yaml"
    data = {"cloud": "aws", "region": "EUROPE", "model": "llama-3.1-8b-instruct", "shape": "h100x1-fp8"}
    spec.write_text(yaml.safe_dump({**data, "budget": {"gpu_hours": 10, "cap_replicas": 3}}))
    result = run_byoc("validate", "-f", str(spec))
    assert result.returncode == 2, result.stderr
    assert "budget.cap_replicas" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("cloud", "service"), [("aws", "ElastiCache for Valkey"), ("gcp", "Memorystore for Redis")])
def test_estimate_prices_the_store_with_its_source(cloud: str, service: str) -> None:
    args = ("estimate", "--model", "llama-3.1-8b-instruct", "--shape", "l4x1-fp8", "--cloud", cloud)
    result = run_byoc(*args, "--output", "json")
    assert result.returncode == 0, result.stderr
    store = json.loads(result.stdout)["store"]
    assert store["service"] == service and store["nodes"] == 2
    assert 0 < store["hourly_usd"] < 1 and store["monthly_usd"] == round(store["hourly_usd"] * 730, 2)
    assert "pricing" in store["price_source"]
    text = run_byoc(*args).stdout
    assert f"shared store       {service}, 2 nodes, ${store['hourly_usd']:,.4f}/h" in text


def test_gateway_divides_limits_by_its_replicas_and_meters_the_shapes_gpus() -> None:
    """With the store away each gateway enforces limit / replicas (the HPA's minimum until it has seen the
    others); the ledger's GPU-seconds count the shape's GPUs per model replica."""
    command = containers(gateway(graph(shape="h100x2-fp8")))["gateway"]["command"]
    after = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    assert after["--replicas-hint"] == "2"
    assert after["--gpus-per-replica"] == "2"
