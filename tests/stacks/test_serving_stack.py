"""The Kubernetes serving stack as recorded in the plan: what an operator reviewing the YAML checks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from byoc.plan import Plan
from runtime.model_build.plan import build_plan
from tests.conftest import deploy
from tests.stacks.plans import graph, one

ADDON = {"id": "support-tone", "source": "s3://acme-adapters/support-tone/", "rank": 16}
LORA = {"shape": "h100x1-bf16", "addons": [ADDON], "max_context": 16384}


def scaled_object(plan: Plan) -> dict[str, Any]:
    spec: dict[str, Any] = one(plan, "kubernetes:keda.sh/v1alpha1:ScaledObject").inputs["spec"]
    return spec


def trigger(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in spec["triggers"] if t["name"] == name)
    return found


def workload(plan: Plan, component: str) -> dict[str, Any]:
    deployments = plan.by_type("kubernetes:apps/v1:Deployment")
    found = next(d for d in deployments if d.inputs["metadata"]["name"].endswith(f"-{component}"))
    spec: dict[str, Any] = found.inputs["spec"]
    return spec


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["containers"] + pod.get("initContainers", [])}


# -- autoscaling ------------------------------------------------------------------------------------------------
def test_scaled_object_reaches_zero_and_four() -> None:
    spec = scaled_object(graph(**LORA, autoscaling={"min_replicas": 0, "max_replicas": 4}))
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 4)
    assert spec["cooldownPeriod"] == 3600  # idle an hour before the last replica goes (the spec's default)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 30
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert spec["scaleTargetRef"]["name"] == "byoc-test-serving"


def test_scaled_object_follows_the_windows() -> None:
    scaling = {
        "min_replicas": 0,
        "max_replicas": 2,
        "scale_up_window": "1m",
        "scale_down_window": "20m",
        "scale_to_zero_window": "45m",
    }
    spec = scaled_object(graph(autoscaling=scaling))
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 60
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 1200
    assert spec["cooldownPeriod"] == 2700


def test_no_scale_to_zero_when_min_is_above_zero() -> None:
    spec = scaled_object(graph(autoscaling={"min_replicas": 2, "max_replicas": 5}))
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 5)
    assert "cooldownPeriod" not in spec


@pytest.mark.parametrize(
    ("kind", "metric"),
    [
        ("concurrent_requests", 'sum(byoc_gateway_in_flight_requests{namespace="byoc-test"})'),
        ("requests_per_second", 'sum(rate(byoc_gateway_requests_total{namespace="byoc-test"}[1m]))'),
        ("tokens_per_second", 'sum(rate(byoc_gateway_output_tokens_total{namespace="byoc-test"}[1m]))'),
        ("queue_depth", 'sum(byoc_gateway_queue_depth{namespace="byoc-test"})'),
    ],
)
def test_load_trigger_follows_the_target(kind: str, metric: str) -> None:
    spec = scaled_object(graph(autoscaling={"max_replicas": 3, "load_target": {"type": kind, "value": 12.5}}))
    load = trigger(spec, "load")["metadata"]
    assert load["query"] == metric
    assert load["threshold"] == "12.5"


def test_default_load_target_is_sized_by_the_planner() -> None:
    load = trigger(scaled_object(graph()), "load")["metadata"]
    assert load["query"].startswith("sum(byoc_gateway_in_flight_requests")
    assert 1 <= float(load["threshold"]) <= 256


def test_pending_requests_wake_the_deployment_from_zero() -> None:
    wake = trigger(scaled_object(graph()), "wake")
    assert wake["type"] == "prometheus"
    assert wake["metadata"]["query"] == 'sum(byoc_gateway_pending_requests{namespace="byoc-test"})'
    assert wake["metadata"]["activationThreshold"] == "0"


def test_recent_requests_keep_a_deployment_that_scales_to_zero_active() -> None:
    spec = scaled_object(graph())
    activity = trigger(spec, "activity")
    assert activity["type"] == "prometheus"
    query = activity["metadata"]["query"]
    # windowed: a counter's increase and a gauge's max over the window, never an instantaneous sample alone
    assert 'increase(byoc_gateway_requests_total{namespace="byoc-test",addon!="unknown"}[60s])' in query
    assert 'max_over_time(byoc_gateway_in_flight_requests{namespace="byoc-test"}[60s])' in query
    assert query.startswith("clamp_max(") and query.endswith(", 1)")  # never asks for more than one replica
    assert (activity["metadata"]["threshold"], activity["metadata"]["activationThreshold"]) == ("1", "0")
    assert "activity" not in {t["name"] for t in scaled_object(graph(autoscaling={"min_replicas": 1}))["triggers"]}


def test_triggers_query_the_installed_prometheus_or_yours() -> None:
    plan = graph()
    assert trigger(scaled_object(plan), "load")["metadata"]["serverAddress"] == (
        "http://byoc-monitoring-prometheus.monitoring.svc:9090"
    )
    assert "kube-prometheus-stack" in {r.inputs["name"] for r in plan.by_type("kubernetes:helm.sh/v3:Release")}
    mine = "http://prometheus-operated.observability:9090"
    plan = graph(monitoring={"prometheus_url": mine})
    assert trigger(scaled_object(plan), "load")["metadata"]["serverAddress"] == mine
    assert "kube-prometheus-stack" not in {r.inputs["name"] for r in plan.by_type("kubernetes:helm.sh/v3:Release")}


def test_helm_releases_are_pinned() -> None:
    releases = {r.inputs["name"]: r.inputs for r in graph().by_type("kubernetes:helm.sh/v3:Release")}
    assert releases["keda"]["version"] == "2.18.0"
    assert releases["gpu-operator"]["version"] == "v25.10.1"
    assert releases["kube-prometheus-stack"]["version"] == "79.7.1"
    # the EKS AMI carries the NVIDIA driver; the operator adds the device plugin and dcgm-exporter
    gpu = releases["gpu-operator"]["values"]
    assert gpu["driver"]["enabled"] is False and gpu["dcgmExporter"]["enabled"] is True


# -- workloads --------------------------------------------------------------------------------------------------
def test_namespace_enforces_restricted_pod_security() -> None:
    namespaces = {
        n.inputs["metadata"]["name"]: n.inputs["metadata"]["labels"]
        for n in graph().by_type("kubernetes:core/v1:Namespace")
    }
    assert namespaces["byoc-test"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["gpu-operator"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_serving_pods_hold_the_shapes_gpus_on_its_node_pool() -> None:
    spec = workload(graph(shape="h100x2-fp8"), "serving")
    pod = spec["template"]["spec"]
    engine = containers(pod)["trtllm-serve"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert engine["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"karpenter.sh/nodepool": "byoc-gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert engine["image"].startswith("nvcr.io/nvidia/tensorrt-llm/release@sha256:")
    assert "--tp_size" in engine["command"] and engine["command"][engine["command"].index("--tp_size") + 1] == "2"


def test_serving_pods_are_locked_down() -> None:
    pod = workload(graph(), "serving")["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(pod).values():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    assert pod["terminationGracePeriodSeconds"] >= 120
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_serving_probes_health_and_waits_for_model_load() -> None:
    engine = containers(workload(graph(), "serving")["template"]["spec"])["trtllm-serve"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert engine[probe]["httpGet"]["path"] == "/health"
    assert engine["startupProbe"]["periodSeconds"] * engine["startupProbe"]["failureThreshold"] >= 1800


def test_serving_fetches_and_verifies_the_built_artifact() -> None:
    plan = graph()
    fetch = containers(workload(plan, "serving")["template"]["spec"])["fetch-artifacts"]
    assert fetch["command"][:3] == ["byoc", "artifacts", "fetch"]
    assert "--verify" in fetch["command"]
    source = fetch["command"][fetch["command"].index("--from") + 1]
    assert source.startswith("s3://byoc-test-artifacts-123456789012/artifacts/llama-3.1-8b-instruct/")
    job = one(plan, "kubernetes:batch/v1:Job").inputs["spec"]["template"]["spec"]
    build = job["containers"][0]
    # the Job builds into the store; the content-addressed prefix it writes under is the one pods read
    assert build["command"][build["command"].index("--dest") + 1] == "s3://byoc-test-artifacts-123456789012"
    assert source.endswith(build_plan(deploy()).artifact_prefix)
    assert job["serviceAccountName"] == "byoc-builder"
    assert build["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_options_config_map_follows_the_shape() -> None:
    plan = graph(**LORA, kv_cache_fraction=0.85)
    maps = {c.inputs["metadata"]["name"]: c.inputs["data"] for c in plan.by_type("kubernetes:core/v1:ConfigMap")}
    options = yaml.safe_load(maps["byoc-test-engine"]["options.yaml"])
    assert options["backend"] == "pytorch"
    assert options["tensor_parallel_size"] == 1
    assert options["max_seq_len"] == 16384
    assert options["kv_cache_config"]["free_gpu_memory_fraction"] == 0.85
    assert options["lora_config"]["max_lora_rank"] == 16
    fp8 = yaml.safe_load(
        {c.inputs["metadata"]["name"]: c.inputs["data"] for c in graph().by_type("kubernetes:core/v1:ConfigMap")}[
            "byoc-test-engine"
        ]["options.yaml"]
    )
    assert "lora_config" not in fp8
    assert fp8["kv_cache_config"]["dtype"] == "fp8"


def test_gateway_knows_the_addon_and_reads_keys_from_a_file() -> None:
    pod = workload(graph(**LORA), "gateway")["template"]["spec"]
    gateway = containers(pod)["gateway"]
    assert gateway["command"][gateway["command"].index("--addon") + 1] == (
        "support-tone=s3://acme-adapters/support-tone/"
    )
    assert "env" not in gateway  # no key in an environment variable
    assert pod["volumes"][0]["secret"]["secretName"] == "byoc-test-api-keys"


def test_gateway_serves_tls_from_a_secret() -> None:
    pod = workload(graph(), "gateway")["template"]["spec"]
    gateway = containers(pod)["gateway"]
    command = gateway["command"]
    assert command[command.index("--tls-cert") + 1] == "/etc/byoc/tls/tls.crt"
    assert {"name": "tls", "secret": {"secretName": "byoc-test-gateway-tls"}} in pod["volumes"]
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_gateway_is_an_internal_load_balancer_with_a_pdb_and_hpa() -> None:
    plan = graph()
    services = {s.inputs["metadata"]["name"]: s.inputs for s in plan.by_type("kubernetes:core/v1:Service")}
    gateway = services["byoc-test-gateway"]
    assert gateway["spec"]["type"] == "LoadBalancer"
    assert gateway["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert services["byoc-test-serving"]["spec"]["clusterIP"] == "None"
    budgets = {
        p.inputs["metadata"]["name"]: p.inputs["spec"] for p in plan.by_type("kubernetes:policy/v1:PodDisruptionBudget")
    }
    assert budgets["byoc-test-serving"]["maxUnavailable"] == 1
    assert budgets["byoc-test-gateway"]["minAvailable"] == 1
    assert one(plan, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler").inputs["spec"]["minReplicas"] == 2


# -- network policies and monitoring ----------------------------------------------------------------------------
def test_network_policies_default_deny_then_allow_what_is_needed() -> None:
    policies = {
        p.inputs["metadata"]["name"].removeprefix("byoc-test-"): p.inputs["spec"]
        for p in graph().by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    }
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = policies["allow-dns"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53}
    serving_in = policies["serving"]["ingress"]
    assert serving_in[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gateway"
    gateway_out = policies["gateway"]["egress"][0]
    assert gateway_out["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "serving"
    assert policies["gateway"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] == "10.42.0.0/16"
    # HTTPS to the stores, and the EKS Pod Identity agent that gives their credentials (test_identity_egress.py)
    pod_identity = {"to": [{"ipBlock": {"cidr": "169.254.170.23/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}
    assert policies["builder"]["egress"] == [{"ports": [{"protocol": "TCP", "port": 443}]}, pod_identity]
    assert policies["serving"]["egress"] == [{"ports": [{"protocol": "TCP", "port": 443}]}, pod_identity]


def test_monitoring_objects() -> None:
    plan = graph()
    monitors = {
        m.inputs["metadata"]["name"]: m.inputs["spec"]
        for m in plan.by_type("kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
    }
    serving_paths = {e["path"] for e in monitors["byoc-test-serving"]["endpoints"]}
    assert serving_paths == {"/prometheus/metrics", "/metrics"}
    rules = one(plan, "kubernetes:monitoring.coreos.com/v1:PrometheusRule").inputs["spec"]
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    assert {"ByocTTFTHigh", "ByocErrorRatioHigh", "ByocGPUsIdle", "ByocKVCacheNearFull"} <= alerts
    dashboards = [
        c
        for c in plan.by_type("kubernetes:core/v1:ConfigMap")
        if c.inputs["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1


def test_gpu_operator_values_for_each_driver_source() -> None:
    from stacks.k8s.gpu_operator import gpu_operator_values

    eks, gke = gpu_operator_values("node-image"), gpu_operator_values("gke")
    assert eks["driver"]["enabled"] is False and eks["toolkit"]["enabled"] is False
    assert gke["driver"]["enabled"] is False
    assert gke["hostPaths"]["driverInstallDir"] == "/home/kubernetes/bin/nvidia"
    for values in (eks, gke):
        assert values["dcgmExporter"]["serviceMonitor"]["honorLabels"] is True


def test_build_job_knows_the_artifact_key_and_the_source_mirror() -> None:
    job = one(graph(), "kubernetes:batch/v1:Job").inputs["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in job["containers"][0]["env"]}
    assert env["BYOC_ARTIFACT_KMS_KEY"] == "arn:aws:kms:eu-west-2:123456789012:key/test-artifacts-key-id"
    assert env["BYOC_HF_MIRROR"] == "s3://byoc-test-artifacts-123456789012/sources/hf"
    command = job["containers"][0]["command"]
    assert command[command.index("--work-dir") + 1].startswith("/scratch/")


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_gpu_pods_are_not_evicted_to_save_cost(cloud: str) -> None:
    """A running build or serving replica is never consolidated away (Karpenter, and GKE's cluster autoscaler)."""
    overrides: dict[str, Any] = {} if cloud == "aws" else {"cloud": "gcp", "shape": "h100x8-fp8"}
    plan = graph(**overrides)
    build = one(plan, "kubernetes:batch/v1:Job").inputs["spec"]["template"]["metadata"]["annotations"]
    serving = workload(plan, "serving")["template"]["metadata"]["annotations"]
    gateway = workload(plan, "gateway")["template"]["metadata"].get("annotations", {})
    for marks in (build, serving):
        assert marks["karpenter.sh/do-not-disrupt"] == "true"
        assert marks["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert "karpenter.sh/do-not-disrupt" not in gateway  # on the system nodes: free to move


def test_drift_still_rolls_gpu_nodes_within_a_day() -> None:
    pool = next(r for r in graph().resources if r.inputs.get("kind") == "NodePool").inputs["spec"]
    assert pool["template"]["spec"]["terminationGracePeriod"] == "24h"
    node_class = next(r for r in graph().resources if r.inputs.get("kind") == "EC2NodeClass").inputs["spec"]
    (term,) = node_class["amiSelectorTerms"]
    assert term["alias"].startswith("al2023@v") and "latest" not in term["alias"]
    pinned = next(r for r in graph(node_image="al2023@latest").resources if r.inputs.get("kind") == "EC2NodeClass")
    assert pinned.inputs["spec"]["amiSelectorTerms"] == [{"alias": "al2023@latest"}]


def test_the_gateway_pod_outlives_its_drain() -> None:
    # SIGTERM: the gateway drains for --drain-seconds (default 30) and exits; a grace period shorter than that would
    # have the kubelet kill it mid-drain (SIGKILL: streams cut without the gateway's error event, access lines lost)
    pod = workload(graph(), "gateway")["template"]["spec"]
    command = containers(pod)["gateway"]["command"]
    drain = float(command[command.index("--drain-seconds") + 1]) if "--drain-seconds" in command else 30.0
    assert pod["terminationGracePeriodSeconds"] > drain + 5
