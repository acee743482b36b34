"""The serving monitoring: Prometheus rules checked and unit-tested with promtool, and the Grafana dashboard's queries.

stacks/k8s/monitoring/rules.yaml is the single source of truth the Pulumi program wraps in a PrometheusRule; its unit
tests (rules_test.yaml) run under the real `promtool test rules`, and a mutated copy proves they can fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "stacks" / "k8s" / "monitoring"
RULES = "stacks/k8s/monitoring/rules.yaml"
RULES_TEST = "stacks/k8s/monitoring/rules_test.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RUNBOOK = "https://github.com/byoc-dev/byoc/blob/main/docs/operations.md#"

# Raw series the rules and the dashboard may use: the gateway's and the engine's own metrics, dcgm-exporter's and
# kube-state-metrics'. Anything else in a query is a typo or a metric nobody exports.
RAW_METRICS = frozenset(
    {
        "byoc_gateway_requests_total",
        "byoc_gateway_time_to_first_token_seconds_bucket",
        "byoc_gateway_inter_token_latency_seconds_bucket",
        "byoc_gateway_request_duration_seconds_bucket",
        "byoc_gateway_output_tokens_total",
        "byoc_gateway_in_flight_requests",
        "byoc_gateway_queue_depth",
        "byoc_gateway_pending_requests",
        "byoc_gateway_rate_limited_total",
        "byoc_gateway_upstream_errors_total",
        "byoc_gateway_limits_store_up",
        "byoc_gateway_wake_seconds_bucket",
        "byoc_gateway_wake_seconds_count",
        "byoc_gateway_wake_timeouts_total",
        "byoc_gateway_wake_time_to_first_token_seconds_bucket",
        "byoc_slo_ttft_p95_seconds",
        "byoc_engine_kv_cache_utilization",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_available",
    }
)

_STRINGS = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
# An identifier not followed by "(" (functions and aggregations are) and not part of a number.
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric (or recording rule) names a PromQL expression selects; Grafana variables are ignored."""
    stripped = _STRINGS.sub(" ", expr)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGES.sub(" ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    stripped = _VARIABLES.sub(" ", stripped)
    return {name for name in _IDENTIFIER.findall(stripped) if name.lower() not in _KEYWORDS}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: run scripts/test.sh, which apt-get installs Debian's `prometheus` package "
            "(promtool) before running the tests"
        )
    return path


