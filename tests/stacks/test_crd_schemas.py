"""The custom resources byoc renders (KEDA, Karpenter, prometheus-operator objects) validate against their upstream
CRD schemas, for every example spec that renders manifests.

kubernetes-validate has no schema for them, so they are checked with the npm @kubernetes-models/* packages pinned in
tests/crd_schemas/package.json (installed by scripts/test.sh with `npm ci`), through tests/crd_schemas/validate.mjs:
types, enums, patterns, required fields, and fields the schema does not know.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLES, ROOT

SCHEMAS = ROOT / "tests" / "crd_schemas"
VALIDATOR = SCHEMAS / "validate.mjs"
PACKAGES = ("keda", "karpenter", "prometheus-operator")

AWS_KINDS = frozenset(
    {
        "keda.sh/v1alpha1/ScaledObject",
        "karpenter.sh/v1/NodePool",
        "karpenter.k8s.aws/v1/EC2NodeClass",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/PrometheusRule",
    }
)
# The custom-resource kinds each example's manifests must contain, all of them validated: a kind that silently drops
# out of the rendering (or a new one nobody validates) fails the test. An example spec that renders manifests but is
# missing here fails too, so a new stack (the GCP one: add "gcp-l4.yaml" with its kinds) is checked from its first plan.
# GKE: the node pool is a Google Cloud resource, not a Karpenter object.
GCP_KINDS = AWS_KINDS - {"karpenter.sh/v1/NodePool", "karpenter.k8s.aws/v1/EC2NodeClass"}
EXPECTED_KINDS: dict[str, frozenset[str]] = {
    "byoc.yaml": AWS_KINDS,
    "b200-fp4.yaml": AWS_KINDS,
    "lora-bf16.yaml": AWS_KINDS,
    "gcp-l4.yaml": GCP_KINDS,
}

# Groups whose kinds Kubernetes serves itself (kubernetes-validate checks those, in test_manifests.py).
_BUILTIN_GROUPS = frozenset({"", "apps", "batch", "policy", "autoscaling"})


def _is_custom(document: dict[str, Any]) -> bool:
    api_version = str(document.get("apiVersion", ""))
    group = api_version.rpartition("/")[0]  # "" for the core group (v1)
    return not (group in _BUILTIN_GROUPS or group == "k8s.io" or group.endswith(".k8s.io"))


def _kind(document: dict[str, Any]) -> str:
    return f"{document['apiVersion']}/{document['kind']}"


def _example_specs() -> list[Path]:
    """The byoc specs under examples/ (anything else there, a CI workflow for instance, is not planned)."""
    specs = []
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and {"cloud", "model"} <= data.keys():
            specs.append(path)
    return specs


def plan_example(spec: Path, out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "byoc", "plan", "-f", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, f"byoc plan -f examples/{spec.name} failed:\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def planned_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every example spec planned once for this module: example file name -> the plan's output folder."""
    root = tmp_path_factory.mktemp("examples")
    return {spec.name: plan_example(spec, root / spec.stem) for spec in _example_specs()}


def _objects_in_values(value: Any) -> list[dict[str, Any]]:
    """Kubernetes objects embedded in Helm values (extra manifests a chart would apply)."""
    if isinstance(value, dict):
        if isinstance(value.get("apiVersion"), str) and isinstance(value.get("kind"), str):
            return [value]
        return [found for child in value.values() for found in _objects_in_values(child)]
    if isinstance(value, list):
        return [found for child in value for found in _objects_in_values(child)]
    return []


