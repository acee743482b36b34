"""Every pod that holds a cloud identity can reach the node-local endpoint its credentials come from.

A NetworkPolicy with any egress rule denies everything else, the credentials endpoint included: the EKS Pod Identity
agent (169.254.170.23:80, a hostNetwork DaemonSet; https://docs.aws.amazon.com/eks/latest/userguide/pod-id-agent-setup.html,
and cilium/cilium#34387 for the field report) and the GKE metadata server (169.254.169.254:80 on Dataplane V2). A pod
whose policy forgot it starts, then fails its first S3/GCS call for want of credentials (the weights fetch, the
build's upload, the batch worker)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stacks.plans import graph

ENDPOINTS = {"aws": "169.254.170.23/32", "gcp": "169.254.169.254/32"}
WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:batch/v1:Job", "kubernetes:apps/v1:StatefulSet")


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items()) and not selector.get("matchExpressions")


def _reaches(rules: list[dict[str, Any]], cidr: str) -> bool:
    for rule in rules:
        blocks = [peer.get("ipBlock", {}) for peer in rule.get("to", [])]
        ports = {p.get("port") for p in rule.get("ports", [])}
        if any(b.get("cidr") == cidr for b in blocks) and 80 in ports:
            return True
    return False


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_every_pod_with_a_cloud_identity_reaches_its_credentials(cloud: str) -> None:
    plan = graph(cloud=cloud) if cloud == "gcp" else graph()
    policies = [r.inputs for r in plan.by_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")]
    checked = []
    for token in WORKLOADS:
        for workload in plan.by_type(token):
            spec = workload.inputs["spec"]
            template = spec["template"] if "template" in spec else spec["jobTemplate"]["spec"]["template"]
            account = template["spec"].get("serviceAccountName")
            if not account:
                continue
            labels = template["metadata"].get("labels", {})
            selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
            egress_policies = [p for p in selecting if "Egress" in p["spec"].get("policyTypes", [])]
            if not egress_policies:
                continue
            rules = [rule for p in egress_policies for rule in p["spec"].get("egress", [])]
            if any(not rule.get("to") and not rule.get("ports") for rule in rules):
                continue  # an allow-all rule
            if account in _cloud_bound(plan, cloud):
                checked.append(account)
                assert _reaches(rules, ENDPOINTS[cloud]), f"{workload.name} ({account}) cannot reach its credentials"
    assert len(checked) >= 3, checked  # the serving pods, the build Job, the batch worker at least


def _cloud_bound(plan: Any, cloud: str) -> set[str]:
    """The Kubernetes service accounts the cloud binds to an identity (Pod Identity associations, Workload Identity
    members)."""
    if cloud == "aws":
        return {
            r.inputs["serviceAccount"] for r in plan.by_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
        }
    bound = set()
    for member in plan.by_type("gcp:serviceaccount/iAMMember:IAMMember"):
        text = str(member.inputs.get("member", ""))
        if "svc.id.goog[" in text:
            bound.add(text.rsplit("/", 1)[-1].rstrip("]"))
    return bound
