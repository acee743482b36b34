"""`byoc preflight` on Google Cloud against recorded Compute API responses served from 127.0.0.1 (no live Google API:
tests/lifecycle/data/gcp/README.md says what each response is shaped from): enough GPU quota, short, the
deployment's own nodes, Spot, a metric missing from the answer, a 403 on regions.get, zones without the GPU, and no
credentials. examples/gcp-l4.yaml: Qwen2.5 7B on g2-standard-8 (one L4) in europe-west4, max_replicas 3 + the
build Job = 4 GPUs."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.lifecycle.conftest import GCP_PROJECT, GcpApi, StandIn, byoc, gcp_recorded

EXAMPLE = str(ROOT / "examples" / "gcp-l4.yaml")
REGION_PATH = f"/compute/v1/projects/{GCP_PROJECT}/regions/europe-west4"
NEEDED = 4


def preflight(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = byoc("preflight", *(args or ("-f", EXAMPLE)), "--output", "json", env=env)
    assert "Traceback" not in result.stderr, result.stderr
    document = json.loads(result.stdout)
    return result, {c["check"]: c for c in document["checks"]} | {"_doc": document}


def region_with(**quotas: tuple[int, int] | None) -> dict[str, Any]:
    """The recorded regions.get answer with some quotas changed to (limit, usage), or removed (None)."""
    region = copy.deepcopy(gcp_recorded("compute/regions.get.europe-west4.json"))
    kept = [q for q in region["quotas"] if quotas.get(q["metric"], ()) is not None]
    for q in kept:
        if q["metric"] in quotas:
            q["limit"], q["usage"] = quotas[q["metric"]]
    region["quotas"] = kept
    return region


def test_enough_quota(gcp_api: GcpApi) -> None:
    result, checks = preflight(gcp_api.env())
    assert result.returncode == 0, result.stderr
    assert checks["_doc"]["cloud"] == "gcp" and checks["_doc"]["ok"] is True
    credentials = checks["credentials"]
    assert credentials["status"] == "ok" and credentials["project"] == GCP_PROJECT
    assert "project byoc-test (number 123456789012)" in credentials["detail"]
    offering = checks["offering"]
    # europe-west4-c answers NO_RESULTS_ON_PAGE; europe-west1-b and us-central1-a are other regions
    assert offering["status"] == "ok" and offering["zones"] == ["europe-west4-a", "europe-west4-b"]
    assert offering["accelerator"] == "nvidia-l4" and offering["instance_type"] == "g2-standard-8"
    quota = checks["gpu-quota"]
    assert quota["status"] == "ok"
    assert (quota["metric"], quota["limit"], quota["usage"], quota["free"], quota["gpus_needed"]) == (
        "NVIDIA_L4_GPUS",
        8,
        2,
        6,
        NEEDED,
    )
    everywhere = checks["gpus-all-regions"]
    assert everywhere["status"] == "ok" and (everywhere["metric"], everywhere["free"]) == ("GPUS_ALL_REGIONS", 14)
    asked = {(m, p): q for m, p, q in gcp_api.calls}
    aggregated = f"/compute/v1/projects/{GCP_PROJECT}/aggregated"
    assert asked["GET", f"{aggregated}/acceleratorTypes"] == {"filter": 'name = "nvidia-l4"'}
    assert asked["GET", f"{aggregated}/instances"] == {"filter": "labels.byoc-deployment = qwen-eu"}
    assert not [c for c in gcp_api.calls if c[0] != "GET"]  # a preflight only reads


def test_short_quota_names_the_metric_need_and_free(gcp_api: GcpApi) -> None:
    gcp_api.routes["GET", REGION_PATH] = (200, region_with(NVIDIA_L4_GPUS=(4, 2)))
    result, checks = preflight(gcp_api.env())
    assert result.returncode == 1
    quota = checks["gpu-quota"]
    assert quota["status"] == "fail" and quota["metric"] == "NVIDIA_L4_GPUS"
    assert "quota NVIDIA_L4_GPUS in europe-west4 is 4 GPUs, 2 in use by others" in quota["detail"]
    assert "byoc needs 4 (4 x g2-standard-8 at 1 GPU(s)" in quota["detail"]
    assert "short by 2 GPUs (free 2)" in quota["detail"]
    assert "NVIDIA_L4_GPUS of at least 6 for project byoc-test, region europe-west4" in quota["hint"]
    assert quota["desired_value"] == 6


def test_the_deployments_own_nodes_are_not_counted_twice(gcp_api: GcpApi) -> None:
    instances = f"/compute/v1/projects/{GCP_PROJECT}/aggregated/instances"
    gcp_api.routes["GET", instances] = (200, "compute/instances.aggregatedList.qwen-eu.json")
    gcp_api.routes["GET", REGION_PATH] = (200, region_with(NVIDIA_L4_GPUS=(5, 2)))
    result, checks = preflight(gcp_api.env())
    quota = checks["gpu-quota"]
    # usage 2, one of them the running node labelled byoc-deployment=qwen-eu: 5 - 1 others = 4 free
    assert result.returncode == 0 and quota["status"] == "ok"
    assert (quota["own_usage"], quota["free"]) == (1, 4)
    assert "1 of the usage are this deployment's own nodes" in quota["detail"]


def test_spot_uses_the_preemptible_metric(gcp_api: GcpApi, tmp_path: Path) -> None:
    spec = yaml.safe_load(Path(EXAMPLE).read_text()) | {"capacity": "spot"}
    (tmp_path / "spot.yaml").write_text(yaml.safe_dump(spec))
    result, checks = preflight(gcp_api.env(), "-f", str(tmp_path / "spot.yaml"))
    quota = checks["gpu-quota"]
    assert result.returncode == 0
    assert (quota["metric"], quota["limit"], quota["purchase_option"]) == ("PREEMPTIBLE_NVIDIA_L4_GPUS", 16, "spot")


def test_a_metric_missing_from_the_answer_is_unknown(gcp_api: GcpApi) -> None:
    gcp_api.routes["GET", REGION_PATH] = (200, region_with(NVIDIA_L4_GPUS=None))
    result, checks = preflight(gcp_api.env())
    quota = checks["gpu-quota"]
    assert result.returncode == 0 and quota["status"] == "unknown"
    assert "the answer has no quota NVIDIA_L4_GPUS in europe-west4" in quota["detail"]
    assert "byoc needs 4 GPUs" in quota["detail"]


def test_403_on_regions_get_is_unknown_and_preflight_goes_on(gcp_api: GcpApi) -> None:
    gcp_api.routes["GET", REGION_PATH] = (403, "errors/403.regions.get.json")
    result, checks = preflight(gcp_api.env())
    assert result.returncode == 0
    quota = checks["gpu-quota"]
    assert quota["status"] == "unknown"
    assert "could not read quota NVIDIA_L4_GPUS in europe-west4: HTTP 403 forbidden" in quota["detail"]
    assert "Required 'compute.regions.get' permission" in quota["detail"]
    assert "compute.regions.get" in quota["hint"] and "byoc goes on" in quota["hint"]
    # the checks after it still ran
    assert checks["gpus-all-regions"]["status"] == "ok" and checks["offering"]["status"] == "ok"


def test_no_zone_of_the_region_offers_the_gpu(gcp_api: GcpApi) -> None:
    accelerators = copy.deepcopy(gcp_recorded("compute/acceleratorTypes.aggregatedList.nvidia-l4.json"))
    accelerators["items"] = {k: v for k, v in accelerators["items"].items() if "europe-west4" not in k}
    path = f"/compute/v1/projects/{GCP_PROJECT}/aggregated/acceleratorTypes"
    gcp_api.routes["GET", path] = (200, accelerators)
    result, checks = preflight(gcp_api.env())
    assert result.returncode == 1
    offering = checks["offering"]
    assert offering["status"] == "fail" and offering["zones"] == []
    assert offering["detail"] == "nvidia-l4 (g2-standard-8) is not offered in any zone of europe-west4"


def test_no_credentials(gcp_api: GcpApi, tmp_path: Path) -> None:
    env = {k: v for k, v in gcp_api.env().items() if k != "GOOGLE_OAUTH_ACCESS_TOKEN"}
    env |= {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json"), "CLOUDSDK_CONFIG": str(tmp_path)}
    result, checks = preflight(env)
    assert result.returncode == 1
    assert checks["credentials"]["status"] == "fail"
    assert "no Google Cloud credentials found" in checks["credentials"]["detail"]
    assert checks["offering"]["status"] == checks["gpu-quota"]["status"] == "unknown"
    assert gcp_api.calls == []


def test_up_refuses_a_short_quota_before_creating_anything(gcp_api: GcpApi, standin: StandIn, tmp_path: Path) -> None:
    """stand-in `pulumi` (argument and flow checks only): it must never be asked to run `up`."""
    gcp_api.routes["GET", REGION_PATH] = (200, region_with(NVIDIA_L4_GPUS=(0, 0)))
    env = standin.env(gcp_api.env()) | {"BYOC_HOME": str(tmp_path / "home"), "PULUMI_CONFIG_PASSPHRASE": "test"}
    result = byoc("up", "-f", EXAMPLE, "--yes", env=env)
    assert result.returncode == 1, result.stderr
    assert "preflight.gpu-quota:" in result.stderr and "NVIDIA_L4_GPUS" in result.stderr
    assert not [c for c in standin.commands() if c.startswith("up")]
    status = byoc("status", "--output", "json", env=env)
    assert json.loads(status.stdout) == []
