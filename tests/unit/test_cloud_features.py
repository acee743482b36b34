"""Cloud capability sets (byoc/clouds/base.py `Feature`): what a cloud lacks is declared with its reason and
refused before anything runs; what differs between clouds (who launches GPU nodes, what `scale` may change, what
`destroy` deletes first) is the cloud's to say, not a branch in the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from byoc.catalogs import CLOUDS
from byoc.clouds import Feature, get_cloud
from byoc.clouds.base import FEATURE_USE, Cloud
from byoc.lifecycle import Lifecycle, LiveOptions, offline_changes, scale_violations
from byoc.registry import Record, Registry, State
from byoc.resolve import resolve
from byoc.spec import build_spec, load_spec_file

ROOT = Path(__file__).resolve().parents[2]


def byoc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "byoc", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("name", CLOUDS)
def test_every_feature_is_offered_or_refused_with_a_reason(name: str) -> None:
    cloud = get_cloud(name)
    assert set(FEATURE_USE) == set(Feature)
    for feature, reason in cloud.unsupported_features.items():
        assert len(reason) > 30, (name, feature)  # a sentence a user can act on, not a flag
    # what a cloud says it offers, it implements
    implemented = {
        Feature.STACK: cloud.stack_program is not None,
        Feature.LIVE_EVIDENCE: type(cloud).collect_evidence is not Cloud.collect_evidence,
        Feature.LIVE_OFFERINGS: type(cloud).live_offerings is not Cloud.live_offerings,
        Feature.PREFLIGHT: type(cloud).preflight is not Cloud.preflight,
        Feature.SWEEP: type(cloud).sweep is not Cloud.sweep,
    }
    for feature, present in implemented.items():
        assert cloud.supports(feature) == present, (name, feature)


def test_a_missing_feature_is_refused_before_anything_runs() -> None:
    """No credentials are looked for and nothing is read: the refusal names the flag and the cloud's reason."""
    live = byoc("compliance", "report", "--live", "--cloud", "gcp", "--region", "europe-west4", "--deployment", "d")
    assert live.returncode == 2, live.stderr
    assert live.stderr.startswith("error: --cloud: byoc on Google Cloud has no live evidence"), live.stderr
    assert "Traceback" not in live.stderr
    refresh = byoc("regions", "--refresh", "--cloud", "gcp")
    assert refresh.returncode == 2
    assert "error: --refresh: byoc on Google Cloud has no live offerings" in refresh.stderr


def _scaled(path: str, min_replicas: int, max_replicas: int) -> tuple[Any, Any]:
    data = load_spec_file(ROOT / path)
    old = resolve(build_spec(data))
    scaling = {**(data.get("autoscaling") or {}), "min_replicas": min_replicas, "max_replicas": max_replicas}
    scaling.pop("scale_to_zero_window", None)
    return old, resolve(build_spec({**data, "autoscaling": scaling}))


@pytest.mark.parametrize(
    ("path", "pool"),
    [
        ("examples/byoc.yaml", "kubernetes:karpenter.sh/v1:NodePool"),
        ("examples/gcp-l4.yaml", "gcp:container/nodePool:NodePool"),
    ],
)
def test_scale_moves_the_gpu_pool_bound_on_each_cloud(path: str, pool: str) -> None:
    """`byoc scale` to more replicas changes the GPU node pool's bound, which each cloud allows for its own pool
    (on GKE the node pool's totalMaxNodeCount: it was refused there as a change beyond the bounds)."""
    old, new = _scaled(path, 1, 12)
    changed = offline_changes(old, new)
    assert any(type_token == pool for type_token, _ in changed), changed
    assert scale_violations(changed, get_cloud(new.cloud).scale_changes) == []
    other = "aws" if new.cloud == "gcp" else "gcp"
    assert scale_violations(changed, get_cloud(other).scale_changes)  # the other cloud's rules would refuse it


class GkeCluster:
    """A GKE cluster's API: no Karpenter (its custom resources do not exist there: kubectl fails on them)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        assert "karpenter" not in kind, f"asked a GKE cluster for {kind}"
        self.asked.append(kind)
        return []

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        raise AssertionError("a dry run deletes nothing")


def test_destroy_on_gke_asks_for_no_karpenter_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    registry = Registry(tmp_path)
    spec = {"name": "demo", "cloud": "gcp", "region": "EUROPE", "model": "qwen2.5-7b-instruct", "shape": "l4x1-bf16"}
    registry.create(
        name="demo",
        cloud="gcp",
        region="europe-west4",
        requested_region="EUROPE",
        shape="l4x1-bf16",
        instance_type="g2-standard-8",
        spec=spec,
        backend="file:///x",
    )
    registry.transition("demo", State.DEPLOYING)
    registry.transition("demo", State.DEPLOYED)
    cluster = GkeCluster()

    def cluster_for(record: Record) -> GkeCluster:
        return cluster

    life = Lifecycle(registry=registry, cluster_for=cluster_for)  # type: ignore[arg-type]
    dry = life.destroy("demo", LiveOptions(yes=False))
    registry.close()
    assert dry["dry_run"] is True
    assert set(dry["cluster"]) == {"services", "persistentvolumeclaims"}
    assert cluster.asked == ["services", "persistentvolumeclaims"]


def test_the_docs_table_says_what_each_cloud_offers() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## What each cloud offers", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): [cell.strip() for cell in line.split("|")[3:5]]
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == {f.value for f in Feature}
    for feature in Feature:
        for cell, name in zip(rows[feature.value], ("aws", "gcp"), strict=True):
            cloud = get_cloud(name)
            expected = "yes" if cloud.supports(feature) else f"no: {cloud.unsupported_features[feature]}"
            assert cell == expected, (feature, name)