def custom_resources(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for every custom resource of a plan: in manifests/ and in the Helm releases' values."""
    found = []
    for path in sorted((out / "manifests").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and _is_custom(document):
                found.append((str(path.relative_to(out)), document))
    releases = out / "helm-releases.yaml"
    if releases.exists():
        for release in yaml.safe_load_all(releases.read_text()):
            for document in _objects_in_values((release or {}).get("values", {})):
                if _is_custom(document):
                    found.append((f"helm-releases.yaml ({release['name']} values)", document))
    return found


def validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the Node validator on objects: one result per object, in order."""
    node = shutil.which("node")
    missing = [p for p in PACKAGES if not (SCHEMAS / "node_modules" / "@kubernetes-models" / p).is_dir()]
    if node is None or missing:
        pytest.fail(
            "the CRD schema validator needs Node.js and the npm packages pinned in tests/crd_schemas/package.json "
            f"(node: {node or 'not found'}; missing: {', '.join(missing) or 'none'}): run scripts/test.sh, or "
            "`npm ci --prefix tests/crd_schemas`"
        )
    result = subprocess.run(
        [node, str(VALIDATOR)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode in (0, 1), f"validate.mjs exited {result.returncode}: {result.stderr}"
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in results] == list(range(len(objects)))
    return results


def test_every_example_that_renders_manifests_is_checked(planned_examples: dict[str, Path]) -> None:
    rendering = {name for name, out in planned_examples.items() if (out / "manifests").is_dir()}
    listed = set(EXPECTED_KINDS)
    assert rendering == listed, (
        "examples that render manifests and the examples in EXPECTED_KINDS differ: "
        f"unlisted {sorted(rendering - listed)}, rendering nothing {sorted(listed - rendering)}"
    )


@pytest.mark.parametrize("example", sorted(EXPECTED_KINDS))
def test_custom_resources_match_their_crd_schemas(planned_examples: dict[str, Path], example: str) -> None:
    found = custom_resources(planned_examples[example])
    results = validate([document for _, document in found])
    failures = [
        f"{where}: {r['apiVersion']}/{r['kind']} {r['name']}: {r['result']}: "
        + "; ".join(f"{e['path'] or '(object)'} {e['message']}" for e in r["errors"])
        for (where, _), r in zip(found, results, strict=True)
        if r["result"] != "ok"
    ]
    assert failures == [], "\n".join(failures)
    validated = Counter(_kind(document) for _, document in found)
    assert set(validated) == EXPECTED_KINDS[example], dict(validated)


def _rendered(planned_examples: dict[str, Path], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in custom_resources(planned_examples["byoc.yaml"]) if _kind(d) == kind))


def _break_scaled_object(o: dict[str, Any]) -> None:
    o["spec"]["minReplicaCount"] = "zero"


def _break_node_pool(o: dict[str, Any]) -> None:
    o["spec"]["disruption"]["consolidationPolicy"] = "WhenIdle"


def _break_node_class(o: dict[str, Any]) -> None:
    del o["spec"]["amiSelectorTerms"]


def _break_service_monitor(o: dict[str, Any]) -> None:
    o["spec"]["endpoints"][0]["interval"] = "15 seconds"


def _break_prometheus_rule(o: dict[str, Any]) -> None:
    rule = o["spec"]["groups"][0]["rules"][0]
    rule["recrod"] = rule.pop("record")  # a typo: the schema requires neither key, but does not know this one


@pytest.mark.parametrize(
    ("kind", "breaking", "path", "message"),
    [
        ("keda.sh/v1alpha1/ScaledObject", _break_scaled_object, "/spec/minReplicaCount", "must be integer"),
        ("karpenter.sh/v1/NodePool", _break_node_pool, "/spec/disruption/consolidationPolicy", "allowed values"),
        ("karpenter.k8s.aws/v1/EC2NodeClass", _break_node_class, "/spec/amiSelectorTerms", "required property"),
        ("monitoring.coreos.com/v1/ServiceMonitor", _break_service_monitor, "/spec/endpoints/0/interval", "pattern"),
        ("monitoring.coreos.com/v1/PrometheusRule", _break_prometheus_rule, "/spec/groups/0/rules/0/recrod", "unknown"),
    ],
    ids=["scaledobject-type", "nodepool-enum", "ec2nodeclass-required", "servicemonitor-pattern", "rule-unknown-field"],
)
def test_a_broken_field_is_caught_with_its_path(
    planned_examples: dict[str, Path], kind: str, breaking: Any, path: str, message: str
) -> None:
    """The validation is real: a rendered object with one field broken fails, and the error names that field."""
    document = _rendered(planned_examples, kind)
    intact, broken = copy.deepcopy(document), copy.deepcopy(document)
    breaking(broken)
    ok, failed = validate([intact, broken])
    assert ok["result"] == "ok", ok
    assert failed["result"] == "invalid", failed
    assert [e["path"] for e in failed["errors"]] == [path], failed
    assert message in failed["errors"][0]["message"]


def test_an_unknown_kind_is_never_passed() -> None:
    results = validate(
        [
            {"apiVersion": "keda.sh/v1", "kind": "ScaledObject", "metadata": {"name": "a"}, "spec": {}},
            {"apiVersion": "cloud.google.com/v1", "kind": "BackendConfig", "metadata": {"name": "b"}, "spec": {}},
            {"apiVersion": "monitoring.coreos.com/v1", "kind": "Dashboard", "metadata": {"name": "c"}, "spec": {}},
        ]
    )
    assert [r["result"] for r in results] == ["unknown"] * 3
