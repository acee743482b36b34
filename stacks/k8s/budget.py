"""The deployment's GPU-hour budget (spec `budget`): Prometheus rules that count the GPU-hours of the period, alerts
at the spec's thresholds, and the formula that caps the serving replicas once the budget is spent.

Source metric: kube-state-metrics (part of kube-prometheus-stack, which byoc installs; a Prometheus of your own
needs it too) exports `kube_pod_container_resource_requests{resource="nvidia_com_gpu"}`, the GPUs each container
of a pod requests, and `kube_pod_status_phase{phase="Running"}`. A running pod holds its requested GPUs (the device
plugin allocates whole GPUs to it), so the deployment's GPUs in use are the requests of its running pods: the
serving replicas and the model build Job (GPU time too). GPU-hours are that count summed once a minute (the group's
evaluation interval) over the period.

The period count is a recording rule that adds to its own previous value and starts again from zero when the period
index (calendar day, ISO week from Monday, or calendar month; UTC) changes. A Prometheus stopped for a while counts
nothing for that while (the budget is under-counted, never over-counted); one stopped longer than LOOKBACK restarts
the period's count at zero.
"""

from __future__ import annotations

from typing import Any

from byoc.names import resource_name
from byoc.resolve import Deployment
from byoc.spec import Budget

EVALUATION_INTERVAL_S = 60
# How far back the rules find their own previous value: a longer Prometheus outage restarts the count.
LOOKBACK = "1d"
# Monday 1970-01-05 00:00 UTC, 4 days after the epoch (a Thursday): weeks count from Mondays.
_MONDAY_OFFSET_S = 4 * 86400
PERIOD_INDEX = {
    "day": "floor(vector(time()) / 86400)",
    "week": f"floor((vector(time()) - {_MONDAY_OFFSET_S}) / 604800)",
    "month": "year() * 12 + month()",
}
USED = "byoc:budget_gpu_hours:used"
FRACTION = "byoc:budget_gpu_hours:fraction"
GPUS = "byoc:budget_gpus:sum"
INDEX = "byoc:budget_period:index"


def fraction_query(namespace: str) -> str:
    """PromQL: the share of the period's GPU-hour budget spent (1 = spent), one series per deployment."""
    return f'max({FRACTION}{{namespace="{namespace}"}})'


def rule_groups(namespace: str, budget: Budget) -> list[dict[str, Any]]:
    """The `groups:` of the budget's PrometheusRule (also what `promtool test rules` reads)."""
    ns = f'namespace="{namespace}"'
    labels = {"namespace": namespace}
    index = PERIOD_INDEX[budget.period]
    hours = f"{budget.gpu_hours:g}"
    rules: list[dict[str, Any]] = [
        {
            "record": GPUS,
            "expr": (
                f'sum(kube_pod_container_resource_requests{{{ns},resource="nvidia_com_gpu"}}'
                " * on (namespace, pod) group_left ()"
                f' max by (namespace, pod) (kube_pod_status_phase{{{ns},phase="Running"}}))'
                " or vector(0)"
            ),
            "labels": labels,
        },
        {
            # the previous value, unless the period changed since it was recorded; plus this minute's GPU-hours.
            # Evaluated before INDEX below, so it compares with the index of the previous evaluation.
            "record": USED,
            "expr": (
                f"((last_over_time({USED}{{{ns}}}[{LOOKBACK}])"
                f" unless on () (last_over_time({INDEX}{{{ns}}}[{LOOKBACK}]) != on () ({index})))"
                " or on () vector(0))"
                f" + on () ({GPUS}{{{ns}}} * {EVALUATION_INTERVAL_S} / 3600)"
            ),
            "labels": labels,
        },
        {"record": INDEX, "expr": index, "labels": labels},
        {"record": FRACTION, "expr": f"{USED}{{{ns}}} / {hours}", "labels": labels},
    ]
    for threshold in budget.alert_at:
        percent = f"{threshold * 100:g}%"
        rules.append(
            {
                "alert": "ByocGpuBudgetSpent",
                "expr": f"{FRACTION}{{{ns}}} >= {threshold:g}",
                "labels": {"severity": "critical" if threshold >= 1 else "warning", "threshold": percent},
                "annotations": {
                    "summary": f"{percent} of the GPU-hour budget of {namespace} is spent",
                    "description": (
                        f"{namespace} has used {{{{ $value | humanizePercentage }}}} of its {hours} GPU-hours this "
                        f"{budget.period} (UTC)."
                        + (
                            f" Serving replicas are capped at {budget.cap_replicas} until the {budget.period} ends."
                            if budget.cap_replicas is not None and threshold >= 1
                            else ""
                        )
                    ),
                    "runbook_url": "https://github.com/byoc-dev/byoc/blob/main/docs/operations.md#gpu-hour-budget",
                },
            }
        )
    return [{"name": f"byoc.budget.{namespace}", "interval": f"{EVALUATION_INTERVAL_S}s", "rules": rules}]


def capped_formula(deployment: Deployment, load_threshold: str, triggers: list[str], cap: int) -> str:
    """KEDA scalingModifiers formula (expr-lang) giving the serving replicas wanted: what the triggers ask for, as
    separate triggers would (the load over its per-replica threshold, the wake and activity signals as counts), at
    most `cap` once the `budget` trigger reports the budget spent."""
    wanted = [f"load / {load_threshold}", *[t for t in triggers if t not in ("load", "budget")]]
    asked = f"max({', '.join(wanted)})" if len(wanted) > 1 else wanted[0]
    return f"budget >= 1 ? min({cap}, {asked}) : {asked}"


def budget_rules_name(deployment: Deployment) -> str:
    return resource_name(deployment.name, "budget")
