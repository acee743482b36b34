"""One source of truth: every evidence-pack FAIL a spec value causes is refused at validate, or warned there.

Each spec option that changes the recorded graph is planned offline and the plan's own pack evaluated: an option
whose pack fails a check must come with a validate-time warning on that option (a deliberate choice) or be refused
(tests/unit/test_rules.py), so no user learns about it only from the report.
"""

from __future__ import annotations

from typing import Any

import pytest

from compliance.evaluate import evaluate, graph_from_plan
from tests.conftest import deploy
from tests.stacks.plans import graph

# option -> (spec overrides, the field a warning must name when the pack fails)
OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "defaults": ({}, ""),
    "endpoint private": ({"network": {"endpoint": "private"}}, "network.endpoint"),
    "endpoint allowlist": (
        {"network": {"endpoint": "allowlist", "allowed_cidrs": ["203.0.113.0/24"]}},
        "network.endpoint",
    ),
    "endpoint public": ({"network": {"endpoint": "public"}}, "network.endpoint"),
    "single NAT": ({"network": {"nat_gateways": "single"}}, "network.nat_gateways"),
    "spot": ({"capacity": "spot"}, "capacity"),
    "own key": ({"encryption": {"kms_key": "arn:aws:kms:eu-west-2:111122223333:key/1234abcd"}}, "encryption.kms_key"),
    "EBS default encryption": ({"encryption": {"ebs_default": True}}, "encryption.ebs_default"),
    "BF16 with an addon": (
        {"shape": "h100x1-bf16", "addons": [{"id": "tone", "source": "s3://adapters/tone"}]},
        "addons",
    ),
    "always on": ({"autoscaling": {"min_replicas": 1, "max_replicas": 2}}, "autoscaling.min_replicas"),
    "node image latest": ({"node_image": "al2023@latest"}, "node_image"),
    "own Prometheus": (
        {"monitoring": {"prometheus_url": "http://prometheus-operated.monitoring:9090"}},
        "monitoring.prometheus_url",
    ),
    "one framework": ({"compliance": {"frameworks": ["soc2"]}}, "compliance.frameworks"),
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_a_failing_check_is_never_a_surprise(option: str) -> None:
    overrides, field = OPTIONS[option]
    deployment = deploy(**overrides)
    document = deployment.plan_document()
    document["resources"] = [r.as_dict() for r in graph(**overrides).resources]
    declared = graph_from_plan(document)
    found = evaluate(declared, document["compliance"]["frameworks"])
    failing = sorted({f.check.id for f in found if f.status.value == "FAIL"})
    warned = {w.field for w in deployment.warnings}
    if failing:
        assert field in warned, f"{option}: the pack fails {failing}, but validate says nothing about {field}"
    if option == "endpoint public":
        assert failing, "a public endpoint must fail its check (the evidence pack's promise)"