def load_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((ROOT / RULES).read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def recording_rules() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


# --- promtool -----------------------------------------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _keep(tests: dict[str, Any]) -> str:
    return ""


def _change_expected_sample(tests: dict[str, Any]) -> str:
    case = tests["tests"][0]["promql_expr_test"][0]
    sample = case["exp_samples"][0]
    sample["value"] = float(sample["value"]) + 0.5
    return str(case["expr"])


def _drop_expected_alert(tests: dict[str, Any]) -> str:
    case = next(case for case in tests["tests"][0]["alert_rule_test"] if case["exp_alerts"])
    case["exp_alerts"] = []
    return str(case["alertname"])


@pytest.mark.parametrize(
    ("mutate", "returncode"),
    [(_keep, 0), (_change_expected_sample, 1), (_drop_expected_alert, 1)],
    ids=["unchanged-copy-passes", "changed-exp-sample-fails", "dropped-expected-alert-fails"],
)
def test_rule_unit_tests_can_fail(
    promtool: str, tmp_path: Path, mutate: Callable[[dict[str, Any]], str], returncode: int
) -> None:
    shutil.copy(ROOT / RULES, tmp_path / "rules.yaml")
    tests = yaml.safe_load((ROOT / RULES_TEST).read_text())
    mutated = mutate(tests)
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))

    result = run(promtool, "test", "rules", "rules_test.yaml", cwd=tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == returncode, output
    if returncode:
        assert "FAILED" in output
        assert mutated in output


# --- the rules themselves -------------------------------------------------------------------------------------------


def test_rules_select_only_known_metrics() -> None:
    known = RAW_METRICS | recording_rules()
    for rule in load_rules():
        names = metric_names(rule["expr"])
        assert names, rule
        assert names <= known, (rule.get("record") or rule.get("alert"), names - known)


def test_recording_rules_follow_the_naming_convention() -> None:
    for name in recording_rules():
        assert re.fullmatch(r"byoc:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_rules_never_name_a_namespace() -> None:
    """Every deployment has its own namespace: rules group by it and never pin one (the byoc-.* pattern is fine)."""
    for rule in load_rules():
        assert not re.search(r"namespace\s*=\s*[\"']", rule["expr"]), rule["expr"]


def test_alerts_are_routed_and_documented() -> None:
    alerts = [rule for rule in load_rules() if "alert" in rule]
    assert {rule["alert"] for rule in alerts} == {
        "ByocTTFTHigh",
        "ByocErrorRatioHigh",
        "ByocReplicasUnavailable",
        "ByocGPUsIdle",
        "ByocKVCacheNearFull",
        "ByocRequestsWaitingAtZero",
        "ByocLimitsStoreDown",
    }
    for rule in alerts:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}, rule["alert"]
        assert rule["annotations"]["runbook_url"] == RUNBOOK + rule["alert"].lower()


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load((MONITORING / "rules_test.yaml").read_text())
    cases = [case for group in tests["tests"] for case in group.get("alert_rule_test", [])]
    for rule in load_rules():
        if "alert" not in rule:
            continue
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never shown quiet"


# --- dashboard ------------------------------------------------------------------------------------------------------


def test_metric_names_reads_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (model, le) (rate(byoc_gateway_request_duration_seconds_bucket"
        '{namespace="$ns", code=~"5.."}[$__rate_interval])))'
        " > on (namespace) group_left max by (namespace) (byoc:ttft_seconds:p95_5m) and bool 1e3 * NaN"
    )
    assert metric_names(expr) == {"byoc_gateway_request_duration_seconds_bucket", "byoc:ttft_seconds:p95_5m"}


def test_dashboard_identity_and_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "byoc-serving"
    assert dashboard["title"] == "byoc serving"
    assert dashboard["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    datasources = [v for v in variables.values() if v["type"] == "datasource"]
    assert [v["query"] for v in datasources] == ["prometheus"]
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    query = namespace["query"]["query"] if isinstance(namespace["query"], dict) else namespace["query"]
    assert query == "label_values(byoc_gateway_requests_total, namespace)"


def test_dashboard_panels_query_known_metrics() -> None:
    dashboard = load_dashboard()
    known = RAW_METRICS | recording_rules()
    datasource_uid = "${" + next(v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource") + "}"
    panels = dashboard["panels"]
    assert panels
    for panel in panels:
        assert panel["type"] == "timeseries", panel["title"]
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            assert "$namespace" in target["expr"], (panel["title"], target["expr"])


def test_dashboard_covers_the_serving_signals() -> None:
    """Each signal has a panel, and the dashboard reads every recording rule instead of recomputing it."""
    used = set().union(*(metric_names(t["expr"]) for p in load_dashboard()["panels"] for t in p["targets"]))
    assert recording_rules() <= used
    assert RAW_METRICS - used <= {
        # Only through the recording rules.
        "byoc_gateway_time_to_first_token_seconds_bucket",
        "byoc_gateway_output_tokens_total",
        "byoc_gateway_queue_depth",
        "byoc_gateway_pending_requests",
    }


def test_the_dashboard_shows_wakes_from_zero() -> None:
    """Issue 24: the time to first token of requests that waited for a wake has its own panel."""
    (panel,) = [p for p in load_dashboard()["panels"] if p["title"] == "Wakes from zero"]
    used = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
    assert {"byoc_gateway_wake_seconds_bucket", "byoc_gateway_wake_time_to_first_token_seconds_bucket"} <= used
    # the failed wakes too: a p95 of the wakes that got a replica leaves out the ones the timeout gave up on
    assert "byoc_gateway_wake_timeouts_total" in used
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
